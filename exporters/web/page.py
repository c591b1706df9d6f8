"""The status page: a pull-kind exporter whose routes live on the process's one HTTP port.

:class:`StatusPage` is fed like every exporter (``publish(snapshot)``, through the
export hub) and keeps a :class:`~gpuslo.exporters.web.history.StatusHistory`.
It opens no listener of its own: :meth:`StatusPage.mount` adds its routes to the
Prometheus exporter's aiohttp app before that app starts, so ``/metrics``, the
page and its JSON share one port (the wiring does this).

Pages: ``/`` (overview, filters ``slo``, ``label``, ``state``), ``/slo/{id}``
(``?scope=`` a scope key; default its worst scope), ``/fleet``.  JSON:
``/api/v1/slos`` (same filters), ``/api/v1/slos/{id}``, ``/api/v1/alerts``,
``/api/v1/fleet``.  Every response forbids loading anything from another origin
(Content-Security-Policy), so the page works, and is known to work, air-gapped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from gpuslo.exporters.base import Snapshot
from gpuslo.exporters.web import render, views
from gpuslo.exporters.web.history import StatusHistory
from gpuslo.exporters.web.series import DashboardLink, NodeHealth, StatusSource
from gpuslo.pipeline.config import WebExporterConfig

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Same-origin only: no CDN, font or analytics request can leave the host.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_TYPES = {".css": "text/css", ".js": "text/javascript"}


class StatusPage:
    """Pull exporter serving the status page (``kind = "pull"``, nothing to scrape).

    ``source`` replaces the live history (``gpuslo replay --serve`` serves a
    finished backtest); ``publish`` then still records snapshots, unused.
    """

    kind: Literal["pull"] = "pull"

    def __init__(
        self,
        cfg: WebExporterConfig | None = None,
        *,
        name: str = "web",
        title: str = "gpuslo",
        dashboards: Sequence[DashboardLink] = (),
        source: StatusSource | None = None,
    ) -> None:
        self.cfg = cfg or WebExporterConfig()
        self.name = name
        self.history = StatusHistory(points=self.cfg.history_points, title=title)
        self.source: StatusSource = source if source is not None else self.history
        self.dashboards = tuple(dashboards)
        self.mounted = False
        self._rules: dict[str, str] = {}

    # --- exporter protocol -----------------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        self.history.publish(snapshot)

    def publish_fleet(self, nodes: Sequence[NodeHealth]) -> None:
        """The nodes' health figures (the demo publishes its fleet panel's)."""
        self.history.publish_fleet(nodes)

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        return ()  # a page, not metrics

    async def start(self) -> None:
        """Nothing to open: the routes are served by the app :meth:`mount` added them to."""

    async def shutdown(self) -> None:
        """Nothing to close (the app's owner stops it)."""

    # --- routes ----------------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        """Add the page's routes to ``app`` (before it starts: aiohttp freezes the router)."""
        r = app.router
        r.add_get("/", self._overview)
        r.add_get("/slo/{slo_id}", self._detail)
        r.add_get("/fleet", self._fleet)
        r.add_get("/static/{name}", self._static)
        r.add_get("/api/v1/slos", self._api_slos)
        r.add_get("/api/v1/slos/{slo_id}", self._api_slo)
        r.add_get("/api/v1/alerts", self._api_alerts)
        r.add_get("/api/v1/fleet", self._api_fleet)
        self.mounted = True

    @property
    def refresh_s(self) -> float:
        return self.cfg.refresh_s

    def _detail_model(self, request: web.Request) -> views.SloDetail | None:
        return views.slo_detail(
            self.source, request.match_info["slo_id"], request.query.get("scope"),
            dashboards=self.dashboards, grafana_url=self.cfg.grafana_url,
            rules_cache=self._rules,
        )

    async def _overview(self, request: web.Request) -> web.Response:
        ov = views.overview(self.source.status(), views.Filters.from_query(request.query))
        return _html(render.overview_page(ov, refresh_s=self.refresh_s))

    async def _detail(self, request: web.Request) -> web.Response:
        d = self._detail_model(request)
        if d is None:
            what = f"No SLO {request.match_info['slo_id']!r} is evaluated here"
            return _html(render.not_found_page(self.source.status(), what), status=404)
        return _html(render.detail_page(d, refresh_s=self.refresh_s))

    async def _fleet(self, request: web.Request) -> web.Response:
        data = self.source.status()
        return _html(render.fleet_page(data, views.fleet(data), refresh_s=self.refresh_s))

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = render.static_file(name)
        except KeyError:
            raise web.HTTPNotFound(headers=_HEADERS) from None
        headers = {**_HEADERS, "Cache-Control": "max-age=300"}
        return web.Response(body=body, content_type=_TYPES[name[name.rfind("."):]],
                            headers=headers)

    async def _api_slos(self, request: web.Request) -> web.Response:
        ov = views.overview(self.source.status(), views.Filters.from_query(request.query))
        return _json(views.overview_json(ov))

    async def _api_slo(self, request: web.Request) -> web.Response:
        d = self._detail_model(request)
        if d is None:
            return _json({"error": f"no SLO {request.match_info['slo_id']!r}"}, status=404)
        return _json(views.detail_json(d))

    async def _api_alerts(self, request: web.Request) -> web.Response:
        return _json(views.alerts_json(self.source.status()))

    async def _api_fleet(self, request: web.Request) -> web.Response:
        return _json(views.fleet_json(self.source.status()))


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, content_type="text/html", status=status, headers=_HEADERS)


def _json(doc: dict[str, Any], status: int = 200) -> web.Response:
    # allow_nan=False would raise on a NaN objective; NaN is written as null instead.
    return web.Response(text=json.dumps(_finite(doc), ensure_ascii=False),
                        content_type="application/json", status=status, headers=_HEADERS)


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


__all__ = ["CSP", "StatusPage"]
