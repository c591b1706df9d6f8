"""RCA ranking on hand-built incidents: causes above symptoms, nearer above farther."""

from __future__ import annotations

import itertools
import json
import random
from datetime import datetime, timedelta

import polars as pl
import pytest
from anomaly_helpers import SCRAPE_S, T0, digest, digest_row, gpu_labels, uuid
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scorer import NODE as SCORER_NODE
from test_scorer import STEP_MIN, gpu_fleet

from gpuslo.anomaly.rca import (
    AlertRanking,
    Cause,
    DigestWindow,
    RcaAlert,
    causes_for_alerts,
    format_rca_annotation,
    rank_causes,
)
from gpuslo.anomaly.topology import Topology
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.windows import Severity

NODE, FAR = "node-3", "node-9"
POD = "inference/llama-0-abc"
FIRED = T0 + timedelta(minutes=30)


def topology() -> Topology:
    """A model served by one pod on node-3 (GPU 0); idle GPUs on node-3 and node-9."""
    pod = {"namespace": "inference", "pod": "llama-0-abc"}
    rows: list[tuple[object, ...]] = [
        (T0, NODE, "kvcache", "vllm:num_requests_waiting", "gauge", 1.0, "",
         {"model_name": "llama", "engine": "0", **pod}),
        (T0, NODE, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 1.0, "",
         gpu_labels(NODE, 0, container="vllm", **pod)),
        (T0, NODE, "storage", "node_disk_io_time_seconds_total", "counter", 1.0, "",
         {"device": "nvme0n1"}),
        (T0, FAR, "storage", "node_disk_io_time_seconds_total", "counter", 1.0, "",
         {"device": "nvme0n1"}),
    ]
    for node in (NODE, FAR):
        for g in range(1 if node == NODE else 0, 8):
            rows.append((T0, node, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 1.0, "",
                         gpu_labels(node, g)))
    return Topology.from_samples(frame_from_rows(rows))


def alert(**scope: str) -> RcaAlert:
    return RcaAlert("ttft", scope or {"model_name": "llama"}, "page", FIRED)


def at(minutes_before: int) -> object:
    return FIRED - timedelta(minutes=minutes_before)


def test_the_cause_outranks_the_symptom_it_explains() -> None:
    d = digest([
        # the replica's TTFT: a huge deviation, but a symptom
        digest_row(at(3), NODE, "pod", POD, "ttft", 40.0, role="symptom", onset=at(3),
                   value=2.5, baseline=0.2),
        digest_row(at(2), NODE, "pod", POD, "ttft", 45.0, role="symptom", onset=at(3)),
        # its GPU: hot and clock-throttled since earlier
        digest_row(at(5), NODE, "gpu", uuid(NODE, 0), "gpu_temperature", 12.0, onset=at(5),
                   value=88.0, baseline=61.0, peers=7, peer_value=47.0),
        digest_row(at(4), NODE, "gpu", uuid(NODE, 0), "gpu_clock_reasons", 9.0,
                   detector="event", onset=at(4), detail="reason 0x20"),
    ])
    causes = rank_causes(d, alert(), topology())
    assert [c.entity for c in causes[:2]] == [uuid(NODE, 0), POD]
    assert causes[0].kind == "cause" and causes[1].kind == "symptom"
    assert causes[0].node == NODE and causes[0].signal == "gpu_temperature"
    assert causes[0].onset == at(5)
    ev = causes[0].evidence
    assert ev.startswith(f"GPU 0 of {NODE} (GPU-node-3-00): ")
    assert "41.0 °C above its 7 peers" in ev and "clock-throttled (reason 0x20)" in ev
    assert ev.endswith(f"since {at(5):%H:%M}")  # type: ignore[str-format]


def test_nearer_the_alert_scope_ranks_first() -> None:
    rows = [digest_row(at(4), n, "gpu", uuid(n, 2), "gpu_temperature", 10.0, onset=at(4))
            for n in (FAR, NODE)]
    near = rank_causes(digest(rows), alert(model_name="llama"), topology())
    assert [c.entity for c in near] == [uuid(NODE, 2), uuid(FAR, 2)]
    far = rank_causes(digest(rows), alert(node=FAR), topology())
    assert [c.entity for c in far] == [uuid(FAR, 2), uuid(NODE, 2)]


def test_an_onset_after_the_alert_is_a_consequence() -> None:
    d = digest([
        digest_row(at(6), NODE, "disk", "nvme0n1", "disk_busy", 12.0, onset=at(6)),
        digest_row(FIRED + timedelta(minutes=4), NODE, "gpu", uuid(NODE, 0),
                   "gpu_temperature", 30.0, onset=FIRED + timedelta(minutes=4)),
    ])
    causes = rank_causes(d, alert(), topology())
    # the late row is outside the window a live ranker has; even when passed, it ranks lower
    assert [c.entity for c in causes] == ["nvme0n1"]
    later = RcaAlert("ttft", {"model_name": "llama"}, "page", FIRED + timedelta(minutes=2))
    causes = rank_causes(d, later, topology())
    assert [c.entity for c in causes] == ["nvme0n1", uuid(NODE, 0)]


def test_an_event_outranks_a_bigger_deviation_far_away() -> None:
    d = digest([
        digest_row(at(5), FAR, "disk", "nvme0n1", "disk_busy", 50.0, onset=at(5)),
        digest_row(at(5), NODE, "gpu", uuid(NODE, 4), "gpu_xid", 12.0, detector="event",
                   onset=at(5), detail="XID 79"),
    ])
    causes = rank_causes(d, alert(), topology())
    assert causes[0].entity == uuid(NODE, 4) and "XID 79" in causes[0].evidence


def test_what_every_gpu_of_a_node_does_is_the_nodes() -> None:
    d = digest([digest_row(at(5), FAR, "gpu", uuid(FAR, g), "gpu_temperature", 9.0 + g,
                           onset=at(5)) for g in range(8)])
    causes = rank_causes(d, alert(node=FAR), topology())
    assert causes[0].entity == FAR and causes[0].entity_kind == "node"
    assert "on 8 of 8 gpus" in causes[0].evidence


def test_the_annotation_is_the_top_three_one_line_each() -> None:
    d = digest([digest_row(at(5), NODE, "gpu", uuid(NODE, g), "gpu_temperature", 10.0 + g,
                           onset=at(5)) for g in (1, 2, 3, 4)])
    causes = rank_causes(d, alert(), topology())
    text = format_rca_annotation(causes)
    lines = text.split("\n")
    assert len(causes) == 4 and len(lines) == 3
    assert [ln[:3] for ln in lines] == ["1. ", "2. ", "3. "]
    assert all("[cause]" in ln and "GPU" in ln for ln in lines)


def test_a_cause_is_json_ready() -> None:
    d = digest([digest_row(at(5), NODE, "disk", "nvme0n1", "disk_busy", 8.0, onset=at(5))])
    (cause,) = rank_causes(d, alert(), topology())
    out = json.loads(json.dumps(cause.to_dict()))
    assert out["rank"] == 1 and out["entity"] == "nvme0n1" and out["node"] == NODE
    assert out["onset"] == at(5).isoformat()  # type: ignore[attr-defined]
    assert set(out) >= {"rank", "entity", "node", "signal", "kind", "score", "onset",
                        "baseline", "observed", "direction", "evidence"}
    with pytest.raises(AttributeError):
        cause.rank = 2  # type: ignore[misc]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([NODE, FAR]), st.integers(0, 7),
                          st.sampled_from(["gpu_temperature", "gpu_sm_clock", "gpu_power"]),
                          st.floats(-50, 50).filter(lambda z: abs(z) > 0.1),
                          st.integers(0, 40)),
                min_size=1, max_size=30),
       st.randoms(use_true_random=False))
def test_ranking_is_a_function_of_the_rows_not_their_order(
        spec: list[tuple[str, int, str, float, int]], rnd: random.Random) -> None:
    rows = [digest_row(at(m), n, "gpu", uuid(n, g), sig, z, onset=at(m),
                       direction="up" if z > 0 else "down") for n, g, sig, z, m in spec]
    topo = topology()
    first = rank_causes(digest(rows), alert(), topo)
    rnd.shuffle(rows)
    second = rank_causes(digest(rows), alert(), topo)
    assert first == second
    assert [c.rank for c in first] == list(range(1, len(first) + 1))
    assert all(a.score >= b.score >= 0 for a, b in itertools.pairwise(first))


def test_backtest_path_names_the_faulted_gpu() -> None:
    # The hand-built fleet of the scorer tests: GPU 3 heats up and slows at minute 20.
    rows = [r for i in range(32 * 60 // SCRAPE_S)
            for r in gpu_fleet(i, T0 + timedelta(seconds=i * SCRAPE_S))]
    samples = frame_from_rows(rows)
    fired = T0 + timedelta(minutes=STEP_MIN + 2)
    (causes,) = causes_for_alerts(samples, [RcaAlert("thermal", {"node": SCORER_NODE}, "page",
                                                     fired)])
    assert isinstance(causes[0], Cause)
    assert causes[0].entity == uuid(SCORER_NODE, 3) and causes[0].kind == "cause"
    assert causes[0].onset == T0 + timedelta(minutes=STEP_MIN)


def test_no_digests_no_causes() -> None:
    assert rank_causes(pl.DataFrame(schema=digest([]).schema), alert(), topology()) == []


def test_the_ranking_side_of_the_stream_ranks_what_two_scorers_published() -> None:
    # Two scorers (two nodes' partitions) publish digests and entity tables; the alerting
    # side ranks from what arrived, in any order, and a checkpoint restores it whole.
    a = ScorerStub(NODE, [digest_row(at(5), NODE, "gpu", uuid(NODE, 0), "gpu_temperature",
                                     12.0, onset=at(5))])
    b = ScorerStub(FAR, [digest_row(at(5), FAR, "disk", "nvme0n1", "disk_busy", 30.0,
                                    onset=at(5))])
    win = DigestWindow()
    for part in (b, a, a):
        win.add_entities(part.entities)
        win.add_digest(part.digest)
    causes = win.causes(alert())
    assert [c.entity for c in causes] == [uuid(NODE, 0), "nvme0n1"]
    assert causes == rank_causes(digest(a.rows + b.rows), alert(), topology())
    again = DigestWindow()
    again.restore(win.snapshot())
    assert again.causes(alert()) == causes
    labels = causes[0].export_labels()
    assert labels == {"cause_rank": "1", "cause_entity": uuid(NODE, 0), "cause_node": NODE,
                      "cause_signal": "gpu_temperature", "cause_kind": "cause"}


def test_the_window_forgets_digests_older_than_its_retention() -> None:
    win = DigestWindow(retention=timedelta(minutes=10))
    win.add_entities(topology().entity_table())
    win.add_digest(digest([digest_row(at(40), NODE, "disk", "nvme0n1", "disk_busy", 9.0)]))
    win.add_digest(digest([digest_row(at(5), NODE, "gpu", uuid(NODE, 1), "gpu_temperature",
                                      9.0)]))
    assert win.snapshot()["digests"].height == 1


class ScorerStub:
    """What one scorer publishes: its digest rows and its entity table."""

    def __init__(self, node: str, rows: list[dict[str, object]]) -> None:
        self.rows = rows
        self.digest = digest(rows)
        topo = topology()
        self.entities = topo.entity_table().filter(pl.col("node") == node)


def test_a_gpu_that_warms_with_more_work_is_load_not_a_fault() -> None:
    # GPU 1 got busier and warmer (no throttle reason); GPU 2 warmed as much while its
    # utilisation stayed put: the second is the one to look at.
    d = digest([
        digest_row(at(5), NODE, "gpu", uuid(NODE, 1), "gpu_temperature", 15.0, onset=at(5)),
        digest_row(at(5), NODE, "gpu", uuid(NODE, 1), "gpu_utilization", 12.0, onset=at(5),
                   role="context"),
        digest_row(at(5), NODE, "gpu", uuid(NODE, 2), "gpu_temperature", 12.0, onset=at(5)),
    ])
    causes = rank_causes(d, alert(), topology())
    assert [c.entity for c in causes] == [uuid(NODE, 2), uuid(NODE, 1)]
    # ... unless NVML says the busy one is throttled
    throttled = digest([*d.to_dicts(), digest_row(at(4), NODE, "gpu", uuid(NODE, 1),
                                                  "gpu_clock_reasons", 9.0, detector="event",
                                                  onset=at(4), detail="reason 0x20")])
    assert rank_causes(throttled, alert(), topology())[0].entity == uuid(NODE, 1)


def _report(severity: str, fired: datetime | None, status: str = "firing") -> AlertReport:
    return AlertReport("ttft", {"model_name": "llama"}, Severity(severity), AlertStatus(status),
                       FIRED + timedelta(minutes=10), fired, fired, None, ())


def test_alert_ranking_ranks_fired_alerts_once_per_scope_and_keeps_a_final_ranking() -> None:
    win = DigestWindow()
    win.add_entities(topology().entity_table())
    disk = digest_row(at(10), NODE, "disk", "nvme0n1", "disk_busy", 9.0)
    win.add_digest(digest([disk]))
    ranking = AlertRanking(win)
    pending = _report("ticket", None, "pending")
    page = _report("page", FIRED)
    key = ("ttft", cv.scope_key({"model_name": "llama"}))
    # Not final yet (the minutes after the firing time have not arrived): ranked anew as
    # digests come in.
    first = ranking.causes([pending, page], FIRED + timedelta(minutes=1))
    assert set(first) == {key} and [c.entity for c in first[key]] == ["nvme0n1"]
    hot = digest_row(at(5), NODE, "gpu", uuid(NODE, 0), "gpu_temperature", 12.0)
    win.add_digest(digest([hot, digest_row(FIRED + timedelta(minutes=3), FAR, "disk",
                                           "nvme0n1", "disk_busy", 1.0)]))
    final = ranking.causes([page], FIRED + timedelta(minutes=5))[key]
    assert final[0].entity == uuid(NODE, 0)
    # Final now: later digests about the incident's window no longer change it.
    win.add_digest(digest([digest_row(at(3), NODE, "gpu", uuid(NODE, 1), "gpu_xid", 30.0,
                                      detector="event", detail="XID 79")]))
    assert tuple(win.causes(RcaAlert.from_report(page))) != final  # a fresh ranking differs
    assert ranking.causes([page], FIRED + timedelta(minutes=6))[key] == final
    assert ranking.causes([], FIRED + timedelta(minutes=7)) == {}  # forgotten once gone
