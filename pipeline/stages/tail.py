"""Read the sample stream as a group member and hand every frame to a sink.

What ``gpuslo tail`` and the demo's fleet panel run: they show what really came
through Kafka.  The sink only counts and folds frames (no Kafka, no terminal),
so each view stays testable on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import polars as pl

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import SampleConsumer, TransportError


class FrameSink(Protocol):
    """Where consumed sample frames go (a live view's accumulator)."""

    dead: int  # records that could not be decoded (dead-lettered)

    def add(self, frame: pl.DataFrame) -> None:
        """Fold one decoded sample frame in."""


async def tail_samples(
    kafka: KafkaConfig,
    consumer_cfg: ConsumerConfig,
    stop: asyncio.Event,
    sink: FrameSink,
    on_update: Callable[[], None] = lambda: None,
    *,
    bootstrap_servers: str | None = None,
    group_id: str = "gpuslo-tail",
    drain_timeout_s: float | Callable[[], float] = 15.0,
) -> None:
    """Consume the samples topic into ``sink`` until ``stop``, then until drained.

    Commits after each poll is folded in; ``on_update`` runs after every
    non-empty poll (a live view repaints).  ``drain_timeout_s`` may be a
    function, read once ``stop`` is set: an interrupted view need not catch up
    (0), a timed run does.  Never cancel this mid-poll instead: aiokafka
    finishes a commit in flight on its own, after the broker may be gone.
    """
    async with SampleConsumer(
        kafka,
        consumer_cfg,
        [kafka.topics.samples],
        group_id=group_id,
        bootstrap_servers=bootstrap_servers,
    ) as consumer:
        drain_deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                batches = await consumer.poll(timeout_ms=250)
            except TransportError as exc:
                if not exc.retriable or stop.is_set():
                    raise
                await asyncio.sleep(1)
                continue
            if stop.is_set() and not batches:
                # Drain what was produced before the stop: an empty poll is not
                # enough while the group is still joining (no partitions yet).
                if drain_deadline is None:
                    limit = drain_timeout_s() if callable(drain_timeout_s) else drain_timeout_s
                    drain_deadline = loop.time() + limit
                if loop.time() >= drain_deadline:
                    break
                if consumer.assignment() and await consumer.lag() == 0:
                    break
            for b in batches:
                if b.frame is None:
                    sink.dead += 1
                else:
                    sink.add(b.frame)
            if batches:
                await consumer.commit(batches)
                on_update()


__all__ = ["FrameSink", "tail_samples"]
