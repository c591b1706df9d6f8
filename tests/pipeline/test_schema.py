"""The sample frame contract: exact round trips and clear errors."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.pipeline.schema import (
    MAGIC,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    Kind,
    SchemaError,
    decode,
    empty_frame,
    encode,
    frame_from_rows,
    label,
    split,
)

text = st.text(max_size=12)
labels = st.dictionaries(st.text(min_size=1, max_size=8), text, max_size=4)
rows = st.tuples(
    st.integers(min_value=0, max_value=4_102_444_800_000),  # epoch ms up to 2100
    text,
    st.sampled_from(["dcgm", "rdma", "kubelet", "storage", "kvcache", "prometheus"]),
    text,
    st.sampled_from(list(Kind)),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    labels,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, max_size=40))
def test_encode_decode_round_trip_is_exact(sample_rows: list[tuple[object, ...]]) -> None:
    frame = frame_from_rows(sample_rows)
    back = decode(encode(frame))
    assert back.schema == SAMPLE_SCHEMA
    assert_frame_equal(back, frame)


def test_empty_frame_round_trips() -> None:
    assert_frame_equal(decode(encode(empty_frame())), empty_frame())


def test_labels_are_stored_sorted_and_readable_by_name() -> None:
    frame = frame_from_rows([(0, "n", "dcgm", "m", "gauge", 1.0, "e", {"z": "1", "a": "2"})])
    assert frame["labels"].to_list() == [[{"name": "a", "value": "2"}, {"name": "z", "value": "1"}]]
    assert frame.select(label("z"), label("missing").alias("x")).row(0) == ("1", None)


def test_timestamps_are_utc_milliseconds() -> None:
    frame = frame_from_rows([(1_700_000_000_123, "n", "s", "m", "gauge", 1.0, "", {})])
    assert frame["ts"][0] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def good_bytes() -> bytes:
    return encode(frame_from_rows([(0, "n", "dcgm", "m", "gauge", 1.0, "e", {"a": "b"})] * 50))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"GSL", "too short"),
        (b"garbage bytes that are not arrow", "not a gpuslo sample frame"),
        (MAGIC + bytes([SCHEMA_VERSION + 1]) + b"\x00" * 40,
         f"version {SCHEMA_VERSION + 1} is not supported"),
        (good_bytes()[:60], "truncated or corrupt"),
        (MAGIC + bytes([SCHEMA_VERSION]) + b"\xff" * 100, "truncated or corrupt"),
    ],
    ids=["empty", "short", "garbage", "future-version", "truncated", "corrupt-body"],
)
def test_decode_rejects_bad_bytes_with_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        decode(data)


def test_decode_rejects_a_valid_arrow_frame_with_other_columns() -> None:
    other = pl.DataFrame({"ts": [1], "oops": ["x"]})
    raw = MAGIC + bytes([1]) + other.write_ipc_stream(None).getvalue()  # a version-1 body
    with pytest.raises(SchemaError, match=r"missing column 'node'.*unexpected columns"):
        decode(raw)


def test_encode_rejects_a_frame_with_a_wrong_type() -> None:
    frame = frame_from_rows([(0, "n", "s", "m", "gauge", 1.0, "", {})])
    with pytest.raises(SchemaError, match="column 'value' is String"):
        encode(frame.with_columns(pl.col("value").cast(pl.String)))


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=50))
def test_split_keeps_every_row_in_order(n: int, max_rows: int) -> None:
    frame = frame_from_rows([(i, "n", "s", "m", "gauge", float(i), "", {}) for i in range(n)])
    pieces = split(frame, max_rows)
    assert all(p.height <= max_rows for p in pieces)
    assert_frame_equal(pl.concat(pieces), frame)
