"""Recorded samples as sample frames: Prometheus exports (OpenMetrics or text) and sample files.

``gpuslo replay`` backtests specs over "last month's data", and last month's
data usually lives in a Prometheus, not in gpuslo's Parquet.  What a
Prometheus exports (and what ``promtool tsdb create-blocks-from openmetrics``
accepts) is OpenMetrics text with many timestamped points per series,
histograms included, each series labelled ``job`` and ``instance`` and, where
relabelled, ``node``, ``namespace`` and ``pod``.  This module turns such a
file, or a Parquet / Arrow file of sample frames, into sample frames, a chunk
at a time, so a replay's memory does not grow with the file.

**What is accepted.**  What promtool ingests, read line by line:

* Sample lines ``name{labels} value timestamp`` (an OpenMetrics exemplar after
  them is ignored), ``# TYPE``/``# HELP``/``# UNIT`` lines, ``# EOF``.
* Metadata that does not match the samples is a *warning* naming its first
  line (:class:`InputWarning`), never a failure: a counter family whose
  samples lack ``_total``, an unknown type, a missing ``# EOF``, lines after
  it, blank lines, a family's metadata after its samples.
* Only the families a replay reads (``metrics``: the names the specs select,
  :func:`replay_metrics`) must parse cleanly.  A malformed line of another
  family is skipped and counted in one warning with its first line number; a
  malformed line of a selected family is an error naming that line.
* Timestamps: the unit is read from the content, not from ``# EOF``: seconds
  when the first timestamp has a fraction or fewer than 12 digits (OpenMetrics;
  1e11 s is the year 5138), milliseconds otherwise (text format; 1e11 ms is
  1973).  A sample time before 2000 or in the future (after ``now``, plus a
  minute of clock skew) is refused with its line: it is a file cut inside a
  timestamp, or a unit mix-up, and replaying it would step from 1970 to today.
  A selected sample without a timestamp is refused: a replay needs the time of
  every point.
* ``not_before`` / ``not_after`` keep the samples of ``[not_before, not_after]``
  (inclusive) and drop the rest.

**What a sample becomes.**  What gpuslo's collectors would have recorded had
they scraped the exporters themselves:

* the **metric** is the sample's name, except that a counter sample without
  ``_total`` gets it appended, as the collectors' text-format parser names
  counters (dcgm-exporter serves ``DCGM_FI_DEV_..._TOTAL`` counters without
  it);
* the **kind** from the family's ``# TYPE`` and the sample's suffix;
* **source** from the metric name: ``DCGM_*`` → ``dcgm``; ``vllm:``,
  ``sglang:``, ``trtllm_``, ``nv_inference_``, ``nv_trt_llm_`` → ``kvcache``;
  ``node_infiniband_*`` → ``rdma``; ``node_disk_*``, ``ceph_*``, ``lustre_*`` →
  ``storage``; ``container_*`` → ``kubelet``; anything else → the ``job``
  label (``prometheus`` when there is none);
* **node** from the relabelled ``node`` label, else the host part of
  ``instance`` (``10.0.0.5:9400`` → ``10.0.0.5``), else "";
* **entity** and the **normalised signal rows** by the collectors' own mapping
  functions (:mod:`gpuslo.collectors.mappings`: dcgm, kvcache, rdma, storage,
  kubelet),
  so a spec that selects a normalised ``gpuslo_*`` signal replays too.  An
  inference engine's replica is ``namespace/pod`` when the series carries a
  ``pod`` label (what pod discovery sets), as the kvcache collector does.

Labels are kept verbatim (``job``, ``instance`` and ``node`` included): they
are what makes two Prometheus series distinct, and dropping them could merge
two replicas' counters into one series and corrupt its increases.

A sample's family is found by name from every ``# TYPE`` line read so far, so
a file may be cut anywhere between lines.  Pure apart from reading the file
(and the clock, only when no ``now`` is given).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from gpuslo.collectors.exposition import sample_kind
from gpuslo.collectors.mappings import dcgm, kubelet, kvcache, rdma, storage
from gpuslo.collectors.mappings.normalise import Signal
from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.schema import COLUMNS, SAMPLE_SCHEMA, SchemaError, label, validate

Progress = Callable[[int, int], None]
"""Called with (bytes read, total bytes) after each chunk, for a progress bar."""

DEFAULT_CHUNK_BYTES = 32 << 20
DEFAULT_BATCH_ROWS = 1 << 16
OPENMETRICS_SUFFIXES = frozenset({".om", ".openmetrics"})
TEXT_SUFFIXES = frozenset({".txt", ".prom"})
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=1)

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
# Every table of normalised signals the mappings derive (spec metric -> upstream metrics).
_SIGNAL_TABLES: tuple[tuple[Signal, ...], ...] = (
    dcgm.SIGNALS, kvcache.SIGNALS, rdma.SIGNALS, storage.SIGNALS, kubelet.SIGNALS)

_KNOWN_TYPES = frozenset({"counter", "gauge", "histogram", "gaugehistogram", "summary",
                          "untyped", "unknown", "info", "stateset"})
# Suffixes a family's samples may carry, by type (OpenMetrics, plus the text format's bare name).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created", ""),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("_count", "_sum", "_created", ""),
    "info": ("_info", ""),
}
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# Label blocks whose values hold no quote or backslash: decoded vectorised.
_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
_STRICT_BLOCK = rf"^\{{(?:{_PAIR}(?:,{_PAIR})*,?)?\}}$"
_SAMPLE_LINE = (
    rf"^[ \t]*(?P<name>{_NAME})(?P<block>\{{(?:[^\"\\{{}}]|\"[^\"\\]*\")*\}})?[ \t]+"
    r"(?P<value>[^ \t#]+)(?:[ \t]+(?P<ts>[^ \t#]+))?[ \t]*(?:#.*)?$"
)
_META = re.compile(r"^#[ \t]*(TYPE|HELP|UNIT)[ \t]+(\S+)(?:[ \t]+(.*))?$")
_EARLIEST_MS = int(EARLIEST.timestamp() * 1000)
_SECONDS_BELOW = 10**11  # an integer timestamp below this is seconds (1e11 ms is 1973)

Unit = Literal["s", "ms"]


class OpenMetricsInputError(InputError):
    """Recorded input that cannot be replayed; names the file and, when known, the line."""


@dataclass(frozen=True)
class InputWarning:
    """Something promtool would accept but a reader should know: first line and what."""

    line_no: int
    message: str
    count: int = 1

    def __str__(self) -> str:
        where = f"line {self.line_no}: " if self.line_no else ""
        more = f" ({self.count} lines)" if self.count > 1 else ""
        return f"{where}{self.message}{more}"


def replay_metrics(spec_metrics: Iterable[str]) -> frozenset[str]:
    """The sample names to read for specs that select ``spec_metrics``.

    A normalised ``gpuslo_*`` signal needs the upstream series it is derived
    from (both the counter spellings, with and without ``_total``, and a
    histogram's ``_bucket``/``_count``/``_sum``), plus itself.
    """
    wanted = set(spec_metrics)
    out = set(wanted)
    for table in _SIGNAL_TABLES:
        for sig in table:
            names = {sig.name}
            if sig.histogram:
                names |= {sig.name + s for s in ("_bucket", "_count", "_sum")}
            if not names & wanted:
                continue
            for ref in sig.series:
                out |= {ref.metric, ref.metric + "_total"}
                if sig.histogram:
                    out |= {ref.metric + s for s in ("_bucket", "_count", "_sum")}
    return frozenset(out)


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


# ------------------------------------------------------------------------------------------
# Timestamps
# ------------------------------------------------------------------------------------------


def _now_ms(now: datetime | None) -> int:
    moment = (now or datetime.now(UTC)) + CLOCK_SKEW
    return int(moment.timestamp() * 1000)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def implausible_time(ms: int, now: datetime | None = None) -> str | None:
    """Why a sample time of ``ms`` cannot be real history, or None when it can."""
    if ms < _EARLIEST_MS:
        return (f"timestamp {_iso_ms(ms) if ms > -(10**15) else ms} is before 2000 (a file cut "
                "inside a timestamp, or milliseconds read as seconds?)")
    if ms > _now_ms(now):
        return f"timestamp {_iso_ms(ms)} is in the future"
    return None


def check_sample_times(frame: pl.DataFrame, where: str, now: datetime | None = None) -> None:
    """Refuse a sample frame holding a time before 2000 or in the future (see the module doc).

    Raises:
        OpenMetricsInputError: naming ``where`` and the first such sample's metric.
    """
    if frame.height == 0:
        return
    ms = frame.get_column("ts").cast(pl.Datetime("ms", "UTC")).to_numpy().view(np.int64)
    bad = (ms < _EARLIEST_MS) | (ms > _now_ms(now))
    if bad.any():
        i = int(np.argmax(bad))
        reason = implausible_time(int(ms[i]), now)
        raise OpenMetricsInputError(
            f"{where}: sample {i + 1} ({frame['metric'][i]}): {reason}")


def _unit_of(ts: str) -> Unit:
    """Seconds or milliseconds, from one timestamp's text (see the module docstring)."""
    if "." in ts or "e" in ts.lower():
        return "s"
    digits = ts.lstrip("+-")
    return "s" if digits.isdigit() and int(digits) < _SECONDS_BELOW else "ms"


def _ts_ms(ts: pl.Expr, unit: Unit) -> pl.Expr:
    """Timestamp text to integer milliseconds (truncated below a millisecond); null if bad."""
    if unit == "ms":
        return ts.cast(pl.Int64, strict=False)
    sec_frac = ts.str.splitn(".", 2)
    sec = sec_frac.struct.field("field_0")
    frac = sec_frac.struct.field("field_1").fill_null("")
    plain = ts.str.contains(r"^[0-9]+(\.[0-9]*)?$")
    exact = sec.cast(pl.Int64, strict=False) * 1000 + frac.str.pad_end(3, "0").str.slice(0, 3) \
        .cast(pl.Int64, strict=False).fill_null(0)
    # Exponent forms (rare): through a float, to the millisecond.
    other = (ts.cast(pl.Float64, strict=False) * 1000).floor().cast(pl.Int64, strict=False)
    return pl.when(plain).then(exact).otherwise(other)


# ------------------------------------------------------------------------------------------
# The exposition reader
# ------------------------------------------------------------------------------------------


@dataclass
class _FamilyInfo:
    name: str
    type: str
    line_no: int


@dataclass
class _Resolved:
    """What a sample name means: its output metric and kind, and whether it is read."""

    metric: str
    kind: str
    family: str | None
    wanted: bool
    bare_counter: bool  # a counter sample without _total


@dataclass
class _Counted:
    """A warning that repeats: the first line and how many lines."""

    line_no: int
    message: str
    count: int = 0


_Problem = tuple[int, str, str]  # (line, text, reason)


@dataclass
class ExpositionReader:
    """Reads one exposition file as sample frames, a chunk of whole lines at a time.

    Args:
        path: the file.
        metrics: the sample names to read (after ``_total`` is appended to bare
            counters); None reads every family, and then every family must parse.
        not_before, not_after: keep only samples in this closed range.
        now: the latest plausible sample time (a minute of clock skew is
            allowed); None reads the clock.
        chunk_bytes: how much text is parsed at once (memory is a few times this
            plus the frames in flight).

    After :meth:`frames` is exhausted, :attr:`warnings` holds what promtool
    would have accepted without a word, and :attr:`unit` the timestamp unit read.
    """

    path: Path
    metrics: Collection[str] | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    now: datetime | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    unit: Unit | None = None
    samples_read: int = 0
    _families: dict[str, _FamilyInfo] = field(default_factory=dict)
    _resolved: dict[str, _Resolved] = field(default_factory=dict)
    _bare: dict[str, int] = field(default_factory=dict)  # counter family -> first bare line
    _counted: dict[str, _Counted] = field(default_factory=dict)
    _eof_line: int = 0
    _after_eof: int = 0
    _last_line: int = 0
    _warnings: list[InputWarning] = field(default_factory=list)

    @property
    def warnings(self) -> list[InputWarning]:
        """Metadata mismatches and skipped lines, each with its first line, in line order."""
        out = list(self._warnings)
        out += [InputWarning(c.line_no, c.message, c.count) for key, c in self._counted.items()
                if c.count and (key != "blank" or self.unit == "s")]
        if self.unit == "s":  # the text format names counters without _total; OpenMetrics not
            out += [InputWarning(line, (
                f"counter {name!r} has samples without the _total suffix; read as "
                f"{name}_total, as gpuslo's collectors name counters"))
                for name, line in self._bare.items()]
        return sorted(out, key=lambda w: w.line_no)

    def _count(self, key: str, line_no: int, message: str, n: int = 1) -> None:
        c = self._counted.setdefault(key, _Counted(line_no, message))
        c.count += n

    def _error(self, problem: _Problem) -> OpenMetricsInputError:
        line_no, line, reason = problem
        shown = line if len(line) <= 200 else line[:200] + "..."
        return OpenMetricsInputError(f"{self.path}: line {line_no}: {reason}: {shown!r}")

    # -- reading ----------------------------------------------------------------------------

    def frames(self, progress: Progress | None = None) -> Iterator[pl.DataFrame]:
        """Sample frames in file order (each validated, source/node/entity inferred).

        Raises:
            OpenMetricsInputError: unreadable file, a selected line that does not
                parse, a selected sample without a timestamp, or an implausible time.
        """
        try:
            total = self.path.stat().st_size
            f = self.path.open("rb")
        except OSError as exc:
            raise OpenMetricsInputError(
                f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        read = 0
        line_no = 1
        rest = b""
        with f:
            while not self._eof_line:
                block = f.read(self.chunk_bytes)
                if not block:
                    break
                read += len(block)
                data = rest + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    continue
                rest = data[cut + 1:]
                out, n = self._chunk(data[: cut + 1], line_no)
                line_no += n
                if out is not None and out.height:
                    yield out
                if progress is not None:
                    progress(read - len(rest), total)
            if rest and not self._eof_line:
                out, n = self._chunk(rest + b"\n", line_no)
                line_no += n
                if out is not None and out.height:
                    yield out
            elif self._eof_line and (rest.strip() or f.read(1)):
                self._after_eof += 1
        self._last_line = line_no - 1
        self._finish()
        if progress is not None:
            progress(total, total)

    def _finish(self) -> None:
        if self._after_eof:
            self._warnings.append(InputWarning(
                self._eof_line + 1, "lines after # EOF are ignored, as promtool ignores them"))
        if self.unit == "s" and not self._eof_line:
            self._warnings.append(InputWarning(
                self._last_line, "no # EOF at the end of an OpenMetrics file (cut short?); "
                "every complete line was read"))
        if self._eof_line and self.unit == "ms":
            self._warnings.append(InputWarning(
                self._eof_line, "# EOF ends the file, but its timestamps are milliseconds "
                "(text format); read as milliseconds"))

    def _decode(self, data: bytes, first_line: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = first_line + data.count(b"\n", 0, exc.start)
            raise OpenMetricsInputError(
                f"{self.path}: line {bad_line}: not UTF-8 ({exc.reason})") from exc

    def _chunk(self, data: bytes, first_line: int) -> tuple[pl.DataFrame | None, int]:
        """Parse whole lines starting at ``first_line``; returns (frame, lines consumed)."""
        text = self._decode(data, first_line)
        lines = text.split("\n")
        lines.pop()  # the text ends with a newline
        n = len(lines)
        frame = pl.DataFrame({"raw": lines}, schema={"raw": pl.String}).with_row_index(
            "line", offset=first_line).with_columns(pl.col("raw").str.strip_chars_end("\r"))
        stripped = pl.col("raw").str.strip_chars(" \t")
        frame = frame.with_columns(
            is_meta=stripped.str.starts_with("#"),
            blank=stripped == "",
            # "name{...}", or "{..., __name__="name", ...}" as promtool tsdb dump writes it.
            name=pl.coalesce(pl.col("raw").str.extract(r"^[ \t]*([^ \t{#]+)"),
                             pl.col("raw").str.extract(r'^[ \t]*\{[^}]*?__name__="([^"]*)"')),
        )
        meta = frame.filter("is_meta")
        for line, raw in meta.select("line", "raw").iter_rows():
            self._meta(int(line), raw)
            if self._eof_line:
                after = frame.filter((pl.col("line") > self._eof_line) & ~pl.col("blank"))
                self._after_eof += after.height
                frame = frame.filter(pl.col("line") < self._eof_line)
                break
        blanks = frame.filter(pl.col("blank"))
        if blanks.height:
            self._count("blank", int(blanks["line"][0]), "blank lines, skipped", blanks.height)
        samples = frame.filter(~pl.col("is_meta") & ~pl.col("blank"))
        if samples.height == 0:
            return None, n
        for name in samples.get_column("name").unique().to_list():
            if name not in self._resolved:
                self._resolved[name] = self._resolve(name)
        res = self._resolved
        bare = [nm for nm in res if res[nm].bare_counter and res[nm].family not in self._bare]
        if bare:
            firsts = samples.filter(pl.col("name").is_in(bare)).group_by("name").agg(
                pl.col("line").min())
            for name, line in firsts.iter_rows():
                fam = res[name].family or name
                self._bare[fam] = min(self._bare.get(fam, int(line)), int(line))
        wanted = [nm for nm in res if res[nm].wanted]
        mine = samples.filter(pl.col("name").is_in(wanted))
        others = samples.height - mine.height
        if others and self.metrics is not None:
            # Not parsed, so a malformed line of a family no spec reads cannot stop a replay.
            self._skipped(samples.filter(~pl.col("name").is_in(wanted)))
        if mine.height == 0:
            return None, n
        return self._samples(mine), n

    def _skipped(self, others: pl.DataFrame) -> None:
        """Count lines of families nobody reads that would not parse (a cheap shape check)."""
        bad = others.filter(~pl.col("raw").str.contains(_SAMPLE_LINE))
        if bad.height:
            self._count("unread-bad", int(bad["line"][0]),
                        f"malformed line of {bad['name'][0]!r}, a family no spec reads; skipped",
                        bad.height)

    def _meta(self, line_no: int, raw: str) -> None:
        text = raw.strip()
        if text == "# EOF":
            self._eof_line = line_no
            return
        m = _META.match(text)
        if m is None or m.group(1) != "TYPE":
            return  # HELP, UNIT and plain comments say nothing a replay needs
        name, rest = m.group(2), (m.group(3) or "").strip()
        typ = rest.lower()
        if typ not in _KNOWN_TYPES:
            self._warnings.append(InputWarning(
                line_no, f"unknown type {rest!r} for {name!r}; its samples are read as untyped"))
            typ = "untyped"
        prev = self._families.get(name)
        if prev is None:
            self._families[name] = _FamilyInfo(name, typ, line_no)
        elif prev.type != typ:
            self._warnings.append(InputWarning(
                line_no, f"{name!r} declared {typ} here and {prev.type} at line {prev.line_no}; "
                "the first type is used"))

    def _resolve(self, name: str) -> _Resolved:
        """Family, output metric, kind and selection of a sample name."""
        family: str | None = None
        typ = "untyped"
        if name in self._families:
            family, typ = name, self._families[name].type
        else:
            for typ_name, suffixes in _SUFFIXES.items():
                for suffix in suffixes:
                    base = self._families.get(name[: -len(suffix)]) if suffix and \
                        name.endswith(suffix) else None
                    if base is not None and base.type == typ_name:
                        family, typ = base.name, base.type
                        break
                if family is not None:
                    break
        metric = name
        bare = typ == "counter" and not name.endswith(("_total", "_created"))
        # Without metadata (a promtool tsdb dump) a counter stored without _total is known
        # only by a spec asking for it with the suffix.
        asked = typ == "untyped" and self.metrics is not None and name not in self.metrics \
            and name + "_total" in self.metrics and not name.endswith("_total")
        if bare or asked:
            metric = name + "_total"
            typ = "counter" if asked else typ
        kind_type = "unknown" if typ in ("untyped", "unknown") else typ
        base_name = family or name
        if typ == "counter":
            base_name = base_name.removesuffix("_total")
        kind = sample_kind(kind_type, base_name, metric).value
        wanted = self.metrics is None or metric in self.metrics
        return _Resolved(metric, kind, family, wanted, bare)

    def _samples(self, mine: pl.DataFrame) -> pl.DataFrame:
        """The selected sample lines as a validated, origin-inferred sample frame."""
        groups = ["g_name", "g_block", "g_value", "g_ts"]
        dumped = pl.col("raw").str.strip_chars_start(" \t").str.starts_with("{")
        # promtool tsdb dump: the name inside the braces, ", " between pairs.
        text = pl.when(dumped).then(
            pl.col("name") + pl.col("raw").str.replace(r'__name__="[^"]*"(, )?', "")
            .str.replace(r', \}', "}").str.replace_all(r'", ([a-zA-Z_])', '",${1}')
        ).otherwise(pl.col("raw"))
        parsed = mine.with_columns(
            text.str.extract_groups(_SAMPLE_LINE).struct.rename_fields(groups)
            .alias("g")).unnest("g")
        fast = parsed.filter(pl.col("g_name").is_not_null())
        if self.unit is None:
            first = parsed.filter(pl.col("g_ts").is_not_null()).head(1)
            if first.height:
                self.unit = _unit_of(str(first["g_ts"][0]))
        unit: Unit = self.unit or "s"
        fast = fast.with_columns(
            value=pl.col("g_value").cast(pl.Float64, strict=False),
            ts_ms=_ts_ms(pl.col("g_ts"), unit),
            strict_block=pl.col("g_block").is_null()
            | pl.col("g_block").str.contains(_STRICT_BLOCK),
        )
        problems: list[_Problem] = []
        for cond, reason in (
            (pl.col("value").is_null(), "value {g_value!r} is not a number"),
            (pl.col("g_ts").is_null(), "sample without a timestamp (a replay needs the time of "
                                       "every point, as Prometheus exports it)"),
            (pl.col("g_ts").is_not_null() & pl.col("ts_ms").is_null(),
             "timestamp {g_ts!r} is not a number"),
        ):
            hit = fast.filter(pl.col("strict_block") & cond).head(1)
            if hit.height:
                row = hit.row(0, named=True)
                problems.append((int(row["line"]), row["raw"], reason.format(**row)))
        hard = pl.concat([
            parsed.filter(pl.col("g_name").is_null()).select("line", "raw", "name"),
            fast.filter(~pl.col("strict_block")).select("line", "raw", "name"),
        ]).sort("line")
        fast = fast.filter(pl.col("strict_block") & pl.col("value").is_not_null()
                           & pl.col("ts_ms").is_not_null())
        rows = self._fast_frame(fast)
        if hard.height:
            hard_rows, hard_problems = self._hard_frame(hard)
            problems += hard_problems
            if hard_rows.height:
                rows = pl.concat([rows, hard_rows]).sort("line")
        ms = rows.get_column("ts").dt.epoch("ms")
        bad = (ms < _EARLIEST_MS) | (ms > _now_ms(self.now))
        if bad.any():
            i = int(bad.arg_max() or 0)
            problems.append((int(rows["line"][i]), rows["raw"][i],
                             implausible_time(int(ms[i]), self.now) or "implausible time"))
        if problems:
            raise self._error(min(problems))
        rows = self._bounded(rows)
        if rows.height == 0:
            return pl.DataFrame(schema=SAMPLE_SCHEMA)
        self.samples_read += rows.height
        out = infer_origin(rows.drop("line", "raw").cast(SAMPLE_SCHEMA))
        if self.metrics is not None:
            out = out.filter(pl.col("metric").is_in(list(self.metrics)))
        return validate(out)

    def _fast_frame(self, fast: pl.DataFrame) -> pl.DataFrame:
        """Sample rows from lines in the common shape, labels decoded once per block."""
        blocks = fast.select(pl.col("g_block").drop_nulls().unique())
        pairs = (
            blocks.with_columns(pl.col("g_block").str.extract_all(_PAIR).alias("pair"))
            .explode("pair").drop_nulls("pair")
            .with_columns(pl.col("pair").str.splitn("=", 2).alias("kv"))
            .select("g_block",
                    pl.col("kv").struct.field("field_0").alias("name"),
                    pl.col("kv").struct.field("field_1").str.slice(1).str.strip_suffix('"')
                    .alias("value"))
            .sort("g_block", "name")
        )
        table = pairs.group_by("g_block").agg(pl.struct("name", "value").alias("labels"))
        res = self._resolved
        names = fast.get_column("name").unique().to_list()
        meta = pl.DataFrame({"name": names, "metric": [res[n].metric for n in names],
                             "kind": [res[n].kind for n in names]},
                            schema={"name": pl.String, "metric": pl.String, "kind": pl.String})
        return fast.join(table, on="g_block", how="left").join(meta, on="name", how="left").select(
            pl.col("line").cast(pl.UInt32), "raw",
            pl.col("ts_ms").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias("ts"),
            pl.lit("").alias("node"), pl.lit("").alias("source"),
            "metric", pl.col("kind").cast(SAMPLE_SCHEMA["kind"]), "value",
            pl.lit("").alias("entity"),
            pl.col("labels").fill_null(pl.lit([], dtype=SAMPLE_SCHEMA["labels"]))
            .cast(SAMPLE_SCHEMA["labels"]),
        )

    def _hard_frame(self, hard: pl.DataFrame) -> tuple[pl.DataFrame, list[_Problem]]:
        """Lines outside the common shape (escapes, odd spacing) by prometheus_client's parsers."""
        rows: list[tuple[object, ...]] = []
        problems: list[_Problem] = []
        for line_no, raw, name in hard.iter_rows():
            got = self._hard_line(int(line_no), raw, name)
            if isinstance(got, str):
                problems.append((int(line_no), raw, got))
            else:
                rows.append(got)
        frame = pl.DataFrame(
            rows, schema={"line": pl.UInt32, "raw": pl.String, "ts": pl.Int64,
                          "node": pl.String, "source": pl.String, "metric": pl.String,
                          "kind": pl.String, "value": pl.Float64, "entity": pl.String,
                          "labels": SAMPLE_SCHEMA["labels"]}, orient="row",
        ).with_columns(pl.col("ts").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
                       pl.col("kind").cast(SAMPLE_SCHEMA["kind"]))
        return frame, problems

    def _hard_line(self, line_no: int, raw: str, name: str | None) -> tuple[object, ...] | str:
        """One line by the reference parser; the reason it is not a sample otherwise."""
        text = raw.strip()
        if self.unit is None:
            token = _last_token(text)
            if token is not None:
                self.unit = _unit_of(token)
        try:
            fams = list(text_families(text + "\n") if self.unit == "ms"
                        else om_families(text + "\n# EOF\n"))
        except (ValueError, IndexError, TypeError) as exc:
            return f"not a sample line ({exc or 'malformed'})"
        samples = [s for fam in fams for s in fam.samples]
        if len(samples) != 1:
            return "not a sample line"
        s = samples[0]
        if s.timestamp is None:
            return ("sample without a timestamp (a replay needs the time of every point, as "
                    "Prometheus exports it)")
        ts = s.timestamp
        if hasattr(ts, "sec"):
            ms = int(ts.sec) * 1000 + int(ts.nsec) // 1_000_000
        else:
            ms = math.floor(float(ts) * 1000)
        res = self._resolved.get(name or s.name) or self._resolve(s.name)
        labels = [{"name": k, "value": v} for k, v in sorted(s.labels.items())]
        return (line_no, raw, ms, "", "", res.metric, res.kind, float(s.value), "", labels)

    def _bounded(self, rows: pl.DataFrame) -> pl.DataFrame:
        if self.not_before is None and self.not_after is None:
            return rows
        cond = pl.lit(True)
        if self.not_before is not None:
            cond &= pl.col("ts") >= self.not_before
        if self.not_after is not None:
            cond &= pl.col("ts") <= self.not_after
        return rows.filter(cond)


def _last_token(text: str) -> str | None:
    """The timestamp token of a sample line (before an exemplar), or None."""
    body = text.split(" # ", 1)[0].rstrip()
    close = body.rfind("}")
    tail = body[close + 1:] if close >= 0 else body.split(None, 1)[1] if " " in body else ""
    parts = tail.split()
    return parts[1] if len(parts) >= 2 else None


def iter_exposition_frames(
    path: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    metrics: Collection[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
    warnings: list[InputWarning] | None = None,
) -> Iterator[pl.DataFrame]:
    """Sample frames of an exposition file, a chunk at a time (see :class:`ExpositionReader`).

    ``warnings``, when given, receives the reader's warnings once the file is read.

    Raises:
        OpenMetricsInputError: unreadable, malformed where it matters, or implausible times.
    """
    reader = ExpositionReader(path, metrics=metrics, not_before=not_before,
                              not_after=not_after, now=now, chunk_bytes=chunk_bytes)
    yield from reader.frames(progress)
    if warnings is not None:
        warnings.extend(reader.warnings)


def read_exposition(
    path: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    metrics: Collection[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
    warnings: list[InputWarning] | None = None,
) -> pl.DataFrame:
    """The whole file as one validated sample frame (see :func:`iter_exposition_frames`)."""
    frames = list(iter_exposition_frames(
        path, chunk_bytes=chunk_bytes, progress=progress, metrics=metrics,
        not_before=not_before, not_after=not_after, now=now, warnings=warnings))
    if not frames:
        return pl.DataFrame(schema=SAMPLE_SCHEMA)
    return validate(pl.concat(frames, rechunk=True))


# ------------------------------------------------------------------------------------------
# Sample-frame files (Parquet, Arrow IPC)
# ------------------------------------------------------------------------------------------


def _conform(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    try:
        if "kind" in frame.columns and frame.schema["kind"] != SAMPLE_SCHEMA["kind"]:
            frame = frame.with_columns(pl.col("kind").cast(pl.String).cast(SAMPLE_SCHEMA["kind"]))
        if "ts" in frame.columns and frame.schema["ts"] != SAMPLE_SCHEMA["ts"]:
            frame = frame.with_columns(pl.col("ts").cast(SAMPLE_SCHEMA["ts"]))
        return validate(frame)
    except (SchemaError, pl.exceptions.PolarsError) as exc:
        raise OpenMetricsInputError(f"{path}: {exc}") from exc


def _scan(path: Path) -> pl.LazyFrame | None:
    """A lazy scan of a Parquet or Arrow IPC file; None for an Arrow IPC stream."""
    with path.open("rb") as f:
        head = f.read(6)
    if head[:4] == b"PAR1":
        return pl.scan_parquet(path)
    if head == b"ARROW1":
        return pl.scan_ipc(path)
    return None


def iter_sample_file(
    path: Path,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    metrics: Collection[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> Iterator[pl.DataFrame]:
    """Sample frames from a Parquet or Arrow IPC (file or stream) file, a batch at a time.

    Only ``metrics`` are kept (None: all) and only times in ``[not_before,
    not_after]`` (both pushed down into the scan, so row groups outside are not
    decoded); times before 2000 or in the future are refused.

    Raises:
        OpenMetricsInputError: unreadable, another format, other columns, or implausible times.
    """
    try:
        total = path.stat().st_size
        lazy = _scan(path)
        if lazy is None:  # a stream has no index to scan: read it whole
            lazy = pl.read_ipc_stream(path).lazy()
        # Columns first: a file of something else is named as such, not by a query plan.
        _conform(pl.DataFrame(schema=lazy.collect_schema()), path)
        cond = pl.lit(True)
        if metrics is not None:
            cond &= pl.col("metric").is_in(list(metrics))
        if not_before is not None:
            cond &= pl.col("ts") >= not_before
        if not_after is not None:
            cond &= pl.col("ts") <= not_after
        checked = 0
        for batch in lazy.filter(cond).collect_batches(chunk_size=batch_rows):
            frame = _conform(batch, path)
            check_sample_times(frame, f"{path} (rows from {checked + 1} selected)", now)
            checked += frame.height
            if frame.height:
                yield frame
            if progress is not None:
                progress(0, total)
        if progress is not None:
            progress(total, total)
    except OSError as exc:
        raise OpenMetricsInputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except pl.exceptions.PolarsError as exc:
        raise OpenMetricsInputError(
            f"{path}: not a Parquet or Arrow IPC file of samples: {exc}") from exc


def read_history(path: Path, progress: Progress | None = None) -> pl.DataFrame:
    """Every sample of a replay input as one frame (small inputs and tests; replay streams)."""
    frames = list(iter_replay_input(path, progress=progress))
    if not frames:
        return pl.DataFrame(schema=SAMPLE_SCHEMA)
    return validate(pl.concat(frames, rechunk=True))


def iter_replay_input(
    path: Path,
    *,
    metrics: Collection[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
    warnings: list[InputWarning] | None = None,
) -> Iterator[pl.DataFrame]:
    """Sample frames of any replay input: exposition text, or Parquet / Arrow sample files."""
    if is_exposition_file(path):
        yield from iter_exposition_frames(path, progress=progress, metrics=metrics,
                                          not_before=not_before, not_after=not_after, now=now,
                                          warnings=warnings)
    else:
        yield from iter_sample_file(path, metrics=metrics, not_before=not_before,
                                    not_after=not_after, now=now, progress=progress)


__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_CHUNK_BYTES",
    "EARLIEST",
    "GENERIC_SOURCE",
    "ExpositionReader",
    "InputWarning",
    "OpenMetricsInputError",
    "check_sample_times",
    "implausible_time",
    "infer_origin",
    "is_exposition_file",
    "iter_exposition_frames",
    "iter_replay_input",
    "iter_sample_file",
    "node_expr",
    "read_exposition",
    "read_history",
    "replay_metrics",
    "source_expr",
]

