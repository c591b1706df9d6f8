"""Topology from labels: model → replicas/pods → node → GPUs, HCA ports, disks; storage → nodes.

RCA needs to know how far a candidate is from what an alert is about, and
which entities are peers.  Nothing here reads a CMDB or the Kubernetes API:
every relation comes from labels the sources already put on their series, so
the same code works on gpuslo's own recordings, on a live stream and on a
Prometheus export read by ``collectors.history.read_exposition`` (labels
``job``/``instance``, upstream names, plus the normalised ``gpuslo_*`` rows):

* a GPU is its ``UUID`` (``uuid``, ``gpu_uuid``; ``/GPU_I_ID`` for a MIG slice) on
  the node named by ``Hostname`` (``hostname``; else the row's node); the pod it
  is assigned to comes from dcgm-exporter's ``namespace``/``pod`` labels;
* an RDMA port is ``device/port`` and a disk ``device``, on the row's node;
* a pod is ``namespace/pod`` (kubelet, cAdvisor, and any series relabelled with
  them); an inference replica is the pod its engine series are labelled with,
  else the collector's entity, else ``model@node``; its model is ``model_name``
  (``model`` for Triton);
* a Ceph OSD is ``ceph_daemon``; the storage cluster is shared by every node
  (no label says which node reads which pool: the one assumption made here);
* a training job is the ``job`` label of ``training_*`` series, its ranks'
  ``node``/``gpu`` labels tie it to nodes and GPUs;
* a scrape target is its ``target`` label (gpuslo's health rows) or
  ``instance`` (Prometheus ``up``), tied to a pod when labelled with one.

A row's node is the ``node`` column, except on DCGM rows, which say
``Hostname``; when the two differ (a Prometheus export whose ``instance`` is
the exporter's IP) the column's value is recorded as an alias of the host
name, so both spellings resolve to one node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from gpuslo.pipeline.schema import label

# Entity table: one row per entity (what the scorer publishes and the ranker merges).
ENTITY_SCHEMA: pl.Schema = pl.Schema(
    {
        "kind": pl.String(),
        "node": pl.String(),
        "entity": pl.String(),
        "model": pl.String(),
        "pod": pl.String(),
        "gpu_index": pl.String(),
        "job": pl.String(),
        "replica": pl.Boolean(),
        "node_alias": pl.String(),
    }
)

# Kinds whose identifiers are only unique within a node.
NODE_SCOPED = frozenset({"port", "disk", "node", "target", "other"})
_ENGINE_PREFIXES = ("vllm:", "sglang:", "nv_inference_", "nv_trt_llm_", "trtllm_")
_HEALTH = ("gpuslo_scrape_up", "up")


def _first(*names: str) -> pl.Expr:
    """The first of several alias labels that is present and non-empty (null if none)."""
    return pl.coalesce([pl.when(label(n) != "").then(label(n)) for n in names])


def _nonempty(e: pl.Expr) -> pl.Expr:
    return e.is_not_null() & (e != "")


def entity_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (sample schema) with the entity of each row: kind, node, entity, links.

    Added columns: ``e_kind``, ``e_node``, ``e_entity``, ``e_model``, ``e_pod``,
    ``e_gpu`` (the GPU's index on its node), ``e_replica`` (an inference engine's
    series: its pod is a replica), ``e_job``, ``e_node_alias``.  A replica whose
    engine series carry a pod label *is* that pod (kind ``pod``), so its kubelet
    and engine series describe one entity.
    Pure and vectorised; callers run it once per new series, not per sample.
    """
    metric = pl.col("metric")
    node_col = pl.col("node")
    uuid = _first("UUID", "uuid", "gpu_uuid")
    mig = label("GPU_I_ID")
    host = _first("Hostname", "hostname")
    ns = _first("namespace", "pod_namespace", "exported_namespace")
    pod = _first("pod", "pod_name", "exported_pod")
    model = _first("model_name", "model")
    device = label("device")
    port = label("port")
    gpu_idx = label("gpu")
    node_label = label("node")
    job = _first("exported_job", "job")
    entity_col = pl.col("entity")
    pod_id = pl.when(_nonempty(pod)).then(pl.concat_str([ns.fill_null(""), pl.lit("/"), pod]))
    is_engine = pl.any_horizontal([metric.str.starts_with(p) for p in _ENGINE_PREFIXES])
    is_health = metric.is_in(list(_HEALTH))
    is_rank = metric.str.starts_with("training_rank_") & _nonempty(gpu_idx)
    is_port = (metric.str.starts_with("node_infiniband_") | metric.str.starts_with("infiniband_")
               | metric.str.starts_with("gpuslo_rdma_"))
    is_disk = metric.str.starts_with("node_disk_") | metric.str.starts_with("diskstats_")
    is_ceph = metric.str.starts_with("ceph_")
    is_gpu = (metric == "gpuslo_gpu_xid_event") | _nonempty(uuid)
    row_node = pl.when(_nonempty(node_col)).then(node_col).otherwise(
        pl.coalesce([pl.when(_nonempty(node_label)).then(node_label), host,
                     label("instance").str.replace(r"^\[?([^\]]*?)\]?(:\d+)?$", "${1}"),
                     pl.lit("")]))
    node = (
        pl.when(is_gpu & _nonempty(host)).then(host)
        .when(is_rank & _nonempty(node_label)).then(node_label)
        .otherwise(row_node)
    )
    port_id = (pl.when(_nonempty(port)).then(pl.concat_str([device, pl.lit("/"), port]))
               .otherwise(device))
    kind = (
        pl.when(is_gpu).then(pl.lit("gpu"))
        .when(is_rank).then(pl.lit("gpu"))
        .when(is_port & (_nonempty(device) | _nonempty(entity_col))).then(pl.lit("port"))
        .when(is_disk & _nonempty(device)).then(pl.lit("disk"))
        .when(is_ceph & label("ceph_daemon").str.starts_with("osd.").fill_null(False))
        .then(pl.lit("osd"))
        .when(is_ceph | metric.str.starts_with("lustre_")).then(pl.lit("storage"))
        .when(is_health).then(pl.lit("target"))
        .when(_nonempty(pod)).then(pl.lit("pod"))
        .when(is_engine).then(pl.lit("replica"))
        .when(metric.str.starts_with("training_")).then(pl.lit("job"))
        .when(metric.str.starts_with("container_") | metric.str.starts_with("pod_")
              | metric.str.starts_with("node_") | metric.str.starts_with("machine_"))
        .then(pl.lit("node"))
        .when(_nonempty(entity_col)).then(pl.lit("other"))
        .otherwise(pl.lit("node"))
    )
    gpu_uuid = pl.when(_nonempty(mig)).then(pl.concat_str([uuid, pl.lit("/"), mig])).otherwise(
        uuid)
    entity = (
        pl.when(metric == "gpuslo_gpu_xid_event").then(entity_col)
        .when(_nonempty(uuid)).then(gpu_uuid)
        .when(is_rank).then(pl.concat_str([node, pl.lit("/gpu"), gpu_idx]))
        .when(is_port).then(pl.when(_nonempty(device)).then(port_id).otherwise(entity_col))
        .when(is_disk & _nonempty(device)).then(device)
        .when(is_ceph & label("ceph_daemon").str.starts_with("osd.").fill_null(False))
        .then(label("ceph_daemon"))
        .when(is_ceph).then(pl.lit("ceph"))
        .when(metric.str.starts_with("lustre_")).then(pl.lit("lustre"))
        .when(is_health).then(pl.coalesce([label("target"), label("instance"), entity_col]))
        .when(_nonempty(pod)).then(pod_id)
        .when(is_engine & _nonempty(entity_col)).then(entity_col)
        .when(is_engine).then(pl.concat_str([model.fill_null("?"), pl.lit("@"), node]))
        .when(metric.str.starts_with("training_")).then(job.fill_null("training"))
        .when(metric.str.starts_with("container_") | metric.str.starts_with("pod_")
              | metric.str.starts_with("node_") | metric.str.starts_with("machine_"))
        .then(node)
        .when(_nonempty(entity_col)).then(entity_col)
        .otherwise(node)
    )
    return frame.with_columns(
        e_kind=kind,
        e_node=node.fill_null(""),
        e_entity=entity.fill_null(""),
        e_model=pl.when(is_engine).then(model),
        e_pod=pod_id,
        e_gpu=pl.when(is_rank | is_gpu).then(gpu_idx),
        e_replica=is_engine,
        e_job=pl.when(metric.str.starts_with("training_")).then(job.fill_null("training")),
        e_node_alias=pl.when(is_gpu & _nonempty(host) & _nonempty(node_col)
                             & (host != node_col)).then(node_col),
    )


def entity_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The distinct entities of a frame already passed through :func:`entity_columns`."""
    return (
        frame.select(
            kind=pl.col("e_kind"), node=pl.col("e_node"), entity=pl.col("e_entity"),
            model=pl.col("e_model"), pod=pl.col("e_pod"), gpu_index=pl.col("e_gpu"),
            job=pl.col("e_job"), replica=pl.col("e_replica"), node_alias=pl.col("e_node_alias"),
        )
        .unique(maintain_order=True)
        .cast(dict(ENTITY_SCHEMA))  # type: ignore[arg-type]
    )


EntityKey = tuple[str, str, str]
"""(kind, node or "" when the id is fleet-unique, id)."""


def entity_key(kind: str, node: str, entity: str) -> EntityKey:
    """The key of an entity: node-scoped kinds keep their node, others drop it."""
    return (kind, node if kind in NODE_SCOPED else "", entity)


@dataclass
class EntityInfo:
    """What the topology knows about one entity."""

    kind: str
    node: str
    entity: str
    model: str | None = None
    pod: str | None = None
    job: str | None = None
    is_replica: bool = False


@dataclass
class Topology:
    """Entities and the undirected relations between them, built from entity rows.

    Mergeable: entity rows from any number of scorers (each sees its own nodes)
    are simply added; :meth:`add` is idempotent.
    """

    entities: dict[EntityKey, EntityInfo] = field(default_factory=dict)
    edges: dict[EntityKey, set[EntityKey]] = field(default_factory=dict)
    node_alias: dict[str, str] = field(default_factory=dict)
    _gpu_index: dict[tuple[str, str], EntityKey] = field(default_factory=dict)
    _pending_ranks: list[tuple[EntityKey, str, str]] = field(default_factory=list)
    aliases: dict[EntityKey, EntityKey] = field(default_factory=dict)
    _groups: pl.DataFrame | None = None

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_samples(cls, frame: pl.DataFrame) -> Topology:
        """The topology of a sample frame (any sources, any number of nodes)."""
        topo = cls()
        topo.add(entity_rows(entity_columns(frame.unique(
            subset=["node", "metric", "entity", "labels"], maintain_order=True))))
        return topo

    @classmethod
    def from_entity_rows(cls, frames: Iterable[pl.DataFrame]) -> Topology:
        """The topology of entity tables published by scorers (merged)."""
        topo = cls()
        for f in frames:
            topo.add(f)
        return topo

    def canonical_node(self, node: str) -> str:
        """``node`` after aliases (an exporter IP seen for a host name)."""
        return self.node_alias.get(node, node)

    def add(self, rows: pl.DataFrame) -> None:
        """Add entity rows (:data:`ENTITY_SCHEMA`)."""
        self._groups = None
        for r in rows.iter_rows(named=True):
            if r["node_alias"]:
                self.node_alias[r["node_alias"]] = r["node"]
        for r in rows.iter_rows(named=True):
            self._add_one(r)
        self._resolve_ranks()

    def _ensure(self, key: EntityKey, info: EntityInfo) -> EntityInfo:
        have = self.entities.get(key)
        if have is None:
            self.entities[key] = info
            self.edges.setdefault(key, set())
            return info
        have.model = have.model or info.model
        have.pod = have.pod or info.pod
        have.job = have.job or info.job
        have.is_replica = have.is_replica or info.is_replica
        return have

    def _link(self, a: EntityKey, b: EntityKey) -> None:
        if a == b:
            return
        self.edges.setdefault(a, set()).add(b)
        self.edges.setdefault(b, set()).add(a)

    def _add_one(self, r: Mapping[str, object]) -> None:
        kind = str(r["kind"])
        node = self.canonical_node(str(r["node"] or ""))
        ent = str(r["entity"] or "")
        key = entity_key(kind, node, ent)
        model = str(r["model"]) if r["model"] else None
        pod = str(r["pod"]) if r["pod"] else None
        job = str(r["job"]) if r["job"] else None
        info = self._ensure(key, EntityInfo(key[0], node, ent, model=model, pod=pod, job=job,
                                            is_replica=bool(r["replica"]) or kind == "replica"))
        if node and key[0] not in ("node", "storage", "osd"):
            nkey = entity_key("node", node, node)
            self._ensure(nkey, EntityInfo("node", node, node))
            self._link(key, nkey)
        if info.model and key[0] in ("pod", "replica"):
            mkey = entity_key("model", "", info.model)
            self._ensure(mkey, EntityInfo("model", "", info.model))
            self._link(key, mkey)
        if pod and key[0] in ("gpu", "target"):
            pkey = entity_key("pod", "", pod)
            self._ensure(pkey, EntityInfo("pod", node, pod))
            self._link(key, pkey)
        idx = r["gpu_index"]
        if key[0] == "gpu" and idx is not None:
            if ent == f"{node}/gpu{idx}":
                self._pending_ranks.append((key, node, str(idx)))
            else:
                self._gpu_index[(node, str(idx))] = key
        if job:
            jkey = entity_key("job", "", job)
            self._ensure(jkey, EntityInfo("job", "", job, job=job))
            if node:
                self._link(jkey, entity_key("node", node, node))
            if key != jkey:
                self._link(key, jkey)
        if key[0] in ("osd", "storage"):
            skey = entity_key("storage", "", "ceph" if key[0] == "osd" else ent)
            self._ensure(skey, EntityInfo("storage", "", skey[2]))
            self._link(key, skey)

    def _resolve_ranks(self) -> None:
        left: list[tuple[EntityKey, str, str]] = []
        for key, node, idx in self._pending_ranks:
            gpu = self._gpu_index.get((node, idx))
            if gpu is None:
                left.append((key, node, idx))
            elif gpu != key:
                # "node-7/gpu3" (a training rank's labels) is that GPU: one entity
                self.aliases[key] = gpu
                for n in self.edges.pop(key, set()):
                    self.edges.get(n, set()).discard(key)
                    self._link(gpu, n)
                rank = self.entities.pop(key, None)
                if rank is not None and gpu in self.entities:
                    self.entities[gpu].job = self.entities[gpu].job or rank.job
        self._pending_ranks = left

    # -- queries --------------------------------------------------------------------------

    def node_role(self, node: str) -> str:
        """``training`` (runs a job's ranks), ``serving`` (runs model replicas) or ``other``:
        what a node is compared with (nodes of the same role)."""
        nbrs = self.edges.get(entity_key("node", node, node), set())
        if any(k[0] == "job" for k in nbrs):
            return "training"
        if any(self.entities[k].model for k in nbrs if k in self.entities):
            return "serving"
        return "other"

    def peer_groups(self) -> pl.DataFrame:
        """Each entity's peer group and the entity the group stands for, as a frame.

        Level 0: a node's GPUs, ports and disks (the node); a model's replicas (the
        model).  Level 1: nodes of one role (``fleet``/``<role> nodes``).  Columns
        ``k_kind, k_node, k_ent`` (member), ``p_kind, p_node, p_ent`` (group),
        ``size`` (members), ``what`` (their plural), ``level``.
        """
        if self._groups is not None:
            return self._groups
        rows: list[tuple[str, str, str, str, str, str, str, int]] = []
        for key, info in self.entities.items():
            if key[0] in ("gpu", "port", "disk") and info.node:
                rows.append((*key, "node", info.node, info.node, f"{key[0]}s", 0))
            elif key[0] in ("pod", "replica") and info.model:
                rows.append((*key, "model", "", info.model, "replicas", 0))
            elif key[0] == "node":
                rows.append((*key, "fleet", "", f"{self.node_role(key[2])} nodes", "nodes", 1))
        frame = pl.DataFrame(rows, orient="row", schema={
            "k_kind": pl.String(), "k_node": pl.String(), "k_ent": pl.String(),
            "p_kind": pl.String(), "p_node": pl.String(), "p_ent": pl.String(),
            "what": pl.String(), "level": pl.Int64()})
        self._groups = frame.with_columns(
            size=pl.len().over("p_kind", "p_node", "p_ent", "what").cast(pl.Int64))
        return self._groups

    def gpu_index(self, key: EntityKey) -> str | None:
        """The index (dcgm-exporter's ``gpu`` label) of a GPU on its node, when known."""
        for (_, idx), k in self._gpu_index.items():
            if k == key:
                return idx
        return None

    def storage_keys(self) -> list[EntityKey]:
        """The shared storage entities (every node is assumed to use each of them)."""
        return [k for k in self.entities if k[0] == "storage"]

    def nodes(self) -> list[str]:
        """Every node name."""
        return sorted(k[2] for k in self.entities if k[0] == "node")

    def members(self, kind: str, node: str | None = None) -> list[EntityKey]:
        """Entities of ``kind`` (on ``node`` when given)."""
        return [k for k, e in self.entities.items()
                if k[0] == kind and (node is None or e.node == node)]

    def replicas_of(self, model: str) -> list[EntityKey]:
        """The replicas (pods or engine entities) serving ``model``."""
        return [k for k, e in self.entities.items()
                if e.model == model and k[0] in ("pod", "replica")]

    def resolve(self, kind: str, node: str, entity: str) -> EntityKey:
        """The key an entity of a digest row has in this topology."""
        node = self.canonical_node(node)
        key = entity_key(kind, node, entity)
        return self.aliases.get(key, key)

    def scope_keys(self, scope: Mapping[str, str]) -> list[EntityKey]:
        """The entities an alert's scope labels name (most specific first).

        ``model_name``/``model`` -> the model; ``node`` (+ ``device`` [+ ``port``]) ->
        the port, disk or node; ``namespace``+``pod`` -> the pod; ``job`` -> the
        job; ``UUID``/``gpu_uuid`` -> the GPU; ``ceph_daemon`` -> the OSD;
        ``target``/``instance`` -> the target.  An empty scope names nothing.
        """
        s = {k: v for k, v in scope.items() if v != ""}
        out: list[EntityKey] = []
        node = self.canonical_node(s.get("node") or s.get("Hostname") or s.get("hostname")
                                   or "")
        uuid = s.get("UUID") or s.get("uuid") or s.get("gpu_uuid")
        if uuid:
            out.append(entity_key("gpu", "", uuid))
        if node and "device" in s:
            dev = s["device"]
            for cand in ((f"{dev}/{s['port']}",) if "port" in s else ()) + (dev,):
                for kind in ("port", "disk"):
                    k = entity_key(kind, node, cand)
                    if k in self.entities:
                        out.append(k)
        pod = s.get("pod") or s.get("pod_name")
        if pod:
            out.append(entity_key("pod", "", f"{s.get('namespace', '')}/{pod}"))
        if "ceph_daemon" in s:
            out.append(entity_key("osd", "", s["ceph_daemon"]))
        for t in ("target", "instance"):
            if t in s and node:
                out.append(entity_key("target", node, s[t]))
        model = s.get("model_name") or s.get("model")
        if model:
            out.append(entity_key("model", "", model))
        if "job" in s:
            out.append(entity_key("job", "", s["job"]))
        if node and not out:
            out.append(entity_key("node", node, node))
        return [k for k in dict.fromkeys(out) if k in self.entities] or [
            k for k in dict.fromkeys(out)]

    def distances(self, sources: Sequence[EntityKey], max_hops: int = 6) -> dict[EntityKey, int]:
        """Hops from the nearest of ``sources`` to every entity within ``max_hops``.

        Shared storage is one hop from every node (the storage assumption above).
        """
        storage = set(self.storage_keys())
        dist: dict[EntityKey, int] = {}
        queue: deque[EntityKey] = deque()
        for s in sources:
            if s not in dist:
                dist[s] = 0
                queue.append(s)
        while queue:
            cur = queue.popleft()
            d = dist[cur]
            if d >= max_hops:
                continue
            nbrs: Iterable[EntityKey] = self.edges.get(cur, ())
            if cur[0] == "node":
                nbrs = [*nbrs, *storage]
            elif cur in storage:
                nbrs = [*nbrs, *(k for k in self.entities if k[0] == "node")]
            for n in nbrs:
                if n not in dist:
                    dist[n] = d + 1
                    queue.append(n)
        return dist

    def entity_table(self) -> pl.DataFrame:
        """Every entity as :data:`ENTITY_SCHEMA` rows (what a scorer publishes)."""
        index = {v: k[1] for k, v in self._gpu_index.items()}
        rows: list[dict[str, object]] = [
            {"kind": e.kind, "node": e.node, "entity": e.entity, "model": e.model,
             "pod": e.pod, "gpu_index": index.get(k), "job": e.job, "replica": e.is_replica,
             "node_alias": None}
            for k, e in self.entities.items()
        ]
        rows += [{"kind": key[0], "node": node, "entity": key[2], "model": None, "pod": None,
                  "gpu_index": idx, "job": None, "replica": False, "node_alias": None}
                 for key, node, idx in self._pending_ranks]
        rows += [{"kind": key[0], "node": key[2].split("/gpu")[0], "entity": key[2],
                  "model": None, "pod": None, "gpu_index": key[2].split("/gpu")[-1],
                  "job": self.entities[gpu].job if gpu in self.entities else None,
                  "replica": False, "node_alias": None}
                 for key, gpu in self.aliases.items()]
        rows += [{"kind": "node", "node": v, "entity": v, "model": None, "pod": None,
                  "gpu_index": None, "job": None, "replica": False, "node_alias": k}
                 for k, v in self.node_alias.items()]
        return pl.DataFrame(rows, schema=ENTITY_SCHEMA) if rows else pl.DataFrame(
            schema=ENTITY_SCHEMA)
