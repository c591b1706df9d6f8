
"""The multi-window multi-burn-rate table, as data.

The SRE Workbook (ch. 5) pages when a long and a short window both burn the
error budget faster than a factor; Sloth writes that table as data and derives
each factor from the share of the budget the long window may consume:

    factor = budget share × period ÷ long window

so 2 % of a 30-day budget in 1 h is 14.4, and the same 2 % of a 28-day budget
is 13.44.  We keep the shares, not the factors, so every period gets the right
numbers; a per-SLO override (an OpenSLO ``AlertPolicy`` per tier) replaces the
whole table.  Factors are :class:`~decimal.Decimal` so generated rules carry
``14.4``, not ``14.399999999999999``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum

from gpuslo.slo import conventions

# Windows for which every SLO gets an error ratio, in the order reports list them.
REPORT_WINDOWS: tuple[timedelta, ...] = (
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=3),
)


class Severity(StrEnum):
    """Who is told: a human now (page) or a queue (ticket)."""

    PAGE = "page"
    TICKET = "ticket"


@dataclass(frozen=True)
class BurnRateWindowSpec:
    """One tier: alert when both windows burn faster than ``factor``.

    ``budget_percent`` is kept when the tier comes from the default table so
    the factor can be recomputed for another period; a tier given by an
    explicit threshold has ``budget_percent`` None.
    """

    severity: Severity
    short: timedelta
    long: timedelta
    factor: Decimal
    budget_percent: Decimal | None = None
    alert_after: timedelta = timedelta(0)

    @property
    def name(self) -> str:
        """``page-5m-1h``: stable tier key for labels and state."""
        return (
            f"{self.severity.value}-{conventions.duration_label(self.short)}"
            f"-{conventions.duration_label(self.long)}"
        )


@dataclass(frozen=True)
class DefaultTier:
    """A row of the default table: severity, windows, and the budget share it may burn."""

    severity: Severity
    short: timedelta
    long: timedelta
    budget_percent: Decimal


# Sloth's google-30d/28d table (budget shares 2/5/10/10); a superset of the
# Workbook's Table 5-8 (it adds the 2h & 1d ticket of the Workbook's §6 example).
DEFAULT_TIERS: tuple[DefaultTier, ...] = (
    DefaultTier(Severity.PAGE, timedelta(minutes=5), timedelta(hours=1), Decimal("2")),
    DefaultTier(Severity.PAGE, timedelta(minutes=30), timedelta(hours=6), Decimal("5")),
    DefaultTier(Severity.TICKET, timedelta(hours=2), timedelta(days=1), Decimal("10")),
    DefaultTier(Severity.TICKET, timedelta(hours=6), timedelta(days=3), Decimal("10")),
)


def _seconds(d: timedelta) -> Decimal:
    return Decimal(int(d.total_seconds()))


def factor(budget_percent: Decimal, period: timedelta, long_window: timedelta) -> Decimal:
    """Burn-rate factor that consumes ``budget_percent`` % of the budget in ``long_window``.

    Rounded to 12 decimal places so that emitted constants stay readable
    (``0.933333333333`` for 10 % of 28 days in 3 days) while every factor of
    the usual periods (14.4, 6, 3, 1, 13.44, 5.6, 2.8) stays exact.
    """
    if long_window <= timedelta(0) or period <= timedelta(0):
        raise ValueError("period and long window must be positive")
    raw = budget_percent / Decimal(100) * _seconds(period) / _seconds(long_window)
    return raw.quantize(Decimal("1e-12")).normalize()


def default_windows(period: timedelta) -> tuple[BurnRateWindowSpec, ...]:
    """The default table with factors for ``period`` (14.4/6/3/1 for 30 days)."""
    return tuple(
        BurnRateWindowSpec(
            severity=t.severity,
            short=t.short,
            long=t.long,
            factor=factor(t.budget_percent, period, t.long),
            budget_percent=t.budget_percent,
        )
        for t in DEFAULT_TIERS
    )


def budget_consumed_at_fire(window: BurnRateWindowSpec, period: timedelta) -> Decimal:
    """Share of the period's budget burnt when the long window first crosses its factor.

    Workbook: ``burn rate × alert window ÷ period``; 0.02 for the 1 h page of 30 days.
    """
    return window.factor * _seconds(window.long) / _seconds(period)


def format_decimal(d: Decimal) -> str:
    """Plain decimal text (no exponent) for rules: ``0.001``, ``14.4``, ``1``."""
    text = format(d.normalize(), "f")
    return text
