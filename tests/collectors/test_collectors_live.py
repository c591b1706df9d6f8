"""DCGM and KV-cache collectors against the simulated fleet, through Kafka and `gpuslo collect`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from kafka_target import kafka_settings

from gpuslo.collectors.mappings.dcgm import XID_EVENT_METRIC
from gpuslo.collectors.registry import build_collector, build_collectors
from gpuslo.pipeline.config import (
    ConsumerConfig,
    DcgmCollectorConfig,
    GpusloConfig,
    KafkaConfig,
    KvCacheCollectorConfig,
)
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import label
from gpuslo.pipeline.stages.collect import CollectRunner
from gpuslo.simulator import Fleet, FleetServer, FleetSpec, ManualClock, ServiceSpec

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SERVICES = (
    ServiceSpec("llama-70b", "vllm", replicas=2, tp=2, legacy_replicas=(1,)),
    ServiceSpec("qwen-32b", "sglang", replicas=1, tp=2),
)


def small_fleet() -> Fleet:
    return Fleet(FleetSpec(nodes=2, gpus_per_node=4, services=SERVICES, training=None))


@pytest.fixture
async def fleet_server() -> AsyncIterator[FleetServer]:
    fleet = small_fleet()
    async with FleetServer(fleet, clock=ManualClock(fleet.t + 120.0)) as server:
        yield server


def dcgm_config(server: FleetServer, **kw: object) -> DcgmCollectorConfig:
    targets = [{"url": t.url, "node": t.node} for t in server.targets() if t.source == "dcgm"]
    return DcgmCollectorConfig.model_validate({"targets": targets, **kw})


def kv_config(server: FleetServer, **kw: object) -> KvCacheCollectorConfig:
    targets = [{"url": t.url, "node": t.node, "replica": t.entity}
               for t in server.targets() if t.source == "kvcache"]
    return KvCacheCollectorConfig.model_validate({"targets": targets, **kw})


def one(frame: pl.DataFrame, metric: str, entity: str) -> float:
    """The value of the only row of ``metric`` for ``entity``."""
    rows = frame.filter((pl.col("metric") == metric) & (pl.col("entity") == entity))
    assert rows.height == 1, (metric, entity, rows)
    return float(rows["value"][0])


async def test_dcgm_collector_signals_match_the_model(fleet_server: FleetServer) -> None:
    fleet = fleet_server.fleet
    async with build_collector(dcgm_config(fleet_server), default_node="agent") as collector:
        results = await collector.collect(NOW)
    assert all(r.ok for r in results), [r.error for r in results]
    frame = pl.concat([r.frame for r in results if r.frame is not None])
    for n in fleet.nodes:
        for g in n.gpus:
            assert one(frame, "gpuslo_gpu_utilization_ratio", g.uuid) == pytest.approx(
                round(g.util * 100) / 100)
            assert one(frame, "gpuslo_gpu_power_watts", g.uuid) == pytest.approx(g.power_w,
                                                                                abs=1e-6)
            assert one(frame, "gpuslo_gpu_energy_joules_total", g.uuid) == pytest.approx(
                int(g.energy_mj) / 1000.0)
            used = one(frame, "DCGM_FI_DEV_FB_USED", g.uuid)
            assert one(frame, "gpuslo_gpu_memory_used_bytes", g.uuid) == used * 1024 * 1024
    # The fleet stamps its samples with simulated time: those timestamps are kept.
    gpu_rows = frame.filter(pl.col("source") == "dcgm")
    assert set(gpu_rows["ts"]) == {datetime.fromtimestamp(int(fleet.t * 1000) / 1000, tz=UTC)}
    assert set(gpu_rows["node"]) == {"node-0", "node-1"}


async def test_dcgm_collector_turns_xid_changes_into_events(fleet_server: FleetServer) -> None:
    collector = build_collector(dcgm_config(fleet_server), default_node="agent")
    async with collector:
        await collector.collect(NOW)  # baseline
        gpu = fleet_server.fleet.nodes[0].gpus[1]
        first = await collector.collect(NOW)
        assert not any(r.frame is not None and XID_EVENT_METRIC in set(r.frame["metric"])
                       for r in first)
        gpu.xid = 79  # fallen off the bus
        results = await collector.collect(NOW)
    events = pl.concat([r.frame for r in results if r.frame is not None]).filter(
        pl.col("metric") == XID_EVENT_METRIC)
    assert events.height == 1
    assert events["entity"][0] == gpu.uuid and events["value"][0] == 79.0
    assert events.select(label("xid").alias("xid"))["xid"][0] == "79"


async def test_kvcache_collector_signals_match_the_model(fleet_server: FleetServer) -> None:
    fleet = fleet_server.fleet
    async with build_collector(kv_config(fleet_server), default_node="agent") as collector:
        results = await collector.collect(NOW)
    assert all(r.ok for r in results), [r.error for r in results]
    frame = pl.concat([r.frame for r in results if r.frame is not None])
    by_replica: dict[str, set[str]] = {}
    for r in fleet.replicas:
        # The replica name from the target joins the engine's own labels in the entity.
        mine = frame.filter(pl.col("entity").str.starts_with(r.service + "/")
                            & pl.col("entity").str.ends_with(f"replica={r.key}"))
        if r.engine == "vllm":
            label_part = "" if r.legacy_names else "engine=0,"
            assert set(mine["entity"]) == {f"{r.service}/{label_part}replica={r.key}"}
        elif r.engine == "sglang":
            # Scheduler (KV usage) and tokenizer (prefix cache) series: one server, one entity.
            assert set(mine["entity"]) == {f"{r.service}/replica={r.key}"}

        def value(metric: str, sub: pl.DataFrame = mine) -> float:
            rows = sub.filter(pl.col("metric") == metric)
            assert rows.height == 1, (metric, rows)
            return float(rows["value"][0])

        # Engines print 4 significant digits (SGLang) or whole requests (vLLM).
        assert value("gpuslo_kv_cache_usage_ratio") == pytest.approx(r.kv_usage, abs=1e-4)
        assert value("gpuslo_requests_running") == pytest.approx(r.running, abs=0.5)
        assert value("gpuslo_requests_waiting") == pytest.approx(r.waiting, abs=0.5)
        queries = value("gpuslo_prefix_cache_queries_tokens_total")
        hits = mine.filter(pl.col("metric") == "gpuslo_prefix_cache_hits_tokens_total")
        assert 0 < float(hits["value"].sum()) <= queries
        by_replica[r.key] = {m for m in mine["metric"] if m.startswith("gpuslo_")}
    # vLLM v0 names (legacy replica) and v1 names give the same normalised signals.
    legacy = next(r.key for r in fleet.replicas if r.legacy_names)
    modern = next(r.key for r in fleet.replicas if r.engine == "vllm" and not r.legacy_names)
    core = {"gpuslo_kv_cache_usage_ratio", "gpuslo_prefix_cache_hits_tokens_total",
            "gpuslo_prefix_cache_queries_tokens_total", "gpuslo_preemptions_total",
            "gpuslo_time_to_first_token_seconds_bucket"}
    assert core <= by_replica[legacy] and core <= by_replica[modern]


async def _consume_all(kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig, group: str,
                       until: int) -> list[pl.DataFrame]:
    frames: list[pl.DataFrame] = []
    async with SampleConsumer(kafka_cfg, consumer_cfg, [kafka_cfg.topics.samples],
                              group_id=group) as consumer:
        for _ in range(30):
            frames += [b.frame for b in await consumer.poll(timeout_ms=300)
                       if b.frame is not None]
            if sum(f.height for f in frames) >= until:
                break
    return frames


async def test_dcgm_and_kvcache_batches_land_in_kafka(
    fleet_server: FleetServer, kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    await ensure_topics(kafka_cfg, [kafka_cfg.topics.samples])
    cfg = GpusloConfig.model_validate({
        "node": "agent",
        "collectors": [dcgm_config(fleet_server, interval_s=0.5, timeout_s=0.5).model_dump(),
                       kv_config(fleet_server, interval_s=0.5, timeout_s=0.5).model_dump()],
    })
    collectors = build_collectors(cfg)
    assert [type(c.mapping).__name__ for c, _ in collectors] == ["DcgmMapping", "KvCacheMapping"]
    stop = asyncio.Event()
    async with SampleProducer(kafka_cfg) as producer:
        runner = CollectRunner(collectors, producer, kafka_cfg.topics.samples)
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(1.2)
        stop.set()
        await task
    assert runner.stats.samples_produced > 0 and not runner.stats.errors
    frames = await _consume_all(kafka_cfg, consumer_cfg, "live", runner.stats.samples_produced)
    everything = pl.concat(frames)
    assert everything.height == runner.stats.samples_produced
    names = set(everything["metric"])
    assert {"gpuslo_gpu_utilization_ratio", "gpuslo_kv_cache_usage_ratio",
            "gpuslo_scrape_up", "DCGM_FI_DEV_GPU_UTIL"} <= names
    assert set(everything["node"]) == {"node-0", "node-1"}


async def test_gpuslo_collect_with_dcgm_and_kvcache_lands_batches(
    tmp_path: Path, kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    fleet = small_fleet()
    async with FleetServer(fleet, speed=60.0) as server:
        config = {
            "node": "agent",
            "log_level": "WARNING",
            "kafka": kafka_settings(kafka_cfg),  # the test's cluster, topics and security
            # collect serves its health on /metrics: any free port, not 9464.
            "exporters": {"prometheus": {"host": "127.0.0.1", "port": 0}},
            "collectors": [
                {"type": "dcgm", "interval_s": 0.5, "timeout_s": 0.5,
                 "targets": [{"url": t.url, "node": t.node} for t in server.targets()
                             if t.source == "dcgm"]},
                {"type": "kvcache", "interval_s": 0.5, "timeout_s": 0.5,
                 "targets": [{"url": t.url, "node": t.node, "replica": t.entity}
                             for t in server.targets() if t.source == "kvcache"]},
            ],
        }
        path = tmp_path / "gpuslo.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gpuslo.pipeline.app.cli.main", "collect", "--config", str(path),
            "--duration", "2.5", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "produced" in out.decode()
    frames = await _consume_all(kafka_cfg, consumer_cfg, "cli", 1)
    everything = pl.concat(frames)
    assert {"dcgm", "kvcache", "gpuslo"} <= set(everything["source"])
    assert "gpuslo_kv_cache_usage_ratio" in set(everything["metric"])
    assert "gpuslo_gpu_power_watts" in set(everything["metric"])
