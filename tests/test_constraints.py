"""The lock file: every dependency pinned to a tested version that pyproject.toml allows.

The README's commands install through constraints.txt, so a new release of a dependency
cannot break a fresh machine; that holds only while every package the project names is
pinned there (a new dependency added without re-locking would float) and every pin still
satisfies the range pyproject.toml asks for.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        assert m, f"constraints.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("test", "broker"):  # what the Makefile installs
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name == "setuptools":
            continue  # the build backend: pip never writes it to a freeze
        assert name in pins, (
            f"{req.name} is not in constraints.txt: run scripts/lock-dependencies.sh")
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside {req.specifier}")


def test_the_installs_go_through_the_lock() -> None:
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert "-c /src/constraints.txt" in (ROOT / "deploy" / "Dockerfile").read_text()
