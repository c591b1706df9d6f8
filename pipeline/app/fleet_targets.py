"""Which collector reads which endpoint of a simulated fleet, as ordinary collector configs.

The demo and ``gpuslo simulate --print-config`` describe the simulated fleet to
gpuslo exactly as an operator describes a real one: a ``collectors:`` list.  The
demo then runs it through the production wiring, so what it shows is what
``gpuslo collect`` would do against those exporters.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuslo.pipeline.config import (
    CollectorConfig,
    DcgmCollectorConfig,
    KubeletCollectorConfig,
    KvCacheCollectorConfig,
    PrometheusCollectorConfig,
    PrometheusTarget,
    RdmaCollectorConfig,
    StorageCollectorConfig,
)
from gpuslo.simulator.server import Target

# Target kinds served in Prometheus text format (the generic collector's diet);
# kubelet_summary (JSON) and diskstats (procfs) need their own readers.
PROMETHEUS_KINDS = frozenset(
    {
        "dcgm",
        "node_exporter",
        "kubelet_resource",
        "kubelet_cadvisor",
        "ceph",
        "vllm",
        "sglang",
        "triton",
        "training",
    }
)


def prometheus_configs(
    targets: Sequence[Target], interval_s: float, timeout_s: float | None = None
) -> list[PrometheusCollectorConfig]:
    """One generic collector config per sample source, over the Prometheus-format targets."""
    by_source: dict[str, list[PrometheusTarget]] = {}
    for t in targets:
        if t.kind in PROMETHEUS_KINDS:
            by_source.setdefault(t.source, []).append(PrometheusTarget(url=t.url, node=t.node))
    timeout = min(5.0, interval_s) if timeout_s is None else timeout_s
    return [
        PrometheusCollectorConfig(
            name=f"sim-{source}",
            source=source,
            targets=tgts,
            interval_s=interval_s,
            timeout_s=timeout,
        )
        for source, tgts in sorted(by_source.items())
    ]


def collector_configs(targets: Sequence[Target], interval_s: float) -> list[CollectorConfig]:
    """The source collectors for a fleet's targets.

    Each source gets its own collector, so its samples carry entities and
    normalised signals next to the upstream rows.  The node_exporter page is
    read by both RDMA (``node_infiniband_*``) and storage (``node_disk_*``),
    each keeping its own families.  The simulated kubelet speaks plain HTTP
    with no token; only the demo does that.  Any other source (the training
    job) gets the generic collector.
    """
    common: dict[str, object] = {"interval_s": interval_s, "timeout_s": min(5.0, interval_s)}

    def urls(*kinds: str) -> list[dict[str, object]]:
        return [{"url": t.url, "node": t.node} for t in targets if t.kind in kinds]

    out: list[CollectorConfig] = []
    if dcgm := urls("dcgm"):
        out.append(DcgmCollectorConfig.model_validate(
            {"name": "sim-dcgm", "targets": dcgm, **common}))
    kv = [{"url": t.url, "node": t.node, "replica": t.entity}
          for t in targets if t.source == "kvcache"]
    if kv:
        out.append(KvCacheCollectorConfig.model_validate(
            {"name": "sim-kvcache", "targets": kv, **common}))
    if ne := urls("node_exporter"):
        out.append(RdmaCollectorConfig.model_validate(
            {"name": "sim-rdma", "targets": ne, "sysfs": [], **common}))
    if store := urls("node_exporter", "ceph", "diskstats"):
        out.append(StorageCollectorConfig.model_validate(
            {"name": "sim-storage", "targets": store, "diskstats": [], **common}))
    if kube := urls("kubelet_resource", "kubelet_cadvisor", "kubelet_summary"):
        out.append(KubeletCollectorConfig.model_validate(
            {"name": "sim-kubelet", "targets": kube, "token_file": None, **common}))
    handled = {"dcgm", "kvcache", "rdma", "storage", "kubelet"}
    out += prometheus_configs([t for t in targets if t.source not in handled], interval_s)
    return out


__all__ = ["PROMETHEUS_KINDS", "collector_configs", "prometheus_configs"]
