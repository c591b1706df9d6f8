"""What the status page and the backtest report draw: a small neutral structure.

The live page (fed :class:`~gpuslo.exporters.base.Snapshot` s) and the backtest
report (fed a finished backtest) both reduce their input to these records, so
the views, charts and templates never see an engine object and one renderer
serves both.  A new source of figures needs one adapter to these types.

Times are the engine's own evaluation times (simulated time in the demo).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from gpuslo.slo import conventions as cv
from gpuslo.slo.spec import SloSpec


class AlertState:
    """The alert column's values, worst first (plain strings: they go to JSON as they are)."""

    FIRING = "firing"
    PENDING = "pending"
    RESOLVED = "resolved"
    OK = "ok"
    ORDER = (FIRING, PENDING, RESOLVED, OK)


@dataclass(frozen=True)
class TierLine:
    """One multi-window burn-rate tier: both windows above ``factor`` means it breaches."""

    name: str  # page-5m-1h
    severity: str  # page | ticket
    short: str  # window label, 5m
    long: str  # 1h
    factor: float


@dataclass(frozen=True)
class Episode:
    """An alert from firing to resolution (``end`` None: still firing)."""

    severity: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class ScopeNow:
    """One SLO scope at the latest evaluation: one overview row."""

    slo_id: str
    scope: Mapping[str, str]
    scope_key: str
    objective: float
    period: str  # 30d
    evaluated_at: datetime
    sli: float | None  # over the period
    sli_state: str  # ok | no_data | too_little_traffic
    budget: float | None  # remaining share of the period's error budget (negative: overspent)
    burn: Mapping[str, float | None]  # window label -> burn rate
    tiers: tuple[TierLine, ...]
    alert: str  # AlertState
    severity: str | None  # of the firing or pending alert (page wins)
    cause: str | None = None  # the top root cause, as text
    time_to_exhaustion_s: float | None = None
    episodes: int = 0  # alert episodes in the history kept (the open one included)


@dataclass(frozen=True)
class ScopeSeries:
    """One SLO scope over time: the detail page's and the report's charts."""

    slo_id: str
    scope: Mapping[str, str]
    scope_key: str
    objective: float
    tiers: tuple[TierLine, ...]
    times: tuple[datetime, ...]
    sli: tuple[float | None, ...]  # period SLI at each time
    budget: tuple[float | None, ...]
    burn: Mapping[str, tuple[float | None, ...]]  # window label -> burn rate at each time
    episodes: tuple[Episode, ...] = ()


@dataclass(frozen=True)
class NodeHealth:
    """One node's health figures, as the demo's terminal fleet panel shows them.

    Every figure is optional: a process knows what its samples told it (the demo
    reads them back from Kafka), and ``gpuslo aggregate`` knows none of them.
    """

    node: str
    gpus: int | None = None
    gpus_seen: int | None = None
    util_pct: float | None = None
    temp_max_c: float | None = None
    xid: Mapping[str, int] = field(default_factory=dict)  # gpu -> last XID code
    gpus_lost: tuple[str, ...] = ()
    ib_errors: float | None = None
    ports_down: int | None = None
    kv_usage_max: float | None = None
    ttft_mean_s: float | None = None
    faults: tuple[str, ...] = ()  # the simulator's ground truth, in the demo


@dataclass(frozen=True)
class DashboardLink:
    """A Grafana dashboard the SLO page links to (by uid, under ``grafana_url``)."""

    uid: str
    title: str
    per_slo: bool = False  # takes ?var-slo=<id>


@dataclass(frozen=True)
class StatusData:
    """Everything a page shows except series: the latest scopes, specs, the fleet."""

    title: str
    evaluated_at: datetime | None
    scopes: tuple[ScopeNow, ...]
    specs: Mapping[str, SloSpec]
    fleet: tuple[NodeHealth, ...] = ()
    targets_down: tuple[str, ...] = ()  # scrape targets whose last scrape failed
    span: tuple[datetime, datetime] | None = None  # a replay's start and end
    live: bool = True  # False: a finished backtest (nothing will change)


class StatusSource(Protocol):
    """What the pages read: the latest status, and one scope's series on demand."""

    def status(self) -> StatusData:
        """The latest status (cheap: no series)."""

    def series(self, slo_id: str, scope_key: str) -> ScopeSeries | None:
        """One scope over time, or None if it is unknown."""


def tier_lines(spec: SloSpec | None) -> tuple[TierLine, ...]:
    """The tiers of ``spec`` as drawn (none for an SLO without a spec)."""
    if spec is None:
        return ()
    return tuple(
        TierLine(w.name, w.severity.value, cv.duration_label(w.short),
                 cv.duration_label(w.long), float(w.factor))
        for w in spec.windows
    )


def alert_rank(alert: str, severity: str | None) -> int:
    """Sort key of an alert state: firing page, firing ticket, pending..., ok last."""
    base = AlertState.ORDER.index(alert) if alert in AlertState.ORDER else len(AlertState.ORDER)
    return base * 2 + (0 if severity == "page" else 1)


__all__ = [
    "AlertState",
    "DashboardLink",
    "Episode",
    "NodeHealth",
    "ScopeNow",
    "ScopeSeries",
    "StatusData",
    "StatusSource",
    "TierLine",
    "alert_rank",
    "tier_lines",
]
