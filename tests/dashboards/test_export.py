"""``write_dashboards``: JSON files to import, or ConfigMaps for kube-prometheus-stack's sidecar.

The sidecar picks up ConfigMaps labelled ``grafana_dashboard: "1"`` and writes
each data key as a file Grafana provisions; so each manifest must be a valid
ConfigMap whose single data key holds exactly the committed dashboard JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from gpuslo.dashboards.catalog import JSON_DIR
from gpuslo.dashboards.export import (
    CONFIGMAP_DATA_LIMIT_BYTES,
    ExportError,
    configmap_manifest,
    validate_namespace,
    write_dashboards,
)
from gpuslo.pipeline.app.cli.main import app

COMMITTED = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in JSON_DIR.glob("*.json")}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def test_json_export_writes_one_file_per_dashboard(tmp_path: Path) -> None:
    paths = write_dashboards(tmp_path)
    assert sorted(p.name for p in paths) == sorted(COMMITTED)
    for p in paths:
        assert json.loads(p.read_text(encoding="utf-8")) == COMMITTED[p.name]


def test_configmaps_carry_the_sidecar_label_and_the_dashboard_json(tmp_path: Path) -> None:
    paths = write_dashboards(tmp_path, configmap=True, namespace="monitoring")
    assert sorted(p.name for p in paths) == sorted(n.replace(".json", ".yaml") for n in COMMITTED)
    names = set()
    for p in paths:
        docs = list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
        assert len(docs) == 1
        cm = docs[0]
        assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
        meta = cm["metadata"]
        assert meta["labels"]["grafana_dashboard"] == "1"  # a string: label values are
        assert meta["namespace"] == "monitoring"
        assert meta["annotations"]["grafana_folder"] == "gpuslo"
        assert DNS1123_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253
        names.add(meta["name"])
        (key, text), = cm["data"].items()
        assert key == p.stem + ".json"
        assert json.loads(text) == COMMITTED[key]
        assert len(text.encode()) <= CONFIGMAP_DATA_LIMIT_BYTES
    assert len(names) == len(paths)


def test_configmaps_without_namespace_leave_it_to_kubectl(tmp_path: Path) -> None:
    (first, *_) = write_dashboards(tmp_path, configmap=True)
    assert "namespace" not in yaml.safe_load(first.read_text(encoding="utf-8"))["metadata"]


def test_export_replaces_its_own_files_and_leaves_others(tmp_path: Path) -> None:
    mine = tmp_path / "gpuslo-storage.json"
    mine.write_text("stale", encoding="utf-8")
    other = tmp_path / "someone-elses.json"
    other.write_text("{}", encoding="utf-8")
    write_dashboards(tmp_path)
    assert json.loads(mine.read_text(encoding="utf-8"))["uid"] == "gpuslo-storage"
    assert other.read_text(encoding="utf-8") == "{}"
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_requests_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="only applies to ConfigMaps"):
        write_dashboards(tmp_path, namespace="monitoring")
    with pytest.raises(ExportError, match="'Monitoring' is not a valid Kubernetes name"):
        write_dashboards(tmp_path, configmap=True, namespace="Monitoring")
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(ExportError, match="not a directory"):
        write_dashboards(a_file)


def test_a_dashboard_too_big_for_a_configmap_is_refused() -> None:
    huge = {"uid": "huge", "description": "x" * CONFIGMAP_DATA_LIMIT_BYTES}
    with pytest.raises(ExportError, match=r"'huge' is \d+ bytes"):
        configmap_manifest("huge.json", huge)


@given(st.text(alphabet="abcz09-.A_", min_size=0, max_size=70))
def test_namespaces_are_accepted_exactly_when_kubernetes_accepts_them(namespace: str) -> None:
    dns_label = re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace)
    if dns_label is None or len(namespace) > 63:
        with pytest.raises(ExportError, match="not a valid Kubernetes name"):
            validate_namespace(namespace)
        return
    validate_namespace(namespace)
    dashboard = {"uid": "u", "title": "t"}
    manifest = yaml.safe_load(configmap_manifest("u.json", dashboard, namespace=namespace))
    assert manifest["metadata"]["namespace"] == namespace
    assert json.loads(manifest["data"]["u.json"]) == dashboard


def test_the_command_writes_the_committed_json_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["dashboards", "export", str(tmp_path / "json")])
    assert out.exit_code == 0, out.output
    written = {p.name: json.loads(p.read_text()) for p in (tmp_path / "json").glob("*.json")}
    assert written == COMMITTED
    out = runner.invoke(app, ["dashboards", "export", str(tmp_path / "cm"), "--configmap",
                              "--namespace", "monitoring"])
    assert out.exit_code == 0 and len(list((tmp_path / "cm").glob("*.yaml"))) == len(COMMITTED)
    bad = runner.invoke(app, ["dashboards", "export", str(tmp_path / "x"), "--configmap",
                              "--namespace", "Not_A_Name"])
    assert bad.exit_code == 2 and "Not_A_Name" in bad.output
