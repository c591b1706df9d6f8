"""The gpuslo command line, run as a user runs it (a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpuslo.pipeline.schema import SCHEMA_VERSION


def gpuslo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", *args],
        capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "HOME": str(Path.home())},
    )


def test_help_lists_the_commands() -> None:
    out = gpuslo("--help")
    assert out.returncode == 0
    for command in ("version", "validate", "broker", "collect", "tail", "demo"):
        assert command in out.stdout


def test_version() -> None:
    out = gpuslo("version")
    assert out.returncode == 0 and "gpuslo" in out.stdout
    assert f"schema v{SCHEMA_VERSION}" in out.stdout


def test_validate_good_file(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("collectors:\n  - type: prometheus\n    targets: [{url: 'http://h:9400/metrics'}]\n")
    out = gpuslo("validate", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "ok (1 collector(s)" in out.stdout


def test_validate_bad_file_lists_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "kafka: {partitions: 0}\n"
        "collectors:\n  - type: prometheus\n    interval_s: 0\n  - type: bogus\n"
    )
    out = gpuslo("validate", str(cfg))
    assert out.returncode == 1
    err = " ".join(out.stderr.split())  # rich may wrap long lines
    assert "3 problem(s)" in err
    assert "kafka.partitions: must be > 0" in err
    assert "collectors[0].interval_s: must be > 0" in err
    assert "collectors[1]" in err and "bogus" in err


@pytest.mark.integration
def test_demo_runs_end_to_end_and_reports_samples_seen() -> None:
    out = gpuslo("demo", "--duration", "5", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = int(out.stdout.rsplit("samples seen:", 1)[1].split()[0])
    assert seen > 0
