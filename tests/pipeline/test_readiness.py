"""Readiness: named checks, ready only when every registered one is ok."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gpuslo.pipeline.readiness import Readiness


def test_nothing_registered_is_ready() -> None:
    assert Readiness().ready
    assert Readiness().to_json() == {"ready": True, "checks": {}}


def test_a_pending_check_holds_readiness_until_marked_ok() -> None:
    clock = iter([10.0, 11.0, 12.0, 13.0])
    r = Readiness(clock=lambda: next(clock))
    r.expect("kafka", "connecting to kafka-0:9092")
    r.expect("targets", "listing targets")
    assert not r.ready and r.pending() == ["kafka", "targets"]
    r.ok("kafka", "producer connected")
    assert not r.ready and r.pending() == ["targets"]
    r.ok("targets", "3 target(s)")
    assert r.ready
    doc = r.to_json()
    assert doc["ready"] is True
    assert doc["checks"]["kafka"] == {"ok": True, "reason": "producer connected",
                                      "changed_at": 12.0}
    json.dumps(doc)  # what /readyz serves


def test_a_check_can_go_back_to_not_ready() -> None:
    r = Readiness()
    r.ok("lifecycle", "running")
    r.fail("lifecycle", "draining")
    assert not r.ready and r.checks()["lifecycle"].reason == "draining"


def test_changed_at_moves_only_when_ok_changes() -> None:
    times = iter([1.0, 2.0, 3.0])
    r = Readiness(clock=lambda: next(times))
    r.fail("kafka", "first error")  # 1.0
    r.fail("kafka", "second error")  # same state: keeps 1.0
    assert r.checks()["kafka"].changed_at == 1.0 and r.checks()["kafka"].reason == "second error"
    r.ok("kafka")  # 2.0
    assert r.checks()["kafka"].changed_at == 2.0


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.booleans()), max_size=30))
def test_ready_is_exactly_every_latest_mark_ok(marks: list[tuple[str, bool]]) -> None:
    r = Readiness()
    latest: dict[str, bool] = {}
    for name, ok in marks:
        r.mark(name, ok, "why")
        latest[name] = ok
    assert r.ready == all(latest.values())
    assert set(r.pending()) == {n for n, ok in latest.items() if not ok}
    assert list(r.checks()) == list(dict.fromkeys(n for n, _ in marks))
