"""Fuzz the scenario loader: any file is a scenario or a ScenarioError naming each problem.

Seeds are the example scenarios, mutated as text (byte- and line-wise) and as
parsed trees.  The promise: :func:`load_scenario` returns a validated
scenario or raises :class:`ScenarioError` whose message starts with the file
it read; nothing else escapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from fuzzing import fuzz_settings, mutated_bytes, mutated_lines, mutated_tree, only_input_errors
from hypothesis import given
from hypothesis import strategies as st

from gpuslo.simulator.scenario import ScenarioError, load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
SEED_TEXTS = [p.read_text() for p in sorted(EXAMPLES.glob("*.yaml"))]
SEED_TREES = [yaml.safe_load(t) for t in SEED_TEXTS]
WORK = Path(tempfile.mkdtemp(prefix="gpuslo-fuzz-scenarios-"))
PATH = WORK / "scenario.yaml"


def check(data: str | bytes) -> None:
    PATH.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "replace"))
    only_input_errors(lambda: load_scenario(PATH), ScenarioError,
                      lambda m: m.startswith(f"{PATH}: "))


@fuzz_settings(100)
@given(mutated_bytes([t.encode() for t in SEED_TEXTS]))
def test_byte_mutated_scenarios_load_or_name_their_problems(data: bytes) -> None:
    check(data)


@fuzz_settings(100)
@given(mutated_lines(SEED_TEXTS))
def test_line_mutated_scenarios_load_or_name_their_problems(text: str) -> None:
    check(text)


_paths = [("fleet",), ("fleet", "nodes"), ("fleet", "gpus_per_node"), ("fleet", "services"),
          ("fleet", "training"), ("faults",), ("faults", 0), ("faults", 0, "at"),
          ("faults", 0, "target"), ("faults", 0, "kind"), ("load",), ("speed",), ("warmup",),
          ("seed",), ("start",)]


@fuzz_settings(150)
@given(st.sampled_from(SEED_TREES).flatmap(lambda t: mutated_tree(t, _paths)))
def test_tree_mutated_scenarios_load_or_name_their_problems(tree: Any) -> None:
    check(yaml.safe_dump(tree, allow_unicode=True))
