"""The evaluation harness, small: three simulated incidents with distractors, end to end.

``benchmarks/rca_eval.py`` runs 255 cases for the table; CI runs three of them on a
6-node fleet (a GPU, a network and a storage fault, each with a checkpoint burst, a
hot healthy GPU, a pod restart and a traffic ramp around it): the simulator's
pages parsed by gpuslo's parser, the pure SLO stages firing the alert, the node
scorer's digests and the ranking.  It fails when AC@1 drops below the 0.9 target.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
AC1_TARGET = 0.9


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rca_eval", ROOT / "benchmarks/rca_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rca_eval"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> list[object]:
    h = _harness()
    cases = h.make_cases(["thermal_throttle", "ib_symbol_errors", "ceph_slow_ops"], 1, 1,
                         seed=1, nodes=6, training_nodes=3, baseline_min=10)
    return [h.run_case(c, late_s=(0.0,), baselines_too=False) for c in cases]


def test_every_incident_pages(results: list[object]) -> None:
    missed = [r.case.kind for r in results if r.alert is None]  # type: ignore[attr-defined]
    assert not missed, f"no SLO alert for {missed}"


def test_ac_at_1_meets_the_target(results: list[object]) -> None:
    h = _harness()
    ranks = [r.ranks["gpuslo+0s"] for r in results]  # type: ignore[attr-defined]
    top = {r.case.kind: r.top["gpuslo+0s"][:1] for r in results}  # type: ignore[attr-defined]
    assert h.ac_at(ranks, 1) >= AC1_TARGET, top
