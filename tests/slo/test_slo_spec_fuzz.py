"""Fuzz the SLO spec loader: any YAML is a list of SLOs or a SpecError naming each problem.

Seeds are the packaged catalog (every SLI kind, alert policies, references
across documents), mutated as text (byte- and line-wise) and as parsed trees.
The promise: :func:`parse_yaml` / :func:`load_specs` return compiled specs or
raise :class:`SpecError` whose message starts with the source it read;
nothing else escapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from fuzzing import (
    fuzz_settings,
    mutated_bytes,
    mutated_lines,
    mutated_tree,
    only_input_errors,
    yaml_trees,
)
from hypothesis import given
from hypothesis import strategies as st

from gpuslo.slo.spec import SpecError, load_specs, parse_yaml

CATALOG = Path(__file__).resolve().parents[2] / "slo" / "catalog"
SEED_TEXTS = [p.read_text() for p in sorted(CATALOG.glob("*.yaml"))]
SEED_DOCS: list[list[Any]] = [list(yaml.safe_load_all(t)) for t in SEED_TEXTS]
WORK = Path(tempfile.mkdtemp(prefix="gpuslo-fuzz-specs-"))


def check_text(text: str) -> None:
    only_input_errors(lambda: parse_yaml(text, "fuzz.yaml"), SpecError,
                      lambda m: m.startswith("fuzz.yaml: "))


@fuzz_settings(120)
@given(mutated_bytes([t.encode() for t in SEED_TEXTS]))
def test_byte_mutated_specs_load_or_name_their_problems(data: bytes) -> None:
    path = WORK / "one.yaml"
    path.write_bytes(data)
    only_input_errors(lambda: load_specs([path]), SpecError,
                      lambda m: m.startswith(f"{path}: "))


@fuzz_settings(120)
@given(mutated_lines(SEED_TEXTS))
def test_line_mutated_specs_load_or_name_their_problems(text: str) -> None:
    check_text(text)


_spec_paths = [(0,), (0, "spec"), (0, "spec", "objectives"), (0, "spec", "objectives", 0),
               (0, "spec", "timeWindow"), (0, "spec", "indicator"), (0, "metadata"),
               (1, "spec"), (1, "spec", "ratioMetric"), (0, "kind"), (0, "apiVersion")]


@fuzz_settings(200)
@given(st.sampled_from(SEED_DOCS).flatmap(lambda docs: mutated_tree(docs, _spec_paths)))
def test_tree_mutated_specs_load_or_name_their_problems(docs: Any) -> None:
    docs = docs if isinstance(docs, list) else [docs]
    check_text(yaml.safe_dump_all(docs, allow_unicode=True))


@fuzz_settings(80)
@given(st.lists(yaml_trees(), min_size=1, max_size=3))
def test_arbitrary_documents_load_or_name_their_problems(docs: list[Any]) -> None:
    check_text(yaml.safe_dump_all(docs, allow_unicode=True))
