"""The checkpoint store: atomic replacement, round trip, and refusing a damaged file."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuslo.pipeline.stages.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    _encode,
)
from gpuslo.pipeline.stages.slo import alert_states_from_json, alert_states_to_json


def test_round_trip_and_replace(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.read("stage1.g.topic", 3) is None
    a = pl.DataFrame({"x": [1, 2]})
    store.write("stage1.g.topic", 3, 10, {"a": a, "empty": a.head(0)}, {"k": [1]})
    store.write("stage1.g.topic", 3, 12, {"a": a.head(1)})
    ckpt = store.read("stage1.g.topic", 3)
    assert ckpt is not None and ckpt.next_offset == 12 and ckpt.meta == {}
    assert_frame_equal(ckpt.frames["a"], a.head(1))
    assert [p.name for p in store.path("stage1.g.topic", 3).parent.iterdir()] == ["p3.ckpt"]


def test_the_last_record_fingerprint_round_trips_and_is_optional(tmp_path: Path) -> None:
    """A stage resumes at the record a checkpoint covers last and checks it by this
    fingerprint (a 64-bit digest); checkpoints written without one read as None."""
    store = CheckpointStore(tmp_path)
    store.write("s", 0, 7, {}, last_record=2**64 - 1)
    ckpt = store.read("s", 0)
    assert ckpt is not None and ckpt.next_offset == 7 and ckpt.last_record == 2**64 - 1
    store.write("s", 0, 8, {})
    ckpt = store.read("s", 0)
    assert ckpt is not None and ckpt.last_record is None
    # A header whose fingerprint is not an integer is a damaged file, not "no fingerprint".
    store.path("s", 0).write_bytes(_encode(Checkpoint(8, {}, {}, "x")))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="last_record 'x' is not a record fingerprint"):
        store.read("s", 0)


def test_damaged_checkpoint_is_an_error_not_an_empty_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write("s", 0, 5, {"a": pl.DataFrame({"x": [1]})})
    path = store.path("s", 0)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        store.read("s", 0)
    path.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a gpuslo checkpoint"):
        store.read("s", 0)


def test_alert_states_survive_json() -> None:
    from datetime import UTC, datetime

    from gpuslo.slo.alerting import AlertState, AlertStatus
    from gpuslo.slo.windows import Severity

    t = datetime(2026, 1, 1, tzinfo=UTC)
    states = {("slo", "{}", Severity.PAGE): AlertState(AlertStatus.FIRING, t, t, None)}
    assert alert_states_from_json(alert_states_to_json(states)) == states
