"""The SLO engine's Kafka stages: thin async shells around the pure state in :mod:`slo`.

* :class:`Stage1Runner` (group ``slo.stage1_group_id``) consumes
  ``gpuslo.samples``, feeds each record to :class:`slo.sli.Stage1State` under
  its source partition, and produces the partial counts to ``gpuslo.sli``:
  per poll, one record per SLO, keyed by the SLO id (so every partial of one
  SLO lands in one ``sli`` partition, in order).
* :class:`Stage2Runner` (group ``slo.stage2_group_id``) consumes
  ``gpuslo.sli`` into one :class:`slo.budget.Stage2State` and one
  :class:`slo.alerting.AlertEvaluator` per ``sli`` partition and, on every
  tick, publishes the reports and alerts to a :class:`ReportBoard`, which the
  demo, the exporters and the alert sender read.
* :class:`SloEngine` runs both in one process.

Durability (the same loop in both stages).  poll → apply → (stage 1: produce
partials and wait for acks) → checkpoint every touched partition's state with
the offset it covers → commit offsets.  A crash before the checkpoint re-reads
the records from the committed offset and re-applies them to the previous
checkpoint; a crash after it skips, on restore, the records the checkpoint
already covers.  Partials are cumulative upserts keyed by (source partition,
SLO, scope, minute), so partials produced twice replace each other.  So a
crash anywhere neither loses nor doubles a count.

Rebalances.  Revoked partitions are checkpointed and committed, then dropped;
assigned ones are restored from the checkpoint store (which members of one
group share), so a partition's state follows it to its new owner.  Processing
a poll and handling a rebalance take the same lock, so a partition never
changes hands half-applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from aiokafka import ConsumerRebalanceListener, TopicPartition

from gpuslo.pipeline.checkpoint import CheckpointStore
from gpuslo.pipeline.config import ConsumerConfig, GpusloConfig, KafkaConfig
from gpuslo.pipeline.kafka import HEADER_SCHEMA, ConsumedBatch, SampleConsumer, SampleProducer
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertReport, AlertState, AlertStatus
from gpuslo.slo.budget import SloReport, Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec
from gpuslo.slo.windows import Severity
from gpuslo.slo.wire import PARTIALS_VERSION, decode_partials, encode_partials

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# The board: what the stages publish and everyone else reads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardSnapshot:
    """One evaluation: every SLO scope's report and every non-inactive alert."""

    version: int
    evaluated_at: datetime | None
    reports: tuple[SloReport, ...]
    alerts: tuple[AlertReport, ...]

    def firing(self) -> tuple[AlertReport, ...]:
        """Alerts firing now (what a pager sees)."""
        return tuple(a for a in self.alerts if a.status is AlertStatus.FIRING)


class ReportBoard:
    """The latest reports and alerts, replaced whole on every stage-2 tick.

    Readers never see a half-updated evaluation: :meth:`latest` returns an
    immutable snapshot.  :meth:`wait` lets a live view or an alert sender wake
    on each new evaluation instead of polling.
    """

    def __init__(self) -> None:
        self._snap = BoardSnapshot(0, None, (), ())
        self._changed = asyncio.Event()

    def publish(
        self, reports: Sequence[SloReport], alerts: Sequence[AlertReport], now: datetime
    ) -> BoardSnapshot:
        """Replace the snapshot (called by :class:`Stage2Runner`)."""
        self._snap = BoardSnapshot(self._snap.version + 1, now, tuple(reports), tuple(alerts))
        self._changed.set()
        self._changed = asyncio.Event()
        return self._snap

    def latest(self) -> BoardSnapshot:
        """The newest evaluation (version 0 and empty before the first tick)."""
        return self._snap

    async def wait(self, after_version: int, timeout_s: float | None = None) -> BoardSnapshot:
        """The first snapshot newer than ``after_version`` (or the latest one on timeout)."""
        if self._snap.version > after_version:
            return self._snap
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self._snap


# --------------------------------------------------------------------------------------------
# The shared consume → apply → checkpoint → commit loop
# --------------------------------------------------------------------------------------------


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: _StageRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._runner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._runner._on_assigned(list(assigned))


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


class _StageRunner:
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
    ) -> None:
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
            listener=_Listener(self), **extra,
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

    @property
    def scope(self) -> str:
        """Checkpoint namespace: stage, group and topic."""
        return f"{self.stage}.{self.group_id}.{self.topic}"

    async def start(self) -> _StageRunner:
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

    async def step(self, timeout_ms: int | None = None) -> int:
        """One poll, applied, checkpointed and committed when due; returns records applied."""
        batches = await self.consumer.poll(timeout_ms)
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

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            self.stats.rebalances += 1
            await self._flush(force=True)
            for tp in revoked:
                if tp.topic == self.topic:
                    self._drop(tp.partition)
                    self._owned.discard(tp.partition)
                    self._next_offset.pop(tp.partition, None)

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
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

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set."""
        while not stop.is_set():
            await self.step()

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


# --------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------


class Stage1Runner(_StageRunner):
    """``gpuslo.samples`` → :class:`~slo.sli.Stage1State` → partial records on ``gpuslo.sli``."""

    stage = "stage1"

    def __init__(
        self,
        specs: Sequence[SloSpec],
        kafka_cfg: KafkaConfig,
        consumer_cfg: ConsumerConfig,
        store: CheckpointStore,
        *,
        group_id: str = "gpuslo-sli",
        open_minutes: int = 10,
        bootstrap_servers: str | None = None,
        checkpoint_interval_s: float = 0.0,
    ) -> None:
        super().__init__(
            kafka_cfg, consumer_cfg, store, kafka_cfg.topics.samples, group_id,
            bootstrap_servers=bootstrap_servers, checkpoint_interval_s=checkpoint_interval_s,
        )
        self.state = Stage1State(specs, open_minutes=open_minutes)

    async def _apply(self, batches: list[ConsumedBatch]) -> None:
        # One apply per Kafka record (one scrape batch), in offset order: how the state
        # judges late samples then depends on the records only, not on how polls cut them.
        outs = []
        for b in batches:
            if b.frame is None:
                continue
            self.stats.rows_in += b.frame.height
            out = self.state.apply(b.frame, b.partition)
            if out.height:
                outs.append(out)
        if not outs:
            return
        # Several applies' partials in one record per SLO are still in order, and stage 2
        # keeps the last row per key, so nothing it would have accepted separately is lost.
        partials = pl.concat(outs)
        headers = [(HEADER_SCHEMA, str(PARTIALS_VERSION).encode())]
        sends = [
            self._producer.send_many(
                self.kafka_cfg.topics.sli, str(slo_id), [(encode_partials(part), headers)]
            )
            for (slo_id,), part in partials.partition_by(
                cv.COL_SLO, as_dict=True, maintain_order=True
            ).items()
        ]
        self._crash_point("applied")
        sent = await asyncio.gather(*sends)
        self.stats.records_out += sum(len(s) for s in sent)
        self._crash_point("produced")

    def _write_checkpoint(self, partition: int) -> None:
        self.store.write(self.scope, partition, self._next_offset[partition],
                         self.state.snapshot(partition))

    def _restore(
        self, partition: int, frames: dict[str, pl.DataFrame] | None, meta: dict[str, Any]
    ) -> None:
        if frames is None:
            self.state.drop_partition(partition)
        else:
            self.state.restore(partition, frames)

    def _drop(self, partition: int) -> None:
        self.state.drop_partition(partition)


# --------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d is not None else None


def _dt(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s is not None else None


def alert_states_to_json(states: dict[tuple[str, str, Severity], AlertState]) -> list[Any]:
    """Alert states as JSON (for checkpoints), in a stable order."""
    return [
        [slo_id, scope, sev.value, st.status.value, _iso(st.active_since), _iso(st.fired_at),
         _iso(st.resolved_at)]
        for (slo_id, scope, sev), st in sorted(states.items())
    ]


def alert_states_from_json(rows: Iterable[Any]) -> dict[tuple[str, str, Severity], AlertState]:
    """Inverse of :func:`alert_states_to_json`."""
    return {
        (str(r[0]), str(r[1]), Severity(r[2])): AlertState(
            AlertStatus(r[3]), _dt(r[4]), _dt(r[5]), _dt(r[6])
        )
        for r in rows
    }


class Stage2Runner(_StageRunner):
    """``gpuslo.sli`` → per-partition :class:`~slo.budget.Stage2State` → reports and alerts.

    Every SLO's partials arrive on one ``sli`` partition (the key is the SLO
    id), so one state and one alert evaluator per partition see whole SLOs and
    two members of the group together report exactly what one would.
    """

    stage = "stage2"

    def __init__(
        self,
        specs: Sequence[SloSpec],
        kafka_cfg: KafkaConfig,
        consumer_cfg: ConsumerConfig,
        store: CheckpointStore,
        *,
        board: ReportBoard | None = None,
        group_id: str = "gpuslo-slo",
        open_minutes: int = 10,
        bootstrap_servers: str | None = None,
        checkpoint_interval_s: float = 0.0,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(
            kafka_cfg, consumer_cfg, store, kafka_cfg.topics.sli, group_id,
            bootstrap_servers=bootstrap_servers, checkpoint_interval_s=checkpoint_interval_s,
            decoder=decode_partials,
        )
        self.specs = list(specs)
        self.open_minutes = open_minutes
        self.board = board if board is not None else ReportBoard()
        self.clock = clock
        self.states: dict[int, Stage2State] = {}
        self.alerts: dict[int, AlertEvaluator] = {}

    def _state(self, partition: int) -> Stage2State:
        st = self.states.get(partition)
        if st is None:
            st = self.states[partition] = Stage2State(self.specs, open_minutes=self.open_minutes)
            self.alerts[partition] = AlertEvaluator(self.specs)
        return st

    async def _apply(self, batches: list[ConsumedBatch]) -> None:
        for b in batches:
            if b.frame is not None:
                self.stats.rows_in += b.frame.height
                self._state(b.partition).apply(b.frame)

    def reports(self, now: datetime) -> list[SloReport]:
        """Every SLO scope's report at ``now``, over the partitions this member owns."""
        out = [r for p in sorted(self.states) for r in self.states[p].report(now)]
        return sorted(out, key=lambda r: (r.slo_id, r.scope_key))

    async def evaluate(self, now: datetime | None = None) -> tuple[SloReport, ...]:
        """Evaluate reports and alerts at ``now`` (default: the clock) and publish them."""
        now = now or self.clock()
        async with self._lock:
            reports: list[SloReport] = []
            alerts: list[AlertReport] = []
            for p in sorted(self.states):
                mine = self.states[p].report(now)
                reports += mine
                alerts += self.alerts[p].evaluate(mine, now)
                self._dirty.add(p)  # alert states changed: part of the next checkpoint
        reports.sort(key=lambda r: (r.slo_id, r.scope_key))
        alerts.sort(key=lambda a: (a.slo_id, cv.scope_key(dict(a.scope)), a.severity.value))
        return self.board.publish(reports, alerts, now).reports

    async def run(self, stop: asyncio.Event, tick_interval_s: float = 10.0) -> None:
        """Consume until ``stop`` is set; evaluate and publish every ``tick_interval_s``."""
        next_tick = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_tick:
                await self.evaluate()
                next_tick = time.monotonic() + tick_interval_s
            await self.step(
                min(self.consumer.consumer_cfg.poll_timeout_ms,
                    max(1, int((next_tick - time.monotonic()) * 1000)))
            )

    def _write_checkpoint(self, partition: int) -> None:
        st = self._state(partition)
        meta = {"alerts": alert_states_to_json(self.alerts[partition].states())}
        self.store.write(self.scope, partition, self._next_offset.get(partition, 0),
                         st.snapshot(), meta)

    def _restore(
        self, partition: int, frames: dict[str, pl.DataFrame] | None, meta: dict[str, Any]
    ) -> None:
        self._drop(partition)
        st = self._state(partition)
        if frames is not None:
            st.restore(frames)
            self.alerts[partition].restore(alert_states_from_json(meta.get("alerts", [])))

    def _drop(self, partition: int) -> None:
        self.states.pop(partition, None)
        self.alerts.pop(partition, None)


# --------------------------------------------------------------------------------------------
# Both stages in one process
# --------------------------------------------------------------------------------------------


class SloEngine:
    """Stage 1 and stage 2 in one process, configured from ``cfg.slo``.

    Usage (what ``gpuslo aggregate`` and the demo do)::

        engine = SloEngine(cfg, specs, bootstrap_servers=servers)
        await engine.start()
        try:
            await engine.run(stop)   # until stop is set
        finally:
            await engine.stop()
        engine.board.latest().reports / .alerts
    """

    def __init__(
        self,
        cfg: GpusloConfig,
        specs: Sequence[SloSpec],
        *,
        bootstrap_servers: str | None = None,
        board: ReportBoard | None = None,
        clock: Clock = utc_now,
    ) -> None:
        s = cfg.slo
        store = CheckpointStore(s.checkpoint_dir)
        self.board = board if board is not None else ReportBoard()
        self.tick_interval_s = s.tick_interval_s
        self.stage1 = Stage1Runner(
            specs, cfg.kafka, cfg.consumer, store, group_id=s.stage1_group_id,
            open_minutes=s.open_minutes, bootstrap_servers=bootstrap_servers,
            checkpoint_interval_s=s.checkpoint_interval_s,
        )
        self.stage2 = Stage2Runner(
            specs, cfg.kafka, cfg.consumer, store, board=self.board,
            group_id=s.stage2_group_id, open_minutes=s.open_minutes,
            bootstrap_servers=bootstrap_servers, checkpoint_interval_s=s.checkpoint_interval_s,
            clock=clock,
        )

    async def start(self) -> SloEngine:
        """Join both consumer groups (the first poll completes the join)."""
        await asyncio.gather(self.stage1.start(), self.stage2.start())
        return self

    async def stop(self) -> None:
        """Checkpoint, commit and leave both groups."""
        await asyncio.gather(self.stage1.stop(), self.stage2.stop())

    async def run(self, stop: asyncio.Event) -> None:
        """Run both stages until ``stop`` is set; the board updates every tick."""
        await asyncio.gather(
            self.stage1.run(stop), self.stage2.run(stop, self.tick_interval_s)
        )
