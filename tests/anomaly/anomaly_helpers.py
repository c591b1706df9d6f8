"""Builders shared by the anomaly tests: hand-made scrapes, digests and entity tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import polars as pl

from gpuslo.anomaly.digest import DIGEST_SCHEMA
from gpuslo.anomaly.scorer import NodeScorer, ScorerSettings
from gpuslo.pipeline.schema import frame_from_rows

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SCRAPE_S = 30


def gpu_labels(node: str, index: int, **extra: str) -> dict[str, str]:
    """dcgm-exporter's labels for GPU ``index`` of ``node``."""
    return {"gpu": str(index), "UUID": f"GPU-{node}-{index:02d}", "Hostname": node,
            "device": f"nvidia{index}", "modelName": "NVIDIA H100 80GB HBM3", **extra}


def uuid(node: str, index: int) -> str:
    """The UUID :func:`gpu_labels` gives."""
    return f"GPU-{node}-{index:02d}"


Row = tuple[object, ...]
# (scrape number, time) -> rows of that scrape
Scrape = Callable[[int, datetime], Iterable[Row]]


def gauge(node: str, metric: str, value: float, labels: Mapping[str, str],
          ts: datetime, source: str = "dcgm") -> Row:
    return (ts, node, source, metric, "gauge", value, "", dict(labels))


def counter(node: str, metric: str, value: float, labels: Mapping[str, str],
            ts: datetime, source: str = "rdma") -> Row:
    return (ts, node, source, metric, "counter", value, "", dict(labels))


def run_scorer(scrape: Scrape, minutes: int, scorer: NodeScorer | None = None,
               start: datetime = T0) -> tuple[NodeScorer, pl.DataFrame]:
    """Feed ``minutes`` of 30 s scrapes to a scorer (no model unless given); all digests."""
    sc = scorer or NodeScorer(ScorerSettings(model=None))
    parts = []
    for i in range(minutes * 60 // SCRAPE_S):
        ts = start + timedelta(seconds=i * SCRAPE_S)
        rows = list(scrape(i, ts))
        if rows:
            sc.observe(frame_from_rows(rows))
        parts.append(sc.advance(ts + timedelta(seconds=SCRAPE_S)))
    return sc, pl.concat([p for p in parts if p.height] or [pl.DataFrame(schema=DIGEST_SCHEMA)])


def digest_row(minute: datetime, node: str, kind: str, entity: str, signal: str, z: float, *,
               role: str = "cause", detector: str = "baseline", direction: str = "up",
               onset: datetime | None = None, value: float | None = 2.0,
               baseline: float | None = 1.0, detail: str | None = None,
               peers: int = 0, peer_value: float | None = None) -> dict[str, object]:
    """One digest row with sensible defaults."""
    return {"minute": minute, "node": node, "kind": kind, "entity": entity, "signal": signal,
            "metric": signal, "series": "", "role": role, "detector": detector,
            "direction": direction, "z": z, "value": value, "baseline": baseline,
            "scale": 0.1, "onset": onset or minute, "peers": peers, "peer_value": peer_value,
            "detail": detail}


def digest(rows: Sequence[Mapping[str, object]]) -> pl.DataFrame:
    """A digest frame from :func:`digest_row` dicts."""
    return pl.DataFrame(list(rows), schema=DIGEST_SCHEMA)
