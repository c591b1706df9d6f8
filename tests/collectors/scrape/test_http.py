"""One page fetch over TLS with a rotating bearer token: verified, and secrets never leak."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gpuslo.collectors.scrape.http import ScrapeFailed, fetch_page
from gpuslo.pipeline import auth

TOKEN_A = "eyJhbGciOiJSUzI1NiJ9.tokenA.sig"
TOKEN_B = "eyJhbGciOiJSUzI1NiJ9.tokenB.sig"


@pytest.fixture
async def kubelet_server(tls_files: tuple[Path, Path]) -> AsyncIterator[tuple[str, list[str]]]:
    cert, key = tls_files
    seen: list[str] = []

    async def metrics(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        if not auth.startswith("Bearer "):
            return web.Response(status=401)
        return web.Response(text="node_cpu_usage_seconds_total 1.5 1700000000000\n")

    app = web.Application()
    app.router.add_get("/metrics/resource", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/metrics/resource", seen
    finally:
        await runner.cleanup()


async def test_tls_verification_with_ca_without_ca_and_insecure(
    kubelet_server: tuple[str, list[str]], tls_files: tuple[Path, Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, seen = kubelet_server
    cert, _ = tls_files
    token_path = tmp_path / "token"
    token_path.write_text(TOKEN_A)
    bearer = auth.BearerAuth(auth.BearerTokenFile(token_path))

    async def fetch(ctx: ssl.SSLContext, with_token: bool = True) -> str:
        text, _ = await fetch_page(session, url, timeout_s=5, max_body_bytes=1 << 20,
                                   header_source=bearer.headers if with_token else None,
                                   ssl_context=ctx, redact=bearer.redact)
        return text

    async with aiohttp.ClientSession() as session:
        body = await fetch(auth.tls_context(ca_file=cert))
        assert body.startswith("node_cpu_usage_seconds_total")
        assert seen[-1] == f"Bearer {TOKEN_A}"

        with caplog.at_level(logging.DEBUG), pytest.raises(ScrapeFailed) as err:
            await fetch(auth.tls_context())
        assert err.value.reason == "tls" and not err.value.retriable
        assert "CA bundle" in str(err.value) and "insecure" in str(err.value)
        assert TOKEN_A not in str(err.value) and err.value.__cause__ is None

        body = await fetch(auth.tls_context(insecure=True))
        assert body.endswith("1700000000000\n")

        # Rotation: the next request carries the new token.
        new = tmp_path / "token.new"
        new.write_text(TOKEN_B)
        os.replace(new, token_path)
        await fetch(auth.tls_context(ca_file=cert))
        assert seen[-1] == f"Bearer {TOKEN_B}"

        with pytest.raises(ScrapeFailed) as err401:
            await fetch(auth.tls_context(ca_file=cert), with_token=False)
        assert err401.value.reason == "http_401" and not err401.value.retriable
        assert "credentials rejected" in str(err401.value)
    assert TOKEN_A not in caplog.text and TOKEN_B not in caplog.text
