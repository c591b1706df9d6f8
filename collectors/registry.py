"""The collector registry: config ``type:`` → the class that runs it.

One plain dict, no discovery by naming magic; an unknown type is already
rejected by the config model, which lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuslo.collectors.base import Collector
from gpuslo.collectors.dcgm import DcgmCollector
from gpuslo.collectors.kubelet import KubeletCollector
from gpuslo.collectors.kvcache import KvCacheCollector
from gpuslo.collectors.prometheus import PrometheusCollector
from gpuslo.collectors.rdma import RdmaCollector
from gpuslo.collectors.storage import StorageCollector
from gpuslo.pipeline.config import GpusloConfig

# The config argument is the member of the CollectorConfig union named by the key.
Factory = Callable[[Any, GpusloConfig], Collector]

COLLECTORS: dict[str, Factory] = {
    "prometheus": lambda c, g: PrometheusCollector(c, default_node=g.node),
    "dcgm": lambda c, g: DcgmCollector(c, default_node=g.node),
    "kvcache": lambda c, g: KvCacheCollector(c, default_node=g.node),
    "rdma": lambda c, g: RdmaCollector(c, default_node=g.node),
    "kubelet": lambda c, g: KubeletCollector(c, default_node=g.node),
    "storage": lambda c, g: StorageCollector(c, default_node=g.node),
}


def build_collectors(cfg: GpusloConfig) -> list[tuple[Collector, float]]:
    """Instantiate every configured collector with its interval."""
    return [(COLLECTORS[c.type](c, cfg), c.interval_s) for c in cfg.collectors]
