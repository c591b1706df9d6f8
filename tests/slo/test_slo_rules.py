"""Prometheus rules from specs: golden files, promtool check/test, engine agreement."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from slo_helpers import samples

from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.budget import Stage2State
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.rules import (
    RuleForm,
    error_ratio_expr,
    generate,
    promtool_tests,
    render_prometheus_rule,
    render_rules_file,
    rule_form,
)
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec, load_specs, parse_yaml

HERE = Path(__file__).resolve().parent
CATALOG = CATALOG_DIR
GOLDEN = HERE / "golden"
UPDATE = os.environ.get("GPUSLO_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def specs() -> list[SloSpec]:
    return load_specs([CATALOG])


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path.name} missing: run with GPUSLO_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), (
        f"{path.name} differs; if the change is intended, regenerate with GPUSLO_UPDATE_GOLDEN=1"
    )


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool not found; install the Debian package `prometheus`")
        pytest.skip("promtool not found; install the Debian package `prometheus`")
    return exe


def test_catalog_rules_match_the_golden_file(specs: list[SloSpec]) -> None:
    report = generate(specs)
    _golden("catalog.rules.yaml", render_rules_file(report))
    _golden("catalog.prometheusrule.yaml",
            render_prometheus_rule(report, "gpuslo-slos", namespace="monitoring"))
    tests, skipped = promtool_tests(specs, "catalog.rules.yaml")
    assert skipped == []
    _golden("catalog.rules.test.yaml", tests)


def test_every_catalog_slo_gets_rules_in_the_form_its_sli_needs(specs: list[SloSpec]) -> None:
    report = generate(specs)
    assert report.skipped == ()
    assert set(report.slo_ids) == {s.id for s in specs} and len(specs) == 8
    assert {s.id: rule_form(s) for s in specs} == {
        "gpu-availability": RuleForm.MINUTES, "gpu-thermal-headroom": RuleForm.MINUTES,
        "storage-read-latency": RuleForm.SLICES, "rdma-port-health": RuleForm.SLICES,
        "inter-token-latency": RuleForm.SLICES, "kv-cache-hit-ratio": RuleForm.RATE,
        "ttft": RuleForm.RATE, "request-success": RuleForm.RATE,
    }
    groups = {g["name"]: g for g in report.groups}
    itl = groups[cv.sli_slices_group("inter-token-latency")]
    assert itl["interval"] == "5m"
    assert [r["record"] for r in itl["rules"]] == ["slo:sli_slice_error:ratio5m"]
    thermal = groups[cv.sli_slices_group("gpu-thermal-headroom")]["rules"]
    assert thermal[0]["expr"] == (
        "sum by (node) (max_over_time(DCGM_FI_DEV_GPU_TEMP[1m]) < bool 85)\n")
    assert thermal[1]["expr"] == "count by (node) (max_over_time(DCGM_FI_DEV_GPU_TEMP[1m]))\n"
    # Where a form is approximate, each alert says how far off; a rate form says nothing.
    notes = {g["name"]: {r["annotations"].get(cv.RULE_ANNOTATION_APPROXIMATION)
                         for r in g["rules"]} for g in report.groups
             if g["name"].startswith("gpuslo-slo-alerts-")}
    assert notes[cv.alert_group("ttft")] == {None}
    (rdma,) = notes[cv.alert_group("rdma-port-health")]
    assert rdma is not None and "one slice at each end" in rdma
    (xid,) = notes[cv.alert_group("gpu-availability")]
    assert xid is not None and "calendar month" in xid


def test_a_selector_override_that_cannot_be_offset_is_skipped_with_a_reason() -> None:
    text = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: ports}
spec:
  service: fabric
  indicator:
    metadata: {name: ports-sli}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: gpuslo, spec: {metric: errs_total,
              promql: 'sum without (lane) (errs_total)'}}}
        total: {metricSource: {type: gpuslo, spec: {metric: pkts_total}}}
  timeWindow: [{duration: 7d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives: [{target: 0.99, timeSliceTarget: 1, timeSliceWindow: 1m}]
"""
    report = generate(parse_yaml(text))
    assert report.groups == ()
    (skip,) = report.skipped
    assert skip.slo_id == "ports" and "not a plain series selector" in skip.reason


def test_error_ratios_guard_against_nan_and_missing_bad_series(specs: list[SloSpec]) -> None:
    success = next(s for s in specs if s.id == "request-success")
    expr = error_ratio_expr(success, timedelta(minutes=5))
    assert expr == (
        '(sum by (model_name) (rate(vllm:request_success_total{finished_reason="error"}[5m])) '
        "or 0 * sum by (model_name) (rate(vllm:request_success_total[5m])))\n/\n"
        "(sum by (model_name) (rate(vllm:request_success_total[5m])) > 0)\n"
    )
    ttft = next(s for s in specs if s.id == "ttft")
    period = error_ratio_expr(ttft, ttft.period, "increase")
    assert 'vllm:time_to_first_token_seconds_bucket{le=~"0\\\\.5"}[30d]' in period
    assert "increase(" in period and "rate(" not in period


def test_generated_rules_pass_promtool_check(tmp_path: Path, specs: list[SloSpec]) -> None:
    exe = _promtool()
    path = tmp_path / "rules.yaml"
    path.write_text(render_rules_file(generate(specs)))
    done = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # 8 SLOs: 9 or 10 windows, 7 meta rules, 2 alerts, and 1 or 2 slice recordings each.
    assert "SUCCESS: 142 rules found" in done.stdout


def _run_promtool_tests(exe: str, tmp_path: Path, rules_text: str, specs: list[SloSpec]) -> \
        subprocess.CompletedProcess[str]:
    (tmp_path / "catalog.rules.yaml").write_text(rules_text)
    tests, _ = promtool_tests(specs, "catalog.rules.yaml")
    (tmp_path / "catalog.rules.test.yaml").write_text(tests)
    return subprocess.run([exe, "test", "rules", "catalog.rules.test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_promtool_unit_tests_show_each_alert_firing_and_not_firing(
    tmp_path: Path, specs: list[SloSpec]
) -> None:
    exe = _promtool()
    tests, _ = promtool_tests(specs, "catalog.rules.yaml")
    doc = yaml.safe_load(tests)
    seen = {(t["name"], a["exp_labels"]["sloth_severity"])
            for t in doc["tests"] for e in t["alert_rule_test"] for a in e["exp_alerts"]}
    quiet = {t["name"] for t in doc["tests"] for e in t["alert_rule_test"]
             if not e["exp_alerts"]}
    assert {name for name, _ in seen} == quiet == {t["name"] for t in doc["tests"]}
    assert {sev for _, sev in seen} == {"page", "ticket"}
    done = _run_promtool_tests(exe, tmp_path, render_rules_file(generate(specs)), specs)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path: Path, specs: list[SloSpec]) -> None:
    # The shipped tests must fail on wrong rules: a 100x error budget in the alert
    # thresholds keeps the 99.9 % SLO's page quiet where the math says it fires.
    exe = _promtool()
    broken = render_rules_file(generate(specs)).replace(" * 0.001)", " * 0.1)")
    assert broken != render_rules_file(generate(specs))
    done = _run_promtool_tests(exe, tmp_path, broken, specs)
    assert done.returncode != 0


def _expand(values: str) -> list[float]:
    out: list[float] = []
    for token in values.split():
        m = re.fullmatch(r"([0-9.]+)\+([0-9.]+)x([0-9]+)", token)
        assert m, token
        a, b, n = float(m.group(1)), float(m.group(2)), int(m.group(3))
        out += [a + b * i for i in range(n + 1)]
    return out


def test_the_streaming_engine_agrees_with_the_promtool_expectations(specs: list[SloSpec]) -> None:
    # The same input series that promtool checks the generated rules against, replayed
    # through stage 1, stage 2 and the alert evaluator: the alert states must agree at
    # every checked time.
    tests, _ = promtool_tests(specs, "catalog.rules.yaml")
    by_id = {s.id: s for s in specs}
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for test in yaml.safe_load(tests)["tests"]:
        spec = by_id[test["name"].split(":")[0]]
        rows = []
        for s in test["input_series"]:
            m = re.fullmatch(r"(.+)\{(.*)\}", s["series"])
            assert m
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            for i, v in enumerate(_expand(s["values"])):
                rows.append((t0 + timedelta(minutes=i), m.group(1), v, labels))
        frame = samples(rows).sort("ts")
        s1, s2, ev = Stage1State([spec]), Stage2State([spec]), AlertEvaluator([spec])
        fed = t0 - timedelta(minutes=1)
        for check in test["alert_rule_test"]:
            at = t0 + timedelta(minutes=int(check["eval_time"].removesuffix("m")))
            batch = frame.filter((frame["ts"] > fed) & (frame["ts"] <= at))
            s2.apply(s1.apply(batch, 0))
            fed = at
            firing = {a.severity.value for a in ev.evaluate(s2.report(at), at)
                      if a.status is AlertStatus.FIRING}
            expected = {a["exp_labels"]["sloth_severity"] for a in check["exp_alerts"]}
            assert firing == expected, (spec.id, check["eval_time"])
