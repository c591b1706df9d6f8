"""``gpuslo rules``, ``replay`` and ``validate-specs`` on the default catalog."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from servers import require_binary
from sim_samples import hot_gpu_incident
from typer.testing import CliRunner

from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.catalog import CATALOG_DIR

CATALOG = CATALOG_DIR
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
runner = CliRunner()


def test_rules_for_the_catalog_pass_promtool_and_name_what_was_skipped(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    out = tmp_path / "slos.rules.yaml"
    result = runner.invoke(app, ["rules", str(CATALOG), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped gpu-thermal-headroom: threshold SLIs" in result.stderr
    checked = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    groups = yaml.safe_load(out.read_text())["groups"]
    assert "gpuslo-slo-alerts-request-success" in {g["name"] for g in groups}

    resource = runner.invoke(app, ["rules", str(CATALOG), "--prometheus-rule",
                                   "--namespace", "monitoring"])
    assert resource.exit_code == 0
    doc = yaml.safe_load(resource.stdout)
    assert doc["kind"] == "PrometheusRule" and doc["metadata"]["namespace"] == "monitoring"
    assert doc["spec"]["groups"] == groups


def test_validate_specs_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate-specs", str(CATALOG)])
    assert ok.exit_code == 0 and "8 SLO(s)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    text = (CATALOG / "request-success.yaml").read_text()
    bad.write_text(text.replace("target: 0.999", "target: 1.5").replace("Occurrences", "Often"))
    result = runner.invoke(app, ["validate-specs", str(bad)])
    assert result.exit_code == 1
    assert "objectives[0].target" in result.stderr and "budgetingMethod" in result.stderr


def _samples() -> pl.DataFrame:
    rows = []
    ok = err = 0.0
    for i in range(4 * 60 + 1):  # one hour every 15 s; errors from minute 20 to 30
        ts = T0 + timedelta(seconds=15 * i)
        if i:
            ok += 20
            err += 5 if 80 <= i < 120 else 0
        lab = {"model_name": "llama"}
        rows.append((ts, "n1", "vllm", "vllm:request_success_total", "counter", ok, "",
                     {**lab, "finished_reason": "stop"}))
        rows.append((ts, "n1", "vllm", "vllm:request_success_total", "counter", err, "",
                     {**lab, "finished_reason": "error"}))
    return frame_from_rows(rows)


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_replay_prints_slis_and_alert_times_and_writes_json(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"samples.{fmt}"
    frame = _samples()
    frame.write_parquet(path) if fmt == "parquet" else frame.write_ipc(path)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["replay", str(CATALOG / "request-success.yaml"),
                                 "--samples", str(path), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "request-success" in result.stdout
    assert "page request-success {model_name=llama} fired 2026-03-02 12:2" in result.stdout
    data = json.loads(report.read_text())
    (slo,) = data["slos"]
    assert slo["scope"] == {"model_name": "llama"}
    # 40 increments of 5 errors; 20 good a sample, the last one (minute 13:00, not yet
    # complete at the final evaluation) outside every window.
    assert slo["period"]["total"] == pytest.approx(239 * 20 + 40 * 5)
    assert slo["period"]["good"] == pytest.approx(239 * 20)
    assert data["alerts"][0]["severity"] == "page"


def test_replay_rejects_a_file_that_is_not_samples(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(path)
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(path)])
    assert result.exit_code == 2
    assert "missing column 'ts'" in result.stderr


def test_replay_rca_ranks_every_alerts_causes_in_the_table_and_the_json(tmp_path: Path) -> None:
    incident = hot_gpu_incident(datetime(2026, 3, 2, 13, 0, tzinfo=UTC))
    path = tmp_path / "samples.parquet"
    incident.samples.write_parquet(path)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["replay", str(CATALOG / "gpu-thermal-headroom.yaml"),
                                 "--samples", str(path), "--rca", "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["alerts"], result.output
    for alert in data["alerts"]:
        rca = alert["rca"]
        assert [c["rank"] for c in rca] == list(range(1, len(rca) + 1))
        assert {"rank", "entity", "node", "signal", "kind", "score", "onset",
                "evidence"} <= rca[0].keys()
        assert (rca[0]["entity"], rca[0]["node"], rca[0]["kind"]) == (
            incident.hot_uuid, incident.hot_node, "cause")
    # The table: each alert line is followed by its top causes, the faulted GPU first.
    lines = result.stdout.splitlines()
    fired = next(i for i, line in enumerate(lines) if " fired " in line)
    causes = [line for line in lines[fired:] if line.startswith("  ")]
    assert causes[0].startswith(f"  1. [cause] GPU 0 of {incident.hot_node} "), causes


def test_replay_without_rca_adds_no_causes(tmp_path: Path) -> None:
    path = tmp_path / "samples.parquet"
    _samples().write_parquet(path)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["replay", str(CATALOG / "request-success.yaml"),
                                 "--samples", str(path), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "rca" not in json.loads(report.read_text())["alerts"][0]
