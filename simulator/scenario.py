"""Scenarios: a simulated fleet, its load and a fault schedule, written down as YAML.

A scenario is what a demo, a benchmark or an RCA evaluation replays: the same
file and seed give the same metrics, and a run writes the *ground truth* (which
fault hit which entity, from when to when) beside it, so whatever analyses the
metrics can be scored against what really happened.

Loading fails with *every* problem at once, each with its path
(``faults[2].target: ...``), like the gpuslo config: first the shape (pydantic),
then, when the shape is right, whether each fault's kind and target exist in
the fleet the scenario builds.

Fault times are simulated seconds after the end of the warm-up (the moment the
fleet starts serving), written as numbers or as ``90s``, ``10m``, ``1h30m``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from gpuslo.pipeline.config import ConfigError, validation_problems
from gpuslo.simulator.faults import BENIGN, CATALOG, FaultError, FaultSpec
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.spec import FleetSpec, ServiceSpec, TrainingSpec, default_services

_DURATION = re.compile(r"^\s*(?:(?P<h>\d+(?:\.\d+)?)h)?\s*(?:(?P<m>\d+(?:\.\d+)?)m)?\s*"
                       r"(?:(?P<s>\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``90``, ``90s``, ``10m``, ``1h30m``.

    Scenario authors think in minutes of simulated time; seconds everywhere
    would make a schedule unreadable.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration (seconds, or e.g. '90s', '10m', '1h30m')")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip():
        m = _DURATION.match(value)
        if m and any(m.group(g) for g in ("h", "m", "s")):
            return (float(m.group("h") or 0) * 3600.0 + float(m.group("m") or 0) * 60.0
                    + float(m.group("s") or 0))
    raise ValueError(
        f"expected a duration (seconds, or e.g. '90s', '10m', '1h30m'), got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ScenarioError(ConfigError):
    """A scenario that cannot be run; ``problems`` holds one line per mistake."""


class _Model(BaseModel):
    # A typo in a scenario must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# Bounds on what a scenario may ask for.  Loading builds the fleet to check fault
# targets, at about a millisecond per node, and a warm-up is stepped tick by tick,
# so an unbounded number here is a file that hangs every command that reads it.
MAX_NODES = 4096
MAX_REPLICAS = 1024
MIN_TICK_S = 0.1
MAX_WARMUP_S = 7 * 86400.0

_SVC = ServiceSpec("defaults", "vllm")
_TRAIN = TrainingSpec()
_FLEET = FleetSpec(services=(), training=None)


class ServiceModel(_Model):
    """One served model (see :class:`simulator.spec.ServiceSpec`)."""

    name: str = Field(min_length=1)
    engine: Literal["vllm", "sglang", "triton"]
    replicas: int = Field(_SVC.replicas, ge=1, le=MAX_REPLICAS)
    tp: int = Field(_SVC.tp, ge=1)
    rps: float = Field(_SVC.base_rps, gt=0, description="Requests/s at the diurnal mean.")
    prompt_tokens: float = Field(_SVC.prompt_tokens, gt=0)
    output_tokens: float = Field(_SVC.output_tokens, gt=0)
    prefix_hit_ratio: float = Field(_SVC.prefix_hit_ratio, ge=0, le=1)
    prefill_tps: float = Field(_SVC.prefill_tps, gt=0)
    decode_tps: float = Field(_SVC.decode_tps, gt=0)
    kv_capacity_tokens: float = Field(_SVC.kv_capacity_tokens, gt=0)
    max_num_seqs: int = Field(_SVC.max_num_seqs, ge=1)
    legacy_replicas: list[int] = Field(
        default_factory=list, description="vLLM replicas exposing the pre-0.10 metric names."
    )

    def spec(self, scale: float) -> ServiceSpec:
        """The model's spec, with the scenario's load scale applied."""
        return ServiceSpec(
            self.name, self.engine, replicas=self.replicas, tp=self.tp,
            base_rps=self.rps * scale, prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens, prefix_hit_ratio=self.prefix_hit_ratio,
            prefill_tps=self.prefill_tps, decode_tps=self.decode_tps,
            kv_capacity_tokens=self.kv_capacity_tokens, max_num_seqs=self.max_num_seqs,
            legacy_replicas=tuple(self.legacy_replicas),
        )


class TrainingModel(_Model):
    """A synchronous training job on the last nodes of the fleet."""

    name: str = Field(_TRAIN.name, min_length=1)
    nodes: int = Field(_TRAIN.nodes, ge=1, le=MAX_NODES)
    compute_s: float = Field(_TRAIN.compute_s, gt=0)
    comm_s: float = Field(_TRAIN.comm_s, gt=0)
    data_s: float = Field(_TRAIN.data_s, gt=0)


class FleetModel(_Model):
    """Fleet shape.  ``services`` omitted: the default mix; ``training: null``: no job."""

    nodes: int = Field(_FLEET.nodes, ge=1, le=MAX_NODES)
    gpus_per_node: int = Field(_FLEET.gpus_per_node, ge=1, le=16)
    ib_ports: int = Field(_FLEET.ib_ports, ge=1, le=8)
    disks: int = Field(_FLEET.disks, ge=1, le=8)
    fabric: Literal["infiniband", "roce"] = _FLEET.fabric
    ceph_osds: int = Field(_FLEET.ceph_osds, ge=1, le=MAX_NODES)
    routing: Literal["even", "least_loaded"] = Field(
        _FLEET.routing,
        description="Request split over a model's replicas; least_loaded spreads a slow "
                    "replica's load (and queue) onto its twins.")
    tick_s: float = Field(_FLEET.tick_s, ge=MIN_TICK_S,
                          description="Simulated seconds per model step.")
    start: datetime = Field(
        datetime.fromtimestamp(_FLEET.start_s, UTC),
        description="Simulated wall time at which the fleet is built (before the warm-up).",
    )
    services: list[ServiceModel] | None = None
    training: TrainingModel | None = Field(default_factory=TrainingModel)

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


class LoadModel(_Model):
    """The request-rate curve: every service's rate times ``scale``, diurnal plus noise."""

    scale: float = Field(1.0, gt=0)
    diurnal_amplitude: float = Field(_FLEET.diurnal_amplitude, ge=0, lt=1)
    noise: float = Field(_FLEET.load_noise, ge=0, le=0.5)


class _ScheduledModel(_Model):
    """One scheduled event of a catalog (``known``, named ``what`` in errors); ``at``
    counts from the end of the warm-up."""

    known: ClassVar[Mapping[str, object]]
    what: ClassVar[str]

    kind: str
    target: str = Field(min_length=1)
    at: Duration = Field(0.0, ge=0)
    duration: Duration = Field(600.0, gt=0)
    intensity: float = Field(1.0, gt=0, le=1)

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in cls.known:
            raise ValueError(f"unknown {cls.what} {v!r}; known: {', '.join(sorted(cls.known))}")
        return v


class FaultModel(_ScheduledModel):
    """One scheduled fault."""

    known = CATALOG
    what = "fault"


class BenignModel(_ScheduledModel):
    """One scheduled benign event (a real change that is no fault)."""

    known = BENIGN
    what = "benign event"


class Scenario(_Model):
    """A runnable world: fleet, seed, load, speed, warm-up and fault schedule."""

    name: str = "scenario"
    description: str = ""
    seed: int = 0
    speed: float = Field(60.0, gt=0, description="Simulated seconds per real second.")
    warmup: Duration = Field(
        300.0, ge=0, le=MAX_WARMUP_S,
        description="Simulated time stepped before serving (temperatures settle).",
    )
    fleet: FleetModel = Field(default_factory=FleetModel)
    load: LoadModel = Field(default_factory=LoadModel)
    faults: list[FaultModel] = Field(default_factory=list)
    benign: list[BenignModel] = Field(
        default_factory=list,
        description="Unrelated but genuine changes in the same window (checkpoint writes, a "
                    "hot healthy GPU, a pod restart, a traffic ramp): what an RCA must not blame.")

    def fleet_spec(self, nodes: int | None = None) -> FleetSpec:
        """The fleet's spec; ``nodes`` overrides the node count (e.g. a smaller demo)."""
        f = self.fleet
        services = (
            tuple(s.spec(self.load.scale) for s in f.services) if f.services is not None
            else tuple(
                replace(s, base_rps=s.base_rps * self.load.scale) for s in default_services()
            )
        )
        training = (
            TrainingSpec(f.training.name, f.training.nodes, f.training.compute_s,
                         f.training.comm_s, f.training.data_s)
            if f.training is not None else None
        )
        return FleetSpec(
            nodes=nodes if nodes is not None else f.nodes, gpus_per_node=f.gpus_per_node,
            ib_ports=f.ib_ports, disks=f.disks, fabric=f.fabric, seed=self.seed,
            start_s=f.start.timestamp(), tick_s=f.tick_s, services=services, training=training,
            ceph_osds=f.ceph_osds, diurnal_amplitude=self.load.diurnal_amplitude,
            load_noise=self.load.noise, routing=f.routing,
        )

    def origin_s(self) -> float:
        """Simulated epoch seconds at which serving starts; fault ``at`` counts from here."""
        return self.fleet.start.timestamp() + self.warmup

    def fault_specs(self) -> list[FaultSpec]:
        """The schedule in absolute simulated time."""
        t0 = self.origin_s()
        return [FaultSpec(f.kind, f.target, t0 + f.at, f.duration, f.intensity)
                for f in self.faults]

    def benign_specs(self) -> list[FaultSpec]:
        """The benign events in absolute simulated time."""
        t0 = self.origin_s()
        return [FaultSpec(b.kind, b.target, t0 + b.at, b.duration, b.intensity)
                for b in self.benign]

    def build(self, nodes: int | None = None, *, strict: bool = True) -> tuple[Fleet, list[str]]:
        """A warmed fleet with the schedule injected, and what was left out.

        With ``strict`` a fault whose target is missing raises; without, it is
        skipped and reported (a demo shrunk with ``nodes`` loses the faults of
        the nodes it no longer has, and says so).
        """
        fleet = Fleet(self.fleet_spec(nodes))
        skipped: list[str] = []
        for i, f in enumerate(self.fault_specs()):
            try:
                fleet.inject(f)
            except FaultError as exc:
                if strict:
                    raise ScenarioError(self.name, [f"faults[{i}].target: {exc}"]) from exc
                skipped.append(f"faults[{i}]: {exc}")
        for i, b in enumerate(self.benign_specs()):
            try:
                fleet.inject_benign(b)
            except FaultError as exc:
                if strict:
                    raise ScenarioError(self.name, [f"benign[{i}].target: {exc}"]) from exc
                skipped.append(f"benign[{i}]: {exc}")
        fleet.advance(self.origin_s())
        return fleet, skipped


# ---- loading --------------------------------------------------------------------------


def _semantic_problems(sc: Scenario) -> list[str]:
    """What only the built fleet can tell: duplicate names, faults on missing entities."""
    problems: list[str] = []
    services = sc.fleet.services or []
    names = [s.name for s in services]
    for i, s in enumerate(services):
        if names.count(s.name) > 1:
            problems.append(f"fleet.services[{i}].name: {s.name!r} is not unique")
        if s.tp > sc.fleet.gpus_per_node:
            problems.append(f"fleet.services[{i}].tp: {s.tp} exceeds gpus_per_node "
                            f"({sc.fleet.gpus_per_node})")
    if problems:
        return problems
    try:
        spec = sc.fleet_spec()
    except ValueError as exc:
        return [f"fleet: {exc}"]
    fleet = Fleet(spec)
    for i, f in enumerate(sc.fault_specs()):
        try:
            fleet.inject(f)
        except FaultError as exc:
            problems.append(f"faults[{i}].target: {exc}")
    for i, b in enumerate(sc.benign_specs()):
        try:
            fleet.inject_benign(b)
        except FaultError as exc:
            problems.append(f"benign[{i}].target: {exc}")
    return problems


def parse_scenario(tree: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a raw tree; raises :class:`ScenarioError` listing every problem."""
    try:
        sc = Scenario.model_validate(tree)
    except ValidationError as exc:
        raise ScenarioError(source, validation_problems(exc)) from exc
    problems = _semantic_problems(sc)
    if problems:
        raise ScenarioError(source, problems)
    return sc


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (a missing ``name`` becomes the file's stem)."""
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(source, [f"cannot read file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(source, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) \
            from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(source, [f"not valid YAML: {exc}"]) from exc
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ScenarioError(source, [f"top level must be a mapping, got {type(tree).__name__}"])
    tree.setdefault("name", p.stem)
    return parse_scenario(tree, source)


# The scenario `gpuslo demo` and `gpuslo simulate` run without --scenario.  It is
# code, not a file, so an installed gpuslo has it; examples/scenarios/default.yaml
# is the same scenario written out (a test keeps the two equal).
DEFAULT_SCENARIO: dict[str, Any] = {
    "name": "default",
    "description": "8 nodes x 8 GPUs serving four models and a 2-node training job; "
                   "a calm start, then a hot GPU, a flapping InfiniBand port and KV-cache "
                   "pressure on one model.",
    "seed": 0,
    "speed": 60.0,
    "warmup": "5m",
    "fleet": {"nodes": 8, "gpus_per_node": 8},
    "load": {"scale": 1.0},
    "faults": [
        {"kind": "thermal_throttle", "target": "node-1/gpu2", "at": "1m", "duration": "20m",
         "intensity": 0.8},
        {"kind": "ib_link_flap", "target": "node-7/mlx5_1", "at": "6m", "duration": "15m"},
        {"kind": "kv_cache_pressure", "target": "llama-3.1-8b-instruct", "at": "12m",
         "duration": "15m", "intensity": 0.7},
    ],
}


def default_scenario() -> Scenario:
    """The built-in scenario (see :data:`DEFAULT_SCENARIO`)."""
    return parse_scenario(DEFAULT_SCENARIO, "<default scenario>")


# ---- ground truth ---------------------------------------------------------------------


def default_ground_truth_path(scenario_path: str | Path) -> Path:
    """``thermal.yaml`` -> ``thermal.truth.jsonl`` in the same directory."""
    p = Path(scenario_path)
    return p.with_name(f"{p.stem}.truth.jsonl")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def ground_truth_records(fleet: Fleet, scheduled: int = 0) -> list[dict[str, object]]:
    """One record per fault: fault, entity, start, end (ISO and epoch s), intensity, origin.

    The first ``scheduled`` faults of the fleet came from the scenario; the
    rest were injected while it ran (``gpuslo inject``, ``--inject``).  Benign
    events follow with origin ``benign``: they happened, but are no fault.
    """
    faults: list[dict[str, object]] = [
        {"fault": f.kind, "entity": f.target, "start": _iso(f.start_s), "end": _iso(f.end_s),
         "start_s": f.start_s, "end_s": f.end_s, "intensity": f.intensity,
         "origin": "scenario" if i < scheduled else "injected"}
        for i, f in enumerate(fleet.faults)
    ]
    return faults + [
        {"fault": b.kind, "entity": b.target, "start": _iso(b.start_s), "end": _iso(b.end_s),
         "start_s": b.start_s, "end_s": b.end_s, "intensity": b.intensity, "origin": "benign"}
        for b in fleet.benign
    ]


def write_ground_truth(fleet: Fleet, path: str | Path, scheduled: int = 0) -> Path:
    """Write the ground truth as JSON lines (replacing the file atomically)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    lines = [json.dumps(r) for r in ground_truth_records(fleet, scheduled)]
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(p)
    return p


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """The records :func:`write_ground_truth` wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def parse_inject(spec: str, *, origin_s: float, speed: float,
                 duration_s: float = 1800.0, intensity: float = 1.0) -> FaultSpec:
    """``KIND:TARGET[@SECONDS]`` -> a fault starting SECONDS of *real* time after ``origin_s``.

    On the command line a user counts in the seconds they watch, not in
    simulated time; at ``speed`` 60, ``@10`` is ten simulated minutes in.
    """
    kind, sep, rest = spec.partition(":")
    target, _, at = rest.partition("@")
    if not sep or not kind or not target:
        raise FaultError(f"--inject {spec!r}: expected KIND:TARGET[@SECONDS], "
                         "e.g. thermal_throttle:node-1/gpu2@10")
    try:
        seconds = parse_duration(at) if at else 0.0
    except ValueError as exc:
        raise FaultError(f"--inject {spec!r}: {exc}") from None
    return FaultSpec(kind.strip(), target.strip(), origin_s + seconds * speed, duration_s,
                     intensity)


__all__ = [
    "DEFAULT_SCENARIO",
    "Scenario",
    "ScenarioError",
    "default_ground_truth_path",
    "default_scenario",
    "ground_truth_records",
    "load_scenario",
    "parse_duration",
    "parse_inject",
    "parse_scenario",
    "read_ground_truth",
    "write_ground_truth",
]
