"""View models of the status page: what each page and JSON endpoint shows (pure).

Every function here takes a :class:`~gpuslo.exporters.web.series.StatusSource`
(or what it returned) and answers plain data: the overview's rows worst first,
one SLO's detail with its charts, the fleet.  The aiohttp handlers only parse
the request and render these, so everything a page decides is tested without
a server.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from gpuslo.exporters.web.charts import Chart, scope_charts
from gpuslo.exporters.web.series import (
    AlertState,
    DashboardLink,
    NodeHealth,
    ScopeNow,
    ScopeSeries,
    StatusData,
    StatusSource,
    TierLine,
    alert_rank,
)
from gpuslo.slo import conventions as cv
from gpuslo.slo.rules import generate, render_rules_file
from gpuslo.slo.spec import SloSpec

STATES = ("firing", "pending", "burning", "no_data", "ok")


# --- one scope -------------------------------------------------------------------------------


def scope_state(s: ScopeNow) -> str:
    """firing | pending | burning | no_data | ok: the overview's state filter and badge.

    Burning: no alert yet, but the last hour consumed budget faster than the period
    allows (burn rate > 1), so the budget will not last the period at this pace.
    """
    if s.alert in (AlertState.FIRING, AlertState.PENDING):
        return s.alert
    hour = s.burn.get("1h")
    if hour is not None and hour > 1.0:
        return "burning"
    if s.sli is None:
        return "no_data"
    return "ok"


def worst_first_key(s: ScopeNow) -> tuple[Any, ...]:
    """Firing (page, then ticket) first, then pending, burning, without data (a missing
    series must not look green), then by budget left (lowest first; a scope without a
    budget figure after every scope with one)."""
    state_rank = STATES.index(scope_state(s))
    return (alert_rank(s.alert, s.severity), state_rank, s.budget is None,
            s.budget if s.budget is not None else 0.0, s.slo_id, s.scope_key)


def worst_first(scopes: Iterable[ScopeNow]) -> list[ScopeNow]:
    return sorted(scopes, key=worst_first_key)


def scope_text(scope: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(scope.items())) or "(whole SLO)"


@dataclass(frozen=True)
class TierCell:
    """One tier's two burn rates against its factor, at the latest evaluation."""

    tier: TierLine
    short_burn: float | None
    long_burn: float | None

    @property
    def short_over(self) -> bool:
        return self.short_burn is not None and self.short_burn > self.tier.factor

    @property
    def long_over(self) -> bool:
        return self.long_burn is not None and self.long_burn > self.tier.factor

    @property
    def breaching(self) -> bool:
        return self.short_over and self.long_over


def tier_cells(s: ScopeNow) -> list[TierCell]:
    return [TierCell(t, s.burn.get(t.short), s.burn.get(t.long)) for t in s.tiers]


def detail_href(slo_id: str, scope_key: str | None = None) -> str:
    base = f"/slo/{quote(slo_id, safe='')}"
    return base + (f"?{urlencode({'scope': scope_key})}" if scope_key is not None else "")


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def scope_json(s: ScopeNow) -> dict[str, Any]:
    """One overview row as JSON (``/api/v1/slos``)."""
    return {
        "slo": s.slo_id,
        "scope": dict(s.scope),
        "scope_key": s.scope_key,
        "state": scope_state(s),
        "objective": s.objective,
        "period": s.period,
        "evaluated_at": _iso(s.evaluated_at),
        "sli": s.sli,
        "sli_state": s.sli_state,
        "budget_remaining": s.budget,
        "time_to_exhaustion_s": s.time_to_exhaustion_s,
        "burn_rates": dict(s.burn),
        "tiers": [
            {"name": c.tier.name, "severity": c.tier.severity, "short": c.tier.short,
             "long": c.tier.long, "factor": c.tier.factor, "short_burn_rate": c.short_burn,
             "long_burn_rate": c.long_burn, "breaching": c.breaching}
            for c in tier_cells(s)
        ],
        "alert": s.alert,
        "severity": s.severity,
        "cause": s.cause,
        "episodes": s.episodes,
        "href": detail_href(s.slo_id, s.scope_key),
    }


# --- overview --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The overview's filters (query parameters ``slo``, ``label``, ``state``).

    ``label`` is ``name=value`` (exact) or a bare text found in any scope label
    name or value, or in the SLO's own metadata labels.
    """

    slo: str = ""
    label: str = ""
    state: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        state = query.get("state", "").strip()
        return cls(query.get("slo", "").strip(), query.get("label", "").strip(),
                   state if state in STATES else "")

    def match(self, s: ScopeNow, spec: SloSpec | None) -> bool:
        if self.slo and s.slo_id != self.slo:
            return False
        if self.state and scope_state(s) != self.state:
            return False
        if self.label:
            labels = {**(spec.labels if spec is not None else {}), **s.scope}
            name, eq, value = self.label.partition("=")
            if eq:
                return labels.get(name.strip()) == value.strip()
            needle = self.label.lower()
            return any(needle in k.lower() or needle in v.lower() for k, v in labels.items())
        return True

    @property
    def active(self) -> bool:
        return bool(self.slo or self.label or self.state)


@dataclass(frozen=True)
class Overview:
    data: StatusData
    rows: tuple[ScopeNow, ...]  # filtered, worst first
    counts: Mapping[str, int]  # state -> scopes, before filtering
    filters: Filters
    slo_ids: tuple[str, ...]


def overview(data: StatusData, filters: Filters = Filters()) -> Overview:
    rows = worst_first(s for s in data.scopes if filters.match(s, data.specs.get(s.slo_id)))
    counts = {state: 0 for state in STATES}
    for s in data.scopes:
        counts[scope_state(s)] += 1
    ids = tuple(sorted({s.slo_id for s in data.scopes} | set(data.specs)))
    return Overview(data, tuple(rows), counts, filters, ids)


def overview_json(ov: Overview) -> dict[str, Any]:
    return {
        "evaluated_at": _iso(ov.data.evaluated_at),
        "live": ov.data.live,
        "counts": dict(ov.counts),
        "slos": [scope_json(s) for s in ov.rows],
    }


def alerts_json(data: StatusData) -> dict[str, Any]:
    """Every scope whose alert is not quiet, worst first (``/api/v1/alerts``)."""
    rows = [s for s in worst_first(data.scopes) if s.alert != AlertState.OK]
    return {
        "evaluated_at": _iso(data.evaluated_at),
        "alerts": [
            {"slo": s.slo_id, "scope": dict(s.scope), "alertname": cv.alert_name(s.slo_id),
             "severity": s.severity, "status": s.alert, "cause": s.cause,
             "budget_remaining": s.budget, "href": detail_href(s.slo_id, s.scope_key)}
            for s in rows
        ],
    }


# --- one SLO -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A spec's dataclass tree as YAML-ready data: durations as 5m, decimals exact."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = _plain(getattr(value, f.name))
            if v not in (None, {}, [], ()):
                out[f.name] = v
        return out
    if isinstance(value, timedelta):
        return cv.duration_label(value) if value.total_seconds() > 0 else "0s"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def spec_yaml(spec: SloSpec) -> str:
    """The spec as gpuslo reads it (resolved: objective, windows and factors included)."""
    return yaml.safe_dump(_plain(spec), sort_keys=False, allow_unicode=True, width=96)


def rules_text(spec: SloSpec) -> str:
    """The Prometheus rules ``gpuslo rules`` generates for this SLO, or why there are none."""
    report = generate([spec])
    if report.groups:
        return render_rules_file(report)
    reasons = "; ".join(s.reason for s in report.skipped) or "no PromQL form"
    return f"# no Prometheus rules for {spec.id}: {reasons}\n"


@dataclass(frozen=True)
class Link:
    title: str
    href: str


def dashboard_links(links: Sequence[DashboardLink], grafana_url: str, slo_id: str) -> list[Link]:
    base = grafana_url.rstrip("/")
    if not base:
        return []
    return [Link(d.title, f"{base}/d/{quote(d.uid, safe='')}"
                 + (f"?{urlencode({'var-slo': slo_id})}" if d.per_slo else ""))
            for d in links]


@dataclass(frozen=True)
class SloDetail:
    slo_id: str
    spec: SloSpec | None
    scopes: tuple[ScopeNow, ...]  # worst first
    selected: ScopeNow | None
    series: ScopeSeries | None
    charts: tuple[Chart, ...]
    spec_yaml: str
    rules: str
    dashboards: tuple[Link, ...]
    dashboard_uids: tuple[DashboardLink, ...]
    data: StatusData


def slo_detail(
    source: StatusSource,
    slo_id: str,
    scope_key: str | None = None,
    *,
    dashboards: Sequence[DashboardLink] = (),
    grafana_url: str = "",
    rules_cache: dict[str, str] | None = None,
) -> SloDetail | None:
    """One SLO: its scopes worst first, and the charts of ``scope_key`` (default: the worst).

    None when the SLO is neither evaluated nor specified.
    """
    data = source.status()
    spec = data.specs.get(slo_id)
    scopes = tuple(worst_first(s for s in data.scopes if s.slo_id == slo_id))
    if spec is None and not scopes:
        return None
    selected = next((s for s in scopes if s.scope_key == scope_key), None)
    if selected is None and scopes:
        selected = scopes[0]
    series = source.series(slo_id, selected.scope_key) if selected is not None else None
    span = data.span
    charts = tuple(scope_charts(series, _uid(slo_id, 0), *(span or (None, None)))) \
        if series is not None else ()
    if spec is not None:
        cache = rules_cache if rules_cache is not None else {}
        if slo_id not in cache:
            cache[slo_id] = rules_text(spec)
        rules = cache[slo_id]
    else:
        rules = ""
    return SloDetail(slo_id, spec, scopes, selected, series, charts,
                     spec_yaml(spec) if spec is not None else "", rules,
                     tuple(dashboard_links(dashboards, grafana_url, slo_id)), tuple(dashboards),
                     data)


def _uid(slo_id: str, n: int) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in slo_id)
    return f"c-{safe}-{n}"


def series_json(s: ScopeSeries) -> dict[str, Any]:
    return {
        "slo": s.slo_id,
        "scope": dict(s.scope),
        "objective": s.objective,
        "times": [t.isoformat() for t in s.times],
        "sli": list(s.sli),
        "budget_remaining": list(s.budget),
        "burn_rates": {w: list(v) for w, v in s.burn.items()},
        "episodes": [{"severity": e.severity, "start": e.start.isoformat(),
                      "end": _iso(e.end)} for e in s.episodes],
    }


def detail_json(d: SloDetail) -> dict[str, Any]:
    return {
        "slo": d.slo_id,
        "spec": _plain(d.spec) if d.spec is not None else None,
        "scopes": [scope_json(s) for s in d.scopes],
        "selected": scope_json(d.selected) if d.selected is not None else None,
        "series": series_json(d.series) if d.series is not None else None,
        "rules": d.rules,
        "dashboards": [{"title": link.title, "href": link.href} for link in d.dashboards],
    }


# --- the fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetRow:
    """One node: its figures (when the process has them) and its SLO scopes' health."""

    node: str
    health: NodeHealth | None
    scopes: int
    firing: int
    burning: int
    lowest_budget: float | None
    worst: ScopeNow | None


def fleet(data: StatusData) -> list[FleetRow]:
    """Nodes from the fleet figures and from every scope with a ``node`` label, worst first."""
    by_node: dict[str, list[ScopeNow]] = {}
    for s in data.scopes:
        node = s.scope.get("node")
        if node:
            by_node.setdefault(node, []).append(s)
    health = {h.node: h for h in data.fleet}
    rows = []
    for node in sorted(set(by_node) | set(health), key=lambda n: (len(n), n)):
        mine = worst_first(by_node.get(node, []))
        budgets = [s.budget for s in mine if s.budget is not None]
        rows.append(FleetRow(
            node, health.get(node), len(mine),
            sum(1 for s in mine if s.alert == AlertState.FIRING),
            sum(1 for s in mine if scope_state(s) == "burning"),
            min(budgets) if budgets else None, mine[0] if mine else None,
        ))
    return sorted(rows, key=lambda r: (-r.firing, -r.burning,
                                       r.lowest_budget if r.lowest_budget is not None else 2.0,
                                       len(r.node), r.node))


def fleet_json(data: StatusData) -> dict[str, Any]:
    return {
        "evaluated_at": _iso(data.evaluated_at),
        "targets_down": list(data.targets_down),
        "nodes": [
            {"node": r.node,
             "health": dataclasses.asdict(r.health) if r.health is not None else None,
             "slo_scopes": r.scopes, "firing": r.firing, "burning": r.burning,
             "lowest_budget": r.lowest_budget,
             "worst": scope_json(r.worst) if r.worst is not None else None}
            for r in fleet(data)
        ],
    }


__all__ = [
    "STATES",
    "Filters",
    "FleetRow",
    "Overview",
    "SloDetail",
    "TierCell",
    "alerts_json",
    "detail_href",
    "detail_json",
    "fleet",
    "fleet_json",
    "overview",
    "overview_json",
    "rules_text",
    "scope_json",
    "scope_state",
    "scope_text",
    "series_json",
    "slo_detail",
    "spec_yaml",
    "tier_cells",
    "worst_first",
]
