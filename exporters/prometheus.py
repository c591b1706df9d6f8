"""Prometheus ``/metrics``: the latest snapshot as metric families (pull exporter).

:func:`metric_families` is pure (snapshot in, families out); a custom collector
serves it from a private :class:`~prometheus_client.CollectorRegistry`, so
nothing is registered on client_python's global registry, and a small aiohttp
app serves the registry.  Names come from :mod:`slo.conventions` only.

Series per SLO scope (labels ``slo``, ``service`` and the scope's ``by:`` labels;
windows add ``window``): objective, error budget, SLI, error ratio, burn rate and
state per window, budget remaining, time to exhaustion, evaluation time, and one
``gpuslo_slo_alerts`` series per pending/firing/resolved alert.  A value that
does not exist (no data, not burning) is left out, never written as NaN: an
absent series is what PromQL's ``absent()`` and alerting on no-data expect.

With ``sloth_compat`` the Sloth recording-rule series are exposed as well
(``slo:sli_error:ratio_rate5m{sloth_id, sloth_service, sloth_slo, sloth_window}``
etc.), so dashboards built for Sloth (Grafana 14348 / 14643) work unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from gpuslo.exporters.base import Snapshot
from gpuslo.exporters.figures import Labels, iter_figures, scope_labels
from gpuslo.pipeline.config import PrometheusExporterConfig
from gpuslo.pipeline.errors import GpusloError
from gpuslo.slo import conventions as cv
from gpuslo.slo.budget import SloReport
from gpuslo.slo.spec import SloSpec

log = logging.getLogger(__name__)

_TEXT_0_0_4 = "text/plain; version=0.0.4"


class ListenError(GpusloError):
    """The exporter's address cannot be listened on (in use, not this host's)."""


class _Families:
    """Families by name, created on first use (one HELP/TYPE per name)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def add(self, m: cv.ExportedMetric | tuple[str, str, str], labels: Labels,
            value: float | None) -> None:
        if value is None:
            return
        name, kind, doc = (m.prometheus, m.kind, m.help) if isinstance(m, cv.ExportedMetric) else m
        family = name.removesuffix("_total") if kind == "counter" else name
        metric = self._by_name.get(family)
        if metric is None:
            metric = self._by_name[family] = Metric(family, doc, kind)
        metric.add_sample(name, labels, float(value))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


def _sloth_meta(slo_id: str, spec: SloSpec | None) -> Labels:
    """The labels of Sloth's meta series (as :mod:`slo.rules` writes them)."""
    if spec is None:
        return {cv.LABEL_ID: slo_id, cv.LABEL_SERVICE: slo_id, cv.LABEL_SLO: slo_id}
    return {
        **{cv.prometheus_label_name(k): v for k, v in spec.labels.items()},
        cv.LABEL_ID: spec.id,
        cv.LABEL_SERVICE: spec.service,
        cv.LABEL_SLO: spec.name,
    }


def _burn(rep: SloReport, window: timedelta) -> float | None:
    for w in rep.windows:
        if w.window == window:
            return w.burn_rate
    return None


def _sloth_series(out: _Families, snapshot: Snapshot) -> None:
    doc = "Sloth-compatible series exported by gpuslo (same names as Sloth's recording rules)."
    g: Literal["gauge"] = "gauge"
    seen_slo: set[str] = set()
    for rep in snapshot.reports:
        spec = snapshot.specs.get(rep.slo_id)
        meta = _sloth_meta(rep.slo_id, spec)
        scoped = {**scope_labels(rep.scope), **meta}
        for w in (*rep.windows, rep.period):
            out.add((cv.sli_error_ratio(w.window), g, doc),
                    {**scoped, cv.LABEL_WINDOW: cv.duration_label(w.window)}, w.error_ratio)
        # Sloth's "current" burn rate is the 5-minute one.
        out.add((cv.CURRENT_BURN_RATE_RATIO, g, doc), scoped, _burn(rep, timedelta(minutes=5)))
        out.add((cv.PERIOD_BURN_RATE_RATIO, g, doc), scoped, rep.period.burn_rate)
        out.add((cv.PERIOD_ERROR_BUDGET_REMAINING_RATIO, g, doc), scoped, rep.budget_remaining)
        if rep.slo_id in seen_slo:
            continue
        # Per SLO, without scope labels: Sloth's queries join on the meta labels with
        # group_left, which needs exactly one such series per SLO.
        seen_slo.add(rep.slo_id)
        out.add((cv.OBJECTIVE_RATIO, g, doc), meta, rep.objective)
        out.add((cv.ERROR_BUDGET_RATIO, g, doc), meta, rep.error_budget)
        out.add((cv.TIME_PERIOD_DAYS, g, doc), meta, rep.period.window.total_seconds() / 86400)
        objective_pct = (spec.target * 100 if spec is not None
                         else Decimal(str(rep.objective)) * 100)
        out.add((cv.SLO_INFO, g, doc), {
            **meta,
            cv.LABEL_MODE: cv.GENERATOR_NAME,
            cv.LABEL_OBJECTIVE: format(objective_pct.normalize(), "f"),
            cv.LABEL_SPEC: "openslo/v1",
            cv.LABEL_VERSION: cv.RULES_VERSION,
        }, 1.0)


def metric_families(snapshot: Snapshot, *, sloth_compat: bool = False) -> list[Metric]:
    """Every family for ``snapshot`` (pure; what a scrape returns)."""
    out = _Families()
    for f in iter_figures(snapshot):
        out.add(f.metric, f.labels, f.value)
    if sloth_compat:
        _sloth_series(out, snapshot)
    return list(out)


class SnapshotCollector:
    """A client_python collector over the latest snapshot (``collect()`` protocol)."""

    def __init__(self, *, sloth_compat: bool = False) -> None:
        self.sloth_compat = sloth_compat
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot  # one read: a publish during a scrape cannot mix two snapshots
        if snap is None:
            return []
        return metric_families(snap, sloth_compat=self.sloth_compat)


class PrometheusExporter:
    """Pull exporter: ``publish`` a snapshot, Prometheus scrapes ``/metrics``.

    Port 0 in the config picks a free port (see :attr:`port` after :meth:`start`).
    """

    kind: Literal["pull"] = "pull"

    def __init__(self, cfg: PrometheusExporterConfig, *, name: str = "prometheus") -> None:
        self.cfg = cfg
        self.name = name
        self.collector = SnapshotCollector(sloth_compat=cfg.sloth_compat)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/-/healthy", self._healthy)

    def publish(self, snapshot: Snapshot) -> None:
        self.collector.snapshot = snapshot

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        return metric_families(snapshot, sloth_compat=self.cfg.sloth_compat)

    def render(self) -> tuple[bytes, str]:
        """Exposition bytes and content type: always the Prometheus text format 0.0.4.

        Not negotiated: gpuslo exposes no exemplars or created timestamps, so OpenMetrics
        would add nothing, and client_python's OpenMetrics encoder rewrites ':' in sample
        names to '_' (not in HELP/TYPE), which breaks the Sloth names.  Every Prometheus
        lists text 0.0.4 in its Accept header.
        """
        encoder, content_type = choose_encoder(_TEXT_0_0_4)
        return encoder(self.registry), content_type

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.cfg.host, self.cfg.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ListenError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port} for /metrics, /healthz and "
                f"/readyz (exporters.prometheus.host, .port): {exc.strerror or exc}"
            ) from exc
        self.port = int(self._runner.addresses[0][1])

    async def shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` once started."""
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        return f"http://{host}:{self.port}/metrics"
