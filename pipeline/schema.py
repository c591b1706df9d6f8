"""The sample frame: the one contract every stage of gpuslo shares.

A scrape becomes one long-format frame (one row per sample) and one Kafka
record.  Upstream metric names and labels are kept exactly as the source spells
them; normalised signals are added by declared mappings elsewhere, never by
renaming here.

On the wire a frame is ``MAGIC + version byte + Arrow IPC stream``.  The prefix
lets :func:`decode` tell "not ours", "ours but from a future version" and "ours
but truncated" apart with a message that says which, instead of a raw Arrow
flatbuffer error.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum

import polars as pl
import pyarrow as pa
from polars.exceptions import PanicException

from gpuslo.pipeline.errors import InputError

SCHEMA_VERSION = 1
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

# Label names that identify a series as a whole, in the order used for keys.
SERIES_KEY: tuple[str, ...] = ("node", "source", "metric", "entity", "labels")


class SchemaError(InputError):
    """Bytes or a frame that are not a valid sample frame of a known version."""


def empty_frame() -> pl.DataFrame:
    """A zero-row frame with the exact sample schema."""
    return pl.DataFrame(schema=SAMPLE_SCHEMA)


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


def validate(frame: pl.DataFrame) -> pl.DataFrame:
    """Check that ``frame`` has exactly the sample columns and types; return it in column order."""
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

    Every way the bytes can be wrong raises ``error`` with a message naming
    ``what`` they should have been: not bytes, too short, another magic (with
    ``foreign``'s message when it is a magic gpuslo knows), a version this
    build does not read, a truncated or corrupt body (read by
    :func:`read_arrow_stream`, with ``expected`` columns when given).
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
    if got != version:
        raise error(
            f"{what} schema version {got} is not supported (this build reads version {version})"
        )
    try:
        return read_arrow_stream(data[header:], expected)
    except ValueError as exc:
        raise error(
            f"{what} body ({len(data) - header} bytes) is truncated or corrupt: {exc}"
        ) from exc


def encode(frame: pl.DataFrame) -> bytes:
    """Serialise a sample frame as ``MAGIC + version + Arrow IPC stream``."""
    return write_framed(validate(frame), MAGIC, SCHEMA_VERSION)


def decode(data: bytes) -> pl.DataFrame:
    """Parse bytes produced by :func:`encode`.

    Raises:
        SchemaError: the bytes are empty, not a gpuslo frame, of an unknown
            version, truncated or corrupt, or hold a frame with other columns.
    """
    return validate(read_framed(data, MAGIC, SCHEMA_VERSION, what="sample frame",
                                error=SchemaError, expected=SAMPLE_SCHEMA))


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
