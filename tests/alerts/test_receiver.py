"""The webhook receiver: real Alertmanager 0.25 bodies accepted, bad requests refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from gpuslo.alerts.receiver import WebhookAlert, WebhookMessage, WebhookReceiver
from gpuslo.pipeline.config import ReceiverConfig

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    cfg = ReceiverConfig(port=0, token=SecretStr(TOKEN), max_body_bytes=4096, keep=3)
    async with WebhookReceiver(cfg) as r:
        yield r


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def test_the_real_captures_validate_as_version_4() -> None:
    firing = WebhookMessage.model_validate_json(_fixture("alertmanager_webhook_example.json"))
    resolved = WebhookMessage.model_validate_json(
        _fixture("alertmanager_webhook_example_resolved.json"))
    assert firing.status == "firing" and resolved.status == "resolved"
    assert firing.alerts[0].endsAt.year == 1  # Go's zero time: the client sent no endsAt
    assert resolved.alerts[0].endsAt > resolved.alerts[0].startsAt
    assert firing.groupKey == '{}:{alertname="SLOBurnRateHigh", slo="vllm-ttft-p99"}'


def test_newer_fields_are_accepted() -> None:
    body = json.loads(_fixture("alertmanager_webhook_example.json"))
    body["notification_reason"] = "first_notification"  # Alertmanager 0.32+
    body["routeLabels"] = {"team": "inference"}  # 0.34+
    assert WebhookMessage.model_validate(body).receiver == "sli-webhook"


async def test_a_valid_notification_is_stored_and_readable_with_the_token(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    async with http.post(receiver.url, data=_fixture("alertmanager_webhook_example.json"),
                         headers=AUTH) as resp:
        assert resp.status == 200
    async with http.get(receiver.url, headers=AUTH) as resp:
        assert resp.status == 200
        stored = await resp.json()
    assert len(stored) == 1
    assert stored[0]["message"]["alerts"][0]["labels"]["slo"] == "vllm-ttft-p99"
    async with http.get(receiver.url) as resp:
        assert resp.status == 401


async def test_only_the_last_n_notifications_are_kept(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    for i in range(5):
        body = json.loads(_fixture("alertmanager_webhook_example.json"))
        body["groupKey"] = f"g{i}"
        async with http.post(receiver.url, json=body, headers=AUTH) as resp:
            assert resp.status == 200
    assert [n.message.groupKey for n in receiver.notifications] == ["g2", "g3", "g4"]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        pytest.param({}, _fixture("alertmanager_webhook_example.json"), 401, id="no token"),
        pytest.param({"Authorization": "Bearer wrong"},
                     _fixture("alertmanager_webhook_example.json"), 401, id="wrong token"),
        pytest.param({"Authorization": f"Basic {TOKEN}"},
                     _fixture("alertmanager_webhook_example.json"), 401, id="wrong scheme"),
        pytest.param(AUTH, b'{"version": "4", ' + b" " * 5000 + b"}", 413, id="oversized"),
        pytest.param(AUTH, b'{"version": "4", "alerts": [', 400, id="not json"),
        pytest.param(AUTH, _fixture("alertmanager_webhook_example.json").replace(
            b'"version":"4"', b'"version":"3"'), 400, id="wrong version"),
        pytest.param(AUTH, _fixture("alertmanager_webhook_example.json").replace(
            b'"status":"firing","labels"', b'"status":"burning","labels"'), 400,
            id="bad alert status"),
        pytest.param(AUTH, b"[]", 400, id="not an object"),
    ],
)
async def test_bad_requests_are_refused_and_nothing_is_stored(
    receiver: WebhookReceiver, http: aiohttp.ClientSession,
    headers: dict[str, str], body: bytes, status: int,
) -> None:
    async with http.post(receiver.url, data=body, headers=headers) as resp:
        assert resp.status == status
        if status == 401:
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert list(receiver.notifications) == []
    assert receiver.rejected[status] == 1


async def test_an_oversized_chunked_body_is_refused_while_reading(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies on read
        for _ in range(10):
            yield b" " * 1000

    async with http.post(receiver.url, data=chunks(), headers=AUTH) as resp:
        assert resp.status == 413
    assert list(receiver.notifications) == []


def test_the_receiver_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ValueError, match=r"token or alerts\.receiver\.token_file is required"):
        WebhookReceiver(ReceiverConfig())


async def test_rca_hook_runs_for_firing_alerts_from_generated_rules_only(
    http: aiohttp.ClientSession,
) -> None:
    seen: list[WebhookAlert] = []

    async def rca(alert: WebhookAlert) -> str | None:
        seen.append(alert)
        return f"GPU throttling on {alert.labels.get('model_name', '?')}"

    body = json.loads(_fixture("alertmanager_webhook_example.json"))
    template = body["alerts"][0]
    generated = {**template, "fingerprint": "aaa",
                 "labels": {"alertname": "VllmTtftBurnRate", "sloth_id": "vllm-ttft",
                            "sloth_service": "vllm", "sloth_slo": "vllm-ttft",
                            "severity": "page", "model_name": "llama-70b"}}
    pushed = {**template, "fingerprint": "bbb",  # gpuslo pushed it: has `service`, RCA attached
              "labels": {"alertname": "VllmTtftBurnRate", "slo": "vllm-ttft", "service": "vllm",
                         "severity": "page", "sloth_id": "vllm-ttft"}}
    resolved = {**generated, "fingerprint": "ccc", "status": "resolved"}
    body["alerts"] = [template, generated, pushed, resolved]
    cfg = ReceiverConfig(port=0, token=SecretStr(TOKEN))
    async with WebhookReceiver(cfg, on_alert=rca) as r:
        async with http.post(r.url, json=body, headers=AUTH) as resp:
            assert resp.status == 200
        (n,) = r.notifications
    assert [a.fingerprint for a in seen] == ["aaa"]
    assert n.rca == {"aaa": "GPU throttling on llama-70b"}


async def test_a_failing_hook_is_counted_and_the_notification_still_accepted(
    http: aiohttp.ClientSession,
) -> None:
    def broken(alert: WebhookAlert) -> str | None:
        raise RuntimeError("rca backend down")

    body = json.loads(_fixture("alertmanager_webhook_example.json"))
    body["alerts"][0]["labels"]["sloth_id"] = "vllm-ttft"
    cfg = ReceiverConfig(port=0, token=SecretStr(TOKEN))
    async with WebhookReceiver(cfg, on_alert=broken) as r:
        async with http.post(r.url, json=body, headers=AUTH) as resp:
            assert resp.status == 200
        assert r.hook_errors == 1
        assert len(r.notifications) == 1
