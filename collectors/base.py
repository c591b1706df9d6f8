"""The collector family's contracts: what a collector returns, and what a source supplies.

A collector is "given a clock, return a batch": one call scrapes or reads its
targets once and returns a sample frame per target (see
:mod:`gpuslo.pipeline.schema`).  The runtime owns timing, Kafka and error
accounting, so a collector stays a small object tested with a fixed ``now``.

Every collector is the same scrape engine (:mod:`gpuslo.collectors.scrape.engine`)
composed with what differs per source: a :class:`SourceMapping` (pure: payload
text → upstream rows → upstream + normalised rows, perhaps with state such as
the last XID seen per GPU) and, for sources read from files, a reader.  The
engine never knows a source; a mapping never does I/O.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import polars as pl

from gpuslo.collectors.exposition import ShapeCache
from gpuslo.pipeline.schema import COLUMNS, Block

_COLUMN_LIST = list(COLUMNS)


@dataclass(frozen=True)
class TargetResult:
    """The outcome of reading one target once: samples, or why there are none.

    ``frame`` is every row, the source's followed by the scrape's health rows.
    The engine hands the two over apart (``samples`` and ``health``) and stacks
    them only when ``frame`` is read: the collect stage sends them as two blocks
    of one record, which decode to the same rows, and stacking a few hundred rows
    cost more than building them (a schema comparison of every column).
    """

    target: str
    node: str
    samples: pl.DataFrame | None  # the source's rows (or every row, without ``health``)
    duration_s: float
    error: str | None = None
    # A short machine-readable reason for self-metrics (timeout, http_503, parse, ...).
    error_reason: str | None = None
    extra: dict[str, float] = field(default_factory=dict)
    # Equal keys promise equal series columns row for row (pipeline.schema.Block): a
    # record holding several scrapes of the target stores its series once.
    series_key: Hashable | None = None
    health: pl.DataFrame | None = None  # the scrape's health rows, after ``samples``
    health_key: Hashable | None = None  # the same promise, for ``health``

    @property
    def ok(self) -> bool:
        return self.error is None

    @functools.cached_property
    def frame(self) -> pl.DataFrame | None:
        """Every row: ``samples`` then ``health``, in the sample columns' order."""
        if self.health is None:
            return self.samples
        if self.samples is None:
            return self.health
        return with_health(self.samples, self.health)

    def blocks(self) -> list[Block]:
        """The rows as record blocks with their series keys (empty ones left out)."""
        out = []
        if self.samples is not None and self.samples.height:
            out.append(Block(self.samples, self.series_key))
        if self.health is not None and self.health.height:
            out.append(Block(self.health, self.health_key))
        return out


def with_health(frame: pl.DataFrame, health_rows: pl.DataFrame) -> pl.DataFrame:
    """A target's sample rows followed by its health rows, in the sample columns' order.

    ``select`` and ``concat`` are queries that cost hundreds of microseconds for a
    few hundred rows (``concat`` hands the work to Polars' thread pool); frames
    already in column order, which every mapping returns, are only stacked.
    """
    if frame.columns != _COLUMN_LIST:
        frame = frame.select(COLUMNS)
    return frame.vstack(health_rows)


@runtime_checkable
class Collector(Protocol):
    """Anything that turns its targets into sample frames."""

    name: str

    async def collect(self, now: datetime) -> list[TargetResult]:
        """Read every target once; never raise for one bad target."""
        ...


@dataclass(frozen=True)
class ScrapeTarget:
    """One URL (or ``file://`` path) to read and what its samples belong to.

    Attributes:
        url: the page (``http(s)://host:port/path``) or ``file://<path>``.
        node: Kafka key and ``node`` column of its samples.
        replica: a name that tells two replicas of one model apart when the
            exporter does not (the pod, from discovery); used by KV-cache.
        interval_s: overrides the collector's interval for this target.
        meta: discovery metadata (``pod``, ``namespace``, kubelet ``endpoint``...).
    """

    url: str
    node: str
    replica: str | None = None
    interval_s: float | None = None
    meta: tuple[tuple[str, str], ...] = ()


FILE_SCHEME = "file://"


def file_target(path: str | os.PathLike[str], node: str, *,
                interval_s: float | None = None) -> ScrapeTarget:
    """A local file or directory as a target (read by the collector's file reader)."""
    return ScrapeTarget(FILE_SCHEME + os.fspath(path), node, interval_s=interval_s)


def target_path(target: ScrapeTarget) -> str | None:
    """The path of a ``file://`` target, ``None`` for an HTTP one."""
    return target.url[len(FILE_SCHEME):] if target.url.startswith(FILE_SCHEME) else None


@dataclass(frozen=True)
class Partial:
    """Samples from a payload or file tree that was only partly readable.

    Attributes:
        frame: the samples that were read.
        problems: reason (``missing``, ``unreadable``, ``malformed``, ...) -> series.
        detail: one problem in words, for the log (never a secret).
    """

    frame: pl.DataFrame
    problems: Mapping[str, int] = field(default_factory=dict)
    detail: str | None = None


@runtime_checkable
class SourceMapping(Protocol):
    """What one source adds to the scrape engine; pure (no I/O), may keep state.

    ``parse`` turns a fetched payload into upstream rows (a
    :class:`Partial` when only some of it was readable); ``transform`` adds
    entities and normalised signals (and events) to them.  ``shape_cache`` is
    the target's own parser cache, handed in by the engine's loop for that
    target, so a repeated scrape only re-reads the numbers; ``transform`` gets
    it too (see there).

    ``structural``: ``transform``'s names, kinds, entities and labels depend only
    on those of its input and on the target (never on values or on state), so
    two scrapes of a target that parsed to one shape transform to equal series.
    """

    source: str
    structural: bool

    def parse(self, text: str, openmetrics: bool, target: ScrapeTarget, scrape_ts_ms: int,
              shape_cache: ShapeCache | None = None) -> pl.DataFrame | Partial:
        """Upstream rows of one payload; raises ``ValueError`` (an ``InputError``) if malformed."""
        ...

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        """Upstream + normalised rows to produce for one target's scrape.

        ``shape_cache`` is the one ``frame`` was parsed through: a structural
        mapping may keep what it derived from the frame's shape there, so a
        repeated scrape only moves the numbers.
        """
        ...


# read(target, scrape_ts_ms) -> upstream rows, for ``file://`` targets.  Does I/O and runs
# in a worker thread; OSError means the target itself is unreadable.
FileReader = Callable[[ScrapeTarget, int], pl.DataFrame | Partial]


__all__ = [
    "FILE_SCHEME",
    "Collector",
    "FileReader",
    "Partial",
    "ScrapeTarget",
    "SourceMapping",
    "TargetResult",
    "file_target",
    "target_path",
    "with_health",
]
