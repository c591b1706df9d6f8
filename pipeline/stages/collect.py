"""The collect stage: collectors on their intervals → Kafka.

Only coordination lives here.  Each collector runs in its own task so a slow
one never delays another; a failed produce keeps the batch in a bounded
retry buffer (oldest dropped first, and counted) so that a broker restart
loses nothing that fits in memory and never crashes the process.

Why results wait up to ``kafka.record_linger_ms`` before they are produced:
a record has a fixed cost (its encoding's schema and dictionaries, a Kafka
request with its acknowledgement, a compression call), which for a target of
a hundred samples was most of the collector's CPU and most of the bytes after
compression.  So each result joins the retry buffer at once, and a background
flusher sends the buffer when its oldest entry has waited ``record_linger_ms``
(or the buffer is a quarter full), as one record per node: every result of that
node waiting then, in order.  The scrape engine fires a node's targets together
(:func:`~gpuslo.collectors.scrape.engine.phase`), so a record holds at least a
whole scrape of the node.  Records of different nodes are sent concurrently;
one node's records stay in order.  Without a running flusher (``run_once``) a
result is produced at once, as before.

Stopping (SIGTERM, Ctrl-C) drains: no new scrape starts, the scrapes in hand
get ``scrape_wait_s`` to finish and be handed over, and the producer gets
``flush_s`` to deliver what is pending; anything left after that is counted in
``stats.pending`` and logged, never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gpuslo.collectors.base import Collector, TargetResult
from gpuslo.exporters.base import ScrapeTargetKey
from gpuslo.pipeline.aio import Clock, sleep_or_stop, utc_now
from gpuslo.pipeline.kafka.client import SampleProducer, TransportError
from gpuslo.pipeline.readiness import READY_KAFKA, READY_TARGETS, Readiness
from gpuslo.pipeline.schema import Block, SchemaError

log = logging.getLogger(__name__)

Submit = Callable[[list[TargetResult]], Awaitable[object]]

# Why the collect stage drops samples (``gpuslo_dropped_total{reason}``): exported as 0
# from the start, so a dashboard's rate() has a series before the first drop.
DROP_RETRY_BUFFER_FULL = "retry_buffer_full"
DROP_PRODUCE_REJECTED = "produce_rejected"
DROP_UNENCODABLE = "unencodable"
DROP_REASONS = (DROP_RETRY_BUFFER_FULL, DROP_PRODUCE_REJECTED, DROP_UNENCODABLE)

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


@runtime_checkable
class ListsTargets(Protocol):
    """A collector that can say which targets it would scrape now (discovery included).

    The runner asks once at start, so readiness means "targets discovered",
    also on a node where discovery finds none.
    """

    async def current_targets(self) -> Sequence[object]:
        """The targets now (the static list, or what discovery returns)."""
        ...


@dataclass
class CollectStats:
    """Self-metrics of the collect loop (one contract for every collector).

    Per-target figures are keyed by (collector, source, node, target URL): two
    collectors may read one page, and each has its own health.
    """

    scrapes: Counter[str] = field(default_factory=Counter)  # by collector
    target_up: dict[ScrapeTargetKey, bool] = field(default_factory=dict)
    target_duration_s: dict[ScrapeTargetKey, float] = field(default_factory=dict)
    target_samples: dict[ScrapeTargetKey, int] = field(default_factory=dict)
    errors: Counter[tuple[ScrapeTargetKey, str]] = field(default_factory=Counter)  # by reason
    samples_produced: int = 0
    records_produced: int = 0
    produce_failures: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    pending: int = 0  # batches not delivered yet
    pending_samples: int = 0


@dataclass(frozen=True, eq=False)
class _Pending:
    key: str
    blocks: tuple[Block, ...]  # one scrape's rows in order, with their series keys
    at: float = field(default_factory=time.monotonic)  # when it joined the buffer

    @property
    def height(self) -> int:
        return sum(b.frame.height for b in self.blocks)


class CollectRunner:
    """Run collectors on their intervals and produce their batches to Kafka."""

    def __init__(
        self,
        collectors: list[tuple[Collector, float]],
        producer: SampleProducer,
        topic: str,
        *,
        clock: Clock = utc_now,
        max_pending_batches: int = 10_000,
        jitter: float = 0.1,
        stop_grace_s: float = 10.0,
        flush_s: float = 20.0,
        record_linger_s: float | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        """``stop_grace_s``: how long the scrapes in hand may take once stopped;
        ``flush_s``: how long the producer may then take to deliver what is
        pending; ``record_linger_s`` defaults to the producer's
        ``kafka.record_linger_ms``.  ``readiness`` gets the ``targets`` check
        (registered here)."""
        self._collectors = collectors
        self._sources = {c.name: str(getattr(c, "source", c.name)) for c, _ in collectors}
        self._producer = producer
        self._topic = topic
        self._clock = clock
        self._pending: deque[_Pending] = deque()
        self._max_pending = max_pending_batches
        self._jitter = jitter
        self._stop_grace_s = stop_grace_s
        self._flush_s = flush_s
        self._lock = asyncio.Lock()
        if record_linger_s is None:
            record_linger_s = producer.cfg.record_linger_ms / 1000
        self._linger_s = max(0.0, record_linger_s)
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._readiness = readiness
        self._first_round: set[str] = set()  # collectors yet to list or scrape their targets
        self._listing = {c.name for c, _ in collectors if isinstance(c, ListsTargets)}
        self._targets_listed = 0
        self.stats = CollectStats()
        self.stats.dropped.update(dict.fromkeys(DROP_REASONS, 0))
        if readiness is not None:
            readiness.expect(READY_TARGETS, f"listing the targets of {len(collectors)} "
                             "collector(s)")

    async def run_once(self, collector: Collector) -> list[TargetResult]:
        """One scrape of one collector, produced; returns per-target results."""
        results = await collector.collect(self._clock())
        await self.submit(collector.name, results)
        return results

    def target_key(self, collector_name: str, node: str, target: str) -> ScrapeTargetKey:
        """The health key of one target of one collector."""
        return ScrapeTargetKey(collector_name, self._sources.get(collector_name, collector_name),
                               node, target)

    async def submit(self, collector_name: str, results: list[TargetResult]) -> None:
        """Account for and produce one scrape's results.

        A failed result may still carry a frame (the scrape engine's health
        rows, so ``up == 0`` reaches Kafka); it is produced too.
        """
        self.stats.scrapes[collector_name] += 1
        if collector_name not in self._listing:
            self._listed(collector_name, len(results))
        for r in results:
            key = self.target_key(collector_name, r.node, r.target)
            self.stats.target_up[key] = r.ok
            self.stats.target_duration_s[key] = r.duration_s
            if r.ok and r.samples is not None:
                samples = r.extra.get("samples")  # not r.frame: that stacks the health rows
                self.stats.target_samples[key] = int(
                    samples if samples is not None else r.samples.height)
            else:
                self.stats.errors[(key, r.error_reason or "error")] += 1
                log.warning("scrape failed: %s", r.error)
            blocks = r.blocks()
            if blocks:
                self._enqueue(_Pending(r.node, tuple(blocks)))
        if self._flusher is None or self._linger_s <= 0:
            await self.flush()
        else:
            self._wake.set()
    def _listed(self, collector_name: str, n_targets: int) -> None:
        """``collector_name`` has listed (or scraped) its targets once: readiness."""
        if collector_name not in self._first_round:
            return
        self._first_round.discard(collector_name)
        self._targets_listed += n_targets
        if not self._first_round and self._readiness is not None:
            self._readiness.ok(READY_TARGETS, f"{self._targets_listed} target(s) of "
                               f"{len(self._collectors)} collector(s) listed")

    async def _list_targets(self, collector: ListsTargets, name: str,
                            stop: asyncio.Event) -> None:
        """Ask ``collector`` once for its targets (retrying a failure) for readiness."""
        while not stop.is_set():
            try:
                targets = await collector.current_targets()
            except Exception as exc:  # discovery is the collector's; readiness says why
                log.warning("listing the targets of %s failed: %s", name, exc)
                if self._readiness is not None:
                    self._readiness.fail(READY_TARGETS, f"{name}: {type(exc).__name__}: {exc}")
                await sleep_or_stop(stop, 5.0)
                continue
            self._listed(name, len(targets))
            return

    def _enqueue(self, item: _Pending) -> None:
        # Counted as it changes, not summed over the buffer: a result joins it for each
        # target scrape, and the buffer holds a linger window of them.
        if len(self._pending) >= self._max_pending:
            old = self._pending.popleft()
            self.stats.dropped[DROP_RETRY_BUFFER_FULL] += old.height
            self.stats.pending_samples -= old.height
            log.error(
                "retry buffer full (%d batches): dropped oldest batch of %d samples",
                self._max_pending,
                old.height,
            )
        self._pending.append(item)
        self.stats.pending = len(self._pending)
        self.stats.pending_samples += item.height

    def _count_pending(self) -> None:
        self.stats.pending = len(self._pending)
        self.stats.pending_samples = sum(p.height for p in self._pending)

    async def flush(self) -> bool:
        """Send every batch pending now, one record per node (in order within a node).

        Returns False when a retriable failure kept some batches for the next flush.
        Batches that arrive while it sends wait for the next one.
        """
        async with self._lock:
            groups: dict[str, list[_Pending]] = {}
            for item in self._pending:
                groups.setdefault(item.key, []).append(item)
            outcomes = await asyncio.gather(
                *(self._send(key, group) for key, group in groups.items()))
            done = {id(i) for group, ok in zip(groups.values(), outcomes, strict=True)
                    if ok for i in group}
            self._pending = deque(i for i in self._pending if id(i) not in done)
            self._count_pending()
            return all(outcomes)

    async def _send(self, key: str, group: list[_Pending]) -> bool:
        """Produce one node's waiting batches as one record; False: keep them for a retry."""
        rows = sum(i.height for i in group)
        blocks = [b for i in group for b in i.blocks]
        try:
            try:
                sent = await self._producer.send_blocks(self._topic, key, blocks)
            except SchemaError as exc:
                # A series key that did not hold (a collector bug): the rows as they are.
                log.error("batch of %s not encodable with its series keys, sent without "
                          "them: %s", key, exc)
                sent = await self._producer.send_blocks(
                    self._topic, key, [Block(b.frame) for b in blocks])
        except SchemaError as exc:  # not a sample frame: it would block this node forever
            self.stats.dropped[DROP_UNENCODABLE] += rows
            log.error("batch of %s dropped, not a sample frame: %s", key, exc)
            return True
        except TransportError as exc:
            self.stats.produce_failures += 1
            if exc.retriable:
                log.warning("produce failed, %d batches kept for retry: %s",
                            len(self._pending), exc)
                self._kafka_ready(False, f"produce failing, {len(self._pending)} "
                                  f"batch(es) kept for retry: {exc}")
                return False
            self.stats.dropped[DROP_PRODUCE_REJECTED] += rows
            log.error("batch dropped, broker rejected it: %s", exc)
            return True
        self.stats.samples_produced += rows
        self.stats.records_produced += len(sent)
        self._kafka_ready(True, "producing")
        return True

    def _kafka_ready(self, ok: bool, reason: str) -> None:
        """Kafka readiness follows the produces once running: a broker gone is not ready."""
        if self._readiness is None:
            return
        was = self._readiness.check(READY_KAFKA)
        if was is not None and was.ok and ok:
            return  # the common case, once per batch: nothing to change
        self._readiness.mark(READY_KAFKA, ok, reason)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        """Flush when the oldest pending batch has waited the linger time (or the buffer
        is a quarter full); after a failed flush, wait a linger time before retrying."""
        while not stop.is_set():
            if not self._pending:
                await self._woken(None)
                continue
            due = self._pending[0].at + self._linger_s - time.monotonic()
            if due > 0 and len(self._pending) < max(1, self._max_pending // 4):
                await self._woken(due)
                continue
            try:
                ok = await self.flush()
            except Exception:  # never let the flusher die: the buffer would only grow
                log.exception("flushing the collect buffer failed")
                ok = False
            if not ok:
                await sleep_or_stop(stop, max(self._linger_s, 1.0))

    async def _woken(self, timeout_s: float | None) -> None:
        """Wait for a new batch (or the stop, which also wakes) at most ``timeout_s``."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)

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
                self.stats.errors[(self.target_key(collector.name, "", ""), "exception")] += 1
            await sleep_or_stop(stop, max(0.0, interval_s - (loop.time() - started)))

    async def _scheduled(self, collector: ScheduledCollector, stop: asyncio.Event) -> None:
        async def submit(results: list[TargetResult]) -> None:
            await self.submit(collector.name, results)

        while not stop.is_set():
            try:
                await collector.run(submit, stop, self._clock)
            except Exception:  # restart it: a bug in one collector must not stop the others
                log.exception("collector %s failed", collector.name)
                self.stats.errors[(self.target_key(collector.name, "", ""), "exception")] += 1
                await sleep_or_stop(stop, 1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every collector until ``stop`` is set, then drain (see the module's doc)."""
        self._first_round = {c.name for c, _ in self._collectors}
        if not self._collectors and self._readiness is not None:
            self._readiness.ok(READY_TARGETS, "no collectors")
        if self._linger_s > 0:
            self._flusher = asyncio.create_task(self._flush_loop(stop), name="collect:flush")
        tasks = [
            asyncio.create_task(self._list_targets(c, c.name, stop), name=f"list:{c.name}")
            for c, _ in self._collectors if isinstance(c, ListsTargets)
        ]
        loops = [
            asyncio.create_task(self._loop(c, i, stop), name=f"collect:{c.name}")
            for c, i in self._collectors
        ]
        tasks += loops
        try:
            await stop.wait()
            self._wake.set()  # the flusher sends what is pending and ends
            # Let each loop finish the scrape and produce in hand: cancelling a send
            # half-way would leave a delivered batch in the retry buffer (a duplicate).
            await asyncio.wait([*loops, *([self._flusher] if self._flusher else [])],
                               timeout=self._stop_grace_s)
        finally:
            flusher, self._flusher = self._flusher, None
            if flusher is not None:
                tasks.append(flusher)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.drain()

    async def drain(self) -> bool:
        """Deliver what is pending within ``flush_s``; True when nothing is left.

        Past the limit the send in flight is abandoned (it may still land: at
        least once) and what is left is logged; the process is stopping anyway.
        """
        async def until_empty() -> bool:
            # A broker that is back within the limit still gets everything; the limit
            # is the wait_for below, not an event (nothing else will say "try now").
            while not await self.flush():  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            return True

        try:
            delivered = await asyncio.wait_for(until_empty(), self._flush_s)
        except TransportError as exc:
            log.error("final flush failed: %s", exc)
            delivered = False
        except TimeoutError:
            delivered = False
        if not delivered:
            self._count_pending()
            log.error("stopping with %d batch(es) (%d samples) not delivered to Kafka "
                      "(flush limit %gs)", self.stats.pending, self.stats.pending_samples,
                      self._flush_s)
        return delivered
