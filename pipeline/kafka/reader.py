"""Read every partition of a topic from a point in time, outside any consumer group.

For state that is a view of a topic's recent past rather than a share of its
partitions: the ranking side of root-cause analysis needs the digests of every
node, whichever stage-2 member it runs in, and rebuilds its window on start by
re-reading the last minutes of the topic (the topic is its checkpoint).  No
group, no commits: each reader sees all records.

Because it seeks by time, a reader that lost its way (a broker that came back
with empty logs, a consumer that stopped fetching) is put right by starting it
again from the record time every partition had reached (:meth:`TopicReader.restart`,
:attr:`TopicReader.newest_ms`): what it reads twice its owner merges by key.
:meth:`TopicReader.marks` gives its owner what it needs to notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import polars as pl
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import (
    ConsumedBatch,
    TransportError,
    client_options,
    close_consumer,
)
from gpuslo.pipeline.schema import SchemaError

log = logging.getLogger(__name__)


class TopicReader:
    """Every partition of ``topic`` from ``since`` on, decoded by ``decoder``.

    A record the decoder rejects is logged and counted (:attr:`undecodable`) and
    returned with ``frame=None``; it is not dead-lettered, because every reader
    of the topic would dead-letter it again.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str,
        decoder: Callable[[bytes], pl.DataFrame],
        *,
        bootstrap_servers: str | None = None,
        max_records: int = 500,
    ) -> None:
        self.cfg = cfg
        self.topic = topic
        self._decoder = decoder
        self._bootstrap = bootstrap_servers
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self.undecodable = 0
        self.newest_ms: dict[int, int] = {}  # per partition, the newest record time read

    async def start(self, since: datetime) -> TopicReader:
        """Assign every partition and seek each to its first record at or after ``since``."""
        if self._consumer is not None:
            return self
        # An offset beyond the log (its records deleted or lost) restarts at the log's
        # first record, not at its end: what came after the loss is read, not skipped.
        consumer = AIOKafkaConsumer(**client_options(self.cfg, self._bootstrap),
                                    group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        try:
            await consumer.start()
            await consumer.topics()  # metadata, so the partitions are known
            parts = sorted(consumer.partitions_for_topic(self.topic) or ())
            if not parts:
                raise TransportError(f"topic {self.topic!r} does not exist", retriable=True)
            tps = [TopicPartition(self.topic, p) for p in parts]
            consumer.assign(tps)
            ms = int(since.timestamp() * 1000)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, ms))
            for tp in tps:
                at = found.get(tp)
                if at is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, at.offset)
        except KafkaError as exc:
            await consumer.stop()
            raise TransportError(f"cannot read {self.topic!r}: {type(exc).__name__}: {exc}",
                                 retriable=True) from exc
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer, self.cfg.request_timeout_ms / 1000, self.topic)

    async def restart(self, since: datetime) -> TopicReader:
        """A new consumer from ``since`` on (the old one stopped first)."""
        await self.stop()
        return await self.start(since)

    async def marks(self) -> dict[int, tuple[int, int]]:
        """Each partition's (position, log end offset) now, from the broker."""
        if self._consumer is None:
            raise TransportError("reader is not started", retriable=False)
        tps = sorted(self._consumer.assignment(), key=lambda t: t.partition)
        try:
            ends = await self._consumer.end_offsets(tps)
            return {tp.partition: (await self._consumer.position(tp), ends[tp]) for tp in tps}
        except KafkaError as exc:
            raise TransportError(f"offsets of {self.topic!r} not readable: {exc}",
                                 retriable=True) from exc

    async def poll(self, timeout_ms: int = 1000) -> list[ConsumedBatch]:
        """The next records of every partition (empty after ``timeout_ms`` without any)."""
        if self._consumer is None:
            raise TransportError("reader is not started", retriable=False)
        try:
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms,
                                                   max_records=self._max_records)
        except KafkaError as exc:
            raise TransportError(f"fetch from {self.topic!r} failed: {exc}",
                                 retriable=True) from exc
        out = []
        for tp in sorted(fetched, key=lambda t: t.partition):
            for msg in fetched[tp]:
                if msg.timestamp > self.newest_ms.get(tp.partition, msg.timestamp - 1):
                    self.newest_ms[tp.partition] = msg.timestamp
                frame: pl.DataFrame | None = None
                error: str | None = None
                try:
                    if msg.value is None:
                        raise SchemaError("record has no value")
                    frame = self._decoder(msg.value)
                except SchemaError as exc:
                    error = str(exc)
                    self.undecodable += 1
                    log.warning("%s[%d]@%d not decoded, skipped: %s", tp.topic, tp.partition,
                                msg.offset, error)
                out.append(ConsumedBatch(
                    topic=tp.topic, partition=tp.partition, offset=msg.offset,
                    key=msg.key.decode(errors="replace") if msg.key is not None else None,
                    timestamp_ms=msg.timestamp,
                    headers={k: bytes(v) for k, v in (msg.headers or ())},
                    frame=frame, error=error))
        return out


__all__ = ["TopicReader"]
