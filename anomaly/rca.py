"""Root-cause ranking: digests + an alert + the topology -> ranked, evidenced causes.

When an SLO alert fires, every entity that deviated around that time is a
candidate.  Each candidate signal is scored as

    prior(signal) x strength(|z|) x direction x time x topology

and an entity's score is its best signal plus a little of its next two
(corroboration).  The assumptions behind each factor, which hold on any fleet
rather than on one simulator, are the ranking's contract:

1. **Causes before symptoms.**  A deviation of a cause-side signal (XID, link
   down, throttling, OOM kill, disk or OSD latency, KV-cache pressure...) weighs
   more than one of a symptom (TTFT, step time, queue length), which weighs
   more than context (load, throughput).  The table is :mod:`anomaly.signals`.
2. **Events are strong evidence.**  A normally-zero counter that moves, a
   state that changes or a series that vanishes scores like a large deviation
   whatever its size; magnitude beyond that adds little (``strength``
   saturates), so the largest number in the fleet does not win by being large.
3. **Direction matters.**  A signal moving the way that hurts (clock down,
   latency up, hit ratio down) counts fully; the other way a third.
4. **Causes start before the SLI degrades.**  The onset must fall in the
   ``lookback`` before the alert's anchor (its degradation time, else its
   firing time) or at most ``grace`` after it; later onsets are consequences,
   much earlier ones pre-existing conditions.
5. **Near the alert's scope.**  The fewer topology hops from what the alert is
   about (a model, a node, a port), the more likely; far entities are not
   excluded, only weighed down (shared storage is one hop from every node).
6. **What a whole group does is the group's.**  When most of a group of peers
   (a node's GPUs or ports, a model's replicas) deviate together, the change is
   attributed to the group (the node, the model): it is common-mode, not the
   fault of any one member.

Pure: frames and values in, a list of frozen :class:`Cause` out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import polars as pl

from gpuslo.anomaly.digest import DIGEST_SCHEMA, merge_digests
from gpuslo.anomaly.scorer import NodeScorer, ScorerSettings
from gpuslo.anomaly.signals import BY_NAME, UNKNOWN_ERRORS_PRIOR, UNKNOWN_GAUGE
from gpuslo.anomaly.topology import EntityKey, Topology
from gpuslo.pipeline.schema import validate
from gpuslo.slo.alerting import AlertReport
from gpuslo.slo.backtest import AlertEpisode

CauseKind = Literal["cause", "symptom"]


@dataclass(frozen=True)
class RcaAlert:
    """What ranking needs to know about an alert.

    ``degraded_at`` is when the SLI started to degrade, when known (the ranking
    anchors on it); otherwise ``fired_at`` is used.
    """

    slo_id: str
    scope: Mapping[str, str]
    severity: str
    fired_at: datetime
    degraded_at: datetime | None = None

    @property
    def anchor(self) -> datetime:
        """The time causes must precede."""
        return self.degraded_at or self.fired_at

    @classmethod
    def from_report(cls, report: AlertReport) -> RcaAlert:
        """From a live alert (:class:`slo.alerting.AlertReport`)."""
        fired = report.fired_at or report.active_since or report.evaluated_at
        return cls(report.slo_id, dict(report.scope), report.severity.value, fired,
                   report.active_since if report.active_since != fired else None)

    @classmethod
    def from_episode(cls, episode: AlertEpisode) -> RcaAlert:
        """From a backtest's alert episode (:class:`slo.backtest.AlertEpisode`)."""
        return cls(episode.slo_id, dict(episode.scope), episode.severity.value,
                   episode.fired_at)


@dataclass(frozen=True)
class RcaSettings:
    """Time window, weights and output size of the ranking.

    Attributes:
        lookback: how long before the anchor a cause may have started.
        grace: how long after the anchor an onset still counts fully.
        max_causes: causes returned.
        hop_weight: topology factor by hops from the alert's scope (last: farther).
        off_direction: factor of a deviation in the direction that does not hurt.
        late_factor, stale_factor: time factor of an onset after the grace, or
            before the lookback (a condition that predates the incident).
        group_share: share of a peer group deviating together that makes the
            change the group's (at least ``group_min`` members).
    """

    lookback: timedelta = timedelta(minutes=30)
    grace: timedelta = timedelta(minutes=2)
    max_causes: int = 5
    hop_weight: tuple[float, ...] = (1.0, 1.0, 0.9, 0.75, 0.55, 0.4, 0.3)
    off_direction: float = 0.35
    late_factor: float = 0.35
    stale_factor: float = 0.4
    group_share: float = 0.6
    group_min: int = 3
    strength_scale: float = 8.0
    model_bonus: float = 0.15


@dataclass(frozen=True)
class Cause:
    """One ranked root-cause candidate of an alert, with its evidence."""

    rank: int
    entity: str
    node: str
    entity_kind: str
    signal: str
    kind: CauseKind
    score: float
    onset: datetime
    baseline: float | None
    observed: float | None
    direction: str
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``onset`` in ISO 8601)."""
        return {
            "rank": self.rank, "entity": self.entity, "node": self.node,
            "entity_kind": self.entity_kind, "signal": self.signal, "kind": self.kind,
            "score": round(self.score, 4), "onset": self.onset.isoformat(),
            "baseline": self.baseline, "observed": self.observed,
            "direction": self.direction, "evidence": self.evidence,
        }


def format_rca_annotation(causes: Sequence[Cause], top: int = 3) -> str:
    """The Alertmanager ``rca`` annotation: the top causes, one line each."""
    return "\n".join(f"{c.rank}. [{c.kind}] {c.evidence}" for c in causes[:top])


# -- scoring helpers --------------------------------------------------------------------------

_EVENT_PRIOR = 0.6  # floor of an event's prior (a state change is never mere context)
_VANISHED_PRIOR = {"gpu": 0.9, "port": 0.8, "disk": 0.7, "osd": 0.8}
_RESET_PRIOR = 0.55
_ENTITY_ROLE_PRIOR = {"cause": 1.0, "symptom": 0.35, "context": 0.5}


def _prior(signal: str, detector: str, kind: str, role: str) -> float:
    if signal == "vanished":
        return _VANISHED_PRIOR.get(kind, 0.6)
    if signal == "counter_reset":
        return _RESET_PRIOR
    spec = BY_NAME.get(signal)
    if spec is not None:
        p = spec.prior
    else:  # unknown metrics: an error counter by its name (see signals.lookup), else context
        p = UNKNOWN_ERRORS_PRIOR if role == "cause" else UNKNOWN_GAUGE.prior
    if detector == "event":
        p = max(p, _EVENT_PRIOR)
    return p


def _bad_direction(signal: str) -> str:
    spec = BY_NAME.get(signal)
    return spec.bad if spec is not None else "both"


@dataclass
class _Signal:
    key: EntityKey
    node: str
    entity: str
    kind: str
    signal: str
    role: str
    detector: str
    z: float
    onset: datetime
    value: float | None
    baseline: float | None
    direction: str
    detail: str | None
    peers: int
    peer_value: float | None
    minutes: int
    score: float = 0.0


@dataclass
class _Entity:
    key: EntityKey
    signals: list[_Signal] = field(default_factory=list)
    model_z: float = 0.0
    score: float = 0.0


def rank_causes(
    digests: pl.DataFrame | Iterable[pl.DataFrame],
    alert: RcaAlert,
    topology: Topology,
    settings: RcaSettings | None = None,
) -> list[Cause]:
    """Rank the candidates of ``alert`` from the digests of any number of scorers.

    Only digest rows of minutes in ``[anchor - lookback - 15 min, anchor + grace]``
    are read, so the caller may pass all it holds.
    """
    st = settings or RcaSettings()
    d = digests if isinstance(digests, pl.DataFrame) else merge_digests(digests)
    if d.height == 0:
        return []
    anchor = alert.anchor
    lo = anchor - st.lookback - timedelta(minutes=15)
    hi = anchor + st.grace
    d = d.filter((pl.col("minute") >= lo) & (pl.col("minute") <= hi))
    if d.height == 0:
        return []
    signals, model_z = _aggregate(d, topology)
    scope = topology.scope_keys(alert.scope)
    dist = topology.distances(scope) if scope else {}
    ents: dict[EntityKey, _Entity] = {}
    for s in signals:
        s.score = _signal_score(s, anchor, dist, bool(scope), st)
        ents.setdefault(s.key, _Entity(s.key)).signals.append(s)
    for key, mz in model_z.items():
        if key in ents:
            ents[key].model_z = mz
    for e in ents.values():
        _explain_by_load(e)
    _lift_groups(ents, topology, dist, bool(scope), anchor, st)
    for e in ents.values():
        e.signals.sort(key=lambda x: -x.score)
        best: dict[str, float] = {}
        for s in e.signals:
            best.setdefault(s.signal, s.score)
        ranked = sorted(best.values(), reverse=True)
        e.score = sum(w * v for w, v in zip((1.0, 0.3, 0.15), ranked, strict=False))
        e.score *= 1.0 + st.model_bonus * min(1.0, e.model_z / 10.0)
    order = sorted((e for e in ents.values() if e.signals), key=lambda e: (-e.score, e.key))
    causes: list[Cause] = []
    for e in order[: st.max_causes]:
        causes.append(_cause(len(causes) + 1, e, topology))
    return causes


def _aggregate(d: pl.DataFrame,
               topology: Topology) -> tuple[list[_Signal], dict[EntityKey, float]]:
    """One candidate per (entity, signal, detector): its peak row, earliest onset."""
    absz = pl.col("z").abs()
    g = (
        d.with_columns(_absz=absz)
        .sort("_absz", descending=True)
        .group_by(["node", "kind", "entity", "signal", "detector"], maintain_order=True)
        .agg(
            pl.col("role").first(), pl.col("z").first(), pl.col("onset").min(),
            pl.col("value").first(), pl.col("baseline").first(),
            pl.col("direction").first(), pl.col("detail").first(),
            pl.col("peers").first(), pl.col("peer_value").first(),
            pl.col("minute").n_unique().alias("minutes"),
        )
    )
    signals: list[_Signal] = []
    model_z: dict[EntityKey, float] = {}
    for r in g.iter_rows(named=True):
        key = topology.resolve(r["kind"], r["node"], r["entity"])
        if r["detector"] == "model":
            model_z[key] = max(model_z.get(key, 0.0), float(r["z"]))
            continue
        signals.append(_Signal(key, topology.canonical_node(r["node"]), r["entity"], r["kind"],
                               r["signal"], r["role"], r["detector"], float(r["z"]),
                               r["onset"], r["value"], r["baseline"], r["direction"],
                               r["detail"], int(r["peers"] or 0), r["peer_value"],
                               int(r["minutes"])))
    return signals, model_z


def _time_factor(onset: datetime, anchor: datetime, st: RcaSettings) -> float:
    """1 for an onset just before the anchor, less the earlier it is (a quarter at the
    lookback), ``stale_factor`` past it; after the anchor down to ``late_factor`` at the
    end of the grace (what starts after the SLI degraded is likely its consequence)."""
    lead = (anchor - onset).total_seconds()
    grace = max(st.grace.total_seconds(), 1.0)
    if lead < 0:
        return max(st.late_factor, 1.0 - (1.0 - st.late_factor) * (-lead / grace))
    if lead > st.lookback.total_seconds():
        return st.stale_factor
    return 1.0 - 0.25 * lead / st.lookback.total_seconds()


def _hop_factor(key: EntityKey, dist: Mapping[EntityKey, int], scoped: bool,
                st: RcaSettings) -> float:
    if not scoped:
        return 1.0
    hops = dist.get(key)
    if hops is None:
        return st.hop_weight[-1]
    return st.hop_weight[min(hops, len(st.hop_weight) - 1)]


def _signal_score(s: _Signal, anchor: datetime, dist: Mapping[EntityKey, int], scoped: bool,
                  st: RcaSettings) -> float:
    prior = _prior(s.signal, s.detector, s.kind, s.role)
    strength = 1.0 - math.exp(-abs(s.z) / st.strength_scale)
    bad = _bad_direction(s.signal)
    direction = 1.0 if (s.detector in ("event", "vanished") or bad == "both"
                        or bad == s.direction) else st.off_direction
    return (prior * strength * direction * _time_factor(s.onset, anchor, st)
            * _hop_factor(s.key, dist, scoped, st))


# GPU signals that follow the work the GPU is given: when the GPU simply got less work
# (its utilisation fell), their fall is load, not a fault.
_LOAD_FOLLOWERS = frozenset({"gpu_sm_clock", "gpu_power", "gpu_pcie_tx", "gpu_pcie_rx",
                             "gpu_nvlink_throughput", "gpu_energy", "gpu_engine_active",
                             "gpu_memory_copy_util", "gpu_temperature",
                             "gpu_memory_temperature"})
_LOAD_DISCOUNT = 0.35


def _explain_by_load(e: _Entity) -> None:
    """Discount a GPU's load-following drops when its utilisation fell too and NVML gave
    no throttle reason (clock-event reasons say *why* clocks are low; idle is not one)."""
    if e.key[0] != "gpu":
        return
    idle = any(s.signal == "gpu_utilization" and s.direction == "down" for s in e.signals)
    throttled = any(s.signal in ("gpu_clock_reasons", "gpu_power_violation",
                                 "gpu_thermal_violation", "gpu_power_limit")
                    for s in e.signals)
    if not idle or throttled:
        return
    for s in e.signals:
        if s.signal in _LOAD_FOLLOWERS and s.direction == "down":
            s.score *= _LOAD_DISCOUNT


def _group_of(key: EntityKey, e: _Entity, topology: Topology) -> tuple[EntityKey, str] | None:
    """The peer group an entity belongs to and the entity the group stands for."""
    info = topology.entities.get(key)
    if info is None:
        return None
    if key[0] in ("gpu", "port", "disk") and info.node:
        return ("node", info.node, info.node), f"{key[0]}s"
    if key[0] in ("pod", "replica") and info.model:
        return ("model", "", info.model), "replicas"
    if key[0] == "node":
        return ("fleet", "", f"{topology.node_role(key[2])} nodes"), "nodes"
    return None


def _lift_groups(ents: dict[EntityKey, _Entity], topology: Topology,
                 dist: Mapping[EntityKey, int], scoped: bool, anchor: datetime,
                 st: RcaSettings) -> None:
    """Attribute a change most of a peer group shares to the group (assumption 6)."""
    members: dict[tuple[EntityKey, str], list[EntityKey]] = {}
    for key in topology.entities:
        if key in topology.aliases:
            continue
        g = _group_of(key, ents.get(key, _Entity(key)), topology)
        if g is not None:
            members.setdefault(g, []).append(key)
    for (parent, what), keys in members.items():
        if len(keys) < st.group_min:
            continue
        by_signal: dict[tuple[str, str], list[_Signal]] = {}
        for k in keys:
            e = ents.get(k)
            if e is None:
                continue
            for s in e.signals:
                if s.detector in ("baseline", "event"):
                    by_signal.setdefault((s.signal, s.direction), []).append(s)
        for (signal, _direction), sigs in by_signal.items():
            who = {s.key for s in sigs}
            if len(who) < max(st.group_min, math.ceil(st.group_share * len(keys))):
                continue
            sigs.sort(key=lambda s: -s.score)
            mid = sigs[len(sigs) // 2]
            # the group's score is its typical member's (discounts such as load included),
            # carried at the group's own topology distance
            hop = _hop_factor(parent, dist, scoped, st) / max(
                _hop_factor(mid.key, dist, scoped, st), 1e-9)
            lifted = _Signal(parent, parent[1] or mid.node, parent[2], parent[0], signal,
                             mid.role, mid.detector, mid.z, min(s.onset for s in sigs),
                             mid.value, mid.baseline, mid.direction,
                             f"{len(who)} of {len(keys)} {what}", len(keys), None,
                             mid.minutes, score=mid.score * hop * 1.05)
            for s in sigs:
                s.score *= 0.5
            ents.setdefault(parent, _Entity(parent)).signals.append(lifted)


# -- evidence ---------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str) -> str:
    if v is None or not math.isfinite(v):
        return "?"
    a = abs(v)
    if unit in ("B", "B/s"):
        for div, suffix in ((1 << 30, "Gi"), (1 << 20, "Mi"), (1 << 10, "Ki")):
            if a >= div:
                return f"{v / div:.1f} {suffix}{unit}"
    if unit == "s" and a < 1.0:
        return f"{v * 1000:.0f} ms" if a >= 0.001 else f"{v * 1e6:.0f} µs"
    if unit == "ns/s":
        return f"{v / 1e7:.0f} % of the time"
    if a >= 10_000:
        for big, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= big:
                return f"{v / big:.1f}{suffix}{unit}".strip()
    num = f"{v:.0f}" if a >= 100 else f"{v:.2g}" if a < 0.1 else f"{v:.1f}"
    return f"{num} {unit}".strip() if unit else num


def _who(key: EntityKey, node: str, topology: Topology) -> str:
    kind, _, ent = key
    info = topology.entities.get(key)
    if kind == "gpu":
        idx = topology.gpu_index(key)
        short = ent if len(ent) <= 14 else ent[:12] + "…"
        return f"GPU {idx} of {node} ({short})" if idx is not None else f"GPU {short} on {node}"
    if kind == "port":
        return f"port {ent} of {node}"
    if kind == "disk":
        return f"disk {ent} of {node}"
    if kind == "pod":
        model = f" ({info.model})" if info is not None and info.model else ""
        return f"pod {ent}{model} on {node}" if node else f"pod {ent}{model}"
    if kind == "replica":
        return f"replica {ent}"
    if kind == "model":
        return f"model {ent}"
    if kind == "osd":
        return f"Ceph {ent}"
    if kind == "storage":
        return f"storage {ent}"
    if kind == "job":
        return f"job {ent}"
    if kind == "target":
        return f"target {ent} on {node}"
    if kind == "node":
        return f"node {ent}"
    if kind == "fleet":
        return f"the fleet's {ent}"
    return f"{ent} on {node}" if node else ent


def _phrase(s: _Signal) -> str:
    spec = BY_NAME.get(s.signal)
    label = spec.label if spec is not None else s.signal
    unit = spec.unit if spec is not None else ""
    if s.detector == "vanished":
        return "stopped reporting (series vanished)"
    if s.detector == "event":
        if s.signal == "gpu_clock_reasons":
            return f"clock-throttled ({s.detail})" if s.detail else "clock-throttled"
        return s.detail or label
    if s.detail and s.detail.endswith(("gpus", "ports", "disks", "replicas")):
        verb = "up" if s.direction == "up" else "down"
        return f"{label} {verb} on {s.detail}"
    if s.detector == "peer" and s.peer_value is not None and s.value is not None:
        diff = s.value - s.peer_value
        where = "above" if diff > 0 else "below"
        return f"{label} {_fmt(abs(diff), unit)} {where} its {s.peers} peers"
    verb = "up" if s.direction == "up" else "down"
    text = f"{label} {verb} from {_fmt(s.baseline, unit)} to {_fmt(s.value, unit)}"
    if s.peers and s.peer_value is not None and s.value is not None and spec is not None and (
            spec.unit in ("°C", "MHz", "W")):
        diff = s.value - s.peer_value
        text += f", {_fmt(abs(diff), unit)} {'above' if diff > 0 else 'below'} its {s.peers} peers"
    return text


def _consistent(s: _Signal) -> bool:
    """A signal that moved the way that hurts (worth quoting as corroboration)."""
    bad = _bad_direction(s.signal)
    return s.detector in ("event", "vanished") or bad == "both" or bad == s.direction


def _cause(rank: int, e: _Entity, topology: Topology) -> Cause:
    top = e.signals[0]
    second = next((s for s in e.signals[1:] if s.signal != top.signal
                   and s.score > 0.25 * top.score and _consistent(s)), None)
    onset = min(s.onset for s in e.signals[:3])
    node = top.node if e.key[0] not in ("model", "storage", "job") else ""
    text = f"{_who(e.key, top.node, topology)}: {_phrase(top)}"
    if second is not None:
        text += f" and {_phrase(second)}"
    text += f" since {onset.astimezone(UTC):%H:%M}"
    role: CauseKind = "cause" if top.role == "cause" else "symptom"
    return Cause(rank=rank, entity=e.key[2], node=node, entity_kind=e.key[0], signal=top.signal,
                 kind=role, score=float(e.score), onset=onset, baseline=top.baseline,
                 observed=top.value, direction=top.direction, evidence=text)


# -- backtests --------------------------------------------------------------------------------


def score_samples(samples: pl.DataFrame, settings: ScorerSettings | None = None, *,
                  seed: int = 0) -> tuple[pl.DataFrame, Topology]:
    """Run one scorer over recorded samples, minute by minute; all digests and the topology."""
    samples = validate(samples).sort("ts")
    scorer = NodeScorer(settings, seed=seed)
    if samples.height == 0:
        return pl.DataFrame(schema=DIGEST_SCHEMA), Topology()
    minute = samples["ts"].dt.truncate("1m")
    parts: list[pl.DataFrame] = []
    for (m,), chunk in samples.with_columns(_m=minute).partition_by(
            "_m", as_dict=True, maintain_order=True).items():
        scorer.observe(chunk.drop("_m"))
        assert isinstance(m, datetime)
        parts.append(scorer.advance(m + timedelta(minutes=1) + scorer.settings.lateness))
    last = samples["ts"].max()
    assert isinstance(last, datetime)
    parts.append(scorer.advance(last + timedelta(minutes=2) + scorer.settings.lateness))
    digests = pl.concat([p for p in parts if p.height] or [pl.DataFrame(schema=DIGEST_SCHEMA)])
    return digests, Topology.from_entity_rows([scorer.entities()])


def causes_for_alerts(
    samples: pl.DataFrame,
    alerts: Sequence[RcaAlert | AlertEpisode],
    *,
    scorer_settings: ScorerSettings | None = None,
    settings: RcaSettings | None = None,
    seed: int = 0,
) -> list[list[Cause]]:
    """Ranked causes of every alert of a backtest (what ``gpuslo replay --rca`` calls).

    ``samples`` are the recorded sample frame (gpuslo's own recordings or a
    Prometheus export read by ``collectors.history.read_exposition``); the
    topology is inferred from their labels.  One list of causes per alert, in
    the alerts' order.
    """
    digests, topology = score_samples(samples, scorer_settings, seed=seed)
    out: list[list[Cause]] = []
    for a in alerts:
        alert = a if isinstance(a, RcaAlert) else RcaAlert.from_episode(a)
        out.append(rank_causes(digests, alert, topology, settings))
    return out
