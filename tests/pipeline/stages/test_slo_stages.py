"""The SLO stages over the real embedded broker: same numbers as the pure engine, always.

Every test compares the streamed stage-2 reports with :func:`slo.backtest.backtest`
over the same sample frame, so "no count lost or doubled" is checked on every
SLO scope and window, not on a total.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import SampleProducer, ensure_topics
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.pipeline.stages.board import ReportBoard
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.pipeline.stages.slo import Stage1Runner, Stage2Runner
from gpuslo.slo.alerting import AlertStatus
from gpuslo.slo.backtest import backtest
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import SloSpec, load_specs

pytestmark = pytest.mark.integration

CATALOG = CATALOG_DIR
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NODES = ("gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5")
MINUTES = 90
CHUNK_MIN = 10
END = T0 + timedelta(minutes=MINUTES)


@pytest.fixture(scope="module")
def specs() -> list[SloSpec]:
    return [s for s in load_specs([CATALOG])
            if s.id in ("request-success", "gpu-thermal-headroom")]


def node_frame(node: str, k: int) -> pl.DataFrame:
    """Counters and a gauge every 15 s; errors and heat on some nodes for a while."""
    rows: list[tuple[Any, ...]] = []
    ok = err = 0.0
    model = f"model-{k % 2}"
    for i in range(MINUTES * 4 + 1):
        ts = T0 + timedelta(seconds=15 * i)
        if i:
            ok += 10 + k
            if k % 3 == 0 and 40 * 4 <= i < 55 * 4:
                err += 3.0
        labels = {"model_name": model}
        rows.append((ts, node, "vllm", "vllm:request_success_total", "counter", ok, "",
                     {**labels, "finished_reason": "stop"}))
        rows.append((ts, node, "vllm", "vllm:request_success_total", "counter", err, "",
                     {**labels, "finished_reason": "error"}))
        temp = 90.0 if k == 1 and 30 * 4 <= i < 33 * 4 else 60.0 + k
        rows.append((ts, node, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", temp, "GPU-0",
                     {"gpu": "0"}))
    return frame_from_rows(rows)


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return {n: node_frame(n, k) for k, n in enumerate(NODES)}


@pytest.fixture(scope="module")
def expected(specs: list[SloSpec], frames: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    """The pure engine's verdict on the whole frame at END."""
    report = backtest(specs, pl.concat(list(frames.values())), end=END)
    assert report.final[-1].evaluated_at == END
    return [r.to_dict() for r in report.final]


async def produce(kafka_cfg: KafkaConfig, frames: dict[str, pl.DataFrame]) -> int:
    """Send each node's samples in 10-minute scrape batches; returns records sent."""
    n = 0
    async with SampleProducer(kafka_cfg) as producer:
        for start in range(0, MINUTES + 1, CHUNK_MIN):
            lo = T0 + timedelta(minutes=start)
            hi = lo + timedelta(minutes=CHUNK_MIN)
            for node, frame in frames.items():
                chunk = frame.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
                if chunk.height:
                    await producer.send_frame(kafka_cfg.topics.samples, node, chunk)
                    n += 1
    return n


async def until(cond: Callable[[], bool], *steps: Callable[[], Awaitable[int]],
                timeout_s: float = 30.0) -> None:
    """Step the runners together until ``cond`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "stages did not catch up"
        await asyncio.gather(*(s() for s in steps))


def runners(
    specs: Sequence[SloSpec], kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig, root: Path,
    *, group1: str = "sli", group2: str = "slo",
) -> tuple[Stage1Runner, Stage2Runner]:
    store = CheckpointStore(root)
    return (
        Stage1Runner(specs, kafka_cfg, consumer_cfg, store, group_id=group1),
        Stage2Runner(specs, kafka_cfg, consumer_cfg, store, group_id=group2),
    )


async def drain_stage2(stage2: Stage2Runner, produced: Callable[[], int]) -> None:
    """Step stage 2 until it has applied every partial record stage 1 produced."""
    await until(lambda: stage2.stats.records >= produced(), lambda: stage2.step(200))


def dicts(reports: Sequence[Any]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in reports]


async def topics(kafka_cfg: KafkaConfig) -> None:
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq], partitions=4)


async def test_streamed_reports_equal_the_backtest_and_replays_never_double_count(
    specs: list[SloSpec], frames: dict[str, pl.DataFrame], expected: list[dict[str, Any]],
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig, tmp_path: Path,
) -> None:
    await topics(kafka_cfg)
    sent = await produce(kafka_cfg, frames)
    rows = sum(f.height for f in frames.values())
    s1, s2 = runners(specs, kafka_cfg, consumer_cfg, tmp_path)
    await s1.start()
    await s2.start()
    try:
        await until(lambda: s1.stats.rows_in >= rows and s2.stats.records >= s1.stats.records_out,
                    lambda: s1.step(200), lambda: s2.step(200))
        assert s1.stats.records == sent
        assert dicts(s2.reports(END)) == expected
        # The board is what readers see: a page fired for the error burst, by model.
        snap = await s2.evaluate(END + timedelta(minutes=1))
        assert snap and s2.board.latest().version == 1
        assert any(a.slo_id == "request-success" and a.status is AlertStatus.FIRING
                   for a in s2.board.latest().alerts)

        # The same scrape batches again (a collector retry, a producer re-send).
        await produce(kafka_cfg, frames)
        await until(lambda: s1.stats.records >= 2 * sent, lambda: s1.step(200))
        await drain_stage2(s2, lambda: s1.stats.records_out)
        assert dicts(s2.reports(END)) == expected

        # A stage 1 that starts over from nothing re-sends every partial once more.
        again = Stage1Runner(specs, kafka_cfg, consumer_cfg, CheckpointStore(tmp_path / "fresh"),
                             group_id="sli-from-scratch")
        await again.start()
        try:
            await until(lambda: again.stats.records >= 2 * sent, lambda: again.step(200))
        finally:
            await again.stop()
        await drain_stage2(s2, lambda: s1.stats.records_out + again.stats.records_out)
        assert dicts(s2.reports(END)) == expected
    finally:
        await asyncio.gather(s1.stop(), s2.stop())


async def test_the_stages_count_the_minute_in_progress_as_a_sub_minute_replay_does(
    specs: list[SloSpec], frames: dict[str, pl.DataFrame], kafka_cfg: KafkaConfig,
    consumer_cfg: ConsumerConfig, tmp_path: Path,
) -> None:
    """Evaluated mid-minute, the live stages count every sample up to that instant, the
    open minute's included, exactly as a replay stepping every 15 s: live alerts are never
    a minute behind the samples (nor behind Prometheus at the same instant)."""
    mid = T0 + timedelta(minutes=41, seconds=30)  # inside the error burst
    cut = {n: f.filter(pl.col("ts") <= mid) for n, f in frames.items()}
    report = backtest(specs, pl.concat(list(cut.values())), step=timedelta(seconds=15),
                      end=mid)
    assert report.final[-1].evaluated_at == mid
    await topics(kafka_cfg)
    await produce(kafka_cfg, cut)
    rows = sum(f.height for f in cut.values())
    s1, s2 = runners(specs, kafka_cfg, consumer_cfg, tmp_path)
    await s1.start()
    await s2.start()
    try:
        await until(lambda: s1.stats.rows_in >= rows and s2.stats.records >= s1.stats.records_out,
                    lambda: s1.step(200), lambda: s2.step(200))
        # Equal at 41:30 to the replay, whose windows end at the instant (the 41:15 ->
        # 41:30 increases in bucket 41 included; closed minutes only would stop at 41:00).
        assert dicts(s2.reports(mid)) == dicts(report.final)
    finally:
        await asyncio.gather(s1.stop(), s2.stop())


class Crash(Exception):
    pass


def crash_at(point: str, after: int) -> Callable[[str], None]:
    """A fault hook that raises the ``after``-th time ``point`` is reached."""
    seen = 0

    def hook(where: str) -> None:
        nonlocal seen
        if where == point:
            seen += 1
            if seen == after:
                raise Crash(where)

    return hook


async def test_stages_killed_mid_stream_restart_to_exactly_the_same_counts(
    specs: list[SloSpec], frames: dict[str, pl.DataFrame], expected: list[dict[str, Any]],
    kafka_cfg: KafkaConfig, tmp_path: Path,
) -> None:
    await topics(kafka_cfg)
    await produce(kafka_cfg, frames)
    small = ConsumerConfig(max_records=4, poll_timeout_ms=300, session_timeout_ms=6000)
    store = CheckpointStore(tmp_path)
    stage1_done = asyncio.Event()

    async def stage1() -> None:
        # Dies after producing partials but before its checkpoint, then after its
        # checkpoint but before committing, then runs to the end.
        for fault in (crash_at("produced", 3), crash_at("checkpointed", 2), None):
            s1 = Stage1Runner(specs, kafka_cfg, small, store, group_id="sli")
            s1.fault = fault
            await s1.start()
            try:
                if fault is not None:
                    with pytest.raises(Crash):
                        while True:
                            await s1.step(300)
                    continue
                while await s1.step(300) or not s1.owned() or await s1.consumer.lag():
                    pass
                # Restored past what it had committed: it resumed at the last record its
                # checkpoint covers (found in the log), so none of them is applied again.
                assert s1.stats.resumed >= 1
            finally:
                await s1.stop(flush=fault is None)
        stage1_done.set()

    async def stage2() -> Stage2Runner:
        # Dies between its checkpoint and its commit while stage 1 is still crashing.
        s2 = Stage2Runner(specs, kafka_cfg, small, store, group_id="slo")
        s2.fault = crash_at("checkpointed", 2)
        await s2.start()
        with pytest.raises(Crash):
            while True:
                await s2.step(300)
        await s2.stop(flush=False)
        s2 = Stage2Runner(specs, kafka_cfg, small, store, group_id="slo")
        await s2.start()
        while (await s2.step(300) or not stage1_done.is_set() or not s2.owned()
               or await s2.consumer.lag()):
            pass
        return s2

    s2, _ = await asyncio.wait_for(asyncio.gather(stage2(), stage1()), 60)
    try:
        assert dicts(s2.reports(END)) == expected
    finally:
        await s2.stop()


async def test_two_stage1_members_split_partitions_and_give_the_same_reports(
    specs: list[SloSpec], frames: dict[str, pl.DataFrame], expected: list[dict[str, Any]],
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig, tmp_path: Path,
) -> None:
    await topics(kafka_cfg)
    rows = sum(f.height for f in frames.values())
    store = CheckpointStore(tmp_path)
    a = Stage1Runner(specs, kafka_cfg, consumer_cfg, store, group_id="sli")
    b = Stage1Runner(specs, kafka_cfg, consumer_cfg, store, group_id="sli")
    s2 = Stage2Runner(specs, kafka_cfg, consumer_cfg, store, group_id="slo", board=ReportBoard())
    await asyncio.gather(a.start(), b.start(), s2.start())
    try:
        await until(lambda: bool(a.owned()) and bool(b.owned()),
                    lambda: a.step(100), lambda: b.step(100), timeout_s=40)
        assert not (a.owned() & b.owned()) and len(a.owned() | b.owned()) == 4
        await produce(kafka_cfg, frames)
        await until(
            lambda: a.stats.rows_in + b.stats.rows_in >= rows
            and s2.stats.records >= a.stats.records_out + b.stats.records_out,
            lambda: a.step(200), lambda: b.step(200), lambda: s2.step(200),
        )
        assert a.stats.rows_in and b.stats.rows_in  # both did part of the work
        assert dicts(s2.reports(END)) == expected
    finally:
        await asyncio.gather(a.stop(), b.stop(), s2.stop())
