"""Real Alertmanager 0.25 instances and gpuslo's receiver, wired with the example config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from servers import Server, start_alertmanager

from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.pipeline.config import ReceiverConfig

EXAMPLE = Path(__file__).parents[2] / "alerts" / "examples" / "alertmanager.yml"
RECEIVER_TOKEN = "am-to-gpuslo-token"


def example_config(receiver_url: str, token_file: Path) -> str:
    """The shipped example, pointed at a test receiver, with test-speed timings.

    Only URLs, the token file and the waits change: routing, grouping and inhibition
    are the example's own, so these tests prove the example works.
    """
    cfg: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for r in cfg["receivers"]:
        for w in r["webhook_configs"]:
            w["url"] = receiver_url
            w["http_config"]["authorization"]["credentials_file"] = str(token_file)
    for route in (cfg["route"], *cfg["route"]["routes"]):
        route["group_wait"] = "50ms"
        route["group_interval"] = "300ms"
    return yaml.safe_dump(cfg)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    cfg = ReceiverConfig(port=0, token=SecretStr(RECEIVER_TOKEN))
    async with WebhookReceiver(cfg) as r:
        yield r


AmFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def alertmanager(
    tmp_path: Path, receiver: WebhookReceiver
) -> AsyncIterator[AmFactory]:
    """``await alertmanager(port=None)`` starts one more Alertmanager routed to ``receiver``."""
    started: list[Server] = []
    token_file = tmp_path / "receiver-token"
    token_file.write_text(RECEIVER_TOKEN)

    async def start(port: int | None = None) -> Server:
        n = len(started)
        server = await asyncio.to_thread(
            start_alertmanager, example_config(receiver.url, token_file), tmp_path / f"am{n}",
            port=port, name=f"alertmanager-{n}")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for s in started:
            await asyncio.to_thread(s.stop)
