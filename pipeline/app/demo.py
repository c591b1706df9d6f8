"""`gpuslo demo`: the whole path on one machine with nothing installed but gpuslo.

A simulated GPU fleet (:mod:`gpuslo.simulator`, a scenario, 60x real time)
serves the real exporters' formats; the fleet is described to gpuslo as an
ordinary ``collectors:`` list (:mod:`~gpuslo.pipeline.app.fleet_targets`) and
run through the production wiring (:mod:`~gpuslo.pipeline.app.wiring`) on the
embedded Kafka-compatible broker: collect stage, SLO stages, exporters and
alert delivery.  The live view shows a fleet panel (active faults from the
simulator's ground truth, and per-node signals read back from the *consumed*
samples, so a fault is visible only if it really went through the pipeline),
the stream totals and the SLO table.  Faults can be scheduled up front
(``inject``) or posted while it runs (``gpuslo inject ... --url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live

from gpuslo.exporters.base import ExportHub
from gpuslo.pipeline.aio import run_until, stop_line
from gpuslo.pipeline.app.fleet_targets import collector_configs
from gpuslo.pipeline.app.keys import key_presses
from gpuslo.pipeline.app.views.fit import FitStack
from gpuslo.pipeline.app.views.fleet import DemoTail
from gpuslo.pipeline.app.views.slo import (
    SloExpander,
    SloStatusView,
    firing_causes,
    report_table,
)
from gpuslo.pipeline.app.wiring import (
    Aggregation,
    Mount,
    aggregation,
    aggregation_topics,
    collection,
    connect_kafka,
    http_address,
    serving,
)
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.board import ReportBoard
from gpuslo.pipeline.stages.collect import CollectRunner
from gpuslo.pipeline.stages.tail import tail_samples
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.scenario import (
    Scenario,
    default_scenario,
    load_scenario,
    parse_inject,
    write_ground_truth,
)
from gpuslo.simulator.server import FleetServer
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import SloSpec, SpecError, load_specs

# The demo evaluates its SLOs this many real seconds behind the simulated clock.
# Everything runs on one event loop, and a sample takes about two to three real
# seconds from scrape through Kafka and both stages; at 60x that is two to three
# simulated minutes, so a 5-minute window read at the clock's edge would be
# missing most of its minutes and show "no data" (and page alerts, which need the
# 5m window, could not fire).  Production runs in real time, where the same
# seconds are a sliver of a window.
EVAL_LAG_REAL_S = 3.0
# The collect stage's record linger in the demo: a sample must reach stage 2 well
# inside EVAL_LAG_REAL_S, so the demo does not wait the production default.
DEMO_RECORD_LINGER_MS = 250

# Where `gpuslo simulate` listens and `gpuslo inject` posts by default; the demo
# takes it too when it is free, so `gpuslo inject KIND TARGET` needs no --url.
SIM_PORT = 9800

# Where the demo serves /metrics and the status page when the port is free (the
# Prometheus exporter's default); otherwise any free port, printed at start.
METRICS_PORT = 9464


@dataclass(frozen=True)
class DemoSettings:
    """What ``gpuslo demo`` runs (its command-line options).

    ``nodes`` overrides the scenario's node count (faults on missing nodes are
    dropped, with a note); ``inject`` items are ``KIND:TARGET[@SECONDS]``,
    SECONDS of real time after start, each lasting ``inject_duration_s``
    simulated seconds.  ``ground_truth`` is kept up to date with every fault,
    scheduled or injected.  ``specs`` are OpenSLO files or folders (default:
    the shipped catalog); ``alertmanager`` URLs receive the alerts and
    ``metrics_port`` serves Prometheus /metrics.
    """

    duration_s: float | None = None
    interval_s: float = 1.0
    nodes: int | None = None
    scenario: Scenario | str | Path | None = None
    inject: Sequence[str] = ()
    inject_duration_s: float = 1800.0
    speed: float | None = None
    sim_port: int | None = None
    ground_truth: str | Path | None = None
    specs: Sequence[str | Path] | None = None
    alertmanager: Sequence[str] = ()
    metrics_port: int | None = None


def fault_nodes(fleet: Fleet, target: str) -> set[str]:
    """The nodes a fault's target lives on (a service: every node with a replica of it)."""
    head = target.split("/", 1)[0]
    if head in fleet.node_by_name:
        return {head}
    if target.startswith("osd."):
        return {"ceph"}
    return {r.node for r in fleet.replicas if target in (r.service, r.key)}


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


def resolve_scenario(scenario: Scenario | str | Path | None) -> Scenario:
    """The scenario object for a path, an object, or ``None`` (the built-in one)."""
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


def free_or_any(port: int, host: str = "127.0.0.1") -> int:
    """``port`` if nothing listens there now, else 0 (the exporter then takes any free one)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind((host, port))
        except OSError:
            return 0
    return port


def demo_config(
    state_dir: str, alertmanager: Sequence[str], metrics_port: int | None
) -> GpusloConfig:
    """The demo's settings: embedded broker, fast SLO ticks, /metrics and the status page
    on ``metrics_port`` (None: :data:`METRICS_PORT` if free, else any free port)."""
    port = free_or_any(METRICS_PORT) if metrics_port is None else metrics_port
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
                "prometheus": {"enabled": True, "host": "127.0.0.1", "port": port},
                "web": {"enabled": True, "refresh_s": 2.0},
            },
            # Someone pressed Ctrl-C and watches: a scrape still in hand gets half a second.
            "shutdown": {"collect_scrape_wait_s": 0.5, "collect_flush_s": 5.0,
                         "aggregate_grace_s": 10.0},
        }
    )


@dataclass
class _Prepared:
    """Everything checked before anything starts (bad input fails here, not mid-run)."""

    scenario: Scenario
    fleet: Fleet
    scheduled: int  # faults from the scenario; later ones were injected
    speed: float
    specs: list[SloSpec]


def _prepare(s: DemoSettings, console: Console) -> _Prepared:
    sc = resolve_scenario(s.scenario)
    speed = s.speed if s.speed is not None else sc.speed
    fleet, skipped = sc.build(s.nodes, strict=False)
    scheduled = len(fleet.faults)
    for line in skipped:
        console.print(f"[yellow]skipped[/] scenario {line}", highlight=False)
    for item in s.inject:
        fleet.inject(
            parse_inject(item, origin_s=fleet.t, speed=speed, duration_s=s.inject_duration_s)
        )
    return _Prepared(sc, fleet, scheduled, speed, load_specs(demo_spec_paths(s.specs)))


@dataclass
class _FleetPanel:
    """Keeps the view's fault list (and the ground-truth file) in step with the fleet."""

    view: DemoTail
    fleet: Fleet
    server: FleetServer
    scheduled: int
    truth_path: Path | None
    written: int = -1

    def refresh(self, runner: CollectRunner | None = None) -> None:
        v = self.view
        v.now_s = self.server.now()
        v.faults = [
            {**f, "origin": "scenario" if i < self.scheduled else "injected"}
            for i, f in enumerate(self.fleet.ground_truth())
        ]
        for f in v.faults:
            target = str(f["target"])
            if target not in v.fault_nodes:
                v.fault_nodes[target] = fault_nodes(self.fleet, target)
        if self.truth_path is not None and self.written != len(self.fleet.faults):
            write_ground_truth(self.fleet, self.truth_path, self.scheduled)
            self.written = len(self.fleet.faults)
        if runner is not None:
            up = runner.stats.target_up
            v.endpoints = len(up)
            v.endpoints_down = sum(1 for ok in up.values() if not ok)


def live_view(agg: Aggregation, view: DemoTail, expander: SloExpander) -> FitStack:
    """What the demo shows while it runs, within the terminal's height: the SLOs first
    (firing, burning, one line per healthy SLO), then the fleet, faults and stream."""
    snap = agg.hub.latest  # carries the causes once root-cause analysis fills them
    if snap is not None:
        slos = SloStatusView.of(snap.reports, snap.alerts,
                                max((r.evaluated_at for r in snap.reports), default=None),
                                specs=snap.specs, rca=snap.rca, expander=expander)
    else:
        board = agg.engine.board.latest()
        slos = SloStatusView.of(board.reports, board.alerts, board.evaluated_at,
                                specs={s.id: s for s in agg.specs}, expander=expander)
    return FitStack([slos, view.fleet_table(), view.fault_table(), view.source_table()])


async def run_demo(
    settings: DemoSettings,
    console: Console | None = None,
    *,
    stop: asyncio.Event | None = None,
    on_fleet_started: Callable[[str], object] | None = None,
    board: ReportBoard | None = None,
    mounts: Sequence[Mount] = (),
) -> DemoTail:
    """Run fleet + broker + the production pipeline + live view until the duration or ``stop``.

    ``on_fleet_started`` is called with the simulator's base URL once it serves
    (tests post faults there, as ``gpuslo inject`` would).  ``board`` is the SLO
    engine's (give one to mount routes over it); ``mounts`` are added to the
    HTTP app (``--metrics-port``; see :mod:`~gpuslo.pipeline.app.wiring`).
    Stopping drains everything in order and stops the embedded broker last;
    the last line printed says what was stopped.  Raises
    :class:`~gpuslo.simulator.faults.FaultError` (bad ``inject``),
    :class:`~gpuslo.simulator.scenario.ScenarioError` or
    :class:`~gpuslo.slo.spec.SpecError` before anything starts.
    """
    console = console or Console()
    s = settings
    prep = _prepare(s, console)
    stop = stop if stop is not None else asyncio.Event()
    board = board if board is not None else ReportBoard()
    readiness = Readiness()
    stopped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpuslo-demo-") as state_dir:
        cfg = demo_config(state_dir, s.alertmanager, s.metrics_port)
        async with serving(cfg, stop, readiness, mounts=mounts) as hub:
            address = http_address(hub)
            async with connect_kafka(cfg, aggregation_topics(cfg), stop, readiness) as servers:
                console.print(f"[bold]gpuslo demo[/]: embedded Kafka-compatible broker on "
                              f"{servers}")
                srv = await start_fleet_server(prep.fleet, speed=prep.speed, port=s.sim_port)
                try:
                    view = await _run(s, prep, cfg, servers, srv, console, stop,
                                      on_fleet_started, _Parts(hub, board, readiness, address,
                                                               stopped))
                finally:
                    await srv.stop()
                stopped.append(f"simulator {srv.base_url}")
            stopped.append(f"embedded broker {servers}")
        if address is not None:
            stopped.append(f"HTTP server {address}")
    console.print(stop_line(stop, stopped), highlight=False, soft_wrap=True)
    return view


@dataclass
class _Parts:
    """What :func:`run_demo` set up before the pipeline starts, and its stop list."""

    hub: ExportHub
    board: ReportBoard
    readiness: Readiness
    address: str | None
    stopped: list[str]


async def _run(
    s: DemoSettings,
    prep: _Prepared,
    cfg: GpusloConfig,
    servers: str,
    srv: FleetServer,
    console: Console,
    stop: asyncio.Event,
    on_fleet_started: Callable[[str], object] | None,
    parts: _Parts,
) -> DemoTail:
    targets = srv.targets()
    kafka = cfg.kafka.model_copy(update={
        "record_linger_ms": min(cfg.kafka.record_linger_ms, DEMO_RECORD_LINGER_MS)})
    cfg = cfg.model_copy(update={"collectors": collector_configs(targets, s.interval_s),
                                 "kafka": kafka})
    fleet = prep.fleet
    console.print(
        f"simulated fleet [bold]{prep.scenario.name}[/]: {len(fleet.nodes)} nodes, "
        f"{sum(len(n.gpus) for n in fleet.nodes)} GPUs, {len(targets)} endpoints at "
        f"{srv.base_url} ({prep.speed:g}x real time); {len(cfg.collectors)} collectors "
        f"every {s.interval_s:g}s"
    )
    url = "" if srv.port == SIM_PORT and srv.host == "127.0.0.1" else f" --url {srv.base_url}"
    console.print(
        f"inject a fault: gpuslo inject KIND TARGET{url}  (POST {srv.base_url}/faults)",
        highlight=False,
    )
    if on_fleet_started is not None:
        on_fleet_started(srv.base_url)

    def sim_clock() -> datetime:
        return datetime.fromtimestamp(srv.now(), UTC)

    def slo_now() -> datetime:
        # SLO stages run in simulated time (the samples carry simulated timestamps),
        # a few real seconds behind the simulated clock: see EVAL_LAG_REAL_S.
        return sim_clock() - timedelta(seconds=EVAL_LAG_REAL_S * prep.speed)

    view = DemoTail(fleet_name=f"fleet {prep.scenario.name!r}")
    truth = Path(s.ground_truth) if s.ground_truth is not None else None
    panel = _FleetPanel(view, fleet, srv, prep.scheduled, truth)
    panel.refresh()
    quiet = _DropScrapeFailures()
    runtime_log = logging.getLogger("gpuslo.pipeline.stages.collect")
    runtime_log.addFilter(quiet)
    try:
        async with (
            aggregation(cfg, prep.specs, servers, clock=slo_now, hub=parts.hub,
                        board=parts.board, readiness=parts.readiness) as agg,
            collection(cfg, servers, clock=sim_clock, readiness=parts.readiness,
                       stop=stop) as runner,
        ):
            console.print(
                f"SLO engine: {len(prep.specs)} SLOs, evaluated every "
                f"{cfg.slo.tick_interval_s:g}s"
                + (f"; alerts to {', '.join(s.alertmanager)}" if s.alertmanager else "")
                + (f"; /metrics, /healthz, /readyz on {parts.address}"
                   if parts.address is not None else ""),
                highlight=False,
            )
            if agg.page_url is not None:
                console.print(f"status page: [bold]{agg.page_url}[/]", highlight=False)
            expander = SloExpander()
            page = agg.status_page

            def final() -> Group:
                snap = agg.engine.board.latest()
                published = agg.hub.latest
                return Group(
                    view.render(), report_table(snap.reports, snap.alerts, snap.evaluated_at),
                    firing_causes(snap.alerts, published.rca if published is not None else {}),
                )

            with Live(live_view(agg, view, expander), console=console, refresh_per_second=4,
                      transient=not console.is_terminal) as live, key_presses(expander.press):

                async def repaint() -> None:
                    while not stop.is_set():
                        panel.refresh(runner)
                        if page is not None:
                            page.publish_fleet(view.fleet_nodes())
                        live.update(live_view(agg, view, expander))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.25)

                def tail_drain_s() -> float:
                    # Interrupted: the view need not catch up with the last batches (a
                    # --duration run does, so its totals match what was produced).
                    return 0.0 if getattr(stop, "reason", None) in ("SIGINT", "SIGTERM") \
                        else 15.0

                tail_task = asyncio.create_task(tail_samples(
                    cfg.kafka, cfg.consumer, stop, view, bootstrap_servers=servers,
                    drain_timeout_s=tail_drain_s))
                await run_until(
                    stop, s.duration_s, runner.run(stop), repaint(), agg.run(stop, runner.stats),
                )
                await tail_task
            panel.refresh(runner)
            view.reports = agg.engine.board.latest().reports
            console.print(final())
            rs = runner.stats
            console.print(
                f"produced {rs.samples_produced} samples in "
                f"{rs.records_produced} records; samples seen: {view.samples}"
            )
            if truth is not None:
                console.print(f"ground truth: {truth}", highlight=False)
            parts.stopped.append(f"{len(cfg.collectors)} collectors ({rs.pending_samples} "
                                 "samples undelivered)")
            parts.stopped.append("SLO stages " + ("checkpointed and committed" if agg.drained
                                                  else "cut short"))
            return view
    finally:
        runtime_log.removeFilter(quiet)


__all__ = [
    "EVAL_LAG_REAL_S",
    "METRICS_PORT",
    "SIM_PORT",
    "DemoSettings",
    "demo_config",
    "demo_spec_paths",
    "fault_nodes",
    "free_or_any",
    "live_view",
    "resolve_scenario",
    "run_demo",
    "start_fleet_server",
]
