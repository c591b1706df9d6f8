"""The committed dashboards (``dashboards/json/``) are exactly what the code generates.

A change to a dashboard module shows up as a diff of the JSON a reviewer can
read, and the JSON the wheel ships can never drift from the code.  Regenerate on
purpose with::

    GPUSLO_REGENERATE_DASHBOARDS=1 .venv/bin/pytest tests/dashboards/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpuslo.dashboards.catalog import JSON_DIR, build_all
from gpuslo.dashboards.common import render
from gpuslo.dashboards.export import write_dashboards

REGENERATE = os.environ.get("GPUSLO_REGENERATE_DASHBOARDS", "") == "1"


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return {name: render(data) for name, data in build_all().items()}


def test_regenerate_on_purpose(generated: dict[str, str]) -> None:
    if not REGENERATE:
        pytest.skip("set GPUSLO_REGENERATE_DASHBOARDS=1 to rewrite dashboards/json/")
    for stale in JSON_DIR.glob("*.json"):
        if stale.name not in generated:
            stale.unlink()
    write_dashboards(JSON_DIR)


def test_every_committed_file_equals_the_generated_json(generated: dict[str, str]) -> None:
    committed = {p.name: p.read_text(encoding="utf-8") for p in JSON_DIR.glob("*.json")}
    assert sorted(committed) == sorted(generated), (
        "dashboards/json/ and the generated set differ in files; regenerate with "
        "GPUSLO_REGENERATE_DASHBOARDS=1")
    for name, text in generated.items():
        assert committed[name] == text, (
            f"dashboards/json/{name} is not what the code generates; regenerate with "
            "GPUSLO_REGENERATE_DASHBOARDS=1 and review the diff")


def test_generation_is_deterministic(generated: dict[str, str]) -> None:
    again = {name: render(data) for name, data in build_all().items()}
    assert again == generated


def test_export_writes_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    paths = write_dashboards(tmp_path / "out")
    assert {p.name for p in paths} == {p.name for p in JSON_DIR.glob("*.json")}
    for p in paths:
        assert p.read_bytes() == (JSON_DIR / p.name).read_bytes(), p.name
