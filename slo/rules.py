"""Prometheus recording and alerting rules from SLO specs, Sloth-compatible, for every SLI kind.

Every SLO gets ``slo:sli_error:ratio_rate<W>`` for the report windows 5m … 3d,
its alert windows and its period, the Sloth meta recordings
(``slo:objective:ratio`` … ``sloth_slo_info``) and one page and one ticket
alert, each an OR of its tiers' (short AND long) pairs in Sloth's
``max(...) without (sloth_window)`` shape.  ``by:`` labels become
``sum by (...)``, so every scope gets its own series and alerts.  Constants are
exact decimals (``0.001``, not ``0.0009999999999999432``).  How a window's error
ratio is computed depends on the SLI (:class:`RuleForm`):

* **rate** (Occurrences over a ratio or latency SLI): a ratio of ``rate()``
  over the window, the period an exact ratio of ``increase()`` (not Sloth's
  average of 5m ratios, SLO.md pitfall 1); the denominator is guarded with
  ``> 0`` so a scope without traffic has no series instead of a NaN
  (pitfall 3), and a ``bad`` counter that was never incremented counts as 0.
  gpuslo's windows count the same increases (:mod:`slo.sli`), so on the minute
  the two ratios are equal when good and total are scraped together.
* **minutes** (Occurrences over a gauge threshold or a mean of two counters):
  a group with ``interval: 1m`` records each minute's good and total events per
  scope (``slo:sli_good_events:increase1m``, ``slo:sli_total_events:increase1m``:
  GPU-minutes that met the threshold in every sample, via ``max_over_time`` or
  ``min_over_time`` over ``[1m]``; minutes whose mean met it), and each window
  is ``1 − Σgood ÷ Σtotal`` over them with ``sum_over_time``, as Pyrra does for
  bool-gauge SLIs.
* **slices** (Timeslices and RatioTimeslices over any SLI): a group with
  ``interval`` = the slice length records each slice's error
  (``slo:sli_slice_error:ratio<L>``: 1 or 0 for a slice below or at its
  ``timeSliceTarget``, or 1 − the slice's ratio), and each window is its
  ``avg_over_time``.  A counter's change over a slice is
  ``x − x offset L`` (each increase in exactly one slice, as gpuslo counts it),
  or ``increase(x[L])`` when the counter restarted inside the slice.

The minute and slice forms are close to gpuslo's evaluation but not equal to it
everywhere: Prometheus ends a group's minutes and slices where it evaluates the
group (a fixed phase within the interval), gpuslo on the clock's minute; gpuslo
also counts the slice still open.  Each alert of such an SLO says so, and by how
much, in its ``approximation`` annotation (:func:`approximation`);
:func:`window_query` gives the same windows with the recordings replaced by
subqueries aligned on the clock, which is what the agreement tests query.

:func:`promtool_tests` writes a ``promtool test rules`` file that shows each
alert not firing on healthy input and firing (or not) as the burn-rate math
says after a full outage, for every SLO.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import yaml

from gpuslo.slo import conventions as cv
from gpuslo.slo.spec import (
    FRAME_COLUMNS,
    BudgetingMethod,
    SelectorSpec,
    SliKind,
    SloSpec,
    ThresholdOp,
)
from gpuslo.slo.windows import REPORT_WINDOWS, BurnRateWindowSpec, Severity, format_decimal

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class RuleSkip:
    """An SLO that got no rules, and why."""

    slo_id: str
    reason: str


@dataclass(frozen=True)
class RulesReport:
    """Generated rule groups (plain dicts, ready for YAML) and the SLOs left out."""

    groups: tuple[dict[str, Any], ...]
    skipped: tuple[RuleSkip, ...]
    slo_ids: tuple[str, ...]


class RuleForm(StrEnum):
    """How the rules compute a window's error ratio (see the module docstring)."""

    RATE = "rate"
    MINUTES = "minutes"
    SLICES = "slices"


def rule_form(spec: SloSpec) -> RuleForm:
    """The form of ``spec``'s window rules."""
    if spec.budgeting is not BudgetingMethod.OCCURRENCES:
        return RuleForm.SLICES
    return RuleForm.RATE if spec.sli.kind is SliKind.RATIO else RuleForm.MINUTES


def skip_reason(spec: SloSpec) -> str | None:
    """Why ``spec`` cannot be expressed as rules, or None when it can.

    Every SLI kind and budgeting method the engine evaluates has a form; only a
    selector whose ``promql`` override is not a plain series selector cannot be
    shifted with ``offset`` for a slice.
    """
    if rule_form(spec) is RuleForm.RATE:
        return None
    for sel in spec.sli.selectors():
        if sel.promql_override is not None and not _PLAIN_SELECTOR.fullmatch(
                sel.promql_override.strip()):
            return (f"selector override {sel.promql_override!r} is not a plain series "
                    "selector, so its change over a slice has no PromQL form")
    return None


_PLAIN_SELECTOR = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^{}]*\})?')


# --- what a replay reads from a Prometheus ------------------------------------------------

def _promql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _series_selector(metric: str, sel: SelectorSpec | None) -> str:
    """A PromQL selector of ``metric`` with ``sel``'s matchers on real labels only."""
    if metric.endswith("_total"):  # a counter may be stored without _total (dcgm-exporter)
        parts = [f'__name__=~"{metric}|{metric.removesuffix("_total")}"']
    else:
        parts = [f'__name__="{_promql_string(metric)}"']
    if sel is not None:
        parts += [m.promql() for m in sel.matchers if m.label not in FRAME_COLUMNS]
        if sel.le is not None:
            bound = SelectorSpec(metric, (), sel.le).promql()  # the rules' le regex
            parts.append(bound[bound.index("{") + 1:-1])
    return "{" + ",".join(parts) + "}"


def series_selectors(specs: Sequence[SloSpec]) -> list[str]:
    """PromQL selectors of exactly the series ``specs`` read (sorted, without duplicates).

    What a replay from a Prometheus fetches (``collectors.prometheus_api``): each
    selector's metric and its matchers on real labels (``node``, ``source`` and
    ``entity`` are columns gpuslo infers, applied after reading), the bucket bound
    as the rules' ``le`` regex, and for a counter ending in ``_total`` the name
    without it too (dcgm-exporter's counters are stored so).  A selector with a
    ``promql`` override that is a plain series selector is used as written.  A
    series selected narrowly and by its bare metric is fetched once.
    """
    out: set[str] = set()
    for spec in specs:
        for sel in spec.sli.selectors():
            for metric, matchers in ((sel.metric, sel), (sel.per, sel)):
                if metric is None:
                    continue
                if metric == sel.metric and sel.promql_override is not None and \
                        re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^{}]*\})?",
                                     sel.promql_override.strip()):
                    out.add(sel.promql_override.strip())
                else:
                    out.add(_series_selector(metric, matchers if metric == sel.metric else
                                      SelectorSpec(metric, sel.matchers)))
    # A series selected by a narrower selector and by its bare metric is fetched once.
    bare = {s for s in out if s.count(",") == 0}
    names = {s[:-1] + "," for s in bare}
    return sorted(s for s in out if s in bare or not any(s.startswith(n) for n in names))


def _by(spec: SloSpec) -> str:
    return f"sum by ({', '.join(spec.sli.by)})" if spec.sli.by else "sum"


def _count(spec: SloSpec) -> str:
    return f"count by ({', '.join(spec.sli.by)})" if spec.sli.by else "count"


def _agg(spec: SloSpec, fn: str, sel: SelectorSpec, window: str) -> str:
    return f"{_by(spec)} ({fn}({sel.promql()}[{window}]))"


def error_ratio_expr(spec: SloSpec, window: timedelta, fn: str = "rate") -> str:
    """PromQL error ratio of a rate-form ``spec`` over ``window`` (``rate`` or ``increase``)."""
    w = cv.duration_label(window)
    sli = spec.sli
    assert sli.total is not None
    total = _agg(spec, fn, sli.total, w)
    if sli.bad is not None:
        bad = f"({_agg(spec, fn, sli.bad, w)} or 0 * {total})"
    else:
        assert sli.good is not None
        bad = f"({total} - {_agg(spec, fn, sli.good, w)})"
    return f"{bad}\n/\n({total} > 0)\n"


# --- per-minute and per-slice events ---------------------------------------------------------

def counter_change(sel: SelectorSpec, length: timedelta) -> str:
    """A counter's change over the ``length`` before the evaluation, per series.

    ``x − x offset L`` puts every increase in exactly one slice (the one its later
    sample falls in, as gpuslo does); after a restart it goes negative, and
    ``increase(x[L])`` (reset-aware, extrapolated) stands in.
    """
    s = sel.promql()
    w = cv.duration_label(length)
    return f"(({s} - {s} offset {w}) >= 0 or increase({s}[{w}]))"


_GAUGE_FN: dict[ThresholdOp, tuple[str, str]] = {
    # A GPU-minute is good when every sample meets the threshold: the worst one does.
    ThresholdOp.LT: ("max_over_time", "<"),
    ThresholdOp.LTE: ("max_over_time", "<="),
    ThresholdOp.GT: ("min_over_time", ">"),
    ThresholdOp.GTE: ("min_over_time", ">="),
}
_OP: dict[ThresholdOp, str] = {ThresholdOp.LT: "<", ThresholdOp.LTE: "<=",
                               ThresholdOp.GT: ">", ThresholdOp.GTE: ">="}


def _number(value: float) -> str:
    return format_decimal(Decimal(repr(float(value))))


def minute_events_exprs(spec: SloSpec) -> tuple[str, str]:
    """(good, total) events of one minute per scope, for gauge and mean-of-counters SLIs.

    Gauge: GPU-minutes (series-minutes) with data, and those whose every sample met
    the threshold.  Mean of two counters: 1 when the scope had events in the
    minute, good when their mean met the threshold.
    """
    sli = spec.sli
    assert sli.kind is SliKind.THRESHOLD and sli.gauge is not None
    assert sli.op is not None and sli.value is not None
    value = _number(sli.value)
    if sli.gauge.per:
        per = SelectorSpec(sli.gauge.per, sli.gauge.matchers)
        num = f"{_by(spec)} ({counter_change(sli.gauge, MINUTE)})"
        den = f"{_by(spec)} ({counter_change(per, MINUTE)})"
        good = f"({num} / ({den} > 0) {_OP[sli.op]} bool {value})"
        total = f"({den} > bool 0)"
        return good, total
    fn, op = _GAUGE_FN[sli.op]
    worst = f"{fn}({sli.gauge.promql()}[1m])"
    return f"{_by(spec)} ({worst} {op} bool {value})", f"{_count(spec)} ({worst})"


def slice_events_exprs(spec: SloSpec) -> tuple[str, str]:
    """(good, total) events of one slice (``spec.time_slice`` long) per scope."""
    sli = spec.sli
    length = spec.time_slice
    if sli.kind is SliKind.RATIO:
        assert sli.total is not None
        total = f"{_by(spec)} ({counter_change(sli.total, length)})"
        if sli.good is not None:
            return f"{_by(spec)} ({counter_change(sli.good, length)})", total
        assert sli.bad is not None
        bad = f"{_by(spec)} ({counter_change(sli.bad, length)})"
        return f"({total} - ({bad} or 0 * {total}))", total
    good, total = minute_events_exprs(spec)
    if length == MINUTE:
        return good, total
    w = cv.duration_label(length)
    return f"sum_over_time({good}[{w}:1m])", f"sum_over_time({total}[{w}:1m])"


def slice_error_expr(spec: SloSpec) -> str:
    """One slice's error: 1 or 0 (Timeslices), 1 − its ratio (RatioTimeslices)."""
    good, total = slice_events_exprs(spec)
    ratio = f"clamp({good} / ({total} > 0), 0, 1)"
    if spec.budgeting is BudgetingMethod.TIMESLICES:
        target = spec.time_slice_target if spec.time_slice_target is not None else 1.0
        return f"{ratio} < bool {_number(target)}"
    return f"1 - {ratio}"


def _sel(spec: SloSpec) -> str:
    return (
        "{"
        + ", ".join(f'{k}="{v}"' for k, v in (
            (cv.LABEL_ID, spec.id), (cv.LABEL_SERVICE, spec.service), (cv.LABEL_SLO, spec.name)))
        + "}"
    )


def window_expr(spec: SloSpec, window: timedelta) -> str:
    """The expression recorded as ``slo:sli_error:ratio_rate<W>`` for ``spec``."""
    form = rule_form(spec)
    if form is RuleForm.RATE:
        return error_ratio_expr(spec, window, "increase" if window == spec.period else "rate")
    w = cv.duration_label(window)
    if form is RuleForm.MINUTES:
        good = f"sum_over_time({cv.GOOD_EVENTS_PER_MINUTE}{_sel(spec)}[{w}])"
        total = f"sum_over_time({cv.TOTAL_EVENTS_PER_MINUTE}{_sel(spec)}[{w}])"
        return f"1 - {good}\n/\n({total} > 0)\n"
    return f"avg_over_time({cv.slice_error_ratio(spec.time_slice)}{_sel(spec)}[{w}])\n"


def window_query(spec: SloSpec, window: timedelta) -> str:
    """:func:`window_expr` over raw series only: recordings become subqueries.

    Subquery steps are aligned on the clock, so this is what the recording rules
    store when Prometheus evaluates their group on the minute (or slice) boundary;
    it is what the agreement tests query over backfilled data, where recording
    rules never ran.  The subquery range is one millisecond short of ``W``:
    Prometheus 2 ranges include their first instant, and an aligned subquery
    would then hold one slice more than ``W`` does (Prometheus 3 ranges are
    left-open, and timestamps are whole milliseconds, so both versions see the
    ``W / L`` slices of ``(t − W, t]``).
    """
    form = rule_form(spec)
    if form is RuleForm.RATE:
        return window_expr(spec, window)
    w = _compound_duration(window - timedelta(milliseconds=1))
    if form is RuleForm.MINUTES:
        good, total = minute_events_exprs(spec)
        return (f"1 - sum_over_time(({good})[{w}:1m])\n/\n"
                f"(sum_over_time(({total})[{w}:1m]) > 0)\n")
    step = cv.duration_label(spec.time_slice)
    return f"avg_over_time(({slice_error_expr(spec)})[{w}:{step}])\n"


def _compound_duration(d: timedelta) -> str:
    """``4m59s999ms``: a PromQL duration of whole milliseconds."""
    ms = int(d / timedelta(milliseconds=1))
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                       ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts) or "0s"


def approximation(spec: SloSpec) -> str | None:
    """How far the rules of ``spec`` can be from gpuslo's evaluation, or None when equal.

    Rate form: equal on the minute (both count the increases between samples in
    the window; the extrapolation of ``rate()`` cancels between good and total
    scraped together).  Minute and slice forms: see the text.
    """
    notes: list[str] = []
    form = rule_form(spec)
    group = cv.sli_slices_group(spec.id)
    if form is RuleForm.MINUTES:
        notes.append(
            f"Minutes end where Prometheus evaluates group {group} (every 1m), gpuslo's on "
            "the clock minute, and gpuslo also counts the minute in progress: a window's "
            "good and total events can differ by one minute's at each end.")
    elif form is RuleForm.SLICES:
        length = cv.duration_label(spec.time_slice)
        notes.append(
            f"Slices end where Prometheus evaluates group {group} (every {length}), gpuslo's "
            f"on multiples of {length} of the clock, and gpuslo also counts the slice in "
            "progress: a window can differ by one slice at each end. A counter restart "
            f"inside a slice is counted by increase() over the {length} (extrapolated, "
            "without the interval across the restart).")
    tw = spec.time_window
    if not tw.rolling:
        unit = tw.calendar_unit or "period"
        notes.append(
            f"The period is a rolling {cv.duration_label(spec.period)} here; gpuslo restarts "
            f"it every calendar {unit} ({tw.timezone}).")
    return " ".join(notes) if notes else None


def _meta_labels(spec: SloSpec) -> dict[str, str]:
    return {
        **{cv.prometheus_label_name(k): v for k, v in spec.labels.items()},
        cv.LABEL_ID: spec.id,
        cv.LABEL_SERVICE: spec.service,
        cv.LABEL_SLO: spec.name,
    }


def _selector(spec: SloSpec) -> str:
    return _sel(spec)


def _tier_expr(spec: SloSpec, tier: BurnRateWindowSpec) -> str:
    threshold = f"({format_decimal(tier.factor)} * {format_decimal(spec.error_budget)})"
    sel = _selector(spec)
    without = f"without ({cv.LABEL_WINDOW})"
    return (
        "(\n"
        f"    max({cv.sli_error_ratio(tier.short)}{sel} > {threshold}) {without}\n"
        "    and\n"
        f"    max({cv.sli_error_ratio(tier.long)}{sel} > {threshold}) {without}\n"
        ")"
    )


def _annotations(spec: SloSpec, severity: Severity) -> dict[str, str]:
    who = f"{{{{$labels.{cv.LABEL_SERVICE}}}}} {{{{$labels.{cv.LABEL_SLO}}}}}"
    out = {
        "summary": f"{who} SLO error budget burn rate is over expected.",
        "title": f"({severity.value}) {who} SLO error budget burn rate is too fast.",
    }
    note = approximation(spec)
    if note is not None:
        out[cv.RULE_ANNOTATION_APPROXIMATION] = note
    return out


def rule_windows(spec: SloSpec) -> list[timedelta]:
    """Every window that gets a ``ratio_rate`` recording, shortest first (the period last)."""
    return sorted(set(REPORT_WINDOWS) | {w for t in spec.windows for w in (t.short, t.long)}
                  | {spec.period})


def _slice_group(spec: SloSpec) -> dict[str, Any] | None:
    form = rule_form(spec)
    meta = _meta_labels(spec)
    if form is RuleForm.MINUTES:
        good, total = minute_events_exprs(spec)
        return {"name": cv.sli_slices_group(spec.id), "interval": "1m", "rules": [
            {"record": cv.GOOD_EVENTS_PER_MINUTE, "expr": good + "\n", "labels": meta},
            {"record": cv.TOTAL_EVENTS_PER_MINUTE, "expr": total + "\n", "labels": meta},
        ]}
    if form is RuleForm.SLICES:
        return {"name": cv.sli_slices_group(spec.id),
                "interval": cv.duration_label(spec.time_slice), "rules": [
                    {"record": cv.slice_error_ratio(spec.time_slice),
                     "expr": slice_error_expr(spec) + "\n", "labels": meta}]}
    return None


def slo_rule_groups(spec: SloSpec) -> list[dict[str, Any]]:
    """The rule groups of one SLO (assumes :func:`skip_reason` is None)."""
    meta = _meta_labels(spec)
    sli_rules: list[dict[str, Any]] = [
        {
            "record": cv.sli_error_ratio(w),
            "expr": window_expr(spec, w),
            "labels": {**meta, cv.LABEL_WINDOW: cv.duration_label(w)},
        }
        for w in rule_windows(spec)
    ]
    sel = _selector(spec)
    on = f"on({', '.join(cv.META_LABELS)}) group_left"
    eps = format_decimal(spec.error_budget)
    days = format_decimal(Decimal(int(spec.period.total_seconds())) / Decimal(86400))
    meta_rules: list[dict[str, Any]] = [
        {"record": cv.OBJECTIVE_RATIO, "expr": f"vector({format_decimal(spec.target)})",
         "labels": meta},
        {"record": cv.ERROR_BUDGET_RATIO, "expr": f"vector({eps})", "labels": meta},
        {"record": cv.TIME_PERIOD_DAYS, "expr": f"vector({days})", "labels": meta},
        {
            "record": cv.CURRENT_BURN_RATE_RATIO,
            "expr": f"{cv.sli_error_ratio(timedelta(minutes=5))}{sel}\n"
                    f"/ {on}\n{cv.ERROR_BUDGET_RATIO}{sel}\n",
            "labels": meta,
        },
        {
            "record": cv.PERIOD_BURN_RATE_RATIO,
            "expr": f"{cv.sli_error_ratio(spec.period)}{sel}\n"
                    f"/ {on}\n{cv.ERROR_BUDGET_RATIO}{sel}\n",
            "labels": meta,
        },
        {
            "record": cv.PERIOD_ERROR_BUDGET_REMAINING_RATIO,
            "expr": f"1 - {cv.PERIOD_BURN_RATE_RATIO}{sel}",
            "labels": meta,
        },
        {
            "record": cv.SLO_INFO,
            "expr": "vector(1)",
            "labels": {
                **meta,
                cv.LABEL_MODE: cv.GENERATOR_NAME,
                cv.LABEL_OBJECTIVE: format_decimal(spec.target * 100),
                cv.LABEL_SPEC: "openslo/v1",
                cv.LABEL_VERSION: cv.RULES_VERSION,
            },
        },
    ]
    alert_rules: list[dict[str, Any]] = []
    for sev in Severity:
        tiers = [t for t in spec.windows if t.severity is sev]
        if not tiers:
            continue
        rule: dict[str, Any] = {
            "alert": cv.alert_name(spec.id),
            "expr": "\n or \n".join(_tier_expr(spec, t) for t in tiers) + "\n",
        }
        after = min(t.alert_after for t in tiers)
        if after > timedelta(0):
            rule["for"] = cv.duration_label(after)
        rule["labels"] = {cv.LABEL_SEVERITY: sev.value, cv.ALERT_LABEL_SEVERITY: sev.value}
        rule["annotations"] = _annotations(spec, sev)
        alert_rules.append(rule)
    groups = [
        {"name": cv.sli_recording_group(spec.id), "rules": sli_rules},
        {"name": cv.meta_recording_group(spec.id), "rules": meta_rules},
        {"name": cv.alert_group(spec.id), "rules": alert_rules},
    ]
    slices = _slice_group(spec)
    return groups if slices is None else [slices, *groups]


def generate(specs: Sequence[SloSpec]) -> RulesReport:
    """Rule groups for every SLO (``skipped`` lists the rare selector without a form)."""
    groups: list[dict[str, Any]] = []
    skipped: list[RuleSkip] = []
    ids: list[str] = []
    for spec in specs:
        reason = skip_reason(spec)
        if reason is not None:
            skipped.append(RuleSkip(spec.id, reason))
            continue
        ids.append(spec.id)
        groups.extend(slo_rule_groups(spec))
    return RulesReport(tuple(groups), tuple(skipped), tuple(ids))


class _Dumper(yaml.SafeDumper):
    """Block-style YAML without anchors: rule files are read by people and diffed."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def _dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def render_rules_file(report: RulesReport) -> str:
    """A plain Prometheus rules file (``rule_files:``)."""
    return _dump({"groups": list(report.groups)})


def render_prometheus_rule(
    report: RulesReport, name: str, namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """The same groups as a prometheus-operator ``PrometheusRule`` resource."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    return _dump(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata,
            "spec": {"groups": list(report.groups)},
        }
    )


# ------------------------------------------------------------------------------------------
# promtool unit tests
# ------------------------------------------------------------------------------------------

_HEALTHY_MIN = 60
_RATE_PER_MIN = 60
_OUTAGE_MIN = 12 * 60
_EVAL_EVERY_MIN = 5


def _sample_labels(sel: SelectorSpec, scope: dict[str, str]) -> dict[str, str] | None:
    """Labels of a series that ``sel`` selects (None when we cannot construct one)."""
    out = dict(scope)
    for m in sel.matchers:
        if m.op == "=":
            value = m.value
        elif m.op == "!=":
            value = m.value + "-other"
        elif m.op == "=~":
            alts = m.value.split("|")
            if not all(re.fullmatch(r"[A-Za-z0-9_.:-]+", a) for a in alts):
                return None
            value = alts[0]
        else:
            value = "gpuslo-test"
            if re.fullmatch(m.value, value):
                return None
        if out.get(m.label, value) != value:
            return None
        out[m.label] = value
    if sel.le is not None:
        out["le"] = repr(float(sel.le))
    return out


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{metric}{{{body}}}", "values": values}


def _window_error(at_min: int, window: timedelta, outage_from: int) -> float:
    w = int(window.total_seconds() // 60)
    start = max(0, at_min - w)
    span = at_min - start
    bad = max(0, at_min - max(start, outage_from))
    return bad / span if span else 0.0


def _expected(spec: SloSpec, at_min: int, outage_from: int) -> dict[Severity, bool] | None:
    """Which severities fire at ``at_min``; None when a window is within 15 % of its threshold."""
    eps = float(spec.error_budget)
    out: dict[Severity, bool] = {}
    for sev in Severity:
        firing = False
        for t in (t for t in spec.windows if t.severity is sev):
            k = float(t.factor) * eps
            both = True
            for w in (t.short, t.long):
                e = _window_error(at_min, w, outage_from)
                if abs(e - k) < 0.15 * k:
                    return None
                both = both and e > k
            firing = firing or both
        out[sev] = firing
    return out


def _ratio_series(spec: SloSpec, scope: dict[str, str]) -> list[dict[str, str]] | str:
    """Counters of a ratio SLI: 1 event/s, all good for the first hour, then all bad."""
    sli = spec.sli
    assert sli.total is not None
    labels_total = _sample_labels(sli.total, scope)
    role = sli.bad if sli.bad is not None else sli.good
    assert role is not None
    labels_role = _sample_labels(role, scope)
    if labels_total is None or labels_role is None or sli.total.promql_override or \
            role.promql_override:
        return "cannot build input series for its matchers"
    total_n = _HEALTHY_MIN + _OUTAGE_MIN
    h, r, rest = _HEALTHY_MIN, _RATE_PER_MIN, total_n - _HEALTHY_MIN
    good_values = f"0+{r}x{h} {h * r}+0x{rest}"  # rising, then flat
    bad_values = f"0+0x{h} 0+{r}x{rest}"  # flat, then rising
    always = f"0+{r}x{total_n}"
    if role.metric != sli.total.metric:
        return [_series(sli.total.metric, labels_total, always),
                _series(role.metric, labels_role,
                        bad_values if sli.bad is not None else good_values)]
    # Good (or bad) events are a labelled subset of the total: two series sum to it.
    other = dict(labels_role)
    for m in role.matchers:
        other[m.label] = "gpuslo-other" if m.op in ("=", "=~") else m.value
    if "le" in other:
        return "bucket and total share a metric name"
    if sli.bad is not None:
        return [_series(role.metric, labels_role, bad_values),
                _series(role.metric, other, good_values)]
    return [_series(role.metric, labels_role, good_values),
            _series(role.metric, other, bad_values)]


def _good_and_bad(op: ThresholdOp, value: float) -> tuple[float, float]:
    """A value that meets ``op value`` and one that does not, half the threshold away."""
    d = abs(value) / 2 or 1.0
    if op is ThresholdOp.LTE:
        return (value if value == 0 else value - d), value + d
    if op is ThresholdOp.LT:
        return value - d, value + d
    if op is ThresholdOp.GTE:
        return (value if value == 0 else value + d), value - d
    return value + d, value - d


def _threshold_series(spec: SloSpec, scope: dict[str, str]) -> list[dict[str, str]] | str:
    """A gauge on the good side of its threshold for the first hour, then on the bad side;
    or two counters whose per-minute mean does the same."""
    sli = spec.sli
    assert sli.gauge is not None and sli.op is not None and sli.value is not None
    labels = _sample_labels(sli.gauge, scope)
    if labels is None or sli.gauge.promql_override:
        return "cannot build input series for its matchers"
    h, rest = _HEALTHY_MIN, _OUTAGE_MIN
    good, bad = _good_and_bad(sli.op, float(sli.value))
    if sli.gauge.per is None:
        # Sample i is the one at minute i: the first h + 1 samples are good.
        return [_series(sli.gauge.metric, labels,
                        f"{_number(good)}+0x{h} {_number(bad)}+0x{rest - 1}")]
    # Mean of two counters: 100 events a minute whose mean is good, then bad.
    per_min = 100
    return [_series(sli.gauge.per, labels, f"0+{per_min}x{h + rest}"),
            _series(sli.gauge.metric, labels,
                    f"0+{_number(good * per_min)}x{h} "
                    f"{_number(good * per_min * h + bad * per_min)}+{_number(bad * per_min)}"
                    f"x{rest - 1}")]


def promtool_tests(specs: Sequence[SloSpec], rule_file: str) -> tuple[str, list[RuleSkip]]:
    """A ``promtool test rules`` file: healthy input, then a full outage, per SLO.

    Ratio SLIs get 1 event/s per scope, all good for the first hour, then all
    bad; gauge thresholds a value on the good side of the threshold, then on
    the bad side; means of two counters 100 events a minute with a good, then a
    bad mean.  Alerts are checked five minutes before the outage (nothing fires)
    and at a few times during its 12 hours, against what the burn-rate math
    predicts; evaluation times where a window sits within 15 % of its threshold
    are not used, so ``rate()`` extrapolation or a slice boundary cannot flip a
    verdict.  promtool evaluates every group at the file's interval (5 minutes,
    which keeps the run short), so the one-minute groups record every fifth
    minute; with a step from healthy to outage that sample is within the same
    15 % margin.
    """
    tests: list[dict[str, Any]] = []
    skipped: list[RuleSkip] = []
    for spec in specs:
        if skip_reason(spec) is not None:
            continue
        scope = {b: f"test-{b}" for b in spec.sli.by}
        series = (_ratio_series(spec, scope) if spec.sli.kind is SliKind.RATIO
                  else _threshold_series(spec, scope))
        if isinstance(series, str):
            skipped.append(RuleSkip(spec.id, series))
            continue
        h = _HEALTHY_MIN
        alert_labels = {**_meta_labels(spec), **scope}
        evals: list[dict[str, Any]] = []
        for at in (h - 5, h + 10, h + 30, h + 60, h + 3 * 60, h + _OUTAGE_MIN):
            expected = _expected(spec, at, h)
            if expected is None:
                continue
            exp_alerts = [
                {
                    "exp_labels": {
                        **alert_labels,
                        cv.LABEL_SEVERITY: sev.value,
                        cv.ALERT_LABEL_SEVERITY: sev.value,
                    },
                    "exp_annotations": {
                        k: v.replace(f"{{{{$labels.{cv.LABEL_SERVICE}}}}}", spec.service)
                        .replace(f"{{{{$labels.{cv.LABEL_SLO}}}}}", spec.name)
                        for k, v in _annotations(spec, sev).items()
                    },
                }
                for sev in Severity
                if expected.get(sev)
            ]
            evals.append({"eval_time": f"{at}m", "alertname": cv.alert_name(spec.id),
                          "exp_alerts": exp_alerts})
        tests.append({"name": f"{spec.id}: healthy, then a full outage",
                      "interval": "1m", "input_series": series, "alert_rule_test": evals})
    # promtool evaluates groups in map order unless told: recordings first, then alerts,
    # so each evaluation sees the windows of the same instant.
    order = [g["name"] for spec in specs if skip_reason(spec) is None
             for g in slo_rule_groups(spec)]
    doc = {"rule_files": [rule_file], "evaluation_interval": f"{_EVAL_EVERY_MIN}m",
           "group_eval_order": order, "tests": tests}
    return _dump(doc), skipped
