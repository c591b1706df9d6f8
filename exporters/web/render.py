"""HTML for the status page and the backtest report: Jinja templates shipped in the package.

Autoescaping is on for every template: scope labels come from scraped data and
must never become markup.  The page links one stylesheet and one small script
(``static/``); the report inlines the stylesheet and has no script, so the file
opens anywhere, offline, and can be attached to a review.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2

from gpuslo.exporters.web import views
from gpuslo.exporters.web.charts import Chart, scope_charts
from gpuslo.exporters.web.series import Episode, ScopeNow, ScopeSeries, StatusSource

STATIC_FILES = ("app.css", "app.js")
_PACKAGE = "gpuslo.exporters.web"


def _pct(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v * 100:.{digits}f}\u00a0%"


def _burn(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "–"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _num(v: float | None, spec: str = ".0f") -> str:
    return "–" if v is None or math.isnan(v) else format(v, spec)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(_PACKAGE, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, burn=_burn, when=_when, duration=_duration, num=_num,
                       scope=views.scope_text)
    env.globals.update(state_of=views.scope_state, tier_cells=views.tier_cells,
                       href=views.detail_href, STATES=views.STATES)
    return env


_ENV = _environment()


def static_file(name: str) -> bytes:
    """One of :data:`STATIC_FILES` (KeyError for any other name)."""
    if name not in STATIC_FILES:
        raise KeyError(name)
    return resources.files(_PACKAGE).joinpath("static", name).read_bytes()


def _page(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def overview_page(ov: views.Overview, *, refresh_s: float) -> str:
    return _page("overview.html.j2", ov=ov, data=ov.data, refresh_s=refresh_s, nav="overview")


def detail_page(d: views.SloDetail, *, refresh_s: float) -> str:
    return _page("detail.html.j2", d=d, data=d.data, refresh_s=refresh_s, nav="slo")


def fleet_page(data: Any, rows: list[views.FleetRow], *, refresh_s: float) -> str:
    return _page("fleet.html.j2", data=data, rows=rows, refresh_s=refresh_s, nav="fleet")


def not_found_page(data: Any, what: str) -> str:
    return _page("not_found.html.j2", data=data, what=what, refresh_s=0, nav="")


def report(source: StatusSource, *, command: str = "gpuslo replay",
           inputs: Mapping[str, str] | None = None) -> str:
    """One self-contained HTML file: every SLO and scope over the replayed span.

    Scopes with alert episodes come first and open; the others are folded
    (``<details>``) but carry the same charts.
    """
    data = source.status()
    ov = views.overview(data)
    start, end = data.span or (None, None)
    sections: list[tuple[ScopeNow, ScopeSeries, list[Chart], str]] = []
    episodes: list[tuple[ScopeNow, Episode, str]] = []
    for s in ov.rows:
        series = source.series(s.slo_id, s.scope_key)
        if series is None:
            continue
        uid = f"r{len(sections)}"
        sections.append((s, series, scope_charts(series, uid, start, end), uid))
        episodes.extend((s, e, uid) for e in series.episodes)
    episodes.sort(key=lambda x: (x[1].start, x[0].slo_id))
    css = static_file("app.css").decode()
    return _page("report.html.j2", data=data, ov=ov, sections=sections, episodes=episodes,
                 css=css, command=command, inputs=dict(inputs or {}), refresh_s=0)


__all__ = ["STATIC_FILES", "detail_page", "fleet_page", "not_found_page", "overview_page",
           "report", "static_file"]
