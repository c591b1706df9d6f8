"""The SLO views of the terminal: the live view that fits, and the full table.

:class:`SloStatusView` is what ``gpuslo aggregate`` and the demo show while
they run: firing alerts with their cause, then burning scopes, then one line
per SLO for its healthy scopes, never taller than the terminal, with a key per
SLO to list its scopes.  It orders and classifies scopes with the status page's
own functions (:mod:`gpuslo.exporters.web.views`), so the terminal and the
browser agree on what is worst.  :func:`report_table` (one row per scope) is
what ``gpuslo replay`` prints at the end.  Pure: tested with rich's console
capture.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from gpuslo.anomaly.cause import top_cause_line
from gpuslo.exporters.web.history import scopes_now
from gpuslo.exporters.web.series import ScopeNow
from gpuslo.exporters.web.views import scope_state, tier_cells, worst_first
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.budget import SloReport
from gpuslo.slo.spec import SloSpec


def _pct(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _burn(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


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


def firing_causes(alerts: Sequence[AlertReport], rca: Mapping[tuple[str, str], str]) -> Text:
    """One line per firing SLO scope with its top cause (what a demo or ``aggregate`` prints
    beside the final table, as the live view shows it while running)."""
    out = Text()
    seen: set[tuple[str, str]] = set()
    for a in alerts:
        key = (a.slo_id, cv.scope_key(dict(a.scope)))
        if a.status is not AlertStatus.FIRING or key in seen:
            continue
        seen.add(key)
        cause = top_cause_line(rca.get(key))
        out.append(f"firing {a.slo_id} {{{_scope_text(a.scope)}}}: ", style="bold red")
        out.append(f"cause: {cause}\n" if cause else "cause: not known yet\n",
                   style="red" if cause else "dim")
    return out


# --- the live view that fits a terminal -------------------------------------------------------

KEYS = "abcdefghijklmnopqrstuvwxyz"


def _scope_text(scope: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(scope.items())) or "-"


def _tier_text(s: ScopeNow) -> str:
    """The worst tier's burn rates against its factor: ``page 5m/1h 40.1/18.3 > 14.4``."""
    cells = tier_cells(s)
    if not cells:
        burns = [f"{w} {_burn(v)}" for w, v in s.burn.items() if w in ("5m", "1h")]
        return "burn " + " ".join(burns) if burns else ""
    worst = max(cells, key=lambda c: (c.breaching, c.long_over or c.short_over,
                                      c.tier.severity == "page", c.long_burn or 0.0))
    t = worst.tier
    return (f"{t.severity} {t.short}/{t.long} {_burn(worst.short_burn)}/"
            f"{_burn(worst.long_burn)} > {t.factor:g}")


def _budget(v: float | None) -> str:
    return "budget -" if v is None else f"budget {v * 100:.1f} %"


class SloExpander:
    """Which SLOs the live view lists scope by scope; a key per SLO toggles it.

    Keys are given in SLO id order (a..z), so an SLO keeps its key while budgets move.
    ``0`` or Escape folds everything again.
    """

    def __init__(self) -> None:
        self.expanded: set[str] = set()
        self.keys: dict[str, str] = {}  # key -> SLO id

    def assign(self, slo_ids: Iterable[str]) -> dict[str, str]:
        """Keys for ``slo_ids`` (SLO id -> key); SLOs past the 26th get none."""
        ids = sorted(set(slo_ids))
        self.keys = dict(zip(KEYS, ids, strict=False))
        return {v: k for k, v in self.keys.items()}

    def press(self, key: str) -> bool:
        """Handle one key; True when the view changed."""
        if key in ("0", "\x1b"):
            changed = bool(self.expanded)
            self.expanded.clear()
            return changed
        slo = self.keys.get(key.lower())
        if slo is None:
            return False
        self.expanded ^= {slo}
        return True


@dataclass
class SloStatusView:
    """Firing alerts with their cause, then burning scopes, then one line per SLO.

    A rich renderable that never uses more lines than it is given (the console's
    height, or ``height``), and never wraps a line: each is cut to the width.  If
    the firing alerts alone do not fit, they are folded to one line per SLO and
    severity, so every firing SLO is still on screen.
    """

    scopes: Sequence[ScopeNow]
    evaluated_at: datetime | None
    expander: SloExpander | None = None
    height: int | None = None
    keys_hint: bool = True

    @classmethod
    def of(cls, reports: Sequence[SloReport], alerts: Sequence[AlertReport],
           evaluated_at: datetime | None, *, specs: Mapping[str, SloSpec] | None = None,
           rca: Mapping[tuple[str, str], str] | None = None,
           expander: SloExpander | None = None, height: int | None = None) -> SloStatusView:
        return cls(scopes_now(reports, alerts, specs, rca), evaluated_at, expander, height)

    def lines(self, height: int) -> list[Text]:
        """At most ``height`` lines (none when ``height`` < 1)."""
        if height < 1:
            return []
        ordered = worst_first(self.scopes)
        firing = [s for s in ordered if s.alert == "firing"]
        burning = [s for s in ordered if scope_state(s) in ("pending", "burning")]
        calm_ids = {id(s) for s in (*firing, *burning)}
        healthy: dict[str, list[ScopeNow]] = {}
        for s in ordered:
            if id(s) not in calm_ids:
                healthy.setdefault(s.slo_id, []).append(s)
        exp = self.expander
        keys = exp.assign({s.slo_id for s in self.scopes}) if exp is not None else {}
        when = self.evaluated_at.strftime("%H:%M:%S") if self.evaluated_at else "waiting for data"
        head = Text.assemble(
            ("SLOs", "bold"), f" at {when}: ",
            (f"{len(firing)} firing", "bold red" if firing else ""), " · ",
            (f"{len(burning)} burning", "bold yellow" if burning else ""), " · ",
            f"{sum(len(v) for v in healthy.values())} healthy",
            ("   [a-z] expand an SLO, 0 fold" if exp is not None and self.keys_hint else "",
             "dim"),
        )
        out = [head]
        room = height - 1
        # 1. Firing alerts: every one, folded per SLO and severity if they do not all fit.
        fire_lines = [self._firing(s) for s in firing]
        if len(fire_lines) > room:
            fire_lines = self._folded(firing)
        out += self._cut(fire_lines, room, "firing")
        room = height - len(out)
        # 2. Burning scopes, worst first.
        out += self._cut([self._burning(s) for s in burning], room, "burning")
        room = height - len(out)
        # 3. One line per SLO for its healthy scopes (lowest budget first), expanded ones
        #    followed by their scopes.
        order = sorted(healthy, key=lambda k: (_lowest(healthy[k]), k))
        summary: list[Text] = []
        for slo in order:
            summary.append(self._summary(slo, healthy[slo], keys.get(slo), firing + burning))
            if exp is not None and slo in exp.expanded:
                summary += [Text(f"    {_scope_text(s.scope)}  {_budget(s.budget)}  "
                                 f"{_tier_text(s)}", no_wrap=True, overflow="ellipsis")
                            for s in healthy[slo]]
        out += self._cut(summary, room, "lines")
        return out

    @staticmethod
    def _cut(lines: list[Text], room: int, what: str) -> list[Text]:
        if len(lines) <= room:
            return lines
        if room <= 0:
            return []
        more = len(lines) - (room - 1)
        return [*lines[:room - 1], Text(f"  … {more} more {what}", style="dim", no_wrap=True)]

    @staticmethod
    def _firing(s: ScopeNow) -> Text:
        # The cause right after the scope: on a narrow terminal the figures are cut first.
        return Text.assemble(
            (f"FIRING {s.severity or ''}".ljust(12), "bold white on red"), " ",
            (s.slo_id, "bold"), f" {{{_scope_text(s.scope)}}}  ",
            ("cause: " + s.cause, "red") if s.cause else ("cause: not known yet", "dim"),
            f"  {_budget(s.budget)}  {_tier_text(s)}",
            no_wrap=True, overflow="ellipsis",
        )

    @staticmethod
    def _folded(firing: Sequence[ScopeNow]) -> list[Text]:
        groups: dict[tuple[str, str], list[ScopeNow]] = {}
        for s in firing:
            groups.setdefault((s.slo_id, s.severity or ""), []).append(s)
        return [
            Text.assemble((f"FIRING {sev}".ljust(14), "bold white on red"), " ", (slo, "bold"),
                          f": {len(ss)} scopes ", ", ".join(_scope_text(s.scope) for s in ss),
                          no_wrap=True, overflow="ellipsis")
            for (slo, sev), ss in groups.items()
        ]

    @staticmethod
    def _burning(s: ScopeNow) -> Text:
        label = "PENDING" if s.alert == "pending" else "BURNING"
        return Text.assemble(
            (label.ljust(12), "bold black on yellow"), " ", (s.slo_id, "bold"),
            f" {{{_scope_text(s.scope)}}} {_budget(s.budget)}  {_tier_text(s)}",
            no_wrap=True, overflow="ellipsis",
        )

    @staticmethod
    def _summary(slo: str, healthy: Sequence[ScopeNow], key: str | None,
                 others: Sequence[ScopeNow]) -> Text:
        lowest = _lowest(healthy)
        elsewhere = sum(1 for s in others if s.slo_id == slo)
        n = len(healthy)
        return Text.assemble(
            (f"[{key}] " if key else "    ", "cyan"), (slo, "bold"),
            f": {n} scope{'s' if n != 1 else ''} healthy",
            f", lowest budget {lowest * 100:.1f} %" if lowest < 2.0 else ", no budget yet",
            (f" ({elsewhere} above)" if elsewhere else "", "dim"),
            no_wrap=True, overflow="ellipsis",
        )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = self.height or options.max_height
        yield from self.lines(height)


def _lowest(scopes: Sequence[ScopeNow]) -> float:
    """The lowest budget among ``scopes`` (2.0 when none has one, so it sorts last)."""
    return min((s.budget for s in scopes if s.budget is not None), default=2.0)


__all__ = ["SloExpander", "SloStatusView", "report_table"]
