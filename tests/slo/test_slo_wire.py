"""The gpuslo.sli record format: round trip, and a clear error for anything else."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuslo.pipeline.schema import empty_frame, encode
from gpuslo.slo.sli import PARTIAL_SCHEMA
from gpuslo.slo.wire import PartialsError, decode_partials, encode_partials


def partials() -> pl.DataFrame:
    return pl.DataFrame(
        {"partition": [0, 3], "slo": ["a", "b"], "scope": ["{}", '{"m":"x"}'],
         "minute": [datetime(2026, 1, 1, tzinfo=UTC)] * 2, "good": [1.0, 2.0],
         "total": [2.0, 2.0]},
        schema=PARTIAL_SCHEMA,
    )


def test_round_trip() -> None:
    assert_frame_equal(decode_partials(encode_partials(partials())), partials())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"XXXX\x01abc", "not a gpuslo partial-count frame"),
        (b"GSLP\x09abc", "version 9 is not supported"),
        (b"GSLP\x01abc", "truncated or corrupt"),
    ],
)
def test_bad_bytes_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(PartialsError, match=message):
        decode_partials(data)


def test_a_sample_frame_is_named_as_such() -> None:
    with pytest.raises(PartialsError, match="wrong topic"):
        decode_partials(encode(empty_frame()))


def test_encode_rejects_other_frames() -> None:
    with pytest.raises(PartialsError, match="missing columns"):
        encode_partials(pl.DataFrame({"x": [1]}))
