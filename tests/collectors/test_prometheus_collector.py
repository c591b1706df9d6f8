"""The generic Prometheus scrape: pure parse, and a fetch loop that isolates bad targets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import polars as pl
import pytest
from aiohttp import web

from gpuslo.collectors.exposition import parse_text
from gpuslo.collectors.reference import parse_text_reference
from gpuslo.collectors.registry import build_collector
from gpuslo.pipeline.config import PrometheusCollectorConfig
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, Kind

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)

PAYLOAD = """\
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a",Hostname="n1"} 41
DCGM_FI_DEV_GPU_TEMP{gpu="1",UUID="GPU-b",Hostname="n1"} 44 1761998400000
# HELP vllm:e2e_request_latency_seconds Latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="m"} 3
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 5
vllm:e2e_request_latency_seconds_sum{model_name="m"} 4.5
vllm:e2e_request_latency_seconds_count{model_name="m"} 5
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 7
"""


def test_parse_text_keeps_names_labels_and_explicit_timestamps() -> None:
    frame = parse_text(PAYLOAD, node="n1", source="dcgm", scrape_ts_ms=NOW_MS, entity_label="UUID")
    reference = parse_text_reference(PAYLOAD, node="n1", source="dcgm", scrape_ts_ms=NOW_MS,
                                     entity_label="UUID")
    assert frame.equals(reference)  # the fast parser is the default, and exact
    assert frame.schema == SAMPLE_SCHEMA
    rows = {(r["metric"], r["entity"]): r for r in frame.iter_rows(named=True)}
    temp_b = rows[("DCGM_FI_DEV_GPU_TEMP", "GPU-b")]
    assert temp_b["value"] == 44.0
    assert int(temp_b["ts"].timestamp() * 1000) == 1761998400000  # the sample's own time
    assert rows[("DCGM_FI_DEV_GPU_TEMP", "GPU-a")]["ts"] == NOW  # scrape time otherwise
    assert rows[("DCGM_FI_DEV_GPU_TEMP", "GPU-a")]["labels"] == [
        {"name": "Hostname", "value": "n1"},
        {"name": "UUID", "value": "GPU-a"},
        {"name": "gpu", "value": "0"},
    ]
    kinds = dict(zip(frame["metric"], frame["kind"], strict=True))
    assert kinds["vllm:e2e_request_latency_seconds_bucket"] == Kind.HISTOGRAM_BUCKET
    assert kinds["vllm:e2e_request_latency_seconds_sum"] == Kind.HISTOGRAM_SUM
    assert kinds["vllm:e2e_request_latency_seconds_count"] == Kind.HISTOGRAM_COUNT
    assert kinds["vllm:num_preemptions_total"] == Kind.COUNTER
    assert frame.height == 7


def test_parse_text_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_text("this is { not exposition", node="n", source="s", scrape_ts_ms=NOW_MS)


@pytest.fixture
async def targets() -> AsyncIterator[str]:
    """One server with a good, a slow, a garbage and a failing endpoint."""

    async def good(_: web.Request) -> web.Response:
        return web.Response(text=PAYLOAD)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text=PAYLOAD)

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="<html>{{{ nope")

    async def unavailable(_: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/good", good)
    app.router.add_get("/slow", slow)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/503", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_bad_targets_fail_alone_with_a_reason(targets: str) -> None:
    from gpuslo.pipeline.kafka.broker import free_port

    dead = f"http://127.0.0.1:{free_port()}/metrics"
    cfg = PrometheusCollectorConfig(
        targets=[{"url": f"{targets}/{p}"} for p in ("good", "slow", "garbage", "503")]
        + [{"url": dead, "node": "n9"}],
        interval_s=5,
        timeout_s=0.5,
    )
    async with build_collector(cfg, default_node="n1") as collector:
        started = asyncio.get_running_loop().time()
        results = await collector.collect(NOW)
        elapsed = asyncio.get_running_loop().time() - started
    by_path = {r.target.rsplit("/", 1)[-1]: r for r in results}
    assert by_path["good"].ok and by_path["good"].frame is not None
    # The samples, plus the engine's health rows (source "gpuslo").
    assert by_path["good"].frame.filter(pl.col("source") == "prometheus").height == 7
    assert by_path["slow"].error_reason == "timeout"
    assert by_path["garbage"].error_reason == "parse"
    assert by_path["503"].error_reason == "not_ready"
    assert by_path["metrics"].error_reason == "connect" and by_path["metrics"].node == "n9"
    assert elapsed < 2.0  # the slow target did not hold the others up
