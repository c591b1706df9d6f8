"""Layouts of the pages a mapping reads with its own reader: what a repeated read reuses.

Why: ``/stats/summary`` (JSON) and ``/proc/diskstats`` are not exposition pages, so
the parser's shape cache never sees them and their mappings took the uncached path
on every scrape: a frame built from Python rows (labels converted, eight columns)
and the normalisation's Polars queries over it, together about a third of the source
collectors' CPU.  Yet a kubelet serves the same pods, containers, volumes and fields
scrape after scrape, and a node the same disks.

A reader walks its page as before, but records its rows (:class:`RowRecorder`)
instead of building a frame.  Everything but each row's ``ts`` and ``value`` is the
row's *series* (metric, kind, entity, labels; node and source are the target's); a
page whose series equal, row for row, those of a page read before has that page's
layout.  :class:`ReaderLayouts` keeps a target's last layouts (two, like the
parser's shape cache, so a change that flips back is not derived again): the frame
of a known layout is its first frame with the ``ts`` and ``value`` columns replaced,
and the mapping's transform of it is the :class:`Derivation` made from that first
frame.  There is no other key to go stale: a page whose series differ in any way
(a pod came or went, a field appeared, a label changed) is a new layout.

The transform learns which layout a frame has from the frame itself: the parse and
the transform are separate calls, so the target's last read keeps the frame it
returned, and only that very object (``is``) is transformed through the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import polars as pl

from gpuslo.collectors.mappings.normalise import Derivation
from gpuslo.pipeline.schema import COLUMNS, SAMPLE_SCHEMA, FrameBuilder, Kind

_TS_AT = COLUMNS.index("ts")
_VALUE_AT = COLUMNS.index("value")
_TS_DTYPE = SAMPLE_SCHEMA["ts"]


class RowRecorder:
    """A reader's rows as it finds them, before any frame (``FrameBuilder.add``'s signature).

    Readers pass the same labels mapping for the rows of one entity, so label sets
    are told apart by identity first (the mappings are held, so ids stay unique).
    """

    __slots__ = ("_entity", "_kind", "_label_at", "_label_sets", "_labels", "_metric", "_ts",
                 "_value", "node", "source", "ts_ms")

    def __init__(self, node: str, source: str, ts_ms: int) -> None:
        self.node, self.source, self.ts_ms = node, source, ts_ms
        self._ts: list[int] = []
        self._metric: list[str] = []
        self._kind: list[str] = []
        self._value: list[float] = []
        self._entity: list[str] = []
        self._labels: list[Mapping[str, str]] = []
        self._label_at: list[int] = []
        self._label_sets: dict[int, int] = {}  # id(labels) -> index among the distinct ones

    def __len__(self) -> int:
        return len(self._metric)

    def add(self, metric: str, kind: Kind | str, value: float, entity: str,
            labels: Mapping[str, str], ts_ms: int | None = None) -> None:
        """One row; ``ts_ms`` defaults to the scrape time."""
        at = self._label_sets.get(id(labels))
        if at is None:
            at = self._label_sets[id(labels)] = len(self._labels)
            self._labels.append(labels)
        self._ts.append(self.ts_ms if ts_ms is None else ts_ms)
        self._metric.append(metric)
        self._kind.append(str(kind))
        self._value.append(value)
        self._entity.append(entity)
        self._label_at.append(at)

    def key(self) -> Hashable:
        """Everything the frame holds but ``ts`` and ``value``: equal keys, equal series."""
        return (self.node, self.source, tuple(self._metric), tuple(self._kind),
                tuple(self._entity), tuple(self._label_at),
                tuple(tuple(sorted(labels.items())) for labels in self._labels))

    def frame(self) -> pl.DataFrame:
        """The rows as a sample frame, built from scratch (``FrameBuilder``'s frame)."""
        rows = FrameBuilder(self.node, self.source, self.ts_ms)
        labels = self._labels
        for ts, metric, kind, value, entity, at in zip(
                self._ts, self._metric, self._kind, self._value, self._entity, self._label_at,
                strict=True):
            rows.add(metric, kind, value, entity, labels[at], ts_ms=ts)
        return rows.frame()

    def numbers(self, template: pl.DataFrame) -> pl.DataFrame:
        """``template`` (a frame of this key) with these rows' ``ts`` and ``value``."""
        out = template.clone()  # shallow: the series columns are shared, not copied
        out.replace_column(_TS_AT, pl.Series("ts", self._ts, dtype=_TS_DTYPE))
        out.replace_column(_VALUE_AT, pl.Series("value", self._value, dtype=pl.Float64))
        return out


@dataclass(slots=True)
class _Layout:
    template: pl.DataFrame
    derivation: Derivation | None = None


class ReaderLayouts:
    """Per target, the layouts of its last reads and the derivation made of each.

    One per mapping (the derivation depends on the mapping's settings), keyed by the
    target's URL.  A target's scrapes run one at a time; were two reads of one target
    interleaved, the frame identity check sends the other's frame down the uncached
    path, never through the wrong layout.
    """

    def __init__(self, capacity: int = 2, max_targets: int = 4096) -> None:
        self.capacity = capacity
        self.max_targets = max_targets  # targets that come and go must not pile up
        self._layouts: dict[str, dict[Hashable, _Layout]] = {}
        self._last: dict[str, tuple[_Layout, pl.DataFrame]] = {}
        self.hits = 0
        self.misses = 0

    def frame(self, target: str, rows: RowRecorder) -> pl.DataFrame:
        """The frame of ``rows``: a known layout's with new numbers, else built afresh."""
        if not len(rows):
            self._last.pop(target, None)
            return rows.frame()
        key = rows.key()
        layouts = self._layouts.get(target)
        if layouts is None:
            if len(self._layouts) >= self.max_targets:
                self._layouts.clear()
                self._last.clear()
            layouts = self._layouts[target] = {}
        layout = layouts.get(key)
        if layout is None:
            self.misses += 1
            frame = rows.frame()
            while len(layouts) >= max(self.capacity, 1):
                del layouts[next(iter(layouts))]  # oldest first
            layout = layouts[key] = _Layout(frame)
        else:
            self.hits += 1
            frame = rows.numbers(layout.template)
        self._last[target] = (layout, frame)
        return frame

    def transform(self, target: str, frame: pl.DataFrame,
                  derive: Callable[[pl.DataFrame], Derivation]) -> pl.DataFrame | None:
        """The transform of ``frame`` through its layout; ``None`` if it is not the frame
        the target's last read returned (the caller takes its uncached path)."""
        last = self._last.get(target)
        if last is None or last[1] is not frame:
            return None
        layout = last[0]
        if layout.derivation is None:
            layout.derivation = derive(layout.template)
        return layout.derivation.apply(frame)


__all__ = ["ReaderLayouts", "RowRecorder"]
