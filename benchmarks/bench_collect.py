"""Benchmark: ``gpuslo collect`` against Prometheus scraping the same targets, side by side.

Why: a DaemonSet runs on every GPU node, so its CPU per sample is multiplied by the
fleet; the figure an SRE compares is what Prometheus (or its agent mode) costs for the
same pages.  The target is CPU per stored sample <= 1.0x Prometheus' (``--target``).

What runs, one after the other on this machine, against one simulated fleet
(``gpuslo simulate``, its own process, not measured):

* ``gpuslo collect`` producing to an embedded broker that this script runs (so the
  collect process is measured alone, as on a node: Kafka is elsewhere);
* Prometheus (the Debian package) scraping the same Prometheus-format targets at the
  same interval into its TSDB;
* Prometheus in agent mode (``--enable-feature=agent``: scrape + WAL, the closest peer
  to a collector);
* optionally another gpuslo build (``--baseline-gpuslo PATH``, e.g. the previous
  release's console script) the same way, for "today's" figures beside the new ones.

For each: samples stored per second (Prometheus: its samples-appended counter; gpuslo:
rows of the records produced in the window, read back from Kafka), CPU seconds per
million samples (utime + stime from ``/proc/<pid>/stat`` of the process and any live
children, over the window after a warm-up), mean / p95 / max CPU of 1-second steps,
RSS (sampled each second; VmHWM is the peak) and its growth after warm-up, and for
gpuslo the bytes per sample that reach Kafka after compression (the record batches as
the broker holds them).

Samples counted: Prometheus adds five series per target (``up``, ``scrape_*``) and
gpuslo three health rows per target; both store what their scrapes yield.  Prometheus
is told ``honor_timestamps: false`` because the simulated cAdvisor stamps its samples
in simulated time, which a TSDB would reject as out of bounds, so both store every
sample.

``--config``: ``printed`` (default) is exactly ``gpuslo simulate --print-config``: the
generic collector per source, the same pages Prometheus reads.  ``sources`` runs the
source collectors (DCGM, kubelet incl. ``/stats/summary``, RDMA, storage, engines)
with entities and normalised signals; ``daemonset`` adds the RDMA sysfs and
``/proc/diskstats`` file readers, as a DaemonSet pod runs.  ``--node node-5`` keeps
one node's targets (node-5: DCGM, kubelet, RDMA, storage and two vLLM engines), which
is how the per-node budget in the README was measured.

Run::

    python benchmarks/bench_collect.py --nodes 8 --interval 1 --duration 60
    python benchmarks/bench_collect.py --nodes 64 --interval 5 --duration 60 --repeat 2
    python benchmarks/bench_collect.py --config daemonset --node node-5 --interval 15 \\
        --duration 600 --peers gpuslo          # the per-node budget and memory over 10 min

The machine's other load makes single figures noisy; the peers run back to back in one
round, and ``--repeat`` runs more rounds and prints how stable the ratio was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from gpuslo.pipeline.app.fleet_targets import (
    PROMETHEUS_KINDS,
    collector_configs,
    prometheus_configs,
)
from gpuslo.pipeline.config import CollectorConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.schema import decode
from gpuslo.simulator.server import Target

GPUSLO = Path(sys.executable).parent / "gpuslo"
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# ---------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds incl. waited-for children) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): ppid is field 4; utime, stime, cutime, cstime 14-17.
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / TICKS


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants (children included)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent[int(entry.name)], cpu[int(entry.name)] = _stat(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [p for p, pp in parent.items() if pp == pid]
    return total


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return bytes(resp.read())


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            return http_get(url, 2.0)
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# ---------------------------------------------------------------- the fleet and configs


@dataclass(frozen=True)
class Fleet:
    """The simulated targets (and per-node files) this benchmark reads."""

    targets: list[Target]
    files: list[dict[str, str]]

    def prometheus_targets(self) -> list[Target]:
        return [t for t in self.targets if t.kind in PROMETHEUS_KINDS]


def load_fleet(index: bytes, node: str | None) -> Fleet:
    data = json.loads(index)
    targets = [Target(**t) for t in data["targets"]]
    files = list(data["files"])
    if node is not None:
        targets = [t for t in targets if t.node == node]
        files = [f for f in files if f["node"] == node]
        if not targets:
            raise SystemExit(f"--node {node}: the simulated fleet has no such node")
    return Fleet(targets, files)


def _dump(c: CollectorConfig) -> dict[str, Any]:
    return {"type": c.type, **c.model_dump(mode="json", exclude_defaults=True, exclude={"type"})}


def gpuslo_config(fleet: Fleet, mode: str, interval: float, bootstrap: str,
                  topic: str) -> dict[str, Any]:
    """The ``gpuslo collect`` config of one run: collectors for ``mode``, Kafka at ``bootstrap``."""
    if mode == "printed":
        collectors = [_dump(c) for c in prometheus_configs(fleet.targets, interval)]
    else:
        collectors = [_dump(c) for c in collector_configs(fleet.targets, interval)]
    if mode == "daemonset":
        timeout = min(interval, 5.0)
        collectors += [
            {"type": "rdma", "name": "node-rdma", "interval_s": interval, "timeout_s": timeout,
             "sysfs": [{"path": f["sys_root"], "node": f["node"]} for f in fleet.files]},
            {"type": "storage", "name": "node-disks", "interval_s": interval,
             "timeout_s": timeout,
             "diskstats": [{"path": f["diskstats"], "node": f["node"]} for f in fleet.files]},
        ]
    return {"log_level": "WARNING", "collectors": collectors,
            "kafka": {"bootstrap_servers": bootstrap, "topics": {"samples": topic}},
            # gpuslo collect serves its health on /metrics: a free port, not the default 9464.
            "exporters": {"prometheus": {"host": "127.0.0.1", "port": 0}}}


def apply_settings(cfg: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """``cfg`` with ``a.b=value`` settings applied (values parsed as YAML)."""
    for item in settings:
        path, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. kafka.wire_version=1")
        node = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return cfg


def prometheus_config(fleet: Fleet, interval: float) -> dict[str, Any]:
    """One job over every Prometheus-format target, each its own path and instance label."""
    static = []
    for t in fleet.prometheus_targets():
        u = urlsplit(t.url)
        static.append({"targets": [u.netloc],
                       "labels": {"__metrics_path__": u.path, "instance": u.path}})
    return {
        "global": {"scrape_interval": f"{interval:g}s",
                   "scrape_timeout": f"{min(interval, 5.0):g}s"},
        "scrape_configs": [{"job_name": "sim", "honor_timestamps": False,
                            "static_configs": static}],
    }


# ---------------------------------------------------------------- Kafka read-back


@dataclass
class KafkaFigures:
    """What one gpuslo run left in its topic, within the measured window and overall."""

    rows_in_window: int = 0
    records: int = 0
    rows: int = 0
    batch_bytes: int = 0  # record batches as the broker stores them (compressed)
    value_bytes: int = 0  # record values before compression
    versions: dict[int, int] = field(default_factory=dict)  # wire version -> records


async def read_topic(bootstrap: str, topic: str, t0_ms: int, t1_ms: int) -> KafkaFigures:
    """Every record batch of ``topic``, fetched raw so its compressed size is known."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    out = KafkaFigures()
    try:
        await client.force_metadata_update()
        for p in sorted(client.cluster.partitions_for_topic(topic) or ()):
            leader = client.cluster.leader_for_partition(TopicPartition(topic, p))
            offset = 0
            while True:
                req = FetchRequest(500, 1, 64 * MIB, 0, [(topic, [(p, offset, 8 * MIB)])])
                resp = await client.send(leader, req)
                part = resp.topics[0][1][0]
                high, data = part[2], part[-1]
                if not data:
                    break
                offset = _count_batches(bytes(data), offset, out, t0_ms, t1_ms)
                if offset >= high:
                    break
    finally:
        await client.close()
    return out


def _count_batches(data: bytes, offset: int, out: KafkaFigures, t0_ms: int, t1_ms: int) -> int:
    """Add each whole batch in ``data`` to ``out``; return the offset after the last one."""
    i = 0
    while i + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, i)
        if i + 12 + length > len(data):
            break  # a partial batch at the end of the fetch: fetched again next time
        out.batch_bytes += 12 + length
        batch = MemoryRecords(data[i:i + 12 + length]).next_batch()
        assert batch is not None
        for rec in batch:
            value = bytes(rec.value)
            rows = decode(value).height
            out.records += 1
            out.rows += rows
            out.value_bytes += len(value)
            out.versions[value[4]] = out.versions.get(value[4], 0) + 1
            if t0_ms <= rec.timestamp <= t1_ms:
                out.rows_in_window += rows
        offset = base + struct.unpack_from(">i", data, i + 23)[0] + 1
        i += 12 + length
    return offset


# ---------------------------------------------------------------- one measured run


@dataclass
class Run:
    """One peer's measured window."""

    peer: str
    window_s: float
    samples: int
    cpu_s: float
    cpu_steps: list[float]
    rss_mib: list[float]
    hwm_mib: float
    sim_cpu_s: float = 0.0  # the simulator's CPU over the same window (not the peer's)
    wall_start: float = 0.0
    wall_end: float = 0.0
    kafka: KafkaFigures | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.samples / self.window_s

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_s / max(self.samples, 1) * 1e6

    @property
    def rss_growth_mib(self) -> float:
        """Median RSS of the last tenth of the window minus that of the first tenth."""
        k = max(1, len(self.rss_mib) // 10)
        return statistics.median(self.rss_mib[-k:]) - statistics.median(self.rss_mib[:k])


def measure(peer: str, proc: subprocess.Popen[bytes], warmup: float, duration: float,
            counter: Any | None, sim_pid: int) -> Run:
    """Sample ``proc``'s CPU and RSS each second over ``duration`` after ``warmup``."""
    end_warm = time.monotonic() + warmup
    while time.monotonic() < end_warm:
        if proc.poll() is not None:
            raise SystemExit(f"{peer} exited during warm-up ({proc.returncode})")
        time.sleep(0.25)
    pid = proc.pid
    samples0 = counter() if counter else 0
    cpu0, t0, wall0 = tree_cpu_s(pid), time.monotonic(), time.time()
    sim0 = _stat(sim_pid)[1]
    steps: list[float] = []
    rss: list[float] = []
    last_cpu, last_t, shown = cpu0, t0, t0
    while last_t - t0 < duration:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise SystemExit(f"{peer} exited while measured ({proc.returncode})")
        cpu, now = tree_cpu_s(pid), time.monotonic()
        steps.append((cpu - last_cpu) / (now - last_t))
        rss.append(status_kib(pid, "VmRSS") / 1024)
        last_cpu, last_t = cpu, now
        if now - shown >= 10 or now - t0 >= duration:
            shown = now
            mean = 1000 * (cpu - cpu0) / (now - t0)
            print(f"    {now - t0:4.0f}/{duration:g} s: CPU {mean:4.0f}m, RSS {rss[-1]:6.1f} MiB",
                  flush=True)
    samples = (counter() - samples0) if counter else 0
    hwm = status_kib(pid, "VmHWM") / 1024
    return Run(peer, last_t - t0, samples, last_cpu - cpu0, steps, rss, hwm,
               sim_cpu_s=_stat(sim_pid)[1] - sim0, wall_start=wall0,
               wall_end=wall0 + (last_t - t0))


def prom_counter(base: str, name: str) -> int:
    total = 0.0
    for line in http_get(base + "/metrics").decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def run_prometheus(fleet: Fleet, args: argparse.Namespace, tmp: Path, agent: bool) -> Run:
    peer = "prometheus agent" if agent else "prometheus"
    work = Path(tempfile.mkdtemp(prefix="prom-", dir=tmp))
    cfg = work / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(prometheus_config(fleet, args.interval)))
    port = free_port()
    argv = [args.prometheus, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn"]
    argv += (["--enable-feature=agent", f"--storage.agent.path={work / 'wal'}"] if agent else
             [f"--storage.tsdb.path={work / 'data'}"])
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    name = ("prometheus_agent_samples_appended_total" if agent
            else "prometheus_tsdb_head_samples_appended_total")
    try:
        wait_http(base + "/-/ready", 30, proc)
        run = measure(peer, proc, args.warmup, args.duration, lambda: prom_counter(base, name),
                      args.sim_pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return run


def run_gpuslo(peer: str, exe: str, fleet: Fleet, args: argparse.Namespace, tmp: Path,
               bootstrap: str, topic: str, settings: list[str]) -> Run:
    cfg_path = tmp / f"{topic}.yaml"
    cfg = gpuslo_config(fleet, args.config, args.interval, bootstrap, topic)
    cfg_path.write_text(yaml.safe_dump(apply_settings(cfg, settings), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    log_path = tmp / f"{topic}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [exe, "collect", "--config", str(cfg_path),
             "--duration", str(args.warmup + args.duration + 3)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            run = measure(peer, proc, args.warmup, args.duration, None, args.sim_pid)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run.kafka = asyncio.run(read_topic(bootstrap, topic, int(run.wall_start * 1000),
                                       int(run.wall_end * 1000)))
    run.samples = run.kafka.rows_in_window
    summary = [ln for ln in log_path.read_text(errors="replace").splitlines()
               if ln.startswith("produced")]
    run.note = summary[-1].strip() if summary else log_path.read_text(errors="replace")[-300:]
    return run


# ---------------------------------------------------------------- report


def print_round(runs: list[Run], ref: Run | None) -> None:
    print(f"  {'peer':<22}{'samples/s':>11}{'CPU s/M':>9}{'ratio':>7}{'CPU m':>7}{'p95 m':>7}"
          f"{'max m':>7}{'RSS MiB':>9}{'peak':>7}{'growth':>8}{'Kafka B/sample':>16}{'sim m':>7}")
    for r in runs:
        steps = sorted(r.cpu_steps)
        p95 = steps[int(0.95 * (len(steps) - 1))] if steps else 0.0
        ratio = f"{r.cpu_per_million / ref.cpu_per_million:.2f}x" if ref else "-"
        kafka = (f"{r.kafka.batch_bytes / max(r.kafka.rows, 1):.2f}" if r.kafka else "")
        print(f"  {r.peer:<22}{r.rate:>11,.0f}{r.cpu_per_million:>9.2f}{ratio:>7}"
              f"{1000 * r.cpu_s / r.window_s:>7.0f}{1000 * p95:>7.0f}{1000 * max(steps):>7.0f}"
              f"{statistics.median(r.rss_mib):>9.1f}{r.hwm_mib:>7.1f}{r.rss_growth_mib:>+8.1f}"
              f"{kafka:>16}{1000 * r.sim_cpu_s / r.window_s:>7.0f}")
    for r in runs:
        if r.kafka:
            k = r.kafka
            versions = ", ".join(f"v{v}: {n}" for v, n in sorted(k.versions.items()))
            print(f"    {r.peer}: {k.rows:,} samples in {k.records:,} records ({versions}), "
                  f"{k.value_bytes / max(k.rows, 1):.1f} B/sample before compression, "
                  f"{k.batch_bytes / max(k.rows, 1):.2f} after; {r.note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=8, help="simulated nodes (8 or 64)")
    ap.add_argument("--node", help="keep only this node's targets (e.g. node-5)")
    ap.add_argument("--interval", type=float, default=1.0, help="scrape interval, seconds")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per peer")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every peer")
    ap.add_argument("--config", choices=("printed", "sources", "daemonset"), default="printed")
    ap.add_argument("--peers", default="gpuslo,prometheus,agent",
                    help="comma-separated: gpuslo, baseline, prometheus, agent")
    ap.add_argument("--baseline-gpuslo", help="another gpuslo console script to measure as "
                    "peer 'baseline' (e.g. the previous release's)")
    ap.add_argument("--prometheus", default="prometheus", help="the Prometheus binary")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a gpuslo setting for the gpuslo peer (not the baseline), e.g. "
                    "kafka.record_linger_ms=5000; repeatable")
    ap.add_argument("--target", type=float, default=1.0,
                    help="gpuslo CPU per sample must be at most this multiple of Prometheus'")
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if "baseline" in peers and not args.baseline_gpuslo:
        peers.remove("baseline")
    if args.baseline_gpuslo and "baseline" not in peers:
        peers.insert(1, "baseline")

    with tempfile.TemporaryDirectory(prefix="gpuslo-bench-collect-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        # The sysfs tree costs the simulator ten times its pages: only when read.
        files = ["--sysfs-dir", str(tmp / "sysfs")] if args.config == "daemonset" else []
        sim = subprocess.Popen(
            [str(GPUSLO), "simulate", "--nodes", str(args.nodes), "--port", str(port), *files],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        args.sim_pid = sim.pid
        broker = EmbeddedBroker().start()
        try:
            fleet = load_fleet(wait_http(f"http://127.0.0.1:{port}/targets", 60, sim), args.node)
            n_prom = len(fleet.prometheus_targets())
            only = f", only {args.node}" if args.node else ""
            print(f"simulated fleet: {args.nodes} nodes{only};"
                  f" {len(fleet.targets)} targets ({n_prom} in Prometheus format), interval "
                  f"{args.interval:g} s; gpuslo config '{args.config}'; each peer: "
                  f"{args.warmup:g} s warm-up, {args.duration:g} s measured; "
                  f"{args.repeat} round(s)", flush=True)
            ratios: list[float] = []
            all_runs: list[list[Run]] = []
            for rnd in range(1, args.repeat + 1):
                runs: list[Run] = []
                for i, peer in enumerate(peers, 1):
                    print(f"[round {rnd}/{args.repeat}, {i}/{len(peers)}] {peer} ...", flush=True)
                    topic = f"bench.{peer}.{rnd}"
                    if peer == "gpuslo":
                        runs.append(run_gpuslo("gpuslo collect", str(GPUSLO), fleet, args, tmp,
                                               broker.bootstrap_servers, topic, args.set))
                    elif peer == "baseline":
                        runs.append(run_gpuslo("gpuslo (baseline)", args.baseline_gpuslo, fleet,
                                               args, tmp, broker.bootstrap_servers, topic, []))
                    elif peer in ("prometheus", "agent"):
                        runs.append(run_prometheus(fleet, args, tmp, agent=peer == "agent"))
                    else:
                        raise SystemExit(f"unknown peer {peer!r}")
                ref = next((r for r in runs if r.peer == "prometheus"), None)
                print(f"round {rnd}: CPU per stored sample, ratio to Prometheus (TSDB)")
                print_round(runs, ref)
                ours = next((r for r in runs if r.peer == "gpuslo collect"), None)
                if ref and ours:
                    ratios.append(ours.cpu_per_million / ref.cpu_per_million)
                all_runs.append(runs)
        finally:
            broker.stop()
            sim.terminate()
            sim.wait(timeout=30)
    if ratios:
        print(f"gpuslo / Prometheus CPU per sample over {len(ratios)} round(s): "
              + ", ".join(f"{r:.2f}x" for r in ratios)
              + (f" (median {statistics.median(ratios):.2f}x, spread "
                 f"{min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")
              + f"; target <= {args.target:g}x: "
              + ("met" if statistics.median(ratios) <= args.target else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
