"""Which Kafka a command talks to: the configured cluster, or an embedded broker.

Every command that needs Kafka starts the same way (``collect``, ``aggregate``,
the demo, ``tail``), so the choice and the topic creation live once here.

A long-running process may start before its Kafka does (a node booting, a
cluster being upgraded): given a ``stop`` event, the first contact is retried
until Kafka answers or the process is asked to stop, and the caller hears of
each failed try (its readiness says why it is not ready) instead of the
process exiting and restarting in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from gpuslo.pipeline.aio import retry_until
from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.errors import GpusloError
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import ensure_topics

log = logging.getLogger(__name__)

OnRetry = Callable[[str, GpusloError, float], object]


@contextlib.asynccontextmanager
async def kafka_servers(
    cfg: KafkaConfig,
    topics: Sequence[str],
    *,
    stop: asyncio.Event | None = None,
    on_retry: OnRetry | None = None,
    broker: Callable[[], EmbeddedBroker] = EmbeddedBroker,
) -> AsyncIterator[str]:
    """The bootstrap servers to use: the configured ones, or an embedded broker for the block.

    Creates ``topics`` first unless ``kafka.create_topics`` is off; either way it
    reaches Kafka once (a metadata request) before yielding.  With ``stop``, a
    retriable failure is retried (``on_retry(servers, error, wait_s)`` is told)
    until Kafka answers; without it, the first failure is raised.  The embedded
    broker is stopped when the block ends, after everything inside it.

    Raises:
        StopRequested: ``stop`` was set before Kafka answered.
        TransportError: without ``stop``, Kafka could not be reached.
    """
    async with contextlib.AsyncExitStack() as stack:
        servers = cfg.bootstrap_servers
        if not servers:
            servers = (await stack.enter_async_context(broker())).bootstrap_servers
        wanted = list(topics) if cfg.create_topics else []

        async def reach() -> None:
            await ensure_topics(cfg, wanted, bootstrap_servers=servers)

        if stop is None:
            await reach()
        else:
            def retrying(exc: GpusloError, wait_s: float) -> None:
                log.warning("Kafka at %s not reachable, retrying in %gs: %s", servers, wait_s, exc)
                if on_retry is not None:
                    on_retry(servers, exc, wait_s)

            await retry_until(stop, reach, on_retry=retrying)
        yield servers


__all__ = ["OnRetry", "kafka_servers"]
