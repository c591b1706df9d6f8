"""Alert secrets from files: read at start, re-read when the mounted Secret rotates.

The Alertmanager client's bearer token (``bearer_token_file``) or basic-auth
password (``basic_auth.password_file``) and the receiver's token
(``token_file``) can live in files instead of the config or the
environment; each is read when the part starts (a missing file fails then,
naming the path) and re-read when it changes, as a Kubernetes Secret volume
rotates it.  Real HTTP on loopback throughout.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from report_builders import fire, spec

from gpuslo.alerts.alertmanager import AlertmanagerClient
from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.pipeline.auth import TokenError
from gpuslo.pipeline.config import AlertmanagerConfig, ReceiverConfig
from gpuslo.slo.alerting import AlertEvaluator

FIXTURE = Path(__file__).parent.parent / "fixtures" / "alertmanager" / \
    "alertmanager_webhook_example.json"


def rotate(path: Path, value: str) -> None:
    """Replace the file's content as a Secret volume does (a new file renamed over it)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


@pytest.fixture
async def alertmanager() -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in Alertmanager that records each POST's Authorization header."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        await request.read()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/v2/alerts", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def _send_once(client: AlertmanagerClient) -> None:
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
    client.submit(alerts)
    await client.flush(5)


def _client(url: str, **auth: object) -> AlertmanagerClient:
    return AlertmanagerClient(AlertmanagerConfig.model_validate(
        {"urls": [url], "backoff_initial_s": 0.05, "timeout_s": 2, **auth}))


async def test_the_bearer_token_file_is_sent_and_its_rotation_picked_up(
    alertmanager: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = alertmanager
    token = tmp_path / "token"
    token.write_text("am-token-one\n")
    async with _client(url, bearer_token_file=str(token)) as c:
        await _send_once(c)
        rotate(token, "am-token-two")
        c.submit([], complete=True)  # resolves what fired: another POST
        await c.flush(5)
    assert seen[0] == "Bearer am-token-one"
    assert seen[-1] == "Bearer am-token-two"


async def test_the_basic_auth_password_file_is_sent(
    alertmanager: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = alertmanager
    password = tmp_path / "password"
    password.write_text("am-pass-1\n")
    async with _client(url, basic_auth={"username": "gpuslo",
                                        "password_file": str(password)}) as c:
        await _send_once(c)
    assert seen[0] == "Basic " + base64.b64encode(b"gpuslo:am-pass-1").decode()


def test_a_missing_secret_file_fails_at_start_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(TokenError, match=rf"cannot stat Alertmanager bearer token file {missing}"):
        _client("http://127.0.0.1:9", bearer_token_file=str(missing))
    with pytest.raises(TokenError, match=rf"cannot stat receiver token file {missing}"):
        WebhookReceiver(ReceiverConfig(port=0, token_file=missing))


async def test_the_receiver_token_file_is_checked_and_its_rotation_picked_up(
    tmp_path: Path,
) -> None:
    token = tmp_path / "receiver-token"
    token.write_text("recv-token-old\n")
    body = FIXTURE.read_bytes()
    async with WebhookReceiver(ReceiverConfig(port=0, token_file=token)) as r, \
            aiohttp.ClientSession() as http:

        async def post(tok: str) -> int:
            async with http.post(r.url, data=body,
                                 headers={"Authorization": f"Bearer {tok}"}) as resp:
                return resp.status

        assert await post("recv-token-old") == 200
        assert await post("wrong") == 401
        rotate(token, "recv-token-new")
        assert await post("recv-token-new") == 200
        assert await post("recv-token-old") == 401
