"""``SloEngine`` and ``gpuslo aggregate --stage``: one stage, the other, or both.

The processes themselves are tested killed and restarted in
tests/pipeline/app/test_faults_processes.py; here, what each choice builds and
what a wrong choice says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.stages.anomaly import ScoreRunner
from gpuslo.pipeline.stages.slo import SloEngine, Stage1Runner, Stage2Runner
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

SPECS = load_specs([CATALOG_DIR / "request-success.yaml"])


@pytest.mark.parametrize(("stages", "kinds"), [
    ((1,), [Stage1Runner, ScoreRunner]),
    ((2,), [Stage2Runner]),
    ((1, 2), [Stage1Runner, Stage2Runner, ScoreRunner]),
])
def test_the_engine_builds_only_the_stages_asked_for(
    stages: tuple[int, ...], kinds: list[type], tmp_path: Path
) -> None:
    # Anomaly scoring goes with stage 1 (it consumes the samples), the ranking of causes
    # with stage 2 (it reads gpuslo.digests and feeds stage 2's alerts).
    cfg = GpusloConfig.model_validate({"slo": {"checkpoint_dir": str(tmp_path)}})
    engine = SloEngine(cfg, SPECS, bootstrap_servers="127.0.0.1:9", stages=stages)
    assert [type(r) for r in engine.stages] == kinds
    assert (engine.stage1 is not None) == (1 in stages)
    assert (engine.stage2 is not None) == (2 in stages)
    assert (engine.scorer is not None) == (1 in stages)
    assert (engine.ranker is not None) == (2 in stages)
    if engine.stage2 is not None:
        assert engine.stage2.ranker is engine.ranker


@pytest.mark.parametrize("stages", [(1,), (2,), (1, 2)])
def test_scoring_elsewhere_or_rca_off_leaves_only_the_slo_stages(
    stages: tuple[int, ...], tmp_path: Path
) -> None:
    base = {"slo": {"checkpoint_dir": str(tmp_path)}}
    apart = SloEngine(GpusloConfig.model_validate({**base, "anomaly": {"score": False}}),
                      SPECS, bootstrap_servers="127.0.0.1:9", stages=stages)
    assert apart.scorer is None and (apart.ranker is not None) == (2 in stages)
    off = SloEngine(GpusloConfig.model_validate({**base, "anomaly": {"enabled": False}}),
                    SPECS, bootstrap_servers="127.0.0.1:9", stages=stages)
    assert off.scorer is None and off.ranker is None
    assert not any(isinstance(r, ScoreRunner) for r in (*apart.stages, *off.stages))


@pytest.mark.parametrize("stages", [(), (3,), (1, 3)])
def test_an_unknown_stage_is_bad_input(stages: tuple[int, ...], tmp_path: Path) -> None:
    cfg = GpusloConfig.model_validate({"slo": {"checkpoint_dir": str(tmp_path)}})
    with pytest.raises(InputError, match="choose 1, 2 or both"):
        SloEngine(cfg, SPECS, stages=stages)


def test_aggregate_refuses_an_unknown_stage_before_reaching_kafka() -> None:
    result = CliRunner().invoke(app, ["aggregate", "--stage", "3", "--specs",
                                      str(CATALOG_DIR / "request-success.yaml")])
    assert result.exit_code == 2
    assert "bad --stage" in result.stderr and "choose 1, 2 or both" in result.stderr
