"""How a gpuslo process is put together, in one place.

``gpuslo collect``, ``gpuslo aggregate`` and the demo are the same parts in
different numbers: collectors → producer → the collect stage, and the SLO
stages → board → exporters and alert delivery.  Each command takes the parts
it runs from here, so the demo is the production wiring fed a simulated fleet,
not a second hand-made pipeline.

The exporter registry lives here too: which exporters a config switches on is
wiring, not an exporter's business (and it names alert delivery, which the
exporters must not import).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import cache

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
from gpuslo.pipeline.aio import Clock, utc_now
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.pipeline.kafka.client import SampleProducer
from gpuslo.pipeline.stages.collect import CollectRunner
from gpuslo.pipeline.stages.publish import publish_board
from gpuslo.pipeline.stages.slo import SloEngine
from gpuslo.slo.spec import SloSpec

ExporterFactory = Callable[[GpusloConfig, Clock], Exporter | None]


def _prometheus(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.exporters.prometheus
    return PrometheusExporter(c) if c.enabled else None


def _otlp(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.exporters.otlp
    return OtlpExporter(c) if c.enabled else None


def _alertmanager(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.alerts.alertmanager
    return AlertmanagerClient(c, clock=clock) if c.urls else None


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


def build_exporters(cfg: GpusloConfig, *, clock: Clock = utc_now) -> list[Exporter]:
    """The exporters ``cfg`` switches on (Prometheus when enabled, the status page with
    it, OTLP when enabled, Alertmanager when at least one URL is set), in registry order.

    A process has one HTTP port, the Prometheus exporter's: the status page's routes
    are added to its app here, before the hub starts it.
    """
    out = []
    for factory in EXPORTERS.values():
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


def build_hub(cfg: GpusloConfig, *, clock: Clock = utc_now) -> ExportHub:
    """An :class:`ExportHub` over :func:`build_exporters`; use ``async with``."""
    return ExportHub(build_exporters(cfg, clock=clock))


@contextlib.asynccontextmanager
async def collection(
    cfg: GpusloConfig,
    servers: str,
    *,
    collectors: Sequence[tuple[Collector, float]] | None = None,
    clock: Clock = utc_now,
) -> AsyncIterator[CollectRunner]:
    """The collect stage, ready to ``run(stop)``: collectors (from ``cfg.collectors``
    unless given), each opened, and a producer to ``servers``; closed on exit."""
    chosen = list(build_collectors(cfg) if collectors is None else collectors)
    async with contextlib.AsyncExitStack() as stack:
        for c, _ in chosen:
            if isinstance(c, contextlib.AbstractAsyncContextManager):
                await stack.enter_async_context(c)
        producer = await stack.enter_async_context(
            SampleProducer(cfg.kafka, bootstrap_servers=servers)
        )
        yield CollectRunner(chosen, producer, cfg.kafka.topics.samples, clock=clock)


@dataclass
class Aggregation:
    """The SLO stages and what they publish to: the engine, its board and the exporters."""

    engine: SloEngine
    hub: ExportHub
    specs: Sequence[SloSpec]

    @property
    def status_page(self) -> StatusPage | None:
        """The status page exporter, when this process serves one."""
        return next((e for e in self.hub.exporters if isinstance(e, StatusPage)), None)

    @property
    def page_url(self) -> str | None:
        return status_page_url(self.hub)

    async def run(
        self, stop: asyncio.Event, health: Callable[[], HealthSnapshot] = HealthSnapshot
    ) -> None:
        """Join the consumer groups, evaluate and publish until ``stop``, then leave them.

        Started here rather than before: joining two groups takes seconds that the
        collectors beside it (in the demo) should not wait for.
        """
        await self.engine.start()
        try:
            await asyncio.gather(
                self.engine.run(stop),
                publish_board(self.engine.board, self.hub, self.specs, stop, health),
            )
        finally:
            await self.engine.stop()


@contextlib.asynccontextmanager
async def aggregation(
    cfg: GpusloConfig, specs: Sequence[SloSpec], servers: str, *, clock: Clock = utc_now
) -> AsyncIterator[Aggregation]:
    """The SLO stages over ``servers`` with the exporters ``cfg`` switches on (open for the
    block); ``clock`` is the engine's (the demo's runs on simulated time)."""
    engine = SloEngine(cfg, specs, bootstrap_servers=servers, clock=clock)
    async with build_hub(cfg) as hub:
        yield Aggregation(engine, hub, specs)


__all__ = [
    "EXPORTERS",
    "Aggregation",
    "aggregation",
    "build_exporters",
    "build_hub",
    "collection",
    "dashboard_links",
    "status_page_url",
]
