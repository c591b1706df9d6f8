"""The status page's memory: every SLO scope's recent evaluations, bounded.

Fed like an exporter (:meth:`StatusHistory.publish` with each
:class:`~gpuslo.exporters.base.Snapshot`), it keeps per SLO scope the last
``points`` evaluations (period SLI, budget left, burn rate per window) in a
NumPy ring, and the alert episodes seen, so the charts have data without asking
Prometheus.  Memory is bounded twice: ``points`` per scope, and a scope missing
from ``points`` consecutive snapshots (a pod that went away) is forgotten.

Pure: no I/O, no clock; the aiohttp handlers read :meth:`status` and
:meth:`series` (the :class:`~gpuslo.exporters.web.series.StatusSource` protocol).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from gpuslo.anomaly.cause import top_cause_line
from gpuslo.exporters.base import Snapshot
from gpuslo.exporters.web.series import (
    AlertState,
    Episode,
    NodeHealth,
    ScopeNow,
    ScopeSeries,
    StatusData,
    TierLine,
    tier_lines,
)
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.budget import SloReport
from gpuslo.slo.spec import SloSpec

ScopeId = tuple[str, str]  # (SLO id, scope key)
EPISODES_PER_SCOPE = 64


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _opt(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


class _Ring:
    """The last ``size`` evaluations of one scope: times, then (SLI, budget, burn per window)."""

    def __init__(self, slo_id: str, scope: Mapping[str, str], windows: tuple[str, ...],
                 size: int) -> None:
        self.slo_id = slo_id
        self.scope = dict(scope)
        self.windows = windows
        self.size = size
        self.t_ms = np.zeros(size, dtype=np.int64)
        self.values = np.full((size, 2 + len(windows)), np.nan)
        self.objective = float("nan")
        self.count = 0  # appended in all
        self.last_seen = 0  # snapshot number
        self.episodes: deque[Episode] = deque(maxlen=EPISODES_PER_SCOPE)
        self.open: dict[str, datetime] = {}  # severity -> fired at

    def append(self, rep: SloReport) -> None:
        t = _ms(rep.evaluated_at)
        if self.count and t <= self.t_ms[(self.count - 1) % self.size]:
            return  # the same evaluation published again
        burn = {cv.duration_label(w.window): w.burn_rate for w in rep.windows}
        row = [rep.period.sli, rep.budget_remaining, *(burn.get(w) for w in self.windows)]
        i = self.count % self.size
        self.objective = rep.objective
        self.t_ms[i] = t
        self.values[i] = [np.nan if v is None else v for v in row]
        self.count += 1

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.count, self.size)
        idx = (np.arange(self.count - n, self.count)) % self.size
        return self.t_ms[idx], self.values[idx]


class StatusHistory:
    """Latest snapshot + bounded per-scope history; a :class:`StatusSource`."""

    def __init__(self, *, points: int = 720, title: str = "gpuslo") -> None:
        if points < 2:
            raise ValueError(f"points must be >= 2, got {points}")
        self.points = points
        self.title = title
        self.latest: Snapshot | None = None
        self.fleet: tuple[NodeHealth, ...] = ()
        self._rings: dict[ScopeId, _Ring] = {}
        self._published = 0
        self._tiers: dict[str, tuple[TierLine, ...]] = {}

    # --- feeding ---------------------------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        """Take one evaluation: append each scope's figures, open and close episodes."""
        self._published += 1
        self.latest = snapshot
        for spec_id, spec in snapshot.specs.items():
            if spec_id not in self._tiers:
                self._tiers[spec_id] = tier_lines(spec)
        for rep in snapshot.reports:
            key = (rep.slo_id, rep.scope_key)
            ring = self._rings.get(key)
            if ring is None:
                windows = tuple(cv.duration_label(w.window) for w in rep.windows)
                ring = self._rings[key] = _Ring(rep.slo_id, rep.scope, windows, self.points)
            ring.append(rep)
            ring.last_seen = self._published
        self._track_episodes(snapshot)
        stale = [k for k, r in self._rings.items() if self._published - r.last_seen > self.points]
        for k in stale:
            del self._rings[k]

    def publish_fleet(self, nodes: Sequence[NodeHealth]) -> None:
        """Replace the fleet's per-node figures (the demo's fleet panel, read back from Kafka)."""
        self.fleet = tuple(nodes)

    def _track_episodes(self, snapshot: Snapshot) -> None:
        seen: set[tuple[str, str, str]] = set()
        for a in snapshot.alerts:
            ring = self._rings.get((a.slo_id, cv.scope_key(dict(a.scope))))
            if ring is None:
                continue
            sev = a.severity.value
            seen.add((a.slo_id, cv.scope_key(dict(a.scope)), sev))
            if a.status is AlertStatus.FIRING and sev not in ring.open:
                ring.open[sev] = a.fired_at or a.evaluated_at
            elif a.status is AlertStatus.RESOLVED and sev in ring.open:
                ring.episodes.append(Episode(sev, ring.open.pop(sev),
                                             a.resolved_at or a.evaluated_at))
        # An alert that vanished without a resolved record (its scope aged out) ended too.
        when = max((r.evaluated_at for r in snapshot.reports), default=snapshot.taken_at)
        for (slo_id, key), ring in self._rings.items():
            for sev in [s for s in ring.open if (slo_id, key, s) not in seen]:
                ring.episodes.append(Episode(sev, ring.open.pop(sev), when))

    # --- reading (StatusSource) --------------------------------------------------------------

    def status(self) -> StatusData:
        snap = self.latest
        if snap is None:
            return StatusData(self.title, None, (), {}, self.fleet)
        episodes = {k: len(r.episodes) + len(r.open) for k, r in self._rings.items()}
        scopes = tuple(scopes_now(snap.reports, snap.alerts, snap.specs, snap.rca, episodes,
                                  tiers=self._tiers))
        evaluated = max((r.evaluated_at for r in snap.reports), default=None)
        # The target's URL (or path) names it on the page; a whole collector's failure
        # has no target and is named by the collector.
        down = tuple(sorted({t.target or t.collector
                             for t, up in snap.health.target_up.items() if not up}))
        return StatusData(self.title, evaluated, scopes, dict(snap.specs), self.fleet, down)

    def series(self, slo_id: str, scope_key: str) -> ScopeSeries | None:
        ring = self._rings.get((slo_id, scope_key))
        if ring is None:
            return None
        t_ms, values = ring.ordered()
        times = tuple(datetime.fromtimestamp(int(t) / 1000, UTC) for t in t_ms)
        cols = [tuple(_opt(v) for v in values[:, j]) for j in range(values.shape[1])]
        episodes = (*ring.episodes, *(Episode(s, t, None) for s, t in sorted(ring.open.items())))
        return ScopeSeries(
            slo_id=slo_id,
            scope=dict(ring.scope),
            scope_key=scope_key,
            objective=ring.objective,
            tiers=self._tiers.get(slo_id, ()),
            times=times,
            sli=cols[0],
            budget=cols[1],
            burn={w: cols[2 + j] for j, w in enumerate(ring.windows)},
            episodes=tuple(sorted(episodes, key=lambda e: e.start)),
        )

    @property
    def specs(self) -> Mapping[str, SloSpec]:
        return dict(self.latest.specs) if self.latest else {}


def scope_now(
    rep: SloReport,
    alerts: Sequence[AlertReport],
    tiers: tuple[TierLine, ...],
    cause: str | None = None,
    episodes: int = 0,
) -> ScopeNow:
    """One report and its scope's alerts as the overview row (and the terminal line) shows it."""
    alert, severity = AlertState.OK, None
    for state in (AlertStatus.FIRING, AlertStatus.PENDING, AlertStatus.RESOLVED):
        sevs = {a.severity.value for a in alerts if a.status is state}
        if sevs:
            alert, severity = state.value, "page" if "page" in sevs else sorted(sevs)[0]
            break
    return ScopeNow(
        slo_id=rep.slo_id,
        scope=dict(rep.scope),
        scope_key=rep.scope_key,
        objective=rep.objective,
        period=cv.duration_label(rep.period.window),
        evaluated_at=rep.evaluated_at,
        sli=rep.period.sli,
        sli_state=rep.period.state.value,
        budget=rep.budget_remaining,
        burn={cv.duration_label(w.window): w.burn_rate for w in rep.windows},
        tiers=tiers,
        alert=alert,
        severity=severity,
        cause=cause,
        time_to_exhaustion_s=(rep.time_to_exhaustion.total_seconds()
                              if rep.time_to_exhaustion is not None else None),
        episodes=episodes,
    )


def scopes_now(
    reports: Sequence[SloReport],
    alerts: Sequence[AlertReport],
    specs: Mapping[str, SloSpec] | None = None,
    rca: Mapping[ScopeId, str] | None = None,
    episodes: Mapping[ScopeId, int] | None = None,
    *,
    tiers: Mapping[str, tuple[TierLine, ...]] | None = None,
) -> list[ScopeNow]:
    """Every report as a :class:`ScopeNow`, with its alerts, cause and tiers (pure)."""
    by_scope: dict[ScopeId, list[AlertReport]] = {}
    for a in alerts:
        by_scope.setdefault((a.slo_id, cv.scope_key(dict(a.scope))), []).append(a)
    known = dict(tiers or {})
    out = []
    for rep in reports:
        key = (rep.slo_id, rep.scope_key)
        if rep.slo_id not in known:
            known[rep.slo_id] = tier_lines((specs or {}).get(rep.slo_id))
        out.append(scope_now(rep, by_scope.get(key, []), known[rep.slo_id],
                             top_cause_line((rca or {}).get(key)), (episodes or {}).get(key, 0)))
    return out


__all__ = ["StatusHistory", "scope_now", "scopes_now"]
