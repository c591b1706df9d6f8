"""Any Prometheus exposition page, kept as scraped: the generic source.

Also the parse step the other sources share: the fast exposition parser with
the target's shape cache, the format told by the response's content type.
"""

from __future__ import annotations

import polars as pl

from gpuslo.collectors.base import Partial, ScrapeTarget
from gpuslo.collectors.exposition import ShapeCache, parse_exposition

SOURCE = "prometheus"


class PrometheusMapping:
    """Parse with the fast parser; add nothing (a generic target's rows stay as scraped).

    ``entity_label`` names the label whose value becomes ``entity`` (none by default).
    Subclasses whose transform looks at values or keeps state set ``structural``
    to False (see :class:`~gpuslo.collectors.base.SourceMapping`).
    """

    structural = True

    def __init__(self, source: str = SOURCE, entity_label: str | None = None) -> None:
        self.source = source
        self.entity_label = entity_label

    def parse(self, text: str, openmetrics: bool, target: ScrapeTarget, scrape_ts_ms: int,
              shape_cache: ShapeCache | None = None) -> pl.DataFrame | Partial:
        return parse_exposition(text, node=target.node, source=self.source,
                                scrape_ts_ms=scrape_ts_ms, entity_label=self.entity_label,
                                openmetrics=openmetrics, shape_cache=shape_cache)

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        return frame


__all__ = ["SOURCE", "PrometheusMapping"]
