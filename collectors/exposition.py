"""Fast, exact parser for the Prometheus text format 0.0.4 and OpenMetrics 1.0.

Why this exists: ``prometheus_client``'s parsers run at roughly 40-50 k samples
per second per core, which a node agent scraping several large exporters every
few seconds cannot afford.  This module produces the *same samples* (names,
labels, values including NaN, timestamps, family kinds) but builds the sample
frame column-wise with Polars instead of one Python object per sample.

How it stays exact:

* Every line is matched against one strict regular expression covering the
  common shape (``name{a="b",...} value [timestamp]`` with plain ASCII spacing,
  no backslash in label values, ordinary numbers).  Lines that match are
  decoded vectorised; label blocks are decoded once per *distinct* block, since
  exporters repeat the same block for every family of a device.
* Every other line (comments, escapes, odd spacing, exemplars, unusual numbers,
  outright garbage) goes to the slow path: ``prometheus_client``'s own
  line-level functions, so the rare hard cases behave exactly like the
  reference by construction.
* The family state machine (``# HELP``/``# TYPE`` grouping, the reference's
  "untyped singleton" fallback, counter ``_total`` munging) runs in Python over
  comment lines and over *runs* of sample lines summarised by their distinct
  names, so it costs per family, not per sample.

Errors are :class:`ExpositionError` (a ``ValueError``) naming the 1-based line
number and the line, and are raised for the line on which the reference parser
would raise first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, count, repeat
from operator import add as _add
from operator import eq as _eq
from operator import ge as _ge
from operator import getitem as _getitem
from operator import itemgetter, methodcaller
from operator import not_ as _not
from operator import sub as _sub
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import parser as _prom_text
from prometheus_client.metrics_core import METRIC_TYPES
from prometheus_client.openmetrics import parser as _prom_om
from prometheus_client.samples import Timestamp

from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, Kind

__all__ = [
    "ExpositionError", "ShapeCache", "detect_openmetrics", "parse_exposition", "parse_text",
    "sample_kind", "ts_column",
]


class ExpositionError(InputError):
    """A payload that is not valid exposition text; names the offending line.

    Attributes:
        line_no: 1-based line number (0 when the problem is the payload as a
            whole, e.g. a missing ``# EOF``).
        line: the offending line as received (without its newline).
    """

    def __init__(self, line_no: int, line: str, reason: str) -> None:
        self.line_no = line_no
        self.line = line
        self.reason = reason
        where = f"line {line_no}: {line[:200]!r}: " if line_no else ""
        super().__init__(f"{where}{reason}")


# --- kinds -------------------------------------------------------------------------------------

_SUFFIX_KIND: dict[str, dict[str, Kind]] = {
    "histogram": {"_bucket": Kind.HISTOGRAM_BUCKET, "_sum": Kind.HISTOGRAM_SUM,
                  "_count": Kind.HISTOGRAM_COUNT, "_created": Kind.GAUGE},
    "gaugehistogram": {"_bucket": Kind.HISTOGRAM_BUCKET, "_gsum": Kind.HISTOGRAM_SUM,
                       "_gcount": Kind.HISTOGRAM_COUNT},
    "summary": {"_sum": Kind.SUMMARY_SUM, "_count": Kind.SUMMARY_COUNT, "_created": Kind.GAUGE},
    "counter": {"_total": Kind.COUNTER, "_created": Kind.GAUGE},
}
_TYPE_KIND: dict[str, Kind] = {
    "counter": Kind.COUNTER,
    "gauge": Kind.GAUGE,
    "summary": Kind.SUMMARY_QUANTILE,
    "histogram": Kind.HISTOGRAM_BUCKET,
    "gaugehistogram": Kind.HISTOGRAM_BUCKET,
}


def sample_kind(family_type: str, family_name: str, sample_name: str) -> Kind:
    """The sample's kind from its family type and the suffix it carries.

    Kept here (the pure parsing module) so the fetch shells can import it
    without importing each other.
    """
    suffix = sample_name[len(family_name):] if sample_name.startswith(family_name) else ""
    by_suffix = _SUFFIX_KIND.get(family_type, {})
    if suffix in by_suffix:
        return by_suffix[suffix]
    return _TYPE_KIND.get(family_type, Kind.UNTYPED)


# --- the common line shapes --------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# A label block whose quotes pair up and hold no backslash; its inside is checked
# strictly (per distinct block) later.
_BLOCK = r'\{(?:[^"\\{}]|"[^"\\]*")*\}'
# Numbers that Python's int()/float() and Polars' cast agree on.
_VALUE = (r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
          r"|Inf|inf|NaN|nan)")
# Text format: integer milliseconds small enough to stay exact in a float64.
_TEXT_TS = r"-?[0-9]{1,15}"
# OpenMetrics: non-negative seconds with an optional fraction (nanosecond resolution).
_OM_TS = r"[0-9]{1,12}(?:\.[0-9]{1,9})?"

_SAMPLE_HEAD = rf"(?P<name>{_NAME})(?P<block>{_BLOCK})? (?P<value>{_VALUE})"
# Metadata lines in their plain shape; anything else starting with "#" takes the slow path.
_TEXT_META = rf"# (?P<kw>HELP|TYPE) (?P<mname>{_NAME})(?: (?P<mrest>[!-~].*))?"
_OM_META = rf"# (?P<kw>HELP|TYPE|UNIT) (?P<mname>{_NAME}) (?P<mrest>[!-~].*)"
_TEXT_LINE_RE = rf"^(?:{_SAMPLE_HEAD}(?: (?P<ts>{_TEXT_TS}))?|{_TEXT_META})$"
_OM_LINE_RE = rf"^(?:{_SAMPLE_HEAD}(?: (?P<ts>{_OM_TS}))?|{_OM_META})$"

# A label name that needs no validation beyond this: legacy charset, not reserved (``__``).
_LNAME = r"(?:[a-zA-Z][a-zA-Z0-9_]*|_[a-zA-Z0-9][a-zA-Z0-9_]*|_)"
_PAIR = rf'{_LNAME}="[^"\\]*"'
_TEXT_STRICT_BLOCK_RE = rf"^\{{(?:{_PAIR}(?:,{_PAIR})*,?)?\}}$"
_OM_STRICT_BLOCK_RE = rf"^\{{(?:{_PAIR}(?:,{_PAIR})*)?\}}$"
_PAIR_RE = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'

_LABEL_STRUCT = pl.Struct({"name": pl.String, "value": pl.String})

_OM_TYPE_SUFFIXES: dict[str, list[str]] = {
    "counter": ["_total", "_created"],
    "summary": ["", "_count", "_sum", "_created"],
    "histogram": ["_count", "_sum", "_bucket", "_created"],
    "gaugehistogram": ["_gcount", "_gsum", "_bucket"],
    "info": ["_info"],
}
_TEXT_ALLOWED: dict[str, list[str]] = {
    "counter": [""],
    "gauge": [""],
    "summary": ["_count", "_sum", ""],
    "histogram": ["_count", "_sum", "_bucket"],
}


def detect_openmetrics(text: str, content_type: str | None = None) -> bool:
    """Whether a payload is OpenMetrics: by content type when known, else by its ``# EOF``."""
    if content_type is not None:
        return "openmetrics" in content_type.lower()
    tail = text[-16:].rstrip("\n")
    return tail.endswith("# EOF") and (len(tail) == 5 or tail[-6] == "\n")


# --- slow-path records and the family state machine --------------------------------------------


@dataclass
class _Family:
    """One metric family as the reference would build it (name and type at yield time)."""

    name: str
    typ: str
    line_no: int  # where it started, for error messages
    line: str


@dataclass
class _Slow:
    """A sample line parsed by the reference's own line parser."""

    line_no: int
    name: str
    labels: dict[str, str]
    value: float
    ts_ms: int | None


@dataclass
class _Plan:
    """Output of the state machine: which family every sample belongs to.

    ``segments`` are ``(first line, family id)`` in line order: a fast sample
    belongs to the last segment that starts at or before its line; family id
    -1 means "an untyped family of its own" (the reference's singleton).
    """

    families: list[_Family] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)
    slow_fid: dict[int, int] = field(default_factory=dict)  # slow line number -> family id
    # (line where the reference raises, line to name, its text, reason)
    errors: list[tuple[int, int, str, str]] = field(default_factory=list)


_NO_FAIL = 1 << 62
_FirstAfter = Callable[[str, int], int]  # (name, line) -> first line >= it with that name


_TS_MIN_MS, _TS_MAX_MS = -(2**63), 2**63 - 1


def _text_ts_ms(ts: Any) -> int:
    """What the reference parser does with a text-format timestamp."""
    return int(ts * 1000)


def _om_ts_ms(ts: Any) -> int:
    """Milliseconds of an OpenMetrics timestamp, truncated; exact for ``sec.frac`` forms."""
    if isinstance(ts, Timestamp):
        return ts.sec * 1000 + int(ts.nsec / 1_000_000)
    return int(ts * 1000)


def _slow_sample(line_no: int, line: str, openmetrics: bool, typ: str | None) -> _Slow:
    """Parse one hard sample line with the reference's own line parser."""
    try:
        if openmetrics:
            sample = None
            if typ == "histogram":
                sample = _prom_om._parse_nh_sample(line, tuple(_OM_TYPE_SUFFIXES["histogram"]))
                if sample is not None and sample.native_histogram is not None:
                    raise ExpositionError(line_no, line, "native histograms are not supported")
            if sample is None:
                sample = _prom_om._parse_sample(line)
            ts_ms = None if sample.timestamp is None else _om_ts_ms(sample.timestamp)
        else:
            sample = _prom_text._parse_sample(line)
            ts_ms = None if sample.timestamp is None else _text_ts_ms(sample.timestamp)
        if ts_ms is not None and not _TS_MIN_MS <= ts_ms <= _TS_MAX_MS:
            # The reference keeps any integer; the frame's ts is 64-bit milliseconds.
            raise ExpositionError(line_no, line, "timestamp out of range (64-bit milliseconds)")
        return _Slow(line_no, sample.name, dict(sample.labels), float(sample.value), ts_ms)
    except ExpositionError:
        raise
    except Exception as exc:  # the reference's line functions raise KeyError too, for one
        reason = f"{type(exc).__name__}: {exc}" if exc.args else type(exc).__name__
        raise ExpositionError(line_no, line, f"invalid sample line ({reason})") from exc


def _is_legacy_name(name: str) -> bool:
    return bool(_prom_text._is_valid_legacy_metric_name(name))


def _meta_name(line_no: int, line: str, token: str) -> str:
    if not token.strip():
        # Separators Python's split() and strip() take for blanks (e.g. \x1c) can leave
        # no name, on which the reference's _unquote_unescape raised IndexError.
        raise ExpositionError(line_no, line, "missing metric name")
    try:
        candidate, quoted = _prom_text._unquote_unescape(token)
    except (ValueError, IndexError) as exc:
        raise ExpositionError(line_no, line, f"invalid metric name ({exc})") from exc
    if not quoted and not _is_legacy_name(candidate):
        raise ExpositionError(line_no, line, f"invalid metric name {candidate!r}")
    return str(candidate)


class _TextMachine:
    """The family grouping of ``prometheus_client.parser.text_fd_to_metric_families``."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.name = ""
        self.allowed: list[str] = []
        self.fid = -1

    @property
    def typ(self) -> str | None:
        return None

    def _close(self, at_line: int) -> None:
        """Yield the current family; the reference validates it at this point."""
        if self.name == "":
            return
        fam = self.plan.families[self.fid]
        fname = fam.name[:-6] if fam.typ == "counter" and fam.name.endswith("_total") else fam.name
        if fam.typ != "untyped" and fam.typ not in METRIC_TYPES:
            self.plan.errors.append((at_line, fam.line_no, fam.line,
                                     f"invalid metric type {fam.typ!r}"))
        elif not fname:
            self.plan.errors.append((at_line, fam.line_no, fam.line, "empty metric name"))

    def _new(self, name: str, line_no: int, line: str) -> None:
        self.plan.families.append(_Family(name, "untyped", line_no, line))
        self.fid = len(self.plan.families) - 1
        self.name = name

    def comment(self, line_no: int, line: str) -> None:
        """A comment line the vectorised pass could not classify."""
        parts = _prom_text._split_quoted(line, None, 3)
        if len(parts) < 2:
            return
        candidate = ""
        if len(parts) > 2:
            if parts[1] not in ("TYPE", "HELP"):
                return
            candidate = _meta_name(line_no, line, parts[2])
        if parts[1] in ("TYPE", "HELP"):
            self.meta(line_no, line, parts[1], candidate, parts[3] if len(parts) == 4 else None)

    def meta(self, line_no: int, line: str, kw: str, candidate: str, rest: str | None) -> None:
        """A ``# HELP``/``# TYPE`` line: may close the family and open another."""
        if kw == "HELP":
            if candidate != self.name:
                self._close(line_no)
                self._new(candidate, line_no, line)
                self.allowed = [candidate]
        else:
            if rest is None:
                raise ExpositionError(line_no, line, "TYPE line without a type")
            if candidate != self.name:
                self._close(line_no)
                self._new(candidate, line_no, line)
            fam = self.plan.families[self.fid]
            fam.typ, fam.line_no, fam.line = rest, line_no, line
            self.allowed = [self.name + suffix for suffix in _TEXT_ALLOWED.get(rest, [""])]

    def _reset(self, line_no: int) -> None:
        self._close(line_no)
        self.name = ""
        self.allowed = []
        self.fid = -1

    def run(
        self, firsts: list[tuple[int, int, str]], first_after: Callable[[str, int], int]
    ) -> None:
        """A run of fast sample lines, summarised as (first line, last line, name)."""
        fail = min((f for f, _, n in firsts if n not in self.allowed), default=_NO_FAIL)
        self.plan.segments.append((firsts[0][0], self.fid))
        if fail != _NO_FAIL:
            self._reset(fail)
            self.plan.segments.append((fail, -1))

    def slow(self, s: _Slow) -> None:
        if s.name not in self.allowed:
            self._reset(s.line_no)
            self.plan.slow_fid[s.line_no] = -1
        else:
            self.plan.slow_fid[s.line_no] = self.fid

    def end(self, last_line: int) -> None:
        self._close(last_line + 1)


class _OmMachine:
    """The family grouping and metadata rules of ``prometheus_client.openmetrics.parser``.

    Not replicated (documented in the module's report): histogram bucket
    checks, group ordering and timestamp monotonicity, per-sample value rules
    (negative or NaN counters, non-integer buckets) and the de-duplication of
    repeated series within a group.
    """

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.name: str | None = None
        self.typ: str | None = None
        self.unit: str | None = None
        self.doc = False
        self.allowed: list[str] = []
        self.fid = -1
        self.has_samples = False
        self.seen: set[str] = set()

    def _close(self, line_no: int, line: str) -> None:
        if self.name is None:
            return
        typ = self.typ or "unknown"
        for suffix in {*_OM_TYPE_SUFFIXES.get(typ, []), ""}:
            if self.name + suffix in self.seen:
                raise ExpositionError(line_no, line, f"clashing name {self.name + suffix!r}")
            self.seen.add(self.name + suffix)
        if self.unit and not self.name.endswith("_" + self.unit):
            raise ExpositionError(line_no, line, f"unit does not match metric name {self.name!r}")
        if self.unit and typ in ("info", "stateset"):
            raise ExpositionError(line_no, line, f"units not allowed for {typ} {self.name!r}")
        if typ not in METRIC_TYPES:
            raise ExpositionError(line_no, line, f"invalid metric type {typ!r}")
        self.plan.families[self.fid].typ = typ

    def _new(self, name: str, typ: str | None, line_no: int, line: str) -> None:
        self.plan.families.append(_Family(name, typ or "unknown", line_no, line))
        self.fid = len(self.plan.families) - 1
        self.name, self.typ, self.unit, self.doc = name, typ, None, False
        self.allowed = [name]
        self.has_samples = False

    def comment(self, line_no: int, line: str) -> None:
        """A metadata line the vectorised pass could not classify."""
        parts = _prom_text._split_quoted(line, " ", 3)
        if len(parts) < 4:
            raise ExpositionError(line_no, line, "invalid metadata line")
        self.meta(line_no, line, parts[1], _meta_name(line_no, line, parts[2]), parts[3])

    def meta(self, line_no: int, line: str, kw: str, candidate: str, rest: str | None) -> None:
        """A ``# HELP``/``# TYPE``/``# UNIT`` line."""
        if rest is None:
            raise ExpositionError(line_no, line, "invalid metadata line")
        if candidate == self.name and self.has_samples:
            raise ExpositionError(line_no, line, "metadata after samples")
        if candidate != self.name:
            self._close(line_no, line)
            self._new(candidate, None, line_no, line)
        if kw == "HELP":
            if self.doc:
                raise ExpositionError(line_no, line, "more than one HELP")
            self.doc = True
        elif kw == "TYPE":
            if self.typ is not None:
                raise ExpositionError(line_no, line, "more than one TYPE")
            if rest == "untyped":
                raise ExpositionError(line_no, line, "invalid TYPE 'untyped'")
            self.typ = rest
            self.allowed = [candidate + suffix for suffix in _OM_TYPE_SUFFIXES.get(rest, [""])]
        elif kw == "UNIT":
            if self.unit is not None:
                raise ExpositionError(line_no, line, "more than one UNIT")
            self.unit = rest
        else:
            raise ExpositionError(line_no, line, "invalid metadata line")

    def _unknown(self, name: str, line_no: int, line: str) -> None:
        self._close(line_no, line)
        self._new(name, "unknown", line_no, line)
        self.has_samples = True

    def run(
        self, firsts: list[tuple[int, int, str]], first_after: Callable[[str, int], int]
    ) -> None:
        # A name outside the family starts an "unknown" family of its own; a name
        # seen before that switch and again after it is a clash in the reference.
        self.plan.segments.append((firsts[0][0], self.fid))
        switches: list[int] = []
        owner: list[tuple[int, int, str]] = []  # (last line, switch index, name)
        for first, last, name in firsts:
            if name not in self.allowed:
                self._unknown(name, first, "")
                self.plan.segments.append((first, self.fid))
                switches.append(first)
            owner.append((last, len(switches), name))
        for last, idx, name in owner:
            if idx < len(switches) and last >= switches[idx]:
                bad = first_after(name, switches[idx])
                raise ExpositionError(bad, "", f"clashing name {name!r} (samples interleaved)")
        self.has_samples = True

    def slow(self, s: _Slow) -> None:
        if s.name not in self.allowed:
            self._unknown(s.name, s.line_no, "")
        self.has_samples = True
        self.plan.slow_fid[s.line_no] = self.fid

    def end(self, last_line: int) -> None:
        self._close(last_line + 1, "")


# --- the vectorised path -----------------------------------------------------------------------


def _decode_blocks(
    blocks_lf: pl.LazyFrame, *, openmetrics: bool, entity_label: str | None
) -> tuple[pl.DataFrame, dict[str, str]]:
    """Decode each distinct label block once.

    Returns ``(table, errors)``: the table has columns ``block``, ``labels``
    (sorted list of {name, value}) and ``entity``; ``errors`` maps a block that
    the reference rejects to the reason.  Blocks in the strict common shape are
    decoded vectorised; the rest (and any with a repeated name) by the
    reference's own ``parse_labels``.
    """
    strict_re = _OM_STRICT_BLOCK_RE if openmetrics else _TEXT_STRICT_BLOCK_RE
    ub = blocks_lf.with_columns(pl.col("block").str.contains(strict_re).alias("strict")).cache()
    strict = ub.filter("strict").select("block").with_row_index("bid")
    pairs = (
        strict.select("bid", pl.col("block").str.extract_all(_PAIR_RE).alias("pair"))
        .explode("pair")
        .drop_nulls("pair")
        .with_columns(pl.col("pair").str.splitn("=", 2).alias("kv"))
        .select(
            "bid",
            pl.col("kv").struct.field("field_0").alias("name"),
            pl.col("kv").struct.field("field_1").str.strip_prefix('"').str.strip_suffix('"')
            .alias("value"),
        )
        .sort("bid", "name")
    )
    entity = (pl.col("value").filter(pl.col("name") == entity_label).first()
              if entity_label else pl.lit(""))
    decoded = pairs.group_by("bid", maintain_order=True).agg(
        pl.struct("name", "value").alias("labels"),
        entity.alias("entity"),
        (pl.len() != pl.col("name").n_unique()).alias("dup"),
    )
    joined = strict.join(decoded, on="bid", how="left").select(
        "block",
        pl.col("labels").fill_null(pl.lit([], dtype=pl.List(_LABEL_STRUCT))),
        pl.col("entity").fill_null(""),
        pl.col("dup").fill_null(False),
    )
    hard_lf = ub.filter(~pl.col("strict")).select("block")
    joined_df, hard_df = pl.collect_all([joined, hard_lf], engine="in-memory")
    table = joined_df.filter(~pl.col("dup")).drop("dup")
    hard = hard_df["block"].to_list() + joined_df.filter("dup")["block"].to_list()
    errors: dict[str, str] = {}
    rows: list[tuple[str, list[dict[str, str]], str]] = []
    for block in hard:
        try:
            labels = _prom_text.parse_labels(block[1:-1], openmetrics)
        except (ValueError, IndexError) as exc:
            errors[block] = f"invalid labels ({exc})"
            continue
        if "__name__" in labels:
            errors[block] = "metric name specified more than once"
            continue
        ent = labels.get(entity_label, "") if entity_label else ""
        rows.append((block, [{"name": k, "value": labels[k]} for k in sorted(labels)], ent))
    if rows:
        extra = pl.DataFrame(
            {"block": [r[0] for r in rows], "labels": [r[1] for r in rows],
             "entity": [r[2] for r in rows]},
            schema={"block": pl.String, "labels": pl.List(_LABEL_STRUCT), "entity": pl.String},
        )
        table = pl.concat([table, extra], how="vertical")
    return table, errors


def _empty_result() -> pl.DataFrame:
    return pl.DataFrame(schema=SAMPLE_SCHEMA)


def parse_exposition(
    text: str | bytes,
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None = None,
    openmetrics: bool | None = None,
    shape_cache: ShapeCache | None = None,
) -> pl.DataFrame:
    """Parse a Prometheus text 0.0.4 or OpenMetrics 1.0 payload into a sample frame.

    Same samples as the reference parser
    (:func:`gpuslo.collectors.reference.parse_text_reference`): one row per
    sample in payload order; ``kind`` from the family type and the sample's
    suffix; samples without a timestamp get ``scrape_ts_ms``; ``entity`` is the
    value of ``entity_label`` (empty string when absent or not asked for).

    Args:
        text: the payload (``bytes`` are decoded as UTF-8).
        openmetrics: ``True``/``False`` when the caller knows the format (from
            the response's content type, see :func:`detect_openmetrics`);
            ``None`` detects it from a final ``# EOF`` line.
        shape_cache: the target's :class:`ShapeCache` (a scrape loop keeps one
            per target); ``None`` keeps nothing between calls.

    Raises:
        ExpositionError: the payload is malformed; the message names the
            first line on which the reference parser would fail.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExpositionError(0, "", f"payload is not UTF-8 ({exc})") from exc
    if openmetrics is None:
        openmetrics = detect_openmetrics(text)
    if shape_cache is not None:
        shape_cache.last = None  # set again only by a parse that used the cache
    if not openmetrics:
        simple = _parse_simple(text, node=node, source=source, scrape_ts_ms=scrape_ts_ms,
                               entity_label=entity_label, shape_cache=shape_cache)
        if simple is not None:
            return simple
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()  # the newline ending the last line does not start another
    try:
        return _parse(raw_lines, node=node, source=source, scrape_ts_ms=scrape_ts_ms,
                      entity_label=entity_label, openmetrics=openmetrics)
    except ExpositionError as exc:
        if exc.line_no and not exc.line and exc.line_no <= len(raw_lines):
            raise ExpositionError(exc.line_no, raw_lines[exc.line_no - 1], exc.reason) from exc
        raise


def parse_text(
    text: str | bytes,
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None = None,
    openmetrics: bool | None = False,
    shape_cache: ShapeCache | None = None,
) -> pl.DataFrame:
    """:func:`parse_exposition` with the reference parser's default: text format.

    What callers that stand in for the reference use (it reads ``# EOF`` as a
    comment unless told the payload is OpenMetrics).
    """
    return parse_exposition(text, node=node, source=source, scrape_ts_ms=scrape_ts_ms,
                            entity_label=entity_label, openmetrics=openmetrics,
                            shape_cache=shape_cache)


def _parse(
    raw_lines: list[str],
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None,
    openmetrics: bool,
) -> pl.DataFrame:
    if not raw_lines:
        if openmetrics:
            raise ExpositionError(0, "", "missing # EOF at end")
        return _empty_result()
    s = pl.col("raw") if openmetrics else pl.col("raw").str.strip_chars(" \t\r")
    regex = _OM_LINE_RE if openmetrics else _TEXT_LINE_RE
    is_fast = pl.col("name").is_not_null()
    is_event = ~is_fast if openmetrics else (~is_fast & (pl.col("s") != ""))
    lines = (
        pl.LazyFrame({"raw": raw_lines}, schema={"raw": pl.String})
        .with_row_index("line", offset=1)
        .with_columns(s.alias("s"))
        .with_columns(pl.col("s").str.extract_groups(regex).alias("g"))
        .unnest("g")
        .with_columns(is_event.alias("event"))
        .with_columns(pl.col("event").cast(pl.UInt32).cum_sum().alias("run"))
        .cache()
    )
    fast_lf = lines.filter(is_fast).select("line", "run", "name", "block", "value", "ts")
    events_lf = lines.filter("event").select("line", "raw", "kw", "mname", "mrest")
    firsts_lf = (
        fast_lf.group_by("run", "name")
        .agg(pl.col("line").min().alias("first"), pl.col("line").max().alias("last"))
        .sort("first")
    )
    fast, events, firsts = pl.collect_all([fast_lf, events_lf, firsts_lf], engine="in-memory")

    errors: list[tuple[int, int, str, str]] = []  # (raise line, line, text, reason)

    # Label blocks, once per distinct block.
    table, block_errors = _decode_blocks(fast.lazy().select(pl.col("block").drop_nulls().unique()),
                                         openmetrics=openmetrics, entity_label=entity_label)
    if block_errors:
        bad = (fast.filter(pl.col("block").is_in(list(block_errors)))
               .group_by("block").agg(pl.col("line").min()))
        for block, line in bad.iter_rows():
            errors.append((line, line, "", block_errors[block]))

    # Family grouping over metadata, hard lines, and runs of fast lines.
    runs: dict[int, list[tuple[int, int, str]]] = {}
    for run, name, first, last in firsts.iter_rows():
        runs.setdefault(run, []).append((first, last, name))

    def first_after(name: str, line: int) -> int:
        hit = fast.filter((pl.col("name") == name) & (pl.col("line") >= line))["line"]
        return int(hit.min()) if len(hit) else line  # type: ignore[arg-type]

    plan = _Plan()
    machine: _TextMachine | _OmMachine = _OmMachine(plan) if openmetrics else _TextMachine(plan)
    slow: list[_Slow] = []
    eof_line = 0
    combos: set[tuple[int, str]] = set()
    ev_line: list[int] = events["line"].to_list()
    ev_raw: list[str] = events["raw"].to_list()
    ev_kw: list[str | None] = events["kw"].to_list()
    ev_name: list[str | None] = events["mname"].to_list()
    ev_rest: list[str | None] = events["mrest"].to_list()
    n_events = len(ev_line)
    try:
        for k in range(n_events + 1):
            if k in runs:
                if eof_line:
                    raise ExpositionError(runs[k][0][0], "", "line after # EOF")
                n_seg = len(plan.segments)
                machine.run(runs[k], first_after)
                for _, fid in plan.segments[n_seg:]:
                    combos.update((fid, name) for _, _, name in runs[k])
            if k == n_events:
                break
            line_no, line, kw = ev_line[k], ev_raw[k], ev_kw[k]
            if openmetrics:
                if eof_line:
                    raise ExpositionError(line_no, line, "line after # EOF")
                if line == "":
                    raise ExpositionError(line_no, line, "blank line")
                if line == "# EOF":
                    eof_line = line_no
                    continue
            if kw is not None:
                machine.meta(line_no, line, kw, ev_name[k] or "", ev_rest[k])
                continue
            if not openmetrics:
                line = line.strip()
                if not line:
                    continue
            if line.startswith("#"):
                machine.comment(line_no, line)
            else:
                typ = machine.typ if isinstance(machine, _OmMachine) else None
                sample = _slow_sample(line_no, line, openmetrics, typ)
                machine.slow(sample)
                slow.append(sample)
        machine.end(len(raw_lines))
        if openmetrics and not eof_line:
            errors.append((len(raw_lines) + 1, 0, "", "missing # EOF at end"))
    except ExpositionError as exc:
        errors.append((exc.line_no, exc.line_no, exc.line, exc.reason))
    errors.extend(plan.errors)
    if errors:
        _, line_no, line, reason = min(errors, key=lambda e: (e[0], e[1]))
        raise ExpositionError(line_no, line, reason)
    for sample in slow:
        combos.add((plan.slow_fid[sample.line_no], sample.name))
    return _assemble(fast, table, slow, plan, combos, node=node, source=source,
                     scrape_ts_ms=scrape_ts_ms, entity_label=entity_label,
                     openmetrics=openmetrics)


def _metric_and_kind(plan: _Plan, fid: int, name: str, openmetrics: bool) -> tuple[str, str]:
    """Output name and kind of a sample named ``name`` in family ``fid`` (-1: its own)."""
    if fid < 0:
        return name, Kind.UNTYPED.value
    fam = plan.families[fid]
    fname, metric = fam.name, name
    if not openmetrics and fam.typ == "counter":
        # The reference's build_metric munges counters into OpenMetrics naming.
        if fname.endswith("_total"):
            fname = fname[:-6]
        else:
            metric = name + "_total"
    return metric, sample_kind(fam.typ, fname, metric).value


def _assemble(
    fast: pl.DataFrame,
    table: pl.DataFrame,
    slow: list[_Slow],
    plan: _Plan,
    combos: set[tuple[int, str]],
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None,
    openmetrics: bool,
) -> pl.DataFrame:
    """Join samples to their decoded labels and families and build the sample frame."""
    seg = (pl.LazyFrame(plan.segments, schema={"line": pl.UInt32, "fid": pl.Int64},
                        orient="row")
           .unique("line", keep="last").sort("line"))
    combo_list = sorted(combos)
    out = [_metric_and_kind(plan, fid, name, openmetrics) for fid, name in combo_list]
    names = pl.LazyFrame(
        {"fid": [c[0] for c in combo_list], "name": [c[1] for c in combo_list],
         "metric": [o[0] for o in out], "kind": [o[1] for o in out]},
        schema={"fid": pl.Int64, "name": pl.String, "metric": pl.String, "kind": pl.String},
    )
    value = pl.col("value").cast(pl.Float64)
    # Python turns an integer "-0" into 0.0 (int() first), Polars into -0.0.
    value = pl.when(value == 0.0).then(
        pl.when(pl.col("value").str.contains(r"[.eE]")).then(value).otherwise(0.0)
    ).otherwise(value)
    if openmetrics:
        sec_frac = pl.col("ts").str.splitn(".", 2)
        ts = (sec_frac.struct.field("field_0").cast(pl.Int64) * 1000
              + sec_frac.struct.field("field_1").fill_null("").str.pad_end(3, "0")
              .str.slice(0, 3).cast(pl.Int64))
    else:
        # Raw milliseconds here; parse_text's float round trip is applied after collect.
        ts = pl.col("ts").cast(pl.Int64)
    rows = (
        fast.lazy()
        .join_asof(seg, on="line", strategy="backward")
        .join(table.lazy(), on="block", how="left")
        .select(
            "line",
            "fid",
            "name",
            value.alias("value"),
            pl.when(pl.col("ts").is_null()).then(pl.lit(scrape_ts_ms, pl.Int64))
            .otherwise(ts).alias("ts"),
            pl.col("entity").fill_null(""),
            pl.col("labels").fill_null(pl.lit([], dtype=pl.List(_LABEL_STRUCT))),
        )
    )
    if slow:
        srows = pl.LazyFrame(
            {
                "line": [s.line_no for s in slow],
                "fid": [plan.slow_fid[s.line_no] for s in slow],
                "name": [s.name for s in slow],
                "value": [s.value for s in slow],
                "ts": [scrape_ts_ms if s.ts_ms is None else s.ts_ms for s in slow],
                "entity": [s.labels.get(entity_label, "") if entity_label else "" for s in slow],
                "labels": [[{"name": k, "value": s.labels[k]} for k in sorted(s.labels)]
                           for s in slow],
            },
            schema={"line": pl.UInt32, "fid": pl.Int64, "name": pl.String,
                    "value": pl.Float64, "ts": pl.Int64, "entity": pl.String,
                    "labels": pl.List(_LABEL_STRUCT)},
        )
        rows = pl.concat([rows, srows]).sort("line")
    result = (
        rows.join(names, on=["fid", "name"], how="left", maintain_order="left")
        .select(
            "line",
            pl.col("ts").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            pl.lit(node, pl.String).alias("node"),
            pl.lit(source, pl.String).alias("source"),
            "metric",
            pl.col("kind").cast(SAMPLE_SCHEMA["kind"]),
            "value",
            "entity",
            "labels",
        )
        .collect(engine="in-memory")
    )
    if not openmetrics and fast["ts"].null_count() < fast.height:
        # parse_text computes int(int(ts) / 1000 * 1000): two roundings in float64 that
        # can lose a millisecond.  Done eagerly with numpy so no optimiser folds them.
        explicit_lines = fast.filter(pl.col("ts").is_not_null())["line"]
        explicit = result["line"].is_in(explicit_lines.implode()).to_numpy()
        ms = result["ts"].dt.epoch("ms").to_numpy().copy()
        ms[explicit] = (ms[explicit].astype(np.float64) / 1000.0 * 1000.0).astype(np.int64)
        result = result.with_columns(
            pl.Series("ts", ms, dtype=pl.Int64).cast(pl.Datetime("ms"))
            .dt.replace_time_zone("UTC")
        )
    return result.drop("line")


# --- the simple-payload path ----------------------------------------------------------------------
#
# Why: the vectorised path costs a few milliseconds of fixed Polars query
# overhead, which dominates small payloads (a cAdvisor page of a few hundred
# samples).  For text-format payloads in which *every* line has the common
# shape, one compiled-regex ``findall`` over the whole text (matching in C,
# tuples built in C), C-level list slicing, and Python work only per run of
# samples and per distinct label block is several times faster.  Anything
# unusual (a plain comment, an escape, odd whitespace, a malformed line, a
# family error) makes this path decline and the general path handles the
# payload, so exactness and error messages are those of the general path by
# construction.
#
# Per call, in the steady state (the same target scraped again), the work is:
# the ``findall``, one dict lookup of the payload's *shape* (every parsed field
# but values and timestamps; see ``ShapeCache``), one Arrow parse of values
# and timestamps, and the frame.  A shape not seen before is computed with
# C-level list operations: families by ``_canonical_families`` (the usual
# ``HELP``/``TYPE``/samples layout, checked and resolved without a Python loop
# per sample) or else the full ``_TextMachine``; label blocks split at quotes
# (``_split_blocks``) or else by the strict regexes.

# Every line: a sample (label block taken greedily, validated strictly per
# distinct block later), HELP/TYPE, or blank.  One match per line, or decline.
# Five groups only (a sample's name, label block, value and timestamp; a metadata line
# whole): every group is a string per line to build and hash, and a metadata line is
# only split further when the payload's shape is not cached.
_SIMPLE_LINE = re.compile(
    rf"^(?:({_NAME})(\{{.*\}})? ({_VALUE})(?: ({_TEXT_TS}))?"  # "." is [^\n] here
    rf"|(# (?:HELP|TYPE) .*)|)$",
    re.MULTILINE,
)
_SIMPLE_META = re.compile(rf"^# (HELP|TYPE) ({_NAME})(?: ([!-~][^\n]*))?$", re.MULTILINE)
_PAIR_GROUPS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')
_ZERO_INT = re.compile(r"^[+-]?0+$")
_LABELS_ARROW = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))
_STRICT_TEXT_BLOCK_LIST = re.compile(
    _TEXT_STRICT_BLOCK_RE[1:-1] + r"(?:\n" + _TEXT_STRICT_BLOCK_RE[1:-1] + ")*")
_COUNT_PAIRS = methodcaller("count", '="')
_OUTSIDE_PIECE = re.compile(rf"(,|,?\}}\n\{{)({_LNAME})=")
_FIRST_PIECE = re.compile(rf"\{{({_LNAME})=")
_LAST_PIECE = re.compile(r",?\}")
_RSTRIP_TYPE = methodcaller("rstrip", " \t\r")
_HELP_TYPE = ["HELP", "TYPE"]
_KIND_ENUM = pl.Series("kind", [kind.value for kind in Kind], dtype=SAMPLE_SCHEMA["kind"])
_KIND_CODE = {kind: i for i, kind in enumerate(_KIND_ENUM.to_list())}


def _canon_entries(typ: str) -> tuple[tuple[str, str, int], ...]:
    """``(sample suffix, metric suffix, kind code)`` for each name a text family allows.

    The metric suffix is the reference's counter munging: ``_total`` is appended
    unless the family name already ends with it.
    """
    ref_type = "unknown" if typ == "untyped" else typ  # what prometheus_client's Metric stores
    entries = []
    for suffix in _TEXT_ALLOWED.get(typ, [""]):
        if typ == "counter":
            entries.append((suffix, "_total", _KIND_CODE[sample_kind(typ, "x", "x_total").value]))
        else:
            kind = sample_kind(ref_type, "x", "x" + suffix)
            entries.append((suffix, "", _KIND_CODE[kind.value]))
    return tuple(entries)


_CANON = {typ: _canon_entries(typ) for typ in ("counter", "gauge", "summary", "histogram",
                                              "untyped")}


def _no_first_after(name: str, line: int) -> int:
    """The text machine never asks (only the OpenMetrics one reports clashes)."""
    return line


# The shape of recent payloads: everything but their values and timestamps (metric
# names, kinds, labels, entities per sample), keyed by the lines' parsed fields other
# than those two.  A scraper parses the same targets again and again, and a target's
# series rarely change between scrapes (values and timestamps do), so the steady
# state skips the family state machine and the label decoding.  The value is a pure
# function of the key, so a hit is exactly what a miss would compute.
_Shape = tuple[pl.Series, pl.Series, pl.Series, pl.Series]  # metric, kind, entity, labels


class _ShapeKey:
    """A payload's parsed fields but values and timestamps, as a cache key.

    Hashed on the names and metadata lines only (hashing every label block costs
    more than comparing them): equal payloads hash equal, and a hit is confirmed
    by comparing everything.
    """

    __slots__ = ("_hash", "parts")

    def __init__(self, parts: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...],
                                    str | None]) -> None:
        self.parts = parts
        self._hash = hash((parts[0], parts[2], parts[3], len(parts[1])))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ShapeKey) and self.parts == other.parts


_SHAPE_SERIALS = count(1)  # next() is atomic under the GIL: unique across threads


class ShapeCache:
    """The shapes of one target's recent payloads (what a repeated scrape can skip).

    One per scrape loop (one loop per target, so never shared between threads):
    a process-wide cache would be written from worker threads and, shared by
    more targets than it holds, would miss on every scrape.  A target's shape
    changes rarely (a series appears or goes), so two entries cover a change
    that flips back.

    ``last`` names the shape of the last parse that used this cache: equal
    values mean equal names, kinds, labels and entities, row for row (numbers
    are unique in the process, never reused for another shape), so the scrape
    engine can tell the collect stage that two scrapes share their series.
    ``None`` when the last parse took the general path.
    """

    __slots__ = ("_derived", "_entries", "_frames", "_template", "capacity", "hits", "last",
                 "max_chars", "misses")

    def __init__(self, capacity: int = 2, max_chars: int = 2_000_000) -> None:
        self.capacity = capacity
        self.max_chars = max_chars  # larger payloads are not kept
        self._entries: dict[_ShapeKey, tuple[_Shape, int]] = {}
        # A shape's frame for one (node, source), ts and values to be replaced: building
        # a frame from eight columns costs more than parsing a small page's numbers.
        self._frames: dict[tuple[int, str, str], pl.DataFrame] = {}
        # What the target's source mapping derived from a shape (its row selection and
        # series columns), opaque here: the mapping owns its meaning.
        self._derived: dict[int, object] = {}
        self.hits = 0
        self.misses = 0
        self.last: int | None = None
        # The layout of the last payload parsed through the cache (see _Template).
        self._template: _Template | None = None

    def get(self, key: _ShapeKey) -> _Shape | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.last = entry[1]
        return entry[0]

    def put(self, key: _ShapeKey, shape: _Shape, chars: int) -> None:
        self.last = serial = next(_SHAPE_SERIALS)
        if chars > self.max_chars or self.capacity <= 0:
            return
        while len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]  # oldest first
        self._entries[key] = (shape, serial)
        live = {s for _, s in self._entries.values()}
        self._frames = {k: f for k, f in self._frames.items() if k[0] in live}
        self._derived = {k: d for k, d in self._derived.items() if k in live}
        if self._template is not None and self._template.serial not in live:
            self._template = None

    def template(self, entity_label: str | None) -> _Template | None:
        """The layout of the last payload parsed through this cache, if still cached."""
        t = self._template
        return t if t is not None and t.entity_label == entity_label else None

    def keep_template(self, template: _Template) -> None:
        if any(s == template.serial for _, s in self._entries.values()):
            self._template = template

    def hit(self, serial: int) -> None:
        """A payload of cached shape ``serial`` told apart without its key (a template)."""
        self.hits += 1
        self.last = serial

    def frame(self, serial: int, node: str, source: str) -> pl.DataFrame | None:
        """The kept frame of shape ``serial`` for ``node`` and ``source``, if any."""
        return self._frames.get((serial, node, source))

    def keep_frame(self, serial: int, node: str, source: str, frame: pl.DataFrame) -> None:
        if any(s == serial for _, s in self._entries.values()):
            self._frames[serial, node, source] = frame

    def derived(self, serial: int) -> object | None:
        """What the mapping kept for shape ``serial`` (see ``keep_derived``), if any."""
        return self._derived.get(serial)

    def keep_derived(self, serial: int, value: object) -> None:
        """Keep a mapping's derivation of shape ``serial`` while the shape is cached.

        Valid for one target and one mapping (the loop's): the shape fixes every
        row's metric, kind, entity and labels, the target fixes node and source.
        """
        if any(s == serial for _, s in self._entries.values()):
            self._derived[serial] = value

    def clear(self) -> None:
        self._entries.clear()
        self._frames.clear()
        self._derived.clear()
        self._template = None

    def __len__(self) -> int:
        return len(self._entries)


def _parse_simple(
    text: str, *, node: str, source: str, scrape_ts_ms: int, entity_label: str | None,
    shape_cache: ShapeCache | None,
) -> pl.DataFrame | None:
    """Parse a text-format payload whose lines all have the common shape; ``None`` otherwise."""
    template = shape_cache.template(entity_label) if shape_cache is not None else None
    numbers = _template_numbers(text, template) if template is not None else None
    if numbers is not None:
        assert shape_cache is not None and template is not None
        shape_cache.hit(template.serial)
        values, stamps, negative_zero = numbers
        shape = template.shape
    else:
        matches = _SIMPLE_LINE.findall(text)
        if len(matches) != text.count("\n") + 1:
            return None  # some line needs the general path
        if not matches:
            return None
        names_all, blocks_all, values_all, ts_all, meta_all = zip(*matches, strict=True)
        key = _ShapeKey((names_all, blocks_all, meta_all, entity_label))
        cached = shape_cache.get(key) if shape_cache is not None else None
        if cached is None:
            cached = _simple_shape(names_all, blocks_all, meta_all, entity_label)
            if cached is None:
                return None
            if shape_cache is not None:
                shape_cache.put(key, cached, len(text))
        elif shape_cache is not None and shape_cache.last is not None:
            # A shape seen twice: worth the template that skips the findall next time.
            shape_cache.keep_template(_Template.of(
                names_all, blocks_all, meta_all, entity_label, shape_cache.last, cached))
        shape = cached
        values = list(compress(values_all, names_all))
        stamps = list(compress(ts_all, names_all))
        if not any(stamps):
            stamps = None
        negative_zero = "-0" in text
    serial = shape_cache.last if shape_cache is not None else None
    kept = None
    if shape_cache is not None and serial is not None:
        kept = shape_cache.frame(serial, node, source)
    out = _simple_frame(shape, values, stamps, negative_zero=negative_zero, node=node,
                        source=source,
                        scrape_ts_ms=scrape_ts_ms, kept=kept)
    if kept is None and shape_cache is not None and serial is not None:
        shape_cache.keep_frame(serial, node, source, out)
    return out


# The text after the heads of a payload's sample lines, one a line: a value, then
# perhaps a timestamp, and nothing else.  ``_VALUE`` and ``_TEXT_TS`` with possessive
# quantifiers (a third faster in ``re``): each part is followed by a character it
# cannot take ([0-9] by ".", "e", " ", a newline or the end), so giving anything back
# never makes a match, and the language is the same.
_VALUE_POSSESSIVE = (r"[+-]?+(?:[0-9]++(?:\.[0-9]*+)?+(?:[eE][+-]?+[0-9]++)?+"
                     r"|\.[0-9]++(?:[eE][+-]?+[0-9]++)?+|Inf|inf|NaN|nan)")
_NUMBER_LINE = rf"{_VALUE_POSSESSIVE}(?: {_TEXT_TS})?+"
_NUMBERS = re.compile(rf"{_NUMBER_LINE}(?:\n{_NUMBER_LINE})*+")
_PARTITION_SPACE = methodcaller("partition", " ")
_FIRST = itemgetter(0)
_THIRD = itemgetter(2)


@dataclass(frozen=True, slots=True)
class _Template:
    """The layout of a payload that took the simple path: its lines but the numbers.

    Why: the shape key needs the ``findall`` over the whole text, which costs
    more than the rest of a steady-state parse, and a target mostly serves the
    same lines with new numbers.  A payload with as many lines, every non-sample
    line equal to the last one's, every sample line starting with the last one's
    head (name, label block, one space) and followed by a value and perhaps a
    timestamp, is one whose every line ``_SIMPLE_LINE`` matches with the same
    name, block and metadata (the greedy block ends at the head's last ``}``: a
    number holds none).  So its shape key equals the last one's, its shape is
    ``shape`` (cached as ``serial``), and its numbers are those the ``findall``
    would find; all of it told with C-level string operations.
    """

    entity_label: str | None
    serial: int
    shape: _Shape
    n_lines: int
    sample_at: tuple[int, ...]
    heads: tuple[str, ...]
    cuts: tuple[slice, ...]
    other_at: tuple[int, ...]
    others: list[str]  # metadata and blank lines, whole

    @classmethod
    def of(cls, names_all: tuple[str, ...], blocks_all: tuple[str, ...],
           meta_all: tuple[str, ...], entity_label: str | None, serial: int,
           shape: _Shape) -> _Template:
        """The template of a payload from its ``_SIMPLE_LINE`` fields, line by line."""
        lines = range(len(names_all))
        heads = tuple(map(_add, map(_add, compress(names_all, names_all),
                                    compress(blocks_all, names_all)), repeat(" ")))
        other_at = tuple(compress(lines, map(_not, names_all)))
        return cls(entity_label, serial, shape, len(names_all),
                   tuple(compress(lines, names_all)), heads,
                   tuple(map(slice, map(len, heads), repeat(None))), other_at,
                   list(map(meta_all.__getitem__, other_at)))


def _template_numbers(text: str, t: _Template) -> (
        tuple[list[str], list[str] | None, bool] | None):
    """The values and timestamps (``None``: none has one) of a payload laid out as ``t``,
    and whether a number may spell a negative zero; ``None`` when it is not so laid out."""
    lines = text.split("\n")
    if len(lines) != t.n_lines or list(map(lines.__getitem__, t.other_at)) != t.others:
        return None
    samples = list(map(lines.__getitem__, t.sample_at))
    if not all(map(str.startswith, samples, t.heads)):
        return None
    rests: list[str] = list(map(_getitem, samples, t.cuts))
    joined = "\n".join(rests)
    if not rests or _NUMBERS.fullmatch(joined) is None:
        return None
    spaces = joined.count(" ")
    negative_zero = "-0" in joined
    if not spaces:
        return rests, None, negative_zero
    if spaces == len(rests):  # every sample has a timestamp: split at C speed
        tokens = joined.replace("\n", " ").split(" ")
        return tokens[0::2], tokens[1::2], negative_zero
    parts = list(map(_PARTITION_SPACE, rests))
    return list(map(_FIRST, parts)), list(map(_THIRD, parts)), negative_zero


def _simple_shape(
    names_all: tuple[str, ...], blocks_all: tuple[str, ...], meta_all: tuple[str, ...],
    entity_label: str | None,
) -> _Shape | None:
    """Metric, kind, entity and labels of every sample (``None`` declines the payload)."""
    n_lines = len(names_all)
    names = list(compress(names_all, names_all))
    n = len(names)
    if not names_all[-1] and not meta_all[-1]:
        n_lines -= 1  # the empty "line" after the final newline
    at = list(compress(range(len(meta_all)), meta_all))
    if n_lines != n + len(at):
        return None  # blank lines inside: rare, leave the bookkeeping to the general path
    metas = _SIMPLE_META.findall("\n".join(map(meta_all.__getitem__, at)))
    if len(metas) != len(at):
        return None  # a metadata line in an unusual shape
    kw_list = [""] * len(meta_all)
    mname_list = [""] * len(meta_all)
    mrest_list = [""] * len(meta_all)
    for i, (kw, mname, mrest) in zip(at, metas, strict=True):
        kw_list[i], mname_list[i], mrest_list[i] = kw, mname, mrest
    kw_all, mname_all, mrest_all = tuple(kw_list), tuple(mname_list), tuple(mrest_list)
    blocks = list(compress(blocks_all, names_all))
    mk = _canonical_families(kw_all, mname_all, mrest_all, names, n_lines)
    if mk is None:
        mk = _machine_families(kw_all, mname_all, mrest_all, names)
        if mk is None:
            return None
    distinct = list(dict.fromkeys(blocks))
    table = _simple_blocks(distinct, entity_label)
    if table is None:
        return None
    labels, entities = table
    row_of = {block: row for row, block in enumerate(distinct)}
    idx = np.array(list(map(row_of.__getitem__, blocks)), dtype=np.uint32)
    return (pl.Series("metric", mk[0], dtype=pl.String),
            _KIND_ENUM[np.array(mk[1], dtype=np.uint32)],
            entities[idx], labels[idx])


def _canonical_families(
    kw_all: tuple[str, ...], mname_all: tuple[str, ...], mrest_all: tuple[str, ...],
    names: list[str], n_lines: int,
) -> tuple[list[str], list[int]] | None:
    """Each sample's output name and kind code for the canonical family layout, else ``None``.

    Canonical: every family is ``# HELP X``, ``# TYPE X t`` on the next line, then
    only samples that family allows; neighbouring families have different names;
    ``t`` is a type whose grouping is tabulated (``_CANON``).  Then the
    reference's state machine reduces to "a sample belongs to the family above
    it", which is checked and computed with C-level operations (no Python work
    per sample and little per family).  Anything else returns ``None`` and the
    full state machine decides.
    """
    if not kw_all[0] or kw_all[0] != "HELP":
        return None
    ev = list(compress(range(len(kw_all)), kw_all))
    n_fam = len(ev) // 2
    if len(ev) != 2 * n_fam or list(map(kw_all.__getitem__, ev)) != _HELP_TYPE * n_fam:
        return None
    help_at, type_at = ev[0::2], ev[1::2]
    if list(map(_sub, type_at, help_at)).count(1) != n_fam:
        return None  # a TYPE line not right after its HELP line
    fam_names = list(map(mname_all.__getitem__, help_at))
    if fam_names != list(map(mname_all.__getitem__, type_at)):
        return None
    if any(map(_eq, fam_names[1:], fam_names[:-1])):
        return None  # the reference merges neighbouring families of one name
    types = list(map(_RSTRIP_TYPE, map(mrest_all.__getitem__, type_at)))
    if not _CANON.keys() >= set(types) or "_total" in fam_names:
        return None  # unusual types and an empty counter name: the state machine's job
    counts = list(map(_sub, [*help_at[1:], n_lines], type_at))  # one more than the samples
    fam_of = list(chain.from_iterable(map(repeat, range(n_fam), map(_sub, counts, repeat(1)))))
    if len(fam_of) != len(names):
        return None
    out: dict[tuple[int, str], tuple[str, int]] = {}
    for k, name, typ in zip(range(n_fam), fam_names, types, strict=True):
        for suffix, metric_suffix, code in _CANON[typ]:
            sample = name + suffix
            out[k, sample] = (sample + metric_suffix if metric_suffix and not
                              name.endswith(metric_suffix) else sample, code)
    mk = list(map(out.get, zip(fam_of, names, strict=True)))
    if None in mk:
        return None  # a sample outside its family: the reference's untyped singleton
    if not mk:
        return [], []
    metrics, codes = zip(*mk, strict=True)
    return list(metrics), list(codes)


def _machine_families(
    kw_all: tuple[str, ...], mname_all: tuple[str, ...], mrest_all: tuple[str, ...],
    names: list[str],
) -> tuple[list[str], list[int]] | None:
    """Each sample's output name and kind code from the full family state machine."""
    n = len(names)
    events = list(compress(range(len(kw_all)), kw_all))
    plan = _Plan()
    machine = _TextMachine(plan)
    fids: list[int] = []
    # Sample positions (1-based, monotone) stand in for line numbers: the family
    # machine only compares them, and any error declines this path.
    try:
        prev_pos = 0
        for k in range(len(events) + 1):
            pos = events[k] - k if k < len(events) else n  # samples before this event
            if pos > prev_pos:
                _run(machine, plan, names, prev_pos, pos, fids)
            prev_pos = pos
            if k < len(events):
                i = events[k]
                rest = mrest_all[i].rstrip(" \t\r") or None
                machine.meta(pos + 1, "", kw_all[i], mname_all[i], rest)
        machine.end(n + 1)
    except ExpositionError:
        return None
    if plan.errors:
        return None
    out_of = {key: _metric_and_kind(plan, key[0], key[1], False)
              for key in dict.fromkeys(zip(fids, names, strict=True))}
    mk = [out_of[key] for key in zip(fids, names, strict=True)]
    return [m for m, _ in mk], [_KIND_CODE[k] for _, k in mk]


def _run(machine: _TextMachine, plan: _Plan, names: list[str], start: int, end: int,
         fids: list[int]) -> None:
    """Feed one run of samples (positions ``start+1 .. end``) to the family machine."""
    chunk = names[start:end]
    firsts = []
    for name in dict.fromkeys(chunk):
        first = chunk.index(name)
        last = len(chunk) - 1 - chunk[::-1].index(name) if len(chunk) > 1 else 0
        firsts.append((start + first + 1, start + last + 1, name))
    firsts.sort()
    n_seg = len(plan.segments)
    machine.run(firsts, _no_first_after)
    segs = plan.segments[n_seg:]
    if len(segs) == 1:
        fids.extend([segs[0][1]] * len(chunk))
        return
    k = 0  # a name outside the family split the run: walk the (few) segments
    for pos in range(start + 1, end + 1):
        while k + 1 < len(segs) and segs[k + 1][0] <= pos:
            k += 1
        fids.append(segs[k][1])


def _split_blocks(
    joined: str, n_blocks: int,
) -> tuple[Sequence[str], Sequence[str], list[int]] | None:
    """Label names, values and each block's first pair, by splitting at quotes.

    ``joined`` is ``n_blocks`` label blocks, one a line, each ``{...}`` already.
    Split at ``"``, the pieces alternate between the text outside values and
    values.  The blocks are strict exactly when no backslash occurs, every
    outside piece is ``{name=`` (first), ``,name=``, ``,?}\\n{name=`` (a block
    boundary) or ``,?}`` (last), and there are as many block starts as blocks
    (so no value holds a newline, i.e. quotes pair up within each block).  The
    outside pieces repeat (a few label names), so each distinct one is checked
    once.  ``None``: not in this form (e.g. an empty ``{}``), try the regexes.
    """
    if not n_blocks or "\\" in joined or "{}" in joined:
        return None
    pieces = joined.split('"')
    if len(pieces) % 2 == 0:
        return None
    outside = pieces[0::2]
    name_of: dict[str, str] = {}
    start_of: dict[str, bool] = {}
    for piece in set(outside[1:-1]):
        m = _OUTSIDE_PIECE.fullmatch(piece)
        if m is None:
            return None
        name_of[piece] = m.group(2)
        start_of[piece] = m.group(1) != ","
    first = _FIRST_PIECE.fullmatch(outside[0])
    if first is None or _LAST_PIECE.fullmatch(outside[-1]) is None:
        return None
    name_of[outside[0]] = first.group(1)
    start_of[outside[0]] = True
    heads = outside[:-1]
    starts = list(compress(range(len(heads)), map(start_of.__getitem__, heads)))
    if len(starts) != n_blocks:
        return None
    return list(map(name_of.__getitem__, heads)), pieces[1::2], starts


def _simple_blocks(
    distinct: list[str], entity_label: str | None,
) -> tuple[pl.Series, pl.Series] | None:
    """Decode each distinct label block at C speed (strict shape only; ``None`` declines).

    Strict blocks hold no quote or backslash inside values, so ``="`` occurs
    exactly once per pair: counting it gives each block's pair count, and one
    ``findall`` over all blocks gives every pair in order.
    """
    nonempty = [b for b in distinct if b]
    joined = "\n".join(nonempty)
    split = _split_blocks(joined, len(nonempty))
    if split is not None:
        lnames, lvalues, starts = split
        counts = list(map(_sub, [*starts[1:], len(lnames)], starts))
        if len(nonempty) < len(distinct):  # the sample without labels: no pairs
            counts.insert(distinct.index(""), 0)
    else:
        if nonempty and _STRICT_TEXT_BLOCK_LIST.fullmatch(joined) is None:
            return None
        counts = list(map(_COUNT_PAIRS, distinct))
        pairs = _PAIR_GROUPS.findall(joined)
        if len(pairs) != sum(counts):
            return None
        if pairs:
            lnames, lvalues = zip(*pairs, strict=True)
        else:
            lnames, lvalues = (), ()
    offsets = [0, *accumulate(counts)]
    # Exporters usually write labels sorted: then, within every block, each name is
    # below the next one (which also rules out a repeated name); the only places
    # where a name is not below its successor are block boundaries.
    not_below = list(compress(range(1, len(lnames)), map(_ge, lnames[:-1], lnames[1:])))
    if set(not_below) <= set(offsets):
        name_arr = pa.array(lnames, pa.string())
        value_arr = pa.array(lvalues, pa.string())
    else:
        bid = pa.array(np.repeat(np.arange(len(distinct), dtype=np.int32), counts))
        table = pa.table({"bid": bid, "name": pa.array(lnames, pa.string()),
                          "value": pa.array(lvalues, pa.string())})
        order = pc.sort_indices(table, sort_keys=[("bid", "ascending"), ("name", "ascending")])
        table = table.take(order)
        names_col = table.column("name")
        same = pc.and_(pc.equal(table.column("bid")[1:], table.column("bid")[:-1]),
                       pc.equal(names_col[1:], names_col[:-1]))
        if pc.any(same).as_py():
            return None  # a repeated label name: the general path reports it
        name_arr = names_col.combine_chunks()
        value_arr = table.column("value").combine_chunks()
    struct = pa.StructArray.from_arrays([name_arr, value_arr], names=["name", "value"])
    arrow = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, type=_LABELS_ARROW)
    labels_s = pl.Series("labels", arrow).cast(SAMPLE_SCHEMA["labels"])
    if entity_label:
        # From the decoded pairs (a regex over the block text could match inside a
        # value); a block holds each name at most once (checked above).
        entities = [""] * len(distinct)
        block_of = np.repeat(np.arange(len(distinct)), counts).tolist()
        for i in compress(range(len(lnames)), map(_eq, lnames, repeat(entity_label))):
            entities[block_of[i]] = lvalues[i]
        return labels_s, pl.Series("entity", entities, dtype=pl.String)
    return labels_s, pl.Series("entity", [""], dtype=pl.String).new_from_index(0, len(distinct))


_TS = SAMPLE_SCHEMA["ts"]
# Up to this many numbers a parse reads them with ``float`` (see ``_doubles``).
_FLOAT_CALLS_MAX = 512


def _doubles(texts: list[str]) -> np.ndarray:
    """The numbers spelled by ``texts`` (ASCII, as ``_VALUE`` and ``_TEXT_TS`` allow).

    Arrow's string-to-double parse is correctly rounded, like float(), and takes
    every spelling ``_VALUE`` lets through.  The strings go to Arrow as one buffer
    and their offsets: converting a list of Python strings one by one costs
    several times the parse.

    A page's worth of numbers (up to ``_FLOAT_CALLS_MAX``) goes through ``float``
    instead, which is also correctly rounded, takes the same spellings, and is what
    the reference parser calls: in a collector each page's parse runs with cold
    caches between scrapes, and there the few calls into Arrow's cast kernel cost
    about twice ``float`` on a page of a few hundred numbers (measured: 150-180 µs
    against 70-80 µs for 184 numbers), while in a tight loop Arrow wins.
    """
    if len(texts) <= _FLOAT_CALLS_MAX:
        return np.fromiter(map(float, texts), dtype=np.float64, count=len(texts))
    data = "".join(texts).encode("ascii")
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int32, count=len(texts)), out=offsets[1:])
    strings = pa.StringArray.from_buffers(len(texts), pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        return pc.cast(strings, pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array(list(map(float, texts)), dtype=np.float64)


def ts_column(ts_ms: int, n: int) -> pl.Series:
    """A ``ts`` column of ``n`` rows, all ``ts_ms`` (cheaper than from a Python list)."""
    return pl.Series("ts", np.array([ts_ms], dtype=np.int64)).cast(_TS).new_from_index(0, n)


def _simple_frame(
    shape: _Shape, values: list[str], stamps: list[str] | None, *,
    node: str, source: str, scrape_ts_ms: int, kept: pl.DataFrame | None = None,
    negative_zero: bool = True,
) -> pl.DataFrame:
    """The frame of a parsed simple payload; ``kept``: a frame of the same shape, node
    and source, whose other columns are reused (only ``ts`` and ``value`` are new).

    ``stamps``: each sample's timestamp text (``""``: none), or ``None`` when no
    sample has one."""
    metric, kind, entity, labels = shape
    n = len(values)
    if stamps is not None and n and stamps.count(stamps[0]) == n and stamps[0]:
        # One stamp for the whole page (an exporter stamps its scrape): read it once.
        # The same operations as below for each stamp, on one float64.
        scrape_ts_ms = int(float(stamps[0]) / 1000.0 * 1000.0)
        stamps = None
    present = list(compress(stamps, stamps)) if stamps is not None else []
    # Timestamps (at most 15 digits) are exact in a double: values and timestamps
    # go through in one call.
    numbers = _doubles(values + present if present else values)
    value = numbers[:n]
    # ``negative_zero`` False: no number is spelled "-0..." (the caller looked at the
    # text, which is cheaper than two array passes over every page).
    if negative_zero and (value == 0.0).any() and np.signbit(value[value == 0.0]).any():
        # The reference turns an integer "-0" into 0.0 (int() first); float keeps -0.0.
        value = value.copy()
        for i in np.flatnonzero((value == 0.0) & np.signbit(value)).tolist():
            if _ZERO_INT.match(values[i]):
                value[i] = 0.0
    if present:
        assert stamps is not None
        # parse_text_reference computes int(int(ts) / 1000 * 1000) (float seconds in
        # between): the same operations in float64, and the cast truncates like int().
        ms = (numbers[n:] / 1000.0 * 1000.0).astype(np.int64)
        if len(present) < n:
            full = np.full(n, scrape_ts_ms, dtype=np.int64)
            full[np.fromiter(map(bool, stamps), dtype=bool, count=n)] = ms
            ms = full
        ts = pl.Series("ts", ms).cast(_TS)  # int64 already: no dtype, one conversion
    else:
        ts = ts_column(scrape_ts_ms, n)
    value_s = pl.Series("value", value)  # float64 already: no dtype, no conversion
    if kept is not None:
        out = kept.clone()
        out.replace_column(0, ts)
        out.replace_column(5, value_s)
        return out
    return pl.DataFrame(
        [
            ts,
            pl.Series("node", [node], dtype=pl.String).new_from_index(0, n),
            pl.Series("source", [source], dtype=pl.String).new_from_index(0, n),
            metric,
            kind,
            value_s,
            entity,
            labels,
        ]
    )
