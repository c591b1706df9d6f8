"""The shape of what we ship: one import root, every package and its data in the wheel.

An installed gpuslo (wheel, container image) has no clone beside it.  A generic
top-level name (``pipeline``, ``collectors``...) would let pip silently overwrite
another distribution's files, a subpackage missing from the wheel breaks
``gpuslo demo`` with an ImportError, and a catalog missing from the package
data makes it ask for ``--specs``.  So the wheel is built here, with the
project's own build backend and no network (no build isolation), and read.
"""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

import pytest
from wheels import repository_wheel_names

from gpuslo.dashboards.catalog import JSON_DIR
from gpuslo.slo.catalog import CATALOG_DIR

ROOT = Path(__file__).resolve().parents[1]
AREAS = ("alerts", "anomaly", "collectors", "dashboards", "exporters", "pipeline",
         "simulator", "slo")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return repository_wheel_names(tmp_path_factory.mktemp("wheel"))


def test_the_area_folders_stay_at_the_top_and_gpuslo_links_to_each() -> None:
    for area in AREAS:
        link = ROOT / "gpuslo" / area
        assert (ROOT / area / "__init__.py").is_file(), area
        assert link.is_symlink() and link.readlink() == Path("..") / area, area


def test_the_wheel_installs_one_top_level_import_name(wheel_names: list[str]) -> None:
    tops = {PurePosixPath(n).parts[0] for n in wheel_names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"gpuslo"}
    assert "gpuslo/py.typed" in wheel_names
    assert "gpuslo/pipeline/schema.py" in wheel_names  # files, not links


def test_every_package_directory_is_in_the_wheel(wheel_names: list[str]) -> None:
    on_disk = {
        "gpuslo/" + p.parent.relative_to(ROOT).as_posix() + "/__init__.py"
        for area in AREAS
        for p in (ROOT / area).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert "gpuslo/simulator/formats/__init__.py" in on_disk
    missing = on_disk - set(wheel_names)
    assert not missing, f"not in the wheel: {sorted(missing)}"


def test_the_default_catalog_and_examples_are_package_data(wheel_names: list[str]) -> None:
    catalog = sorted(p.name for p in CATALOG_DIR.iterdir() if p.suffix in {".yaml", ".md"})
    assert len([n for n in catalog if n.endswith(".yaml")]) >= 8
    for name in catalog:
        assert f"gpuslo/slo/catalog/{name}" in wheel_names, name
    assert "gpuslo/alerts/examples/alertmanager.yml" in wheel_names


def test_no_import_hides_in_a_function_but_optional_dependencies() -> None:
    """A deferred import can hide a cycle or a layer breach from a reader; only an optional
    dependency may be imported late, with a comment saying so just above it."""
    offenders = []
    for area in AREAS:
        for path in sorted((ROOT / area).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        above = "\n".join(lines[max(0, sub.lineno - 4):sub.lineno - 1])
                        if "Optional dependency" not in above:
                            offenders.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    assert not offenders, f"imports inside functions: {offenders}"


def test_the_dashboards_json_is_package_data(wheel_names: list[str]) -> None:
    # `gpuslo dashboards export` writes these from an installed wheel, with no clone.
    committed = sorted(p.name for p in JSON_DIR.glob("*.json"))
    assert len(committed) >= 9
    for name in committed:
        assert f"gpuslo/dashboards/json/{name}" in wheel_names, name


def test_the_status_page_assets_are_package_data(wheel_names: list[str]) -> None:
    # The page must work air-gapped from an installed wheel: templates, stylesheet, script.
    web = ROOT / "exporters" / "web"
    shipped = sorted(p.relative_to(web).as_posix() for sub in ("templates", "static")
                     for p in (web / sub).iterdir() if p.is_file())
    assert {"templates/base.html.j2", "templates/report.html.j2", "static/app.css",
            "static/app.js"} <= set(shipped)
    for name in shipped:
        assert f"gpuslo/exporters/web/{name}" in wheel_names, name
