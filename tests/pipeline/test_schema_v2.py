"""Wire version 2: each series once, strings dictionary-encoded, the same frame back.

Version-1 records (what every earlier build wrote) must still decode: they are built
here exactly as the version-1 encoder built them, ``MAGIC + 1 + Arrow IPC stream of the
frame``, without going through the new encoder.
"""

from __future__ import annotations

import io

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.pipeline.kafka.client import split_blocks
from gpuslo.pipeline.schema import (
    MAGIC,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    Block,
    FrameBuilder,
    Kind,
    SchemaError,
    SeriesCache,
    decode,
    empty_frame,
    encode,
    encode_blocks,
    frame_from_rows,
)

text = st.text(max_size=10)
labels = st.dictionaries(st.text(min_size=1, max_size=6), text, max_size=4)
series = st.tuples(text, st.sampled_from(["dcgm", "kubelet", "gpuslo"]), text,
                   st.sampled_from(list(Kind)), text, labels)
values = st.floats(allow_nan=True, allow_infinity=True)
stamps = st.integers(min_value=0, max_value=4_102_444_800_000)


def scrape(rows: list[tuple[object, ...]], ts: list[int], vals: list[float]) -> pl.DataFrame:
    """One scrape of ``rows`` (node, source, metric, kind, entity, labels) at new values."""
    return frame_from_rows((t, n, s, m, k, v, e, lab)
                           for (n, s, m, k, e, lab), t, v in zip(rows, ts, vals, strict=True))


def v1_record(frame: pl.DataFrame) -> bytes:
    """A record as the version-1 encoder wrote it."""
    buf = io.BytesIO()
    buf.write(MAGIC + bytes([1]))
    frame.write_ipc_stream(buf, compression="uncompressed")
    return buf.getvalue()


@st.composite
def blocks_of_scrapes(draw: st.DrawFn) -> list[Block]:
    """Several targets scraped several times; a target's scrapes share a series key
    (what the scrape engine promises), and some blocks have no key at all."""
    out: list[Block] = []
    targets = draw(st.lists(st.lists(series, max_size=6), min_size=1, max_size=3))
    for _ in range(draw(st.integers(1, 3))):
        for t, rows in enumerate(targets):
            n = len(rows)
            frame = scrape(rows, draw(st.lists(stamps, min_size=n, max_size=n)),
                           draw(st.lists(values, min_size=n, max_size=n)))
            out.append(Block(frame, draw(st.sampled_from([("target", t), None]))))
    return out


@settings(max_examples=120, deadline=None)
@given(blocks_of_scrapes(), st.sampled_from([1, 2]))
def test_blocks_decode_to_their_frames_one_after_the_other(blocks: list[Block],
                                                           version: int) -> None:
    back = decode(encode_blocks(blocks, version=version))
    assert back.schema == SAMPLE_SCHEMA
    assert_frame_equal(back, pl.concat([b.frame for b in blocks]))


@settings(max_examples=80, deadline=None)
@given(blocks_of_scrapes(), blocks_of_scrapes())
def test_a_producers_records_decode_alike_with_its_series_cache(first: list[Block],
                                                                other: list[Block]) -> None:
    """A producer keeps each record's encoded series by its keys: records that repeat
    the keys with new values, in another order or beside other keys decode exactly."""
    # Every block keyed (a keyless one with a key of its own), as the scrape engine's are.
    first = [Block(b.frame, b.series_key or ("alone", i)) for i, b in enumerate(first)]
    other = [Block(b.frame, ("other", b.series_key or ("alone", i)))
             for i, b in enumerate(other)]
    moved = (pl.col("value") * 2 + 1, pl.col("ts") + pl.duration(milliseconds=1))
    later = [Block(b.frame.with_columns(*moved), b.series_key) for b in first]
    cache = SeriesCache()
    for blocks in (first, later, other, first + other, other[::-1], later, first):
        back = decode(encode_blocks(blocks, cache=cache))
        assert_frame_equal(back, pl.concat([b.frame for b in blocks]))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(stamps, text, st.sampled_from(["dcgm", "rdma"]), text,
                          st.sampled_from(list(Kind)), values, text, labels), max_size=30))
def test_version_1_records_still_decode(rows: list[tuple[object, ...]]) -> None:
    frame = frame_from_rows(rows)
    assert_frame_equal(decode(v1_record(frame)), frame)
    assert_frame_equal(decode(encode(frame, version=1)), frame)
    assert encode(frame, version=1) == v1_record(frame)  # what older consumers read


def test_version_2_stores_a_repeated_target_once_with_dictionary_encoded_strings() -> None:
    rows = [("node-0", "dcgm", f"DCGM_FI_{m}", Kind.GAUGE, f"GPU-{g}",
             {"gpu": str(g), "UUID": f"GPU-{g}", "modelName": "NVIDIA H100 80GB HBM3"})
            for m in ("A", "B", "C") for g in range(4)]
    scrapes = [scrape(rows, [1_000 * k] * len(rows), [float(k + i) for i in range(len(rows))])
               for k in range(5)]
    data = encode_blocks([Block(f, "dcgm:node-0") for f in scrapes])
    body = pa.ipc.open_stream(data[5:]).read_all()
    assert body.column_names == ["series", "ts", "value"]
    dictionary = body.column("series").chunk(0).dictionary
    assert len(dictionary) == len(rows)  # five scrapes, one copy of their series
    for name in ("node", "source", "metric", "entity"):
        assert pa.types.is_dictionary(dictionary.type.field(name).type), name
    pair = dictionary.type.field("labels").type.value_type
    assert all(pa.types.is_dictionary(pair.field(i).type) for i in range(2))
    assert len(data) < len(encode(pl.concat(scrapes), version=1)) / 3
    assert_frame_equal(decode(data), pl.concat(scrapes))
    # Without keys every row is its own series, and the frame still comes back.
    assert_frame_equal(decode(encode(pl.concat(scrapes))), pl.concat(scrapes))


def test_a_key_shared_by_blocks_of_different_lengths_is_refused() -> None:
    a = frame_from_rows([(0, "n", "s", "m", "gauge", 1.0, "", {})])
    with pytest.raises(SchemaError, match="cannot hold"):
        encode_blocks([Block(a, "k"), Block(pl.concat([a, a]), "k")])


def test_a_cached_key_still_has_its_numbers_columns_checked() -> None:
    """A block whose series the cache holds skips the series columns' check, never the
    columns the encoder takes from it: a wrong or missing one is named."""
    a = frame_from_rows([(0, "n", "s", "m", "gauge", 1.0, "", {})])
    cache = SeriesCache()
    assert_frame_equal(decode(encode_blocks([Block(a, "k")], cache=cache)), a)
    assert cache.holds("k", 1) and not cache.holds("k", 2)
    for bad, named in ((a.with_columns(pl.col("value").cast(pl.Int64)), "value"),
                       (a.with_columns(pl.col("ts").cast(pl.Datetime("ms"))), "ts"),
                       (a.drop("value"), "value"),
                       (a.select(list(reversed(a.columns))).drop("ts"), "ts")):
        with pytest.raises(SchemaError, match=named):
            encode_blocks([Block(bad, "k")], cache=cache)
    # Columns in another order are fine: the encoder reads them by name.
    again = a.with_columns(pl.lit(2.0).alias("value"))
    shuffled = again.select(list(reversed(a.columns)))
    assert_frame_equal(decode(encode_blocks([Block(shuffled, "k")], cache=cache)), again)


def test_empty_and_keyless_frames_round_trip() -> None:
    assert_frame_equal(decode(encode(empty_frame())), empty_frame())
    assert_frame_equal(decode(encode_blocks([])), empty_frame())
    assert SCHEMA_VERSION == 2 and encode(empty_frame())[4] == 2


def test_a_version_2_body_of_another_shape_is_named() -> None:
    other = pa.table({"ts": [1], "oops": ["x"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_table(other)
    with pytest.raises(SchemaError, match="not a version-2 sample frame: columns"):
        decode(MAGIC + bytes([2]) + sink.getvalue().to_pybytes())
    good = encode(frame_from_rows([(0, "n", "s", "m", "gauge", 1.0, "e", {"a": "b"})] * 20))
    with pytest.raises(SchemaError, match="truncated or corrupt"):
        decode(good[: len(good) // 2])


@settings(max_examples=40, deadline=None)
@given(blocks_of_scrapes(), st.integers(min_value=2_000, max_value=20_000))
def test_split_blocks_keeps_every_row_in_order_under_the_limit(blocks: list[Block],
                                                                max_bytes: int) -> None:
    try:
        pieces = split_blocks(blocks, max_bytes)
    except SchemaError:
        return  # one row alone is larger than the limit
    assert all(len(p) <= max_bytes for p in pieces)
    assert_frame_equal(pl.concat([decode(p) for p in pieces]),
                       pl.concat([b.frame for b in blocks]))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["m1", "m2"]), st.sampled_from(list(Kind)), values,
                          text, st.integers(0, 3), st.none() | stamps), max_size=40),
       st.lists(labels, min_size=4, max_size=4))
def test_frame_builder_equals_frame_from_rows(rows: list[tuple[object, ...]],
                                              label_sets: list[dict[str, str]]) -> None:
    builder = FrameBuilder("node-1", "kubelet", 1_767_225_600_123)
    expected = []
    for metric, kind, value, entity, which, ts in rows:
        assert isinstance(which, int)
        builder.add(str(metric), str(kind), float(value), str(entity),  # type: ignore[arg-type]
                    label_sets[which], ts_ms=ts)  # type: ignore[arg-type]
        expected.append((1_767_225_600_123 if ts is None else ts, "node-1", "kubelet", metric,
                         kind, value, entity, label_sets[which]))
    assert len(builder) == len(rows)
    assert_frame_equal(builder.frame(), frame_from_rows(expected))
