"""Which pages the fleet serves: one :class:`Endpoint` per (process, path) of a node.

The list is derived from the fleet, so the server, the index page and a
generated collector config all agree on what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.ceph import render_ceph
from gpuslo.simulator.formats.dcgm import render_dcgm
from gpuslo.simulator.formats.disk import render_diskstats
from gpuslo.simulator.formats.engines import render_engine, render_training
from gpuslo.simulator.formats.kubelet import render_cadvisor, render_resource, render_summary
from gpuslo.simulator.formats.node_exporter import render_node_exporter

CEPH_NODE = "ceph"

# render(fleet, ts_ms) -> body; ``None`` means "answer 503" (process down, mgr not ready).
Render = Callable[[Fleet, int | None], str | None]


@dataclass(frozen=True)
class Endpoint:
    """One page: where it lives and how to draw it."""

    node: str
    # Path segment and port owner: dcgm, node-exporter, kubelet, proc, vllm-<svc>-<i>, ...
    process: str
    path: str  # path inside the process: /metrics, /metrics/cadvisor, /stats/summary, /diskstats
    source: str  # sample-frame source: dcgm, rdma, kubelet, storage, kvcache, prometheus
    kind: str  # dcgm, node_exporter, kubelet_resource, kubelet_cadvisor, kubelet_summary,
    #            diskstats, ceph, vllm, sglang, triton, training
    content_type: str
    render: Render
    entity: str | None = None  # replica key or job name


PROM = "text/plain; version=0.0.4; charset=utf-8"


def _node_page(fn: Callable[[Fleet, str, int | None], str], node: str) -> Render:
    def render(fleet: Fleet, ts_ms: int | None) -> str | None:
        return fn(fleet, node, ts_ms)

    return render


def _kubelet_page(fn: Callable[[Fleet, str, int], str], node: str) -> Render:
    # kubelet always stamps its samples, with its own clock: the model's time.
    def render(fleet: Fleet, ts_ms: int | None) -> str | None:
        return fn(fleet, node, int(fleet.t * 1000))

    return render


def _plain_page(fn: Callable[[Fleet, str], str], node: str) -> Render:
    def render(fleet: Fleet, ts_ms: int | None) -> str | None:
        return fn(fleet, node)

    return render


def _engine_page(key: str) -> Render:
    def render(fleet: Fleet, ts_ms: int | None) -> str | None:
        r = fleet.replica(key)
        return render_engine(fleet, r, ts_ms) if r.up else None

    return render


def _ceph_page(fleet: Fleet, ts_ms: int | None) -> str | None:
    return render_ceph(fleet, ts_ms) if fleet.ceph_ready() else None


def _training_page(fleet: Fleet, ts_ms: int | None) -> str | None:
    return render_training(fleet.training, ts_ms) if fleet.training is not None else None


def endpoints(fleet: Fleet) -> list[Endpoint]:
    """Every page of the fleet, node by node, then Ceph and the training job."""
    out: list[Endpoint] = []
    for n in fleet.nodes:
        name = n.name
        out += [
            Endpoint(name, "dcgm", "/metrics", "dcgm", "dcgm", PROM,
                     _node_page(render_dcgm, name)),
            Endpoint(name, "node-exporter", "/metrics", "rdma", "node_exporter", PROM,
                     _node_page(render_node_exporter, name)),
            Endpoint(name, "kubelet", "/metrics/resource", "kubelet", "kubelet_resource", PROM,
                     _kubelet_page(render_resource, name)),
            Endpoint(name, "kubelet", "/metrics/cadvisor", "kubelet", "kubelet_cadvisor", PROM,
                     _kubelet_page(render_cadvisor, name)),
            Endpoint(name, "kubelet", "/stats/summary", "kubelet", "kubelet_summary",
                     "application/json", _plain_page(render_summary, name)),
            Endpoint(name, "proc", "/diskstats", "storage", "diskstats",
                     "text/plain; charset=utf-8", _plain_page(render_diskstats, name)),
        ]
        for r in fleet.replicas:
            if r.node == name:
                out.append(Endpoint(name, f"{r.engine}-{r.service}-{r.index}", "/metrics",
                                    "kvcache", r.engine, PROM, _engine_page(r.key), entity=r.key))
    out.append(Endpoint(CEPH_NODE, "mgr", "/metrics", "storage", "ceph", PROM, _ceph_page))
    job = fleet.training
    if job is not None:
        out.append(Endpoint(job.nodes[0], f"trainer-{job.name}", "/metrics", "prometheus",
                            "training", PROM, _training_page, entity=job.name))
    return out
