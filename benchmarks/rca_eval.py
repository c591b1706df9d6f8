"""Benchmark: RCA accuracy on the simulator's fault catalog, beside N-Sigma and RobustScorer.

What it measures.  For every fault type of the catalog, faults on at least 5
target entities x 3 repeats (different seeds, intensities, start times) are
injected into a 10-node fleet (5 serving nodes, a 5-node training job) that
is made as hard as a real one: each case also carries four unrelated but
genuine anomalies in the same window (a checkpoint burst on a training node's
disk, a hot but healthy GPU elsewhere, a pod restart on another node, a
fleet-wide traffic ramp), and routing that sheds a slow replica's load onto
its twins, so symptoms spread.  The fleet is scraped every 30 simulated
seconds (its real exporters' pages, parsed by gpuslo's parser, engine pages
and scrape health labelled with their pod as Kubernetes discovery does) and
fed to the pure SLO stages (stage 1, stage 2, the alert state machine: no
Kafka).  The first alert that fires after the fault starts is the case's
alert; RCA ranks causes for it, from the node scorer's digests and the
topology inferred from labels.  The same samples are turned into a metric
matrix (one row per series, a value per scrape, counters as rates) for the
two baselines of RCAEval/BARO, N-Sigma and RobustScorer, given the same
anomaly time (the alert's) and five minutes after it.

A cause is correct when it names the faulted entity: the GPU's UUID, the
port ``device/port`` of the node, the disk, the OSD, the node (node-wide
faults: anything on that node), the model or one of its replicas (a fault on
a whole model), the replica's pod.  Reported: AC@1, AC@3 and Avg@5 (RCAEval's
definitions) per fault type, per category and overall, for the anomaly time
as given and 60 s late.

Also: ``--latency`` times the ranking of 10,000 candidate series on one core
and RobustScorer on the same number of series; ``--scoring`` times one scrape
interval of a 64-node fleet through the node scorer.

Run: ``python benchmarks/rca_eval.py`` (the full table: 255 cases, about an
hour on two cores; ``--jobs`` runs cases in parallel) or with ``--targets 2
--repeats 1`` for a quick look.  Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from gpuslo.anomaly import baselines
from gpuslo.anomaly.digest import DIGEST_SCHEMA, merge_digests
from gpuslo.anomaly.model import EntityModel
from gpuslo.anomaly.rca import Cause, RcaAlert, RcaSettings, rank_causes
from gpuslo.anomaly.scorer import NodeScorer, ScorerSettings
from gpuslo.anomaly.signals import scorable_expr
from gpuslo.anomaly.topology import ENTITY_SCHEMA, Topology, entity_columns
from gpuslo.collectors.exposition import parse_exposition
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.simulator import Fleet, FleetSpec, TrainingSpec
from gpuslo.simulator.endpoints import Endpoint, endpoints
from gpuslo.simulator.faults import CATALOG, FaultSpec
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.budget import Stage2State
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec, input_metrics, load_specs, parse_yaml
from gpuslo.slo.windows import BurnRateWindowSpec, Severity

SCRAPE_S = 60.0
WARMUP_S = 300.0
BASELINE_MIN = 22  # scraped minutes before the earliest fault start
AFTER_ALERT_S = 300.0  # data kept after the alert (the baselines' anomalous window)
MAX_WAIT_S = 1200.0  # a fault that fires nothing in this long is a missed case
PROMETHEUS_KINDS = frozenset({"dcgm", "node_exporter", "kubelet_resource", "kubelet_cadvisor",
                              "ceph", "vllm", "sglang", "triton", "training"})
ENGINE_KINDS = frozenset({"vllm", "sglang", "triton"})
# Fault intensities drawn per case; CPU contention below 0.85 slows the training job's
# input pipeline less than its step-time SLO can see.
INTENSITY: dict[str, tuple[float, float]] = {"cpu_throttling": (0.85, 1.0)}

CATEGORY: dict[str, str] = {
    "xid_48": "GPU", "xid_79": "GPU", "xid_94": "GPU", "xid_95": "GPU",
    "thermal_throttle": "GPU", "power_cap": "GPU", "nvlink_errors": "GPU", "pcie_replay": "GPU",
    "ib_link_flap": "network", "ib_symbol_errors": "network", "roce_congestion": "network",
    "ceph_slow_ops": "storage", "disk_saturation": "storage",
    "cpu_throttling": "Kubernetes", "oom_kill": "Kubernetes",
    "kv_cache_pressure": "inference", "prefix_cache_collapse": "inference",
}

# SLOs the catalog lacks that a GPU fleet's on-call has anyway: training step time and
# liveness, and serving pods' availability (a rolling restart's one failed scrape is not a
# page; a crash loop's second outage within five minutes is).
EXTRA_SLOS = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: training-step-time}
spec:
  service: training
  indicator:
    metadata: {name: mean-step-under-1420ms}
    spec:
      thresholdMetric:
        metricSource: {type: gpuslo, spec: {metric: training_step_duration_seconds_sum,
                       per: training_step_duration_seconds_count, by: [job]}}
  timeWindow: [{duration: 28d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives: [{displayName: mean step under 1.42 s, op: lte, value: 1.42, target: 0.99,
                timeSliceTarget: 1, timeSliceWindow: 1m}]
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: training-job-up}
spec:
  service: training
  indicator:
    metadata: {name: job-running}
    spec:
      thresholdMetric:
        metricSource: {type: gpuslo, spec: {metric: training_job_up, by: [job]}}
  timeWindow: [{duration: 28d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives: [{displayName: running, op: gte, value: 1, target: 0.99, timeSliceTarget: 1,
                timeSliceWindow: 1m}]
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: serving-pod-up}
spec:
  service: inference
  indicator:
    metadata: {name: engine-target-up}
    spec:
      thresholdMetric:
        metricSource: {type: gpuslo, spec: {metric: gpuslo_scrape_up,
                       matchers: {namespace: inference}, by: [namespace, pod]}}
  timeWindow: [{duration: 28d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives: [{displayName: up, op: gte, value: 1, target: 0.9, timeSliceTarget: 1,
                timeSliceWindow: 1m}]
  alertPolicies:
    - kind: AlertPolicy
      metadata: {name: serving-pod-up-fast}
      spec:
        conditions:
          - kind: AlertCondition
            metadata: {name: pod-down-2-of-5-minutes, annotations: {gpuslo.io/short-window: 2m}}
            spec: {severity: page, condition: {kind: burnrate, op: gt, threshold: 3,
                   lookbackWindow: 5m}}
"""
# Page when both the 5-minute and the 2-minute window burn faster than this (per SLO).
FAST_FACTOR: dict[str, str] = {"serving-pod-up": "3", "kv-cache-hit-ratio": "1.5"}
DEFAULT_FACTOR = "3"


# Serving SLOs are kept per replica here (the catalog's are per model): a fault on one
# replica of six moves a model-wide ratio too little to page anyone.
PER_REPLICA = ("ttft", "inter-token-latency", "kv-cache-hit-ratio", "request-success")


def harness_specs() -> list[SloSpec]:
    """The catalog's SLIs and the extra ones, each with one fast page tier (2m & 5m)."""
    specs = load_specs([CATALOG_DIR]) + parse_yaml(EXTRA_SLOS, "<rca harness>")
    out = []
    for s in specs:
        tier = BurnRateWindowSpec(Severity.PAGE, timedelta(minutes=2), timedelta(minutes=5),
                                  Decimal(FAST_FACTOR.get(s.id, DEFAULT_FACTOR)))
        s = dataclasses.replace(s, windows=(tier,))
        if s.id in PER_REPLICA:
            s = dataclasses.replace(s, sli=dataclasses.replace(
                s.sli, by=("model_name", "namespace", "pod")))
        out.append(s)
    return out


# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fault with its distractors, on one seeded fleet."""

    kind: str
    target: str
    seed: int
    at_s: float  # fault start, seconds after scraping starts
    intensity: float
    benign: tuple[FaultSpec, ...]  # start_s relative to scraping start
    nodes: int = 10
    training_nodes: int = 5


def fleet_spec(seed: int, nodes: int = 10, training_nodes: int = 5) -> FleetSpec:
    """10 nodes x 8 GPUs: 5 serve the default models, 5 run one training job."""
    return FleetSpec(nodes=nodes, gpus_per_node=8, seed=seed,
                     training=TrainingSpec(nodes=training_nodes), routing="least_loaded")


def _targets(kind: str, fleet: Fleet) -> list[str]:
    """Entities a fault of ``kind`` can hit where some SLO of the set can see it."""
    job = fleet.training
    train_nodes = list(job.nodes) if job is not None else []
    vllm = [r for r in fleet.replicas if r.engine == "vllm"]
    train_gpus = [f"{n}/gpu{g.index}" for n in train_nodes
                  for g in fleet.node_by_name[n].gpus]
    serve_gpus = [f"{r.node}/gpu{g.index}" for r in vllm for g in r.gpus]
    ports = [f"{n.name}/{p.device}" for n in fleet.nodes for p in n.ports]
    train_ports = [f"{n}/{p.device}" for n in train_nodes for p in fleet.node_by_name[n].ports]
    services = sorted({r.service for r in vllm})
    replicas = [r.key for r in vllm if not r.legacy_names]
    return {
        "xid_48": train_gpus + serve_gpus, "xid_79": train_gpus + serve_gpus,
        "xid_94": train_gpus + serve_gpus, "xid_95": train_gpus + serve_gpus,
        "thermal_throttle": train_gpus + serve_gpus, "nvlink_errors": train_gpus + serve_gpus,
        "power_cap": train_gpus,
        "pcie_replay": train_gpus,
        "ib_link_flap": ports, "ib_symbol_errors": ports, "roce_congestion": train_ports,
        "ceph_slow_ops": [f"osd.{o.id}" for o in fleet.osds],
        "disk_saturation": [f"{n}/{d.name}" for n in train_nodes
                            for d in fleet.node_by_name[n].disks],
        "cpu_throttling": train_nodes,
        "oom_kill": replicas,
        "kv_cache_pressure": services + replicas,
        "prefix_cache_collapse": services + replicas,
    }[kind]


def _node_of(target: str) -> str:
    return target.split("/")[0] if target.startswith("node-") else ""


def make_cases(kinds: Sequence[str], targets: int, repeats: int, seed: int = 0, *,
               nodes: int = 10, training_nodes: int = 5,
               baseline_min: int = BASELINE_MIN) -> list[Case]:
    """``targets`` distinct entities x ``repeats`` per kind, with four distractors each.

    ``nodes``/``training_nodes`` and ``baseline_min`` shrink the cases (CI's small run).
    """
    cases: list[Case] = []
    for kind in kinds:
        rng = random.Random(f"{seed}-{kind}")
        probe = Fleet(fleet_spec(0, nodes, training_nodes))
        pool = _targets(kind, probe)
        # services first (a whole model), then a spread over nodes
        first = [t for t in pool if "/" not in t and not t.startswith(("node-", "osd."))]
        rest = [t for t in pool if t not in first]
        rng.shuffle(rest)
        chosen: list[str] = []
        for t in first + sorted(rest, key=lambda t: (_node_of(t) in {_node_of(c) for c in
                                                                      chosen}, )):
            if len(chosen) == targets:
                break
            if t not in chosen:
                chosen.append(t)
        for _ in range(repeats):
            for target in chosen:
                case_seed = rng.randrange(1_000_000)
                fleet = Fleet(fleet_spec(case_seed, nodes, training_nodes))
                at = baseline_min * 60.0 + rng.uniform(0.0, 240.0)
                intensity = round(rng.uniform(*INTENSITY.get(kind, (0.7, 1.0))), 2)
                cases.append(Case(kind, target, case_seed, at, intensity,
                                  _distractors(fleet, target, at, rng), nodes,
                                  training_nodes))
    return cases


def _distractors(fleet: Fleet, target: str, at: float, rng: random.Random) -> tuple[FaultSpec,
                                                                                      ...]:
    node = _node_of(target) or next((r.node for r in fleet.replicas if target.startswith(
        r.key) or r.key.startswith(target + "/")), "")
    job = fleet.training
    train = [n for n in (job.nodes if job is not None else []) if n != node]
    loaded = [f"{g.node}/gpu{g.index}" for g in fleet.gpus() if g.owner is not None
              and g.node != node and f"{g.node}/gpu{g.index}" != target]
    others = [r.key for r in fleet.replicas if r.node != node and r.key != target
              and not target.startswith(r.service)]

    def when() -> float:
        return at + rng.uniform(-360.0, 120.0)

    return (
        FaultSpec("checkpoint_write", rng.choice(train), when(), rng.uniform(180.0, 420.0),
                  round(rng.uniform(0.6, 1.0), 2)),
        FaultSpec("hot_gpu", rng.choice(loaded), when(), 1800.0, round(rng.uniform(0.8, 1.0), 2)),
        FaultSpec("pod_restart", rng.choice(others), when(), 60.0, 1.0),
        FaultSpec("traffic_ramp", "fleet", when() - 300.0, 2400.0,
                  round(rng.uniform(0.6, 1.0), 2)),
    )


# -- one case ---------------------------------------------------------------------------------


_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{|\s)", re.MULTILINE)


def _pod_labels(body: str, namespace: str, pod: str) -> str:
    """The page with ``namespace`` and ``pod`` on every sample (what Kubernetes service
    discovery relabelling adds to a scraped pod's series)."""
    extra = f'namespace="{namespace}",pod="{pod}"'

    def add(m: re.Match[str]) -> str:
        return f"{m.group(1)}{{{extra}," if m.group(2) == "{" else f"{m.group(1)}{{{extra}}} "

    return _SAMPLE_LINE.sub(add, body)


def scrape(fleet: Fleet, eps: Sequence[Endpoint]) -> pl.DataFrame:
    """One scrape of every Prometheus page at the fleet's time, with scrape health rows.

    Engine pages are labelled with their pod (what Kubernetes service discovery
    adds); every target gets a ``gpuslo_scrape_up`` row, 0 when its page is down.
    """
    ts = int(fleet.t * 1000)
    frames: list[pl.DataFrame] = []
    health: list[tuple[object, ...]] = []
    pods = {r.key: r.pod for r in fleet.replicas}
    for ep in eps:
        body = ep.render(fleet, ts)
        labels = {"collector": f"sim-{ep.source}", "target": f"http://{ep.node}/{ep.process}"
                                                              f"{ep.path}"}
        pod = pods.get(ep.entity or "") if ep.kind in ENGINE_KINDS else None
        if pod is not None:
            labels.update(namespace=pod.namespace, pod=pod.name)
        health.append((ts, ep.node, "gpuslo", "gpuslo_scrape_up", "gauge",
                       0.0 if body is None else 1.0, labels["target"], labels))
        if body is None:
            continue
        if pod is not None:
            body = _pod_labels(body, pod.namespace, pod.name)
        frames.append(parse_exposition(body, node=ep.node, source=ep.source, scrape_ts_ms=ts))
    frames.append(frame_from_rows(health))
    return pl.concat(frames)


@dataclass
class CaseResult:
    """Where each method ranked the faulted entity (1-based; None: not in its top 5)."""

    case: Case
    alert: str | None = None
    alert_delay_s: float | None = None
    ranks: dict[str, int | None] = field(default_factory=dict)
    top: dict[str, list[str]] = field(default_factory=dict)
    false_alerts: int = 0
    rank_ms: float = 0.0


def _truth(fleet: Fleet) -> dict[str, object]:
    """What the matcher needs to know of a fleet: GPU UUIDs, replicas' pods, models."""
    return {"gpus": {f"{g.node}/gpu{g.index}": g.uuid for g in fleet.gpus()},
            "replicas": {r.key: f"{r.pod.namespace}/{r.pod.name}" for r in fleet.replicas},
            "services": sorted({r.service for r in fleet.replicas})}


def _truth_match(target: str, truth: dict[str, object], topo: Topology) -> Callable[[str], bool]:
    """Does an entity key (``kind|node|id``) name the faulted entity?"""
    gpu = truth["gpus"]
    reps = truth["replicas"]
    services = set(truth["services"])  # type: ignore[call-overload]
    assert isinstance(gpu, dict) and isinstance(reps, dict)

    def ok(key: str) -> bool:
        ek, node, ent = key.split("|", 2)
        if target in gpu:
            return ek == "gpu" and (ent == gpu[target] or ent == target)
        if target.startswith("osd."):
            return ent == target
        if target in reps:
            return ent == reps[target]
        if target in services:
            if ek == "model":
                return ent == target
            info = topo.entities.get((ek, node, ent))
            return info is not None and info.model == target
        if "/" in target:  # port or disk
            n, dev = target.split("/", 1)
            return node == n and (ent == dev or ent.startswith(dev + "/"))
        # a node-wide fault: the node or anything on it
        return node == target or (ek == "node" and ent == target) or (
            ek not in ("model", "storage", "job") and _node_in(topo, (ek, node, ent), target))

    return ok


def _node_in(topo: Topology, key: tuple[str, str, str], node: str) -> bool:
    info = topo.entities.get(key)
    return info is not None and info.node == node


def _key(c: Cause) -> str:
    node = c.node if c.entity_kind in ("port", "disk", "node", "target", "other") else ""
    return f"{c.entity_kind}|{node}|{c.entity}"


def _series_matrix(frames: list[pl.DataFrame]) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """One row per series (entity key, metric), one column per scrape: gauges as they
    are, counters as per-second rates (resets: the new value), histogram and summary
    sums/counts as rates too.  The metric table RCAEval's baselines take."""
    allf = pl.concat(frames).filter(
        ~pl.col("kind").cast(pl.String).is_in(["histogram_bucket", "summary_quantile"])
        & scorable_expr())
    keys = allf.select("node", "source", "metric", "kind", "entity", "labels").unique(
        maintain_order=True)
    keys = keys.with_row_index("sid")
    ent = entity_columns(keys)
    ent = ent.with_columns(key=pl.concat_str(
        [pl.col("e_kind"),
         pl.when(pl.col("e_kind").is_in(["port", "disk", "node", "target", "other"]))
         .then(pl.col("e_node")).otherwise(pl.lit("")), pl.col("e_entity")], separator="|"))
    joined = allf.join(keys, on=["node", "source", "metric", "kind", "entity", "labels"],
                       how="left")
    times = np.sort(joined["ts"].dt.epoch("ms").unique().to_numpy())
    col = np.searchsorted(times, joined["ts"].dt.epoch("ms").to_numpy())
    sid = joined["sid"].to_numpy()
    val = joined["value"].to_numpy().astype(np.float64)
    mat = np.full((keys.height, times.size), np.nan)
    mat[sid, col] = val
    cum = ent["kind"].cast(pl.String).is_in(
        ["counter", "histogram_sum", "histogram_count", "summary_sum", "summary_count"]
    ).to_numpy()
    rates = np.full_like(mat, np.nan)
    dt = np.diff(times).astype(np.float64) / 1000.0
    d = np.diff(mat[cum], axis=1)
    d = np.where(d < 0, mat[cum][:, 1:], d)
    rates[np.flatnonzero(cum), 1:] = d / dt
    mat[cum] = rates[cum]
    # entity of the baseline rankings, with rank series folded into their GPU
    gpu_key = {}
    for r in ent.filter(pl.col("e_kind") == "gpu").select("e_node", "e_gpu", "e_entity"
                                                           ).iter_rows():
        if r[1] is not None and not r[2].startswith(f"{r[0]}/gpu"):
            gpu_key[f"gpu||{r[0]}/gpu{r[1]}"] = f"gpu||{r[2]}"
    ent = ent.with_columns(key=pl.col("key").replace(gpu_key))
    return ent, times, mat


def run_case(case: Case, late_s: Sequence[float] = (0.0, 60.0),
             scorer_settings: ScorerSettings | None = None,
             rca_settings: RcaSettings | None = None,
             debug: dict[str, object] | None = None, keep: str | None = None,
             baselines_too: bool = True) -> CaseResult:
    """Simulate one case end to end; where each method ranks the truth.

    Without ``baselines_too`` only gpuslo ranks, and the run stops at the alert.
    """
    specs = harness_specs()
    metrics = input_metrics(specs)
    fleet = Fleet(fleet_spec(case.seed, case.nodes, case.training_nodes))
    t0 = fleet.spec.start_s + WARMUP_S
    fault = FaultSpec(case.kind, case.target, t0 + case.at_s, 1200.0, case.intensity)
    fleet.inject(fault)
    for b in case.benign:
        fleet.inject_benign(dataclasses.replace(b, start_s=t0 + b.start_s))
    fleet.advance(t0)
    eps = [ep for ep in endpoints(fleet) if ep.kind in PROMETHEUS_KINDS]
    stage1, stage2, alerts = Stage1State(specs), Stage2State(specs), AlertEvaluator(specs)
    recorder = RecordingModel(seed=case.seed) if debug is not None and debug.get(
        "record") else None
    scorer = NodeScorer(scorer_settings, seed=case.seed, model=recorder)
    frames: list[pl.DataFrame] = []
    digests: list[pl.DataFrame] = []
    result = CaseResult(case)
    fired: tuple[str, dict[str, str], datetime] | None = None
    stop = fault.start_s + MAX_WAIT_S
    while fleet.t < stop:
        fleet.advance(fleet.t + SCRAPE_S)
        frame = scrape(fleet, eps)
        frames.append(frame)
        now = datetime.fromtimestamp(fleet.t, UTC)
        stage2.apply(stage1.apply(frame.filter(pl.col("metric").is_in(metrics)), partition=0))
        scorer.observe(frame)
        digests.append(scorer.advance(now))
        if int(fleet.t) % 60 == 0:
            for a in alerts.evaluate(stage2.report(now), now):
                if a.status is not AlertStatus.FIRING or a.fired_at != now:
                    continue
                if fleet.t < fault.start_s:
                    result.false_alerts += 1
                elif fired is None:
                    fired = (a.slo_id, dict(a.scope), now)
        after = AFTER_ALERT_S if baselines_too else max(late_s) + 60.0
        if fired is not None and fleet.t >= fired[2].timestamp() + after:
            break
    if fired is None:
        return result
    slo_id, scope, fired_at = fired
    result.alert = f"{slo_id} {scope}"
    result.alert_delay_s = fired_at.timestamp() - fault.start_s
    topo = Topology.from_entity_rows([scorer.entities()])
    truth = _truth(fleet)
    match = _truth_match(case.target, truth, topo)
    all_digests = merge_digests(digests)
    if keep is not None:
        _keep(keep, case, slo_id, scope, fired_at, truth, all_digests, scorer.entities())
    if debug is not None:
        debug.update(digests=all_digests, topology=topo, fleet=fleet, fired_at=fired_at,
                     fault=fault, scorer=scorer, match=match)
    ent, times, mat = _series_matrix(frames) if baselines_too else (pl.DataFrame(
        {"key": []}), np.zeros(0, np.int64), np.zeros((0, 0)))
    ent_keys = ent["key"].to_list()
    for late in late_s:
        anchor = fired_at + timedelta(seconds=late)
        alert = RcaAlert(slo_id, scope, "page", anchor)
        # the minutes before the anchor: what a live ranker has once the minute holding
        # the anchor has closed (at most a minute and the scorer's lateness later)
        visible = all_digests.filter(pl.col("minute") < anchor)
        t_rank = time.perf_counter()
        causes = rank_causes(visible, alert, topo, rca_settings)
        result.rank_ms = max(result.rank_ms, (time.perf_counter() - t_rank) * 1000.0)
        tag = f"+{int(late)}s"
        keys = [_key(c) for c in causes]
        result.ranks[f"gpuslo{tag}"] = _position(keys, match)
        result.top[f"gpuslo{tag}"] = [c.evidence for c in causes[:3]]
        # the same ranking without the isolation forest's rows (its contribution)
        plain = rank_causes(visible.filter(pl.col("detector") != "model"), alert, topo,
                            rca_settings)
        result.ranks[f"gpuslo-no-model{tag}"] = _position([_key(c) for c in plain], match)
        if not baselines_too:
            continue
        t_a = int(anchor.timestamp() * 1000)
        for name, fn, absolute in (("nsigma", baselines.nsigma, False),
                                   ("nsigma|z|", baselines.nsigma, True),
                                   ("robust", baselines.robust_scorer, False),
                                   ("robust|z|", baselines.robust_scorer, True)):
            scores = fn(mat, times, t_a, absolute=absolute)
            ranking = baselines.entity_ranking(scores, ent_keys)
            result.ranks[f"{name}{tag}"] = _position(ranking, match)
            result.top[f"{name}{tag}"] = ranking[:3]
    return result


def _case_id(case: Case) -> str:
    target = case.target.replace("/", "_").replace(".", "_")
    return f"{case.kind}-{target}-{case.seed}"


def _keep(folder: str, case: Case, slo_id: str, scope: dict[str, str], fired_at: datetime,
          truth: dict[str, object], digests: pl.DataFrame, entities: pl.DataFrame) -> None:
    """Save what ranking needs, so ``--rerank`` can rank again without simulating."""
    base = Path(folder) / _case_id(case)
    base.parent.mkdir(parents=True, exist_ok=True)
    digests.write_parquet(f"{base}.digest.parquet")
    entities.write_parquet(f"{base}.entities.parquet")
    meta = {"case": dataclasses.asdict(case), "slo": slo_id, "scope": scope,
            "fired_at": fired_at.isoformat(), "truth": truth}
    Path(f"{base}.json").write_text(json.dumps(meta))


def rerank(folder: str, rca_settings: RcaSettings | None = None) -> list[CaseResult]:
    """Rank every kept case again with the current ranking (the scorer's digests as kept)."""
    out: list[CaseResult] = []
    for meta_path in sorted(Path(folder).glob("*.json")):
        meta = json.loads(meta_path.read_text())
        c = meta["case"]
        case = Case(c["kind"], c["target"], c["seed"], c["at_s"], c["intensity"], ())
        base = str(meta_path)[: -len(".json")]
        digests = pl.read_parquet(f"{base}.digest.parquet")
        topo = Topology.from_entity_rows([pl.read_parquet(f"{base}.entities.parquet")])
        match = _truth_match(case.target, meta["truth"], topo)
        fired_at = datetime.fromisoformat(meta["fired_at"])
        result = CaseResult(case, alert=f"{meta['slo']} {meta['scope']}")
        for late in (0.0, 60.0):
            anchor = fired_at + timedelta(seconds=late)
            causes = rank_causes(digests.filter(pl.col("minute") < anchor),
                                 RcaAlert(meta["slo"], meta["scope"], "page", anchor), topo,
                                 rca_settings)
            tag = f"+{int(late)}s"
            result.ranks[f"gpuslo{tag}"] = _position([_key(x) for x in causes], match)
            result.top[f"gpuslo{tag}"] = [x.evidence for x in causes[:3]]
            plain = rank_causes(digests.filter((pl.col("minute") < anchor)
                                               & (pl.col("detector") != "model")),
                                RcaAlert(meta["slo"], meta["scope"], "page", anchor), topo,
                                rca_settings)
            result.ranks[f"gpuslo-no-model{tag}"] = _position([_key(x) for x in plain], match)
        out.append(result)
    return out


def _position(keys: Sequence[str], match: Callable[[str], bool]) -> int | None:
    for i, k in enumerate(keys[:5]):
        if match(k):
            return i + 1
    return None


# -- summary ----------------------------------------------------------------------------------


def ac_at(ranks: Iterable[int | None], k: int) -> float:
    """RCAEval's AC@k with one root cause per case: share of cases ranked within k."""
    rs = list(ranks)
    return sum(1 for r in rs if r is not None and r <= k) / len(rs) if rs else math.nan


def avg_at(ranks: Iterable[int | None], k: int = 5) -> float:
    """Avg@k = mean of AC@1..AC@k."""
    rs = list(ranks)
    return sum(ac_at(rs, j) for j in range(1, k + 1)) / k


METHODS = ("gpuslo", "gpuslo-no-model", "robust|z|", "robust", "nsigma|z|", "nsigma")


def summary(results: Sequence[CaseResult], tag: str = "+0s") -> pl.DataFrame:
    """AC@1, AC@3, Avg@5 per fault type, per category and overall, per method."""
    fired = [r for r in results if r.alert is not None]
    rows = []
    groups: list[tuple[str, list[CaseResult]]] = []
    for kind in sorted({r.case.kind for r in results}, key=lambda k: (CATEGORY[k], k)):
        groups.append((kind, [r for r in fired if r.case.kind == kind]))
    for cat in sorted(set(CATEGORY.values())):
        sel = [r for r in fired if CATEGORY[r.case.kind] == cat]
        if sel:
            groups.append((f"[{cat}]", sel))
    groups.append(("OVERALL", fired))
    methods = [m for m in METHODS if any(f"{m}{tag}" in r.ranks for r in fired)]
    for name, sel in groups:
        row: dict[str, object] = {"fault": name, "n": len(sel)}
        for m in methods:
            ranks = [r.ranks.get(f"{m}{tag}") for r in sel]
            row[f"{m} AC@1"] = ac_at(ranks, 1)
            if m in ("gpuslo", "robust|z|"):
                row[f"{m} AC@3"] = ac_at(ranks, 3)
                row[f"{m} Avg@5"] = avg_at(ranks)
        rows.append(row)
    return pl.DataFrame(rows)


def print_table(df: pl.DataFrame, title: str) -> None:
    """The summary as a fixed-width text table."""
    cols = df.columns
    width = {c: max(len(c), 6) for c in cols}
    width["fault"] = max(22, *(len(str(v)) for v in df["fault"]))
    print(f"\n{title}")
    print("  ".join(c.rjust(width[c]) if c != "fault" else c.ljust(width[c]) for c in cols))
    for row in df.iter_rows(named=True):
        cells = []
        for c in cols:
            v = row[c]
            text = f"{v:.2f}" if isinstance(v, float) else str(v)
            cells.append(text.ljust(width[c]) if c == "fault" else text.rjust(width[c]))
        print("  ".join(cells))


# -- the multivariate detector: isolation forest against the alternatives -----------------------


class RecordingModel(EntityModel):
    """The scorer's isolation forest, also keeping every minute's feature matrix."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.log: list[tuple[str, int, np.ndarray, np.ndarray]] = []

    def update(self, kind: str, minute: int, eids: np.ndarray, names: Sequence[str],
               values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        out = super().update(kind, minute, eids, names, values)
        km = self._kinds[kind]
        ids, x = km.rows[-1][1], km.rows[-1][2]
        self.log.append((kind, minute, ids, x))
        return out


def _detectors() -> dict[str, Callable[[], object] | None]:
    return {
        "max |z| (no model)": None,
        "IsolationForest 32 trees (shipped)": lambda: IsolationForest(
            n_estimators=32, max_samples=256, random_state=0),
        "IsolationForest 100 trees": lambda: IsolationForest(
            n_estimators=100, max_samples=256, random_state=0),
        "LocalOutlierFactor (novelty)": lambda: LocalOutlierFactor(
            n_neighbors=20, novelty=True),
        "EllipticEnvelope (robust covariance)": lambda: EllipticEnvelope(
            support_fraction=0.9, random_state=0),
        "OneClassSVM (rbf)": lambda: OneClassSVM(nu=0.05, gamma="scale"),
    }


def detector_study(cases: Sequence[Case], window: int = 60, refit: int = 15) -> None:
    """Replay each case's entity feature vectors through candidate detectors, rolling
    windows as the scorer fits them, and print how well each separates the faulted
    entity's minutes from every other entity-minute (ROC AUC, the faulted entity's
    share of top-1 minutes) and what it costs."""
    rows: dict[str, list[tuple[float, int]]] = {name: [] for name in _detectors()}
    top1: dict[str, list[int]] = {name: [] for name in _detectors()}
    fit_s: dict[str, list[float]] = {name: [] for name in _detectors()}
    score_s: dict[str, list[float]] = {name: [] for name in _detectors()}
    for n, case in enumerate(cases, 1):
        dbg: dict[str, object] = {"record": True}
        run_case(case, late_s=(0.0,), debug=dbg)
        if "scorer" not in dbg:
            continue
        scorer = dbg["scorer"]
        assert isinstance(scorer, NodeScorer)
        model = scorer._model
        assert isinstance(model, RecordingModel)
        match = dbg["match"]
        fault = dbg["fault"]
        assert isinstance(fault, FaultSpec) and callable(match)
        start_min = int(fault.start_s // 60)
        by_kind: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for kind, minute, ids, x in model.log:
            by_kind.setdefault(kind, []).append((minute, ids, x))
        for log in by_kind.values():
            width = max(x.shape[1] for _, _, x in log)
            pad = [(m, ids, np.pad(x, ((0, 0), (0, width - x.shape[1])))) for m, ids, x in log]
            labels = [np.array([bool(match(_entity_key(scorer.entity_of(int(e)))))
                                and m >= start_min for e in ids]) for m, ids, _ in pad]
            if not any(lab.any() for lab in labels):
                continue
            for name, make in _detectors().items():
                fitted, fitted_at = None, -10**9
                for i, (m, _ids, x) in enumerate(pad):
                    if make is None:
                        score = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x))
                    else:
                        if fitted is None or m - fitted_at >= refit:
                            train = np.vstack([xx for mm, _, xx in pad[: i + 1]
                                               if mm > m - window])
                            if train.shape[0] < 40:
                                continue
                            t = time.perf_counter()
                            try:
                                fitted = make()
                                fitted.fit(train)  # type: ignore[attr-defined]
                            except Exception:  # a detector that cannot fit this window
                                fitted = None
                                continue
                            fit_s[name].append(time.perf_counter() - t)
                            fitted_at = m
                        t = time.perf_counter()
                        score = -fitted.score_samples(x)  # type: ignore[attr-defined]
                        score_s[name].append(time.perf_counter() - t)
                    lab = labels[i]
                    rows[name].extend(zip(score.tolist(), lab.astype(int).tolist(),
                                          strict=True))
                    if lab.any():
                        top1[name].append(int(lab[int(np.argmax(score))]))
        print(f"\r[{n}/{len(cases)}] {case.kind}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print("\nmultivariate detector over entity z-score vectors (entity-minutes; positive: "
          "the faulted entity while faulted)")
    print(f"{'detector':<38} {'ROC AUC':>8} {'top-1':>7} {'fit ms':>8} {'score ms':>9}")
    for name in _detectors():
        pairs = rows[name]
        if not pairs:
            continue
        auc = _auc(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
        t1 = float(np.mean(top1[name])) if top1[name] else math.nan
        fit_ms = 1000.0 * float(np.mean(fit_s[name])) if fit_s[name] else 0.0
        score_ms = 1000.0 * float(np.mean(score_s[name])) if score_s[name] else 0.0
        print(f"{name:<38} {auc:8.3f} {t1:7.2f} {fit_ms:8.1f} {score_ms:9.1f}")
    print("(top-1: share of the faulted entity's faulty minutes in which it scores highest "
          "of its kind; fit on up to an hour of every entity's minutes, score one minute)")


def _entity_key(e: tuple[str, str, str]) -> str:
    kind, node, ent = e
    return f"{kind}|{node if kind in ('port', 'disk', 'node', 'target', 'other') else ''}|{ent}"


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    pos = label == 1
    if pos.all() or not pos.any():
        return math.nan
    order = np.argsort(score, kind="stable")
    ranks = np.empty(score.size)
    ranks[order] = np.arange(1, score.size + 1)
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n_pos = int(pos.sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (~pos).sum()))


# -- latency ----------------------------------------------------------------------------------


def ranking_latency(candidates: int = 10_000, nodes: int = 64, repeat: int = 5) -> None:
    """Time one ranking of ``candidates`` candidate series (digest rows) on a 64-node fleet,
    and RobustScorer over the same number of series x 70 points."""
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    kinds = ("gpu", "port", "disk", "pod")
    sigs = {"gpu": ["gpu_temperature", "gpu_sm_clock", "gpu_power", "gpu_utilization"],
            "port": ["port_rcv_errors", "port_xmit_wait", "port_xmit_throughput"],
            "disk": ["disk_read_latency", "disk_busy"], "pod": ["container_cpu",
                                                                "container_memory"]}
    ent_rows, dig = [], []
    per_node = candidates // nodes
    for n in range(nodes):
        node = f"node-{n}"
        for i in range(per_node):
            kind = kinds[i % 4]
            ent = {"gpu": f"GPU-{n:03d}-{i:04d}", "port": f"mlx5_{i % 8}/1",
                   "disk": f"nvme{i % 4}n1", "pod": f"ns/pod-{n}-{i}"}[kind]
            sig = sigs[kind][i % len(sigs[kind])]
            ent_rows.append({"kind": kind, "node": node, "entity": ent, "model": None,
                             "pod": None, "gpu_index": str(i % 8) if kind == "gpu" else None,
                             "job": None, "replica": False, "node_alias": None})
            minute = t0 - timedelta(minutes=int(rng.integers(0, 30)))
            dig.append({"minute": minute, "node": node, "kind": kind, "entity": ent,
                        "signal": sig, "metric": sig, "series": "", "role": "cause",
                        "detector": "baseline", "direction": "up", "z": float(rng.normal(6, 2)),
                        "value": 1.0, "baseline": 0.5, "scale": 0.1, "onset": minute,
                        "peers": 7, "peer_value": 0.5, "detail": None})
    topo = Topology.from_entity_rows([pl.DataFrame(ent_rows, schema=ENTITY_SCHEMA)])
    digest = pl.DataFrame(dig, schema=DIGEST_SCHEMA)
    alert = RcaAlert("ttft", {"node": "node-3"}, "page", t0)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        rank_causes(digest, alert, topo)
        times.append(time.perf_counter() - t)
    values = rng.normal(size=(candidates, 70))
    ts = np.arange(70, dtype=np.int64) * 30_000
    rtimes = []
    for _ in range(repeat):
        t = time.perf_counter()
        baselines.robust_scorer(values, ts, int(ts[60]), absolute=True)
        rtimes.append(time.perf_counter() - t)
    print(f"\nranking {candidates} candidate series ({nodes} nodes, {len(topo.entities)} "
          f"entities): best {min(times) * 1000:.0f} ms, median {np.median(times) * 1000:.0f} ms "
          f"(POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', 'default')})")
    print(f"RobustScorer on {candidates} series x 70 points: best {min(rtimes) * 1000:.0f} ms")


def scoring_latency(nodes: int = 64, minutes: int = 12) -> None:
    """Time the node scorer on a ``nodes``-node fleet: one scrape interval (observe) and
    one minute close (advance), after a warm-up long enough to have baselines."""
    fleet = Fleet(FleetSpec(nodes=nodes, seed=1))
    fleet.advance(fleet.t + WARMUP_S)
    eps = [ep for ep in endpoints(fleet) if ep.kind in PROMETHEUS_KINDS]
    for model in (True, False):
        settings = ScorerSettings() if model else ScorerSettings(model=None)
        scorer = NodeScorer(settings)
        f = Fleet(FleetSpec(nodes=nodes, seed=1))
        f.advance(f.t + WARMUP_S)
        observe, close, rows = [], [], 0
        for _ in range(minutes * 2):
            f.advance(f.t + SCRAPE_S)
            frame = scrape(f, eps if f is fleet else [ep for ep in endpoints(f)
                                                      if ep.kind in PROMETHEUS_KINDS])
            rows = frame.height
            t = time.perf_counter()
            scorer.observe(frame)
            observe.append(time.perf_counter() - t)
            t = time.perf_counter()
            scorer.advance(datetime.fromtimestamp(f.t, UTC))
            close.append(time.perf_counter() - t)
        steady_o = observe[4:]
        closes = [c for c in close[4:] if c > 0.0005] or close
        print(f"\nscorer, {nodes} nodes ({rows} samples a scrape, {scorer.series_count} series), "
              f"model {'on' if model else 'off'}: observe one scrape median "
              f"{np.median(steady_o) * 1000:.0f} ms; close one minute median "
              f"{np.median(closes) * 1000:.0f} ms, max {max(closes) * 1000:.0f} ms; "
              f"per 30 s interval {(np.median(steady_o) + np.median(closes) / 2) * 1000:.0f} ms")


# -- main -------------------------------------------------------------------------------------


def run_all(cases: Sequence[Case], jobs: int, progress: bool = True,
            keep: str | None = None) -> list[CaseResult]:
    """Every case, in parallel processes, with a progress line."""
    results: list[CaseResult] = []
    started = time.perf_counter()
    one = partial(run_case, keep=keep)
    if jobs <= 1:
        it: Iterable[CaseResult] = map(one, cases)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=jobs)
        it = pool.map(one, cases)
    try:
        for i, r in enumerate(it, 1):
            results.append(r)
            if progress:
                el = time.perf_counter() - started
                eta = el / i * (len(cases) - i)
                print(f"\r[{i}/{len(cases)}] {r.case.kind:<22} {r.case.target:<28} "
                      f"rank {r.ranks.get('gpuslo+0s')!s:<4} elapsed {el:5.0f} s "
                      f"eta {eta:5.0f} s", end="", file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    if progress:
        print(file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=5, help="target entities per fault type")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per target")
    ap.add_argument("--kinds", nargs="*", default=sorted(CATALOG), help="fault types")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--latency", action="store_true", help="ranking latency only")
    ap.add_argument("--scoring", action="store_true", help="scorer latency only (64 nodes)")
    ap.add_argument("--verbose", action="store_true", help="print each case's top causes")
    ap.add_argument("--detector-study", action="store_true",
                    help="compare the isolation forest with other detectors on the cases")
    ap.add_argument("--keep", metavar="DIR", help="save each case's digests and topology")
    ap.add_argument("--rerank", metavar="DIR",
                    help="rank the cases saved by --keep again (no simulation, no baselines)")
    args = ap.parse_args(argv)
    if args.rerank:
        again = rerank(args.rerank)
        print_table(summary(again, "+0s"), "re-ranked: anomaly time = the alert's firing time")
        print_table(summary(again, "+60s"), "re-ranked: anomaly time given 60 s late")
        return 0
    if args.latency:
        ranking_latency()
        return 0
    if args.scoring:
        scoring_latency()
        return 0
    cases = make_cases(args.kinds, args.targets, args.repeats, args.seed)
    if args.detector_study:
        detector_study(cases)
        return 0
    results = run_all(cases, args.jobs, keep=args.keep)
    missed = [r for r in results if r.alert is None]
    false_alerts = sum(r.false_alerts for r in results)
    print(f"{len(results)} cases; {len(missed)} without an alert; {false_alerts} alerts "
          f"before a fault started")
    for r in missed:
        print(f"  no alert: {r.case.kind} {r.case.target} seed {r.case.seed}")
    delays = [r.alert_delay_s for r in results if r.alert_delay_s is not None]
    if delays:
        print(f"alert delay after fault start: median {np.median(delays):.0f} s")
    if args.verbose:
        for r in results:
            print(f"{r.case.kind} {r.case.target} -> {r.alert} rank {r.ranks.get('gpuslo+0s')}")
            for line in r.top.get("gpuslo+0s", []):
                print(f"    {line}")
            print(f"    robust|z|: {r.top.get('robust|z|+0s')}")
    print_table(summary(results, "+0s"), "anomaly time = the alert's firing time")
    print_table(summary(results, "+60s"), "anomaly time given 60 s late")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
