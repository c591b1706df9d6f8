"""One record per node per linger window: the same samples reach Kafka, in fewer records.

The scrape engine fires a node's targets together and names each scrape's series
(``TargetResult.series_key``); the collect stage gathers a node's results for
``record_linger_s`` and produces them as one record, which stores a repeated target's
series once.  What a consumer reads must be exactly the frames the engine handed over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import polars as pl
import pytest
from aiohttp import web
from polars.testing import assert_frame_equal

from gpuslo.collectors.base import ScrapeTarget, TargetResult
from gpuslo.collectors.exposition import ShapeCache
from gpuslo.collectors.mappings.dcgm import DcgmMapping
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.collectors.scrape.engine import ScrapeEngine, ScrapeSettings, phase
from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import Block, frame_from_rows
from gpuslo.pipeline.stages.collect import CollectRunner, _Pending

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def page(path: str, n: int) -> str:
    """A DCGM-like page whose values change on every request and whose series do not."""
    return (
        "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n"
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
        + "".join(f'DCGM_FI_DEV_GPU_TEMP{{gpu="{g}",UUID="GPU-{path}-{g}"}} {40 + n % 7}\n'
                  for g in range(4))
        + "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n"
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
        + "".join(f'DCGM_FI_DEV_POWER_USAGE{{gpu="{g}",UUID="GPU-{path}-{g}"}} {n * 1.5}\n'
                  for g in range(4))
    )


@pytest.fixture
async def base() -> AsyncIterator[str]:
    hits: dict[str, int] = {}

    async def handler(request: web.Request) -> web.Response:
        path = request.match_info["p"]
        hits[path] = hits.get(path, 0) + 1
        return web.Response(text=page(path, hits[path]))

    app = web.Application()
    app.router.add_get("/{p}/metrics", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def targets(base: str) -> list[ScrapeTarget]:
    return [ScrapeTarget(f"{base}/{node}-{kind}/metrics", node)
            for node in ("node-a", "node-b") for kind in ("dcgm", "exporter")]


async def test_a_nodes_scrapes_leave_as_one_record_and_decode_to_what_was_scraped(
    base: str, kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    await ensure_topics(kafka_cfg, [kafka_cfg.topics.samples])
    engine = ScrapeEngine("linger", ScrapeSettings(interval_s=0.1, timeout_s=1.0, jitter=0.5),
                          targets(base), PrometheusMapping("dcgm"))
    handed: list[TargetResult] = []
    stop = asyncio.Event()
    async with SampleProducer(kafka_cfg) as producer:
        runner = CollectRunner([(engine, 0.1)], producer, kafka_cfg.topics.samples,
                               clock=lambda: NOW, record_linger_s=0.6)
        original = runner.submit

        async def keep(name: str, results: list[TargetResult]) -> None:
            handed.extend(results)
            await original(name, results)

        runner.submit = keep  # type: ignore[method-assign]
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(2.0)
        stop.set()
        await task
    assert runner.stats.pending == 0 and not runner.stats.errors
    scrapes = len(handed)
    assert scrapes >= 4 * 8, scrapes  # every target about every 0.1 s
    # About one record per node per 0.6 s (plus the final flush), not one per scrape.
    assert runner.stats.records_produced <= 2 * (2.0 / 0.6 + 2), runner.stats.records_produced
    assert runner.stats.samples_produced == sum(r.frame.height for r in handed
                                                if r.frame is not None)
    # A page that kept its series kept its series key; the key is per target.
    keys: dict[str, set[object]] = {}
    for r in handed:
        keys.setdefault(r.target, set()).add(r.series_key)
    assert all(len(k) == 1 and None not in k for k in keys.values()), keys
    assert len({next(iter(k)) for k in keys.values()}) == len(keys)

    records: dict[str, list[pl.DataFrame]] = {}
    async with SampleConsumer(kafka_cfg, consumer_cfg, [kafka_cfg.topics.samples],
                              group_id="linger-test") as consumer:
        for _ in range(40):
            for b in await consumer.poll(timeout_ms=300):
                assert b.frame is not None and b.key is not None
                records.setdefault(b.key, []).append(b.frame)
            got = sum(f.height for fs in records.values() for f in fs)
            if got >= runner.stats.samples_produced:
                break
    assert set(records) == {"node-a", "node-b"}
    for node, frames in records.items():
        # Each record holds several scrapes of its node, and nothing else.
        assert all(set(f["node"]) == {node} for f in frames)
        assert max(f.height for f in frames) > 2 * (8 + 3)
        # In order, exactly what the engine handed over for that node.
        sent = [r.frame for r in handed if r.node == node and r.frame is not None]
        assert_frame_equal(pl.concat(frames), pl.concat(sent))


async def test_series_keys_follow_the_shape_and_the_mapping(base: str) -> None:
    urls = targets(base)[:1]
    generic = ScrapeEngine("g", ScrapeSettings(), urls, PrometheusMapping("dcgm"))
    dcgm = ScrapeEngine("d", ScrapeSettings(), urls, DcgmMapping())
    shapes, other = ShapeCache(), ShapeCache()
    async with generic, dcgm:
        a = await generic.scrape(urls[0], NOW, shapes)
        b = await generic.scrape(urls[0], NOW, shapes)
        c = await generic.scrape(urls[0], NOW, None)  # no cache: nothing known
        d = await dcgm.scrape(urls[0], NOW, other)  # DCGM's transform looks at values
    assert a.series_key is not None and a.series_key == b.series_key
    assert a.frame is not None and b.frame is not None
    assert not a.frame["value"].equals(b.frame["value"])  # values changed, series did not
    assert c.series_key is None and d.series_key is None


def test_nodes_phase_keeps_a_nodes_targets_together() -> None:
    assert phase("node-a", 15.0, 0.5) == phase("node-a", 15.0, 0.5)
    assert 0.0 <= phase("node-a", 15.0, 0.5) < 7.5
    assert len({phase(f"node-{i}", 15.0, 0.5) for i in range(20)}) == 20


async def test_a_key_that_does_not_hold_costs_the_dedup_not_the_samples(
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    await ensure_topics(kafka_cfg, [kafka_cfg.topics.samples])
    one = frame_from_rows([(NOW, "node-a", "s", "m", "gauge", 1.0, "e", {"a": "b"})])
    two = frame_from_rows([(NOW, "node-a", "s", f"m{i}", "gauge", 2.0, "e", {}) for i in range(2)])
    alien = pl.DataFrame({"ts": [1], "oops": ["x"]})
    async with SampleProducer(kafka_cfg) as producer:
        runner = CollectRunner([], producer, kafka_cfg.topics.samples, record_linger_s=0.0)
        runner._enqueue(_Pending("node-a", (Block(one, "same-key"),)))
        runner._enqueue(_Pending("node-a", (Block(two, "same-key"),)))  # a collector bug: not equal
        runner._enqueue(_Pending("node-b", (Block(alien),)))
        assert await runner.flush()
    assert runner.stats.samples_produced == 3 and runner.stats.pending == 0
    assert runner.stats.dropped["unencodable"] == 1
    async with SampleConsumer(kafka_cfg, consumer_cfg, [kafka_cfg.topics.samples],
                              group_id="linger-keys") as consumer:
        got: list[pl.DataFrame] = []
        for _ in range(20):
            got += [b.frame for b in await consumer.poll(timeout_ms=300) if b.frame is not None]
            if sum(f.height for f in got) >= 3:
                break
    assert_frame_equal(pl.concat(got), pl.concat([one, two]))
