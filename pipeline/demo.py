"""`gpuslo demo`: the whole path on one machine with nothing installed but gpuslo.

A simulated GPU fleet (:mod:`simulator`, a scenario, 60x real time) serves the
real exporters' formats → one collector per source scrapes it → the embedded
Kafka-compatible broker → a live view of what arrives: a fleet panel (active
faults from the simulator's ground truth, and per-node signals read back from
the *consumed* samples, so a fault is visible only if it really went through
the pipeline) above the stream table.  Faults can be scheduled up front
(``inject``) or posted while it runs (``gpuslo inject ... --url``).  Later
stages plug into the same composition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from gpuslo.collectors.base import Collector
from gpuslo.collectors.dcgm import DcgmCollector
from gpuslo.collectors.kubelet import KubeletCollector
from gpuslo.collectors.kvcache import KvCacheCollector
from gpuslo.collectors.prometheus import PrometheusCollector
from gpuslo.collectors.rdma import RdmaCollector
from gpuslo.collectors.storage import StorageCollector
from gpuslo.exporters.base import HealthSnapshot
from gpuslo.exporters.registry import build_hub
from gpuslo.pipeline.cli_slo import report_table
from gpuslo.pipeline.config import (
    ConsumerConfig,
    DcgmCollectorConfig,
    GpusloConfig,
    KafkaConfig,
    KubeletCollectorConfig,
    KvCacheCollectorConfig,
    PrometheusCollectorConfig,
    PrometheusTarget,
    RdmaCollectorConfig,
    StorageCollectorConfig,
)
from gpuslo.pipeline.kafka import SampleConsumer, SampleProducer, TransportError
from gpuslo.pipeline.publish import publish_board
from gpuslo.pipeline.runtime import CollectRunner, kafka_servers, run_until
from gpuslo.pipeline.stages import SloEngine
from gpuslo.pipeline.tail import SampleTail
from gpuslo.simulator.faults import FaultError
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.scenario import (
    Scenario,
    default_scenario,
    load_scenario,
    parse_inject,
    write_ground_truth,
)
from gpuslo.simulator.server import FleetServer, Target
from gpuslo.slo.budget import SloReport
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import SpecError, load_specs

# The demo evaluates its SLOs this many real seconds behind the simulated clock.
# Everything runs on one event loop, and a sample takes about two to three real
# seconds from scrape through Kafka and both stages; at 60x that is two to three
# simulated minutes, so a 5-minute window read at the clock's edge would be
# missing most of its minutes and show "no data" (and page alerts, which need the
# 5m window, could not fire).  Production runs in real time, where the same
# seconds are a sliver of a window.
EVAL_LAG_REAL_S = 3.0

# Where `gpuslo simulate` listens and `gpuslo inject` posts by default; the demo
# takes it too when it is free, so `gpuslo inject KIND TARGET` needs no --url.
SIM_PORT = 9800

# Target kinds served in Prometheus text format (the generic collector's diet);
# kubelet_summary (JSON) and diskstats (procfs) need their own readers.
PROMETHEUS_KINDS = frozenset(
    {
        "dcgm",
        "node_exporter",
        "kubelet_resource",
        "kubelet_cadvisor",
        "ceph",
        "vllm",
        "sglang",
        "triton",
        "training",
    }
)

CollectorFactory = Callable[[Sequence[Target], float], list[tuple[Collector, float]]]


def prometheus_configs(
    targets: Sequence[Target], interval_s: float, timeout_s: float | None = None
) -> list[PrometheusCollectorConfig]:
    """One generic collector config per sample source, over the Prometheus-format targets."""
    by_source: dict[str, list[PrometheusTarget]] = {}
    for t in targets:
        if t.kind in PROMETHEUS_KINDS:
            by_source.setdefault(t.source, []).append(PrometheusTarget(url=t.url, node=t.node))
    timeout = min(5.0, interval_s) if timeout_s is None else timeout_s
    return [
        PrometheusCollectorConfig(
            name=f"sim-{source}",
            source=source,
            targets=tgts,
            interval_s=interval_s,
            timeout_s=timeout,
        )
        for source, tgts in sorted(by_source.items())
    ]


def collectors_for_targets(
    targets: Sequence[Target], interval_s: float
) -> list[tuple[Collector, float]]:
    """The demo's collectors for the fleet's targets, with their intervals.

    The one place that decides which collector class reads which target: each
    source gets its own collector (so its samples carry entities and
    normalised signals next to the upstream rows, which are kept as they are
    for the fleet panel and the SLO catalog).  The node_exporter page is read
    by both RDMA (``node_infiniband_*``) and storage (``node_disk_*``), each
    keeping its own families.  The simulated kubelet speaks plain HTTP with no
    token; only the demo does that.  Any other source (the training job) gets
    the generic collector.
    """
    timeout = min(5.0, interval_s)
    common: dict[str, object] = {"interval_s": interval_s, "timeout_s": timeout}

    def urls(*kinds: str) -> list[dict[str, object]]:
        return [{"url": t.url, "node": t.node} for t in targets if t.kind in kinds]

    out: list[tuple[Collector, float]] = []
    dcgm = urls("dcgm")
    if dcgm:
        out.append((DcgmCollector(DcgmCollectorConfig.model_validate(
            {"name": "sim-dcgm", "targets": dcgm, **common}), default_node="demo"), interval_s))
    kv = [{"url": t.url, "node": t.node, "replica": t.entity}
          for t in targets if t.source == "kvcache"]
    if kv:
        out.append((KvCacheCollector(KvCacheCollectorConfig.model_validate(
            {"name": "sim-kvcache", "targets": kv, **common}), default_node="demo"), interval_s))
    ne = urls("node_exporter")
    if ne:
        out.append((RdmaCollector(RdmaCollectorConfig.model_validate(
            {"name": "sim-rdma", "targets": ne, "sysfs": [], **common}), default_node="demo"),
            interval_s))
    store = urls("node_exporter", "ceph", "diskstats")
    if store:
        out.append((StorageCollector(StorageCollectorConfig.model_validate(
            {"name": "sim-storage", "targets": store, "diskstats": [], **common}),
            default_node="demo"), interval_s))
    kube = urls("kubelet_resource", "kubelet_cadvisor", "kubelet_summary")
    if kube:
        out.append((KubeletCollector(KubeletCollectorConfig.model_validate(
            {"name": "sim-kubelet", "targets": kube, "token_file": None, **common}),
            default_node="demo"), interval_s))
    handled = {"dcgm", "kvcache", "rdma", "storage", "kubelet"}
    rest = [t for t in targets if t.source not in handled]
    out += [
        (PrometheusCollector(c, default_node="demo"), c.interval_s)
        for c in prometheus_configs(rest, interval_s)
    ]
    return out


# ---- the fleet panel: per-node signals from the consumed samples ----------------------

_IB_ERRORS = frozenset(
    {
        "node_infiniband_symbol_error_total",
        "node_infiniband_port_errors_received_total",
        "node_infiniband_link_downed_total",
        "node_infiniband_link_error_recovery_total",
        "node_infiniband_local_link_integrity_errors_total",
        "node_infiniband_port_receive_remote_physical_errors_total",
        "node_infiniband_out_of_buffer_drops_total",
        "node_infiniband_packet_sequence_errors_total",
    }
)
_KV_USAGE = frozenset(
    {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"}
)
_TTFT = "time_to_first_token_seconds"
_GPU_GAUGES = {
    "DCGM_FI_DEV_GPU_TEMP": "temp",
    "DCGM_FI_DEV_GPU_UTIL": "util",
    "DCGM_FI_DEV_POWER_USAGE": "power",
    "DCGM_FI_DEV_XID_ERRORS": "xid",
}
_WATCHED = frozenset({*_IB_ERRORS, *_KV_USAGE, *_GPU_GAUGES, "node_infiniband_state_id"})

Labels = tuple[tuple[str, str], ...]


@dataclass
class NodeSignals:
    """What the consumed samples say about one node; GPU values are from its latest scrape."""

    dcgm_ts: datetime | None = None
    gpu: dict[str, dict[str, tuple[datetime, float]]] = field(default_factory=dict)
    gpus_seen: set[str] = field(default_factory=set)
    ib_errors: float = 0.0  # increase of the port error counters since the demo started
    _ib_last: dict[tuple[str, Labels], float] = field(default_factory=dict)
    ports: dict[Labels, float] = field(default_factory=dict)  # state_id per port
    kv: dict[Labels, float] = field(default_factory=dict)  # KV-cache usage per replica
    _ttft_last: dict[tuple[str, Labels], tuple[float, float]] = field(default_factory=dict)
    ttft: dict[tuple[str, Labels], tuple[float, float]] = field(default_factory=dict)

    def current(self, name: str) -> dict[str, float]:
        """``gpu -> value`` of one DCGM gauge in the node's latest scrape."""
        out: dict[str, float] = {}
        for gpu, values in self.gpu.items():
            tv = values.get(name)
            if tv is not None and tv[0] == self.dcgm_ts:
                out[gpu] = tv[1]
        return out

    @property
    def gpus(self) -> int:
        """GPUs in the latest scrape (one that fell off the bus is missing)."""
        return len(self.current("temp"))

    @property
    def lost(self) -> list[str]:
        """GPUs seen before but absent from the latest scrape."""
        return sorted(self.gpus_seen - set(self.current("temp")), key=int)

    @property
    def xid(self) -> dict[str, int]:
        """Non-zero last-XID codes by GPU."""
        return {g: int(v) for g, v in self.current("xid").items() if v}

    @property
    def temp_max(self) -> float | None:
        return max(self.current("temp").values(), default=None)

    @property
    def util_mean(self) -> float | None:
        u = self.current("util")
        return sum(u.values()) / len(u) if u else None

    @property
    def ports_down(self) -> int:
        """Ports whose state is not ACTIVE (4)."""
        return sum(1 for v in self.ports.values() if v != 4)

    @property
    def kv_max(self) -> float | None:
        return max(self.kv.values(), default=None)

    @property
    def ttft_mean_s(self) -> float | None:
        """Mean TTFT over each replica's last scrape interval (Δsum / Δcount)."""
        ds = sum(s for s, _ in self.ttft.values())
        dc = sum(c for _, c in self.ttft.values())
        return ds / dc if dc > 0 else None


@dataclass
class FleetSignals:
    """Per-node signals folded from sample frames (pure: testable without a fleet)."""

    nodes: dict[str, NodeSignals] = field(default_factory=dict)

    def add(self, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        metric = pl.col("metric")
        rows = frame.filter(
            metric.is_in(list(_WATCHED))
            | (
                (metric.str.ends_with(f"{_TTFT}_sum") | metric.str.ends_with(f"{_TTFT}_count"))
                # upstream rows only: a normalised gpuslo_* copy would be counted twice
                & ~metric.str.starts_with("gpuslo_")
            )
        ).select("ts", "node", "metric", "value", "labels")
        ttft: dict[tuple[str, str, Labels], dict[str, float]] = {}
        for ts, node, name, value, labels in rows.iter_rows():
            ns = self.nodes.setdefault(node, NodeSignals())
            lbl: Labels = tuple((d["name"], d["value"]) for d in labels)
            if name in _GPU_GAUGES:
                gpu = dict(lbl).get("gpu", "?")
                ns.gpu.setdefault(gpu, {})[_GPU_GAUGES[name]] = (ts, value)
                ns.gpus_seen.add(gpu)
                if ns.dcgm_ts is None or ts > ns.dcgm_ts:
                    ns.dcgm_ts = ts
            elif name in _IB_ERRORS:
                prev = ns._ib_last.get((name, lbl))
                if prev is not None:
                    ns.ib_errors += value - prev if value >= prev else value
                ns._ib_last[(name, lbl)] = value
            elif name == "node_infiniband_state_id":
                ns.ports[lbl] = value
            elif name in _KV_USAGE:
                ns.kv[lbl] = value
            else:
                base, _, part = name.rpartition("_")
                ttft.setdefault((node, base, lbl), {})[part] = value
        for (node, base, lbl), sc in ttft.items():
            if "sum" not in sc or "count" not in sc:
                continue
            ns = self.nodes[node]
            prev_sc = ns._ttft_last.get((base, lbl))
            ns._ttft_last[(base, lbl)] = (sc["sum"], sc["count"])
            if prev_sc is not None and sc["count"] > prev_sc[1]:
                ns.ttft[(base, lbl)] = (sc["sum"] - prev_sc[0], sc["count"] - prev_sc[1])


def _hms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def fault_nodes(fleet: Fleet, target: str) -> set[str]:
    """The nodes a fault's target lives on (a service: every node with a replica of it)."""
    head = target.split("/", 1)[0]
    if head in fleet.node_by_name:
        return {head}
    if target.startswith("osd."):
        return {"ceph"}
    return {r.node for r in fleet.replicas if target in (r.service, r.key)}


@dataclass
class DemoTail(SampleTail):
    """The demo's view: the stream totals plus the fleet panel, fed the same frames."""

    signals: FleetSignals = field(default_factory=FleetSignals)
    faults: list[dict[str, object]] = field(default_factory=list)  # the fleet's ground truth
    now_s: float = 0.0  # simulated time when the view was last refreshed
    fleet_name: str = "fleet"
    fault_nodes: dict[str, set[str]] = field(default_factory=dict)  # target -> nodes
    endpoints: int = 0  # endpoints scraped
    endpoints_down: int = 0  # of which the last scrape failed (a crashed replica answers 503)
    reports: tuple[SloReport, ...] = ()  # the SLO engine's last evaluation, when the demo ends

    def add(self, frame: pl.DataFrame) -> None:
        super().add(frame)
        self.signals.add(frame)

    def active_faults(self) -> list[dict[str, object]]:
        """Faults whose cause is present at ``now_s``."""
        return [f for f in self.faults if float(f["start_s"]) <= self.now_s < float(f["end_s"])]  # type: ignore[arg-type]

    def fault_table(self) -> Table:
        t = Table(
            title=f"faults: {len(self.active_faults())} active; endpoints down: "
            f"{self.endpoints_down}/{self.endpoints}",
            title_justify="left",
        )
        for col in ("state", "fault", "target", "start", "end", "intensity"):
            t.add_column(col)
        for f in self.faults:
            start, end = float(f["start_s"]), float(f["end_s"])  # type: ignore[arg-type]
            state = (
                "[bold red]ACTIVE[/]"
                if start <= self.now_s < end
                else "scheduled"
                if self.now_s < start
                else "[dim]over[/]"
            )
            t.add_row(
                state,
                str(f["kind"]),
                str(f["target"]),
                _hms(start),
                _hms(end),
                f"{f['intensity']:g}",
            )
        return t

    def fleet_table(self) -> Table:
        hot: dict[str, list[str]] = {}
        for f in self.active_faults():
            for n in self.fault_nodes.get(str(f["target"]), set()):
                hot.setdefault(n, []).append(str(f["kind"]))
        sim = datetime.fromtimestamp(self.now_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
        t = Table(title=f"{self.fleet_name} at {sim} UTC (simulated)", title_justify="left")
        # Short headings: the panel must fit an 80-column terminal.
        for col, justify in (
            ("node", "left"),
            ("GPUs", "right"),
            ("util%", "right"),
            ("temp", "right"),
            ("XID", "left"),
            ("IB err", "right"),
            ("down", "right"),
            ("KV", "right"),
            ("TTFT", "right"),
            ("faults", "left"),
        ):
            t.add_column(
                col,
                justify=justify,  # type: ignore[arg-type]
                no_wrap=col in ("node", "TTFT"),
                overflow="fold",
            )
        for name in sorted(self.signals.nodes, key=lambda n: (len(n), n)):
            s = self.signals.nodes[name]
            if not s.gpus_seen and not s.kv and not s.ports:
                continue
            xid = ", ".join(f"gpu{g}:{c}" for g, c in sorted(s.xid.items()))
            if s.lost:
                xid = ", ".join([xid, *(f"gpu{g}:gone" for g in s.lost)]).strip(", ")
            temp = s.temp_max
            t.add_row(
                name,
                f"{s.gpus}/{len(s.gpus_seen)}" if s.gpus_seen else "-",
                _fmt(s.util_mean, ".0f"),
                ("[red]" if temp is not None and temp >= 85 else "") + _fmt(temp, ".0f"),
                f"[red]{xid}[/]" if xid else "",
                _fmt(s.ib_errors, ".0f") if s.ports else "-",
                str(s.ports_down) if s.ports else "-",
                _fmt(s.kv_max, ".2f"),
                _duration(s.ttft_mean_s),
                f"[red]{', '.join(sorted(set(hot.get(name, []))))}[/]" if name in hot else "",
            )
        return t

    def render(self) -> Group:
        """Fleet panel, fault list, then the per-source stream totals."""
        return Group(self.fleet_table(), self.fault_table(), self.source_table())


async def tail_samples(
    kafka: KafkaConfig,
    consumer_cfg: ConsumerConfig,
    stop: asyncio.Event,
    on_update: Callable[[SampleTail], None],
    *,
    bootstrap_servers: str | None = None,
    group_id: str = "gpuslo-tail",
    tail: SampleTail | None = None,
    drain_timeout_s: float = 15.0,
) -> SampleTail:
    """Consume the samples topic until ``stop`` and then until drained; commit after counting.

    ``tail`` lets a caller pass its own accumulator (the demo's adds the fleet panel).
    """
    tail = SampleTail() if tail is None else tail
    async with SampleConsumer(
        kafka,
        consumer_cfg,
        [kafka.topics.samples],
        group_id=group_id,
        bootstrap_servers=bootstrap_servers,
    ) as consumer:
        drain_deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                batches = await consumer.poll(timeout_ms=250)
            except TransportError as exc:
                if not exc.retriable or stop.is_set():
                    raise
                await asyncio.sleep(1)
                continue
            if stop.is_set() and not batches:
                # Drain what was produced before the stop: an empty poll is not
                # enough while the group is still joining (no partitions yet).
                if drain_deadline is None:
                    drain_deadline = loop.time() + drain_timeout_s
                caught_up = bool(consumer.assignment()) and await consumer.lag() == 0
                if caught_up or loop.time() > drain_deadline:
                    break
            for b in batches:
                if b.frame is None:
                    tail.dead += 1
                else:
                    tail.add(b.frame)
            if batches:
                await consumer.commit(batches)
                on_update(tail)
    return tail


async def start_fleet_server(
    fleet: Fleet, *, speed: float, port: int | None, host: str = "127.0.0.1"
) -> FleetServer:
    """Start the fleet's server; ``port=None``: :data:`SIM_PORT` if free, else any port."""
    for p in [SIM_PORT, 0] if port is None else [port]:
        srv = FleetServer(fleet, host=host, port=p, speed=speed)
        try:
            await srv.start()
        except OSError:
            await srv.stop()
            if p != 0 and port is None:
                continue
            raise
        return srv
    raise AssertionError("unreachable")


class _DropScrapeFailures(logging.Filter):
    """In the demo a failed scrape is part of the show (a faulted replica answers 503):
    it is counted in the view instead of being logged over the live display."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("scrape failed")


def _resolve(scenario: Scenario | str | Path | None) -> Scenario:
    if scenario is None:
        return default_scenario()
    if isinstance(scenario, Scenario):
        return scenario
    return load_scenario(scenario)


def demo_spec_paths(specs: Sequence[str | Path] | None) -> list[Path]:
    """The SLO specs to evaluate: the given ones, else the default catalog."""
    if specs:
        return [Path(p) for p in specs]
    if not CATALOG_DIR.is_dir():
        raise SpecError("demo", [f"no SLO catalog at {CATALOG_DIR}: pass --specs PATH"])
    return [CATALOG_DIR]


def demo_config(
    state_dir: str, alertmanager: Sequence[str], metrics_port: int | None
) -> GpusloConfig:
    """The demo's settings: embedded broker, fast SLO ticks, exporters on request."""
    return GpusloConfig.model_validate(
        {
            "node": "demo",
            "slo": {
                "checkpoint_dir": state_dir,
                "tick_interval_s": 2.0,
                "checkpoint_interval_s": 2.0,
            },
            "alerts": {"alertmanager": {"urls": list(alertmanager)}},
            "exporters": {
                "prometheus": {
                    "enabled": metrics_port is not None,
                    "host": "127.0.0.1",
                    "port": metrics_port or 9464,
                }
            },
        }
    )


async def run_demo(
    duration_s: float | None,
    interval_s: float = 1.0,
    nodes: int | None = None,
    console: Console | None = None,
    *,
    scenario: Scenario | str | Path | None = None,
    inject: Sequence[str] = (),
    inject_duration_s: float = 1800.0,
    speed: float | None = None,
    sim_port: int | None = None,
    ground_truth: str | Path | None = None,
    stop: asyncio.Event | None = None,
    collector_factory: CollectorFactory = collectors_for_targets,
    specs: Sequence[str | Path] | None = None,
    alertmanager: Sequence[str] = (),
    metrics_port: int | None = None,
) -> DemoTail:
    """Run fleet + broker + collectors + live view until ``duration_s`` or ``stop``.

    ``nodes`` overrides the scenario's node count (faults on missing nodes are
    dropped, with a note); ``inject`` items are ``KIND:TARGET[@SECONDS]``, SECONDS
    of real time after start, each lasting ``inject_duration_s`` simulated
    seconds.  ``ground_truth`` is kept up to date with every fault, scheduled or
    injected.  ``specs`` are OpenSLO files or folders (default: the shipped
    catalog), evaluated by the SLO stages in simulated time; ``alertmanager``
    URLs receive the alerts and ``metrics_port`` serves Prometheus /metrics.
    Raises :class:`~simulator.faults.FaultError` (bad ``inject``),
    :class:`~simulator.scenario.ScenarioError` or :class:`~slo.spec.SpecError`
    before anything starts.
    """
    console = console or Console()
    sc = _resolve(scenario)
    sim_speed = speed if speed is not None else sc.speed
    fleet, skipped = sc.build(nodes, strict=False)
    scheduled = len(fleet.faults)
    for line in skipped:
        console.print(f"[yellow]skipped[/] scenario {line}", highlight=False)
    for item in inject:
        fleet.inject(
            parse_inject(item, origin_s=fleet.t, speed=sim_speed, duration_s=inject_duration_s)
        )
    truth_path = Path(ground_truth) if ground_truth is not None else None
    slo_specs = load_specs(demo_spec_paths(specs))

    state_dir = tempfile.TemporaryDirectory(prefix="gpuslo-demo-")
    cfg = demo_config(state_dir.name, alertmanager, metrics_port)
    stop = stop if stop is not None else asyncio.Event()
    t = cfg.kafka.topics
    async with kafka_servers(cfg.kafka, [t.samples, t.sli, t.dlq]) as servers, \
            contextlib.AsyncExitStack() as slo_stack:
        slo_stack.callback(state_dir.cleanup)
        console.print(f"[bold]gpuslo demo[/]: embedded Kafka-compatible broker on {servers}")
        srv = await start_fleet_server(fleet, speed=sim_speed, port=sim_port)
        try:
            targets = srv.targets()
            collectors = collector_factory(targets, interval_s)
            console.print(
                f"simulated fleet [bold]{sc.name}[/]: {len(fleet.nodes)} nodes, "
                f"{sum(len(n.gpus) for n in fleet.nodes)} GPUs, {len(targets)} endpoints at "
                f"{srv.base_url} ({sim_speed:g}x real time); {len(collectors)} collectors "
                f"every {interval_s:g}s"
            )
            url = (
                ""
                if srv.port == SIM_PORT and srv.host == "127.0.0.1"
                else (f" --url {srv.base_url}")
            )
            console.print(
                f"inject a fault: gpuslo inject KIND TARGET{url}  (POST {srv.base_url}/faults)",
                highlight=False,
            )
            view = DemoTail(fleet_name=f"fleet {sc.name!r}")
            written = -1

            def sim_clock() -> datetime:
                return datetime.fromtimestamp(srv.now(), UTC)

            def slo_now() -> datetime:
                # SLO stages run in simulated time (the samples carry simulated
                # timestamps), a few real seconds behind the simulated clock: see
                # EVAL_LAG_REAL_S.
                return sim_clock() - timedelta(seconds=EVAL_LAG_REAL_S * sim_speed)

            engine = SloEngine(cfg, slo_specs, bootstrap_servers=servers, clock=slo_now)

            async def run_engine() -> None:
                # Started beside the collectors: joining two consumer groups takes
                # seconds that the fleet (and its faults) should not wait for.
                await engine.start()
                try:
                    await engine.run(stop)
                finally:
                    await engine.stop()

            hub = await slo_stack.enter_async_context(build_hub(cfg))
            console.print(
                f"SLO engine: {len(slo_specs)} SLOs, evaluated every "
                f"{cfg.slo.tick_interval_s:g}s"
                + (f"; alerts to {', '.join(alertmanager)}" if alertmanager else "")
                + (f"; /metrics on port {metrics_port}" if metrics_port is not None else ""),
                highlight=False,
            )

            def render() -> Group:
                snap = engine.board.latest()
                return Group(
                    view.render(), report_table(snap.reports, snap.alerts, snap.evaluated_at)
                )

            def refresh() -> None:
                nonlocal written
                view.now_s = srv.now()
                view.faults = [
                    {**f, "origin": "scenario" if i < scheduled else "injected"}
                    for i, f in enumerate(fleet.ground_truth())
                ]
                for f in view.faults:
                    target = str(f["target"])
                    if target not in view.fault_nodes:
                        view.fault_nodes[target] = fault_nodes(fleet, target)
                if truth_path is not None and written != len(fleet.faults):
                    write_ground_truth(fleet, truth_path, scheduled)
                    written = len(fleet.faults)

            refresh()
            quiet = _DropScrapeFailures()
            runtime_log = logging.getLogger("gpuslo.pipeline.runtime")
            runtime_log.addFilter(quiet)
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(runtime_log.removeFilter, quiet)
                for c, _ in collectors:
                    if isinstance(c, contextlib.AbstractAsyncContextManager):
                        await stack.enter_async_context(c)
                producer = await stack.enter_async_context(
                    SampleProducer(cfg.kafka, bootstrap_servers=servers)
                )
                # Scrapes are stamped in simulated time too: sources whose pages carry no
                # timestamps (Ceph, the kubelet summary, gpuslo's health rows) would
                # otherwise land hours apart from the fleet's own samples.
                runner = CollectRunner(collectors, producer, cfg.kafka.topics.samples,
                                       clock=sim_clock)

                def count_down() -> None:
                    up = runner.stats.target_up
                    view.endpoints = len(up)
                    view.endpoints_down = sum(1 for ok in up.values() if not ok)

                with Live(
                    render(),
                    console=console,
                    refresh_per_second=4,
                    transient=not console.is_terminal,
                ) as live:

                    async def repaint() -> None:
                        while not stop.is_set():
                            refresh()
                            count_down()
                            live.update(render())
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), 0.25)

                    tail_task = asyncio.create_task(
                        tail_samples(
                            cfg.kafka,
                            cfg.consumer,
                            stop,
                            lambda _t: None,
                            bootstrap_servers=servers,
                            tail=view,
                        )
                    )
                    await run_until(
                        stop,
                        duration_s,
                        runner.run(stop),
                        repaint(),
                        run_engine(),
                        publish_board(
                            engine.board,
                            hub,
                            slo_specs,
                            stop,
                            lambda: HealthSnapshot.from_runtime(runner.stats),
                        ),
                    )
                    await tail_task
                refresh()
                count_down()
                view.reports = engine.board.latest().reports
                console.print(render())
                console.print(
                    f"produced {runner.stats.samples_produced} samples in "
                    f"{runner.stats.records_produced} records; samples seen: {view.samples}"
                )
                if truth_path is not None:
                    console.print(f"ground truth: {truth_path}", highlight=False)
                return view
        finally:
            await srv.stop()


__all__ = [
    "SIM_PORT",
    "CollectorFactory",
    "DemoTail",
    "FaultError",
    "FleetSignals",
    "NodeSignals",
    "collectors_for_targets",
    "fault_nodes",
    "prometheus_configs",
    "run_demo",
    "start_fleet_server",
    "tail_samples",
]
