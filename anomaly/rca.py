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

import polars as pl

from gpuslo.anomaly.cause import Cause, CauseKind, format_rca_annotation
from gpuslo.anomaly.digest import DIGEST_SCHEMA, merge_digests
from gpuslo.anomaly.scorer import NodeScorer, ScorerSettings
from gpuslo.anomaly.signals import BY_NAME, UNKNOWN_ERRORS_PRIOR, UNKNOWN_GAUGE
from gpuslo.anomaly.topology import ENTITY_SCHEMA, NODE_SCOPED, EntityKey, Topology
from gpuslo.pipeline.schema import validate
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertReport
from gpuslo.slo.backtest import AlertEpisode


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


# -- scoring helpers --------------------------------------------------------------------------

_EVENT_PRIOR = 0.6  # floor of an event's prior (a state change is never mere context)
_VANISHED_PRIOR = {"gpu": 0.9, "port": 0.8, "disk": 0.7, "osd": 0.8}
_RESET_PRIOR = 0.55


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
    are read, so the caller may pass all it holds.  Columnar throughout (one Polars
    plan per step); Python objects are made only for the causes returned.
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
    rows, model_z = _aggregate(d, topology)
    if rows.height == 0:
        return []
    scope = topology.scope_keys(alert.scope)
    dist = _distance_frame(topology.distances(scope)) if scope else None
    rows = _score(rows, anchor, dist, st)
    rows = _explain_by_load(rows)
    rows = _lift_groups(rows, topology, dist, anchor, st)
    ranked = _entity_scores(rows, model_z, st)
    keys = pl.DataFrame([list(k) for k in ranked], schema=_KEY, orient="row")
    top = rows.join(keys, on=_KEY, how="semi").sort("score", descending=True,
                                                     maintain_order=True)
    causes: list[Cause] = []
    for key, score in ranked.items():
        e = _entity(key, top)
        e.score = score
        causes.append(_cause(len(causes) + 1, e, topology))
    return causes


_KEY = ["k_kind", "k_node", "k_ent"]


def _aggregate(d: pl.DataFrame, topology: Topology) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One candidate per (entity, signal, detector): its peak row, earliest onset; entity
    keys resolved in the topology (node aliases, training ranks as their GPUs)."""
    absz = pl.col("z").abs()
    g = (
        d.with_columns(_absz=absz)
        .sort("_absz", descending=True, maintain_order=True)
        .group_by(["node", "kind", "entity", "signal", "detector"], maintain_order=True)
        .agg(
            pl.col("role").first(), pl.col("z").first(), pl.col("onset").min(),
            pl.col("value").first(), pl.col("baseline").first(),
            pl.col("direction").first(), pl.col("detail").first(),
            pl.col("peers").first(), pl.col("peer_value").first(),
            pl.col("minute").n_unique().alias("minutes"),
        )
    )
    if topology.node_alias:
        g = g.with_columns(node=pl.col("node").replace(topology.node_alias))
    g = g.with_columns(
        k_kind=pl.col("kind"),
        k_node=pl.when(pl.col("kind").is_in(list(NODE_SCOPED))).then(pl.col("node"))
        .otherwise(pl.lit("")),
        k_ent=pl.col("entity"),
    )
    if topology.aliases:
        alias = pl.DataFrame(
            [(a[0], a[1], a[2], k[0], k[1], k[2]) for a, k in topology.aliases.items()],
            schema=["a_kind", "a_node", "a_ent", "t_kind", "t_node", "t_ent"], orient="row")
        g = g.join(alias, left_on=_KEY, right_on=["a_kind", "a_node", "a_ent"], how="left",
                   maintain_order="left").with_columns(
            k_kind=pl.coalesce("t_kind", "k_kind"), k_node=pl.coalesce("t_node", "k_node"),
            k_ent=pl.coalesce("t_ent", "k_ent")).drop("t_kind", "t_node", "t_ent")
    model = g.filter(pl.col("detector") == "model").group_by(_KEY).agg(
        model_z=pl.col("z").max())
    return g.filter(pl.col("detector") != "model").with_columns(
        lifted=pl.lit(False)), model


def _signal_table() -> pl.DataFrame:
    return pl.DataFrame(
        [(name, spec.prior, spec.bad) for name, spec in BY_NAME.items()],
        schema={"signal": pl.String(), "_prior": pl.Float64(), "_bad": pl.String()},
        orient="row")


_SIGNALS = _signal_table()


def _distance_frame(dist: Mapping[EntityKey, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"k_kind": [k[0] for k in dist], "k_node": [k[1] for k in dist],
         "k_ent": [k[2] for k in dist], "_hops": list(dist.values())},
        schema={"k_kind": pl.String(), "k_node": pl.String(), "k_ent": pl.String(),
                "_hops": pl.Int64()})


def _hop_expr(st: RcaSettings) -> pl.Expr:
    weights = pl.Series(list(st.hop_weight))
    last = len(st.hop_weight) - 1
    return (pl.when(pl.col("_hops").is_null()).then(pl.lit(st.hop_weight[-1]))
            .otherwise(pl.col("_hops").clip(0, last).replace_strict(
                list(range(len(st.hop_weight))), weights, return_dtype=pl.Float64)))


def _with_hops(rows: pl.DataFrame, dist: pl.DataFrame | None, st: RcaSettings) -> pl.DataFrame:
    if dist is None:
        return rows.with_columns(_hop=pl.lit(1.0))
    return rows.join(dist, on=_KEY, how="left", maintain_order="left").with_columns(
        _hop=_hop_expr(st)).drop("_hops")


def _score(rows: pl.DataFrame, anchor: datetime, dist: pl.DataFrame | None,
           st: RcaSettings) -> pl.DataFrame:
    """Each candidate signal's score (see the module docstring)."""
    sig = pl.col("signal")
    prior = (
        pl.when(sig == "vanished").then(
            pl.col("kind").replace_strict(_VANISHED_PRIOR, default=0.6,
                                          return_dtype=pl.Float64))
        .when(sig == "counter_reset").then(pl.lit(_RESET_PRIOR))
        .otherwise(pl.coalesce(
            pl.col("_prior"),
            pl.when(pl.col("role") == "cause").then(pl.lit(UNKNOWN_ERRORS_PRIOR))
            .otherwise(pl.lit(UNKNOWN_GAUGE.prior))))
    )
    prior = pl.when((pl.col("detector") == "event") & (sig != "vanished")
                    & (sig != "counter_reset")).then(
        pl.max_horizontal(prior, pl.lit(_EVENT_PRIOR))).otherwise(prior)
    bad = pl.col("_bad").fill_null("both")
    direction = pl.when(pl.col("detector").is_in(["event", "vanished"]) | (bad == "both")
                        | (bad == pl.col("direction"))).then(pl.lit(1.0)).otherwise(
        pl.lit(st.off_direction))
    lead = (pl.lit(anchor) - pl.col("onset")).dt.total_milliseconds() / 1000.0
    grace = max(st.grace.total_seconds(), 1.0)
    look = st.lookback.total_seconds()
    tf = (pl.when(lead < 0).then(pl.max_horizontal(
        pl.lit(st.late_factor), 1.0 - (1.0 - st.late_factor) * (-lead / grace)))
          .when(lead > look).then(pl.lit(st.stale_factor))
          .otherwise(1.0 - 0.25 * lead / look))
    strength = 1.0 - (-(pl.col("z").abs()) / st.strength_scale).exp()
    out = _with_hops(rows.join(_SIGNALS, on="signal", how="left", maintain_order="left"),
                     dist, st)
    return out.with_columns(
        bad=bad, score=prior * strength * direction * tf * pl.col("_hop")).drop(
        "_prior", "_bad")


# GPU signals that follow the work the GPU is given: when they move with its utilisation
# (hotter and more power with more work, lower clocks and power when idle) and NVML gives
# no throttle reason, the change is load, not a fault.
_LOAD_FOLLOWERS = ("gpu_sm_clock", "gpu_power", "gpu_pcie_tx", "gpu_pcie_rx",
                   "gpu_nvlink_throughput", "gpu_energy", "gpu_engine_active",
                   "gpu_memory_copy_util", "gpu_temperature", "gpu_memory_temperature")
_THROTTLE_SIGNALS = ("gpu_clock_reasons", "gpu_power_violation", "gpu_thermal_violation",
                     "gpu_power_limit")
_LOAD_DISCOUNT = 0.35


def _explain_by_load(rows: pl.DataFrame) -> pl.DataFrame:
    """Discount a GPU's load-following changes that go the way its utilisation went, when
    NVML gave no throttle reason (clock-event reasons say *why* clocks are low; neither
    idleness nor more work is one)."""
    sig = pl.col("signal")
    util = sig == "gpu_utilization"
    idle = (util & (pl.col("direction") == "down")).any().over(_KEY)
    busy = (util & (pl.col("direction") == "up")).any().over(_KEY)
    throttled = sig.is_in(_THROTTLE_SIGNALS).any().over(_KEY)
    follows = (((pl.col("direction") == "down") & idle)
               | ((pl.col("direction") == "up") & busy & (sig != "gpu_sm_clock")))
    hit = (pl.col("k_kind") == "gpu") & ~throttled & sig.is_in(_LOAD_FOLLOWERS) & follows
    return rows.with_columns(score=pl.when(hit).then(pl.col("score") * _LOAD_DISCOUNT)
                             .otherwise(pl.col("score")))


def _lift_groups(rows: pl.DataFrame, topology: Topology, dist: pl.DataFrame | None,
                 anchor: datetime, st: RcaSettings) -> pl.DataFrame:
    """Attribute a change most of a peer group shares to the group (assumption 6): a
    node's GPUs, ports or disks and a model's replicas first, then nodes of one role."""
    members = topology.peer_groups()
    for level in (0, 1):
        groups = members.filter(pl.col("level") == level).drop("level")
        rows = _lift_level(rows, groups, dist, st)
    return rows


def _lift_level(rows: pl.DataFrame, groups: pl.DataFrame, dist: pl.DataFrame | None,
                st: RcaSettings) -> pl.DataFrame:
    cand = rows.filter(pl.col("detector").is_in(["baseline", "event"])).join(
        groups, on=_KEY, how="inner")
    if cand.height == 0:
        return rows
    cand = cand.select(*_KEY, "p_kind", "p_node", "p_ent", "what", "size", "signal",
                       "direction", "node", "detector", "role", "z", "onset", "value",
                       "baseline", "minutes", "bad", "score", "_hop")
    share = st.group_share
    agg = (
        cand.sort("score", descending=True, maintain_order=True)
        .group_by(["p_kind", "p_node", "p_ent", "what", "signal", "direction"],
                  maintain_order=True)
        .agg(
            who=pl.struct(_KEY).n_unique(), size=pl.col("size").first(),
            mid=pl.struct(pl.all()).get(pl.len() // 2),
            onset_min=pl.col("onset").min(),
        )
        .filter(pl.col("who") >= pl.max_horizontal(
            pl.lit(st.group_min), (pl.col("size") * share).ceil().cast(pl.Int64)))
    )
    if agg.height == 0:
        return rows
    mid = agg.select("p_kind", "p_node", "p_ent", "signal", "direction", "who", "size", "what",
                     "onset_min", pl.col("mid").struct.unnest().name.prefix("m_"))
    lifted = mid.select(
        k_kind=pl.col("p_kind"), k_node=pl.col("p_node"), k_ent=pl.col("p_ent"),
        node=pl.when(pl.col("p_node") != "").then(pl.col("p_node")).otherwise(
            pl.col("m_node")),
        kind=pl.col("p_kind"), entity=pl.col("p_ent"), signal=pl.col("signal"),
        detector=pl.col("m_detector"), role=pl.col("m_role"), z=pl.col("m_z"),
        onset=pl.col("onset_min"), value=pl.col("m_value"), baseline=pl.col("m_baseline"),
        direction=pl.col("direction"),
        detail=pl.format("{} of {} {}", pl.col("who"), pl.col("size"), pl.col("what")),
        peers=pl.col("size").cast(pl.Int32), peer_value=pl.lit(None, pl.Float64),
        minutes=pl.col("m_minutes"), bad=pl.col("m_bad"), _mid_score=pl.col("m_score"),
        _mid_hop=pl.col("m__hop"), lifted=pl.lit(True),
    )
    lifted = _with_hops(lifted, dist, st).with_columns(
        score=pl.col("_mid_score") * pl.col("_hop") / pl.col("_mid_hop").clip(1e-9) * 1.05
    ).drop("_mid_score", "_mid_hop")
    hit = agg.select("p_kind", "p_node", "p_ent", "what", "signal", "direction",
                     _halve=pl.lit(True))
    flagged = (
        rows.join(groups.select(*_KEY, "p_kind", "p_node", "p_ent", "what"), on=_KEY,
                  how="left", maintain_order="left")
        .join(hit, on=["p_kind", "p_node", "p_ent", "what", "signal", "direction"], how="left",
              maintain_order="left")
        .with_columns(score=pl.when(pl.col("_halve").fill_null(False)
                                    & pl.col("detector").is_in(["baseline", "event"]))
                      .then(pl.col("score") * 0.5).otherwise(pl.col("score")))
        .drop("p_kind", "p_node", "p_ent", "what", "_halve")
    )
    return pl.concat([flagged, lifted.select(flagged.columns)], how="vertical_relaxed")


def _entity_scores(rows: pl.DataFrame, model: pl.DataFrame,
                   st: RcaSettings) -> dict[EntityKey, float]:
    """Each entity's score: its best signal + 0.3 and 0.15 of the next two, the forest's
    corroboration on top; in ranking order (ties by key)."""
    best = rows.group_by([*_KEY, "signal"]).agg(pl.col("score").max())
    top = (
        best.sort("score", descending=True)
        .group_by(_KEY)
        .agg(pl.col("score").head(3).alias("s"))
        .with_columns(score=pl.col("s").list.get(0, null_on_oob=True).fill_null(0.0)
                      + 0.3 * pl.col("s").list.get(1, null_on_oob=True).fill_null(0.0)
                      + 0.15 * pl.col("s").list.get(2, null_on_oob=True).fill_null(0.0))
        .join(model, on=_KEY, how="left")
        .with_columns(score=pl.col("score") * (1.0 + st.model_bonus * (
            pl.col("model_z").fill_null(0.0) / 10.0).clip(0.0, 1.0)))
        .sort(["score", "k_kind", "k_node", "k_ent"], descending=[True, False, False, False])
        .head(st.max_causes)
    )
    return {(r[0], r[1], r[2]): float(r[3]) for r in top.select(*_KEY, "score").iter_rows()}


def _entity(key: EntityKey, rows: pl.DataFrame) -> _Entity:
    """The entity's candidate signals, best first (``rows`` already sorted by score)."""
    part = rows.filter((pl.col("k_kind") == key[0]) & (pl.col("k_node") == key[1])
                       & (pl.col("k_ent") == key[2]))
    e = _Entity(key)
    for r in part.iter_rows(named=True):
        e.signals.append(_Signal(key, r["node"], r["entity"], r["kind"], r["signal"],
                                 r["role"], r["detector"], float(r["z"]), r["onset"],
                                 r["value"], r["baseline"], r["direction"], r["detail"],
                                 int(r["peers"] or 0), r["peer_value"], int(r["minutes"]),
                                 score=float(r["score"])))
    return e


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


# How a proposal names an entity of each kind (GPUs and pods say more: see _who).
_WHO = {
    "port": "port {ent} of {node}", "disk": "disk {ent} of {node}",
    "replica": "replica {ent}", "model": "model {ent}", "osd": "Ceph {ent}",
    "storage": "storage {ent}", "job": "job {ent}", "target": "target {ent} on {node}",
    "node": "node {ent}", "fleet": "the fleet's {ent}",
}


def _who(key: EntityKey, node: str, topology: Topology) -> str:
    kind, _, ent = key
    if kind == "gpu":
        idx = topology.gpu_index(key)
        short = ent if len(ent) <= 14 else ent[:12] + "…"
        return f"GPU {idx} of {node} ({short})" if idx is not None else f"GPU {short} on {node}"
    if kind == "pod":
        info = topology.entities.get(key)
        model = f" ({info.model})" if info is not None and info.model else ""
        return f"pod {ent}{model} on {node}" if node else f"pod {ent}{model}"
    if kind in _WHO:
        return _WHO[kind].format(ent=ent, node=node)
    return f"{ent} on {node}" if node else ent


def _phrase(s: _Signal) -> str:
    spec = BY_NAME.get(s.signal)
    label = spec.label if spec is not None else s.signal
    unit = spec.unit if spec is not None else ""
    if s.detector == "vanished":
        return "stopped reporting (series vanished)"
    if s.detail and s.detail.endswith(("gpus", "ports", "disks", "replicas", "nodes")):
        verb = "" if s.detector == "event" else (" up" if s.direction == "up" else " down")
        return f"{label}{verb} on {s.detail}"
    if s.detector == "event":
        if s.signal == "gpu_clock_reasons":
            return f"clock-throttled ({s.detail})" if s.detail else "clock-throttled"
        return s.detail or label
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


# -- the ranking side of the stream ------------------------------------------------------------


class DigestWindow:
    """What the alerting side keeps to rank causes: recent digests and the topology.

    Fed the digests and entity tables the scorers publish (any number, any order,
    re-deliveries harmless); ``causes(alert)`` ranks an alert at any time.  A
    live alert should be ranked again as digests arrive until every scorer has
    closed the minute holding its anchor (the scorers' :attr:`NodeScorer.closed_through`),
    then its ranking is final.  ``snapshot``/``restore`` for checkpoints.
    """

    def __init__(self, retention: timedelta = timedelta(minutes=90),
                 settings: RcaSettings | None = None) -> None:
        self.retention = retention
        self.settings = settings or RcaSettings()
        self._digests = pl.DataFrame(schema=DIGEST_SCHEMA)
        self._entities = pl.DataFrame(schema=ENTITY_SCHEMA)
        self.topology = Topology()

    def add_digest(self, digest: pl.DataFrame) -> None:
        """Keep a digest's rows (older than ``retention`` behind the newest are dropped)."""
        if digest.height == 0:
            return
        merged = merge_digests([self._digests, digest])
        newest = merged["minute"].max()
        assert isinstance(newest, datetime)
        self._digests = merged.filter(pl.col("minute") >= newest - self.retention)

    def add_entities(self, entities: pl.DataFrame) -> None:
        """Merge a scorer's entity table into the topology."""
        if entities.height == 0:
            return
        new = entities.join(self._entities, on=list(ENTITY_SCHEMA.names()), how="anti",
                            nulls_equal=True)
        if new.height:
            self._entities = pl.concat([self._entities, new.cast(dict(ENTITY_SCHEMA))])  # type: ignore[arg-type]
            self.topology.add(new)

    def causes(self, alert: RcaAlert) -> list[Cause]:
        """The alert's ranked causes from what has arrived so far."""
        return rank_causes(self._digests, alert, self.topology, self.settings)

    def latest_scores(self) -> pl.DataFrame:
        """Per detector and entity, the strongest row of the newest minute: ``detector,
        kind, node, entity, metric, score`` (|z|, or an event's equivalent strength)."""
        newest = self.newest
        if newest is None:
            return pl.DataFrame(schema={"detector": pl.String(), "kind": pl.String(),
                                        "node": pl.String(), "entity": pl.String(),
                                        "metric": pl.String(), "score": pl.Float64()})
        return (self._digests.filter(pl.col("minute") == newest)
                .with_columns(score=pl.col("z").abs())
                .sort("score", descending=True, maintain_order=True)
                .group_by(["detector", "kind", "node", "entity"], maintain_order=True)
                .agg(pl.col("metric").first(), pl.col("score").first())
                .sort(["detector", "kind", "node", "entity"]))

    @property
    def newest(self) -> datetime | None:
        """The newest minute any digest has described (None before the first)."""
        if self._digests.height == 0:
            return None
        m = self._digests["minute"].max()
        assert isinstance(m, datetime)
        return m

    def snapshot(self) -> dict[str, pl.DataFrame]:
        """``digests`` and ``entities``, for a checkpoint."""
        return {"digests": self._digests, "entities": self._entities}

    def restore(self, snapshot: Mapping[str, pl.DataFrame]) -> None:
        """Replace the state with a :meth:`snapshot`."""
        self._digests = pl.DataFrame(schema=DIGEST_SCHEMA)
        self._entities = pl.DataFrame(schema=ENTITY_SCHEMA)
        self.topology = Topology()
        self.add_entities(snapshot["entities"])
        self.add_digest(snapshot["digests"])


AlertKey = tuple[str, str]  # (SLO id, scope key): how exporters and Alertmanager match causes


class AlertRanking:
    """The causes of a stage-2 evaluation's alerts, from a :class:`DigestWindow`.

    Every alert that has fired (firing or resolved) is ranked; the severities of one
    scope share the ranking of the earliest-anchored one.  A ranking is final, and
    kept instead of recomputed, once ``settle`` has passed after the anchor's grace
    on ``now`` and a digest of a minute past the grace has arrived (the scorers
    have closed the minutes that can hold its causes).
    """

    def __init__(self, window: DigestWindow, settle: timedelta = timedelta(minutes=2)) -> None:
        self.window = window
        self.settle = settle
        self._final: dict[tuple[AlertKey, datetime], tuple[Cause, ...]] = {}

    def causes(self, alerts: Sequence[AlertReport],
               now: datetime) -> dict[AlertKey, tuple[Cause, ...]]:
        """Ranked causes by (SLO id, scope key); alerts that never fired are left out."""
        first: dict[AlertKey, RcaAlert] = {}
        for a in alerts:
            if a.fired_at is None:
                continue
            key = (a.slo_id, cv.scope_key(dict(a.scope)))
            r = RcaAlert.from_report(a)
            if key not in first or r.anchor < first[key].anchor:
                first[key] = r
        out: dict[AlertKey, tuple[Cause, ...]] = {}
        live: set[tuple[AlertKey, datetime]] = set()
        grace = self.window.settings.grace
        for key, r in first.items():
            ck = (key, r.anchor)
            live.add(ck)
            got = self._final.get(ck)
            if got is None:
                got = tuple(self.window.causes(r))
                newest = self.window.newest
                if (now >= r.anchor + grace + self.settle and newest is not None
                        and newest >= r.anchor + grace):
                    self._final[ck] = got
            out[key] = got
        for ck in [k for k in self._final if k not in live]:
            del self._final[ck]
        return out


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


__all__ = [
    "AlertKey", "AlertRanking", "Cause", "CauseKind", "DigestWindow", "RcaAlert",
    "RcaSettings", "causes_for_alerts", "format_rca_annotation", "rank_causes",
    "score_samples",
]
