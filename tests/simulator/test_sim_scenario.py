"""Scenario files: validation with paths, determinism, warm-up, ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.faults import FaultError
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.scenario import (
    DEFAULT_SCENARIO,
    Scenario,
    ScenarioError,
    default_ground_truth_path,
    default_scenario,
    load_scenario,
    parse_duration,
    parse_inject,
    parse_scenario,
    read_ground_truth,
    write_ground_truth,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"

SMALL: dict[str, Any] = {
    "name": "small",
    "seed": 5,
    "warmup": "2m",
    "fleet": {
        "nodes": 2, "gpus_per_node": 4, "ib_ports": 2, "disks": 1,
        "training": {"nodes": 1},
        "services": [{"name": "chat", "engine": "vllm", "replicas": 2, "rps": 10},
                     {"name": "code", "engine": "sglang", "replicas": 1, "tp": 2}],
    },
    "faults": [{"kind": "thermal_throttle", "target": "node-0/gpu1", "at": "1m",
                "duration": "5m", "intensity": 0.5},
               {"kind": "ib_symbol_errors", "target": "node-1/mlx5_1", "at": 90}],
}


def problems_of(tree: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(tree, "test.yaml")
    return info.value.problems


def pages(fleet: Fleet) -> dict[str, str | None]:
    return {f"{ep.node}/{ep.process}{ep.path}": ep.render(fleet, int(fleet.t * 1000))
            for ep in endpoints(fleet)}


@pytest.mark.parametrize("name", ["default", "thermal", "ib-flap", "kv-pressure"])
def test_example_scenarios_load_and_every_fault_lands(name: str) -> None:
    sc = load_scenario(EXAMPLES / f"{name}.yaml")
    assert sc.name == name and sc.faults
    fleet, skipped = sc.build()
    assert skipped == [] and len(fleet.faults) == len(sc.faults)
    assert fleet.t == pytest.approx(sc.origin_s())


def test_default_yaml_is_the_builtin_default() -> None:
    assert load_scenario(EXAMPLES / "default.yaml") == default_scenario()
    assert default_scenario().fleet.nodes == 8 and DEFAULT_SCENARIO["speed"] == 60.0


def test_shape_problems_are_all_listed_with_their_paths() -> None:
    problems = problems_of({
        "speed": -1,
        "warmup": "soon",
        "fleet": {"nodes": 0, "gpus_per_node": 20, "colour": "blue",
                  "services": [{"name": "x", "engine": "tgi"}]},
        "load": {"diurnal_amplitude": 1.5},
        "faults": [{"kind": "meltdown", "target": "node-0"},
                   {"kind": "xid_48", "target": "node-0/gpu0", "duration": 0},
                   {"kind": "xid_48", "target": "node-0/gpu0", "intensity": 2}],
    })
    text = "\n".join(problems)
    for expected in (
        "speed: must be > 0",
        "warmup: expected a duration",
        "fleet.nodes: must be >= 1",
        "fleet.gpus_per_node: must be <= 16",
        "fleet.colour: unknown field",
        "fleet.services[0].engine:",
        "load.diurnal_amplitude: must be < 1",
        "faults[0].kind: unknown fault 'meltdown'",
        "faults[1].duration: must be > 0",
        "faults[2].intensity: must be <= 1",
    ):
        assert expected in text, (expected, problems)
    assert len(problems) == 10


def test_faults_on_missing_entities_are_listed_with_their_paths() -> None:
    tree = {**SMALL, "faults": [
        {"kind": "thermal_throttle", "target": "node-0/gpu1"},
        {"kind": "thermal_throttle", "target": "node-9/gpu0"},
        {"kind": "thermal_throttle", "target": "node-0/mlx5_0"},
        {"kind": "kv_cache_pressure", "target": "no-such-model"},
    ]}
    problems = problems_of(tree)
    assert [p.split(":")[0] for p in problems] == [
        "faults[1].target", "faults[2].target", "faults[3].target"]
    assert "no gpu named 'node-9/gpu0'" in problems[0]
    assert "matches none" in problems[1]


def test_duplicate_service_names_are_reported() -> None:
    tree = {**SMALL, "faults": []}
    tree["fleet"] = {**SMALL["fleet"], "services": [
        {"name": "chat", "engine": "vllm"}, {"name": "chat", "engine": "triton"}]}
    assert problems_of(tree) == [
        "fleet.services[0].name: 'chat' is not unique",
        "fleet.services[1].name: 'chat' is not unique",
    ]


def test_file_level_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("fleet: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ScenarioError, match="top level must be a mapping"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read file"):
        load_scenario(tmp_path / "missing.yaml")


def test_durations() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("90") == 90.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("10m") == 600.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("1.5h") == 5400.0
    for bad in ("", "m", "ten", True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_warmup_and_schedule_are_in_simulated_time() -> None:
    sc = parse_scenario(SMALL)
    fleet, _ = sc.build()
    start = sc.fleet.start.timestamp()
    assert sc.origin_s() == start + 120
    assert fleet.t == start + 120  # warmed, not yet serving
    assert [(f.start_s - sc.origin_s(), f.duration_s) for f in fleet.faults] == [
        (60.0, 300.0), (90.0, 600.0)]


def test_same_seed_gives_identical_scrapes_and_another_seed_does_not() -> None:
    sc = parse_scenario(SMALL)
    a, _ = sc.build()
    b, _ = sc.build()
    other, _ = Scenario.model_validate({**SMALL, "seed": 6}).build()
    for minutes in (1, 2, 4):  # through the faults' starts
        for f in (a, b, other):
            f.advance(sc.origin_s() + minutes * 60)
        assert pages(a) == pages(b)
    assert pages(a) != pages(other)
    assert a.ground_truth() == b.ground_truth()


def test_nodes_override_drops_faults_it_cannot_place() -> None:
    sc = default_scenario()
    fleet, skipped = sc.build(2, strict=False)
    assert len(fleet.nodes) == 2
    assert len(skipped) == 1 and "node-7/mlx5_1" in skipped[0]
    with pytest.raises(ScenarioError, match=r"faults\[1\]\.target"):
        sc.build(2)


def test_ground_truth_is_written_beside_the_scenario(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text((EXAMPLES / "thermal.yaml").read_text())
    sc = load_scenario(path)
    fleet, _ = sc.build()
    fleet.inject(parse_inject("xid_79:node-0/gpu0@2", origin_s=fleet.t, speed=60.0,
                              duration_s=300.0))
    out = write_ground_truth(fleet, default_ground_truth_path(path), len(sc.faults))
    assert out == tmp_path / "small.truth.jsonl"
    records = read_ground_truth(out)
    assert [(r["fault"], r["entity"], r["origin"]) for r in records] == [
        ("thermal_throttle", "node-3/gpu5", "scenario"),
        ("thermal_throttle", "node-0/gpu1", "scenario"),
        ("power_cap", "node-1", "scenario"),
        ("xid_79", "node-0/gpu0", "injected"),
    ]
    first, injected = records[0], records[-1]
    assert first["start"] == "2026-01-01T00:07:00Z" and first["end"] == "2026-01-01T00:37:00Z"
    assert injected["start_s"] == fleet.t + 120 and injected["end_s"] == fleet.t + 420


def test_inject_spec_errors() -> None:
    for bad in ("xid_48", "xid_48:", ":node-0/gpu0", "xid_48:node-0/gpu0@soon"):
        with pytest.raises(FaultError, match="--inject"):
            parse_inject(bad, origin_s=0.0, speed=60.0)
    f = parse_inject("power_cap:node-1@1m", origin_s=100.0, speed=2.0, intensity=0.5)
    assert (f.kind, f.target, f.start_s, f.intensity) == ("power_cap", "node-1", 220.0, 0.5)


@pytest.mark.parametrize(("text", "problem"), [
    # Fuzz findings: each of these made load_scenario (which builds the fleet to check
    # fault targets) or the warm-up run for hours; now they are refused at once.
    ("fleet: {nodes: 100000000}", "fleet.nodes: must be <= 4096"),
    ("fleet: {services: [{name: a, engine: vllm, replicas: 100000000}]}",
     "fleet.services[0].replicas: must be <= 1024"),
    ("fleet: {ceph_osds: 100000000}", "fleet.ceph_osds: must be <= 4096"),
    ("fleet: {tick_s: 0.000001}", "fleet.tick_s: must be >= 0.1"),
    ("warmup: 100000000", "warmup: must be <= 604800"),
])
def test_a_scenario_too_large_to_build_is_refused_by_name(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.problems == [problem]


def test_a_scenario_file_that_is_not_utf8_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(ScenarioError, match=r"not UTF-8 text: invalid start byte at byte 6"):
        load_scenario(path)
