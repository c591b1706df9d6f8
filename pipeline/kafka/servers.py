"""Which Kafka a command talks to: the configured cluster, or an embedded broker.

Every command that needs Kafka starts the same way (``collect``, ``aggregate``,
the demo, ``tail``), so the choice and the topic creation live once here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import ensure_topics


@contextlib.asynccontextmanager
async def kafka_servers(cfg: KafkaConfig, topics: Sequence[str]) -> AsyncIterator[str]:
    """The bootstrap servers to use: the configured ones, or an embedded broker for the block.

    Creates ``topics`` first unless ``kafka.create_topics`` is off.
    """
    async with contextlib.AsyncExitStack() as stack:
        servers = cfg.bootstrap_servers
        if not servers:
            servers = (await stack.enter_async_context(EmbeddedBroker())).bootstrap_servers
        if cfg.create_topics:
            await ensure_topics(cfg, topics, bootstrap_servers=servers)
        yield servers


__all__ = ["kafka_servers"]
