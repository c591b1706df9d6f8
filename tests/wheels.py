"""Build gpuslo's wheel the way a fresh clone would, for tests that read what ships.

A build in the working tree reuses setuptools' ``build/`` directory, which keeps
files that were moved or deleted since: the wheel would list them.  So the tree
is copied first, without build outputs, virtual environments and caches, and
the wheel is built from the copy with the project's own backend and no network
(no build isolation).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", ".import_linter_cache",
)


def clean_copy(source: Path, dest: Path) -> Path:
    """``source`` copied to ``dest`` without build outputs (symlinks kept as links)."""
    shutil.copytree(source, dest, symlinks=True, ignore=_NOT_SOURCES)
    return dest


def wheel_names(source: Path, out: Path) -> list[str]:
    """The file names inside the wheel built from ``source`` (a clean tree)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = out.glob("gpuslo-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def repository_wheel_names(tmp: Path) -> list[str]:
    """The names in the wheel a fresh clone of this repository builds."""
    return wheel_names(clean_copy(ROOT, tmp / "src"), tmp / "wheel")
