"""OpenSLO v1 parsing: the catalog loads, references resolve, every problem is listed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from slo_helpers import ratio_slo_yaml

from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import (
    BudgetingMethod,
    SliKind,
    SpecError,
    ThresholdOp,
    load_specs,
    parse_duration,
    parse_yaml,
)
from gpuslo.slo.windows import Severity

CATALOG = CATALOG_DIR


def test_the_default_catalog_loads_every_slo() -> None:
    specs = {s.id: s for s in load_specs([CATALOG])}
    assert set(specs) == {
        "gpu-availability", "kv-cache-hit-ratio", "ttft", "inter-token-latency",
        "request-success", "rdma-port-health", "storage-read-latency", "gpu-thermal-headroom",
    }
    ttft = specs["ttft"]
    assert ttft.sli.kind is SliKind.RATIO
    assert ttft.sli.good is not None and ttft.sli.good.le == 0.5
    assert ttft.sli.by == ("model_name",)
    assert ttft.min_events == 20
    assert specs["inter-token-latency"].budgeting is BudgetingMethod.RATIO_TIMESLICES
    assert specs["inter-token-latency"].time_slice == timedelta(minutes=5)
    rdma = specs["rdma-port-health"]
    assert (rdma.budgeting, rdma.time_slice_target) == (BudgetingMethod.TIMESLICES, 1.0)
    thermal = specs["gpu-thermal-headroom"].sli
    assert (thermal.kind, thermal.op, thermal.value) == (SliKind.THRESHOLD, ThresholdOp.LT, 85.0)
    storage = specs["storage-read-latency"].sli
    assert storage.gauge is not None and storage.gauge.per == "node_disk_reads_completed_total"
    assert specs["gpu-availability"].time_window.calendar_unit == "month"


def test_alert_policies_inline_and_referenced_replace_the_default_table() -> None:
    (kv,) = [s for s in load_specs([CATALOG]) if s.id == "kv-cache-hit-ratio"]
    tiers = {(t.severity, t.short, t.long, t.factor) for t in kv.windows}
    assert tiers == {
        (Severity.TICKET, timedelta(minutes=30), timedelta(hours=6), Decimal("2")),
        (Severity.TICKET, timedelta(hours=6), timedelta(days=3), Decimal("1.2")),
    }


def test_an_slo_without_policies_gets_the_sloth_30d_table() -> None:
    (spec,) = parse_yaml(ratio_slo_yaml())
    assert [(t.name, str(t.factor)) for t in spec.windows] == [
        ("page-5m-1h", "14.4"), ("page-30m-6h", "6"), ("ticket-2h-1d", "3"), ("ticket-6h-3d", "1"),
    ]
    assert spec.error_budget == Decimal("0.001")


def test_a_target_of_one_is_rejected_with_its_path() -> None:
    with pytest.raises(SpecError) as err:
        parse_yaml(ratio_slo_yaml(target=1))
    assert err.value.problems == ["spec[0].spec.objectives[0].target: must be < 1"]


def test_every_problem_in_every_document_is_listed_at_once() -> None:
    text = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: Bad_Name}
spec:
  service: svc
  indicatorRef: missing-sli
  timeWindow: [{duration: 30x, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99}]
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: two}
spec:
  service: svc
  indicator:
    metadata: {name: two-sli}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: Prometheus, spec: {query: up}}}
        total: {metricSource: {type: gpuslo, spec: {metric: t_total, colour: red}}}
  timeWindow: [{duration: 7d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives: [{targetPercent: 99.5}]
---
apiVersion: openslo/v2
kind: SLO
metadata: {name: three}
spec: {}
"""
    with pytest.raises(SpecError) as err:
        parse_yaml(text, source="slos.yaml")
    problems = err.value.problems
    assert "spec[0].metadata.name: must be an RFC 1123 label: at most 63 lowercase letters, " \
        "digits and '-', starting and ending with a letter or digit" in problems
    assert "spec[1].spec.indicator.spec.ratioMetric.good.metricSource.type: must be 'gpuslo' " \
        "(gpuslo evaluates its own selectors over the sample stream), got 'Prometheus'" in problems
    assert "spec[1].spec.indicator.spec.ratioMetric.total.metricSource.spec.colour: " \
        "unknown field" in problems
    assert "spec[1].spec.objectives[0].timeSliceWindow: required for Timeslices" in problems
    assert "spec[1].spec.objectives[0].timeSliceTarget: required for Timeslices" in problems
    assert any(p.startswith("spec[2].apiVersion:") for p in problems)
    assert str(err.value).startswith("slos.yaml: ")


def test_a_reference_to_a_missing_sli_and_a_bad_duration_are_both_reported() -> None:
    text = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: api}
spec:
  service: svc
  indicatorRef: nope
  timeWindow: [{duration: 30x, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99, op: gt}]
"""
    with pytest.raises(SpecError) as err:
        parse_yaml(text)
    assert err.value.problems == [
        "spec[0].spec.indicatorRef: no SLI named 'nope'",
        "spec[0].spec.timeWindow[0].duration: '30x' is not a duration like 5m, 1h, 28d or 1w",
    ]


def test_unreachable_alert_factors_are_rejected() -> None:
    # 90 %: 14.4 x 0.1 = 1.44 >= 1, the 5m&1h page could never fire (Workbook, "extreme goals").
    with pytest.raises(SpecError) as err:
        parse_yaml(ratio_slo_yaml(target=0.9))
    assert any("page-5m-1h: factor 14.4" in p and "can never fire" in p
               for p in err.value.problems)


def test_several_objectives_become_several_slos() -> None:
    text = ratio_slo_yaml(objective_extra="      displayName: Gold\n    - target: 0.99\n"
                          "      displayName: Silver tier")
    specs = parse_yaml(text)
    assert [(s.id, s.target) for s in specs] == [
        ("api-gold", Decimal("0.999")), ("api-silver-tier", Decimal("0.99"))
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", timedelta(seconds=30)), ("5m", timedelta(minutes=5)), ("1h", timedelta(hours=1)),
     ("28d", timedelta(days=28)), ("2w", timedelta(weeks=2))],
    ids=["seconds", "m means minutes", "hours", "days", "weeks"],
)
def test_durations_with_fixed_length_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["1M", "1Q", "0m", "5 minutes", "-1h"],
                         ids=["months", "quarters", "zero", "words", "negative"])
def test_durations_without_fixed_length_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_calendar_month_starts_on_the_first_in_its_time_zone() -> None:
    text = ratio_slo_yaml().replace(
        "timeWindow: [{duration: 30d, isRolling: true}]",
        "timeWindow: [{duration: 1M, isRolling: false, calendar: "
        "{startTime: '2024-01-01 00:00:00', timeZone: Europe/Paris}}]",
    )
    (spec,) = parse_yaml(text)
    tw = spec.time_window
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    # 1 March 00:00 in Paris (UTC+1) is 28 Feb 23:00 UTC; March is 31 days minus the DST hour.
    assert tw.period_start(now) == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    assert tw.period_length(now) == timedelta(days=31) - timedelta(hours=1)
    assert spec.period == timedelta(days=30)


def test_a_calendar_week_starts_on_the_anchor_weekday() -> None:
    text = ratio_slo_yaml().replace(
        "timeWindow: [{duration: 30d, isRolling: true}]",
        "timeWindow: [{duration: 1w, isRolling: false, calendar: "
        "{startTime: '2024-01-01 00:00:00', timeZone: UTC}}]",
    )
    (spec,) = parse_yaml(text)
    now = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)  # a Thursday; 2024-01-01 was a Monday
    assert spec.time_window.period_start(now) == datetime(2026, 3, 2, tzinfo=UTC)
    assert spec.time_window.period_length(now) == timedelta(days=7)


def test_a_threshold_slo_needs_op_and_value() -> None:
    text = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: temp}
spec:
  service: gpu
  indicator:
    metadata: {name: temp-sli}
    spec:
      thresholdMetric: {metricSource: {type: gpuslo, spec: {metric: DCGM_FI_DEV_GPU_TEMP}}}
  timeWindow: [{duration: 7d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99}]
"""
    with pytest.raises(SpecError) as err:
        parse_yaml(text)
    assert err.value.problems == [
        "spec[0].spec.objectives[0]: a thresholdMetric objective needs op and value"
    ]


def test_files_are_named_in_problems_when_several_are_loaded(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ratio_slo_yaml(name="a"))
    (tmp_path / "b.yaml").write_text(ratio_slo_yaml(name="b", target=1.5))
    with pytest.raises(SpecError) as err:
        load_specs([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert err.value.problems == [f"{tmp_path / 'b.yaml'}:spec[0].spec.objectives[0].target: "
                                  "must be < 1"]


def test_a_spec_file_that_is_not_utf8_is_a_spec_error(tmp_path: Path) -> None:
    # Fuzz finding: a UnicodeDecodeError escaped load_specs.
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"apiVersion: openslo/v1\nkind: \xc3(\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: not UTF-8 text: invalid continuation byte "
                                        r"at byte 29"):
        load_specs([path])
