"""Closing aiokafka clients that a gone broker holds up: nothing is left retrying it.

aiokafka's ``stop()`` waits for what it holds (a producer's batches, a consumer's
coordinator) before it closes its connections; cut by our bound, it leaves them
open, and their metadata loop retries the gone broker for as long as the process
lives.  The stand-ins below hang in ``stop()`` exactly there and record what is
closed; a real broker cannot be made to hang at that point on demand.
"""

from __future__ import annotations

import asyncio
import time

from gpuslo.pipeline.kafka.client import close_consumer, close_producer


class _Client:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class _Sender:
    def __init__(self) -> None:
        self.sender_task = asyncio.ensure_future(asyncio.sleep(3600))


class _HangingProducer:
    """stop() waits for batches that are never acknowledged."""

    def __init__(self) -> None:
        self.client = _Client()
        self._sender = _Sender()

    async def stop(self) -> None:
        await asyncio.sleep(3600)


class _HangingConsumer:
    def __init__(self) -> None:
        self._client = _Client()

    async def stop(self) -> None:
        await asyncio.sleep(3600)


async def test_a_producer_that_cannot_deliver_is_closed_within_its_bound() -> None:
    producer = _HangingProducer()
    started = time.monotonic()
    assert not await close_producer(producer, 0.2)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0
    assert producer.client.closed
    await asyncio.sleep(0)
    assert producer._sender.sender_task.cancelled()


async def test_a_consumer_that_cannot_leave_its_group_is_closed_within_its_bound() -> None:
    consumer = _HangingConsumer()
    started = time.monotonic()
    await close_consumer(consumer, 0.2, "test")  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0
    assert consumer._client.closed
