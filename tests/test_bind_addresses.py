"""Every server gpuslo runs listens where its config says, and nowhere else.

``exporters.prometheus.host`` (``/metrics``, ``/healthz``, ``/readyz`` and the
status page of a process's one HTTP port),
``alerts.receiver.host`` and the embedded broker's host: each is bound to
127.0.0.2 (loopback, but not 127.0.0.1), and a connection to 127.0.0.1 on the
same port must be refused: the server took the address it was given, not
every interface.  (The receiver defaults to 127.0.0.1; ``/metrics`` to
0.0.0.0, because Prometheus scrapes the pod's address.)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import aiohttp
import pytest
from pydantic import SecretStr

from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.exporters.prometheus import PrometheusExporter
from gpuslo.pipeline.app.wiring import http_address, serving
from gpuslo.pipeline.config import GpusloConfig, PrometheusExporterConfig, ReceiverConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.readiness import Readiness

ADDRESS = "127.0.0.2"


@pytest.fixture(scope="module", autouse=True)
def _second_loopback_address() -> Iterator[None]:
    try:
        with socket.socket() as s:
            s.bind((ADDRESS, 0))
    except OSError as exc:  # pragma: no cover - Linux routes all of 127/8 to lo
        pytest.skip(f"cannot bind {ADDRESS}: {exc}")
    yield


def refused_on_127_0_0_1(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_config_defaults_are_loopback_for_the_receiver() -> None:
    assert ReceiverConfig().host == "127.0.0.1"
    assert PrometheusExporterConfig().host == "0.0.0.0"


async def test_the_metrics_endpoint_binds_the_configured_address() -> None:
    exporter = PrometheusExporter(PrometheusExporterConfig(host=ADDRESS, port=0))
    await exporter.start()
    try:
        assert exporter.port is not None
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{ADDRESS}:{exporter.port}/-/healthy") as resp:
            assert resp.status == 200
        assert refused_on_127_0_0_1(exporter.port)
    finally:
        await exporter.shutdown()


async def test_a_process_http_port_binds_the_configured_address() -> None:
    cfg = GpusloConfig.model_validate({"exporters": {
        "prometheus": {"host": ADDRESS, "port": 0}, "web": {"enabled": True}}})
    async with serving(cfg, asyncio.Event(), Readiness()) as hub:
        base = http_address(hub)
        assert base is not None and base.startswith(f"http://{ADDRESS}:")
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/healthz", "/readyz", "/"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, (path, resp.status)
        assert refused_on_127_0_0_1(int(base.rsplit(":", 1)[1]))


async def test_the_webhook_receiver_binds_the_configured_address() -> None:
    cfg = ReceiverConfig(host=ADDRESS, port=0, token=SecretStr("bind-test-token"))
    async with WebhookReceiver(cfg) as r:
        assert r.port is not None and r.url.startswith(f"http://{ADDRESS}:")
        async with aiohttp.ClientSession() as http, \
                http.get(r.url, headers={"Authorization": "Bearer bind-test-token"}) as resp:
            assert resp.status == 200
        assert refused_on_127_0_0_1(r.port)


@pytest.mark.integration
def test_the_embedded_broker_binds_the_configured_address() -> None:
    with EmbeddedBroker(host=ADDRESS) as broker:
        assert broker.bootstrap_servers == f"{ADDRESS}:{broker.port}"
        assert refused_on_127_0_0_1(broker.port)
