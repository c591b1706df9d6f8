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

Progress watchdog.  After a broker restart an aiokafka consumer can stop
fetching without raising anything, and a broker that keeps its log in memory
(the embedded one) comes back with every partition empty, so the offsets this
stage has applied lie beyond the new log's end.  So the runner checks the log
end offsets of its partitions (a) after each assignment, (b) when a poll
brought only records it had already applied, and (c) when it has applied
nothing for ``consumer.stall_timeout_s``:

* a log end *below* the next offset it would apply means the log was lost
  (impossible on a persistent log, whose offsets never go back): it is logged,
  counted (``log_resets``, exported as
  ``gpuslo_consumer_recoveries_total{reason="log_reset"}``), and the
  partition is read again from the start of the new log, which holds only
  records produced after the loss.  The state built before it is kept.
* a log end *above* it with nothing applied for the stall timeout, or offsets
  that cannot be read for that long, means the consumer is stuck: what was
  applied is checkpointed, the state dropped, the topic created if it is gone,
  and a new consumer joins the group and restores from the checkpoints, as a
  restarted process would (``consumer_restarts``, ``reason="stalled"``).

A log end cannot show a new log that has already grown past the old position
when first looked at (a stage whose consumer took longer to rejoin than the new
log took to outgrow the old one): its records below that position would be
skipped as already applied, and the ones above applied before them.  So the
runner also remembers *which* record it applied last in each partition (a
fingerprint of its key, timestamp and value, kept in the checkpoint), and every
member that is assigned a partition (a restart, a rebalance, and the rejoin
that follows any broker restart, since the new broker does not know the group)
resumes one record early, at that record, before applying anything: the log
must hold it there.  A different record there, or a first record below it (the
position fell outside the new log and the consumer was reset to its start), is
a log reset as above; a first record above it is a log cut by retention below
the position, which a persistent log may do, and is read on.  A member that
keeps its partitions through the restart sees the reset as its position going
back: Kafka found it outside the new log and moved it to the log's start, so a
record arrives below one already delivered since the assignment.  Either way
the partition is rewound before any record of the new log is applied.

Left uncovered: a member whose fetch position still lies inside the new log
when it reconnects (the new log grew past the old position within the moment
the member took to reconnect) and that applies records there before the group
rejoin that follows; on the embedded broker this needs a partition's new log to
outgrow its old one within about a heartbeat interval of the restart.

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
from gpuslo.pipeline.errors import GpusloError
from gpuslo.pipeline.kafka.client import (
    ConsumedBatch,
    SampleConsumer,
    SampleProducer,
    TopicPartition,
    ensure_topics,
)
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.checkpoint import CheckpointStore

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    """Self-metrics of one stage runner."""

    records: int = 0
    records_skipped: int = 0  # already covered by a restored checkpoint
    resumed: int = 0  # partitions resumed at the record their checkpoint covers last
    dead_records: int = 0
    rows_in: int = 0
    records_out: int = 0
    checkpoints: int = 0
    commits_failed: int = 0
    rebalances: int = 0
    log_resets: int = 0  # partitions found shorter than what was applied (log lost)
    consumer_restarts: int = 0  # consumers recreated by the progress watchdog


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
        self._stall_s = consumer_cfg.stall_timeout_s
        self._progress_at = time.monotonic()  # last record applied, or found at the log end
        self._verify: set[int] = set()  # assigned since the last look at the log ends
        self._last_fp: dict[int, int] = {}  # fingerprint of the record at next_offset - 1
        # Assigned partitions resumed one record early: (offset, fingerprint) it must hold.
        self._expect: dict[int, tuple[int, int]] = {}
        # Offset of the last record delivered per partition since it was assigned (or
        # rewound): a consumer's position never goes back on its own, except when Kafka
        # finds it outside the log and resets it to the log's start.
        self._delivered: dict[int, int] = {}
        self._rollback = False  # an apply failed half-way: back to the checkpoints
        self.output_topics: list[str] = []  # produced to: recreated with the input on recovery
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

    def recoveries(self) -> dict[tuple[str, str], int]:
        """The progress watchdog's recoveries by (consumer group, reason), as
        ``gpuslo_consumer_recoveries_total`` exports them."""
        return {(self.group_id, "log_reset"): self.stats.log_resets,
                (self.group_id, "stalled"): self.stats.consumer_restarts}

    def _crash_point(self, where: str) -> None:
        if self.fault is not None:
            self.fault(where)

    async def step(self, timeout_ms: int | None = None, stop: asyncio.Event | None = None) -> int:
        """One poll, applied, checkpointed and committed when due; returns records applied.

        With ``stop``, a poll still waiting for records is abandoned once it is set
        (a drain need not wait out the poll timeout); records already returned
        are applied as usual.  Then the progress watchdog looks at the log ends
        when due (see the module's doc).
        """
        if not self.consumer.started:  # a recovery could not start its consumer
            await self._recover("the last recovery could not start a consumer", stop)
            return 0
        try:
            batches = await self._poll(timeout_ms, stop)
        except GpusloError as exc:
            if not exc.retriable:
                raise
            log.warning("%s poll of %s failed: %s", self.stage, self.topic, exc)
            batches = []
        applied = 0
        failed: GpusloError | None = None
        lost: dict[int, str] = {}  # partitions whose log was replaced: why
        async with self._lock:
            fresh: list[ConsumedBatch] = []
            for b in batches:
                if b.partition not in self._owned:
                    continue  # revoked while the poll was in flight: the new owner has it
                if b.partition in lost:
                    continue  # read again from the new log's start
                seen = self._delivered.get(b.partition)
                self._delivered[b.partition] = b.offset
                expected = self._expect.pop(b.partition, None)
                why = (self._check_resume(b, *expected) if expected is not None
                       else f"went back from offset {seen} to {b.offset} (the position lay "
                       "outside its log)" if seen is not None and b.offset < seen else None)
                if why is not None:
                    lost[b.partition] = why
                    continue
                if expected is not None and b.offset == expected[0]:
                    self.stats.resumed += 1  # the check's record, applied already
                    continue
                if b.offset < self._next_offset.get(b.partition, 0):
                    self.stats.records_skipped += 1
                    continue
                fresh.append(b)
            if lost:
                self._mark_reset(lost)
                fresh = [b for b in fresh if b.partition not in lost]
            if fresh:
                self._crash_point("polled")
                try:
                    await self._apply(fresh)
                except GpusloError as exc:
                    if not exc.retriable:
                        raise
                    failed = exc
            if failed is not None:
                # Applied but its output not produced (Kafka away): as after a crash here,
                # the state goes back to the last checkpoint and the records are read again.
                self._rollback = True
            elif fresh:
                for b in fresh:
                    self._next_offset[b.partition] = b.offset + 1
                    self._last_fp[b.partition] = b.fingerprint
                    self._uncommitted[b.partition] = b
                    self._dirty.add(b.partition)
                self.stats.records += len(fresh)
                self.stats.dead_records += sum(1 for b in fresh if b.dead)
                self._progress_at = time.monotonic()
                applied = len(fresh)
            if not self._rollback:
                await self._flush(force=False)
        if lost and not await self._reread(sorted(lost), stop):
            return applied
        if self._rollback:
            await self._recover(f"output not produced ({failed}); back to the last "
                                "checkpoint", stop, checkpoint=False)
            return 0
        if (self._verify or (batches and not applied)
                or time.monotonic() - self._progress_at >= self._stall_s):
            await self._watch(stop)
        return applied

    async def _watch(self, stop: asyncio.Event | None) -> None:
        """Compare the log ends with what was applied: reset, stalled, or fine."""
        self._verify.clear()
        owned = sorted(self._owned)
        if not owned:
            self._progress_at = time.monotonic()
            return
        try:
            ends = await asyncio.wait_for(
                self.consumer.end_offsets(self.topic, owned),
                self.kafka_cfg.request_timeout_ms / 1000)
        except (GpusloError, TimeoutError) as exc:
            if time.monotonic() - self._progress_at >= self._stall_s:
                await self._recover(f"log end offsets not readable: {exc}", stop)
            return
        async with self._lock:
            reset = {p: f"ends at offset {ends.get(p, 0)}, below the "
                        f"{self._next_offset[p]} already applied"
                     for p in owned
                     if p in self._owned and ends.get(p, 0) < self._next_offset.get(p, 0)}
            self._mark_reset(reset)
            behind = any(ends.get(p, 0) > self._next_offset.get(p, 0)
                         for p in owned if p in self._owned)
        if reset and not await self._reread(sorted(reset), stop):
            return
        if reset or not behind:
            self._progress_at = time.monotonic()
        elif time.monotonic() - self._progress_at >= self._stall_s:
            await self._recover(f"nothing applied for {self._stall_s:g}s while the log "
                                "ends moved past the position", stop)

    def _check_resume(self, b: ConsumedBatch, offset: int, fingerprint: int) -> str | None:
        """The first record read from a partition resumed at ``offset``: None when the log
        still holds the record applied last there (skipped as applied) or was cut below it
        (retention: read on), else why the log is not the one applied."""
        if b.offset == offset and b.fingerprint == fingerprint:
            return None
        if b.offset == offset:
            return (f"holds another record at offset {offset} than the one applied there "
                    "(a new log has grown past the position)")
        if b.offset < offset:
            return (f"restarts at offset {b.offset}, below the {offset + 1} already applied "
                    "(the position lies outside its log)")
        log.warning("%s: partition %d of %s resumes at offset %d: the records from %d were "
                    "deleted (retention) before they were read", self.stage, b.partition,
                    self.topic, b.offset, offset + 1)
        return None

    def _mark_reset(self, lost: dict[int, str]) -> None:
        """Count and log a log reset of each partition of ``lost`` and start it again at
        offset 0, keeping its state (lock held; :meth:`_reread` then rewinds)."""
        for p, why in sorted(lost.items()):
            self.stats.log_resets += 1
            log.warning(
                "%s: partition %d of %s %s: the broker lost its log (an in-memory broker "
                "restarted?). Records not yet applied before the loss are lost; reading the "
                "new log from its start", self.stage, p, self.topic, why)
            self._next_offset[p] = 0
            self._last_fp.pop(p, None)
            self._expect.pop(p, None)
            self._delivered.pop(p, None)
            self._uncommitted.pop(p, None)  # its offset means nothing in the new log
            self._dirty.add(p)  # the checkpoint must say so too

    async def _reread(self, partitions: list[int], stop: asyncio.Event | None) -> bool:
        """Read ``partitions`` again from the start of their (new) logs; False when the
        consumer had to be recreated for it."""
        # A producer that lived through the broker's restart may write what the
        # embedded broker cannot serve (see SampleProducer.send_many): a new one.
        await self._producer.renew()
        try:
            await self.consumer.rewind(self.topic, partitions)
        except GpusloError as exc:
            await self._recover(f"cannot rewind after a log reset: {exc}", stop)
            return False
        return True

    async def _recover(self, why: str, stop: asyncio.Event | None, *,
                       checkpoint: bool = True) -> None:
        """Checkpoint (unless the state is not to be trusted), drop the state, recreate
        the topics if gone and the consumer; the new member restores from the
        checkpoints (as a restarted process does)."""
        self.stats.consumer_restarts += 1
        self._rollback = False
        log.warning("%s consumer of %s recreated: %s", self.stage, self.topic, why)
        async with self._lock:
            for p in sorted(self._dirty & self._owned) if checkpoint else ():
                self._write_checkpoint(p)
                self.stats.checkpoints += 1
            self._dirty.clear()
            self._uncommitted.clear()
            for p in sorted(self._owned):
                self._drop(p)
            self._owned.clear()
            self._next_offset.clear()
            self._last_fp.clear()
            self._expect.clear()
            self._delivered.clear()
        try:
            if self.kafka_cfg.create_topics:
                await ensure_topics(self.kafka_cfg, [self.topic, *self.output_topics],
                                    bootstrap_servers=self._bootstrap)
            await self.consumer.restart(self.kafka_cfg.request_timeout_ms / 1000)
        except GpusloError as exc:
            if not exc.retriable:
                raise
            log.warning("%s consumer of %s not restarted yet: %s", self.stage, self.topic, exc)
            if stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            else:
                await asyncio.sleep(1.0)
        self._progress_at = time.monotonic()

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
        try:
            committed = not pending or await self.consumer.commit(pending)
        except GpusloError as exc:
            if not exc.retriable:
                raise
            # Kafka away (a broker restarting): the checkpoint covers these records, so
            # whoever reads them again skips them; the next flush commits further.
            log.warning("%s commit failed, the checkpoint covers it: %s", self.stage, exc)
            committed = False
        if not committed:
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
                    self._last_fp.pop(tp.partition, None)
                    self._expect.pop(tp.partition, None)
                    self._delivered.pop(tp.partition, None)

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
                self._verify.add(tp.partition)
                self._delivered.pop(tp.partition, None)
                if ckpt is not None and ckpt.next_offset > 0 and ckpt.last_record is not None:
                    # Resume at the record applied last: the first poll checks it is there
                    # (see the module's doc).
                    self._last_fp[tp.partition] = ckpt.last_record
                    self._expect[tp.partition] = (ckpt.next_offset - 1, ckpt.last_record)
                    try:
                        self.consumer.seek(self.topic, tp.partition, ckpt.next_offset - 1)
                    except GpusloError as exc:
                        self._expect.pop(tp.partition, None)
                        log.warning("%s: cannot resume %s [%d] at its last record: %s",
                                    self.stage, self.topic, tp.partition, exc)
            log.info("%s owns %s partitions %s", self.stage, self.topic, sorted(self._owned))
            if self._readiness is not None:
                self._readiness.ok(self.stage, f"group {self.group_id}: partitions "
                                   f"{sorted(self._owned)} of {self.topic} assigned, "
                                   "checkpoints restored")

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set."""
        while not stop.is_set():
            await self.step(stop=stop)

    def _save(self, partition: int, frames: dict[str, pl.DataFrame],
              meta: dict[str, Any] | None = None) -> None:
        """Write ``partition``'s checkpoint: the stage's ``frames`` and ``meta`` with the
        offset and the fingerprint of the last record they cover."""
        self.store.write(self.scope, partition, self._next_offset.get(partition, 0), frames,
                         meta, last_record=self._last_fp.get(partition))

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
