"""Generic Prometheus text-format scrape.

The parse step is a pure function.  :func:`parse_text` is the fast, exact
parser (:func:`collectors.exposition.parse_exposition`); the original
``prometheus_client``-based parser stays as :func:`parse_text_reference`,
the oracle of the equality tests and the baseline of the benchmark.  Fetching
is the shared scrape engine's job (:mod:`collectors.engine`); this module's
collector adds nothing to the samples.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from gpuslo.collectors.engine import ScrapeEngine, ScrapeTarget, settings_from_config
from gpuslo.collectors.exposition import parse_exposition, sample_kind
from gpuslo.pipeline.config import PrometheusCollectorConfig
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, canonical_labels

ParseFn = Callable[..., pl.DataFrame]

__all__ = ["ParseFn", "PrometheusCollector", "parse_text", "parse_text_reference", "sample_kind"]

def _timestamp_ms(ts: object) -> int:
    """prometheus_client gives float seconds (text) or a Timestamp (OpenMetrics)."""
    if isinstance(ts, (int, float)):
        return int(ts * 1000)
    return int(float(ts) * 1000)  # type: ignore[arg-type]


def parse_text(
    text: str | bytes,
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None = None,
    openmetrics: bool | None = False,
) -> pl.DataFrame:
    """Parse a Prometheus text 0.0.4 payload into a sample frame (the fast parser).

    Same samples as :func:`parse_text_reference`; see
    :func:`collectors.exposition.parse_exposition` for the contract.  Text
    format unless told otherwise (``openmetrics=True``, or ``None`` to detect
    a final ``# EOF``), like the reference, which reads ``# EOF`` as a comment.

    Raises:
        collectors.exposition.ExpositionError: (a ``ValueError``) naming the line.
    """
    return parse_exposition(text, node=node, source=source, scrape_ts_ms=scrape_ts_ms,
                            entity_label=entity_label, openmetrics=openmetrics)


def parse_text_reference(
    text: str,
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None = None,
) -> pl.DataFrame:
    """Parse Prometheus text exposition 0.0.4 into a sample frame with ``prometheus_client``.

    The reference implementation: slow (one Python object per sample) but
    written directly over the upstream library, so the fast parser is tested
    for equality against it.

    Samples without their own timestamp get ``scrape_ts_ms``.  ``entity`` is
    the value of ``entity_label`` when given and present, else the empty
    string; every upstream label is kept in ``labels`` untouched.

    Raises:
        ValueError: the payload is not valid exposition text (the message
            names the offending line where the parser says so).
    """
    ts: list[int] = []
    metric: list[str] = []
    kind: list[str] = []
    value: list[float] = []
    entity: list[str] = []
    labels: list[list[dict[str, str]]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            ts.append(_timestamp_ms(s.timestamp) if s.timestamp is not None else scrape_ts_ms)
            metric.append(s.name)
            kind.append(sample_kind(family.type, family.name, s.name).value)
            value.append(float(s.value))
            entity.append(s.labels.get(entity_label, "") if entity_label else "")
            labels.append(canonical_labels(s.labels))
    n = len(ts)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            "node": [node] * n,
            "source": [source] * n,
            "metric": metric,
            "kind": kind,
            "value": value,
            "entity": entity,
            "labels": labels,
        },
        schema=SAMPLE_SCHEMA,
    )


class PrometheusCollector(ScrapeEngine):
    """Scrape Prometheus text endpoints and keep their samples as they are.

    A :class:`~collectors.engine.ScrapeEngine`: targets from the config's list
    and/or discovery, each on its own schedule, health as self-metrics.
    """

    def __init__(
        self,
        config: PrometheusCollectorConfig,
        *,
        default_node: str,
        session: aiohttp.ClientSession | None = None,
        parse: ParseFn = parse_text,
    ) -> None:
        from gpuslo.collectors.discovery import target_source

        self.config = config
        source = config.source

        def parse_step(text: str, openmetrics: bool, target: ScrapeTarget, ts_ms: int) -> (
                pl.DataFrame):
            if parse is parse_text:
                return parse_text(text, node=target.node, source=source, scrape_ts_ms=ts_ms,
                                  openmetrics=openmetrics)
            return parse(text, node=target.node, source=source, scrape_ts_ms=ts_ms)

        super().__init__(config.name, settings_from_config(config),
                         target_source(config, default_node=default_node, source=source),
                         source=source, parse=parse_step, session=session)

    async def stop(self) -> None:
        """Close the HTTP session (same as :meth:`aclose`)."""
        await self.aclose()
