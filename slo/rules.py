"""Prometheus recording and alerting rules from SLO specs, Sloth-compatible.

For every Occurrences SLO with a ratio or latency SLI (whose selectors have a
PromQL equivalent, generated from metric + matchers + ``le`` or given as
``promql``), three groups:

* ``slo:sli_error:ratio_rate<W>`` for 5m … 3d as a ratio of rates, and for the
  period as an **exact** ratio of ``increase`` (not Sloth's average of 5m
  ratios, SLO.md pitfall 1).  The denominator is guarded with ``> 0`` so a
  scope without traffic has no series instead of a NaN (pitfall 3), and a
  ``bad`` counter that was never incremented counts as 0.
* ``slo:objective:ratio``, ``slo:error_budget:ratio``, ``slo:time_period:days``,
  ``slo:current_burn_rate:ratio``, ``slo:period_burn_rate:ratio``,
  ``slo:period_error_budget_remaining:ratio`` and ``sloth_slo_info``.
* one page and one ticket alert, each an OR of its tiers' (short AND long)
  pairs, in Sloth's ``max(...) without (sloth_window)`` shape.

``by:`` labels become ``sum by (...)`` so every scope gets its own series and
alerts.  Constants are exact decimals (``0.001``, not ``0.0009999999999999432``).
Timeslices, RatioTimeslices and threshold SLIs have no faithful PromQL form
here; they are listed in :attr:`RulesReport.skipped` with the reason.

:func:`promtool_tests` writes a ``promtool test rules`` file that shows each
alert not firing on healthy traffic and firing (or not) as the burn-rate math
says after a full outage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import yaml

from gpuslo.slo import conventions as cv
from gpuslo.slo.spec import BudgetingMethod, SelectorSpec, SliKind, SloSpec
from gpuslo.slo.windows import REPORT_WINDOWS, BurnRateWindowSpec, Severity, format_decimal


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


def skip_reason(spec: SloSpec) -> str | None:
    """Why ``spec`` cannot be expressed as rules, or None when it can."""
    if spec.sli.kind is not SliKind.RATIO:
        return "threshold SLIs are evaluated per time slice by gpuslo only"
    if spec.budgeting is not BudgetingMethod.OCCURRENCES:
        return f"{spec.budgeting.value} has no exact PromQL form; gpuslo evaluates it"
    return None


def _by(spec: SloSpec) -> str:
    return f"sum by ({', '.join(spec.sli.by)})" if spec.sli.by else "sum"


def _agg(spec: SloSpec, fn: str, sel: SelectorSpec, window: str) -> str:
    return f"{_by(spec)} ({fn}({sel.promql()}[{window}]))"


def error_ratio_expr(spec: SloSpec, window: timedelta, fn: str = "rate") -> str:
    """PromQL error ratio of ``spec`` over ``window`` (``rate`` or ``increase``)."""
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


def _meta_labels(spec: SloSpec) -> dict[str, str]:
    return {
        **{cv.prometheus_label_name(k): v for k, v in spec.labels.items()},
        cv.LABEL_ID: spec.id,
        cv.LABEL_SERVICE: spec.service,
        cv.LABEL_SLO: spec.name,
    }


def _selector(spec: SloSpec) -> str:
    return (
        "{"
        + ", ".join(f'{k}="{v}"' for k, v in (
            (cv.LABEL_ID, spec.id), (cv.LABEL_SERVICE, spec.service), (cv.LABEL_SLO, spec.name)))
        + "}"
    )


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


def _annotations(severity: Severity) -> dict[str, str]:
    who = f"{{{{$labels.{cv.LABEL_SERVICE}}}}} {{{{$labels.{cv.LABEL_SLO}}}}}"
    return {
        "summary": f"{who} SLO error budget burn rate is over expected.",
        "title": f"({severity.value}) {who} SLO error budget burn rate is too fast.",
    }


def slo_rule_groups(spec: SloSpec) -> list[dict[str, Any]]:
    """The three rule groups of one SLO (assumes :func:`skip_reason` is None)."""
    meta = _meta_labels(spec)
    windows = sorted(set(REPORT_WINDOWS) | {w for t in spec.windows for w in (t.short, t.long)})
    sli_rules: list[dict[str, Any]] = [
        {
            "record": cv.sli_error_ratio(w),
            "expr": error_ratio_expr(spec, w),
            "labels": {**meta, cv.LABEL_WINDOW: cv.duration_label(w)},
        }
        for w in windows
        if w != spec.period
    ]
    sli_rules.append(
        {
            "record": cv.sli_error_ratio(spec.period),
            "expr": error_ratio_expr(spec, spec.period, "increase"),
            "labels": {**meta, cv.LABEL_WINDOW: cv.duration_label(spec.period)},
        }
    )
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
        rule["annotations"] = _annotations(sev)
        alert_rules.append(rule)
    return [
        {"name": cv.sli_recording_group(spec.id), "rules": sli_rules},
        {"name": cv.meta_recording_group(spec.id), "rules": meta_rules},
        {"name": cv.alert_group(spec.id), "rules": alert_rules},
    ]


def generate(specs: Sequence[SloSpec]) -> RulesReport:
    """Rule groups for every SLO that has a PromQL form; the others in ``skipped``."""
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


def promtool_tests(specs: Sequence[SloSpec], rule_file: str) -> tuple[str, list[RuleSkip]]:
    """A ``promtool test rules`` file: healthy traffic, then a full outage, per SLO.

    Input is 1 event/s per SLO scope, all good for the first hour, then all bad.
    Alerts are checked five minutes before the outage (nothing fires) and at a
    few times during its 12 hours, against what the burn-rate math predicts; evaluation
    times where a window sits within 15 % of its threshold are not used, so
    ``rate()`` extrapolation cannot flip a verdict.
    """
    tests: list[dict[str, Any]] = []
    skipped: list[RuleSkip] = []
    for spec in specs:
        if skip_reason(spec) is not None:
            continue
        sli = spec.sli
        assert sli.total is not None
        scope = {b: f"test-{b}" for b in sli.by}
        total_n = _HEALTHY_MIN + _OUTAGE_MIN
        series: list[dict[str, str]] = []
        labels_total = _sample_labels(sli.total, scope)
        role = sli.bad if sli.bad is not None else sli.good
        assert role is not None
        labels_role = _sample_labels(role, scope)
        if labels_total is None or labels_role is None or sli.total.promql_override or \
                role.promql_override:
            skipped.append(RuleSkip(spec.id, "cannot build input series for its matchers"))
            continue
        h, r, rest = _HEALTHY_MIN, _RATE_PER_MIN, total_n - _HEALTHY_MIN
        rising_then_flat = f"0+{r}x{h} {h * r}+0x{rest}"
        flat_then_rising = f"0+0x{h} 0+{r}x{rest}"
        always = f"0+{r}x{total_n}"
        good_values, bad_values = rising_then_flat, flat_then_rising
        if role.metric == sli.total.metric:
            # Good (or bad) events are a labelled subset of the total: two series sum to it.
            other = dict(labels_role)
            for m in role.matchers:
                other[m.label] = "gpuslo-other" if m.op in ("=", "=~") else m.value
            if "le" in other:
                skipped.append(RuleSkip(spec.id, "bucket and total share a metric name"))
                continue
            if sli.bad is not None:
                series += [_series(role.metric, labels_role, bad_values),
                           _series(role.metric, other, good_values)]
            else:
                series += [_series(role.metric, labels_role, good_values),
                           _series(role.metric, other, bad_values)]
        else:
            series.append(_series(sli.total.metric, labels_total, always))
            series.append(_series(role.metric, labels_role,
                                  bad_values if sli.bad is not None else good_values))
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
                        for k, v in _annotations(sev).items()
                    },
                }
                for sev in Severity
                if expected.get(sev)
            ]
            evals.append({"eval_time": f"{at}m", "alertname": cv.alert_name(spec.id),
                          "exp_alerts": exp_alerts})
        tests.append({"name": f"{spec.id}: healthy, then a full outage",
                      "interval": "1m", "input_series": series, "alert_rule_test": evals})
    doc = {"rule_files": [rule_file], "evaluation_interval": f"{_EVAL_EVERY_MIN}m",
           "tests": tests}
    return _dump(doc), skipped
