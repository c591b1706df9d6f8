"""Recorded Prometheus data as sample frames: OpenMetrics (or text 0.0.4) with timestamps.

``gpuslo replay`` backtests specs over "last month's data", and last month's
data usually lives in a Prometheus, not in gpuslo's Parquet.  What a Prometheus
exports (and what ``promtool tsdb create-blocks-from openmetrics`` accepts) is
OpenMetrics text with many timestamped points per series, histograms included,
each series labelled ``job`` and ``instance`` and, where relabelled, ``node``,
``namespace`` and ``pod``.  This module turns such a file into the sample
schema, inferring what the collectors would have recorded had they scraped the
exporters themselves:

* **source** from the metric name: ``DCGM_*`` → ``dcgm``; ``vllm:``, ``sglang:``,
  ``trtllm_``, ``nv_inference_``, ``nv_trt_llm_`` → ``kvcache``;
  ``node_infiniband_*`` → ``rdma``; ``node_disk_*``, ``ceph_*``, ``lustre_*`` →
  ``storage``; ``container_*`` → ``kubelet``; anything else → the ``job`` label
  (``prometheus`` when there is none).
* **node** from the relabelled ``node`` label, else the host part of
  ``instance`` (``10.0.0.5:9400`` → ``10.0.0.5``), else "".
* **entity** and the **normalised signal rows** by the collectors' own mapping
  functions (:mod:`gpuslo.collectors.mappings`: dcgm, kvcache, rdma, storage,
  kubelet),
  so a spec that selects a normalised ``gpuslo_*`` signal replays too.  An
  inference engine's replica is ``namespace/pod`` when the series carries a
  ``pod`` label (what pod discovery sets), as the kvcache collector does.

Labels are kept verbatim (``job``, ``instance`` and ``node`` included): they
are what makes two Prometheus series distinct, and dropping them could merge
two replicas' counters into one series and corrupt its increases.

Large files are read in chunks of whole lines, cut only where a family's
points may be split (never inside one histogram point), and each chunk is
parsed by :func:`collectors.exposition.parse_exposition` with its family
header repeated; so memory is bounded by the chunk size plus the resulting
columnar frame.  Pure apart from reading the file; no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from gpuslo.collectors.exposition import ExpositionError, parse_exposition
from gpuslo.collectors.mappings import dcgm, kubelet, kvcache, rdma, storage
from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.schema import COLUMNS, SAMPLE_SCHEMA, SchemaError, label, validate

Progress = Callable[[int, int], None]
"""Called with (bytes read, total bytes) after each chunk, for a progress bar."""

DEFAULT_CHUNK_BYTES = 32 << 20
OPENMETRICS_SUFFIXES = frozenset({".om", ".openmetrics"})
TEXT_SUFFIXES = frozenset({".txt", ".prom"})
# An impossible scrape time: a sample that gets it had no timestamp of its own.
_NO_TS_MS = -(2**40)

_SOURCE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("DCGM_", dcgm.SOURCE),
    ("vllm:", kvcache.SOURCE),
    ("sglang:", kvcache.SOURCE),
    ("trtllm_", kvcache.SOURCE),
    ("nv_inference_", kvcache.SOURCE),
    ("nv_trt_llm_", kvcache.SOURCE),
    ("node_infiniband_", rdma.SOURCE),
    ("node_disk_", storage.SOURCE),
    ("ceph_", storage.SOURCE),
    ("lustre_", storage.SOURCE),
    ("container_", kubelet.SOURCE),
)
GENERIC_SOURCE = "prometheus"
_FAMILY_META = re.compile(r"^# (TYPE|HELP|UNIT) (\S+)")
_SAMPLE_NAME = re.compile(r"^([^\s{]+)")


class OpenMetricsInputError(InputError):
    """A file that is not timestamped exposition text; names the file and, when known, line."""


def is_exposition_file(path: Path) -> bool:
    """Whether ``path`` holds exposition text (by extension, else by its first bytes).

    Parquet starts with ``PAR1`` and Arrow with ``ARROW1`` or a 0xFFFFFFFF
    continuation marker; exposition text starts with ``#`` or a metric name.
    """
    suffix = path.suffix.lower()
    if suffix in OPENMETRICS_SUFFIXES or suffix in TEXT_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if head[:4] == b"PAR1" or head[:6] == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff":
        return False
    text = head.lstrip()
    return bool(text) and (text[:1] == b"#" or re.match(rb"[A-Za-z_:]", text[:1]) is not None)


def _is_openmetrics(path: Path) -> bool:
    """OpenMetrics by extension, else by a final ``# EOF`` line (text 0.0.4 otherwise)."""
    if path.suffix.lower() in OPENMETRICS_SUFFIXES:
        return True
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read().rstrip(b"\r\n")
    return tail.endswith(b"# EOF") and (len(tail) == 5 or tail[-6:-5] == b"\n")


def source_expr() -> pl.Expr:
    """Each row's source, from its metric name (see the module docstring)."""
    metric = pl.col("metric")
    expr: pl.Expr = label("job").fill_null(GENERIC_SOURCE)
    for prefix, source in reversed(_SOURCE_PREFIXES):
        expr = pl.when(metric.str.starts_with(prefix)).then(pl.lit(source)).otherwise(expr)
    return expr.fill_null(GENERIC_SOURCE)


def node_expr() -> pl.Expr:
    """The relabelled ``node`` label, else the host of ``instance``, else ""."""
    node = label("node")
    host = label("instance").str.replace(r"^\[?([^\]]*?)\]?(:\d+)?$", "${1}")
    return (
        pl.when(node.is_not_null() & (node != ""))
        .then(node)
        .otherwise(host)
        .fill_null("")
    )


def _replica_expr() -> pl.Expr:
    pod = label("pod")
    return (
        pl.when(pod.is_not_null() & (pod != ""))
        .then(pl.concat_str([label("namespace").fill_null(""), pl.lit("/"), pod]))
        .otherwise(pl.lit(None, pl.String))
    )


def infer_origin(frame: pl.DataFrame) -> pl.DataFrame:
    """Source, node, entity and normalised signal rows for parsed Prometheus samples.

    ``frame`` is in the sample schema with ``source``/``node``/``entity`` not
    yet meaningful; the result has them set as the collectors would, plus the
    collectors' normalised rows.
    """
    if frame.height == 0:
        return frame
    frame = frame.with_columns(source=source_expr(), node=node_expr(), entity=pl.lit(""))
    parts: list[pl.DataFrame] = []
    for (source,), part in frame.partition_by("source", as_dict=True,
                                              maintain_order=True).items():
        if source == dcgm.SOURCE:
            parts.append(dcgm.map_frame(part).frame)
        elif source == kvcache.SOURCE:
            tagged = part.with_columns(_replica=_replica_expr())
            for (replica,), rows in tagged.partition_by("_replica", as_dict=True,
                                                        maintain_order=True).items():
                parts.append(kvcache.map_frame(rows.drop("_replica"),
                                               str(replica) if replica is not None else None))
        elif source == rdma.SOURCE:
            parts.append(rdma.map_node_exporter(part))
        elif source == storage.SOURCE:
            parts.append(storage.map_frame(part))
        elif source == kubelet.SOURCE:
            parts.append(kubelet.derive_entities(part))
        else:
            parts.append(part)
    return pl.concat([p.select(COLUMNS) for p in parts]).cast(SAMPLE_SCHEMA)


def _sample_name(line: str) -> str:
    m = _SAMPLE_NAME.match(line)
    return m.group(1) if m else ""


class _Chunker:
    """Whole-line chunks of one exposition file, each parseable on its own.

    A chunk ends at a family boundary or, inside a large family, before a
    line that starts a new point: any line of a counter/gauge family, or the
    first ``_bucket`` (quantile) line after a non-bucket line of a histogram
    (summary).  Each later chunk is prefixed by its family's ``# TYPE``/
    ``# HELP``/``# UNIT`` lines so the parser knows the family's type.
    """

    def __init__(self, path: Path, chunk_bytes: int, openmetrics: bool) -> None:
        self.path = path
        self.chunk_bytes = max(1, chunk_bytes)
        self.openmetrics = openmetrics

    def chunks(self) -> Iterator[tuple[str, int, int]]:
        """(text, first line number, bytes read so far) per chunk."""
        header: list[str] = []  # the current family's metadata lines
        family_type = ""
        lines: list[str] = []
        size = 0
        first_line = 1
        read = 0
        prev_name = ""
        with self.path.open("rb") as f:
            for no, raw in enumerate(f, start=1):
                read += len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise OpenMetricsInputError(
                        f"{self.path}: line {no}: not UTF-8 ({exc})") from exc
                stripped = line.rstrip("\r\n")
                if stripped == "# EOF":
                    break
                meta = _FAMILY_META.match(stripped)
                starts_family = meta is not None and (not header or meta.group(2) != _meta_name(
                    header[0]))
                if starts_family and size >= self.chunk_bytes:
                    yield self._text(lines), first_line, read - len(raw)
                    lines, size, first_line = [], 0, no
                if meta is not None:
                    if starts_family:
                        header = []
                        family_type = ""
                    header.append(stripped + "\n")
                    if meta.group(1) == "TYPE":
                        family_type = stripped.split(" ", 3)[3].strip() if stripped.count(
                            " ") >= 3 else ""
                elif stripped and not stripped.startswith("#"):
                    name = _sample_name(stripped)
                    if size >= self.chunk_bytes and self._can_cut(family_type, prev_name, name):
                        yield self._text(lines), first_line, read - len(raw)
                        # The header lines re-declare the family; line numbers of the
                        # chunk then count from its first sample line.
                        lines, size, first_line = list(header), 0, no - len(header)
                    prev_name = name
                lines.append(stripped + "\n")
                size += len(raw)
        if lines:
            yield self._text(lines), first_line, read

    @staticmethod
    def _can_cut(family_type: str, prev: str, name: str) -> bool:
        if family_type in ("histogram", "gaugehistogram"):
            return name.endswith("_bucket") and not prev.endswith("_bucket")
        if family_type == "summary":
            return not name.endswith(("_sum", "_count", "_created")) and prev.endswith(
                ("_sum", "_count", "_created"))
        return True

    def _text(self, lines: list[str]) -> str:
        return "".join(lines) + ("# EOF\n" if self.openmetrics else "")


def _meta_name(line: str) -> str:
    m = _FAMILY_META.match(line)
    return m.group(2) if m else ""


def iter_exposition_frames(
    path: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
) -> Iterator[pl.DataFrame]:
    """Sample frames, one per chunk of ``path``, with source, node and entity inferred.

    Raises:
        OpenMetricsInputError: unreadable, malformed, or a sample without a timestamp.
    """
    try:
        total = path.stat().st_size
        openmetrics = _is_openmetrics(path)
    except OSError as exc:
        raise OpenMetricsInputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    chunker = _Chunker(path, chunk_bytes, openmetrics)
    for text, first_line, read in chunker.chunks():
        try:
            frame = parse_exposition(text, node="", source="", scrape_ts_ms=_NO_TS_MS,
                                     openmetrics=openmetrics)
        except ExpositionError as exc:
            where = f"line {first_line + exc.line_no - 1}: " if exc.line_no else ""
            raise OpenMetricsInputError(f"{path}: {where}{exc.reason}") from exc
        untimed = frame.filter(pl.col("ts").dt.epoch("ms") == _NO_TS_MS)
        if untimed.height:
            raise OpenMetricsInputError(
                f"{path}: {untimed.height} sample(s) without a timestamp near line "
                f"{first_line} (first: {untimed['metric'][0]}); a replay needs the time "
                "of every point, as Prometheus exports it"
            )
        if frame.height:
            yield infer_origin(frame)
        if progress is not None:
            progress(read, total)


def read_exposition(
    path: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
) -> pl.DataFrame:
    """The whole file as one validated sample frame (see :func:`iter_exposition_frames`)."""
    frames = list(iter_exposition_frames(path, chunk_bytes=chunk_bytes, progress=progress))
    if not frames:
        return pl.DataFrame(schema=SAMPLE_SCHEMA)
    return validate(pl.concat(frames, rechunk=True))


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "GENERIC_SOURCE",
    "OpenMetricsInputError",
    "infer_origin",
    "is_exposition_file",
    "iter_exposition_frames",
    "node_expr",
    "read_exposition",
    "source_expr",
]


def read_samples(path: Path) -> pl.DataFrame:
    """A sample frame from Parquet or Arrow IPC (file or stream) in the sample schema.

    Raises:
        SchemaError: unreadable, another format, or other columns.
    """
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        if head[:4] == b"PAR1":
            frame = pl.read_parquet(path)
        elif head == b"ARROW1":
            frame = pl.read_ipc(path)
        else:
            frame = pl.read_ipc_stream(path)
    except Exception as exc:  # polars raises several error types for a bad file
        raise SchemaError(
            f"{path}: not a Parquet or Arrow IPC file of samples: {exc}"
        ) from exc
    try:
        if "kind" in frame.columns and frame.schema["kind"] != SAMPLE_SCHEMA["kind"]:
            frame = frame.with_columns(pl.col("kind").cast(pl.String).cast(SAMPLE_SCHEMA["kind"]))
        if "ts" in frame.columns and frame.schema["ts"] != SAMPLE_SCHEMA["ts"]:
            frame = frame.with_columns(pl.col("ts").cast(SAMPLE_SCHEMA["ts"]))
    except Exception as exc:
        raise SchemaError(f"{path}: {exc}") from exc
    try:
        return validate(frame)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from exc


def read_history(path: Path, progress: Progress | None = None) -> pl.DataFrame:
    """Samples for a backtest: a sample frame file, or timestamped exposition text.

    Exposition text (what a Prometheus exports) is read in chunks, reporting
    ``progress`` over the bytes read, since a month of a fleet runs to gigabytes.

    Raises:
        SchemaError: a Parquet/Arrow file that is not a sample frame.
        OpenMetricsInputError: exposition text that cannot be read.
    """
    if not is_exposition_file(path):
        return read_samples(path)
    return read_exposition(path, progress=progress)
