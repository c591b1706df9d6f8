"""The digest's contract: fixed schema, self-describing bytes, mergeable."""

from __future__ import annotations

import polars as pl
import pytest
from anomaly_helpers import T0, digest, digest_row
from polars.testing import assert_frame_equal

from gpuslo.anomaly.digest import (
    DigestError,
    decode_digest,
    decode_entities,
    encode_digest,
    encode_entities,
    merge_digests,
    validate_digest,
)
from gpuslo.anomaly.topology import ENTITY_SCHEMA
from gpuslo.pipeline.schema import empty_frame, encode


def test_bytes_round_trip() -> None:
    d = digest([digest_row(T0, "n", "gpu", "GPU-1", "gpu_temperature", 9.0, detail="x")])
    assert_frame_equal(decode_digest(encode_digest(d)), d)


def test_a_sample_frame_is_not_a_digest() -> None:
    with pytest.raises(DigestError, match="a sample frame, not a digest"):
        decode_digest(encode(empty_frame()))
    with pytest.raises(DigestError, match="too short"):
        decode_digest(b"GS")


def test_a_frame_with_a_wrong_column_is_refused_by_name() -> None:
    d = digest([digest_row(T0, "n", "gpu", "GPU-1", "gpu_temperature", 9.0)])
    with pytest.raises(DigestError, match="column 'z'"):
        validate_digest(d.with_columns(pl.col("z").cast(pl.Int64)))
    with pytest.raises(DigestError, match="missing column 'onset'"):
        validate_digest(d.drop("onset"))


def test_merging_drops_redelivered_rows_and_keeps_every_scorer() -> None:
    a = digest([digest_row(T0, "n1", "gpu", "GPU-1", "gpu_temperature", 9.0)])
    b = digest([digest_row(T0, "n2", "port", "mlx5_0/1", "port_rcv_errors", 7.0)])
    merged = merge_digests([a, b, a])
    assert merged.height == 2
    assert set(merged["node"]) == {"n1", "n2"}


def test_an_entity_table_round_trips_and_is_not_taken_for_a_digest() -> None:
    table = pl.DataFrame([{"kind": "gpu", "node": "n", "entity": "GPU-1", "model": None,
                           "pod": "ns/p", "gpu_index": "0", "job": None, "replica": False,
                           "node_alias": None}], schema=ENTITY_SCHEMA)
    assert_frame_equal(decode_entities(encode_entities(table)), table)
    with pytest.raises(DigestError, match="an entity table, not a digest"):
        decode_digest(encode_entities(table))
