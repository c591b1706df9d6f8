"""The node scorer on hand-built scrapes: each detector fires where it should and only there."""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime, timedelta

import polars as pl
import pytest
from anomaly_helpers import (
    SCRAPE_S,
    T0,
    Row,
    counter,
    gauge,
    gpu_labels,
    run_scorer,
    uuid,
)
from polars.testing import assert_frame_equal

from gpuslo.anomaly.digest import DIGEST_SCHEMA, decode_digest, encode_digest
from gpuslo.anomaly.model import ModelSettings
from gpuslo.anomaly.scorer import NodeScorer, ScorerSettings
from gpuslo.anomaly.topology import Topology
from gpuslo.pipeline.schema import frame_from_rows

NODE = "node-1"
STEP_MIN, XID_MIN, GONE_MIN = 20, 22, 25


def _minute(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


def gpu_fleet(i: int, ts: datetime) -> Iterable[Row]:
    """8 GPUs; GPU 3 heats up and slows at minute 20, GPU 5 raises XID 79 at 22, GPU 7
    disappears at 25; GPU 6's memory has always run 40 °C hotter than its peers'."""
    minute = i * SCRAPE_S // 60
    for g in range(8):
        if g == 7 and minute >= GONE_MIN:
            continue
        lab = gpu_labels(NODE, g)
        wiggle = ((i * 7 + g * 3) % 5) * 0.5  # deterministic noise, IQR about 1 °C
        temp = 60.0 + wiggle + (30.0 if g == 3 and minute >= STEP_MIN else 0.0)
        clock = 1980.0 - (480.0 if g == 3 and minute >= STEP_MIN else 0.0)
        xid = 79.0 if g == 5 and minute >= XID_MIN else 0.0
        mem = 65.0 + wiggle + (40.0 if g == 6 else 0.0)
        yield gauge(NODE, "DCGM_FI_DEV_GPU_TEMP", temp, lab, ts)
        yield gauge(NODE, "DCGM_FI_DEV_SM_CLOCK", clock, lab, ts)
        yield gauge(NODE, "DCGM_FI_DEV_XID_ERRORS", xid, {**lab, "err_code": str(int(xid))}, ts)
        yield gauge(NODE, "DCGM_FI_DEV_MEMORY_TEMP", mem, lab, ts)


@pytest.fixture(scope="module")
def gpus() -> tuple[NodeScorer, pl.DataFrame]:
    return run_scorer(gpu_fleet, 32)


def rows(d: pl.DataFrame, entity: str, signal: str | None = None,
         detector: str | None = None) -> pl.DataFrame:
    out = d.filter(pl.col("entity") == entity)
    if signal is not None:
        out = out.filter(pl.col("signal") == signal)
    if detector is not None:
        out = out.filter(pl.col("detector") == detector)
    return out


def test_a_step_up_is_a_deviation_up_with_its_onset(gpus: tuple[NodeScorer, pl.DataFrame]) -> None:
    _, d = gpus
    hot = rows(d, uuid(NODE, 3), "gpu_temperature", "baseline")
    assert hot.height >= 5
    assert set(hot["direction"]) == {"up"}
    assert hot["onset"].min() == _minute(STEP_MIN)
    assert hot["z"].min() >= 4.0
    first = hot.sort("minute").row(0, named=True)
    assert first["baseline"] == pytest.approx(61.0, abs=1.5) and first["value"] >= 89.0


def test_a_step_down_is_a_deviation_down(gpus: tuple[NodeScorer, pl.DataFrame]) -> None:
    _, d = gpus
    slow = rows(d, uuid(NODE, 3), "gpu_sm_clock", "baseline")
    assert slow.height >= 5 and set(slow["direction"]) == {"down"}
    assert slow["onset"].min() == _minute(STEP_MIN)


def test_healthy_gpus_raise_nothing(gpus: tuple[NodeScorer, pl.DataFrame]) -> None:
    _, d = gpus
    for g in (0, 1, 2, 4):
        assert rows(d, uuid(NODE, g)).height == 0, rows(d, uuid(NODE, g))


def test_nothing_is_scored_before_a_baseline_exists(gpus: tuple[NodeScorer,
                                                                pl.DataFrame]) -> None:
    _, d = gpus
    early = d.filter((pl.col("minute") < _minute(8)) & (pl.col("detector") == "baseline"))
    assert early.height == 0


def test_an_xid_change_is_an_event_with_its_code(gpus: tuple[NodeScorer, pl.DataFrame]) -> None:
    _, d = gpus
    ev = rows(d, uuid(NODE, 5), "gpu_xid", "event")
    assert ev.height == 1  # a change, not a state: the steady 79 afterwards is no new error
    assert ev["minute"][0] == _minute(XID_MIN) and ev["detail"][0] == "XID 79"
    assert ev["role"][0] == "cause"


def test_a_vanished_gpu_is_reported_in_the_minute_it_went(
        gpus: tuple[NodeScorer, pl.DataFrame]) -> None:
    # Its last samples are at 10:24:30; the exporter answers without it at 10:25:00,
    # which the scorer has seen when it closes minute 10:24 (30 s of lateness): the
    # vanishing is dated to the minute of its last sample, not a minute later.
    _, d = gpus
    gone = rows(d, uuid(NODE, 7), "vanished", "vanished")
    assert gone.height >= 3
    assert gone["minute"].min() == _minute(GONE_MIN - 1)
    assert gone["onset"].min() == _minute(GONE_MIN - 1)


def test_a_peer_outlier_is_reported_without_any_change_of_its_own(
        gpus: tuple[NodeScorer, pl.DataFrame]) -> None:
    _, d = gpus
    peer = rows(d, uuid(NODE, 6), "gpu_memory_temperature")
    assert peer.height > 0 and set(peer["detector"]) == {"peer"}
    r = peer.row(0, named=True)
    assert r["peers"] == 7  # the other GPUs of its node
    assert r["value"] - r["peer_value"] == pytest.approx(40.0, abs=1.5)
    assert r["onset"] <= _minute(1)  # an outlier from the start: not a new change


def test_the_topology_knows_each_gpu_and_its_node(gpus: tuple[NodeScorer,
                                                              pl.DataFrame]) -> None:
    scorer, _ = gpus
    topo = Topology.from_entity_rows([scorer.entities()])
    assert {k for k in topo.entities if k[0] == "gpu"} == {("gpu", "", uuid(NODE, g))
                                                           for g in range(8)}
    assert topo.gpu_index(("gpu", "", uuid(NODE, 3))) == "3"
    assert topo.distances([("node", NODE, NODE)])[("gpu", "", uuid(NODE, 3))] == 1


# -- counters -------------------------------------------------------------------------------

ERR_MIN = 15
WRAP = 2.0**32


def port_fleet(i: int, ts: datetime) -> Iterable[Row]:
    """4 IB ports: port 0 starts counting symbol errors at minute 15, port 2's symbol error
    counter is pegged at its 16-bit maximum from then on; every port's out-of-buffer
    counter (32 bits) wraps; a vLLM server restarts (counters reset) at minute 18."""
    minute = i * SCRAPE_S // 60
    for p in range(4):
        lab = {"device": f"mlx5_{p}", "port": "1"}
        t = i * SCRAPE_S
        yield counter(NODE, "node_infiniband_port_data_transmitted_bytes_total",
                      1e9 * t * (1.0 + 0.01 * ((i + p) % 3)), lab, ts)
        sym = 0.0
        if minute >= ERR_MIN and p == 0:
            sym = 40.0 * (i - ERR_MIN * 2 + 1)
        if minute >= ERR_MIN and p == 2:
            sym = 65535.0
        yield counter(NODE, "node_infiniband_symbol_error_total", sym, lab, ts)
        yield counter(NODE, "node_infiniband_out_of_buffer_drops_total",
                      (WRAP - 50_000.0 + 1000.0 * t) % WRAP, lab, ts)
    served = 600.0 * (i if minute < 18 else i - 36)  # 20 requests/s, from zero after restart
    yield counter(NODE, "vllm:prompt_tokens_total", served,
                  {"model_name": "m", "engine": "0", "namespace": "ns", "pod": "m-0"}, ts,
                  source="kvcache")


@pytest.fixture(scope="module")
def ports() -> pl.DataFrame:
    return run_scorer(port_fleet, 24)[1]


def test_a_normally_zero_error_counter_that_moves_is_an_event(ports: pl.DataFrame) -> None:
    ev = rows(ports, "mlx5_0/1", "port_symbol_errors", "event")
    assert ev.height >= 3 and ev["minute"].min() == _minute(ERR_MIN)
    assert "symbol errors in the minute" in ev["detail"][0]


def test_a_saturated_counter_is_an_event(ports: pl.DataFrame) -> None:
    ev = rows(ports, "mlx5_2/1", "port_symbol_errors", "event")
    assert ev.height >= 1
    assert any("saturated" in d for d in ev["detail"].drop_nulls())


def test_a_wrapping_counter_is_not_a_restart_and_keeps_its_rate(ports: pl.DataFrame) -> None:
    assert rows(ports, "mlx5_1/1").height == 0, rows(ports, "mlx5_1/1")
    assert ports.filter(pl.col("signal") == "counter_reset", pl.col("kind") == "port").height == 0


def test_a_counter_reset_is_a_restart_of_its_entity(ports: pl.DataFrame) -> None:
    reset = rows(ports, "ns/m-0", "counter_reset", "event")
    assert reset.height == 1 and reset["minute"][0] == _minute(18)
    assert reset["kind"][0] == "pod"


# -- stream properties ------------------------------------------------------------------------


def test_a_redelivered_batch_counts_once() -> None:
    once = run_scorer(port_fleet, 20)[1]

    def twice(i: int, ts: datetime) -> Iterable[Row]:
        batch = list(port_fleet(i, ts))
        return batch + batch

    again = run_scorer(twice, 20)[1]
    assert_frame_equal(once, again)


def test_snapshot_and_restore_continue_exactly() -> None:
    settings = ScorerSettings(model=ModelSettings(min_rows=10, refit_minutes=3))
    _, d_straight = run_scorer(gpu_fleet, 32, NodeScorer(settings, seed=3))
    first, d_first = run_scorer(gpu_fleet, 21, NodeScorer(settings, seed=3))
    snap = first.snapshot()
    # through the bytes a checkpoint would hold
    snap = {k: pl.read_ipc(_ipc(v)) for k, v in snap.items()}
    second = NodeScorer(settings, seed=3)
    second.restore(snap)

    def rest(i: int, ts: datetime) -> Iterable[Row]:
        return gpu_fleet(i + 42, ts)

    _, d_second = run_scorer(rest, 11, second, start=T0 + timedelta(minutes=21))
    resumed = pl.concat([d_first, d_second])
    cols = [c for c in DIGEST_SCHEMA.names() if c != "z"]
    assert_frame_equal(resumed.select(cols), d_straight.select(cols))
    assert resumed["z"].to_list() == pytest.approx(d_straight["z"].to_list(), rel=1e-9)


def _ipc(frame: pl.DataFrame) -> io.BytesIO:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    buf.seek(0)
    return buf


def test_same_seed_same_digest_model_included() -> None:
    settings = ScorerSettings(model=ModelSettings(min_rows=10, refit_minutes=3))
    a = run_scorer(gpu_fleet, 32, NodeScorer(settings, seed=5))[1]
    b = run_scorer(gpu_fleet, 32, NodeScorer(settings, seed=5))[1]
    assert a.filter(pl.col("detector") == "model").height > 0
    assert_frame_equal(a, b)


def test_late_samples_of_a_closed_minute_are_dropped_and_counted() -> None:
    scorer, _ = run_scorer(port_fleet, 12)
    late = frame_from_rows([counter(NODE, "node_infiniband_symbol_error_total", 5.0,
                                    {"device": "mlx5_9", "port": "1"}, T0)])
    scorer.observe(late)
    assert scorer.late_dropped >= 1


def test_a_digest_round_trips_through_its_wire_format(ports: pl.DataFrame) -> None:
    assert_frame_equal(decode_digest(encode_digest(ports)), ports)
