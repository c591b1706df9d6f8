"""The collector registry: config ``type:`` → the class that runs it.

One plain dict, no discovery by naming magic; an unknown type is already
rejected by the config model, which lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable

from collectors.base import Collector
from collectors.prometheus import PrometheusCollector
from pipeline.config import CollectorConfig, GpusloConfig

Factory = Callable[[CollectorConfig, GpusloConfig], Collector]

COLLECTORS: dict[str, Factory] = {
    "prometheus": lambda c, g: PrometheusCollector(c, default_node=g.node),
}


def build_collectors(cfg: GpusloConfig) -> list[tuple[Collector, float]]:
    """Instantiate every configured collector with its interval."""
    return [(COLLECTORS[c.type](c, cfg), c.interval_s) for c in cfg.collectors]
