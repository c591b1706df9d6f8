"""The SLO table every live view shows: one row per SLO scope, with its alerts.

Used by ``gpuslo aggregate``, ``gpuslo replay`` and the demo; pure (reports in,
a rich table out), so it is tested with rich's console capture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from rich.table import Table

from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.budget import SloReport


def _pct(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report_table(
    reports: Sequence[SloReport], alerts: Sequence[AlertReport], evaluated_at: datetime | None
) -> Table:
    """The live view of ``gpuslo aggregate``: one row per SLO scope."""
    firing: dict[tuple[str, str], list[str]] = {}
    for a in alerts:
        if a.status is AlertStatus.FIRING:
            key = (a.slo_id, json.dumps(dict(sorted(a.scope.items()))))
            firing.setdefault(key, []).append(a.severity.value)
    when = evaluated_at.strftime("%H:%M:%S") if evaluated_at else "waiting for data"
    table = Table(title=f"SLOs at {when}", expand=False)
    for col in ("SLO", "scope", "objective", "SLI (period)", "burn 5m", "burn 1h",
                "budget left", "alerts"):
        table.add_column(col, justify="right" if col not in ("SLO", "scope") else "left")
    for r in reports:
        scope = ",".join(f"{k}={v}" for k, v in sorted(r.scope.items())) or "-"
        burn = {w.window: w.burn_rate for w in r.windows}
        sev = firing.get((r.slo_id, json.dumps(dict(sorted(r.scope.items())))), [])
        table.add_row(
            r.slo_id, scope, _pct(r.objective), _pct(r.period.sli) if r.period.sli is not None
            else r.period.state.value, _num(burn.get(timedelta(minutes=5))),
            _num(burn.get(timedelta(hours=1))), _pct(r.budget_remaining, 1),
            "[red]" + ",".join(sev) + "[/]" if sev else "",
        )
    return table


__all__ = ["report_table"]
