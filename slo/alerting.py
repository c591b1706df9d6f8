"""Multi-window multi-burn-rate alerts: which tiers breach, and a pure state machine.

A tier (:class:`slo.windows.BurnRateWindowSpec`) breaches when both its short
and its long window are :attr:`~slo.budget.SliState.OK` and burn faster than
its factor (strictly, as Sloth's ``>``).  A window in "no data" or "too little
traffic" never breaches, unless the SLO's alert policy says
``alertWhenNoData``, in which case a long window without data breaches: a
missing series must not look green (SLO.md pitfall 5).

Per (SLO, scope, severity) the state machine is Prometheus' own:

    inactive ──breach──► pending ──held alertAfter──► firing ──clear──► resolved
        ▲                  │ clear                                        │
        └──────────────────┴───────────────── next evaluation ◄───────────┘

With ``alertAfter`` 0 (the default, as the Workbook advises) a breach fires at
once.  Time only enters through ``now``; there is no clock here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from gpuslo.slo import conventions as cv
from gpuslo.slo.budget import SliState, SloReport
from gpuslo.slo.spec import SloSpec
from gpuslo.slo.windows import BurnRateWindowSpec, Severity


class AlertStatus(StrEnum):
    """Lifecycle of one alert."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class TierReport:
    """One tier's verdict at one evaluation."""

    tier: str
    severity: Severity
    factor: float
    short_burn_rate: float | None
    long_burn_rate: float | None
    breaching: bool
    no_data: bool = False


def evaluate_tier(
    report: SloReport, tier: BurnRateWindowSpec, *, alert_when_no_data: bool = False
) -> TierReport:
    """Does ``tier`` breach in ``report``?"""
    short = report.window(tier.short)
    long = report.window(tier.long)
    k = float(tier.factor)
    breach = (
        short.state is SliState.OK
        and long.state is SliState.OK
        and short.burn_rate is not None
        and long.burn_rate is not None
        and short.burn_rate > k
        and long.burn_rate > k
    )
    no_data = alert_when_no_data and long.state is SliState.NO_DATA
    return TierReport(
        tier=tier.name,
        severity=tier.severity,
        factor=k,
        short_burn_rate=short.burn_rate,
        long_burn_rate=long.burn_rate,
        breaching=breach or no_data,
        no_data=no_data,
    )


@dataclass(frozen=True)
class AlertState:
    """What the state machine remembers between evaluations."""

    status: AlertStatus = AlertStatus.INACTIVE
    active_since: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None


def transition(
    state: AlertState, breaching: bool, now: datetime, alert_after: timedelta = timedelta(0)
) -> AlertState:
    """The next state after one evaluation at ``now``."""
    if breaching:
        if state.status in (AlertStatus.INACTIVE, AlertStatus.RESOLVED):
            if alert_after <= timedelta(0):
                return AlertState(AlertStatus.FIRING, now, now, None)
            return AlertState(AlertStatus.PENDING, now, None, None)
        if state.status is AlertStatus.PENDING:
            assert state.active_since is not None
            if now - state.active_since >= alert_after:
                return replace(state, status=AlertStatus.FIRING, fired_at=now)
            return state
        return state
    if state.status is AlertStatus.FIRING:
        return replace(state, status=AlertStatus.RESOLVED, resolved_at=now)
    if state.status in (AlertStatus.PENDING, AlertStatus.RESOLVED):
        return AlertState()
    return state


@dataclass(frozen=True)
class AlertReport:
    """One alert (SLO, scope, severity) after an evaluation: what exporters and Alertmanager see."""

    slo_id: str
    scope: Mapping[str, str]
    severity: Severity
    status: AlertStatus
    evaluated_at: datetime
    active_since: datetime | None
    fired_at: datetime | None
    resolved_at: datetime | None
    tiers: tuple[TierReport, ...]

    @property
    def alertname(self) -> str:
        """Same name as the generated Prometheus alert."""
        return cv.alert_name(self.slo_id)

    def labels(self) -> dict[str, str]:
        """Alertmanager labels: alertname, slo, severity and the scope labels."""
        return {
            **dict(self.scope),
            "alertname": self.alertname,
            cv.ALERT_LABEL_SLO: self.slo_id,
            cv.ALERT_LABEL_SEVERITY: self.severity.value,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "slo": self.slo_id,
            "scope": dict(self.scope),
            "severity": self.severity.value,
            "status": self.status.value,
            "evaluated_at": self.evaluated_at.isoformat(),
            "active_since": iso(self.active_since),
            "fired_at": iso(self.fired_at),
            "resolved_at": iso(self.resolved_at),
            "breaching_tiers": [t.tier for t in self.tiers if t.breaching],
        }


AlertKey = tuple[str, str, Severity]


class AlertEvaluator:
    """Alert states for every (SLO, scope, severity); feed it reports, get alert records."""

    def __init__(self, specs: Sequence[SloSpec]) -> None:
        self.specs = {s.id: s for s in specs}
        self._states: dict[AlertKey, AlertState] = {}

    def evaluate(self, reports: Iterable[SloReport], now: datetime) -> list[AlertReport]:
        """Advance every alert by one evaluation; returns one record per non-inactive alert.

        A scope missing from ``reports`` (its data aged out) counts as not breaching,
        so its firing alerts resolve.
        """
        seen: set[AlertKey] = set()
        out: list[AlertReport] = []
        for rep in reports:
            spec = self.specs.get(rep.slo_id)
            if spec is None:
                continue
            tiers = [evaluate_tier(rep, t, alert_when_no_data=spec.alert_when_no_data)
                     for t in spec.windows]
            for sev in Severity:
                mine = tuple(t for t in tiers if t.severity is sev)
                if not mine:
                    continue
                key = (rep.slo_id, rep.scope_key, sev)
                seen.add(key)
                breaching = [t for t in mine if t.breaching]
                after = min(
                    (w.alert_after for w in spec.windows
                     if w.severity is sev and w.name in {t.tier for t in breaching}),
                    default=timedelta(0),
                )
                state = transition(self._states.get(key, AlertState()), bool(breaching), now,
                                   after)
                self._store(key, state)
                if state.status is not AlertStatus.INACTIVE:
                    out.append(AlertReport(rep.slo_id, dict(rep.scope), sev, state.status, now,
                                           state.active_since, state.fired_at, state.resolved_at,
                                           mine))
        for key in sorted(set(self._states) - seen):
            state = transition(self._states[key], False, now)
            self._store(key, state)
            if state.status is not AlertStatus.INACTIVE:
                out.append(AlertReport(key[0], cv.scope_labels(key[1]), key[2], state.status, now,
                                       state.active_since, state.fired_at, state.resolved_at, ()))
        return out

    def _store(self, key: AlertKey, state: AlertState) -> None:
        if state.status is AlertStatus.INACTIVE:
            self._states.pop(key, None)
        else:
            self._states[key] = state

    def states(self) -> dict[AlertKey, AlertState]:
        """Current non-inactive states (for checkpoints)."""
        return dict(self._states)

    def restore(self, states: Mapping[AlertKey, AlertState]) -> None:
        """Replace all states (from a checkpoint)."""
        self._states = dict(states)
