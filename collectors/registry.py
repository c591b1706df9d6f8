"""The collector registry: config ``type:`` → a scrape engine composed for that source.

Every collector is the same :class:`~gpuslo.collectors.scrape.engine.ScrapeEngine`
with three things chosen per source: its mapping (pure), its targets (static
list, node-local discovery or a sidecar's localhost ports, plus file targets)
and, where the source needs them, a file reader and credentials.  Choosing them
is all this module does; one plain dict, no discovery by naming magic.  An
unknown type is already rejected by the config model, which lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gpuslo.collectors.base import file_target
from gpuslo.collectors.mappings.dcgm import DcgmMapping
from gpuslo.collectors.mappings.kubelet import KubeletMapping, kubelet_targets
from gpuslo.collectors.mappings.kvcache import KvCacheMapping
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.collectors.mappings.rdma import RdmaMapping
from gpuslo.collectors.mappings.storage import StorageMapping
from gpuslo.collectors.scrape.discovery import CombinedTargets, StaticTargets, target_source
from gpuslo.collectors.scrape.engine import ScrapeEngine, TargetSource, settings_from_config
from gpuslo.collectors.scrape.files import DiskstatsReader, SysfsReader
from gpuslo.pipeline.auth import BearerAuth, BearerTokenFile, tls_context
from gpuslo.pipeline.config import (
    DcgmCollectorConfig,
    GpusloConfig,
    KubeletCollectorConfig,
    KvCacheCollectorConfig,
    PrometheusCollectorConfig,
    RdmaCollectorConfig,
    StorageCollectorConfig,
)

Session = aiohttp.ClientSession | None


def prometheus_collector(c: PrometheusCollectorConfig, node: str,
                         session: Session = None) -> ScrapeEngine:
    """Any exposition page, kept as scraped."""
    return ScrapeEngine(c.name, settings_from_config(c),
                        target_source(c, default_node=node, source=c.source),
                        PrometheusMapping(c.source), session=session)


def dcgm_collector(c: DcgmCollectorConfig, node: str, session: Session = None) -> ScrapeEngine:
    """dcgm-exporter: GPU entities, normalised signals, XID events."""
    return ScrapeEngine(c.name, settings_from_config(c),
                        target_source(c, default_node=node, source=c.type),
                        DcgmMapping.from_config(c), session=session)


def kvcache_collector(c: KvCacheCollectorConfig, node: str,
                      session: Session = None) -> ScrapeEngine:
    """Inference engines' KV-cache, queue and latency series."""
    return ScrapeEngine(c.name, settings_from_config(c),
                        target_source(c, default_node=node, source=c.type),
                        KvCacheMapping.from_config(c), session=session)


def _with_files(http: TargetSource, paths: list[tuple[Path, str | None]],
                node: str) -> TargetSource:
    files = [file_target(path, file_node or node) for path, file_node in paths]
    return CombinedTargets([http, StaticTargets(files)]) if files else http


def rdma_collector(c: RdmaCollectorConfig, node: str, session: Session = None) -> ScrapeEngine:
    """Sysfs roots (``file://`` targets) and/or node_exporter's ``node_infiniband_*``."""
    targets = _with_files(target_source(c, default_node=node, source=c.type),
                          [(s.path, s.node) for s in c.sysfs_sources()], node)
    return ScrapeEngine(c.name, settings_from_config(c), targets, RdmaMapping.from_config(c),
                        reader=SysfsReader(c.source, c.devices), session=session)


def storage_collector(c: StorageCollectorConfig, node: str,
                      session: Session = None) -> ScrapeEngine:
    """``/proc/diskstats`` files, node_exporter disks, Ceph and Lustre pages.

    A Ceph mgr answering 503 while it builds its first cache is the engine's
    ``not_ready``: retried after a few seconds, not an error of the cluster.
    """
    mapping = StorageMapping.from_config(c)
    targets = _with_files(target_source(c, default_node=node, source=c.type),
                          [(s.path, s.node) for s in c.diskstats_sources()], node)
    return ScrapeEngine(c.name, settings_from_config(c), targets, mapping,
                        reader=DiskstatsReader(mapping), session=session)


def kubelet_collector(c: KubeletCollectorConfig, node: str,
                      session: Session = None) -> ScrapeEngine:
    """The kubelet's endpoints over HTTPS with the service-account token.

    The token file is stat-ed before every request and re-read when it rotates;
    the header is built per request and every error message is scrubbed of the
    token (and of any ``Bearer`` value) before it reaches a log, a health row or
    Kafka.
    """
    targets = kubelet_targets(c, node)
    auth = BearerAuth(BearerTokenFile(c.token_file)) if c.token_file is not None else None
    ctx = None
    if any(t.url.startswith("https://") for t in targets):
        ctx = tls_context(ca_file=c.ca_file, insecure=c.insecure_skip_verify)
    return ScrapeEngine(c.name, settings_from_config(c), targets,
                        KubeletMapping(targets, c.source), ssl_context=ctx,
                        header_source=auth.headers if auth else None,
                        redact=auth.redact if auth else None, session=session)


# Discovery matches a pod's ``gpuslo.io/source`` annotation against the collector's type
# (the generic collector: its configured ``source``).
# The config argument is the member of the CollectorConfig union named by the key.
Factory = Callable[[Any, str, Session], ScrapeEngine]

COLLECTORS: dict[str, Factory] = {
    "prometheus": prometheus_collector,
    "dcgm": dcgm_collector,
    "kvcache": kvcache_collector,
    "rdma": rdma_collector,
    "kubelet": kubelet_collector,
    "storage": storage_collector,
}


def build_collector(config: Any, *, default_node: str,
                    session: Session = None) -> ScrapeEngine:
    """The collector for one ``collectors:`` item (any member of the config union)."""
    return COLLECTORS[config.type](config, default_node, session)


def build_collectors(cfg: GpusloConfig) -> list[tuple[ScrapeEngine, float]]:
    """Every configured collector with its interval."""
    return [(build_collector(c, default_node=cfg.node), c.interval_s) for c in cfg.collectors]


__all__ = [
    "COLLECTORS",
    "build_collector",
    "build_collectors",
    "dcgm_collector",
    "kubelet_collector",
    "kvcache_collector",
    "prometheus_collector",
    "rdma_collector",
    "storage_collector",
]
