"""RDMA, kubelet and storage collectors against the simulated fleet, through Kafka and
`gpuslo collect`; the kubelet over real TLS with a rotating token; broken sysfs roots."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from aiohttp import web
from kafka_target import kafka_settings

from gpuslo.collectors.base import Collector
from gpuslo.collectors.registry import build_collector, build_collectors
from gpuslo.collectors.scrape.engine import ERRORS, SERIES_ERRORS, UP
from gpuslo.pipeline.config import (
    ConfigError,
    ConsumerConfig,
    GpusloConfig,
    KafkaConfig,
    KubeletCollectorConfig,
    RdmaCollectorConfig,
    StorageCollectorConfig,
    load_config,
)
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import label
from gpuslo.pipeline.stages.collect import CollectRunner
from gpuslo.simulator import Fleet, FleetServer, FleetSpec, ManualClock, ServiceSpec

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SERVICES = (ServiceSpec("llama-8b", "vllm", replicas=1, tp=1),)
TOKEN_A = "kubelet-token-aaaa-1111"
TOKEN_B = "kubelet-token-bbbb-2222"
KEY = ["node", "entity", "ts"]


def small_fleet() -> Fleet:
    return Fleet(FleetSpec(nodes=2, gpus_per_node=2, services=SERVICES, training=None))


@pytest.fixture
async def fleet_server(tmp_path: Path) -> AsyncIterator[FleetServer]:
    fleet = small_fleet()
    async with FleetServer(fleet, clock=ManualClock(fleet.t + 120.0),
                           sysfs_dir=tmp_path / "hosts") as server:
        yield server


def http(server: FleetServer, *kinds: str) -> list[dict[str, object]]:
    return [{"url": t.url, "node": t.node} for t in server.targets() if t.kind in kinds]


def collectors_for(server: FleetServer) -> list[dict[str, object]]:
    """One config per way of reading each source (so each is checked on its own)."""
    files = server.file_targets()
    fast = {"interval_s": 1.0, "timeout_s": 1.0}
    return [
        {"type": "rdma", "name": "rdma-sysfs", **fast,
         "sysfs": [{"path": str(f.sys_root), "node": f.node} for f in files]},
        {"type": "rdma", "name": "rdma-ne", **fast, "targets": http(server, "node_exporter")},
        {"type": "kubelet", **fast, "token_file": None,
         "targets": http(server, "kubelet_resource", "kubelet_cadvisor", "kubelet_summary")},
        {"type": "storage", "name": "storage-diskstats", **fast,
         "diskstats": [{"path": str(f.diskstats), "node": f.node} for f in files]},
        {"type": "storage", "name": "storage-http", **fast,
         "targets": http(server, "node_exporter", "ceph")},
    ]


async def consume_all(kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig, group: str,
                      until: int) -> pl.DataFrame:
    frames: list[pl.DataFrame] = []
    async with SampleConsumer(kafka_cfg, consumer_cfg, [kafka_cfg.topics.samples],
                              group_id=group) as consumer:
        for _ in range(30):
            frames += [b.frame for b in await consumer.poll(timeout_ms=300)
                       if b.frame is not None]
            if sum(f.height for f in frames) >= until:
                break
    assert frames, "nothing reached Kafka"
    return pl.concat(frames)


def pairs(frame: pl.DataFrame, raw: str, normalised: str, **match: str) -> pl.DataFrame:
    """Raw rows of ``raw`` joined to the ``normalised`` rows of the same node, entity and time."""
    r = frame.filter(pl.col("metric") == raw)
    for k, v in match.items():
        r = r.filter(label(k) == v)
    n = frame.filter(pl.col("metric") == normalised)
    out = r.select(*KEY, "source", raw=pl.col("value")).unique().join(
        n.select(*KEY, norm=pl.col("value")).unique(), on=KEY)
    assert out.height > 0, (raw, normalised)
    return out


async def run_collectors(collectors: list[tuple[Collector, float]], kafka_cfg: KafkaConfig,
                         seconds: float) -> CollectRunner:
    await ensure_topics(kafka_cfg, [kafka_cfg.topics.samples])
    stop = asyncio.Event()
    async with SampleProducer(kafka_cfg) as producer:
        runner = CollectRunner(collectors, producer, kafka_cfg.topics.samples)
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task
    return runner


async def test_rdma_kubelet_storage_batches_reach_kafka_mapped(
    fleet_server: FleetServer, kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    cfg = GpusloConfig.model_validate({"node": "agent", "collectors": collectors_for(fleet_server)})
    collectors = build_collectors(cfg)
    assert [type(c.mapping).__name__ for c, _ in collectors] == [
        "RdmaMapping", "RdmaMapping", "KubeletMapping", "StorageMapping", "StorageMapping"]
    runner = await run_collectors(collectors, kafka_cfg, 1.6)
    assert runner.stats.samples_produced > 0 and not runner.stats.errors, runner.stats.errors
    frame = await consume_all(kafka_cfg, consumer_cfg, "sources", runner.stats.samples_produced)
    assert frame.height == runner.stats.samples_produced
    assert {"rdma", "kubelet", "storage", "gpuslo"} == set(frame["source"])
    nodes = {"node-0", "node-1"}
    for source in ("rdma", "kubelet"):
        assert set(frame.filter(pl.col("source") == source)["node"]) == nodes

    # RDMA from sysfs: data words x 4; entity device/port.
    rcv = pairs(frame, "infiniband_port_counters_port_rcv_data", "gpuslo_rdma_port_rcv_bytes_total")
    assert (rcv["norm"] == rcv["raw"] * 4).all() and set(rcv["source"]) == {"rdma"}
    assert set(rcv["node"]) == nodes and all(e.count("/") == 1 for e in rcv["entity"])
    state = pairs(frame, "infiniband_port_state", "gpuslo_rdma_port_state")
    assert (state["norm"] == state["raw"]).all() and set(state["raw"]) == {4.0}
    # RDMA from node_exporter: already bytes; the same ports.
    ne = pairs(frame, "node_infiniband_port_data_received_bytes_total",
               "gpuslo_rdma_port_rcv_bytes_total")
    assert (ne["norm"] == ne["raw"]).all() and set(ne["entity"]) == set(rcv["entity"])
    errs = pairs(frame, "node_infiniband_port_errors_received_total",
                 "gpuslo_rdma_port_rcv_errors_total")
    assert (errs["norm"] == errs["raw"]).all()
    # Each collector keeps its own families of the shared node_exporter page.
    rdma_rows = frame.filter(pl.col("source") == "rdma")
    storage_rows = frame.filter(pl.col("source") == "storage")
    assert not rdma_rows["metric"].str.starts_with("node_disk_").any()
    assert not storage_rows["metric"].str.starts_with("node_infiniband_").any()

    # kubelet: container entity namespace/pod/container; usage from /metrics/resource only.
    cpu = pairs(frame, "container_cpu_usage_seconds_total",
                "gpuslo_container_cpu_usage_seconds_total")
    assert (cpu["norm"] == cpu["raw"]).all()
    assert all(e.count("/") == 2 for e in cpu["entity"])
    every_cpu = frame.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    assert every_cpu.select(KEY).unique().height == cpu.select(KEY).unique().height
    throttled = pairs(frame, "container_cpu_cfs_throttled_periods_total",
                      "gpuslo_container_cpu_cfs_throttled_periods_total")
    assert (throttled["norm"] == throttled["raw"]).all()
    rootfs = pairs(frame, "kubelet_summary_rootfs_usedBytes", "gpuslo_container_rootfs_used_bytes")
    assert (rootfs["norm"] == rootfs["raw"]).all()
    node_fs = pairs(frame, "kubelet_summary_fs_capacityBytes", "gpuslo_node_fs_capacity_bytes",
                    scope="node")
    assert set(node_fs["entity"]) == nodes

    # Storage: diskstats ms -> s, node_exporter as is, Ceph cluster and OSD entities.
    rt = pairs(frame, "diskstats_time_reading_ms", "gpuslo_disk_read_time_seconds_total")
    assert (rt["norm"] - rt["raw"] * 1e-3).abs().max() < 1e-9  # type: ignore[operator]
    assert set(rt["node"]) == nodes and all(e.startswith("nvme") for e in rt["entity"])
    reads = pairs(frame, "node_disk_reads_completed_total", "gpuslo_disk_reads_completed_total")
    assert (reads["norm"] == reads["raw"]).all() and set(reads["entity"]) <= set(rt["entity"])
    health = pairs(frame, "ceph_health_status", "gpuslo_ceph_health_status")
    assert set(health["entity"]) == {"ceph"} and (health["norm"] == health["raw"]).all()
    osd = pairs(frame, "ceph_osd_up", "gpuslo_ceph_osd_up")
    assert all(e.startswith("osd.") for e in osd["entity"])

    # Health rows for every target, files included.
    up = frame.filter(pl.col("metric") == UP)
    assert set(up["value"]) == {1.0}
    assert any(e.startswith("file://") for e in up["entity"])


async def test_gpuslo_collect_runs_rdma_kubelet_storage(
    tmp_path: Path, kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    fleet = small_fleet()
    async with FleetServer(fleet, speed=60.0, sysfs_dir=tmp_path / "hosts") as server:
        config = {
            "node": "agent",
            "log_level": "WARNING",
            "kafka": kafka_settings(kafka_cfg),  # the test's cluster, topics and security
            # collect serves its health on /metrics: any free port, not 9464.
            "exporters": {"prometheus": {"host": "127.0.0.1", "port": 0}},
            "collectors": collectors_for(server),
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
    frame = await consume_all(kafka_cfg, consumer_cfg, "cli", 1)
    assert {"rdma", "kubelet", "storage", "gpuslo"} <= set(frame["source"])
    names = set(frame["metric"])
    assert {"gpuslo_rdma_port_rcv_bytes_total", "gpuslo_container_cpu_usage_seconds_total",
            "gpuslo_disk_read_time_seconds_total", "gpuslo_ceph_health_status"} <= names


# ---------------------------------------------------------------- sysfs problems


async def test_missing_sysfs_root_and_broken_files_are_reported_not_fatal(
    fleet_server: FleetServer, tmp_path: Path, kafka_cfg: KafkaConfig
) -> None:
    good = fleet_server.file_targets()[0]
    broken = tmp_path / "broken-sys"
    shutil.copytree(good.sys_root, broken)
    counters = next(broken.glob("class/infiniband/*/ports/1/counters"))
    (counters / "symbol_error").write_text("garbage\n")
    (counters.parent / "rate").unlink()  # a required port file
    missing = tmp_path / "not-mounted"
    cfg = RdmaCollectorConfig.model_validate({
        "interval_s": 0.3, "timeout_s": 0.3,
        "sysfs": [{"path": str(missing), "node": "n-missing"},
                  {"path": str(broken), "node": "n-broken"}]})
    async with build_collector(cfg, default_node="agent") as collector:
        results = {r.node: r for r in await collector.collect(NOW)}
    gone = results["n-missing"]
    assert not gone.ok and gone.error_reason == "missing" and str(missing) in (gone.error or "")
    assert gone.frame is not None
    assert gone.frame.filter(pl.col("metric") == UP)["value"].to_list() == [0.0]
    reasons = gone.frame.filter(pl.col("metric") == ERRORS).select(label("reason"))
    assert reasons.to_series().to_list() == ["missing"]

    part = results["n-broken"]
    assert part.ok and part.frame is not None
    series = part.frame.filter(pl.col("metric") == SERIES_ERRORS)
    got = dict(zip(series.select(label("reason")).to_series(), series["value"], strict=True))
    assert got == {"malformed": 1.0, "missing": 1.0}
    port = f"{counters.parent.parent.parent.name}/1"
    names = set(part.frame.filter(pl.col("entity") == port)["metric"])
    assert "infiniband_port_counters_port_rcv_data" in names  # the rest is still read
    assert "infiniband_port_counters_symbol_error" not in names
    assert "infiniband_port_rate_gbps" not in names and "infiniband_port_state" in names

    # Through the runner: the dead root is counted, the process carries on.
    runner = await run_collectors([(build_collector(cfg, default_node="agent"), 0.3)],
                                  kafka_cfg, 0.8)
    assert any(reason == "missing" for (_t, reason) in runner.stats.errors)
    assert runner.stats.samples_produced > 0


# ---------------------------------------------------------------- kubelet over TLS


SUMMARY = """{"node": {"nodeName": "n1", "cpu": {"time": "2026-11-01T12:00:00Z",
  "usageCoreNanoSeconds": 5000000000}},
 "pods": [{"podRef": {"name": "p", "namespace": "ns"},
   "containers": [{"name": "c", "rootfs": {"time": "2026-11-01T12:00:00Z", "usedBytes": 4096},
                   "memory": {"time": "2026-11-01T12:00:00Z", "workingSetBytes": "lots"}}]}]}
"""


@pytest.fixture
async def tls_kubelet(tls_files: tuple[Path, Path]) -> AsyncIterator[tuple[str, list[str]]]:
    cert, key = tls_files
    seen: list[str] = []

    def guarded(body: str, content_type: str) -> web.Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            seen.append(auth)
            if auth not in (f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}"):
                return web.Response(status=401)
            return web.Response(text=body, content_type=content_type)

        return handler

    app = web.Application()
    app.router.add_get("/metrics/resource", guarded(
        'container_cpu_usage_seconds_total{container="c",namespace="ns",pod="p"} 2.5 '
        "1700000000000\n", "text/plain"))
    app.router.add_get("/stats/summary", guarded(SUMMARY, "application/json"))
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_kubelet_https_with_token_and_ca(
    tls_kubelet: tuple[str, list[str]], tls_files: tuple[Path, Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, seen = tls_kubelet
    cert, _ = tls_files
    token = tmp_path / "token"
    token.write_text(TOKEN_A + "\n")
    common = {"url": base, "endpoints": ["resource", "summary"], "token_file": str(token)}
    caplog.set_level(logging.DEBUG)

    cfg = KubeletCollectorConfig.model_validate({**common, "ca_file": str(cert)})
    async with build_collector(cfg, default_node="n1") as collector:
        results = {r.target.rsplit("/", 1)[-1]: r for r in await collector.collect(NOW)}
        assert all(r.ok for r in results.values()), [r.error for r in results.values()]
        assert seen[-1] == f"Bearer {TOKEN_A}"
        frame = pl.concat([r.frame for r in results.values() if r.frame is not None])
        cpu = frame.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
        # From /metrics/resource only (summary usage is left to it), with its own timestamp.
        assert cpu["value"].to_list() == [2.5] and cpu["entity"].to_list() == ["ns/p/c"]
        rootfs = frame.filter(pl.col("metric") == "gpuslo_container_rootfs_used_bytes")
        assert rootfs["value"].to_list() == [4096.0]
        # The malformed summary field is a per-series problem, not a failed scrape.
        series = frame.filter(pl.col("metric") == SERIES_ERRORS)
        assert series["value"].to_list() == [1.0]

        new = tmp_path / "token.new"  # rotation: the kubelet swaps the file
        new.write_text(TOKEN_B)
        os.replace(new, token)
        await collector.collect(NOW)
        assert seen[-1] == f"Bearer {TOKEN_B}"

    no_ca = KubeletCollectorConfig.model_validate(common)
    async with build_collector(no_ca, default_node="n1") as collector:
        failed = await collector.collect(NOW)
    assert {r.error_reason for r in failed} == {"tls"}
    assert all("verif" in (r.error or "") for r in failed)

    insecure = KubeletCollectorConfig.model_validate({**common, "insecure_skip_verify": True})
    async with build_collector(insecure, default_node="n1") as collector:
        assert all(r.ok for r in await collector.collect(NOW))

    token.unlink()  # no token at all: the scrape fails with reason token, naming the path
    async with build_collector(cfg, default_node="n1") as collector:
        gone = await collector.collect(NOW)
    assert {r.error_reason for r in gone} == {"token"}
    assert all(str(token) in (r.error or "") for r in gone)

    every_error = " ".join(r.error or "" for r in [*failed, *gone])
    for secret in (TOKEN_A, TOKEN_B):
        assert secret not in caplog.text and secret not in every_error


def test_config_errors_are_listed_with_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"collectors": [
        {"type": "kubelet", "url": "http://10.0.0.1:10255"},
        {"type": "kubelet"},
        {"type": "storage", "device_exclude": "(", "diskstats": [{"node": "x"}]},
        {"type": "rdma", "sysfs": [{"path": "/sys", "nodes": "typo"}]},
        {"type": "storage", "device_exclude": "("},
    ]}))
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    problems = "\n".join(err.value.problems)
    assert "collectors[0]: the bearer token is never sent over plain http" in problems
    assert "collectors[1]: kubelet needs `url`" in problems
    assert "collectors[2].diskstats[0].path: " in problems
    assert "collectors[3].sysfs[0].nodes: unknown field" in problems
    assert "collectors[4]: device_exclude is not a valid regex" in problems
    # Defaults: sysfs /sys and /proc/diskstats only when nothing else is listed.
    assert [s.path for s in RdmaCollectorConfig().sysfs_sources()] == [Path("/sys")]
    listed = StorageCollectorConfig.model_validate({"targets": [{"url": "http://c:9283/metrics"}]})
    assert listed.diskstats_sources() == []
    assert KubeletCollectorConfig.model_validate(
        {"url": "https://10.0.0.1:10250"}).endpoint_urls()[0] == (
        "https://10.0.0.1:10250/metrics/resource", None)
