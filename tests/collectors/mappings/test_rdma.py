"""RDMA: sysfs reader on the real procfs/node_exporter fixture trees, node_exporter mapping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.collectors.mappings import rdma
from gpuslo.collectors.mappings.normalise import default_parse
from gpuslo.collectors.mappings.rdma import COUNTER_WIDTHS, SATURATED_METRIC, saturation_rows
from gpuslo.collectors.scrape.files import read_sysfs
from gpuslo.pipeline.schema import COLUMNS, Kind, empty_frame, frame_from_rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PROCFS_SYS = FIXTURES / "procfs" / "sys"
TS = 1_700_000_000_000


def unpack_ttar(archive: Path, dest: Path) -> Path:
    """Expand a ttar archive (prometheus' text tar: Path:/Lines:/body/Mode:) under ``dest``."""
    lines = archive.read_text().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Directory: "):
            (dest / line[len("Directory: "):]).mkdir(parents=True, exist_ok=True)
        elif line.startswith("Path: "):
            path = dest / line[len("Path: "):]
            count = int(lines[i + 1].split(": ")[1])
            body = lines[i + 2:i + 2 + count]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(body) + "\n")
            i += 1 + count
        i += 1
    return dest


@pytest.fixture
def node_exporter_sys(tmp_path: Path) -> Path:
    root = unpack_ttar(FIXTURES / "node_exporter" / "sys-class-infiniband.ttar-excerpt", tmp_path)
    return root / "sys"


def read(root: Path) -> rdma.RdmaReadResult:
    return read_sysfs(root, node="n1", scrape_ts_ms=TS)


def value(frame: pl.DataFrame, metric: str, entity: str) -> float:
    got = frame.filter((pl.col("metric") == metric) & (pl.col("entity") == entity))
    assert got.height == 1, (metric, entity, got)
    return float(got["value"][0])


def test_procfs_tree_values_by_hand() -> None:
    res = read(PROCFS_SYS)
    assert res.problems == ()
    out = rdma.map_sysfs(res)
    # upstream row keeps the raw 4-octet word count ...
    assert value(out, "infiniband_port_counters_port_xmit_data", "mlx5_0/1") == 2880761508848
    # ... the normalised signal is bytes: 2880761508848 words * 4
    assert value(out, "gpuslo_rdma_port_xmit_bytes_total", "mlx5_0/1") == 2880761508848 * 4
    assert value(out, "gpuslo_rdma_port_rcv_bytes_total", "hfi1_0/1") == 345091702026 * 4
    # "25 Gb/sec (1X EDR)": 25e9 bit/s / 8 = 3.125e9 bytes/s
    assert value(out, "gpuslo_rdma_port_rate_bytes_per_second", "mlx5_0/1") == 3.125e9
    assert value(out, "gpuslo_rdma_port_rate_bytes_per_second", "mlx4_0/2") == 40e9 / 8
    # "4: ACTIVE"
    assert value(out, "gpuslo_rdma_port_state", "mlx4_0/1") == 4
    assert value(out, "gpuslo_rdma_port_xmit_wait_ticks_total", "mlx4_0/2") == 3846
    # RoCE / transport hw_counters kept and normalised
    assert value(out, "infiniband_port_hw_counters_local_ack_timeout_err", "mlx5_0/1") == 131
    assert value(out, "gpuslo_rdma_local_ack_timeout_errors_total", "mlx5_0/1") == 131
    assert value(out, "gpuslo_rdma_roce_slow_restart_cnps_total", "mlx5_0/1") == 131
    assert value(out, "gpuslo_rdma_out_of_buffer_drops_total", "mlx5_0/1") == 0
    # lifespan is the refresh period (ms), a gauge, never normalised as a counter
    life = out.filter(pl.col("metric") == "infiniband_port_hw_counters_lifespan")
    assert life["kind"].to_list() == ["gauge"] and life["value"].to_list() == [10.0]
    info = out.filter(pl.col("metric") == "infiniband_device_info", pl.col("entity") == "mlx5_0")
    labs = {lab["name"]: lab["value"] for lab in info["labels"][0]}
    assert labs["fw_ver"] == "14.28.2006" and labs["hca_type"] == "MT4118"
    # Nothing saturated in this tree.
    sat = out.filter(pl.col("metric") == rdma.SATURATED_METRIC)
    assert sat.height > 0 and sat["value"].sum() == 0


def test_node_exporter_tree_matches_node_exporter_output(node_exporter_sys: Path) -> None:
    """Our sysfs reader and node_exporter, fed the same tree, give the same signals."""
    res = read(node_exporter_sys)
    counters = pl.col("metric").str.starts_with("gpuslo_rdma_") & (
        pl.col("metric") != rdma.SATURATED_METRIC)
    ours = rdma.map_sysfs(res).filter(counters)
    text = (FIXTURES / "node_exporter" / "e2e-output.node_infiniband.excerpt.prom").read_text()
    theirs = rdma.map_node_exporter(
        default_parse(text, node="n1", source="rdma", scrape_ts_ms=TS)
    ).filter(counters)
    key = ["metric", "entity"]
    both = ours.select(*key, "value").join(theirs.select(*key, "value"), on=key, how="inner")
    assert both.height == theirs.height == 33
    assert both.filter(pl.col("value") != pl.col("value_right")).height == 0
    # e.g. mlx4_0 port 1 port_rcv_data 4631917 words * 4 = 18527668 bytes
    # (node_exporter prints 1.8527668e+07)
    assert value(ours, "gpuslo_rdma_port_rcv_bytes_total", "mlx4_0/1") == 4631917 * 4 == 18527668
    # Everything node_exporter reports for these families we report too.
    missing = theirs.select(key).join(ours.select(key), on=key, how="anti")
    assert missing.height == 0, missing


def test_na_no_pma_is_unavailable_not_an_error(node_exporter_sys: Path) -> None:
    res = read(node_exporter_sys)
    assert res.errors == ()
    # i40iw0 port 1: every counters file reads "N/A (no PMA)" (17 in the archive)
    archive = (FIXTURES / "node_exporter" / "sys-class-infiniband.ttar-excerpt").read_text()
    na = [p for p in res.problems if "i40iw0" in p.path]
    assert res.unavailable == len(na) == archive.count("N/A (no PMA)") == 17
    assert all(p.reason == "unavailable" for p in na)
    # ...while its state and rate are still collected.
    out = rdma.map_sysfs(res)
    assert value(out, "gpuslo_rdma_port_state", "i40iw0/1") == 4
    assert value(out, "gpuslo_rdma_port_rate_bytes_per_second", "i40iw0/1") == 1.25e9


def test_pegged_32bit_xmit_wait_is_flagged_saturated(node_exporter_sys: Path) -> None:
    out = rdma.map_sysfs(read(node_exporter_sys))
    # port_xmit_wait 4294967295 = 2^32 - 1 on mlx4_0 port 1
    assert value(out, "gpuslo_rdma_port_xmit_wait_ticks_total", "mlx4_0/1") == 2**32 - 1
    sat = out.filter(pl.col("metric") == rdma.SATURATED_METRIC, pl.col("entity") == "mlx4_0/1")
    flagged = {lab["value"] for labs, v in zip(sat["labels"], sat["value"], strict=True)
               if v == 1.0 for lab in labs if lab["name"] == "counter"}
    assert flagged == {"gpuslo_rdma_port_xmit_wait_ticks_total"}
    # The same flag from node_exporter's copy of the value.
    text = (FIXTURES / "node_exporter" / "e2e-output.node_infiniband.excerpt.prom").read_text()
    ne = rdma.map_node_exporter(default_parse(text, node="n1", source="rdma", scrape_ts_ms=TS))
    ne_sat = ne.filter(pl.col("metric") == rdma.SATURATED_METRIC, pl.col("value") == 1.0)
    assert ne_sat["entity"].to_list() == ["mlx4_0/1"]


def test_missing_unreadable_and_malformed_files_are_reported_per_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "sys"
    shutil.copytree(PROCFS_SYS, root)
    port = root / "class" / "infiniband" / "mlx5_0" / "ports" / "1"
    (port / "counters" / "symbol_error").write_text("garbage\n")
    (port / "state").unlink()
    (port / "rate").write_text("fast\n")
    shutil.rmtree(root / "class" / "infiniband" / "mlx4_0" / "ports" / "2" / "counters")
    os.symlink(port / "no-such-file", port / "counters" / "dangling")
    # Some drivers answer a counter read with EINVAL/EACCES (and root ignores
    # file modes), so simulate the failing read itself.
    unreadable = port / "hw_counters" / "out_of_sequence"
    real_read_text = Path.read_text

    def failing_read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == unreadable:
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", failing_read_text)
    res = read(root)
    assert ("out_of_sequence", "unreadable") in {(Path(p.path).name, p.reason)
                                                 for p in res.errors}
    reasons = {(Path(p.path).name, p.reason) for p in res.errors}
    assert ("symbol_error", "malformed") in reasons
    assert ("state", "missing") in reasons
    assert ("rate", "malformed") in reasons
    assert ("counters", "missing") in reasons
    assert ("dangling", "missing") in reasons
    out = rdma.map_sysfs(res)
    # The rest of the port is still collected.
    assert value(out, "gpuslo_rdma_port_xmit_bytes_total", "mlx5_0/1") == 2880761508848 * 4
    assert value(out, "gpuslo_rdma_port_state", "mlx4_0/2") == 4
    assert out.filter(pl.col("metric") == "gpuslo_rdma_symbol_errors_total",
                      pl.col("entity") == "mlx5_0/1").height == 0


def test_no_infiniband_class_is_empty_not_an_error(tmp_path: Path) -> None:
    res = read(tmp_path)
    assert res.frame.height == 0 and res.problems == ()


def test_text_parsers() -> None:
    assert rdma.parse_rate_gbps("100 Gb/sec (4X EDR)\n") == 100.0
    assert rdma.parse_rate_gbps("2.5 Gb/sec (1X SDR)") == 2.5
    assert rdma.parse_state("5: LinkUp\n") == (5, "LinkUp")
    assert rdma.parse_counter("N/A (no PMA)\n") is None
    assert rdma.parse_counter("0042\n") == 42
    for bad in ("-1", "1.5", "", "0x10"):
        with pytest.raises(ValueError):
            rdma.parse_counter(bad)
    with pytest.raises(ValueError):
        rdma.parse_state("ACTIVE")


SATURATING = sorted(n for n, (_, sat) in rdma.COUNTER_WIDTHS.items() if sat)
WRAPPING = sorted(n for n, (_, sat) in rdma.COUNTER_WIDTHS.items() if not sat)


@given(st.sampled_from(SATURATING), st.data())
def test_saturating_counters_never_wrap(name: str, data: st.DataObject) -> None:
    bits = rdma.COUNTER_WIDTHS[name][0]
    top = 2**bits - 1
    prev = data.draw(st.integers(0, top))
    cur = data.draw(st.integers(0, top))
    inc = rdma.counter_increase(name, float(prev), float(cur))
    assert inc >= 0
    # a drop is a clear (reset to cur), never "wrapped round" to a huge number
    assert inc == (cur - prev if cur >= prev else cur)
    assert inc <= top
    # pegged stays pegged: no increase, however many errors happened
    assert rdma.counter_increase(name, float(top), float(top)) == 0


@given(st.sampled_from(WRAPPING), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_wrapping_q_counters_wrap_at_2_32(name: str, prev: int, cur: int) -> None:
    inc = rdma.counter_increase(name, float(prev), float(cur))
    assert 0 <= inc < 2**32
    assert (prev + inc) % 2**32 == cur


def _saturation_rows_per_counter(normalised: pl.DataFrame) -> pl.DataFrame:
    """The former saturation_rows, one filter per counter name: the oracle of the one-pass
    version."""
    rows = []
    for name, (bits, saturates) in COUNTER_WIDTHS.items():
        if not saturates:
            continue
        part = normalised.filter(pl.col("metric") == name)
        if part.height == 0:
            continue
        extra = pl.lit([{"name": "counter", "value": name}], dtype=normalised.schema["labels"])
        rows.append(part.with_columns(
            metric=pl.lit(SATURATED_METRIC),
            kind=pl.lit(Kind.GAUGE.value, dtype=normalised.schema["kind"]),
            value=(pl.col("value") >= float(2**bits - 1)).cast(pl.Float64),
            labels=pl.concat_list([pl.col("labels"), extra])
            .list.eval(pl.element().sort_by(pl.element().struct.field("name"))),
        ).select(COLUMNS))
    return pl.concat(rows) if rows else empty_frame()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([*COUNTER_WIDTHS, "gpuslo_rdma_port_state"]),
                          st.sampled_from([0.0, 1.0, 15.0, 255.0, 65535.0, 4294967295.0,
                                           float("nan")]),
                          st.sampled_from(["mlx5_0/1", "mlx5_1/1"]),
                          st.sampled_from([{}, {"port": "1"}, {"zz": "last", "a": "first"}])),
                max_size=40))
def test_saturation_rows_in_one_pass_equal_one_filter_per_counter(
        rows: list[tuple[str, float, str, dict[str, str]]]) -> None:
    normalised = frame_from_rows((TS, "n1", "rdma", m, Kind.COUNTER, v, e, lab)
                                 for m, v, e, lab in rows)
    assert_frame_equal(saturation_rows(normalised), _saturation_rows_per_counter(normalised))
