"""The reference parser: Prometheus text exposition through ``prometheus_client``.

Slow (one Python object per sample) but written directly over the upstream
library, so the fast parser (:mod:`gpuslo.collectors.exposition`) is tested for
equality against it, and the parser benchmark measures against it.
"""

from __future__ import annotations

import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from gpuslo.collectors.exposition import sample_kind
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, canonical_labels


def _timestamp_ms(ts: object) -> int:
    """prometheus_client gives float seconds (text) or a Timestamp (OpenMetrics)."""
    if isinstance(ts, (int, float)):
        return int(ts * 1000)
    return int(float(ts) * 1000)  # type: ignore[arg-type]


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


__all__ = ["parse_text_reference"]
