"""The consume → apply → checkpoint → commit loop every Kafka stage shares.

Durability.  poll → apply → (produce and wait for acks) → checkpoint every
touched partition's state with the offset it covers → commit offsets.  A crash
before the checkpoint re-reads the records from the committed offset and
re-applies them to the previous checkpoint; a crash after it skips, on
restore, the records the checkpoint already covers.  So as long as a stage's
outputs are idempotent (upserts keyed by what they count), a crash anywhere
neither loses nor doubles a count.

Rebalances.  Revoked partitions are checkpointed and committed, then dropped;
assigned ones are restored from the checkpoint store (which members of one
group share), so a partition's state follows it to its new owner.  Processing
a poll and handling a rebalance take the same lock, so a partition never
changes hands half-applied.

A stage is a subclass that says how to apply records to its per-partition
state, and how to write, restore and drop that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import (
    ConsumedBatch,
    SampleConsumer,
    SampleProducer,
    TopicPartition,
)
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.checkpoint import CheckpointStore

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    """Self-metrics of one stage runner."""

    records: int = 0
    records_skipped: int = 0  # already covered by a restored checkpoint
    dead_records: int = 0
    rows_in: int = 0
    records_out: int = 0
    checkpoints: int = 0
    commits_failed: int = 0
    rebalances: int = 0


class StageRunner:
    """Consumer-group member with per-partition state checkpointed before each commit."""

    stage = "stage"

    def __init__(
        self,
        kafka_cfg: KafkaConfig,
        consumer_cfg: ConsumerConfig,
        store: CheckpointStore,
        topic: str,
        group_id: str,
        *,
        bootstrap_servers: str | None = None,
        checkpoint_interval_s: float = 0.0,
        decoder: Callable[[bytes], pl.DataFrame] | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        """``readiness`` gets a check named after the stage, ok once the group has
        assigned this member its partitions and their checkpoints are restored."""
        self.kafka_cfg = kafka_cfg
        self.topic = topic
        self.group_id = group_id
        self.store = store
        self.checkpoint_interval_s = checkpoint_interval_s
        self._bootstrap = bootstrap_servers
        self._producer = SampleProducer(kafka_cfg, bootstrap_servers=bootstrap_servers)
        extra: dict[str, Any] = {"decoder": decoder} if decoder is not None else {}
        self.consumer = SampleConsumer(
            kafka_cfg, consumer_cfg, [topic], group_id=group_id,
            bootstrap_servers=bootstrap_servers, dlq=self._producer,
            rebalance=self, **extra,
        )
        self._lock = asyncio.Lock()
        self._owned: set[int] = set()
        self._next_offset: dict[int, int] = {}  # first offset not yet applied, per partition
        self._uncommitted: dict[int, ConsumedBatch] = {}  # newest applied record per partition
        self._dirty: set[int] = set()  # applied since the last checkpoint
        self._last_flush = time.monotonic()
        self._crashed = False
        self.stats = StageStats()
        self.fault: Callable[[str], None] | None = None  # test hook: raise to simulate a crash
        self._readiness = readiness
        if readiness is not None:
            readiness.expect(self.stage, f"joining group {group_id} on {topic}")

    @property
    def scope(self) -> str:
        """Checkpoint namespace: stage, group and topic."""
        return f"{self.stage}.{self.group_id}.{self.topic}"

    async def start(self) -> StageRunner:
        await self._producer.start()
        await self.consumer.start()
        return self

    async def stop(self, *, flush: bool = True) -> None:
        """Leave the group; with ``flush``, checkpoint and commit what was applied first.

        ``flush=False`` is what a crash looks like to the rest of the group.
        """
        self._crashed = not flush
        try:
            if flush:
                async with self._lock:
                    await self._flush(force=True)
        finally:
            await self.consumer.stop()
            await self._producer.stop()

    def owned(self) -> set[int]:
        """Partitions this member holds state for."""
        return set(self._owned)

    def _crash_point(self, where: str) -> None:
        if self.fault is not None:
            self.fault(where)

    async def step(self, timeout_ms: int | None = None, stop: asyncio.Event | None = None) -> int:
        """One poll, applied, checkpointed and committed when due; returns records applied.

        With ``stop``, a poll still waiting for records is abandoned once it is set
        (a drain need not wait out the poll timeout); records already returned
        are applied as usual.
        """
        batches = await self._poll(timeout_ms, stop)
        if not batches:
            async with self._lock:
                await self._flush(force=False)
            return 0
        async with self._lock:
            fresh: list[ConsumedBatch] = []
            for b in batches:
                if b.partition not in self._owned:
                    continue  # revoked while the poll was in flight: the new owner has it
                if b.offset < self._next_offset.get(b.partition, 0):
                    self.stats.records_skipped += 1
                    continue
                fresh.append(b)
            if fresh:
                self._crash_point("polled")
                await self._apply(fresh)
                for b in fresh:
                    self._next_offset[b.partition] = b.offset + 1
                    self._uncommitted[b.partition] = b
                    self._dirty.add(b.partition)
                self.stats.records += len(fresh)
                self.stats.dead_records += sum(1 for b in fresh if b.dead)
            await self._flush(force=False)
            return len(fresh)

    async def _poll(
        self, timeout_ms: int | None, stop: asyncio.Event | None
    ) -> list[ConsumedBatch]:
        if stop is None:
            return await self.consumer.poll(timeout_ms)
        poll = asyncio.ensure_future(self.consumer.poll(timeout_ms))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if poll.done():
            return poll.result()
        # Nothing was handed over, so nothing is applied or committed: a record the
        # consumer had fetched is read again by the partition's next owner.
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        return []

    async def _flush(self, *, force: bool) -> None:
        """Checkpoint dirty partitions, then commit their offsets (lock held)."""
        if self._crashed or (not self._dirty and not self._uncommitted):
            return
        if not force and time.monotonic() - self._last_flush < self.checkpoint_interval_s:
            return
        for p in sorted(self._dirty & self._owned):
            self._write_checkpoint(p)
            self.stats.checkpoints += 1
        self._dirty.clear()
        self._last_flush = time.monotonic()
        self._crash_point("checkpointed")
        pending = [b for p, b in self._uncommitted.items() if p in self._owned]
        self._uncommitted.clear()
        if pending and not await self.consumer.commit(pending):
            # Rebalanced meanwhile: the new owner restores our checkpoint and skips them.
            self.stats.commits_failed += 1

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            self.stats.rebalances += 1
            await self._flush(force=True)
            for tp in revoked:
                if tp.topic == self.topic:
                    self._drop(tp.partition)
                    self._owned.discard(tp.partition)
                    self._next_offset.pop(tp.partition, None)

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            for tp in assigned:
                if tp.topic != self.topic or tp.partition in self._owned:
                    continue
                ckpt = self.store.read(self.scope, tp.partition)
                self._restore(tp.partition, ckpt.frames if ckpt else None,
                              ckpt.meta if ckpt else {})
                self._next_offset[tp.partition] = ckpt.next_offset if ckpt else 0
                self._owned.add(tp.partition)
            log.info("%s owns %s partitions %s", self.stage, self.topic, sorted(self._owned))
            if self._readiness is not None:
                self._readiness.ok(self.stage, f"group {self.group_id}: partitions "
                                   f"{sorted(self._owned)} of {self.topic} assigned, "
                                   "checkpoints restored")

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set."""
        while not stop.is_set():
            await self.step(stop=stop)

    # -- per-stage ---------------------------------------------------------------------------

    async def _apply(self, batches: list[ConsumedBatch]) -> None:
        raise NotImplementedError

    def _write_checkpoint(self, partition: int) -> None:
        raise NotImplementedError

    def _restore(
        self, partition: int, frames: dict[str, pl.DataFrame] | None, meta: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    def _drop(self, partition: int) -> None:
        raise NotImplementedError


__all__ = ["StageRunner", "StageStats"]
