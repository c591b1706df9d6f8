"""Soak: a simulated fleet through every stage for minutes, with faults that page.

Why: the unit and integration tests prove each guarantee in seconds; what they cannot
show is that the whole pipeline holds a production-like load for a while: that the
collectors keep up with what the fleet offers, the SLO stages keep up with the
collectors (consumer lag bounded), alerts reach Alertmanager promptly, and no process
grows in memory once warm.

What runs, each its own process, all on this machine and on loopback:

* ``gpuslo simulate`` (64 nodes, real time: speed 1, its clock set to the wall clock,
  so the samples' own timestamps are current): the load, not measured as gpuslo;
* ``gpuslo broker``, the embedded broker (memory only);
* ``gpuslo collect`` (``--collect-processes``, the fleet's nodes split between them,
  as a DaemonSet splits them), the config ``gpuslo simulate --print-config`` writes:
  the same pages Prometheus reads;
* ``gpuslo aggregate`` (SLO stage 1 and stage 2, the shipped catalog) delivering to
* a real Alertmanager (the Debian package ``prometheus-alertmanager``);
* side by side, a real Prometheus scraping the same targets (``--no-prometheus``: not).

The fault scenario: after the warm-up, one GPU of one more node takes an XID 48 every
minute (``POST /faults`` on the simulator, the moment noted): the ``gpu-availability``
SLO of that node burns 25 times its budget and pages.

Printed each minute after the warm-up, and over the whole window at the end:

* samples/s offered (the targets' samples per interval, ``gpuslo_scrape_samples`` of
  the last scrape, over the interval), produced (``gpuslo_samples_produced_total`` of
  the collect processes, the health rows included), and consumed (rows of the records
  below stage 1's committed offsets, read back from the topic); Prometheus' samples
  appended per second beside them;
* consumer lag (``gpuslo_consumer_lag_records`` of each consumer group on the aggregate's
  ``/metrics``), also in seconds of the topic's records;
* alert delivery: for each alert the time from its ``startsAt`` (the evaluation that
  fired it) to its arrival in Alertmanager (``updatedAt`` of the first time the API v2
  lists it), and from the fault's injection to that arrival;
* CPU (millicores) and RSS of every process (``/proc``, children included: the broker
  is a Tansu child of ``gpuslo broker``), RSS growth after the warm-up.

Exit status 1 when a stated bound fails:

* produced page samples/s below ``1 - --rate-tolerance`` of offered, or consumed below
  that share of produced (stage 1 not keeping up);
* a consumer group more than ``--max-lag-s`` seconds of its topic's records behind at
  any reading after the warm-up;
* RSS growth after the warm-up (median of the last tenth of the window minus that of
  the first tenth) over ``--rss-growth-mib`` for a ``gpuslo collect`` or
  ``gpuslo aggregate`` process (the memory-only broker keeps every record by design:
  its growth is printed, per sample, not judged);
* no alert of an injected fault reached Alertmanager, or a process exited.

Run::

    python benchmarks/soak.py --minutes 3           # a check: about 5 minutes in all
    python benchmarks/soak.py                       # 64 nodes at 5 s for 10 minutes

The machine's other load shows in every figure; the load average is printed at the
start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.structs import TopicPartition
from bench_collect import (
    GPUSLO,
    Fleet,
    Run,
    _stat,
    apply_settings,
    free_port,
    gpuslo_config,
    load_fleet,
    print_round,
    prometheus_config,
    wait_http,
)
from prometheus_client.parser import text_string_to_metric_families

from gpuslo.collectors.scrape.engine import HEALTH_SOURCE
from gpuslo.pipeline.schema import decode
from gpuslo.slo.catalog import CATALOG_DIR

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
SAMPLES_TOPIC = "gpuslo.samples"
SLI_TOPIC = "gpuslo.sli"
GROUPS = {"gpuslo-sli": SAMPLES_TOPIC, "gpuslo-slo": SLI_TOPIC}
FAULT = "xid_48"
GPU_OF_FAULT = 1
STEP_S = 5.0  # how often the pipeline's figures are read
WARM_UP_SIM_S = 300  # the simulator's own warm-up (temperatures settle), simulated seconds

AM_CONFIG = """
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """One process of the run, its log, and what was sampled of it each second."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    judged: bool  # is its RSS growth held to the bound (gpuslo's own processes)
    metrics: str | None = None  # its /metrics URL
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, CPU s)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, MiB)

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{self.name} exited ({self.popen.returncode}):\n{tail}")


def spawn(name: str, argv: list[str], tmp: Path, *, judged: bool = False,
          metrics: str | None = None) -> Proc:
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
    return Proc(name, popen, log, judged, metrics)


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM each (pipeline first, then what it talks to), then kill what lingers."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.terminate()
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def sample_procs(procs: list[Proc]) -> None:
    """One /proc pass: CPU seconds and RSS of each process with its live descendants."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent[int(entry.name)], cpu[int(entry.name)] = _stat(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    now = time.monotonic()
    for p in procs:
        tree, todo = [], [p.popen.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        rss = 0
        for pid in tree:
            try:
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            except (OSError, ValueError, IndexError):
                continue
        p.cpu.append((now, sum(cpu.get(pid, 0.0) for pid in tree)))
        p.rss.append((now, rss / MIB))


def between(series: list[tuple[float, float]], t0: float, t1: float) -> list[float]:
    return [v for t, v in series if t0 <= t <= t1]


def cpu_m(p: Proc, t0: float, t1: float) -> float:
    """Mean millicores of ``p`` between ``t0`` and ``t1``."""
    pts = [(t, v) for t, v in p.cpu if t0 <= t <= t1]
    if len(pts) < 2:
        return math.nan
    return 1000 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


# ---------------------------------------------------------------- the pipeline's figures


def read_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in m.get(name, []) if labels.items() <= lab.items())


@dataclass
class Reading:
    """The pipeline's figures at one moment."""

    t: float  # monotonic
    produced: float  # samples produced, every collect process
    offered_per_round: float  # samples the targets served at their last scrape
    scrape_errors: dict[str, float]  # by reason
    consumed: int  # rows below stage 1's committed offsets
    rows: int  # rows of the samples topic read back so far
    page_rows: int  # of which the targets' samples (the rest: gpuslo's health rows)
    ends: dict[str, int]  # records in each topic
    lag: dict[str, float]  # records behind, by consumer group (the aggregate's /metrics)
    am_sent: float
    prometheus: float | None  # samples Prometheus appended


class TopicIndex:
    """Rows of each record of the samples topic by offset: which rows a committed offset
    covers (consumed), and how many were the targets' samples rather than health rows."""

    def __init__(self) -> None:
        self.offsets: dict[int, list[int]] = {}
        self.cum_rows: dict[int, list[int]] = {}
        self.rows = 0
        self.page_rows = 0
        self.batch_values = 0

    def add(self, partition: int, offset: int, value: bytes) -> None:
        frame = decode(value)
        offs = self.offsets.setdefault(partition, [])
        cum = self.cum_rows.setdefault(partition, [])
        offs.append(offset)
        cum.append((cum[-1] if cum else 0) + frame.height)
        self.rows += frame.height
        self.page_rows += int((frame["source"] != HEALTH_SOURCE).sum())
        self.batch_values += len(value)

    def rows_below(self, committed: dict[int, int]) -> int:
        out = 0
        for p, off in committed.items():
            i = bisect.bisect_left(self.offsets.get(p, []), off)
            out += self.cum_rows[p][i - 1] if i else 0
        return out


class Kafka:
    """The benchmark's own view of the broker: end offsets, committed offsets, the topic."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.index = TopicIndex()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                         auto_offset_reset="earliest", group_id=None)
        # Never subscribes, so never joins stage 1's group: it only reads its commits.
        # (The admin client's OffsetFetch is not understood by the embedded broker.)
        self.commits = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="gpuslo-sli",
                                        enable_auto_commit=False)
        self.meta = AIOKafkaClient(bootstrap_servers=bootstrap)
        self.parts: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        await self.consumer.start()
        await self.commits.start()
        await self.meta.bootstrap()

    async def close(self) -> None:
        await self.consumer.stop()
        await self.commits.stop()
        await self.meta.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        if not self.parts.get(topic):
            # A consumer's metadata covers the topics it reads once it reads one: ask a
            # plain client (as bench_collect does).
            await self.meta.force_metadata_update()
            self.parts[topic] = [TopicPartition(topic, p) for p in
                                 sorted(self.meta.cluster.partitions_for_topic(topic) or ())]
            if topic == SAMPLES_TOPIC and self.parts[topic]:
                self.consumer.assign(self.parts[topic])
                await self.consumer.seek_to_beginning(*self.parts[topic])
        return self.parts[topic]

    async def read(self) -> tuple[dict[str, int], int]:
        """Read the new records of the samples topic; end offsets and rows consumed."""
        ends: dict[str, int] = {}
        for topic in (SAMPLES_TOPIC, SLI_TOPIC):
            parts = await self._partitions(topic)
            ends[topic] = sum((await self.consumer.end_offsets(parts)).values()) if parts else 0
        if self.parts.get(SAMPLES_TOPIC):
            while True:
                got = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, records in got.items():
                    for r in records:
                        if r.value is not None:
                            self.index.add(tp.partition, r.offset, r.value)
                if not got:
                    break
        offs = {}
        for tp in self.parts.get(SAMPLES_TOPIC, []):
            committed = await self.commits.committed(tp)
            if committed is not None:
                offs[tp.partition] = committed
        return ends, self.index.rows_below(offs)


async def get_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        resp.raise_for_status()
        return await resp.text()


async def take_reading(session: aiohttp.ClientSession, kafka: Kafka, collects: list[Proc],
                       aggregate: Proc, prom_url: str | None) -> Reading:
    produced = offered = 0.0
    errors: dict[str, float] = {}
    for c in collects:
        assert c.metrics is not None
        m = read_metrics(await get_text(session, c.metrics))
        produced += total(m, "gpuslo_samples_produced_total")
        offered += total(m, "gpuslo_scrape_samples")
        for labels, v in m.get("gpuslo_scrape_errors_total", []):
            errors[labels["reason"]] = errors.get(labels["reason"], 0.0) + v
    assert aggregate.metrics is not None
    agg = read_metrics(await get_text(session, aggregate.metrics))
    lag = {g: total(agg, "gpuslo_consumer_lag_records", consumer=g) for g in GROUPS}
    prom = None
    if prom_url is not None:
        pm = read_metrics(await get_text(session, prom_url + "/metrics"))
        prom = total(pm, "prometheus_tsdb_head_samples_appended_total")
    ends, consumed = await kafka.read()
    return Reading(time.monotonic(), produced, offered, errors, consumed,
                   kafka.index.rows, kafka.index.page_rows, ends, lag,
                   total(agg, "gpuslo_alertmanager_alerts_sent_total"), prom)


# ---------------------------------------------------------------- alerts


@dataclass
class Arrival:
    """One alert as Alertmanager first listed it."""

    labels: dict[str, str]
    starts: datetime
    received: datetime  # Alertmanager's updatedAt when first listed
    fault_at: datetime | None = None  # the injection of the fault that caused it

    @property
    def delivery_s(self) -> float:
        return (self.received - self.starts).total_seconds()

    @property
    def from_fault_s(self) -> float | None:
        return None if self.fault_at is None else (self.received - self.fault_at).total_seconds()


def rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def poll_alertmanager(session: aiohttp.ClientSession, am: str,
                            seen: dict[str, Arrival], faults: dict[str, datetime]) -> None:
    for a in json.loads(await get_text(session, am + "/api/v2/alerts")):
        if a["fingerprint"] in seen:
            continue
        labels = dict(a["labels"])
        arrival = Arrival(labels, rfc3339(a["startsAt"]), rfc3339(a["updatedAt"]))
        if labels.get("slo") == "gpu-availability":
            arrival.fault_at = faults.get(labels.get("node", ""))
        seen[a["fingerprint"]] = arrival


async def inject(session: aiohttp.ClientSession, sim: str, node: str) -> datetime:
    body = {"kind": FAULT, "target": f"{node}/gpu{GPU_OF_FAULT}", "duration_s": 7200,
            "intensity": 1.0}
    at = datetime.now(UTC)
    async with session.post(sim + "/faults", json=body,
                            timeout=aiohttp.ClientTimeout(total=5)) as resp:
        if resp.status != 201:
            raise SystemExit(f"injecting {body}: HTTP {resp.status} {await resp.text()}")
    return at


def fault_nodes(nodes: list[str], count: int) -> Iterator[str]:
    """GPU nodes spread over the fleet (every seventh), so faults land on every collector."""
    order = sorted((n for n in nodes if node_number(n) >= 0), key=node_number)
    for i in range(count):
        yield order[(3 + 7 * i) % len(order)]


# ---------------------------------------------------------------- setup


def scenario_yaml(nodes: int) -> str:
    """Real time, the simulated clock at the wall clock once the simulator's warm-up ends."""
    start = datetime.now(UTC) - timedelta(seconds=WARM_UP_SIM_S)
    return yaml.safe_dump({
        "name": "soak", "description": "gpuslo soak benchmark: faults injected while it runs",
        "seed": 0, "speed": 1, "warmup": f"{WARM_UP_SIM_S}s",
        "fleet": {"nodes": nodes, "start": start.isoformat()}, "faults": []})


def node_number(node: str) -> int:
    """``node-12`` -> 12; a fleet-wide endpoint's "node" (``ceph``) -> -1."""
    head, _, tail = node.rpartition("-")
    return int(tail) if head == "node" and tail.isdigit() else -1


def split_fleet(fleet: Fleet, parts: int) -> list[Fleet]:
    """The fleet's nodes dealt round-robin to ``parts`` collect processes."""
    nodes = sorted({t.node for t in fleet.targets}, key=lambda n: (node_number(n), n))
    out = []
    for i in range(parts):
        mine = set(nodes[i::parts])
        out.append(Fleet([t for t in fleet.targets if t.node in mine],
                         [f for f in fleet.files if f["node"] in mine]))
    return out


def start_everything(args: argparse.Namespace, tmp: Path) -> tuple[list[Proc], dict[str, Any]]:
    """Start the processes in dependency order; what the run needs to find them."""
    procs: list[Proc] = []
    am_port, broker_port, sim_port = free_port(), free_port(), free_port()
    am_dir = tmp / "alertmanager"
    am_dir.mkdir()
    (am_dir / "alertmanager.yml").write_text(AM_CONFIG)
    procs.append(spawn("alertmanager", [
        args.alertmanager, f"--config.file={am_dir / 'alertmanager.yml'}",
        f"--storage.path={am_dir / 'data'}", f"--web.listen-address=127.0.0.1:{am_port}",
        f"--web.external-url=http://127.0.0.1:{am_port}", "--cluster.listen-address=",
        "--log.level=warn"], tmp))
    am = f"http://127.0.0.1:{am_port}"
    procs.append(spawn("broker", [str(GPUSLO), "broker", "--port", str(broker_port)], tmp,
                       judged=False))
    bootstrap = f"127.0.0.1:{broker_port}"
    scenario = tmp / "soak.yaml"
    scenario.write_text(scenario_yaml(args.nodes))
    procs.append(spawn("simulator", [
        str(GPUSLO), "simulate", "--scenario", str(scenario), "--port", str(sim_port),
        "--ground-truth", str(tmp / "truth.jsonl")], tmp))
    sim = f"http://127.0.0.1:{sim_port}"
    wait_http(am + "/-/ready", 30, procs[0].popen)
    deadline = time.monotonic() + 60
    while "listening on" not in (tmp / "broker.log").read_text(errors="replace"):
        procs[1].check()
        if time.monotonic() > deadline:
            raise SystemExit("the broker did not start within 60 s")
        time.sleep(0.2)
    fleet = load_fleet(wait_http(sim + "/targets", 180, procs[2].popen), None)

    agg_port = free_port()
    agg_cfg = {
        "log_level": "WARNING",
        "kafka": {"bootstrap_servers": bootstrap},
        "slo": {"checkpoint_dir": str(tmp / "state")},
        "alerts": {"alertmanager": {"urls": [am]}},
        "exporters": {"prometheus": {"host": "127.0.0.1", "port": agg_port},
                      "web": {"enabled": False}},
    }
    (tmp / "aggregate.yaml").write_text(yaml.safe_dump(agg_cfg))
    aggregate = spawn("aggregate", [str(GPUSLO), "aggregate", "--config",
                                    str(tmp / "aggregate.yaml"), "--specs", str(CATALOG_DIR)],
                      tmp, judged=True, metrics=f"http://127.0.0.1:{agg_port}/metrics")
    procs.append(aggregate)
    wait_http(f"http://127.0.0.1:{agg_port}/healthz", 60, aggregate.popen)

    collects = []
    for i, part in enumerate(split_fleet(fleet, args.collect_processes)):
        port = free_port()
        cfg = gpuslo_config(part, "printed", args.interval, bootstrap, SAMPLES_TOPIC)
        cfg = apply_settings(cfg, [f"exporters.prometheus.port={port}", *args.set])
        path = tmp / f"collect-{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        c = spawn(f"collect-{i}", [str(GPUSLO), "collect", "--config", str(path)], tmp,
                  judged=True, metrics=f"http://127.0.0.1:{port}/metrics")
        collects.append(c)
        procs.append(c)
    for c in collects:
        assert c.metrics is not None
        wait_http(c.metrics.replace("/metrics", "/healthz"), 60, c.popen)

    prom_url = None
    if args.prometheus_peer:
        pdir = tmp / "prometheus"
        pdir.mkdir()
        (pdir / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(fleet, args.interval)))
        pport = free_port()
        prom = spawn("prometheus", [
            args.prometheus, f"--config.file={pdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={pdir / 'data'}", f"--web.listen-address=127.0.0.1:{pport}",
            "--log.level=warn"], tmp)
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{pport}"
        wait_http(prom_url + "/-/ready", 60, prom.popen)
    return procs, {"am": am, "sim": sim, "bootstrap": bootstrap, "fleet": fleet,
                   "collects": collects, "aggregate": aggregate, "prom_url": prom_url}


# ---------------------------------------------------------------- the run


def rate(a: Reading, b: Reading, attr: str) -> float:
    return float(getattr(b, attr) - getattr(a, attr)) / (b.t - a.t)


def new_errors(a: Reading, b: Reading) -> str:
    """Scrape errors between two readings, by reason."""
    grown = {k: v - a.scrape_errors.get(k, 0.0) for k, v in sorted(b.scrape_errors.items())}
    return ", ".join(f"{k} +{v:.0f}" for k, v in grown.items() if v) or "none"


def page_rate(a: Reading, b: Reading) -> float:
    """Produced samples/s that are the targets' own (the topic's share of them)."""
    return rate(a, b, "produced") * (b.page_rows - a.page_rows) / max(b.rows - a.rows, 1)


def lag_seconds(r: Reading, rates: dict[str, float]) -> dict[str, float]:
    return {g: r.lag[g] / rates[t] if rates.get(t) else math.nan for g, t in GROUPS.items()}


def topic_rates(a: Reading, b: Reading) -> dict[str, float]:
    return {t: (b.ends[t] - a.ends[t]) / (b.t - a.t) for t in (SAMPLES_TOPIC, SLI_TOPIC)}


def fmt_procs(procs: list[Proc], t0: float, t1: float) -> str:
    parts = []
    for p in procs:
        rss = between(p.rss, t0, t1)
        parts.append(f"{p.name} {cpu_m(p, t0, t1):.0f}m/{rss[-1] if rss else math.nan:.0f}MiB")
    return "  ".join(parts)


async def soak(args: argparse.Namespace, procs: list[Proc], ctx: dict[str, Any]) -> int:
    collects: list[Proc] = ctx["collects"]
    aggregate: Proc = ctx["aggregate"]
    interval = args.interval
    kafka = Kafka(ctx["bootstrap"])
    await kafka.start()
    readings: list[Reading] = []
    seen: dict[str, Arrival] = {}
    faults: dict[str, datetime] = {}
    nodes = sorted({t.node for t in ctx["fleet"].targets})
    to_fault = fault_nodes(nodes, args.minutes + 1)
    failures: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            begin = time.monotonic()
            warm_end = begin + args.warmup
            end = warm_end + 60 * args.minutes
            next_step = begin
            next_fault = warm_end - 30  # the first fault pages inside the first minute
            minute_marks = [warm_end + 60 * i for i in range(args.minutes + 1)]
            shown = 0
            print(f"warm-up {args.warmup:g} s, then {args.minutes} minute(s) measured",
                  flush=True)
            while True:
                now = time.monotonic()
                if now >= end + 1:
                    break
                for p in procs:
                    p.check()
                sample_procs(procs)
                if now >= next_fault and now < end - 45:
                    node = next(to_fault)
                    faults[node] = await inject(session, ctx["sim"], node)
                    print(f"  fault: {FAULT} on {node}/gpu{GPU_OF_FAULT} at "
                          f"{faults[node]:%H:%M:%S}", flush=True)
                    next_fault += 60
                if now >= next_step:
                    next_step += STEP_S
                    try:
                        readings.append(await take_reading(session, kafka, collects, aggregate,
                                                           ctx["prom_url"]))
                        await poll_alertmanager(session, ctx["am"], seen, faults)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        print(f"  reading failed: {type(exc).__name__}: {exc}", flush=True)
                if shown < args.minutes and now >= minute_marks[shown + 1]:
                    shown += 1
                    print_minute(shown, readings, minute_marks[shown - 1], minute_marks[shown],
                                 procs, seen, interval)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            failures = summary(args, readings, procs, seen, faults, warm_end, end, kafka)
    finally:
        await kafka.close()
    return 1 if failures else 0


def window(readings: list[Reading], t0: float, t1: float) -> list[Reading]:
    return [r for r in readings if t0 - STEP_S / 2 <= r.t <= t1 + STEP_S / 2]


def print_minute(n: int, readings: list[Reading], t0: float, t1: float, procs: list[Proc],
                 seen: dict[str, Arrival], interval: float) -> None:
    w = window(readings, t0, t1)
    if len(w) < 2:
        print(f"minute {n}: too few readings", flush=True)
        return
    a, b = w[0], w[-1]
    rates = topic_rates(a, b)
    lags = [lag_seconds(r, rates) for r in w]
    lag_txt = ", ".join(
        f"{g} max {max(r.lag[g] for r in w):.0f} rec ({max(x[g] for x in lags):.1f} s)"
        for g in GROUPS)
    prom = (f", Prometheus {rate(a, b, 'prometheus'):,.0f}" if a.prometheus is not None
            and b.prometheus is not None else "")
    wall0 = datetime.now(UTC) - timedelta(seconds=time.monotonic() - t0)
    new = [x for x in seen.values() if x.received >= wall0]
    alerts = (f"; {len(new)} alert(s) arrived, delivery "
              + ", ".join(f"{x.delivery_s:.1f}" for x in new) + " s") if new else ""
    print(f"minute {n}: samples/s offered {b.offered_per_round / interval:,.0f} (pages), "
          f"produced {rate(a, b, 'produced'):,.0f} (pages {page_rate(a, b):,.0f}), "
          f"consumed {rate(a, b, 'consumed'):,.0f}{prom}; scrape errors "
          f"{new_errors(a, b)}; records +{b.ends[SAMPLES_TOPIC] - a.ends[SAMPLES_TOPIC]}"
          f" samples, +{b.ends[SLI_TOPIC] - a.ends[SLI_TOPIC]} sli; lag {lag_txt}{alerts}",
          flush=True)
    print(f"  CPU/RSS: {fmt_procs(procs, t0, t1)}", flush=True)


def summary(args: argparse.Namespace, readings: list[Reading], procs: list[Proc],
            seen: dict[str, Arrival], faults: dict[str, datetime], t0: float, t1: float,
            kafka: Kafka) -> list[str]:
    failures: list[str] = []
    w = window(readings, t0, t1)
    if len(w) < 3:
        return ["too few readings of the pipeline's figures"]
    a, b = w[0], w[-1]
    secs = b.t - a.t
    offered = statistics.median(r.offered_per_round for r in w) / args.interval
    produced, pages, consumed = rate(a, b, "produced"), page_rate(a, b), rate(a, b, "consumed")
    floor = 1 - args.rate_tolerance
    print(f"\nsummary over {secs:.0f} s after a {args.warmup:g} s warm-up "
          f"({args.nodes} nodes, {args.collect_processes} collect process(es), "
          f"interval {args.interval:g} s); load average {fmt_load()}")
    print(f"  samples/s: offered {offered:,.0f} (pages), produced {produced:,.0f} "
          f"(pages {pages:,.0f}, +health rows), consumed by stage 1 {consumed:,.0f}"
          + (f"; Prometheus appended {rate(a, b, 'prometheus'):,.0f}"
             if a.prometheus is not None and b.prometheus is not None else ""))
    print(f"  scrape errors in the window: {new_errors(a, b)}")
    if pages < floor * offered:
        failures.append(f"produced page samples/s {pages:,.0f} < {floor:.0%} of offered "
                        f"{offered:,.0f}")
    if consumed < floor * produced:
        failures.append(f"consumed samples/s {consumed:,.0f} < {floor:.0%} of produced "
                        f"{produced:,.0f}")
    rates = topic_rates(a, b)
    for g, topic in GROUPS.items():
        lag_rec = [r.lag[g] for r in w]
        lag_s = [lag_seconds(r, rates)[g] for r in w]
        bound = rates[topic] * args.max_lag_s
        print(f"  lag {g} ({topic}, {rates[topic]:.1f} records/s): median "
              f"{statistics.median(lag_rec):.0f}, max {max(lag_rec):.0f} records "
              f"(max {max(lag_s):.1f} s; bound {args.max_lag_s:g} s = {bound:.0f} records), "
              f"last reading {lag_rec[-1]:.0f}")
        if max(lag_rec) > bound:
            failures.append(f"consumer group {g} {max(lag_rec):.0f} records behind "
                            f"> {bound:.0f} ({args.max_lag_s:g} s of {topic})")
    caused = sorted((x for x in seen.values() if x.fault_at is not None),
                    key=lambda x: x.received)
    others = [x for x in seen.values() if x.fault_at is None]
    print(f"  faults injected: {len(faults)}; alerts in Alertmanager: {len(seen)} "
          f"({len(caused)} of the injected faults, {len(others)} others); "
          f"gpuslo_alertmanager_alerts_sent_total {b.am_sent:.0f}")
    for x in caused:
        print(f"    {x.labels.get('alertname')} {x.labels.get('node')} "
              f"{x.labels.get('severity')}: fault {x.fault_at:%H:%M:%S}, startsAt "
              f"{x.starts:%H:%M:%S}, in Alertmanager {x.received:%H:%M:%S}; delivery "
              f"{x.delivery_s:.2f} s, fault to Alertmanager {x.from_fault_s:.1f} s")
    for x in others:
        scope = ", ".join(f"{k}={v}" for k, v in sorted(x.labels.items())
                          if k not in ("alertname", "severity", "slo"))
        print(f"    (not injected) {x.labels.get('alertname')} {x.labels.get('severity')} "
              f"{{{scope}}}: startsAt {x.starts:%H:%M:%S}, delivery {x.delivery_s:.2f} s")
    if seen:
        d = sorted(x.delivery_s for x in seen.values())
        print(f"  delivery delay (startsAt to Alertmanager), all {len(d)} alerts: median "
              f"{statistics.median(d):.2f} s, max {d[-1]:.2f} s")
    if not caused:
        failures.append("no alert of an injected fault reached Alertmanager")
    print(f"  {'process':<14}{'CPU m':>7}{'p95 m':>7}{'RSS MiB':>9}{'peak':>7}{'growth':>8}"
          f"{'bound':>8}")
    runs: list[Run] = []
    for p in procs:
        rss = between(p.rss, t0, t1)
        pts = [(t, v) for t, v in p.cpu if t0 <= t <= t1]
        steps = [(v1 - v0) / (u1 - u0) for (u0, v0), (u1, v1) in itertools.pairwise(pts)]
        run = Run(p.name, secs, 0, pts[-1][1] - pts[0][1], steps, rss, max(rss))
        runs.append(run)
        growth = run.rss_growth_mib
        bound = f"{args.rss_growth_mib:g}" if p.judged else "-"
        print(f"  {p.name:<14}{cpu_m(p, t0, t1):>7.0f}"
              f"{1000 * sorted(steps)[int(0.95 * (len(steps) - 1))]:>7.0f}"
              f"{statistics.median(rss):>9.1f}{max(rss):>7.1f}{growth:>+8.1f}{bound:>8}")
        if p.judged and growth > args.rss_growth_mib:
            failures.append(f"{p.name}: RSS grew {growth:.1f} MiB after the warm-up "
                            f"> {args.rss_growth_mib:g} MiB")
        if p.name == "broker":
            grown = rss[-1] - rss[0]
            print(f"    (the memory-only broker holds every record: {grown:+.1f} MiB for "
                  f"{(b.produced - a.produced):,.0f} samples, "
                  f"{grown * MIB / max(b.produced - a.produced, 1):.1f} B/sample; "
                  f"record values {kafka.index.batch_values / max(kafka.index.rows, 1):.1f} "
                  f"B/sample before compression)")
    pipeline = [r for r in runs if r.peer.startswith(("collect", "aggregate", "broker"))]
    sim = next(r for r in runs if r.peer == "simulator")
    whole = Run("gpuslo (all)", secs, int(b.produced - a.produced),
                sum(r.cpu_s for r in pipeline),
                [sum(x) for x in zip(*(r.cpu_steps for r in pipeline), strict=False)],
                [sum(x) for x in zip(*(r.rss_mib for r in pipeline), strict=False)], 0.0,
                sim_cpu_s=sim.cpu_s)
    whole.hwm_mib = max(whole.rss_mib)
    prom = next((r for r in runs if r.peer == "prometheus"), None)
    if prom is not None and a.prometheus is not None and b.prometheus is not None:
        prom.samples = int(b.prometheus - a.prometheus)
        prom.sim_cpu_s = sim.cpu_s
        print("  the pipeline (collect + broker + aggregate, RSS summed) beside Prometheus "
              "(scrape + TSDB) on the same targets, at the same time:")
        print_round([whole, prom], prom)
    print("bounds: " + ("all held" if not failures else "FAILED: " + "; ".join(failures)))
    return failures


def fmt_load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=64, help="simulated nodes")
    ap.add_argument("--interval", type=float, default=5.0, help="scrape interval, seconds")
    ap.add_argument("--minutes", type=int, default=10, help="minutes measured after warm-up")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before measuring")
    ap.add_argument("--collect-processes", type=int, default=2,
                    help="gpuslo collect processes, the nodes split between them")
    ap.add_argument("--no-prometheus", dest="prometheus_peer", action="store_false",
                    help="do not run Prometheus beside the pipeline")
    ap.add_argument("--prometheus", default="prometheus", help="the Prometheus binary")
    ap.add_argument("--alertmanager", default="prometheus-alertmanager",
                    help="the Alertmanager binary")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the collect processes, e.g. kafka.record_linger_ms=1000")
    ap.add_argument("--rate-tolerance", type=float, default=0.05,
                    help="produced may fall this share below offered (and consumed below "
                    "produced)")
    ap.add_argument("--max-lag-s", type=float, default=60.0,
                    help="most seconds of a topic's records a consumer group may be behind")
    ap.add_argument("--rss-growth-mib", type=float, default=32.0,
                    help="most RSS growth after warm-up of a collect or aggregate process")
    args = ap.parse_args()
    if args.minutes < 1:
        raise SystemExit("--minutes: at least 1")
    print(f"soak: {args.nodes} nodes at {args.interval:g} s, {args.minutes} min after "
          f"{args.warmup:g} s warm-up; {os.cpu_count()} CPUs, load average {fmt_load()}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="gpuslo-soak-") as tmp_name:
        tmp = Path(tmp_name)
        procs: list[Proc] = []
        try:
            procs, ctx = start_everything(args, tmp)
            fleet: Fleet = ctx["fleet"]
            print(f"started: {len(fleet.targets)} targets "
                  f"({len(fleet.prometheus_targets())} in Prometheus format), "
                  + ", ".join(f"{p.name} (pid {p.popen.pid})" for p in procs), flush=True)
            code = asyncio.run(soak(args, procs, ctx))
        finally:
            order = sorted(procs, key=lambda p: ["collect", "aggregate", "prometheus",
                                                 "simulator", "broker", "alertmanager"].index(
                p.name.split("-")[0]))
            stop_all(order)
    return code


if __name__ == "__main__":
    sys.exit(main())
