"""Storage: /proc/diskstats and node_exporter on the same real fixture, Ceph, Lustre."""

# Exposition payloads below are kept one sample per line, as served.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from gpuslo.collectors.mappings import storage
from gpuslo.collectors.mappings.normalise import default_parse
from gpuslo.collectors.scrape.files import read_diskstats

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TS = 1_700_000_000_000


def value(frame: pl.DataFrame, metric: str, entity: str) -> float:
    got = frame.filter((pl.col("metric") == metric) & (pl.col("entity") == entity))
    assert got.height == 1, (metric, entity, got)
    return float(got["value"][0])


def parsed(text: str) -> pl.DataFrame:
    return default_parse(text, node="n1", source="storage", scrape_ts_ms=TS)


def test_proc_diskstats_signals_by_hand(tmp_path: Path) -> None:
    # read_diskstats reads <root>/diskstats; the fixture is named proc-diskstats.
    (tmp_path / "diskstats").write_bytes((FIXTURES / "node_exporter" / "proc-diskstats")
                                         .read_bytes())
    res = read_diskstats(tmp_path, node="n1", scrape_ts_ms=TS)
    assert res.errors == ()
    out = storage.map_frame(res.frame)
    # sda: 25354637 reads, 18492372 ms reading, 1003346126 sectors, 9653880 ms io
    assert value(out, "gpuslo_disk_reads_completed_total", "sda") == 25354637
    assert value(out, "gpuslo_disk_read_time_seconds_total", "sda") == pytest.approx(18492.372)
    assert value(out, "gpuslo_disk_read_bytes_total", "sda") == 1003346126 * 512
    assert value(out, "gpuslo_disk_io_time_seconds_total", "sda") == pytest.approx(9653.88)
    # mean read latency is derived downstream from the two counters:
    # 18492.372 s / 25354637 reads = 0.729 ms per read
    lat = (value(out, "gpuslo_disk_read_time_seconds_total", "sda")
           / value(out, "gpuslo_disk_reads_completed_total", "sda"))
    assert lat == pytest.approx(18492372 / 1000 / 25354637)
    # nvme0n1 writes: 1078320 completed, 1011053 ms
    assert value(out, "gpuslo_disk_write_time_seconds_total", "nvme0n1") == pytest.approx(1011.053)
    assert value(out, "gpuslo_disk_io_in_progress", "sda") == 0
    kinds = dict(out.filter(pl.col("entity") == "sda").select("metric", "kind").unique().rows())
    assert kinds["gpuslo_disk_io_in_progress"] == "gauge"
    assert kinds["gpuslo_disk_reads_completed_total"] == "counter"
    # upstream row keeps the kernel's unit (ms)
    assert value(out, "diskstats_time_reading_ms", "sda") == 18492372


def test_partitions_and_pseudo_devices_excluded_by_default() -> None:
    text = (FIXTURES / "node_exporter" / "proc-diskstats").read_text()
    res = storage.parse_diskstats(text, node="n1", scrape_ts_ms=TS)
    devices = set(res.frame["entity"])
    assert {"sda", "nvme0n1", "dm-0", "mmcblk0", "vda", "sr0"} <= devices
    assert not devices & {"sda1", "nvme0n1p1", "vda1", "ram0", "loop0", "fd0", "sdb2"}
    everything = storage.parse_diskstats(text, node="n1", scrape_ts_ms=TS, device_exclude=None)
    assert "sda1" in set(everything.frame["entity"])
    assert everything.excluded == 0 and res.excluded == 36


def test_diskstats_reader_and_node_exporter_agree_on_the_same_input() -> None:
    """node_exporter's e2e output was produced from this very diskstats file."""
    text = (FIXTURES / "node_exporter" / "proc-diskstats").read_text()
    ours = storage.map_frame(storage.parse_diskstats(text, node="n1", scrape_ts_ms=TS).frame)
    ne_text = (FIXTURES / "node_exporter" / "e2e-output.node_disk.excerpt.prom").read_text()
    theirs = storage.map_frame(parsed(ne_text))
    key = ["metric", "entity"]
    a = ours.filter(pl.col("metric").str.starts_with("gpuslo_disk_")).select(*key, "value")
    b = theirs.filter(pl.col("metric").str.starts_with("gpuslo_disk_")).select(*key, "value")
    joined = a.join(b, on=key, how="full", coalesce=True)
    assert joined.height == a.height == b.height == 135  # 15 devices x 9 signals
    off = joined.filter(
        ((pl.col("value") - pl.col("value_right")).abs() > 1e-9 * pl.col("value").abs())
        | pl.col("value").is_null() | pl.col("value_right").is_null()
    )
    assert off.height == 0, off


def test_malformed_diskstats_lines_are_reported_and_skipped() -> None:
    text = (
        "   8       0 sda 1 2 3 4 5 6 7 8 0 10 11\n"
        "   8      16 sdb 1 2\n"
        "   8      32 sdc 1 2 x 4 5 6 7 8 0 10 11\n"
        "\n"
    )
    res = storage.parse_diskstats(text, node="n1", scrape_ts_ms=TS)
    assert set(res.frame["entity"]) == {"sda"}
    assert len(res.errors) == 2
    assert res.errors[0].startswith("line 2:") and res.errors[1].startswith("line 3:")


CEPH = """# HELP ceph_health_status Cluster health status
# TYPE ceph_health_status untyped
ceph_health_status 1.0
# HELP ceph_osd_up OSD status up
# TYPE ceph_osd_up untyped
ceph_osd_up{ceph_daemon="osd.0"} 1.0
ceph_osd_up{ceph_daemon="osd.1"} 0.0
# HELP ceph_osd_apply_latency_ms OSD stat apply_latency_ms
# TYPE ceph_osd_apply_latency_ms gauge
ceph_osd_apply_latency_ms{ceph_daemon="osd.0"} 12.0
# HELP ceph_osd_op_r_latency_sum Latency of read operation (including queue time)
# TYPE ceph_osd_op_r_latency_sum counter
ceph_osd_op_r_latency_sum{ceph_daemon="osd.0"} 30.5
# HELP ceph_osd_op_r_latency_count Latency of read operation (including queue time) Count
# TYPE ceph_osd_op_r_latency_count counter
ceph_osd_op_r_latency_count{ceph_daemon="osd.0"} 6100.0
# HELP ceph_pool_metadata POOL Metadata
# TYPE ceph_pool_metadata untyped
ceph_pool_metadata{pool_id="1",name="device_health_metrics",type="replicated",description="replica:3",compression_mode="none"} 1.0
ceph_pool_metadata{pool_id="2",name="rbd",type="replicated",description="replica:3",compression_mode="none"} 1.0
# HELP ceph_pool_stored DF pool stored
# TYPE ceph_pool_stored gauge
ceph_pool_stored{pool_id="1"} 0.0
ceph_pool_stored{pool_id="2"} 1073741824.0
ceph_pool_stored{pool_id="9"} 5.0
# HELP ceph_pool_rd DF pool rd
# TYPE ceph_pool_rd counter
ceph_pool_rd{pool_id="2"} 777.0
"""


def test_ceph_health_osd_latency_pairs_and_pool_names() -> None:
    out = storage.map_frame(parsed(CEPH))
    # 1 = HEALTH_WARN, cluster-wide entity
    assert value(out, "gpuslo_ceph_health_status", "ceph") == 1
    assert value(out, "gpuslo_ceph_osd_up", "osd.1") == 0
    # apply latency 12 ms -> 0.012 s
    assert value(out, "gpuslo_ceph_osd_apply_latency_seconds", "osd.0") == pytest.approx(0.012)
    # latency stays a _sum/_count counter pair: 30.5 s over 6100 reads = 5 ms mean
    s = value(out, "gpuslo_ceph_osd_op_read_latency_seconds_total", "osd.0")
    c = value(out, "gpuslo_ceph_osd_op_reads_total", "osd.0")
    assert (s, c) == (30.5, 6100) and s / c == pytest.approx(0.005)
    # pool_id 2 joined to its name; an unknown pool id keeps its id
    assert value(out, "gpuslo_ceph_pool_stored_bytes", "pool:rbd") == 1073741824
    assert value(out, "gpuslo_ceph_pool_stored_bytes", "pool_id:9") == 5
    assert value(out, "gpuslo_ceph_pool_reads_total", "pool:rbd") == 777
    assert storage.ceph_pool_names(out) == {"1": "device_health_metrics", "2": "rbd"}


def test_ceph_http_status_disposition() -> None:
    assert storage.ceph_status_disposition(200) == "ok"
    assert storage.ceph_status_disposition(503) == "retry"
    assert storage.ceph_status_disposition(500) == "standby"
    assert storage.ceph_status_disposition(404) == "error"


def lustre_snapshot() -> pl.DataFrame:
    name = "lustrefs_exporter__routes__tests__metrics_endpoint_is_idempotent.snap"
    path = FIXTURES / "lustre" / name
    return storage.map_frame(parsed(storage.strip_insta_header(path.read_text())))


def test_lustre_capacities_in_kib_become_bytes() -> None:
    out = lustre_snapshot()
    # lustre_capacity_kilobytes{component="ost",target="ai400x2-OST0000"} 35016088872 KiB
    assert value(out, "gpuslo_lustre_capacity_bytes", "ai400x2-OST0000") == 35016088872 * 1024
    assert value(out, "gpuslo_lustre_available_bytes", "ai400x2-MDT0000") == 349493720 * 1024
    assert value(out, "gpuslo_lustre_free_bytes", "MGS") == 1978660 * 1024
    assert value(out, "gpuslo_lustre_inodes", "ai400x2-OST0001") == 276824064
    assert value(out, "gpuslo_lustre_read_bytes_total", "ai400x2-OST0001") == 71484548943872
    assert value(out, "gpuslo_lustre_reads_total", "ai400x2-OST0000") == 71482249
    # lustre_health_healthy{} 1: no target, node-level entity ""
    assert value(out, "gpuslo_lustre_healthy", "") == 1
    mdt_ops = out.filter(pl.col("metric") == "gpuslo_lustre_metadata_operations_total")
    assert mdt_ops.height > 0 and set(mdt_ops["entity"]) == {"ai400x2-MDT0000"}


def test_lustre_gauges_named_total_keep_their_declared_type() -> None:
    out = lustre_snapshot()
    kinds = set(out.filter(pl.col("metric") == "lustre_exports_total")["kind"])
    assert kinds == {"gauge"}


def test_strip_insta_header_leaves_plain_text_alone() -> None:
    assert storage.strip_insta_header("a 1\n") == "a 1\n"
    assert storage.strip_insta_header("---\nsource: x\n---\na 1\n") == "a 1\n"
