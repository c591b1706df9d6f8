
"""OpenSLO v1 specs: parse, validate, resolve references, compile for the engine.

Input is OpenSLO v1 (``apiVersion: openslo/v1``), kinds ``SLO``, ``SLI``,
``AlertPolicy`` and ``AlertCondition``, inline or referenced by name (kinds
``Service``, ``DataSource`` and ``AlertNotificationTarget`` are accepted and not
used).  Output is one frozen :class:`SloSpec` per SLO objective: everything the
streaming engine, the rule generator and the backtester need, already checked.

gpuslo extensions sit where OpenSLO v1 leaves room for vendor data:

* **Indicator selectors.**  Every ``metricSource`` has ``type: gpuslo`` and a
  free-form ``spec`` holding a gpuslo selector::

      metricSource:
        type: gpuslo
        spec:
          metric: vllm:time_to_first_token_seconds_bucket   # upstream name, as scraped
          matchers: {engine: "0"}                            # or a list of {label, op, value}
          le: 0.5                                            # bucket bound, numeric match
          by: [model_name]                                   # one SLO per value of these labels
          promql: 'vllm:time_to_first_token_seconds_bucket{le=~"0.5"}'  # optional, rules only

  Label names ``node``, ``source`` and ``entity`` name the sample frame's own
  columns; any other name is an upstream label.  ``op`` is one of ``=``,
  ``!=``, ``=~``, ``!~`` (regexes are anchored, as in PromQL).  ``le`` matches
  the bucket whose bound equals the number, however the exporter prints it
  (``1``, ``1.0``, ``1e0``), which sidesteps the Prometheus 3 ``le`` rewrite.

* **Mean of two counters.**  A ``thresholdMetric`` selector may add
  ``per: <counter>``: the gauge is then Δmetric ÷ Δper over each minute of the
  scope (``node_disk_read_time_seconds_total`` per
  ``node_disk_reads_completed_total`` is the mean read latency), and each
  scope-minute with events is one slice, good when the mean meets the
  threshold.

* **SLI kinds.**  ``ratioMetric`` with ``counter: true`` and ``good`` or
  ``bad`` plus ``total`` is a ratio of counter increases; a latency SLI is the
  same with ``good`` on a ``_bucket`` series (``le`` set) and ``total`` on its
  ``_count``.  ``thresholdMetric`` compares a gauge with the objective's
  ``op``/``value`` in every one-minute slice of every series.

* **Annotations** on the SLO: ``gpuslo.io/min-events`` (windows with fewer
  events are "too little traffic", default 1).  On an ``AlertCondition`` or
  its ``AlertPolicy``: ``gpuslo.io/short-window`` (default: the lookback
  window ÷ 12, the Workbook's guideline), because OpenSLO v1 has one lookback
  window per condition and multi-window alerting needs two.

Alerting: without ``alertPolicies`` an SLO gets the default multi-window
multi-burn-rate table (:mod:`slo.windows`); with them, each policy's one
``burnrate`` condition is one tier (``severity`` ``page`` or ``ticket``), and
together they replace the table.

Every problem in every document is reported at once, with its path
(``spec[0].spec.objectives[0].target: must be < 1``), in one :class:`SpecError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpuslo.pipeline.config import ConfigError, validation_problems
from gpuslo.slo import conventions
from gpuslo.slo.windows import BurnRateWindowSpec, Severity, default_windows

API_VERSION = "openslo/v1"
FRAME_COLUMNS: frozenset[str] = frozenset({"node", "source", "entity"})
_RFC1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^(\d+)([smhdwMQY])$")
_FIXED_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class SpecError(ConfigError):
    """SLO specs that cannot be used; ``problems`` holds one ``path: message`` line each.

    A kind of :class:`~pipeline.config.ConfigError`: both are bad input found at
    start-up, reported whole.
    """


# ------------------------------------------------------------------------------------------
# Raw OpenSLO v1 documents (what the YAML says)
# ------------------------------------------------------------------------------------------


class _Raw(BaseModel):
    # A typo in a spec must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RawMetadata(_Raw):
    name: str
    displayName: str | None = None
    labels: dict[str, str | list[str]] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _rfc1123(cls, v: str) -> str:
        if len(v) > 63 or not _RFC1123.match(v):
            raise ValueError(
                "must be an RFC 1123 label: at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        return v


class RawMatcher(_Raw):
    label: str
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str


class RawGpusloSelector(_Raw):
    metric: str = Field(min_length=1)
    matchers: dict[str, str] | list[RawMatcher] = Field(default_factory=list)
    by: list[str] = Field(default_factory=list)
    le: float | None = None
    per: str | None = Field(None, min_length=1)
    promql: str | None = None


class RawMetricSource(_Raw):
    metricSourceRef: str | None = None
    type: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)


class RawMetricHolder(_Raw):
    metricSource: RawMetricSource


class RawRatioMetric(_Raw):
    counter: bool
    good: RawMetricHolder | None = None
    bad: RawMetricHolder | None = None
    total: RawMetricHolder | None = None
    raw: RawMetricHolder | None = None
    rawType: Literal["success", "failure"] | None = None


class RawSliSpec(_Raw):
    description: str | None = Field(None, max_length=1050)
    thresholdMetric: RawMetricHolder | None = None
    ratioMetric: RawRatioMetric | None = None


class RawInlineSli(_Raw):
    metadata: RawMetadata
    spec: RawSliSpec


class RawCalendar(_Raw):
    startTime: str
    timeZone: str


class RawTimeWindow(_Raw):
    duration: str
    isRolling: bool = False
    calendar: RawCalendar | None = None


class RawObjective(_Raw):
    displayName: str | None = None
    op: Literal["lte", "gte", "lt", "gt"] | None = None
    value: float | None = None
    target: float | None = Field(None, ge=0, lt=1)
    targetPercent: float | None = Field(None, ge=0, lt=100)
    timeSliceTarget: float | None = Field(None, gt=0, le=1)
    timeSliceWindow: str | None = None
    indicator: dict[str, Any] | None = None
    indicatorRef: str | None = None
    compositeWeight: float | None = None


class RawCondition(_Raw):
    kind: Literal["burnrate"]
    op: Literal["lte", "gte", "lt", "gt"]
    threshold: float = Field(gt=0)
    lookbackWindow: str
    alertAfter: str = "0m"


class RawAlertConditionSpec(_Raw):
    description: str | None = None
    severity: str
    condition: RawCondition


class RawConditionEntry(_Raw):
    """Inline ``AlertCondition`` (kind/metadata/spec) or ``conditionRef``."""

    kind: Literal["AlertCondition"] | None = None
    metadata: RawMetadata | None = None
    spec: RawAlertConditionSpec | None = None
    conditionRef: str | None = None


class RawAlertPolicySpec(_Raw):
    description: str | None = None
    alertWhenNoData: bool = False
    alertWhenResolved: bool = True
    alertWhenBreaching: bool = True
    conditions: list[RawConditionEntry] = Field(min_length=1, max_length=1)
    notificationTargets: list[dict[str, Any]] = Field(default_factory=list)


class RawPolicyEntry(_Raw):
    """Inline ``AlertPolicy`` (kind/metadata/spec) or ``alertPolicyRef``."""

    kind: Literal["AlertPolicy"] | None = None
    metadata: RawMetadata | None = None
    spec: RawAlertPolicySpec | None = None
    alertPolicyRef: str | None = None


class RawSloSpec(_Raw):
    description: str | None = Field(None, max_length=1050)
    service: str = Field(min_length=1)
    indicator: RawInlineSli | None = None
    indicatorRef: str | None = None
    timeWindow: list[RawTimeWindow] = Field(min_length=1, max_length=1)
    budgetingMethod: Literal["Occurrences", "Timeslices", "RatioTimeslices"]
    objectives: list[RawObjective] = Field(min_length=1)
    alertPolicies: list[RawPolicyEntry] = Field(default_factory=list)


class _RawOther(_Raw):
    model_config = ConfigDict(extra="allow", frozen=True)


_SPEC_MODELS: dict[str, type[BaseModel]] = {
    "SLO": RawSloSpec,
    "SLI": RawSliSpec,
    "AlertPolicy": RawAlertPolicySpec,
    "AlertCondition": RawAlertConditionSpec,
    "Service": _RawOther,
    "DataSource": _RawOther,
    "AlertNotificationTarget": _RawOther,
}


class RawDocument(_Raw):
    apiVersion: Literal["openslo/v1"]
    kind: Literal[
        "SLO", "SLI", "AlertPolicy", "AlertCondition", "Service", "DataSource",
        "AlertNotificationTarget",
    ]
    metadata: RawMetadata
    spec: dict[str, Any]


# ------------------------------------------------------------------------------------------
# Compiled specs (what the engine uses)
# ------------------------------------------------------------------------------------------


class BudgetingMethod(StrEnum):
    """OpenSLO budgeting methods; see :mod:`slo.budget` for the exact arithmetic."""

    OCCURRENCES = "Occurrences"
    TIMESLICES = "Timeslices"
    RATIO_TIMESLICES = "RatioTimeslices"


class SliKind(StrEnum):
    """Ratio of counter increases (incl. histogram latency) or gauge threshold per minute."""

    RATIO = "ratio"
    THRESHOLD = "threshold"


class ThresholdOp(StrEnum):
    """Comparison that a good gauge value satisfies against the objective's ``value``."""

    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"


@dataclass(frozen=True)
class MatcherSpec:
    """One label matcher, PromQL semantics (regexes anchored at both ends)."""

    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def promql(self) -> str:
        """``label="value"`` with PromQL string escaping."""
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'


@dataclass(frozen=True)
class SelectorSpec:
    """Which samples feed one role (good, bad, total or the gauge) of an SLI."""

    metric: str
    matchers: tuple[MatcherSpec, ...] = ()
    le: float | None = None
    per: str | None = None
    promql_override: str | None = None

    def promql(self) -> str:
        """The PromQL series selector equivalent to this selector.

        ``le`` becomes a regex that accepts both ``1`` and ``1.0`` (the
        Prometheus 3 normalisation, Pyrra #1502).
        """
        if self.promql_override is not None:
            return self.promql_override
        parts = [m.promql() for m in self.matchers]
        if self.le is not None:
            parts.append(f'le=~"{_le_regex(self.le)}"')
        return self.metric + ("{" + ",".join(parts) + "}" if parts else "")


def _le_regex(le: float) -> str:
    if le == math.inf:
        return r"\\+Inf"
    if float(le).is_integer():
        return f"{int(le)}(\\\\.0)?"
    return re.escape(repr(float(le))).replace("\\", "\\\\")


@dataclass(frozen=True)
class SliSpec:
    """A compiled indicator.  Ratio: ``good`` or ``bad`` with ``total``.  Threshold: ``gauge``."""

    name: str
    kind: SliKind
    by: tuple[str, ...] = ()
    good: SelectorSpec | None = None
    bad: SelectorSpec | None = None
    total: SelectorSpec | None = None
    gauge: SelectorSpec | None = None
    op: ThresholdOp | None = None
    value: float | None = None

    def selectors(self) -> tuple[SelectorSpec, ...]:
        """The selectors this SLI has (good/bad, total, or the gauge)."""
        return tuple(s for s in (self.good, self.bad, self.total, self.gauge) if s is not None)


def input_metrics(specs: Iterable[SloSpec]) -> list[str]:
    """Every upstream metric the SLOs read (selector metrics and ``per`` counters), sorted."""
    return sorted({
        name
        for s in specs
        for sel in s.sli.selectors()
        for name in (sel.metric, sel.per)
        if name is not None
    })


@dataclass(frozen=True)
class TimeWindowSpec:
    """The SLO period: rolling (``duration``) or calendar-aligned (week or month)."""

    rolling: bool
    duration: timedelta
    calendar_unit: Literal["week", "month"] | None = None
    calendar_start: datetime | None = None
    timezone: str = "UTC"

    @property
    def nominal(self) -> timedelta:
        """Period used for burn-rate factors and rule windows (a month counts 30 days)."""
        return self.duration

    def period_start(self, now: datetime) -> datetime:
        """Start of the period that contains ``now`` (``now − duration`` when rolling)."""
        if self.rolling or self.calendar_start is None:
            return now - self.duration
        tz = ZoneInfo(self.timezone)
        anchor = self.calendar_start.replace(tzinfo=tz)
        local = now.astimezone(tz)
        if self.calendar_unit == "week":
            naive_anchor = anchor.replace(tzinfo=None)
            weeks = (local.replace(tzinfo=None) - naive_anchor) // timedelta(weeks=1)
            start = (naive_anchor + timedelta(weeks=weeks)).replace(tzinfo=tz)
        else:
            months = (local.year - anchor.year) * 12 + (local.month - anchor.month)
            if (local.day, local.time()) < (anchor.day, anchor.time()):
                months -= 1
            y, m = divmod(anchor.month - 1 + months, 12)
            start = anchor.replace(year=anchor.year + y, month=m + 1)
        return start.astimezone(UTC)

    def period_length(self, now: datetime) -> timedelta:
        """Length of the period containing ``now`` (a calendar month has its real length)."""
        if self.rolling or self.calendar_start is None:
            return self.duration
        start = self.period_start(now)
        # A probe inside the next period: a week (plus DST slack) or 32 days ahead.
        probe = start + (timedelta(days=7, hours=2) if self.calendar_unit == "week"
                         else timedelta(days=32))
        return self.period_start(probe) - start


@dataclass(frozen=True)
class SloSpec:
    """One SLO objective, resolved and validated: the engine's unit of work.

    An OpenSLO SLO with several objectives becomes several specs, with ids
    ``<name>-<objective>``; a single objective keeps the SLO's name as id.
    """

    id: str
    name: str
    service: str
    sli: SliSpec
    budgeting: BudgetingMethod
    target: Decimal
    time_window: TimeWindowSpec
    windows: tuple[BurnRateWindowSpec, ...]
    time_slice_target: float | None = None
    time_slice: timedelta = timedelta(minutes=1)
    min_events: int = 1
    alert_when_no_data: bool = False
    display_name: str | None = None
    description: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def error_budget(self) -> Decimal:
        """ε = 1 − target, exact."""
        return Decimal(1) - self.target

    @property
    def objective(self) -> float:
        """Target as a float, for the arithmetic in :mod:`slo.budget`."""
        return float(self.target)

    @property
    def period(self) -> timedelta:
        """Nominal period (rolling duration, 7 days for a week, 30 days for a month)."""
        return self.time_window.nominal


# ------------------------------------------------------------------------------------------
# Parsing helpers
# ------------------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """OpenSLO duration shorthand with fixed length: ``30s``, ``5m``, ``1h``, ``28d``, ``1w``.

    ``m`` is minutes (OpenSLO; months are ``M``).  Months, quarters and years
    have no fixed length and raise :class:`ValueError`.
    """
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a duration like 5m, 1h, 28d or 1w")
    n, unit = int(m.group(1)), m.group(2)
    if unit not in _FIXED_UNITS:
        raise ValueError(f"{text!r} has no fixed length (use m, h, d or w)")
    if n <= 0:
        raise ValueError(f"{text!r} must be positive")
    return timedelta(seconds=n * _FIXED_UNITS[unit])


def _validation_problems(prefix: str, exc: ValidationError) -> list[str]:
    return validation_problems(exc, prefix)


# ------------------------------------------------------------------------------------------
# Compilation
# ------------------------------------------------------------------------------------------


@dataclass
class _Doc:
    path: str
    kind: str
    metadata: RawMetadata
    spec: Any


class _Compiler:
    """Accumulates problems while resolving and compiling every document."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    # -- documents --------------------------------------------------------------------------

    def parse_docs(self, docs: Sequence[tuple[str, object]]) -> list[_Doc]:
        out: list[_Doc] = []
        for path, raw in docs:
            if not isinstance(raw, dict):
                self.fail(path, f"must be a mapping, got {type(raw).__name__}")
                continue
            try:
                envelope = RawDocument.model_validate(raw)
            except ValidationError as exc:
                self.problems.extend(_validation_problems(path, exc))
                continue
            model = _SPEC_MODELS[envelope.kind]
            try:
                spec = model.model_validate(envelope.spec)
            except ValidationError as exc:
                self.problems.extend(_validation_problems(f"{path}.spec", exc))
                continue
            out.append(_Doc(path, envelope.kind, envelope.metadata, spec))
        return out

    def index(self, docs: list[_Doc], kind: str) -> dict[str, _Doc]:
        seen: dict[str, _Doc] = {}
        for d in docs:
            if d.kind != kind:
                continue
            if d.metadata.name in seen:
                self.fail(
                    f"{d.path}.metadata.name",
                    f"duplicate {kind} name {d.metadata.name!r} "
                    f"(first at {seen[d.metadata.name].path})",
                )
                continue
            seen[d.metadata.name] = d
        return seen

    # -- selectors and SLIs -----------------------------------------------------------------

    def selector(self, path: str, holder: RawMetricHolder) -> tuple[SelectorSpec, list[str]] | None:
        src = holder.metricSource
        p = f"{path}.metricSource"
        if src.type != conventions.METRIC_SOURCE_TYPE:
            self.fail(
                f"{p}.type",
                f"must be {conventions.METRIC_SOURCE_TYPE!r} (gpuslo evaluates its own "
                f"selectors over the sample stream), got {src.type!r}",
            )
            return None
        try:
            sel = RawGpusloSelector.model_validate(src.spec)
        except ValidationError as exc:
            self.problems.extend(_validation_problems(f"{p}.spec", exc))
            return None
        ok = True
        matchers: list[MatcherSpec] = []
        raw_matchers = (
            [RawMatcher(label=k, value=v) for k, v in sel.matchers.items()]
            if isinstance(sel.matchers, dict)
            else sel.matchers
        )
        for i, m in enumerate(raw_matchers):
            if not _LABEL_NAME.match(m.label):
                self.fail(f"{p}.spec.matchers[{i}].label", f"{m.label!r} is not a label name")
                ok = False
            if m.label == "le":
                self.fail(f"{p}.spec.matchers[{i}].label", "use the numeric `le:` field")
                ok = False
            if m.op in ("=~", "!~"):
                try:
                    re.compile(m.value)
                except re.error as exc:
                    self.fail(f"{p}.spec.matchers[{i}].value", f"invalid regex: {exc}")
                    ok = False
            matchers.append(MatcherSpec(m.label, m.op, m.value))
        for i, b in enumerate(sel.by):
            if not _LABEL_NAME.match(b) or b == "le":
                self.fail(f"{p}.spec.by[{i}]", f"{b!r} is not a usable label name")
                ok = False
        if len(set(sel.by)) != len(sel.by):
            self.fail(f"{p}.spec.by", "labels must be unique")
            ok = False
        if sel.le is not None and (math.isnan(sel.le) or sel.le <= 0):
            self.fail(f"{p}.spec.le", "must be a bucket bound > 0")
            ok = False
        if not ok:
            return None
        spec = SelectorSpec(sel.metric, tuple(matchers), sel.le, sel.per, sel.promql)
        return spec, list(sel.by)

    def sli(self, path: str, name: str, raw: RawSliSpec) -> SliSpec | None:
        if (raw.thresholdMetric is None) == (raw.ratioMetric is None):
            self.fail(path, "exactly one of thresholdMetric and ratioMetric is required")
            return None
        if raw.thresholdMetric is not None:
            got = self.selector(f"{path}.thresholdMetric", raw.thresholdMetric)
            if got is None:
                return None
            sel, by = got
            if sel.le is not None:
                self.fail(f"{path}.thresholdMetric.metricSource.spec.le", "only for ratio SLIs")
                return None
            if sel.per is not None and sel.per == sel.metric:
                self.fail(f"{path}.thresholdMetric.metricSource.spec.per", "must name another "
                          "counter than metric")
                return None
            return SliSpec(name=name, kind=SliKind.THRESHOLD, by=tuple(by), gauge=sel)
        ratio = raw.ratioMetric
        assert ratio is not None
        p = f"{path}.ratioMetric"
        ok = True
        if not ratio.counter:
            self.fail(
                f"{p}.counter",
                "must be true: gpuslo computes ratios from counter increases; "
                "use thresholdMetric for gauges",
            )
            ok = False
        if ratio.raw is not None or ratio.rawType is not None:
            self.fail(f"{p}.raw", "precomputed raw ratios are not supported; give good/bad + total")
            ok = False
        if (ratio.good is None) == (ratio.bad is None):
            self.fail(p, "exactly one of good and bad is required")
            ok = False
        if ratio.total is None:
            self.fail(f"{p}.total", "required")
            ok = False
        if not ok:
            return None
        roles: dict[str, SelectorSpec] = {}
        bys: dict[str, list[str]] = {}
        for role in ("good", "bad", "total"):
            holder = getattr(ratio, role)
            if holder is None:
                continue
            got = self.selector(f"{p}.{role}", holder)
            if got is None:
                ok = False
                continue
            roles[role], bys[role] = got
        if not ok:
            return None
        for role, sel in roles.items():
            if sel.per is not None:
                self.fail(f"{p}.{role}.metricSource.spec.per", "only for thresholdMetric SLIs")
                return None
        if roles["total"].le is not None:
            self.fail(f"{p}.total.metricSource.spec.le", "total counts every event; remove `le`")
            return None
        specified = {r: tuple(b) for r, b in bys.items() if b}
        if len(set(specified.values())) > 1:
            self.fail(f"{p}", f"`by` labels differ between roles: {specified}")
            return None
        sli_by: tuple[str, ...] = next(iter(specified.values()), ())
        return SliSpec(
            name=name,
            kind=SliKind.RATIO,
            by=sli_by,
            good=roles.get("good"),
            bad=roles.get("bad"),
            total=roles["total"],
        )

    # -- time window ------------------------------------------------------------------------

    def time_window(self, path: str, raw: RawTimeWindow) -> TimeWindowSpec | None:
        if raw.isRolling:
            if raw.calendar is not None:
                self.fail(f"{path}.calendar", "a rolling window has no calendar")
                return None
            try:
                d = parse_duration(raw.duration)
            except ValueError as exc:
                self.fail(f"{path}.duration", str(exc))
                return None
            if d < timedelta(hours=1) or d % timedelta(minutes=1):
                self.fail(f"{path}.duration", "a period must be whole minutes and at least 1h")
                return None
            return TimeWindowSpec(rolling=True, duration=d)
        if raw.calendar is None:
            self.fail(f"{path}.calendar", "required when isRolling is false")
            return None
        unit: Literal["week", "month"]
        if raw.duration in ("1w", "7d"):
            unit, nominal = "week", timedelta(days=7)
        elif raw.duration == "1M":
            unit, nominal = "month", timedelta(days=30)
        else:
            self.fail(f"{path}.duration", "calendar windows are 1w (week) or 1M (month)")
            return None
        try:
            ZoneInfo(raw.calendar.timeZone)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(f"{path}.calendar.timeZone", f"unknown time zone {raw.calendar.timeZone!r}")
            return None
        try:
            start = datetime.fromisoformat(raw.calendar.startTime)
        except ValueError:
            self.fail(f"{path}.calendar.startTime", "must be like '2024-01-01 00:00:00'")
            return None
        if start.tzinfo is not None:
            self.fail(f"{path}.calendar.startTime", "give local time; the zone is timeZone")
            return None
        if unit == "month" and start.day > 28:
            self.fail(f"{path}.calendar.startTime", "a monthly period must start on day 1..28")
            return None
        return TimeWindowSpec(
            rolling=False,
            duration=nominal,
            calendar_unit=unit,
            calendar_start=start,
            timezone=raw.calendar.timeZone,
        )

    # -- alert policies ---------------------------------------------------------------------

    def tiers(
        self,
        path: str,
        entries: list[RawPolicyEntry],
        policies: dict[str, _Doc],
        conditions: dict[str, _Doc],
        period: timedelta,
    ) -> tuple[tuple[BurnRateWindowSpec, ...], bool] | None:
        if not entries:
            return default_windows(period), False
        out: list[BurnRateWindowSpec] = []
        no_data = False
        ok = True
        for i, entry in enumerate(entries):
            p = f"{path}[{i}]"
            inline = entry.spec is not None or entry.metadata is not None
            if inline == (entry.alertPolicyRef is not None):
                self.fail(p, "give either an inline AlertPolicy (kind, metadata, spec) or "
                          "alertPolicyRef")
                ok = False
                continue
            if entry.alertPolicyRef is not None:
                doc = policies.get(entry.alertPolicyRef)
                if doc is None:
                    self.fail(f"{p}.alertPolicyRef", f"no AlertPolicy named "
                              f"{entry.alertPolicyRef!r}")
                    ok = False
                    continue
                pmeta, pspec, ppath = doc.metadata, doc.spec, doc.path + ".spec"
            else:
                if entry.spec is None or entry.metadata is None or entry.kind is None:
                    self.fail(p, "an inline AlertPolicy needs kind, metadata and spec")
                    ok = False
                    continue
                pmeta, pspec, ppath = entry.metadata, entry.spec, f"{p}.spec"
            assert isinstance(pspec, RawAlertPolicySpec)
            no_data = no_data or pspec.alertWhenNoData
            centry = pspec.conditions[0]
            cp = f"{ppath}.conditions[0]"
            cinline = centry.spec is not None or centry.metadata is not None
            if cinline == (centry.conditionRef is not None):
                self.fail(cp, "give either an inline AlertCondition or conditionRef")
                ok = False
                continue
            if centry.conditionRef is not None:
                cdoc = conditions.get(centry.conditionRef)
                if cdoc is None:
                    self.fail(f"{cp}.conditionRef", f"no AlertCondition named "
                              f"{centry.conditionRef!r}")
                    ok = False
                    continue
                cmeta, cspec, cpath = cdoc.metadata, cdoc.spec, cdoc.path + ".spec"
            else:
                if centry.spec is None or centry.metadata is None:
                    self.fail(cp, "an inline AlertCondition needs kind, metadata and spec")
                    ok = False
                    continue
                cmeta, cspec, cpath = centry.metadata, centry.spec, f"{cp}.spec"
            assert isinstance(cspec, RawAlertConditionSpec)
            tier = self.tier(cpath, cspec, cmeta, pmeta, period)
            if tier is None:
                ok = False
                continue
            out.append(tier)
        if not ok:
            return None
        names = [t.name for t in out]
        for n in {n for n in names if names.count(n) > 1}:
            self.fail(path, f"two alert policies define the same tier {n}")
            ok = False
        return (tuple(out), no_data) if ok else None

    def tier(
        self,
        path: str,
        spec: RawAlertConditionSpec,
        cmeta: RawMetadata,
        pmeta: RawMetadata,
        period: timedelta,
    ) -> BurnRateWindowSpec | None:
        ok = True
        try:
            severity = Severity(spec.severity)
        except ValueError:
            self.fail(f"{path}.severity", "must be 'page' or 'ticket'")
            ok = False
        cond = spec.condition
        if cond.op not in ("gt", "gte"):
            self.fail(f"{path}.condition.op", "a burn-rate alert fires above its threshold: "
                      "use gt or gte")
            ok = False
        long = short = after = None
        try:
            long = parse_duration(cond.lookbackWindow)
        except ValueError as exc:
            self.fail(f"{path}.condition.lookbackWindow", str(exc))
            ok = False
        try:
            after = parse_duration(cond.alertAfter) if cond.alertAfter not in ("0m", "0s", "0") \
                else timedelta(0)
        except ValueError as exc:
            self.fail(f"{path}.condition.alertAfter", str(exc))
            ok = False
        short_text = cmeta.annotations.get(conventions.ANNOTATION_SHORT_WINDOW) or \
            pmeta.annotations.get(conventions.ANNOTATION_SHORT_WINDOW)
        if long is not None:
            if short_text is not None:
                try:
                    short = parse_duration(short_text)
                except ValueError as exc:
                    self.fail(f"{path}: annotation {conventions.ANNOTATION_SHORT_WINDOW}",
                              str(exc))
                    ok = False
            else:
                short = max(timedelta(minutes=1), (long / 12) // timedelta(minutes=1)
                            * timedelta(minutes=1))
            if long > period:
                self.fail(f"{path}.condition.lookbackWindow", "longer than the SLO period")
                ok = False
            if long % timedelta(minutes=1):
                self.fail(f"{path}.condition.lookbackWindow", "must be whole minutes")
                ok = False
            if short is not None and (short >= long or short % timedelta(minutes=1)):
                self.fail(f"{path}.condition", "the short window must be whole minutes and "
                          "shorter than lookbackWindow")
                ok = False
        if not ok or long is None or short is None or after is None:
            return None
        return BurnRateWindowSpec(
            severity=severity,
            short=short,
            long=long,
            factor=Decimal(repr(cond.threshold)).normalize(),
            alert_after=after,
        )

    # -- SLOs -------------------------------------------------------------------------------

    def slo(
        self,
        doc: _Doc,
        slis: dict[str, _Doc],
        policies: dict[str, _Doc],
        conditions: dict[str, _Doc],
    ) -> list[SloSpec]:
        spec: RawSloSpec = doc.spec
        base = f"{doc.path}.spec"
        n_problems = len(self.problems)
        sli: SliSpec | None = None
        if (spec.indicator is None) == (spec.indicatorRef is None):
            self.fail(base, "exactly one of indicator and indicatorRef is required")
        elif spec.indicator is not None:
            sli = self.sli(f"{base}.indicator.spec", spec.indicator.metadata.name,
                           spec.indicator.spec)
        else:
            assert spec.indicatorRef is not None
            sdoc = slis.get(spec.indicatorRef)
            if sdoc is None:
                self.fail(f"{base}.indicatorRef", f"no SLI named {spec.indicatorRef!r}")
            else:
                sli = self.sli(f"{sdoc.path}.spec", sdoc.metadata.name, sdoc.spec)
        tw = self.time_window(f"{base}.timeWindow[0]", spec.timeWindow[0])
        method = BudgetingMethod(spec.budgetingMethod)
        min_events = 1
        raw_min = doc.metadata.annotations.get(conventions.ANNOTATION_MIN_EVENTS)
        if raw_min is not None:
            try:
                min_events = int(raw_min)
                if min_events < 1:
                    raise ValueError
            except ValueError:
                self.fail(f"{doc.path}.metadata.annotations.{conventions.ANNOTATION_MIN_EVENTS}",
                          "must be an integer >= 1")
        tiers = None
        if tw is not None:
            tiers = self.tiers(f"{base}.alertPolicies", spec.alertPolicies, policies, conditions,
                               tw.nominal)
        if sli is not None and sli.kind is SliKind.THRESHOLD and len(spec.objectives) != 1:
            self.fail(f"{base}.objectives", "a thresholdMetric SLO has exactly one objective")
        compiled: list[tuple[int, RawObjective, Decimal, timedelta]] = []
        for i, obj in enumerate(spec.objectives):
            p = f"{base}.objectives[{i}]"
            got = self.objective(p, obj, sli, method)
            if got is not None:
                compiled.append((i, obj, got[0], got[1]))
        if len(self.problems) != n_problems or sli is None or tw is None or tiers is None:
            return []
        windows, no_data = tiers
        out: list[SloSpec] = []
        for i, obj, target, slice_w in compiled:
            eps = Decimal(1) - target
            for w in windows:
                if w.factor * eps >= 1:
                    self.fail(
                        f"{base}.objectives[{i}]",
                        f"alert tier {w.name}: factor {w.factor} × error budget {eps} >= 1, "
                        "so it can never fire; lower the factor or add alertPolicies",
                    )
            sid = doc.metadata.name
            if len(spec.objectives) > 1:
                suffix = _slug(obj.displayName) if obj.displayName else str(i)
                sid = f"{sid}-{suffix}"
            out.append(
                SloSpec(
                    id=sid,
                    name=doc.metadata.name,
                    service=spec.service,
                    sli=_with_threshold(sli, obj),
                    budgeting=method,
                    target=target,
                    time_window=tw,
                    windows=windows,
                    time_slice_target=obj.timeSliceTarget,
                    time_slice=slice_w,
                    min_events=min_events,
                    alert_when_no_data=no_data,
                    display_name=doc.metadata.displayName,
                    description=spec.description,
                    labels={k: v if isinstance(v, str) else ",".join(v)
                            for k, v in doc.metadata.labels.items()},
                    annotations=dict(doc.metadata.annotations),
                )
            )
        ids = [s.id for s in out]
        if len(set(ids)) != len(ids):
            self.fail(f"{base}.objectives", "objective displayNames must be unique")
        return out if len(self.problems) == n_problems else []

    def objective(
        self, p: str, obj: RawObjective, sli: SliSpec | None, method: BudgetingMethod
    ) -> tuple[Decimal, timedelta] | None:
        ok = True
        if (obj.target is None) == (obj.targetPercent is None):
            self.fail(p, "exactly one of target and targetPercent is required")
            ok = False
        if obj.indicator is not None or obj.indicatorRef is not None or \
                obj.compositeWeight is not None:
            self.fail(p, "composite SLOs (per-objective indicators) are not supported")
            ok = False
        if sli is not None:
            if sli.kind is SliKind.THRESHOLD and (obj.op is None or obj.value is None):
                self.fail(p, "a thresholdMetric objective needs op and value")
                ok = False
            if sli.kind is SliKind.RATIO and (obj.op is not None or obj.value is not None):
                self.fail(p, "op and value apply to thresholdMetric SLIs only")
                ok = False
        slice_w = timedelta(minutes=1)
        if method is BudgetingMethod.OCCURRENCES:
            if obj.timeSliceTarget is not None or obj.timeSliceWindow is not None:
                self.fail(p, "timeSliceTarget/timeSliceWindow apply to Timeslices and "
                          "RatioTimeslices only")
                ok = False
        else:
            if obj.timeSliceWindow is None:
                self.fail(f"{p}.timeSliceWindow", f"required for {method.value}")
                ok = False
            else:
                try:
                    slice_w = parse_duration(obj.timeSliceWindow)
                    if slice_w % timedelta(minutes=1) or timedelta(hours=1) % slice_w:
                        raise ValueError("must be whole minutes that divide 1h (1m, 5m, 15m...)")
                except ValueError as exc:
                    self.fail(f"{p}.timeSliceWindow", str(exc))
                    ok = False
            if method is BudgetingMethod.TIMESLICES and obj.timeSliceTarget is None:
                self.fail(f"{p}.timeSliceTarget", "required for Timeslices")
                ok = False
            if method is BudgetingMethod.RATIO_TIMESLICES and obj.timeSliceTarget is not None:
                self.fail(f"{p}.timeSliceTarget", "RatioTimeslices averages slice ratios; "
                          "it has no slice target")
                ok = False
        if not ok:
            return None
        target = (
            Decimal(repr(obj.target)) if obj.target is not None
            else Decimal(repr(obj.targetPercent)) / Decimal(100)
        ).normalize()
        if target <= 0:
            self.fail(f"{p}.target", "must be > 0")
            return None
        return target, slice_w


def _with_threshold(sli: SliSpec, obj: RawObjective) -> SliSpec:
    if sli.kind is not SliKind.THRESHOLD:
        return sli
    assert obj.op is not None and obj.value is not None
    return SliSpec(
        name=sli.name, kind=sli.kind, by=sli.by, gauge=sli.gauge,
        op=ThresholdOp(obj.op), value=obj.value,
    )


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "objective"


def compile_documents(docs: Sequence[tuple[str, object]], source: str = "<specs>") -> list[SloSpec]:
    """Validate and compile already-loaded YAML documents, given as ``(path, document)``.

    Raises:
        SpecError: with every problem found, each prefixed by its path.
    """
    c = _Compiler()
    parsed = c.parse_docs(docs)
    slis = c.index(parsed, "SLI")
    policies = c.index(parsed, "AlertPolicy")
    conditions = c.index(parsed, "AlertCondition")
    c.index(parsed, "SLO")
    out: list[SloSpec] = []
    for d in parsed:
        if d.kind == "SLO":
            out.extend(c.slo(d, slis, policies, conditions))
    ids = [s.id for s in out]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        c.fail(source, f"two SLOs compile to the same id {dup!r}")
    if c.problems:
        raise SpecError(source, c.problems)
    return out


def _yaml_documents(text: str, source: str, prefix: str) -> list[tuple[str, object]]:
    try:
        loaded = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from exc
    return [(f"{prefix}spec[{i}]", d) for i, d in enumerate(loaded)]


def parse_yaml(text: str, source: str = "<string>") -> list[SloSpec]:
    """Every SLO objective in a (multi-document) YAML string."""
    return compile_documents(_yaml_documents(text, source, ""), source)


def load_specs(paths: Iterable[str | Path]) -> list[SloSpec]:
    """Load SLO specs from files and directories (``*.yaml``/``*.yml``), resolving refs across them.

    Problem paths name the file when more than one is read:
    ``slos/ttft.yaml:spec[0].spec.objectives[0].target: must be < 1``.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(q for q in path.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    docs: list[tuple[str, object]] = []
    problems: list[str] = []
    for f in files:
        prefix = f"{f}:" if len(files) > 1 else ""
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{f}: cannot read file: {exc.strerror or exc}")
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{f}: not UTF-8 text: {exc.reason} at byte {exc.start}")
            continue
        try:
            docs.extend(_yaml_documents(text, str(f), prefix))
        except SpecError as exc:
            problems.extend(f"{f}: {p}" for p in exc.problems)
    source = str(files[0]) if len(files) == 1 else f"{len(files)} spec files"
    if problems:
        raise SpecError(source, problems)
    return compile_documents(docs, source)
