"""Root-cause analysis in the stream: a scoring stage and the ranking side of stage 2.

* :class:`ScoreRunner` (group ``anomaly.group_id``) consumes ``gpuslo.samples``,
  partitioned by node like the samples, so it scales with the members of its
  group: one :class:`~gpuslo.anomaly.scorer.NodeScorer` per partition, fed in
  offset order, closes minutes on the partition's event time and produces each
  closed minute's digest to ``gpuslo.digests`` (one record per node and minute,
  keyed by node), plus the scorer's entity table when it changes and every
  ``anomaly.entities_every_minutes``.  Scorer state is checkpointed like the
  SLO stages' (:class:`~gpuslo.pipeline.stages.runner.StageRunner`); a digest
  re-sent after a crash is dropped by the ranking side (digests merge by key).
* :class:`CauseRanker` is the alerting side: every stage-2 member reads *all*
  partitions of ``gpuslo.digests`` (a :class:`~gpuslo.pipeline.kafka.reader.TopicReader`,
  no group) into one :class:`~gpuslo.anomaly.rca.DigestWindow`, and ranks the
  causes of the alerts it evaluates (:class:`~gpuslo.anomaly.rca.AlertRanking`).
  Its state is a view of the topic's last ``anomaly.retention_minutes``: on start
  it re-reads them, so the topic is its checkpoint.  For the same reason it
  recovers by reading again from the newest record time it had: after a failed
  fetch, a log end below its position (the broker lost its log) or no progress
  for ``consumer.stall_timeout_s`` while the log grew (an aiokafka consumer can
  stop fetching after a broker restart), counted like the stages' recoveries in
  ``gpuslo_consumer_recoveries_total{consumer="rca"}``.

Scoring, stage 1 and stage 2 may run in one process (the demo, ``gpuslo
aggregate``) or in separate ones (``gpuslo anomaly`` beside ``gpuslo aggregate``
with ``anomaly.score: false``): they share nothing but Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from gpuslo.anomaly.cause import Cause
from gpuslo.anomaly.digest import (
    DIGEST_VERSION,
    decode_digest_record,
    encode_digest,
    encode_entities,
    is_digest,
)
from gpuslo.anomaly.rca import AlertKey, AlertRanking, DigestWindow, RcaSettings
from gpuslo.anomaly.scorer import NodeScorer, ScorerSettings
from gpuslo.exporters.base import AnomalyScore
from gpuslo.pipeline.aio import Clock, sleep_or_stop, utc_now
from gpuslo.pipeline.config import AnomalyConfig, ConsumerConfig, KafkaConfig
from gpuslo.pipeline.errors import GpusloError
from gpuslo.pipeline.kafka.client import HEADER_SCHEMA, ConsumedBatch, TransportError
from gpuslo.pipeline.kafka.reader import TopicReader
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.pipeline.stages.runner import StageRunner
from gpuslo.slo.alerting import AlertReport

log = logging.getLogger(__name__)

# Key of records about entities with no node (shared storage, models, jobs).
FLEET_KEY = "-"
RANKER_CONSUMER = "rca"  # the ranking side's reader in gpuslo_consumer_recoveries_total
WATCH_EVERY_S = 5.0  # how often the ranking side compares its position with the log ends
WATCH_TIMEOUT_S = 2.0  # the longest one such look may take
# Read again a little before the record time reached: records of one time may still
# have been on their way in another batch.
RECOVERY_OVERLAP = timedelta(seconds=30)


class ScoreRunner(StageRunner):
    """``gpuslo.samples`` → one :class:`NodeScorer` per partition → ``gpuslo.digests``."""

    stage = "anomaly"

    def __init__(
        self,
        kafka_cfg: KafkaConfig,
        consumer_cfg: ConsumerConfig,
        store: CheckpointStore,
        anomaly_cfg: AnomalyConfig,
        *,
        bootstrap_servers: str | None = None,
        settings: ScorerSettings | None = None,
        clock: Clock = utc_now,
        readiness: Readiness | None = None,
    ) -> None:
        super().__init__(
            kafka_cfg, consumer_cfg, store, kafka_cfg.topics.samples, anomaly_cfg.group_id,
            bootstrap_servers=bootstrap_servers,
            checkpoint_interval_s=anomaly_cfg.checkpoint_interval_s, readiness=readiness,
        )
        self.anomaly_cfg = anomaly_cfg
        self.settings = settings or ScorerSettings()
        self.clock = clock
        self.scorers: dict[int, NodeScorer] = {}
        self._watermark: dict[int, datetime] = {}  # newest sample time, per partition
        self._last_record: dict[int, float] = {}  # monotonic time of the last record
        self._entities_sent: dict[int, tuple[int, datetime]] = {}  # rows, event time sent
        self.digests_out = 0
        self.output_topics = [kafka_cfg.topics.digests]  # recreated with the input on recovery

    def _scorer(self, partition: int) -> NodeScorer:
        sc = self.scorers.get(partition)
        if sc is None:
            # One seed everywhere: a partition's digests do not depend on which member
            # (or how many) scored it.
            sc = self.scorers[partition] = NodeScorer(self.settings, seed=0)
        return sc

    async def _apply(self, batches: list[ConsumedBatch]) -> None:
        # Scoring is CPU work (Polars, NumPy, the forest's refits): in a worker thread, so
        # the SLO stages sharing this event loop keep their ticks.  The stage's lock is
        # held meanwhile, so nothing else touches the scorers.
        records = await asyncio.to_thread(self._score, batches)
        self._crash_point("applied")
        await self._send(records)
        self._crash_point("produced")

    def _score(self, batches: list[ConsumedBatch]) -> list[tuple[str, bytes]]:
        touched: list[int] = []
        for b in batches:
            if b.frame is None:
                continue
            self.stats.rows_in += b.frame.height
            self._scorer(b.partition).observe(b.frame)
            newest = b.frame["ts"].max() if b.frame.height else None
            if isinstance(newest, datetime):
                old = self._watermark.get(b.partition)
                self._watermark[b.partition] = newest if old is None else max(old, newest)
            self._last_record[b.partition] = time.monotonic()
            if b.partition not in touched:
                touched.append(b.partition)
        out: list[tuple[str, bytes]] = []
        for p in touched:
            mark = self._watermark.get(p)
            if mark is not None:
                out += self._close(p, mark)
        return out

    async def close_idle(self) -> None:
        """Close the minutes of partitions silent for ``idle_close_s`` on the clock, so a
        node whose every sample stopped still has its last minutes scored.

        A produce that fails (Kafka away) leaves minutes closed whose digests were not
        sent: as after a failed produce in :meth:`step`, the next step goes back to the
        last checkpoint (the minutes open again) instead of the process ending.
        """
        async with self._lock:
            now = time.monotonic()
            idle = [p for p in sorted(self._owned)
                    if (last := self._last_record.get(p)) is not None
                    and now - last >= self.anomaly_cfg.idle_close_s]
            for p in idle:
                at = self.clock()
                records = await asyncio.to_thread(self._close, p, at)
                try:
                    await self._send(records)
                except GpusloError as exc:
                    if not exc.retriable:
                        raise
                    log.warning("%s: digests of idle partition %d not produced (%s); back "
                                "to the last checkpoint", self.stage, p, exc)
                    self._rollback = True
                    return
                self._dirty.add(p)
                self._last_record[p] = now

    def _close(self, partition: int, now: datetime) -> list[tuple[str, bytes]]:
        """(key, value) records of the minutes closed by ``now`` and, when due, the entities."""
        scorer = self._scorer(partition)
        digest = scorer.advance(now)
        out: list[tuple[str, bytes]] = []
        if digest.height:
            for (node,), part in digest.partition_by("node", as_dict=True,
                                                     maintain_order=True).items():
                key = str(node) or FLEET_KEY
                for (_,), minute in part.partition_by("minute", as_dict=True,
                                                      maintain_order=True).items():
                    out.append((key, encode_digest(minute)))
            self.digests_out += digest.height
        entities = scorer.entities()
        sent = self._entities_sent.get(partition)
        every = timedelta(minutes=self.anomaly_cfg.entities_every_minutes)
        if entities.height and (sent is None or sent[0] != entities.height
                                or now - sent[1] >= every):
            for (node,), part in entities.partition_by("node", as_dict=True,
                                                       maintain_order=True).items():
                out.append((str(node) or FLEET_KEY, encode_entities(part)))
            self._entities_sent[partition] = (entities.height, now)
        return out

    async def _send(self, records: list[tuple[str, bytes]]) -> None:
        if not records:
            return
        headers = [(HEADER_SCHEMA, str(DIGEST_VERSION).encode())]
        sent = await asyncio.gather(*(
            self._producer.send_many(self.kafka_cfg.topics.digests, key, [(value, headers)])
            for key, value in records))
        self.stats.records_out += sum(len(s) for s in sent)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; close idle partitions' minutes every few seconds."""
        next_idle = time.monotonic()
        while not stop.is_set():
            await self.step(stop=stop)
            if time.monotonic() >= next_idle:
                await self.close_idle()
                next_idle = time.monotonic() + 5.0

    def _write_checkpoint(self, partition: int) -> None:
        sc = self._scorer(partition)
        mark = self._watermark.get(partition)
        sent = self._entities_sent.get(partition)
        meta: dict[str, Any] = {
            "watermark": mark.isoformat() if mark is not None else None,
            "entities_sent": [sent[0], sent[1].isoformat()] if sent is not None else None,
        }
        self._save(partition, sc.snapshot(), meta)

    def _restore(
        self, partition: int, frames: dict[str, pl.DataFrame] | None, meta: dict[str, Any]
    ) -> None:
        self._drop(partition)
        if frames is None:
            return
        self._scorer(partition).restore(frames)
        # Heard from now: if nothing more comes, its open minutes still close on the clock.
        self._last_record[partition] = time.monotonic()
        if meta.get("watermark"):
            self._watermark[partition] = datetime.fromisoformat(meta["watermark"])
        sent = meta.get("entities_sent")
        if sent:
            self._entities_sent[partition] = (int(sent[0]), datetime.fromisoformat(sent[1]))

    def _drop(self, partition: int) -> None:
        self.scorers.pop(partition, None)
        self._watermark.pop(partition, None)
        self._last_record.pop(partition, None)
        self._entities_sent.pop(partition, None)


class CauseRanker:
    """Stage 2's root-cause side: every node's digests, and the causes of its alerts.

    Usage: ``await start()``, ``run(stop)`` beside stage 2 (reads digests as they
    come), ``causes(alerts, now)`` at each evaluation, ``await stop()``.
    """

    def __init__(
        self,
        kafka_cfg: KafkaConfig,
        anomaly_cfg: AnomalyConfig,
        *,
        bootstrap_servers: str | None = None,
        settings: RcaSettings | None = None,
        readiness: Readiness | None = None,
        stall_timeout_s: float = 20.0,
    ) -> None:
        self.retention = timedelta(minutes=anomaly_cfg.retention_minutes)
        self._stall_s = stall_timeout_s
        self._progress_at = self._checked_at = time.monotonic()
        self._ends: dict[int, int] = {}  # each partition's log end at the last check
        self.recovered: dict[str, int] = {"error": 0, "log_reset": 0, "stalled": 0}
        self.window = DigestWindow(self.retention, settings)
        self.ranking = AlertRanking(self.window)
        self.reader = TopicReader(kafka_cfg, kafka_cfg.topics.digests, decode_digest_record,
                                  bootstrap_servers=bootstrap_servers)
        self.records = 0
        self._readiness = readiness
        if readiness is not None:
            readiness.expect("rca", f"reading {kafka_cfg.topics.digests}")

    async def start(self) -> CauseRanker:
        """Seek every digest partition to ``retention`` ago (wall clock: record times)."""
        await self.reader.start(datetime.now(UTC) - self.retention)
        if self._readiness is not None:
            self._readiness.ok("rca", f"reading {self.reader.topic}")
        return self

    async def stop(self) -> None:
        await self.reader.stop()

    def add(self, batches: Sequence[ConsumedBatch]) -> None:
        """Digests and entity tables into the window (undecodable records were counted)."""
        frames = [b.frame for b in batches if b.frame is not None]
        self.records += len(frames)
        # One merge per poll, not per record: a start re-reads many minutes at once.
        entities = [f for f in frames if not is_digest(f)]
        digests = [f for f in frames if is_digest(f)]
        if entities:
            self.window.add_entities(pl.concat(entities))
        if digests:
            self.window.add_digest(pl.concat(digests))

    async def run(self, stop: asyncio.Event, poll_ms: int = 500) -> None:
        """Read digests until ``stop``; a reader that lost its way reads again (see the
        module's docstring), so the ranking never ends the process."""
        while not stop.is_set():
            try:
                batches = await self.reader.poll(poll_ms)
            except TransportError as exc:
                await self._recover("error", str(exc), stop)
                continue
            if batches:
                self._progress_at = time.monotonic()
            self.add(batches)
            if time.monotonic() - self._checked_at >= min(self._stall_s / 2, WATCH_EVERY_S):
                await self._watch(stop)

    def recoveries(self) -> dict[tuple[str, str], int]:
        """Recoveries by reason, as ``gpuslo_consumer_recoveries_total`` exports them."""
        return {(RANKER_CONSUMER, reason): n for reason, n in self.recovered.items()}

    async def _watch(self, stop: asyncio.Event) -> None:
        self._checked_at = time.monotonic()
        if stop.is_set():
            return
        try:
            # Bounded: aiokafka retries an offsets request while the broker is away, and a
            # look that outlived the process's stop kept the reader open past the broker.
            marks = await asyncio.wait_for(self.reader.marks(), WATCH_TIMEOUT_S)
        except (TimeoutError, TransportError) as exc:
            if time.monotonic() - self._progress_at >= self._stall_s:
                why = str(exc) or f"offsets not read within {WATCH_TIMEOUT_S:g}s"
                await self._recover("stalled", why, stop)
            return
        ends, self._ends = self._ends, {p: end for p, (_, end) in marks.items()}
        lost = [p for p, (pos, end) in marks.items() if end < pos or end < ends.get(p, 0)]
        if lost:
            await self._recover("log_reset", f"log end of partitions {lost} went back", stop)
        elif (any(end > pos for pos, end in marks.values())
              and time.monotonic() - self._progress_at >= self._stall_s):
            await self._recover("stalled", f"nothing read for {self._stall_s:g}s while "
                                "the log grew", stop)

    async def _recover(self, reason: str, why: str, stop: asyncio.Event) -> None:
        """Read again from the record time every partition had reached (the retention,
        before any record): records read twice merge by key, and a new log's records
        are all later (they were produced after the loss)."""
        self.recovered[reason] += 1
        reached = self.reader.newest_ms
        since = (datetime.fromtimestamp(min(reached.values()) / 1000, UTC) - RECOVERY_OVERLAP
                 if reached else datetime.now(UTC) - self.retention)
        log.warning("%s: %s; reading again from %s", self.reader.topic, why,
                    since.isoformat(timespec="seconds"))
        backoff = 0.5
        while not stop.is_set():
            try:
                await self.reader.restart(since)
                break
            except TransportError as exc:
                log.warning("%s not read again (%s); retrying in %gs", self.reader.topic,
                            exc, backoff)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 10.0)
        self._ends.clear()
        self._progress_at = self._checked_at = time.monotonic()

    def scores(self) -> tuple[AnomalyScore, ...]:
        """Each entity's strongest deviation per detector in the newest minute (what
        ``gpuslo_anomaly_score`` exports)."""
        return tuple(
            AnomalyScore(detector, entity, float(score), metric or "",
                         {"node": node, "kind": kind} if node else {"kind": kind})
            for detector, kind, node, entity, metric, score
            in self.window.latest_scores().iter_rows())

    def causes(self, alerts: Sequence[AlertReport],
               now: datetime) -> dict[AlertKey, tuple[Cause, ...]]:
        """Ranked causes of every alert that fired, by (SLO id, scope key)."""
        return self.ranking.causes(alerts, now)


__all__ = ["FLEET_KEY", "CauseRanker", "ScoreRunner"]
