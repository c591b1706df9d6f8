"""The collect stage: collectors on their intervals → Kafka.

Only coordination lives here.  Each collector runs in its own task so a slow
one never delays another; a failed produce keeps the batch in a bounded
retry buffer (oldest dropped first, and counted) so that a broker restart
loses nothing that fits in memory and never crashes the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import polars as pl

from gpuslo.collectors.base import Collector, TargetResult
from gpuslo.pipeline.aio import Clock, sleep_or_stop, utc_now
from gpuslo.pipeline.kafka.client import SampleProducer, TransportError

log = logging.getLogger(__name__)

Submit = Callable[[list[TargetResult]], Awaitable[object]]


@runtime_checkable
class ScheduledCollector(Collector, Protocol):
    """A collector that keeps its own per-target schedule (the HTTP scrape engine).

    ``collect(now)`` returns when the slowest target is done; a collector with
    many targets of different health would make every batch wait for its worst
    target.  Such a collector instead runs until ``stop`` and hands each
    target's result to ``submit`` as soon as it exists; the runner does the
    accounting and the producing exactly as for ``collect``.
    """

    async def run(
        self, submit: Submit, stop: asyncio.Event, clock: Clock | None = None
    ) -> None:
        """Scrape until ``stop`` is set, calling ``submit`` with each target's results.

        ``clock`` stamps each scrape (the runner's, so a simulated clock reaches
        every source); None keeps the collector's own.
        """
        ...


@dataclass
class CollectStats:
    """Self-metrics of the collect loop (one contract for every collector)."""

    scrapes: Counter[str] = field(default_factory=Counter)  # by collector
    target_up: dict[str, bool] = field(default_factory=dict)  # by target
    target_duration_s: dict[str, float] = field(default_factory=dict)
    target_samples: dict[str, int] = field(default_factory=dict)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, reason)
    samples_produced: int = 0
    records_produced: int = 0
    produce_failures: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    pending: int = 0


@dataclass(frozen=True)
class _Pending:
    key: str
    frame: pl.DataFrame


class CollectRunner:
    """Run collectors on their intervals and produce their batches to Kafka."""

    def __init__(
        self,
        collectors: list[tuple[Collector, float]],
        producer: SampleProducer,
        topic: str,
        *,
        clock: Clock = utc_now,
        max_pending_batches: int = 1000,
        jitter: float = 0.1,
        stop_grace_s: float = 10.0,
    ) -> None:
        self._collectors = collectors
        self._producer = producer
        self._topic = topic
        self._clock = clock
        self._pending: deque[_Pending] = deque()
        self._max_pending = max_pending_batches
        self._jitter = jitter
        self._stop_grace_s = stop_grace_s
        self._lock = asyncio.Lock()
        self.stats = CollectStats()

    async def run_once(self, collector: Collector) -> list[TargetResult]:
        """One scrape of one collector, produced; returns per-target results."""
        results = await collector.collect(self._clock())
        await self.submit(collector.name, results)
        return results

    async def submit(self, collector_name: str, results: list[TargetResult]) -> None:
        """Account for and produce one scrape's results.

        A failed result may still carry a frame (the scrape engine's health
        rows, so ``up == 0`` reaches Kafka); it is produced too.
        """
        self.stats.scrapes[collector_name] += 1
        for r in results:
            self.stats.target_up[r.target] = r.ok
            self.stats.target_duration_s[r.target] = r.duration_s
            if r.ok and r.frame is not None:
                self.stats.target_samples[r.target] = int(r.extra.get("samples", r.frame.height))
            else:
                self.stats.errors[(r.target, r.error_reason or "error")] += 1
                log.warning("scrape failed: %s", r.error)
            if r.frame is not None and r.frame.height:
                self._enqueue(_Pending(r.node, r.frame))
        await self.flush()

    def _enqueue(self, item: _Pending) -> None:
        if len(self._pending) >= self._max_pending:
            old = self._pending.popleft()
            self.stats.dropped["retry_buffer_full"] += old.frame.height
            log.error(
                "retry buffer full (%d batches): dropped oldest batch of %d samples",
                self._max_pending,
                old.frame.height,
            )
        self._pending.append(item)
        self.stats.pending = len(self._pending)

    async def flush(self) -> bool:
        """Send pending batches in order; stop at the first retriable failure."""
        async with self._lock:
            while self._pending:
                item = self._pending[0]
                try:
                    sent = await self._producer.send_frame(self._topic, item.key, item.frame)
                except TransportError as exc:
                    self.stats.produce_failures += 1
                    if exc.retriable:
                        log.warning(
                            "produce failed, %d batches kept for retry: %s", len(self._pending), exc
                        )
                        self.stats.pending = len(self._pending)
                        return False
                    self._pending.popleft()
                    self.stats.dropped["produce_rejected"] += item.frame.height
                    log.error("batch dropped, broker rejected it: %s", exc)
                    continue
                self._pending.popleft()
                self.stats.samples_produced += item.frame.height
                self.stats.records_produced += len(sent)
            self.stats.pending = 0
            return True

    async def _loop(self, collector: Collector, interval_s: float, stop: asyncio.Event) -> None:
        if isinstance(collector, ScheduledCollector):
            await self._scheduled(collector, stop)
            return
        loop = asyncio.get_running_loop()
        # Spread the first scrape so that many collectors do not fire in lockstep.
        await sleep_or_stop(stop, random.uniform(0, interval_s * self._jitter))
        while not stop.is_set():
            started = loop.time()
            try:
                await self.run_once(collector)
            except Exception:  # a bug in one collector must not stop the others
                log.exception("collector %s failed", collector.name)
                self.stats.errors[(collector.name, "exception")] += 1
            await sleep_or_stop(stop, max(0.0, interval_s - (loop.time() - started)))

    async def _scheduled(self, collector: ScheduledCollector, stop: asyncio.Event) -> None:
        async def submit(results: list[TargetResult]) -> None:
            await self.submit(collector.name, results)

        while not stop.is_set():
            try:
                await collector.run(submit, stop, self._clock)
            except Exception:  # restart it: a bug in one collector must not stop the others
                log.exception("collector %s failed", collector.name)
                self.stats.errors[(collector.name, "exception")] += 1
                await sleep_or_stop(stop, 1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every collector until ``stop`` is set, then flush what is pending."""
        tasks = [
            asyncio.create_task(self._loop(c, i, stop), name=f"collect:{c.name}")
            for c, i in self._collectors
        ]
        try:
            await stop.wait()
            # Let each loop finish the scrape and produce in hand: cancelling a send
            # half-way would leave a delivered batch in the retry buffer (a duplicate).
            await asyncio.wait(tasks, timeout=self._stop_grace_s)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            with contextlib.suppress(TransportError):
                await self.flush()
