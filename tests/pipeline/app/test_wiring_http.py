"""The one HTTP port of a process: /metrics, /healthz, /readyz and mounted routes.

In-process, on real sockets: the Prometheus exporter's aiohttp app as
``wiring.serving`` starts it, read with an HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from aiohttp import web

from gpuslo.exporters.prometheus import ListenError
from gpuslo.pipeline.app.wiring import (
    Mount,
    health_routes,
    http_address,
    mount_routes,
    serving,
)
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.pipeline.readiness import READY_LIFECYCLE, Readiness


def config(host: str = "127.0.0.1", enabled: bool = True) -> GpusloConfig:
    return GpusloConfig.model_validate(
        {"exporters": {"prometheus": {"enabled": enabled, "host": host, "port": 0}}})


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.text()


def hello_routes(calls: list[str]) -> Mount:
    async def hello(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(text="hello")

    def mount(app: web.Application) -> None:
        app.router.add_get("/hello", hello)

    return mount


async def test_probes_and_mounted_routes_share_the_metrics_port() -> None:
    stop = asyncio.Event()
    readiness = Readiness()
    readiness.expect("kafka", "connecting to kafka-0:9092")
    calls: list[str] = []
    async with serving(config(), stop, readiness, mounts=[hello_routes(calls)]) as hub:
        base = http_address(hub)
        assert base is not None and base.startswith("http://127.0.0.1:")
        assert await get(f"{base}/healthz") == (200, "ok\n")
        status, body = await get(f"{base}/readyz")
        assert status == 503
        doc = json.loads(body)
        assert doc["ready"] is False
        assert doc["checks"]["kafka"]["ok"] is False
        assert doc["checks"]["kafka"]["reason"] == "connecting to kafka-0:9092"
        assert doc["checks"][READY_LIFECYCLE]["ok"] is True
        assert await get(f"{base}/hello") == (200, "hello") and calls == ["/hello"]
        assert (await get(f"{base}/metrics"))[0] == 200

        readiness.ok("kafka", "producer connected")
        status, body = await get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["ready"] is True

        stop.set()  # draining: no longer ready, still alive
        await asyncio.sleep(0.05)
        status, body = await get(f"{base}/readyz")
        assert status == 503 and "draining" in body
        assert readiness.checks()[READY_LIFECYCLE].ok is False
        assert (await get(f"{base}/healthz"))[0] == 200


async def test_no_http_when_the_prometheus_exporter_is_off() -> None:
    stop = asyncio.Event()
    async with serving(config(enabled=False), stop, Readiness()) as hub:
        assert http_address(hub) is None
        assert mount_routes(hub, [health_routes(Readiness())]) is False


def _loopback_alias_usable(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


async def test_the_server_binds_the_configured_host_only() -> None:
    if not _loopback_alias_usable("127.0.0.2"):
        pytest.skip("127.0.0.2 is not a loopback address here (Linux routes 127/8 to lo)")
    stop = asyncio.Event()
    async with serving(config(host="127.0.0.2"), stop, Readiness()) as hub:
        base = http_address(hub)
        assert base is not None and base.startswith("http://127.0.0.2:")
        port = int(base.rsplit(":", 1)[1])
        assert (await get(f"{base}/healthz"))[0] == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await get(f"http://127.0.0.1:{port}/healthz")


async def test_a_port_in_use_is_one_clear_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = GpusloConfig.model_validate(
            {"exporters": {"prometheus": {"host": "127.0.0.1", "port": port}}})
        with pytest.raises(ListenError, match=r"exporters.prometheus.host, .port"):
            async with serving(cfg, asyncio.Event(), Readiness()):
                pass
