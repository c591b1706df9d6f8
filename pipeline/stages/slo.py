"""The SLO engine's Kafka stages: thin async shells around the pure state in :mod:`gpuslo.slo`.

* :class:`Stage1Runner` (group ``slo.stage1_group_id``) consumes
  ``gpuslo.samples``, feeds each record to :class:`~gpuslo.slo.sli.Stage1State`
  under its source partition, and produces the partial counts to ``gpuslo.sli``:
  per poll, one record per SLO, keyed by the SLO id (so every partial of one
  SLO lands in one ``sli`` partition, in order).
* :class:`Stage2Runner` (group ``slo.stage2_group_id``) consumes
  ``gpuslo.sli`` into one :class:`~gpuslo.slo.budget.Stage2State` and one
  :class:`~gpuslo.slo.alerting.AlertEvaluator` per ``sli`` partition and, on
  every tick, publishes the reports and alerts to a
  :class:`~gpuslo.pipeline.stages.board.ReportBoard`, which the demo, the
  exporters and the alert sender read.
* :class:`SloEngine` runs both in one process, or only one of them
  (``gpuslo aggregate --stage 1|2``): the stages hand over through
  ``gpuslo.sli`` only, so each can be its own process (and Deployment), killed
  and restarted without the other.

Both are :class:`~gpuslo.pipeline.stages.runner.StageRunner` s, which gives the
durability and rebalance guarantees.  Partials are cumulative upserts keyed by
(source partition, SLO, scope, minute), so partials produced twice replace each
other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from gpuslo.pipeline.aio import Clock, utc_now
from gpuslo.pipeline.config import ConsumerConfig, GpusloConfig, KafkaConfig
from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.kafka.client import HEADER_SCHEMA, ConsumedBatch
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.anomaly import CauseRanker, ScoreRunner
from gpuslo.pipeline.stages.board import ReportBoard
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.pipeline.stages.runner import StageRunner
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertReport, AlertState, AlertStatus
from gpuslo.slo.budget import SloReport, Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec
from gpuslo.slo.windows import Severity
from gpuslo.slo.wire import PARTIALS_VERSION, decode_partials, encode_partials

# --------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------


class Stage1Runner(StageRunner):
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
        readiness: Readiness | None = None,
    ) -> None:
        super().__init__(
            kafka_cfg, consumer_cfg, store, kafka_cfg.topics.samples, group_id,
            bootstrap_servers=bootstrap_servers, checkpoint_interval_s=checkpoint_interval_s,
            readiness=readiness,
        )
        self.state = Stage1State(specs, open_minutes=open_minutes)
        self.output_topics = [kafka_cfg.topics.sli]

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
        self._save(partition, self.state.snapshot(partition))

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


class Stage2Runner(StageRunner):
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
        readiness: Readiness | None = None,
        ranker: CauseRanker | None = None,
    ) -> None:
        """``ranker``, when given, ranks the causes of every alert that fired at each
        evaluation; they reach the board beside the alerts."""
        super().__init__(
            kafka_cfg, consumer_cfg, store, kafka_cfg.topics.sli, group_id,
            bootstrap_servers=bootstrap_servers, checkpoint_interval_s=checkpoint_interval_s,
            decoder=decode_partials, readiness=readiness,
        )
        self.specs = list(specs)
        self.open_minutes = open_minutes
        self.board = board if board is not None else ReportBoard()
        self.clock = clock
        self.ranker = ranker
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
        causes = self.ranker.causes(alerts, now) if self.ranker is not None else None
        scores = self.ranker.scores() if self.ranker is not None else ()
        return self.board.publish(reports, alerts, now, causes, scores).reports

    async def run(self, stop: asyncio.Event, tick_interval_s: float = 10.0) -> None:
        """Consume until ``stop`` is set; evaluate and publish every ``tick_interval_s``."""
        next_tick = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_tick:
                await self.evaluate()
                next_tick = time.monotonic() + tick_interval_s
            await self.step(
                min(self.consumer.consumer_cfg.poll_timeout_ms,
                    max(1, int((next_tick - time.monotonic()) * 1000))),
                stop=stop,
            )

    def _write_checkpoint(self, partition: int) -> None:
        st = self._state(partition)
        meta = {"alerts": alert_states_to_json(self.alerts[partition].states())}
        self._save(partition, st.snapshot(), meta)

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


STAGES = (1, 2)
"""The SLO stages a process can run (``gpuslo aggregate --stage``)."""


class SloEngine:
    """Stage 1 and stage 2 in one process, or one of them, configured from ``cfg.slo``,
    with root-cause analysis from ``cfg.anomaly``: the scoring stage beside stage 1 (unless
    ``anomaly.score`` is off, when ``gpuslo anomaly`` processes score) and stage 2's ranking
    of every fired alert's causes (:mod:`~gpuslo.pipeline.stages.anomaly`).

    Usage (what ``gpuslo aggregate`` and the demo do)::

        engine = SloEngine(cfg, specs, bootstrap_servers=servers)
        await engine.start()
        try:
            await engine.run(stop)   # until stop is set
        finally:
            await engine.stop()
        engine.board.latest().reports / .alerts

    ``stages=(1,)`` runs stage 1 alone (samples in, partials out on
    ``gpuslo.sli``; its board stays empty) with the scoring stage (samples in,
    digests out on ``gpuslo.digests``), ``stages=(2,)`` stage 2 alone (partials
    in, reports and alerts on the board) with the ranking side, which reads the
    causes' evidence from ``gpuslo.digests``.  The stages share nothing but
    those topics and the checkpoint directory (each under its own scope).
    """

    def __init__(
        self,
        cfg: GpusloConfig,
        specs: Sequence[SloSpec],
        *,
        bootstrap_servers: str | None = None,
        board: ReportBoard | None = None,
        clock: Clock = utc_now,
        readiness: Readiness | None = None,
        stages: Collection[int] = STAGES,
    ) -> None:
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise InputError(f"SLO stages {sorted(stages)}: choose 1, 2 or both")
        s, a = cfg.slo, cfg.anomaly
        store = CheckpointStore(s.checkpoint_dir)
        self.board = board if board is not None else ReportBoard()
        self.tick_interval_s = s.tick_interval_s
        # Root causes: the scoring stage goes with stage 1 (both consume gpuslo.samples and
        # produce; unless separate `gpuslo anomaly` processes score), the ranking side with
        # stage 2 (it reads gpuslo.digests, so stage 2 alone still ranks).
        self.scorer = ScoreRunner(
            cfg.kafka, cfg.consumer, store, a, bootstrap_servers=bootstrap_servers,
            clock=clock, readiness=readiness,
        ) if 1 in stages and a.enabled and a.score else None
        self.ranker = CauseRanker(
            cfg.kafka, a, bootstrap_servers=bootstrap_servers, readiness=readiness,
            stall_timeout_s=cfg.consumer.stall_timeout_s,
        ) if 2 in stages and a.enabled else None
        self.stage1: Stage1Runner | None = None
        self.stage2: Stage2Runner | None = None
        if 1 in stages:
            self.stage1 = Stage1Runner(
                specs, cfg.kafka, cfg.consumer, store, group_id=s.stage1_group_id,
                open_minutes=s.open_minutes, bootstrap_servers=bootstrap_servers,
                checkpoint_interval_s=s.checkpoint_interval_s, readiness=readiness,
            )
        if 2 in stages:
            self.stage2 = Stage2Runner(
                specs, cfg.kafka, cfg.consumer, store, board=self.board,
                group_id=s.stage2_group_id, open_minutes=s.open_minutes,
                bootstrap_servers=bootstrap_servers,
                checkpoint_interval_s=s.checkpoint_interval_s, clock=clock, readiness=readiness,
                ranker=self.ranker,
            )

    @property
    def stages(self) -> tuple[StageRunner, ...]:
        """The stage runners of this process, the scoring stage included (their consumers'
        lag, dead letters and recoveries are health figures)."""
        return tuple(r for r in (self.stage1, self.stage2, self.scorer) if r is not None)

    async def start(self) -> SloEngine:
        """Join the consumer groups (the first poll completes the join).

        Every start finishes before a failure is raised, so a retried start never
        runs beside one still in flight.
        """
        starts: list[Awaitable[object]] = [r.start() for r in self.stages]
        if self.ranker is not None:
            starts.append(self.ranker.start())
        results = await asyncio.gather(*starts, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return self

    async def stop(self) -> None:
        """Checkpoint, commit and leave the groups."""
        stops: list[Awaitable[object]] = [r.stop() for r in self.stages]
        if self.ranker is not None:
            stops.append(self.ranker.stop())
        await asyncio.gather(*stops)

    async def run(self, stop: asyncio.Event) -> None:
        """Run the stages until ``stop`` is set; the board updates every stage-2 tick."""
        runs: list[Awaitable[object]] = []
        if self.stage1 is not None:
            runs.append(self.stage1.run(stop))
        if self.stage2 is not None:
            runs.append(self.stage2.run(stop, self.tick_interval_s))
        if self.scorer is not None:
            runs.append(self.scorer.run(stop))
        if self.ranker is not None:
            runs.append(self.ranker.run(stop))
        await asyncio.gather(*runs)
