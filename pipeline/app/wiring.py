"""How a gpuslo process is put together, in one place.

``gpuslo collect``, ``gpuslo aggregate`` and the demo are the same parts in
different numbers: collectors → producer → the collect stage, and the SLO
stages → board → exporters and alert delivery.  Each command takes the parts
it runs from here, so the demo is the production wiring fed a simulated fleet,
not a second hand-made pipeline.

The exporter registry lives here too: which exporters a config switches on is
wiring, not an exporter's business (and it names alert delivery, which the
exporters must not import).

One HTTP port per process.  The Prometheus exporter's aiohttp app
(``exporters.prometheus.host:port``, 9464 by default) is the only server a
process runs: ``/metrics``, ``/healthz`` (alive: the event loop answers) and
``/readyz`` (every :class:`~gpuslo.pipeline.readiness.Readiness` check ok)
for the Kubernetes probes, and whatever else a command mounts there.  To add
routes, write a :data:`Mount` (a function given the app, adding its routes)
and pass it to :func:`serving` (``mounts=[...]``): the routes are added before
the server starts, because aiohttp freezes an app's router when it starts.
For example (a page over the SLO board)::

    def status_routes(board: ReportBoard) -> Mount:
        async def page(request: web.Request) -> web.Response: ...
        def mount(app: web.Application) -> None:
            app.router.add_get("/", page)
        return mount

    board = ReportBoard()
    async with serving(cfg, stop, readiness, mounts=[status_routes(board)]) as hub, \
            connect_kafka(cfg, topics, stop, readiness) as servers, \
            aggregation(cfg, specs, servers, hub=hub, board=board) as agg:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cache

from aiohttp import web

from gpuslo.alerts.alertmanager import AlertmanagerClient
from gpuslo.collectors.base import Collector
from gpuslo.collectors.registry import build_collectors
from gpuslo.dashboards.catalog import JSON_DIR
from gpuslo.dashboards.common import UID_SLO_DETAIL
from gpuslo.exporters.base import Exporter, ExportHub, HealthSnapshot
from gpuslo.exporters.otlp import OtlpExporter
from gpuslo.exporters.prometheus import PrometheusExporter
from gpuslo.exporters.web.page import StatusPage
from gpuslo.exporters.web.series import DashboardLink
from gpuslo.pipeline.aio import Clock, StopRequested, retry_until, sleep_or_stop, utc_now
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.pipeline.errors import GpusloError
from gpuslo.pipeline.kafka.client import SampleProducer
from gpuslo.pipeline.kafka.servers import kafka_servers
from gpuslo.pipeline.readiness import READY_KAFKA, READY_LIFECYCLE, Readiness
from gpuslo.pipeline.stages.anomaly import ScoreRunner
from gpuslo.pipeline.stages.board import ReportBoard
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.pipeline.stages.collect import CollectRunner, CollectStats
from gpuslo.pipeline.stages.publish import health_snapshot, publish_board, publish_health
from gpuslo.pipeline.stages.slo import STAGES, SloEngine
from gpuslo.slo.spec import SloSpec

log = logging.getLogger(__name__)

ExporterFactory = Callable[[GpusloConfig, Clock], Exporter | None]

Mount = Callable[[web.Application], None]
"""Adds routes to the process's one HTTP app (see the module's doc)."""


# How long closing the collect stage's producer may take once its drain is over.
PRODUCER_CLOSE_S = 2.0

# How often consumer lag is read from the brokers for the health figures.
LAG_INTERVAL_S = 5.0


def _prometheus(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.exporters.prometheus
    return PrometheusExporter(c) if c.enabled else None


def _otlp(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.exporters.otlp
    return OtlpExporter(c) if c.enabled else None


def _alertmanager(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.alerts.alertmanager
    return (AlertmanagerClient(c, clock=clock, rca_expected=cfg.anomaly.enabled)
            if c.urls else None)


@cache
def dashboard_links() -> tuple[DashboardLink, ...]:
    """gpuslo's Grafana dashboards (uid, title) from the shipped JSON, for the SLO pages."""
    out = []
    for path in sorted(JSON_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out.append(DashboardLink(doc["uid"], doc["title"], per_slo=doc["uid"] == UID_SLO_DETAIL))
    return tuple(sorted(out, key=lambda d: (not d.per_slo, d.title)))


def _web(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    # Served on the Prometheus exporter's port (mounted by build_exporters): none without it.
    c = cfg.exporters.web
    if not (c.enabled and cfg.exporters.prometheus.enabled):
        return None
    return StatusPage(c, title=cfg.node, dashboards=dashboard_links())


# Pull: prometheus, web (the status page).  Push: otlp (the SDK's periodic reader),
# alertmanager.  Adding an exporter means one entry here and one config model in
# pipeline/config.py.
EXPORTERS: dict[str, ExporterFactory] = {
    "prometheus": _prometheus,
    "web": _web,
    "otlp": _otlp,
    "alertmanager": _alertmanager,
}


def build_exporters(
    cfg: GpusloConfig, *, clock: Clock = utc_now, only: Collection[str] | None = None
) -> list[Exporter]:
    """The exporters ``cfg`` switches on (Prometheus when enabled, the status page with
    it, OTLP when enabled, Alertmanager when at least one URL is set), in registry order;
    ``only`` limits them to those registry names (``gpuslo collect`` sends no alerts and
    serves no status page).

    A process has one HTTP port, the Prometheus exporter's: the status page's routes
    are added to its app here, before the hub starts it.
    """
    out = []
    for name, factory in EXPORTERS.items():
        if only is not None and name not in only:
            continue
        exporter = factory(cfg, clock)
        if exporter is not None:
            out.append(exporter)
    http = next((e for e in out if isinstance(e, PrometheusExporter)), None)
    for e in out:
        if isinstance(e, StatusPage) and http is not None:
            e.mount(http.app)
    return out


def status_page_url(hub: ExportHub) -> str | None:
    """``http://host:port/`` of the status page once the hub has started, else None."""
    http = next((e for e in hub.exporters if isinstance(e, PrometheusExporter)), None)
    page = next((e for e in hub.exporters if isinstance(e, StatusPage)), None)
    if http is None or page is None or not page.mounted or http.port is None:
        return None
    return http.url.removesuffix("metrics")


def build_hub(
    cfg: GpusloConfig, *, clock: Clock = utc_now, only: Collection[str] | None = None
) -> ExportHub:
    """An :class:`ExportHub` over :func:`build_exporters`; use ``async with``."""
    return ExportHub(build_exporters(cfg, clock=clock, only=only))


# ---- the one HTTP port ---------------------------------------------------------------------


def health_routes(readiness: Readiness) -> Mount:
    """``/healthz`` (200 while the event loop answers) and ``/readyz`` (200 with the checks
    as JSON when every one is ok, 503 with them otherwise)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        doc = readiness.to_json()
        return web.json_response(doc, status=200 if doc["ready"] else 503)

    def mount(app: web.Application) -> None:
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)

    return mount


def http_app(hub: ExportHub) -> web.Application | None:
    """The process's HTTP app: the Prometheus exporter's (None when it is off)."""
    for e in hub.exporters:
        if isinstance(e, PrometheusExporter):
            return e.app
    return None


def http_address(hub: ExportHub) -> str | None:
    """``http://host:port`` of the process's HTTP app once started (None when off)."""
    for e in hub.exporters:
        if isinstance(e, PrometheusExporter) and e.port is not None:
            return e.url.removesuffix("/metrics")
    return None


def mount_routes(hub: ExportHub, mounts: Sequence[Mount]) -> bool:
    """Add ``mounts`` to the process's HTTP app; call before the hub starts.

    Returns False (and adds nothing) when the process serves no HTTP
    (``exporters.prometheus.enabled: false``).
    """
    app = http_app(hub)
    if app is None:
        return False
    for mount in mounts:
        mount(app)
    return True


@contextlib.asynccontextmanager
async def serving(
    cfg: GpusloConfig,
    stop: asyncio.Event,
    readiness: Readiness,
    *,
    mounts: Sequence[Mount] = (),
    only: Collection[str] | None = None,
    clock: Clock = utc_now,
) -> AsyncIterator[ExportHub]:
    """The export hub, started, serving ``/metrics``, ``/healthz``, ``/readyz`` and ``mounts``.

    Entered first, before Kafka is reached, so the probes answer while the
    process waits for it.  ``readiness`` gets the ``lifecycle`` check, which
    turns not ok as soon as ``stop`` is set (a draining process takes no new
    work); ``only`` limits the exporters (:func:`build_exporters`).
    """
    readiness.ok(READY_LIFECYCLE, "running")
    hub = build_hub(cfg, clock=clock, only=only)
    mount_routes(hub, [health_routes(readiness), *mounts])

    async def draining() -> None:
        await stop.wait()
        readiness.fail(READY_LIFECYCLE, "draining: stopping")

    watcher = asyncio.create_task(draining(), name="readiness:lifecycle")
    try:
        async with hub:
            yield hub
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@contextlib.asynccontextmanager
async def connect_kafka(
    cfg: GpusloConfig, topics: Sequence[str], stop: asyncio.Event, readiness: Readiness
) -> AsyncIterator[str]:
    """:func:`~gpuslo.pipeline.kafka.servers.kafka_servers`, retried until Kafka answers.

    The ``kafka`` check stays not ok (with the last error) until the stages'
    clients have started (they mark it ok).  Raises
    :class:`~gpuslo.pipeline.aio.StopRequested` when stopped before that.
    """
    where = cfg.kafka.bootstrap_servers or "the embedded broker"
    readiness.expect(READY_KAFKA, f"connecting to {where}")

    def retrying(servers: str, exc: GpusloError, wait_s: float) -> None:
        readiness.fail(READY_KAFKA, f"{servers} not reachable (retrying in {wait_s:g}s): {exc}")

    async with kafka_servers(cfg.kafka, topics, stop=stop, on_retry=retrying) as servers:
        readiness.fail(READY_KAFKA, f"{servers} reached; starting clients")
        yield servers


# ---- the parts of a process ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def collection(
    cfg: GpusloConfig,
    servers: str,
    *,
    collectors: Sequence[tuple[Collector, float]] | None = None,
    clock: Clock = utc_now,
    readiness: Readiness | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[CollectRunner]:
    """The collect stage, ready to ``run(stop)``: collectors (from ``cfg.collectors``
    unless given), each opened, and a producer to ``servers``; closed on exit.

    With ``stop``, starting the producer is retried until Kafka answers; the
    drain limits come from ``cfg.shutdown``; ``readiness`` gets ``kafka`` (ok once
    the producer is connected) and ``targets`` (see :class:`CollectRunner`).
    """
    chosen = list(build_collectors(cfg) if collectors is None else collectors)
    async with contextlib.AsyncExitStack() as stack:
        for c, _ in chosen:
            if isinstance(c, contextlib.AbstractAsyncContextManager):
                await stack.enter_async_context(c)
        producer = SampleProducer(cfg.kafka, bootstrap_servers=servers)
        await _start(producer.start, stop)
        # After the runner's drain, whatever aiokafka still holds was never acknowledged
        # and is already counted as undelivered: closing must not wait for it.
        stack.push_async_callback(producer.stop, PRODUCER_CLOSE_S)
        if readiness is not None:
            readiness.ok(READY_KAFKA, f"producer connected to {servers}")
        yield CollectRunner(
            chosen, producer, cfg.kafka.topics.samples, clock=clock, readiness=readiness,
            stop_grace_s=cfg.shutdown.collect_scrape_wait_s,
            flush_s=cfg.shutdown.collect_flush_s,
        )


async def _start(start: Callable[[], Awaitable[object]], stop: asyncio.Event | None) -> None:
    """Start Kafka clients: once (no ``stop``), or retried until they connect or ``stop``."""
    if stop is None:
        await start()
        return

    def retrying(exc: GpusloError, wait_s: float) -> None:
        log.warning("Kafka client not started, retrying in %gs: %s", wait_s, exc)

    await retry_until(stop, start, on_retry=retrying)


@dataclass
class Aggregation:
    """The SLO stages and what they publish to: the engine, its board and the exporters.

    It also gathers the stages' health figures (consumer lag per group, dead
    letters, Alertmanager delivery) for :meth:`health`.
    """

    engine: SloEngine
    hub: ExportHub
    specs: Sequence[SloSpec]
    readiness: Readiness | None = None
    grace_s: float = 50.0
    lag: dict[str, int] = field(default_factory=dict)  # records behind, by consumer group
    drained: bool | None = None  # after run(): did the stages stop within grace_s?

    @property
    def status_page(self) -> StatusPage | None:
        """The status page exporter, when this process serves one."""
        return next((e for e in self.hub.exporters if isinstance(e, StatusPage)), None)

    @property
    def page_url(self) -> str | None:
        return status_page_url(self.hub)

    def health(self, collect: CollectStats | None = None) -> HealthSnapshot:
        """The stages' health now (and ``collect``'s, when the process also collects)."""
        deliveries = {}
        for e in self.hub.exporters:
            if isinstance(e, AlertmanagerClient):
                deliveries.update(e.stats())
        return health_snapshot(
            collect,
            consumer_lag_records=self.lag,
            dead_letters_total=sum(s.consumer.dead_letters for s in self.engine.stages),
            consumer_recoveries_total={
                **{k: n for s in self.engine.stages for k, n in s.recoveries().items()},
                **(self.engine.ranker.recoveries() if self.engine.ranker is not None else {})},
            deliveries=deliveries,
        )

    async def watch_lag(self, stop: asyncio.Event, interval_s: float = LAG_INTERVAL_S) -> None:
        """Read each stage's consumer lag every ``interval_s`` until ``stop``."""
        while not stop.is_set():
            for stage in self.engine.stages:
                try:
                    self.lag[stage.group_id] = await stage.consumer.lag()
                except Exception as exc:  # a lag reading is a figure: never worth a crash
                    log.debug("lag of %s not read: %s", stage.group_id, exc)
            await sleep_or_stop(stop, interval_s)

    async def run(self, stop: asyncio.Event, collect: CollectStats | None = None) -> None:
        """Join the consumer groups, evaluate and publish until ``stop``, then drain.

        Started here rather than before: joining two groups takes seconds that the
        collectors beside it (in the demo) should not wait for.  The drain
        (finish the poll in hand, checkpoint, commit, leave the groups) is
        bounded by ``grace_s``; cut short, what was not committed is re-read by
        the next owner from the last checkpoint, exactly as after a SIGKILL.
        """
        try:
            try:
                await _start(self.engine.start, stop)
            except StopRequested:
                return  # stopped while joining the groups: nothing applied, nothing to save
            if self.readiness is not None:
                self.readiness.ok(READY_KAFKA, "SLO stages' consumers and producers connected")
            # Stage 1 alone has no reports: its health (lag, recoveries) is published alone.
            publish = (
                publish_board(self.engine.board, self.hub, self.specs, stop,
                              lambda: self.health(collect))
                if self.engine.stage2 is not None
                else publish_health(self.hub, stop, lambda: self.health(collect))
            )
            await asyncio.gather(self.engine.run(stop), publish, self.watch_lag(stop))
        finally:
            try:
                await asyncio.wait_for(self.engine.stop(), self.grace_s)
                self.drained = True
            except TimeoutError:
                self.drained = False
                log.error("SLO stages not stopped within %gs: what they had not committed "
                          "is re-read from the last checkpoint on restart", self.grace_s)


def score_runner(
    cfg: GpusloConfig, servers: str, *, readiness: Readiness | None = None,
    clock: Clock = utc_now,
) -> ScoreRunner:
    """The anomaly scoring stage over ``servers``, checkpointing under ``slo.checkpoint_dir``."""
    return ScoreRunner(cfg.kafka, cfg.consumer, CheckpointStore(cfg.slo.checkpoint_dir),
                       cfg.anomaly, bootstrap_servers=servers, clock=clock,
                       readiness=readiness)


async def scoring(
    cfg: GpusloConfig, runner: ScoreRunner, stop: asyncio.Event, *,
    readiness: Readiness | None = None,
) -> None:
    """Run the scoring stage alone (``gpuslo anomaly``) until ``stop``: join the group
    (retried until Kafka answers), score, then drain within ``shutdown.aggregate_grace_s``."""
    try:
        await _start(runner.start, stop)
    except StopRequested:
        return
    try:
        if readiness is not None:
            readiness.ok(READY_KAFKA, "scoring stage's consumer and producer connected")
        await runner.run(stop)
    finally:
        try:
            await asyncio.wait_for(runner.stop(), cfg.shutdown.aggregate_grace_s)
        except TimeoutError:
            log.error("scoring stage not stopped within %gs: what it had not committed is "
                      "re-read from the last checkpoint on restart",
                      cfg.shutdown.aggregate_grace_s)


def aggregation_topics(cfg: GpusloConfig) -> list[str]:
    """The topics the SLO stages (and root-cause analysis, when on) read and write."""
    t = cfg.kafka.topics
    return [t.samples, t.sli, t.dlq, *([t.digests] if cfg.anomaly.enabled else [])]


@contextlib.asynccontextmanager
async def aggregation(
    cfg: GpusloConfig,
    specs: Sequence[SloSpec],
    servers: str,
    *,
    clock: Clock = utc_now,
    hub: ExportHub | None = None,
    board: ReportBoard | None = None,
    readiness: Readiness | None = None,
    stages: Collection[int] = STAGES,
) -> AsyncIterator[Aggregation]:
    """The SLO stages over ``servers``, publishing to ``hub`` (default: the exporters ``cfg``
    switches on, open for the block); ``clock`` is the engine's (the demo's runs on
    simulated time); ``board`` the engine's board (give one to mount routes over it
    before the hub starts); ``readiness`` gets ``kafka`` and ``stage1``/``stage2``
    for the ``stages`` run here (default both; ``gpuslo aggregate --stage``)."""
    engine = SloEngine(cfg, specs, bootstrap_servers=servers, clock=clock, board=board,
                       readiness=readiness, stages=stages)
    grace = cfg.shutdown.aggregate_grace_s
    if hub is not None:
        yield Aggregation(engine, hub, specs, readiness, grace)
        return
    async with build_hub(cfg) as own:
        yield Aggregation(engine, own, specs, readiness, grace)


__all__ = [
    "EXPORTERS",
    "LAG_INTERVAL_S",
    "Aggregation",
    "Mount",
    "aggregation",
    "aggregation_topics",
    "build_exporters",
    "build_hub",
    "collection",
    "connect_kafka",
    "dashboard_links",
    "health_routes",
    "http_address",
    "http_app",
    "mount_routes",
    "score_runner",
    "scoring",
    "serving",
    "status_page_url",
]
