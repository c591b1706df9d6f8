"""A live view of the sample stream: what arrives, from which source and node.

The accumulation is a plain object fed frames (testable without a terminal);
rendering to a rich table is separate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from rich.table import Table


@dataclass
class StreamRow:
    samples: int = 0
    batches: int = 0
    series: int = 0
    last_ts: datetime | None = None
    metrics: int = 0
    example: str = ""


@dataclass
class SampleTail:
    """Running totals per (source, node) over the batches seen."""

    rows: dict[tuple[str, str], StreamRow] = field(default_factory=dict)
    samples: int = 0
    batches: int = 0
    dead: int = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.batches += 1
        self.samples += frame.height
        if frame.is_empty():
            return
        summary = frame.group_by("source", "node").agg(
            pl.len().alias("n"),
            pl.col("ts").max().alias("last"),
            pl.col("metric").n_unique().alias("metrics"),
            pl.struct("metric", "entity", "labels").n_unique().alias("series"),
            pl.format("{} = {}", pl.col("metric"), pl.col("value").round(3)).last().alias("ex"),
        )
        for source, node, n, last, metrics, series, ex in summary.iter_rows():
            row = self.rows.setdefault((source, node), StreamRow())
            row.samples += n
            row.batches += 1
            row.series = series
            row.metrics = metrics
            row.example = ex
            if row.last_ts is None or last > row.last_ts:
                row.last_ts = last

    def table(self, title: str = "gpuslo.samples") -> Table:
        t = Table(
            title=f"{title}: {self.samples} samples in {self.batches} batches"
            + (f", {self.dead} dead-lettered" if self.dead else "")
        )
        for col in (
            "source",
            "node",
            "batches",
            "samples",
            "series",
            "metrics",
            "last sample",
            "latest",
        ):
            t.add_column(
                col,
                justify="right" if col in ("batches", "samples", "series", "metrics") else "left",
            )
        for (source, node), r in sorted(self.rows.items()):
            t.add_row(
                source,
                node,
                str(r.batches),
                str(r.samples),
                str(r.series),
                str(r.metrics),
                r.last_ts.strftime("%H:%M:%S") if r.last_ts else "-",
                r.example,
            )
        return t

    def source_table(self, title: str = "gpuslo.samples") -> Table:
        """One row per source (a compact form of :meth:`table` for a fleet of many nodes)."""
        t = Table(
            title=f"{title}: {self.samples} samples in {self.batches} batches"
            + (f", {self.dead} dead-lettered" if self.dead else ""),
            title_justify="left",
        )
        for col in ("source", "nodes", "batches", "samples", "series", "last sample", "latest"):
            t.add_column(col, justify="left" if col in ("source", "last sample", "latest")
                         else "right")
        by_source: dict[str, list[StreamRow]] = {}
        for (source, _node), r in sorted(self.rows.items()):
            by_source.setdefault(source, []).append(r)
        for source, rows in by_source.items():
            stamps = [r.last_ts for r in rows if r.last_ts is not None]
            last = max(stamps) if stamps else None
            t.add_row(
                source,
                str(len(rows)),
                str(sum(r.batches for r in rows)),
                str(sum(r.samples for r in rows)),
                str(sum(r.series for r in rows)),
                last.strftime("%H:%M:%S") if last else "-",
                rows[-1].example,
            )
        return t
