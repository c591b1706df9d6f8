"""Kafka transport for sample frames (aiokafka).

Producer: one Kafka record per batch, never one per sample (per-record Python
overhead dominates aiokafka throughput), split so no record exceeds
``kafka.max_record_bytes``, compressed, ``acks=all``, idempotence as
configured.

Consumer: a consumer group with auto-commit off.  :meth:`SampleConsumer.poll`
returns decoded batches; the caller applies them durably and only then calls
:meth:`SampleConsumer.commit`.  A crash in between re-delivers the batches
(at-least-once); downstream application is idempotent.  A record that cannot
be decoded goes to the dead-letter topic with the reason in a header, and is
returned marked dead so that committing moves past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import ssl
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnknownError,
)
from aiokafka.helpers import create_ssl_context

from gpuslo.pipeline.auth import secret_source
from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.errors import GpusloError
from gpuslo.pipeline.schema import (
    SCHEMA_VERSION,
    Block,
    SchemaError,
    SeriesCache,
    decode,
    encode_blocks,
    split,
)

log = logging.getLogger(__name__)

HEADER_SCHEMA = "gpuslo-schema-version"
HEADER_BATCH = "gpuslo-batch-id"
HEADER_PART = "gpuslo-part"
HEADER_DLQ_REASON = "gpuslo-dlq-reason"
HEADER_DLQ_ORIGIN = "gpuslo-dlq-origin"

# Key, headers and record framing on top of the value, with room to spare.
_RECORD_OVERHEAD = 1024

# How long a producer whose send failed may take to close; what it still holds is then
# abandoned (the caller resends it).
PRODUCER_ABANDON_S = 0.5


class TransportError(GpusloError):
    """A Kafka operation failed; ``retriable`` says whether trying again may help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message, retriable=retriable)


def kafka_ssl_context(cfg: KafkaConfig) -> ssl.SSLContext:
    """The TLS context for ``SSL``/``SASL_SSL``: verification on unless asked off by name.

    ``ssl_cafile`` (else the system store) verifies the brokers' certificates
    and host names; ``ssl_certfile``/``ssl_keyfile`` add a client certificate
    (mutual TLS, e.g. a Strimzi ``KafkaUser`` with ``authentication: tls``);
    ``ssl_insecure_skip_verify`` turns verification off.

    Raises:
        TransportError: a CA, certificate or key file cannot be loaded (names the
            file, never its content); not retriable.
    """
    try:
        ctx = create_ssl_context(
            cafile=str(cfg.ssl_cafile) if cfg.ssl_cafile else None,
            certfile=str(cfg.ssl_certfile) if cfg.ssl_certfile else None,
            keyfile=str(cfg.ssl_keyfile) if cfg.ssl_keyfile else None,
        )
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f"{k} {v}" for k, v in (("ssl_cafile", cfg.ssl_cafile),
                                                   ("ssl_certfile", cfg.ssl_certfile),
                                                   ("ssl_keyfile", cfg.ssl_keyfile)) if v)
        raise TransportError(f"kafka TLS: cannot load {files or 'the system CA store'}: "
                             f"{getattr(exc, 'strerror', None) or exc}",
                             retriable=False) from exc
    if cfg.ssl_insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def sasl_password(cfg: KafkaConfig) -> str | None:
    """The SASL password: ``sasl_password``, or ``sasl_password_file`` read now.

    Read each time a client connects, so a rotated Secret takes effect at the
    next connection (aiokafka keeps a client's password for its lifetime).

    Raises:
        TokenError: the file cannot be read or is empty (names the path).
    """
    source = secret_source(cfg.sasl_password, cfg.sasl_password_file, what="Kafka SASL password")
    return None if source is None else source.get().reveal()


def client_options(cfg: KafkaConfig, bootstrap_servers: str | None = None) -> dict[str, Any]:
    """Connection settings shared by producer, consumer and admin client.

    These are aiokafka's keyword arguments: ``security_protocol``, an
    ``ssl_context`` for the TLS protocols (:func:`kafka_ssl_context`), and
    ``sasl_mechanism`` with ``sasl_plain_username``/``sasl_plain_password``
    for the SASL ones (aiokafka uses the ``plain`` names for SCRAM too).
    """
    servers = bootstrap_servers or cfg.bootstrap_servers
    if not servers:
        raise TransportError(
            "no Kafka bootstrap servers: set kafka.bootstrap_servers or start the embedded broker",
            retriable=False,
        )
    opts: dict[str, Any] = {
        "bootstrap_servers": servers,
        "client_id": cfg.client_id,
        "request_timeout_ms": cfg.request_timeout_ms,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = kafka_ssl_context(cfg)
    if cfg.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = cfg.sasl_mechanism
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = sasl_password(cfg)
    return opts


async def ensure_topics(
    cfg: KafkaConfig,
    names: Iterable[str],
    *,
    bootstrap_servers: str | None = None,
    partitions: int | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    admin = AIOKafkaAdminClient(**client_options(cfg, bootstrap_servers))
    try:
        await _start_client(admin, f"connect admin client to "
                                   f"{bootstrap_servers or cfg.bootstrap_servers}")
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        new = [
            NewTopic(
                n,
                num_partitions=partitions or cfg.partitions,
                replication_factor=cfg.replication_factor,
            )
            for n in wanted
        ]
        with contextlib.suppress(TopicAlreadyExistsError):  # lost a race with another creator
            await admin.create_topics(new)
        log.info("created topics %s", wanted)
        return wanted
    except KafkaError as exc:
        raise TransportError(
            f"cannot create topics {list(names)}: {type(exc).__name__}: {exc}",
            retriable=getattr(exc, "retriable", False),
        ) from exc
    finally:
        await admin.close()


def split_encoded(frame: pl.DataFrame, max_bytes: int, *,
                  version: int = SCHEMA_VERSION) -> list[bytes]:
    """Encode ``frame`` as one or more values, each at most ``max_bytes`` long.

    Raises:
        SchemaError: a single row alone exceeds ``max_bytes``.
    """
    return split_blocks([Block(frame)], max_bytes, version=version)


def split_blocks(blocks: Sequence[Block], max_bytes: int, *,
                 version: int = SCHEMA_VERSION, cache: SeriesCache | None = None) -> list[bytes]:
    """Encode ``blocks`` as one or more values in order, each at most ``max_bytes`` long.

    Too large, the blocks are halved until each half fits; a single block too
    large is split by rows, the row count per piece estimated from the encoded
    size and halved until every piece fits, so a frame with a few very wide rows
    still splits.

    Raises:
        SchemaError: a single row alone exceeds ``max_bytes``.
    """
    whole = encode_blocks(blocks, version=version, cache=cache)
    if len(whole) <= max_bytes:
        return [whole]
    if len(blocks) > 1:
        mid = len(blocks) // 2
        return (split_blocks(blocks[:mid], max_bytes, version=version, cache=cache)
                + split_blocks(blocks[mid:], max_bytes, version=version, cache=cache))
    frame = blocks[0].frame
    rows = max(1, math.floor(frame.height * (max_bytes / len(whole)) * 0.9))
    while True:
        pieces = [encode_blocks([Block(p)], version=version) for p in split(frame, rows)]
        if all(len(p) <= max_bytes for p in pieces):
            return pieces
        if rows == 1:
            raise SchemaError(f"one sample row encodes to more than {max_bytes} bytes")
        rows = max(1, rows // 2)


@dataclass(frozen=True)
class SentRecord:
    topic: str
    partition: int
    offset: int
    value_bytes: int


class SampleProducer:
    """Produce sample frames (and raw records) with the configured durability."""

    def __init__(self, cfg: KafkaConfig, *, bootstrap_servers: str | None = None) -> None:
        self.cfg = cfg
        self._bootstrap = bootstrap_servers
        self._producer: AIOKafkaProducer | None = None
        self._started = False  # start() called and not stopped: a replaced client restarts
        self._series = SeriesCache()  # keyed blocks' series in Arrow form, between records

    async def start(self) -> SampleProducer:
        if self._producer is not None:
            return self
        self._started = True
        cfg = self.cfg
        producer = AIOKafkaProducer(
            **client_options(cfg, self._bootstrap),
            acks="all",
            enable_idempotence=cfg.enable_idempotence,
            compression_type=None if cfg.compression_type == "none" else cfg.compression_type,
            linger_ms=cfg.linger_ms,
            max_request_size=cfg.max_record_bytes + _RECORD_OVERHEAD,
            max_batch_size=max(16384, cfg.max_record_bytes + _RECORD_OVERHEAD),
        )
        await _start_client(
            producer, f"connect producer to {self._bootstrap or cfg.bootstrap_servers}"
        )
        self._producer = producer
        return self

    async def stop(self, timeout_s: float | None = None) -> None:
        """Close the producer, delivering what it still holds.

        aiokafka waits for every batch it holds, up to the request timeout and
        longer with the broker gone; a process that is draining gives it
        ``timeout_s`` and abandons the rest (its caller has already counted
        what was not acknowledged).
        """
        producer, self._producer = self._producer, None
        self._started = False
        if producer is None:
            return
        if timeout_s is None:
            await producer.stop()
            return
        if not await close_producer(producer, timeout_s):
            log.warning("producer not closed within %gs: unacknowledged batches abandoned",
                        timeout_s)

    async def __aenter__(self) -> SampleProducer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def send_frame(self, topic: str, key: str, frame: pl.DataFrame) -> list[SentRecord]:
        """Send one frame as one record, or as several when it exceeds the record limit.

        All pieces share a batch id header and go to one partition (same key),
        in order.  Returns once every piece is acknowledged by all in-sync
        replicas.
        """
        return await self.send_blocks(topic, key, [Block(frame)])

    async def send_blocks(self, topic: str, key: str,
                          blocks: Sequence[Block]) -> list[SentRecord]:
        """Send the blocks' rows as one record (split as :meth:`send_frame` splits).

        Blocks with one ``series_key`` store their series once (wire version 2).
        """
        version = self.cfg.wire_version
        pieces = split_blocks(blocks, self.cfg.max_record_bytes, version=version,
                              cache=self._series)
        batch_id = uuid.uuid4().hex.encode()
        total = len(pieces)
        records = [
            (
                value,
                [
                    (HEADER_SCHEMA, str(version).encode()),
                    (HEADER_BATCH, batch_id),
                    (HEADER_PART, f"{i + 1}/{total}".encode()),
                ],
            )
            for i, value in enumerate(pieces)
        ]
        return await self.send_many(topic, key, records)

    async def send_many(
        self,
        topic: str,
        key: str,
        records: Sequence[tuple[bytes, list[tuple[str, bytes]]]],
    ) -> list[SentRecord]:
        """Send raw ``(value, headers)`` records under one key; wait for all acks.

        After a retriable failure the aiokafka producer is closed (what it still
        holds is abandoned: the caller keeps and resends its records) and the
        next send starts a new one.  A producer that lives through a broker
        restart otherwise delivers its held batches late, beside the caller's
        resend (records doubled), and on the embedded broker everything it
        writes after the restart is unreadable (tests/pipeline/app/
        test_faults_broker_restart.py).
        """
        if self._producer is None:
            if not self._started:
                raise TransportError("producer is not started", retriable=False)
            await self.start()  # replaced after a failure; raises retriable while Kafka is away
        assert self._producer is not None
        key_bytes = key.encode()
        producer = self._producer

        async def send_all() -> list[Any]:
            futures = [
                await producer.send(topic, value, key=key_bytes, headers=headers)
                for value, headers in records
            ]
            return list(await asyncio.gather(*futures))

        # aiokafka has no max.block.ms: bound the whole send so a dead broker
        # surfaces as a retriable error instead of a hang.
        # The task is abandoned (cancelled, not awaited) on timeout because
        # aiokafka's metadata wait can outlive a cancellation request.
        limit_s = 2 * self.cfg.request_timeout_ms / 1000
        task = asyncio.ensure_future(send_all())
        done, _ = await asyncio.wait({task}, timeout=limit_s)
        if not done:
            task.cancel()
            task.add_done_callback(_consume_result)
            await self._replace(producer)
            raise TransportError(
                f"produce to {topic!r} not acknowledged within {limit_s:g}s", retriable=True
            )
        try:
            metas = task.result()
        except KafkaError as exc:
            # UnknownError: what the embedded broker answers for a topic it lost.
            retriable = bool(getattr(exc, "retriable", False)) or isinstance(
                exc, (KafkaConnectionError, KafkaTimeoutError, UnknownError))
            if retriable:
                await self._replace(producer)
            raise TransportError(
                f"produce to {topic!r} failed: {type(exc).__name__}: {exc}",
                retriable=retriable,
            ) from exc
        return [
            SentRecord(m.topic, m.partition, m.offset, len(v))
            for m, (v, _) in zip(metas, records, strict=True)
        ]

    async def renew(self) -> None:
        """Close the aiokafka producer; the next send starts a new one (after a broker lost
        its state, see :meth:`send_many`)."""
        if self._producer is not None:
            await self._replace(self._producer)

    async def _replace(self, failed: AIOKafkaProducer) -> None:
        """Close a producer whose send failed; the next send starts a new one."""
        if id(self._producer) != id(failed):
            return  # another send replaced it already
        self._producer = None
        if not await close_producer(failed, PRODUCER_ABANDON_S):
            log.debug("failed producer closed with batches abandoned")


class _ConnectErrors(logging.Handler):
    """Keeps what aiokafka logs about failed connections while a client starts.

    aiokafka raises a bare "Unable to bootstrap" and logs the reason (a TLS
    verification failure, a SASL mechanism the broker does not offer) on its
    own logger; the reason belongs in the error an operator reads.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            message = record.getMessage()
            if "Unable connect" in message and message not in self.messages:
                self.messages.append(message)


async def _start_client(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient, what: str
) -> None:
    """Start an aiokafka client; on failure release it and raise a clear TransportError.

    Kafka errors stay retriable, as they always were here (a broker may come
    back), and carry the reason aiokafka logged.  A SCRAM login the broker
    refused is not retriable (the credentials are wrong): aiokafka reports it as
    a ``KeyError`` from deep in its SCRAM code, which must not escape as such.
    A start cancelled half-way (a process stopping while Kafka is slow) releases
    the client too, so no connection or background task outlives it.
    """
    reasons = _ConnectErrors()
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.addHandler(reasons)
    try:
        await client.start()
    except KafkaError as exc:
        await _close(client)
        detail = f" ({'; '.join(reasons.messages[-2:])})" if reasons.messages else ""
        raise TransportError(f"cannot {what}: {type(exc).__name__}: {exc}{detail}",
                             retriable=True) from exc
    except (KeyError, ValueError) as exc:  # aiokafka's SCRAM parser on a refused login
        await _close(client)
        raise TransportError(
            f"cannot {what}: the broker refused the SASL authentication (wrong user name or "
            f"password, or a mechanism it does not enable): {type(exc).__name__}: {exc}",
            retriable=False) from exc
    except asyncio.CancelledError:
        # A consumer's start waits for its group join, and closing it waits for the
        # join in flight (a second or three on a fresh group).  Waited for, not left
        # behind: a client left running would retry the broker after it is stopped
        # and flood the terminal with connection errors.
        await _close(client)
        raise
    finally:
        aiokafka_log.removeHandler(reasons)


async def _close(client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient) -> None:
    with contextlib.suppress(Exception):
        if isinstance(client, AIOKafkaAdminClient):
            await client.close()
        else:
            await client.stop()


async def close_consumer(consumer: AIOKafkaConsumer, timeout_s: float, what: str) -> None:
    """Stop an aiokafka consumer that may be stuck on a broker that went away.

    Why not just ``stop()``: closing waits on a dead coordinator (bounded here by
    ``timeout_s``, then abandoned), and aiokafka's fetcher re-raises the
    ``CancelledError`` of a fetch it cancels while it waits out a retry backoff,
    which would end the caller's task and skip closing the consumer's connections:
    their metadata loop then retries a broker that is gone, for as long as the
    process lives.  Those connections are closed here; only a cancellation of the
    caller itself goes on.
    """
    try:
        await asyncio.wait_for(consumer.stop(), timeout_s)
        return
    except TimeoutError:
        log.warning("consumer of %s not closed within %gs: abandoned", what, timeout_s)
    except KafkaError as exc:
        log.warning("consumer of %s closed with %s", what, exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("consumer of %s closed with a fetch cancelled in flight", what)
    # aiokafka's stop() ends at the first error or at the timeout, before it closes its
    # client (and a second stop() returns at once).
    await _close_connections(getattr(consumer, "_client", None), timeout_s)


async def close_producer(producer: AIOKafkaProducer, timeout_s: float) -> bool:
    """Stop an aiokafka producer within ``timeout_s``; False: what it held was abandoned.

    Why not just a bounded ``stop()``: it first waits for every batch it holds to be
    delivered, and cut there by the timeout it never stops its sender or closes its
    client, whose metadata loop then retries a broker that is gone for as long as the
    process lives (a demo stopped under load printed "Unable connect" after its
    broker had stopped).  Past the timeout the sender is cancelled and the client,
    which holds the connections, closed.
    """
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
        return True
    except (TimeoutError, KafkaError):
        pass
    sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if sender is not None and not sender.done():
        sender.cancel()
    await _close_connections(producer.client, timeout_s)
    return False


async def _close_connections(client: Any, timeout_s: float) -> None:
    """Close an aiokafka client (what holds the connections) whose owner's ``stop()``
    did not get that far; bounded, and whatever it raises is the owner's past."""
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout_s)


def _consume_result(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


def record_fingerprint(key: bytes | None, timestamp_ms: int, value: bytes | None) -> int:
    """A 64-bit digest of a record's key, timestamp and value.

    Offsets say where a record is, not which one: a log recreated after a broker
    lost it (an in-memory broker restarted) numbers its own records from 0 again,
    so once it has grown past a consumer's position, an offset alone cannot tell
    the new log from the old one.  The record's content can.
    """
    h = hashlib.blake2b(digest_size=8)
    for part in (key or b"", str(timestamp_ms).encode(), value or b""):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return int.from_bytes(h.digest(), "big")


@dataclass(frozen=True)
class ConsumedBatch:
    """One Kafka record: a decoded frame, or a dead record already sent to the DLQ."""

    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int
    headers: dict[str, bytes] = field(default_factory=dict)
    frame: pl.DataFrame | None = None
    error: str | None = None
    # What the record is, not where it is (see record_fingerprint): a stage that resumes
    # at an offset checks that the log there still holds the record it applied last.
    fingerprint: int = 0

    @property
    def dead(self) -> bool:
        return self.frame is None

    @property
    def batch_id(self) -> str | None:
        raw = self.headers.get(HEADER_BATCH)
        return raw.decode() if raw is not None else None


class RebalanceHandler(Protocol):
    """Told when partitions change hands, for callers that keep per-partition state."""

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Partitions leaving this member: flush their state now."""

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Partitions joining this member: restore their state now."""


class _Listener(ConsumerRebalanceListener):
    """aiokafka's listener over a :class:`RebalanceHandler` (keeps aiokafka here)."""

    def __init__(self, handler: RebalanceHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._handler.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._handler.on_assigned(list(assigned))


class SampleConsumer:
    """A group member reading sample frames with explicit, caller-driven commits."""

    def __init__(
        self,
        cfg: KafkaConfig,
        consumer_cfg: ConsumerConfig,
        topics: Sequence[str],
        *,
        group_id: str | None = None,
        bootstrap_servers: str | None = None,
        dlq: SampleProducer | None = None,
        decoder: Callable[[bytes], pl.DataFrame] = decode,
        rebalance: RebalanceHandler | None = None,
    ) -> None:
        """``decoder`` turns a record value into a frame (raising :class:`SchemaError`
        dead-letters it): other frame types than samples travel the same way.
        ``rebalance`` is told of partition assignments and revocations, for
        callers that keep per-partition state."""
        self.cfg = cfg
        self.consumer_cfg = consumer_cfg
        self.topics = list(topics)
        self.group_id = group_id or consumer_cfg.group_id
        self._bootstrap = bootstrap_servers
        self._dlq = dlq
        self._owns_dlq = dlq is None
        self._decoder = decoder
        self._listener = _Listener(rebalance) if rebalance is not None else None
        self._consumer: AIOKafkaConsumer | None = None
        self.dead_letters = 0

    async def start(self) -> SampleConsumer:
        if self._consumer is not None:
            return self
        if self._dlq is None:
            self._dlq = SampleProducer(self.cfg, bootstrap_servers=self._bootstrap)
        await self._dlq.start()
        try:
            await self._start_consumer()
        except BaseException:
            if self._owns_dlq:  # `async with` never reaches __aexit__ when start fails
                await self._dlq.stop()
                self._dlq = None
            raise
        return self

    async def _start_consumer(self) -> None:
        c = self.consumer_cfg
        options = client_options(self.cfg, self._bootstrap)
        # A JoinGroup request is held by the coordinator for up to the session
        # timeout; a shorter client timeout would retry the join forever.
        options["request_timeout_ms"] = max(
            options["request_timeout_ms"], c.session_timeout_ms + 5000
        )
        consumer = AIOKafkaConsumer(
            *(self.topics if self._listener is None else ()),
            **options,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=c.auto_offset_reset,
            session_timeout_ms=c.session_timeout_ms,
            max_partition_fetch_bytes=max(1_048_576, self.cfg.max_record_bytes * 2),
        )
        if self._listener is not None:
            consumer.subscribe(topics=self.topics, listener=self._listener)
        # Set before the start, which completes the group join: the listener's
        # on_assigned may seek already (see seek).
        self._consumer = consumer
        try:
            await _start_client(consumer, f"start consumer for {self.topics}")
        except BaseException:
            self._consumer = None
            raise

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # Leaving the group takes up to a request; the caller bounds the whole stop.
            await close_consumer(consumer, self.cfg.request_timeout_ms / 1000 + 5.0,
                                 str(self.topics))
        if self._owns_dlq and self._dlq is not None:
            await self._dlq.stop()
            self._dlq = None

    async def __aenter__(self) -> SampleConsumer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer else set()

    @property
    def started(self) -> bool:
        """Whether the aiokafka consumer is running (false after a failed :meth:`restart`)."""
        return self._consumer is not None

    async def restart(self, timeout_s: float) -> None:
        """Replace the aiokafka consumer by a new one that joins the group afresh.

        What a stage does when its consumer stopped making progress (after a
        broker restart aiokafka can stop fetching without an error).  Closing
        the old one is given ``timeout_s`` (it may wait on a dead coordinator)
        and then abandoned.  The new member starts from the group's committed
        offsets; a caller with checkpoints skips what they already cover.

        Raises:
            TransportError: the new consumer could not start (retriable); the
                consumer is then not started, and ``restart`` may be called again.
        """
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer, timeout_s, f"stalled {self.topics}")
        await self._start_consumer()

    async def end_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The log end offset of each of ``partitions`` of ``topic`` (one request).

        Raises:
            TransportError: the offsets could not be read (retriable).
        """
        if self._consumer is None:
            raise TransportError("consumer is not started", retriable=True)
        tps = [TopicPartition(topic, p) for p in partitions]
        try:
            ends = await self._consumer.end_offsets(tps)
        except (KafkaError, IllegalStateError) as exc:
            raise TransportError(f"end offsets of {topic} not read: {type(exc).__name__}: "
                                 f"{exc}", retriable=True) from exc
        return {tp.partition: int(off) for tp, off in ends.items()}

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``partition`` of ``topic`` from ``offset`` next (an assigned partition; from
        a rebalance handler's ``on_assigned`` too)."""
        if self._consumer is None:
            raise TransportError("consumer is not started", retriable=True)
        try:
            self._consumer.seek(TopicPartition(topic, partition), offset)
        except (KafkaError, IllegalStateError) as exc:
            raise TransportError(f"cannot seek {topic} [{partition}] to {offset}: "
                                 f"{type(exc).__name__}: {exc}", retriable=True) from exc

    async def rewind(self, topic: str, partitions: Iterable[int]) -> None:
        """Read ``partitions`` of ``topic`` again from the start of their logs."""
        if self._consumer is None:
            raise TransportError("consumer is not started", retriable=True)
        parts = sorted(partitions)
        tps = [TopicPartition(topic, p) for p in parts]
        try:
            await self._consumer.seek_to_beginning(*tps)
        except (KafkaError, IllegalStateError) as exc:
            raise TransportError(f"cannot rewind {topic} {parts}: "
                                 f"{type(exc).__name__}: {exc}", retriable=True) from exc

    async def poll(self, timeout_ms: int | None = None) -> list[ConsumedBatch]:
        """Fetch the next records, decoded, in partition order.

        Undecodable records are written to the DLQ (acknowledged before this
        returns) and returned with ``dead`` set, so that committing the poll's
        result moves past them without losing them.
        """
        if self._consumer is None:
            raise TransportError("consumer is not started", retriable=False)
        try:
            fetched = await self._consumer.getmany(
                timeout_ms=timeout_ms
                if timeout_ms is not None
                else self.consumer_cfg.poll_timeout_ms,
                max_records=self.consumer_cfg.max_records,
            )
        except KafkaError as exc:
            raise TransportError(
                f"fetch failed: {type(exc).__name__}: {exc}", retriable=True
            ) from exc
        out: list[ConsumedBatch] = []
        for tp in sorted(fetched, key=lambda t: (t.topic, t.partition)):
            for msg in fetched[tp]:
                out.append(await self._to_batch(msg))
        return out

    async def _to_batch(self, msg: Any) -> ConsumedBatch:
        headers = {k: bytes(v) for k, v in (msg.headers or ())}
        key = msg.key.decode(errors="replace") if msg.key is not None else None
        frame: pl.DataFrame | None = None
        reason: str | None = None
        try:
            if msg.value is None:
                raise SchemaError("record has no value")
            frame = self._decoder(msg.value)
        except SchemaError as exc:
            reason = str(exc)
            await self._dead_letter(msg, reason)
        return ConsumedBatch(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=key,
            timestamp_ms=msg.timestamp,
            headers=headers,
            frame=frame,
            error=reason,
            fingerprint=record_fingerprint(msg.key, msg.timestamp, msg.value),
        )

    async def _dead_letter(self, msg: Any, reason: str) -> None:
        assert self._dlq is not None
        origin = f"{msg.topic}/{msg.partition}/{msg.offset}"
        headers = [(k, bytes(v)) for k, v in (msg.headers or ())]
        headers += [
            (HEADER_DLQ_REASON, reason.encode()[:4000]),
            (HEADER_DLQ_ORIGIN, origin.encode()),
        ]
        key = msg.key.decode(errors="replace") if msg.key is not None else ""
        await self._dlq.send_many(self.cfg.topics.dlq, key, [(msg.value or b"", headers)])
        self.dead_letters += 1
        log.warning("record %s sent to %s: %s", origin, self.cfg.topics.dlq, reason)

    async def commit(self, batches: Iterable[ConsumedBatch]) -> bool:
        """Commit past the given batches (per partition: highest offset + 1).

        Call only once the state they fed is durable.  Returns False when the
        group rebalanced meanwhile: those records will be re-delivered to
        their new owner, which is the at-least-once contract, not a loss.
        """
        if self._consumer is None:
            raise TransportError("consumer is not started", retriable=False)
        offsets: dict[TopicPartition, int] = {}
        for b in batches:
            tp = TopicPartition(b.topic, b.partition)
            offsets[tp] = max(offsets.get(tp, 0), b.offset + 1)
        if not offsets:
            return True
        # Bounded: aiokafka retries a commit to a topic the broker lost for ever.
        limit_s = 2 * self.cfg.request_timeout_ms / 1000
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), limit_s)
        except TimeoutError as exc:
            raise TransportError(f"commit of {len(offsets)} partition(s) not done within "
                                 f"{limit_s:g}s", retriable=True) from exc
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit of %s skipped after rebalance: %s", offsets, exc)
            return False
        except KafkaError as exc:
            raise TransportError(
                f"commit failed: {type(exc).__name__}: {exc}", retriable=True
            ) from exc
        return True

    async def lag(self) -> int:
        """Records behind the end of the assigned partitions (for self-metrics)."""
        if self._consumer is None:
            return 0
        parts = list(self._consumer.assignment())
        if not parts:
            return 0
        ends = await self._consumer.end_offsets(parts)
        total = 0
        for tp in parts:
            try:
                pos = await self._consumer.position(tp)
            except (KafkaError, IllegalStateError):
                continue
            total += max(0, ends.get(tp, pos) - pos)
        return total
