"""Layouts of the pages a mapping reads with its own reader: what a repeated read reuses.

Why: ``/stats/summary`` (JSON) and ``/proc/diskstats`` are not exposition pages, so
the parser's shape cache never sees them and their mappings took the uncached path
on every scrape: a frame built from Python rows (labels converted, eight columns)
and the normalisation's Polars queries over it, together about a third of the source
collectors' CPU.  Yet a kubelet serves the same pods, containers, volumes and fields
scrape after scrape, and a node the same disks.

A reader walks its page as before, but records its rows in a
:class:`~gpuslo.pipeline.schema.FrameBuilder` without building the frame yet. Everything
but each row's ``ts`` and ``value`` is the row's *series* (metric, kind, entity, labels;
node and source are the target's); a page whose series equal, row for row, those of a
page read before has that page's layout. :class:`ReaderLayouts` keeps a target's last
layouts (two, like the parser's shape cache, so a change that flips back is not derived
again): the frame of a known layout is its first frame with the ``ts`` and ``value``
columns replaced, and the mapping's transform of it is the :class:`Derivation` made from
that first frame. There is no other key to go stale: a page whose series differ in any
way (a pod came or went, a field appeared, a label changed) is a new layout.

The transform learns which layout a frame has from the frame itself: the parse and
the transform are separate calls, so the target's last read keeps the frame it
returned, and only that very object (``is``) is transformed through the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import polars as pl

from gpuslo.collectors.mappings.normalise import Derivation
from gpuslo.pipeline.schema import FrameBuilder


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

    def frame(self, target: str, rows: FrameBuilder) -> pl.DataFrame:
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


__all__ = ["ReaderLayouts"]
