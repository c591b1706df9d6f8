"""The collector family's contract.

A collector is "given a clock, return a batch": one call scrapes or reads its
sources once and returns a sample frame (see :mod:`pipeline.schema`).  The
runtime owns timing, Kafka and error accounting, so a collector stays a small
object that can be tested with a fixed ``now`` and no broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import polars as pl


@dataclass(frozen=True)
class TargetResult:
    """The outcome of reading one target once: samples, or why there are none."""

    target: str
    node: str
    frame: pl.DataFrame | None
    duration_s: float
    error: str | None = None
    # A short machine-readable reason for self-metrics (timeout, http_503, parse, ...).
    error_reason: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Collector(Protocol):
    """Anything that turns its targets into sample frames."""

    name: str

    async def collect(self, now: datetime) -> list[TargetResult]:
        """Read every target once; never raise for one bad target."""
        ...
