"""The sample frame: the one contract every stage of gpuslo shares.

A scrape becomes one long-format frame (one row per sample) and one Kafka
record.  Upstream metric names and labels are kept exactly as the source spells
them; normalised signals are added by declared mappings elsewhere, never by
renaming here.

On the wire a frame is ``MAGIC + version byte + Arrow IPC stream``.  The prefix
lets :func:`decode` tell "not ours", "ours but from a future version" and "ours
but truncated" apart with a message that says which, instead of a raw Arrow
flatbuffer error.

Two versions are read; :func:`encode` writes version 2 unless told otherwise.

* Version 1: the frame itself.  Every row repeats its metric name, entity and
  every label name and value, with 64-bit string offsets between them, which
  compression cannot take out: a record of a hundred samples was mostly labels.
* Version 2: the distinct series once, the samples as references to them.  One
  column ``series`` is dictionary-encoded: its dictionary is a struct of the six
  series columns (``node``, ``source``, ``metric``, ``kind``, ``entity``,
  ``labels``), in which every string column and each label's name and value are
  themselves dictionary-encoded; beside it ``ts`` and ``value``.  A record of
  several scrapes of one target stores that target's series once when the
  writer knows they did not change (:class:`Block`); otherwise each row is its
  own series, which still costs less than version 1 after compression.  It
  decodes to exactly the frame that was encoded.

A producer writes version 1 (``kafka.wire_version: 1``) while consumers of an
older build still read the topic; this build reads both.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from polars.exceptions import PanicException

from gpuslo.pipeline.errors import InputError

SCHEMA_VERSION = 2  # what encode writes by default
READ_VERSIONS = (1, 2)
MAGIC = b"GSLO"


class Kind(StrEnum):
    """What a sample's value means; drives counter-increase and histogram logic downstream."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM_BUCKET = "histogram_bucket"
    HISTOGRAM_SUM = "histogram_sum"
    HISTOGRAM_COUNT = "histogram_count"
    SUMMARY_QUANTILE = "summary_quantile"
    SUMMARY_SUM = "summary_sum"
    SUMMARY_COUNT = "summary_count"
    UNTYPED = "untyped"
    # A point event carried as a sample (e.g. an XID error code that changed).
    EVENT = "event"


KIND_DTYPE = pl.Enum([k.value for k in Kind])
LABEL_DTYPE = pl.Struct({"name": pl.String(), "value": pl.String()})
LABELS_DTYPE = pl.List(LABEL_DTYPE)

SAMPLE_SCHEMA: pl.Schema = pl.Schema(
    {
        "ts": pl.Datetime("ms", "UTC"),
        "node": pl.String(),
        "source": pl.String(),
        "metric": pl.String(),
        "kind": KIND_DTYPE,
        "value": pl.Float64(),
        "entity": pl.String(),
        "labels": LABELS_DTYPE,
    }
)
COLUMNS: tuple[str, ...] = tuple(SAMPLE_SCHEMA.names())
_COLUMN_LIST = list(COLUMNS)
_TS_AT = COLUMNS.index("ts")
_VALUE_AT = COLUMNS.index("value")
_DTYPES = list(SAMPLE_SCHEMA.dtypes())
_TS = SAMPLE_SCHEMA["ts"]

# Label names that identify a series as a whole, in the order used for keys.
SERIES_KEY: tuple[str, ...] = ("node", "source", "metric", "entity", "labels")
# The columns a version-2 record stores once per series (everything but ts and value).
SERIES_COLUMNS: tuple[str, ...] = ("node", "source", "metric", "kind", "entity", "labels")


class SchemaError(InputError):
    """Bytes or a frame that are not a valid sample frame of a known version."""


def empty_frame() -> pl.DataFrame:
    """A zero-row frame with the exact sample schema."""
    # A copy of one made once: building a frame from a schema costs some 300 µs, and
    # mappings return an empty frame on most scrapes (no XID event, no saturated counter).
    return _EMPTY_FRAME.clone()


_EMPTY_FRAME = pl.DataFrame(schema=SAMPLE_SCHEMA)


def canonical_labels(labels: Mapping[str, str]) -> list[dict[str, str]]:
    """Labels as the frame stores them: a list of {name, value} sorted by name.

    Sorting makes two scrapes of the same series produce equal label lists, so
    the list itself can be part of a series key.
    """
    return [{"name": k, "value": labels[k]} for k in sorted(labels)]


def frame_from_rows(rows: Iterable[Sequence[object]]) -> pl.DataFrame:
    """Build a sample frame from ``(ts, node, source, metric, kind, value, entity, labels)`` rows.

    ``ts`` may be a ``datetime`` or epoch milliseconds; ``labels`` a mapping.
    Meant for small frames (tests, events); parsers build columns directly.
    """
    cols: dict[str, list[object]] = {c: [] for c in COLUMNS}
    for row in rows:
        ts, node, source, metric, kind, value, entity, labels = row
        if isinstance(ts, (int, float)):
            ts = datetime.fromtimestamp(float(ts) / 1000.0, tz=UTC)
        cols["ts"].append(ts)
        cols["node"].append(node)
        cols["source"].append(source)
        cols["metric"].append(metric)
        cols["kind"].append(str(kind))
        cols["value"].append(value)
        cols["entity"].append(entity)
        assert isinstance(labels, Mapping)
        cols["labels"].append(canonical_labels(labels))
    return pl.DataFrame(cols, schema=SAMPLE_SCHEMA)


class FrameBuilder:
    """A sample frame built column by column, for readers that produce rows in Python.

    ``frame_from_rows`` converts every row's labels from Python objects, the slow
    part of building a frame; here each distinct label set is converted once (when
    the frame is built) and the labels column is a gather of them.  Readers pass the
    same mapping for the rows of one entity (a pod's fields, a disk's counters),
    which is recognised by identity before its content is looked at.

    A reader that reads the same series scrape after scrape asks for :meth:`key`
    (everything but ``ts`` and ``value``) and, for a key it has seen, fills a kept
    frame with the new numbers (:meth:`numbers`) instead of building one.
    """

    def __init__(self, node: str, source: str, ts_ms: int) -> None:
        self.node, self.source, self.ts_ms = node, source, ts_ms
        self._ts: list[int] = []
        self._metric: list[str] = []
        self._kind: list[str] = []
        self._value: list[float] = []
        self._entity: list[str] = []
        self._label_index: list[int] = []
        self._sets: list[Mapping[str, str]] = []  # each distinct label set, first seen
        self._by_id: dict[int, int] = {}
        self._by_content: dict[tuple[tuple[str, str], ...], int] = {}
        self._held: list[Mapping[str, str]] = []  # keeps ids unique while building

    def __len__(self) -> int:
        return len(self._metric)

    def add(self, metric: str, kind: Kind | str, value: float, entity: str,
            labels: Mapping[str, str], ts_ms: int | None = None) -> None:
        """One row; ``ts_ms`` defaults to the builder's timestamp."""
        idx = self._by_id.get(id(labels))
        if idx is None:
            key = tuple(sorted(labels.items()))
            idx = self._by_content.get(key)
            if idx is None:
                idx = self._by_content[key] = len(self._sets)
                self._sets.append(labels)
            self._by_id[id(labels)] = idx
            self._held.append(labels)
        self._ts.append(self.ts_ms if ts_ms is None else ts_ms)
        self._metric.append(metric)
        self._kind.append(str(kind))
        self._value.append(value)
        self._entity.append(entity)
        self._label_index.append(idx)

    def key(self) -> Hashable:
        """Everything the frame holds but ``ts`` and ``value``: equal keys, equal series."""
        return (self.node, self.source, tuple(self._metric), tuple(self._kind),
                tuple(self._entity), tuple(self._label_index), tuple(self._by_content))

    def frame(self) -> pl.DataFrame:
        """The rows added so far, equal to ``frame_from_rows`` of the same rows."""
        n = len(self._metric)
        if not n:
            return empty_frame()
        sets = pl.Series("labels", [canonical_labels(s) for s in self._sets],
                         dtype=LABELS_DTYPE)
        return pl.DataFrame([
            pl.Series("ts", self._ts, dtype=SAMPLE_SCHEMA["ts"]),
            pl.Series("node", [self.node], dtype=pl.String).new_from_index(0, n),
            pl.Series("source", [self.source], dtype=pl.String).new_from_index(0, n),
            pl.Series("metric", self._metric, dtype=pl.String),
            pl.Series("kind", self._kind, dtype=KIND_DTYPE),
            pl.Series("value", self._value, dtype=pl.Float64),
            pl.Series("entity", self._entity, dtype=pl.String),
            sets[np.asarray(self._label_index, dtype=np.uint32)],
        ])

    def numbers(self, template: pl.DataFrame) -> pl.DataFrame:
        """``template`` (a frame of this :meth:`key`) with these rows' ``ts`` and ``value``."""
        out = template.clone()  # shallow: the series columns are shared, not copied
        out.replace_column(_TS_AT, pl.Series("ts", self._ts, dtype=SAMPLE_SCHEMA["ts"]))
        out.replace_column(_VALUE_AT, pl.Series("value", self._value, dtype=pl.Float64))
        return out


def validate(frame: pl.DataFrame) -> pl.DataFrame:
    """Check that ``frame`` has exactly the sample columns and types; return it in column order."""
    if frame.columns == _COLUMN_LIST and frame.dtypes == _DTYPES:
        return frame  # the usual case, without building a Schema (a tenth of the cost)
    problems: list[str] = []
    for name, dtype in SAMPLE_SCHEMA.items():
        if name not in frame.columns:
            problems.append(f"missing column {name!r}")
        elif frame.schema[name] != dtype:
            problems.append(f"column {name!r} is {frame.schema[name]}, expected {dtype}")
    extra = [c for c in frame.columns if c not in SAMPLE_SCHEMA]
    if extra:
        problems.append(f"unexpected columns {extra}")
    if problems:
        raise SchemaError("not a sample frame: " + "; ".join(problems))
    if frame.columns != list(COLUMNS):
        frame = frame.select(COLUMNS)
    return frame


@functools.lru_cache(maxsize=16)
def _arrow_metadata(
    columns: tuple[tuple[str, pl.DataType], ...],
) -> dict[str, dict[bytes, bytes] | None]:
    """Per column, the Arrow field metadata polars writes for it (enums carry their values)."""
    arrow = pl.DataFrame(schema=dict(columns)).to_arrow().schema
    return {f.name: f.metadata for f in arrow}


def read_arrow_stream(data: bytes, expected: pl.Schema | None = None) -> pl.DataFrame:
    """An Arrow IPC stream from untrusted bytes as a polars frame, or a ``ValueError``.

    Kafka records and checkpoint files are read from outside the process, so
    a corrupt one must be an error, never a crash.  Polars' own IPC reader is
    not safe on corrupt input: a mangled length makes it try to allocate
    petabytes and abort the whole process, and other damage panics.  pyarrow's
    reader checks every buffer against the bytes it has (Arrow fuzzes it), and
    ``validate(full=True)`` checks offsets and UTF-8, so the table handed to
    polars is well formed.  With ``expected``, column names and the polars
    metadata of enum columns are compared before conversion, because polars
    panics on damaged enum metadata; with ``expected``, the metadata of each
    enum column it names is compared before conversion (the caller checks
    columns and types afterwards, with its own words).

    Raises:
        ValueError: the bytes are not a well-formed Arrow IPC stream, or an
            ``expected`` enum column carries other metadata.
    """
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        table.validate(full=True)
        fields = [(f.name, f.metadata) for f in table.schema]
    except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OverflowError,
            MemoryError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if expected is not None:
        metadata = _arrow_metadata(tuple(expected.items()))
        for name, meta in fields:
            if metadata.get(name) and meta != metadata[name]:
                raise ValueError(f"column {name!r} is not the expected enum (other values "
                                 "or damaged type metadata)")
    try:
        frame = pl.from_arrow(table)
    except (Exception, PanicException) as exc:  # a polars panic is a BaseException
        raise ValueError(f"cannot convert to a polars frame: {type(exc).__name__}: {exc}") from exc
    if not isinstance(frame, pl.DataFrame):  # pragma: no cover - a table converts to a frame
        raise ValueError(f"not a table: {type(frame).__name__}")
    return frame


def write_framed(frame: pl.DataFrame, magic: bytes, version: int) -> bytes:
    """``magic + version byte + Arrow IPC stream``: the framing of every gpuslo record."""
    buf = io.BytesIO()
    buf.write(magic)
    buf.write(bytes([version]))
    frame.write_ipc_stream(buf, compression="uncompressed")
    return buf.getvalue()


def read_header(
    data: object,
    magic: bytes,
    versions: Sequence[int],
    *,
    what: str,
    error: type[SchemaError],
    foreign: Mapping[bytes, str] | None = None,
) -> tuple[int, bytes]:
    """The version and the body of bytes framed as ``magic + version byte + body``.

    Every way the header can be wrong raises ``error`` with a message naming
    ``what`` the bytes should have been: not bytes, too short, another magic (with
    ``foreign``'s message when it is a magic gpuslo knows), a version this build
    does not read.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    header = len(magic) + 1
    if len(data) < header:
        raise error(f"record of {len(data)} bytes is too short to be a {what}")
    head = data[: len(magic)]
    if head != magic:
        if foreign and head in foreign:
            raise error(foreign[head])
        raise error(f"not a gpuslo {what}: starts with {head!r}, expected {magic!r}")
    got = data[len(magic)]
    if got not in versions:
        known = " and ".join(map(str, versions))
        raise error(f"{what} schema version {got} is not supported "
                    f"(this build reads version{'s' if len(versions) > 1 else ''} {known})")
    return got, data[header:]


def read_framed(
    data: object,
    magic: bytes,
    version: int,
    *,
    what: str,
    error: type[SchemaError],
    foreign: Mapping[bytes, str] | None = None,
    expected: pl.Schema | None = None,
) -> pl.DataFrame:
    """The Arrow frame inside bytes made by :func:`write_framed`, columns unchecked.

    Bad bytes raise ``error`` (see :func:`read_header`; also a truncated or
    corrupt body, read by :func:`read_arrow_stream` with ``expected`` columns
    when given).
    """
    _, body = read_header(data, magic, (version,), what=what, error=error, foreign=foreign)
    try:
        return read_arrow_stream(body, expected)
    except ValueError as exc:
        raise error(f"{what} body ({len(body)} bytes) is truncated or corrupt: {exc}") from exc


@dataclass(frozen=True)
class Block:
    """Consecutive rows of a record, and what is known about their series.

    Blocks with equal ``series_key`` (not ``None``) promise equal series columns
    (:data:`SERIES_COLUMNS`) row for row: a version-2 record stores them once.
    The scrape engine derives a key from the parser's per-target shape cache, so
    one record holding several scrapes of a target stores its series once.
    ``None`` promises nothing (the rows are stored as they are).
    """

    frame: pl.DataFrame
    series_key: Hashable | None = None


class SeriesCache:
    """The Arrow form of recently encoded series, by series key, for version-2 writers.

    Converting a block's series columns from Polars to Arrow costs more than the
    rest of encoding it; a target's series do not change between its scrapes, so
    a producer keeps them here and converts each key once.  Entries unused for
    ``max_age_s`` are dropped, so the cache holds about one copy of each live
    target's series.
    """

    def __init__(self, max_age_s: float = 120.0) -> None:
        self.max_age_s = max_age_s
        self._tables: dict[Hashable, tuple[pa.Table, float]] = {}
        # A record's dictionary-encoded series, by its keys in order with their rows:
        # a node's records repeat the same targets' series, so each is encoded once.
        self._series: dict[tuple[tuple[Hashable, int], ...], tuple[pa.StructArray, float]] = {}
        self._swept = time.monotonic()

    def __len__(self) -> int:
        return len(self._tables)

    def table(self, key: Hashable, frame: pl.DataFrame) -> pa.Table:
        """The series columns of ``frame`` (which has series key ``key``) as Arrow."""
        now = time.monotonic()
        hit = self._tables.get(key)
        table = hit[0] if hit is not None and hit[0].num_rows == frame.height else (
            _series_arrow(frame))
        self._tables[key] = (table, now)
        if now - self._swept > self.max_age_s / 4:
            self._swept = now
            self._tables = {k: v for k, v in self._tables.items()
                            if now - v[1] <= self.max_age_s}
            self._series = {k: v for k, v in self._series.items()
                            if now - v[1] <= self.max_age_s}
        return table

    def holds(self, key: Hashable, rows: int) -> bool:
        """Whether the series of ``key`` are here, ``rows`` long (so a frame with that key
        was checked when they were stored: equal keys promise equal series)."""
        hit = self._tables.get(key)
        return hit is not None and hit[0].num_rows == rows

    def series(self, keys: tuple[tuple[Hashable, int], ...],
               tables: Sequence[pa.Table]) -> pa.StructArray:
        """The dictionary-encoded series of a record whose keyed blocks are ``keys``
        (each key with its rows, in order) and whose series tables are ``tables``.

        Equal keys promise equal series (see :class:`Block`), so equal ``keys`` make
        an equal struct: it is encoded once and reused while it is in use.
        """
        hit = self._series.get(keys)
        struct = hit[0] if hit is not None else _dictionary_series(pa.concat_tables(tables))
        self._series[keys] = (struct, time.monotonic())
        return struct


def encode(frame: pl.DataFrame, *, version: int = SCHEMA_VERSION) -> bytes:
    """Serialise a sample frame as ``MAGIC + version + Arrow IPC stream``."""
    return encode_blocks([Block(frame)], version=version)


def encode_blocks(blocks: Sequence[Block], *, version: int = SCHEMA_VERSION,
                  cache: SeriesCache | None = None) -> bytes:
    """One record that decodes to the blocks' frames one after the other.

    ``cache`` keeps keyed blocks' series in Arrow form between records.

    Raises:
        SchemaError: a block is not a sample frame, or two blocks with one key
            differ in length (their key cannot be true).
    """
    if version not in READ_VERSIONS:
        raise ValueError(f"cannot write sample schema version {version}")
    if not blocks:
        blocks = [Block(empty_frame())]
    frames = [_checked(b, cache) for b in blocks]
    if version == 1:
        whole = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=True)
        return write_framed(whole, MAGIC, 1)
    starts: dict[Hashable, tuple[int, int]] = {}  # key -> (first row in the table, rows)
    table: list[pa.Table] = []
    index: list[np.ndarray] = []
    n_series = 0
    for block, frame in zip(blocks, frames, strict=True):
        key = block.series_key
        known = starts.get(key) if key is not None else None
        if known is not None:
            if known[1] != frame.height:
                raise SchemaError(f"blocks with series key {key!r} have {known[1]} and "
                                  f"{frame.height} rows: the key cannot hold")
            start = known[0]
        else:
            start = n_series
            n_series += frame.height
            table.append(cache.table(key, frame) if cache is not None and key is not None
                         else _series_arrow(frame))
            if key is not None:
                starts[key] = (start, frame.height)
        index.append(np.arange(start, start + frame.height, dtype=np.uint32))
    keyed = tuple(starts.items())
    if cache is not None and len(keyed) == len(table):  # every block keyed: reusable
        series = cache.series(tuple((k, rows) for k, (_, rows) in keyed), table)
    else:
        series = _dictionary_series(pa.concat_tables(table))
    indices = pa.array(np.concatenate(index) if index else np.zeros(0, np.uint32), pa.uint32())
    ts = pl.concat([f.get_column("ts") for f in frames]).to_arrow()
    value = pl.concat([f.get_column("value") for f in frames]).to_arrow()
    body = pa.table({"series": pa.DictionaryArray.from_arrays(indices, series),
                     "ts": ts, "value": value})
    sink = pa.BufferOutputStream()
    sink.write(MAGIC + bytes([2]))
    with pa.ipc.new_stream(sink, body.schema) as writer:
        writer.write_table(body)
    return bytes(sink.getvalue())


def _checked(block: Block, cache: SeriesCache | None) -> pl.DataFrame:
    """``block``'s frame, checked (:func:`validate`) unless its series come from ``cache``.

    Why: comparing every column's type costs more than the rest of encoding a
    block of a hundred rows.  A block whose series the cache holds was checked
    when they were stored, and the encoder takes only ``ts`` and ``value`` from
    its frame, so only those are checked.
    """
    frame = block.frame
    if (cache is None or block.series_key is None or frame.columns != _COLUMN_LIST
            or not cache.holds(block.series_key, frame.height)):
        return validate(frame)
    if frame.get_column("ts").dtype != _TS or frame.get_column("value").dtype != pl.Float64:
        return validate(frame)  # raises, naming the column
    return frame


def _series_arrow(frame: pl.DataFrame) -> pa.Table:
    """The series columns of a sample frame in Arrow (plain strings)."""
    return pa.table([frame.get_column(c).to_arrow() for c in SERIES_COLUMNS],
                    names=list(SERIES_COLUMNS))


def _dictionary_series(table: pa.Table) -> pa.StructArray:
    """The series columns of ``table`` as a struct whose strings are dictionary-encoded."""
    fields = []
    for name in SERIES_COLUMNS:
        col = _one_chunk(table.column(name))
        if name == "labels":
            col = _map_pairs(col, pc.dictionary_encode)
        elif name != "kind":  # kind is already a dictionary (the Enum)
            col = pc.dictionary_encode(col)
        fields.append(col)
    return pa.StructArray.from_arrays(fields, names=list(SERIES_COLUMNS))


def _map_pairs(labels: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``labels`` (a list of {name, value}) with ``fn`` applied to all names and all values.

    Left as it is when a pair itself is null (never written by gpuslo; kept exact).
    """
    pairs = labels.values
    if pairs.null_count:
        return labels
    mask = labels.is_null() if labels.null_count else None
    return type(labels).from_arrays(labels.offsets, pa.StructArray.from_arrays(
        [fn(pairs.field(0)), fn(pairs.field(1))], names=["name", "value"]), mask=mask)


def _one_chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def decode(data: bytes) -> pl.DataFrame:
    """Parse bytes produced by :func:`encode` or :func:`encode_blocks` (either version).

    Raises:
        SchemaError: the bytes are empty, not a gpuslo frame, of an unknown
            version, truncated or corrupt, or hold a frame with other columns.
    """
    version, body = read_header(data, MAGIC, READ_VERSIONS, what="sample frame",
                                error=SchemaError)
    if version == 1:
        try:
            return validate(read_arrow_stream(body, SAMPLE_SCHEMA))
        except ValueError as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"sample frame body ({len(body)} bytes) is truncated or "
                              f"corrupt: {exc}") from exc
    try:
        # pyarrow checks every buffer against the bytes it has; validate(full=True)
        # checks offsets, dictionary indices and UTF-8 (see read_arrow_stream).
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        table.validate(full=True)
    except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OverflowError,
            MemoryError, OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"sample frame body ({len(body)} bytes) is truncated or "
                          f"corrupt: {type(exc).__name__}: {exc}") from exc
    return _from_series_table(table)


_ROWS_TYPES = {"series": "dictionary of series", "ts": "timestamp[ms, tz=UTC]",
               "value": "double"}


def _from_series_table(table: pa.Table) -> pl.DataFrame:
    """The sample frame inside a version-2 body (see the module docstring)."""
    if table.column_names != list(_ROWS_TYPES):
        raise SchemaError(f"not a version-2 sample frame: columns {table.column_names}, "
                          f"expected {list(_ROWS_TYPES)}")
    col = _one_chunk(table.column("series")) if table.num_rows else None
    ts, value = _one_chunk(table.column("ts")), _one_chunk(table.column("value"))
    if not (pa.types.is_dictionary(table.schema.field("series").type)
            and ts.type == pa.timestamp("ms", tz="UTC") and value.type == pa.float64()):
        raise SchemaError(f"not a version-2 sample frame: types {table.schema.types}, "
                          f"expected {list(_ROWS_TYPES.values())}")
    if col is None:
        return empty_frame()
    try:
        series = pl.from_arrow(_decoded_series(col.dictionary))
        assert isinstance(series, pl.DataFrame)
        series = series.cast({n: SAMPLE_SCHEMA[n] for n in SERIES_COLUMNS})
        rows = series[pl.Series(col.indices.to_numpy(zero_copy_only=False))]
        out = pl.DataFrame([pl.Series("ts", ts), *(rows.get_column(n) for n in
                            SERIES_COLUMNS[:4]), pl.Series("value", value),
                            *(rows.get_column(n) for n in SERIES_COLUMNS[4:])])
    except SchemaError:
        raise
    except (Exception, PanicException) as exc:  # a dictionary of the wrong shape; a panic
        # is a BaseException in polars
        raise SchemaError(f"not a version-2 sample frame: {type(exc).__name__}: {exc}") from exc
    return validate(out)


def _decoded_series(struct: pa.StructArray) -> pa.Table:
    """The series dictionary with every string dictionary decoded to plain strings.

    Decoded here rather than by Polars: Polars would make them Categoricals, whose
    strings it keeps for the life of the process.
    """
    if not isinstance(struct, pa.StructArray) or [
            struct.type.field(i).name for i in range(struct.type.num_fields)] != list(
            SERIES_COLUMNS):
        raise SchemaError(f"not a version-2 sample frame: series of type {struct.type}")
    cols = [_map_pairs(struct.field(i), _plain) if name == "labels" else _plain(struct.field(i))
            for i, name in enumerate(SERIES_COLUMNS)]
    return pa.table(cols, names=list(SERIES_COLUMNS))


def _plain(col: pa.Array) -> pa.Array:
    return col.dictionary.take(col.indices) if pa.types.is_dictionary(col.type) else col


def split(frame: pl.DataFrame, max_rows: int) -> list[pl.DataFrame]:
    """Slice a frame into pieces of at most ``max_rows`` rows (at least one piece)."""
    if max_rows <= 0:
        raise ValueError(f"max_rows must be > 0, got {max_rows}")
    if frame.height <= max_rows:
        return [frame]
    return [frame.slice(off, max_rows) for off in range(0, frame.height, max_rows)]


def label(name: str) -> pl.Expr:
    """Expression for one label's value (null where the series lacks it)."""
    return (
        pl.col("labels")
        .list.eval(pl.element().filter(pl.element().struct.field("name") == name))
        .list.first()
        .struct.field("value")
    )
