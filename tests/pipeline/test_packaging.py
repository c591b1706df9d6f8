"""What the wheel ships: every package directory and the data the code reads at run time.

An installed gpuslo (wheel, container image) has no clone beside it: a
subpackage missing from the package list breaks ``gpuslo demo`` with an
ImportError, and a catalog missing from the package data makes it ask for
``--specs``.  Checked against the build configuration with setuptools' own
package finder, without building (a build would fetch build dependencies).
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from setuptools import find_packages

from slo.catalog import CATALOG_DIR

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_directory_is_shipped() -> None:
    shipped = set(find_packages(str(ROOT), include=_config()["packages"]["find"]["include"]))
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in ROOT.glob("*/**/__init__.py")
        if p.parts[len(ROOT.parts)] not in {"tests", "benchmarks", "build"}
        and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    }
    assert "simulator.formats" in on_disk and "slo.catalog" in on_disk
    assert on_disk <= shipped, f"not in the wheel: {sorted(on_disk - shipped)}"


def test_the_default_catalog_and_examples_are_package_data() -> None:
    data = _config()["package-data"]
    catalog = [p.name for p in CATALOG_DIR.iterdir() if p.suffix in {".yaml", ".md"}]
    assert len([n for n in catalog if n.endswith(".yaml")]) >= 8
    for name in catalog:
        assert any(fnmatch.fnmatch(name, g) for g in data["slo.catalog"]), name
    example = "examples/alertmanager.yml"
    assert (ROOT / "alerts" / example).is_file()
    assert any(fnmatch.fnmatch(example, g) for g in data["alerts"])
