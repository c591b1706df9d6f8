"""`gpuslo simulate` as a real process, `gpuslo inject` against an in-process fleet."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.simulator import Fleet, FleetServer, ManualClock
from gpuslo.simulator.scenario import read_ground_truth

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "scenarios"


def gpuslo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", *args],
        capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(Path.home())},
    )


def test_simulate_prints_a_usable_config_and_writes_ground_truth(tmp_path: Path) -> None:
    scenario = tmp_path / "thermal.yaml"
    shutil.copy(EXAMPLES / "thermal.yaml", scenario)
    out = gpuslo("simulate", "--scenario", str(scenario), "--port", "0", "--duration", "2",
                 "--print-config")
    assert out.returncode == 0, out.stderr
    cfg = GpusloConfig.model_validate(yaml.safe_load(out.stdout))  # stdout is only the config
    sources = {c.source for c in cfg.collectors}
    assert sources == {"dcgm", "rdma", "kubelet", "kvcache", "storage", "prometheus"}
    urls = [t.url for c in cfg.collectors for t in c.targets]
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    assert not any(u.endswith(("/stats/summary", "/diskstats")) for u in urls)
    assert "simulating 'thermal'" in " ".join(out.stderr.split())
    truth = read_ground_truth(tmp_path / "thermal.truth.jsonl")
    assert [(r["fault"], r["entity"]) for r in truth] == [
        ("thermal_throttle", "node-3/gpu5"), ("thermal_throttle", "node-0/gpu1"),
        ("power_cap", "node-1")]


def test_simulate_lists_every_scenario_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("speed: 0\nfaults:\n  - {kind: xid_48, target: node-99/gpu0}\n"
                   "  - {kind: meltdown, target: node-0}\n")
    out = CliRunner().invoke(app, ["simulate", "--scenario", str(bad), "--port", "0"])
    assert out.exit_code == 2
    text = " ".join(out.output.split())
    assert "speed: must be > 0" in text and "faults[1].kind: unknown fault" in text


async def test_inject_posts_to_a_running_fleet() -> None:
    fleet = Fleet()
    clock = ManualClock(fleet.t)
    runner = CliRunner()

    def inject(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["inject", *args])
        return result.exit_code, " ".join(result.output.split())

    async with FleetServer(fleet, clock) as srv:
        code, text = await asyncio.to_thread(
            inject, "thermal_throttle", "node-1/gpu2", "--duration", "5m", "--intensity", "0.5",
            "--in", "1m", "--url", srv.base_url)
        assert code == 0, text
        assert "injected thermal_throttle on node-1/gpu2" in text
        (fault,) = fleet.faults
        assert (fault.start_s, fault.duration_s, fault.intensity) == (fleet.t + 60, 300.0, 0.5)

        code, text = await asyncio.to_thread(inject, "xid_79", "node-1/mlx5_0",
                                             "--url", srv.base_url)
        assert code == 1 and "rejected" in text and "matches none" in text
        code, text = await asyncio.to_thread(inject, "meltdown", "node-1",
                                             "--url", srv.base_url)
        assert code == 2 and "unknown fault 'meltdown'" in text
    assert len(fleet.faults) == 1
    code, text = await asyncio.to_thread(inject, "xid_48", "node-0/gpu0",
                                         "--url", "http://127.0.0.1:9")
    assert code == 1 and "no simulator at" in text
