"""The board: what stage 2 publishes and everything else reads.

The live view, the exporters, the alert sender and the status page all read
the same immutable snapshot, replaced whole on every evaluation, so none of
them can see a half-updated one or slow the stage down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gpuslo.anomaly.cause import Cause
from gpuslo.exporters.base import AnomalyScore
from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.budget import SloReport


@dataclass(frozen=True)
class BoardSnapshot:
    """One evaluation: every SLO scope's report and every non-inactive alert, and the
    ranked causes of the alerts that fired, by (SLO id, scope key)."""

    version: int
    evaluated_at: datetime | None
    reports: tuple[SloReport, ...]
    alerts: tuple[AlertReport, ...]
    causes: Mapping[tuple[str, str], tuple[Cause, ...]] = field(default_factory=dict)
    anomaly_scores: tuple[AnomalyScore, ...] = ()

    def firing(self) -> tuple[AlertReport, ...]:
        """Alerts firing now (what a pager sees)."""
        return tuple(a for a in self.alerts if a.status is AlertStatus.FIRING)


class ReportBoard:
    """The latest reports and alerts, replaced whole on every stage-2 tick.

    Readers never see a half-updated evaluation: :meth:`latest` returns an
    immutable snapshot.  :meth:`wait` lets a live view or an alert sender wake
    on each new evaluation instead of polling.
    """

    def __init__(self) -> None:
        self._snap = BoardSnapshot(0, None, (), ())
        self._changed = asyncio.Event()

    def publish(
        self,
        reports: Sequence[SloReport],
        alerts: Sequence[AlertReport],
        now: datetime,
        causes: Mapping[tuple[str, str], tuple[Cause, ...]] | None = None,
        anomaly_scores: Sequence[AnomalyScore] = (),
    ) -> BoardSnapshot:
        """Replace the snapshot (called by :class:`Stage2Runner`)."""
        self._snap = BoardSnapshot(self._snap.version + 1, now, tuple(reports), tuple(alerts),
                                   dict(causes or {}), tuple(anomaly_scores))
        self._changed.set()
        self._changed = asyncio.Event()
        return self._snap

    def latest(self) -> BoardSnapshot:
        """The newest evaluation (version 0 and empty before the first tick)."""
        return self._snap

    async def wait(self, after_version: int, timeout_s: float | None = None) -> BoardSnapshot:
        """The first snapshot newer than ``after_version`` (or the latest one on timeout)."""
        if self._snap.version > after_version:
            return self._snap
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self._snap


__all__ = ["BoardSnapshot", "ReportBoard"]
