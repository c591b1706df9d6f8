"""The scrape engine isolates bad targets: each is reported, the others keep flowing to Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pytest
from aiohttp import web

from gpuslo.collectors.base import ScrapeTarget, TargetResult
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.collectors.scrape.engine import (
    DURATION,
    ERRORS,
    HEALTH_SOURCE,
    SAMPLES,
    UP,
    ScrapeEngine,
    ScrapeSettings,
    count_sample_lines,
    phase,
)
from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import label
from gpuslo.pipeline.stages.collect import CollectRunner, ScheduledCollector

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
EXPLICIT_MS = 1_761_998_400_123
MB = 1024 * 1024


def good_payload(i: int) -> str:
    return (
        "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n"
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
        f'DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="GPU-{i}"}} 41\n'
        f'DCGM_FI_DEV_GPU_TEMP{{gpu="1",UUID="GPU-{i}b"}} 44 {EXPLICIT_MS}\n'
    )


@dataclass
class Served:
    base: str
    huge_bytes_sent: list[int] = field(default_factory=list)
    trickle_cut_after_s: list[float] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Served]:
    """Good pages plus one of each kind of bad target."""
    served = Served("")

    async def good(request: web.Request) -> web.Response:
        return web.Response(text=good_payload(int(request.match_info["i"])))

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def error(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="<html>{{{ this is not exposition")

    async def not_ready(_: web.Request) -> web.Response:
        return web.Response(status=503, text="Service Unavailable")

    async def many(_: web.Request) -> web.Response:
        return web.Response(text="".join(f'm{{i="{i}"}} 1\n' for i in range(500)))

    async def huge(request: web.Request) -> web.StreamResponse:
        # 50 MB of valid-looking lines, chunked (no Content-Length): the client must
        # count while streaming and hang up.
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = (b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-x"} 41\n' * 22_000)[: MB]
        sent = 0
        try:
            while sent < 50 * MB:
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            served.huge_bytes_sent.append(sent)
        return resp

    async def trickle(request: web.Request) -> web.StreamResponse:
        # Headers at once, then a valid page one byte every 100 ms (a peer that is alive
        # but stalls): never idle long enough for a read timeout, so only a bound on the
        # whole request cuts it.  It records when the client hung up.
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4"})
        await resp.prepare(request)
        started = time.monotonic()
        page = good_payload(9).encode() * 100
        try:
            for i in range(len(page)):
                await resp.write(page[i:i + 1])
                await asyncio.sleep(0.1)
        except (ConnectionResetError, RuntimeError):
            served.trickle_cut_after_s.append(time.monotonic() - started)
        return resp

    app = web.Application()
    app.router.add_get("/good/{i}", good)
    app.router.add_get("/hang", hang)
    app.router.add_get("/500", error)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/503", not_ready)
    app.router.add_get("/many", many)
    app.router.add_get("/huge", huge)
    app.router.add_get("/trickle", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    served.base = f"http://127.0.0.1:{port}"
    yield served
    await runner.cleanup()


BAD = {"hang": "timeout", "500": "http_500", "garbage": "parse", "huge": "too_large",
       "503": "not_ready", "many": "too_many_series", "trickle": "timeout"}


def targets(base: str, good: int = 2) -> list[ScrapeTarget]:
    out = [ScrapeTarget(f"{base}/good/{i}", f"node-{i}") for i in range(good)]
    out += [ScrapeTarget(f"{base}/{p}", "node-bad") for p in BAD]
    return out


def settings(**kw: float) -> ScrapeSettings:
    base: dict[str, float] = {"interval_s": 0.3, "timeout_s": 1.5, "jitter": 0.2,
                              "max_body_bytes": 4 * MB, "max_series": 100,
                              "concurrency": 16}
    base.update(kw)
    return ScrapeSettings(**base)  # type: ignore[arg-type]


def health_value(frame: pl.DataFrame, metric: str, reason: str | None = None) -> float:
    rows = frame.filter((pl.col("source") == HEALTH_SOURCE) & (pl.col("metric") == metric))
    if reason is not None:
        rows = rows.filter(label("reason") == reason)
    assert rows.height == 1, rows
    return float(rows["value"][0])


async def test_one_collect_reports_every_failure_by_reason(server: Served) -> None:
    async with ScrapeEngine("t", settings(timeout_s=0.5), targets(server.base),
                            PrometheusMapping("dcgm")) as engine:
        started = time.perf_counter()
        # Bounded here too: an engine that let the trickle run would fail, not hang.
        results = await asyncio.wait_for(engine.collect(NOW), 10.0)
        elapsed = time.perf_counter() - started
    by_path = {r.target.rsplit("/", 1)[-1]: r for r in results}
    assert elapsed < 3.0
    for path, reason in BAD.items():
        r = by_path[path]
        assert not r.ok and r.error_reason == reason, (path, r.error)
        assert r.frame is not None  # the health rows still go out
        assert health_value(r.frame, UP) == 0.0
        assert health_value(r.frame, ERRORS, reason) == 1.0
    good = by_path["0"]
    assert good.ok and good.frame is not None
    samples = good.frame.filter(pl.col("source") == "dcgm")
    assert samples.height == 2
    assert health_value(good.frame, UP) == 1.0
    assert health_value(good.frame, SAMPLES) == 2.0
    assert health_value(good.frame, DURATION) > 0.0
    # Explicit sample timestamps are kept; the others get the scrape time.
    ts = {e: int(t.timestamp() * 1000) for e, t in
          zip(label_values(samples, "UUID"), samples["ts"], strict=True)}
    assert ts == {"GPU-0": int(NOW.timestamp() * 1000), "GPU-0b": EXPLICIT_MS}
    assert engine.health[f"{server.base}/huge"].errors["too_large"] == 1
    # The 50 MB body was abandoned soon after the limit, not read to the end.
    await asyncio.sleep(0.2)
    assert server.huge_bytes_sent and server.huge_bytes_sent[0] < 50 * MB
    # The trickling page (alive, a byte every 100 ms) was cut by the whole-request
    # timeout: the client hung up near 0.5 s, not after the page's half hour (20 kB).
    assert "within 0.5s" in (by_path["trickle"].error or "")
    assert server.trickle_cut_after_s and server.trickle_cut_after_s[0] < 1.5


def label_values(frame: pl.DataFrame, name: str) -> list[str]:
    return [str(v) for v in frame.select(label(name).alias("v"))["v"]]


async def test_declared_content_length_over_the_limit_is_refused_before_reading(
    server: Served,
) -> None:
    async with ScrapeEngine("t", settings(max_body_bytes=100), [
            ScrapeTarget(f"{server.base}/good/1", "n")], PrometheusMapping("dcgm")) as engine:
        (result,) = await engine.collect(NOW)
    assert result.error_reason == "too_large" and "Content-Length" in (result.error or "")


def test_helpers_are_stable_and_cheap() -> None:
    assert count_sample_lines("# HELP a b\n# TYPE a gauge\na 1\n\n  b{x=\"1\"} 2\n") == 2
    p = phase("http://a/metrics", 10.0, 0.5)
    assert p == phase("http://a/metrics", 10.0, 0.5) and 0.0 <= p < 5.0


def test_nodes_fire_in_as_many_bursts_as_configured() -> None:
    """Many nodes share a few evenly spaced offsets (a group's pages parse one after
    another); each node keeps its place, and one group is where its node would be."""
    nodes = [f"node-{i}" for i in range(64)]
    grouped = {n: phase(n, 10.0, 0.5, 4) for n in nodes}
    assert set(grouped.values()) == {0.0, 1.25, 2.5, 3.75}
    for n in nodes:
        spread = phase(n, 10.0, 0.5)
        assert grouped[n] <= spread < grouped[n] + 1.25  # its own slot, rounded down
        assert grouped[n] == phase(n, 10.0, 0.5, 4)
    assert len({phase(n, 10.0, 0.5, 1) for n in nodes}) == 1
    assert len({phase(n, 10.0, 0.5) for n in nodes}) == 64


async def test_a_nodes_targets_fire_in_one_burst_and_nodes_apart(server: Served) -> None:
    """One node's targets start together (warm caches, one record); nodes keep their
    phases.  Each health row's ts is its scrape's start."""
    nodes = ("node-a", "node-b", "node-c")
    targets = [ScrapeTarget(f"{server.base}/good/{i}", node)
               for i, node in enumerate(n for n in nodes for _ in range(4))]
    first: dict[str, tuple[str, datetime]] = {}
    stop = asyncio.Event()

    async def submit(results: list[TargetResult]) -> None:
        for r in results:
            assert r.frame is not None and r.ok, r.error
            first.setdefault(r.target, (r.node, r.frame["ts"][-1]))
        if len(first) == len(targets):
            stop.set()

    engine = ScrapeEngine("burst", settings(interval_s=8.0, timeout_s=2.0, jitter=0.5),
                          targets, PrometheusMapping("dcgm"))
    await asyncio.wait_for(engine.run(submit, stop), 15.0)
    starts = {node: sorted(ts for n, ts in first.values() if n == node) for node in nodes}
    # Bounds with room for a loaded machine (an event loop a CPU shares with others):
    # a tenth of the interval, the spread this replaced, would be 800 ms.
    for node, stamps in starts.items():
        assert (stamps[-1] - stamps[0]).total_seconds() <= 0.25, (node, stamps)
    expected = {node: phase(node, 8.0, 0.5, engine.settings.bursts) for node in nodes}
    a, b = sorted(nodes, key=expected.__getitem__)[:2]
    gap = (starts[b][0] - starts[a][0]).total_seconds()
    assert abs(gap - (expected[b] - expected[a])) <= 0.25, (gap, expected)


async def test_bad_targets_do_not_hold_back_good_batches_on_their_way_to_kafka(
    server: Served, kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    await ensure_topics(kafka_cfg, [kafka_cfg.topics.samples])
    engine = ScrapeEngine("engine-test", settings(), targets(server.base),
                          PrometheusMapping("dcgm"))
    assert isinstance(engine, ScheduledCollector)
    arrivals: dict[str, list[float]] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with SampleProducer(kafka_cfg) as producer:
        # The runner's clock stamps the scheduled scrapes (how a simulated fleet's time
        # reaches sources whose pages carry no timestamps).
        runner = CollectRunner([(engine, 0.3)], producer, kafka_cfg.topics.samples,
                               clock=lambda: NOW)
        original = runner.submit

        async def timed_submit(name: str, results: list[TargetResult]) -> None:
            await original(name, results)
            for r in results:
                arrivals.setdefault(r.target.rsplit("/", 1)[-1], []).append(loop.time())

        runner.submit = timed_submit  # type: ignore[method-assign]
        started = loop.time()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(2.2)
        stop.set()
        await task
    # Good targets ran on their own 0.3 s schedule, produced, while the hanging target
    # was stuck in its 1.5 s timeout: the first good batch was in Kafka well before it.
    for good in ("0", "1"):
        assert len(arrivals[good]) >= 5, arrivals
        assert arrivals[good][0] - started < 0.6
    assert arrivals["hang"][0] - started >= 1.5
    # The trickle too: its bytes kept coming, but only its 1.5 s timeout ended it, and
    # the good targets' batches did not wait for it.
    assert arrivals["trickle"][0] - started >= 1.5
    assert sum(t < arrivals["trickle"][0] for t in arrivals["0"]) >= 3, arrivals
    # Each target's loop kept its own parser cache: re-scrapes only re-read the numbers,
    # and one target's shapes never evict another's.
    caches = [engine.shape_caches[f"{server.base}/good/{i}"] for i in (0, 1)]
    assert caches[0] is not caches[1]
    assert all(c.misses == 1 and c.hits >= 4 and len(c) == 1 for c in caches), [
        (c.hits, c.misses) for c in caches]
    # Per-target health is keyed by (collector, source, node, target URL).
    errors = {(key.target, reason): n for (key, reason), n in runner.stats.errors.items()}
    for path, reason in BAD.items():
        assert errors[(f"{server.base}/{path}", reason)] >= 1, (path, errors)
    good = runner.target_key(engine.name, "node-0", f"{server.base}/good/0")
    assert good.source == "dcgm"
    assert runner.stats.target_up[good] is True
    assert runner.stats.target_samples[good] == 2
    # 503 is retried on its own short schedule, not counted as a crash.
    assert errors[(f"{server.base}/503", "not_ready")] >= 3
    assert runner.stats.pending == 0

    frames: list[pl.DataFrame] = []
    keys: set[str | None] = set()
    async with SampleConsumer(kafka_cfg, consumer_cfg, [kafka_cfg.topics.samples],
                              group_id="engine-test") as consumer:
        for _ in range(20):
            for b in await consumer.poll(timeout_ms=300):
                if b.frame is not None:
                    frames.append(b.frame)
                    keys.add(b.key)
            if sum(f.height for f in frames) >= runner.stats.samples_produced:
                break
    everything = pl.concat(frames)
    assert everything.height == runner.stats.samples_produced
    assert {"node-0", "node-1", "node-bad"} <= keys
    dcgm = everything.filter(pl.col("source") == "dcgm")
    assert set(dcgm["node"]) == {"node-0", "node-1"}
    up = everything.filter(pl.col("metric") == UP).with_columns(target=label("target"))
    assert set(up["ts"]) == {NOW}  # health rows carry the scrape time: the runner's clock
    down = set(up.filter(pl.col("value") == 0.0)["target"])
    assert down == {f"{server.base}/{p}" for p in BAD}
    assert f"{server.base}/good/0" in set(up.filter(pl.col("value") == 1.0)["target"])
