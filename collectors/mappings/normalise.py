"""Declared normalised signals, applied by one pure function.

Every source keeps its upstream series exactly as scraped.  On top of them a
collector *declares* the signals it can derive (``gpuslo_*`` names, base units)
in a table of :class:`Signal` rows, and :func:`normalise` appends one
normalised row per matching upstream row.  Because the mapping is data, the
table doubles as documentation (``gpuslo scrape`` can print it) and one test
can check every table for unit-suffixed names.

Rules that hold for every table:

* A normalised row copies ``ts``, ``node``, ``source``, ``entity`` and the
  labels of the upstream row it came from; only ``metric``, ``kind`` and
  ``value`` change.  ``source`` therefore still says which collector (and so
  which upstream) produced it.
* Counters stay raw cumulative counters.  Nothing here computes a rate: a
  latency per operation is declared as two counters (time spent, operations
  completed) so downstream takes ``increase(time)/increase(ops)`` over any
  window, which stays correct across scrapes of different length.
* Upstream renames are handled with :attr:`SeriesRef.superseded_by`: the old
  name is used only for an entity that does not also expose the new name, so a
  payload that carries both (vLLM's ``--show-hidden-metrics-for-version``)
  is not counted twice.
* A ref names the series as upstream spells it; the ``_total`` that the
  parser appends to counters declared without it is matched too.
* Histograms are mapped as a family (``_bucket``, ``_sum``, ``_count``); a
  unit scale applies to ``_sum`` and to the ``le`` bucket bounds, never to the
  bucket counts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl

from gpuslo.collectors.exposition import ShapeCache, parse_text
from gpuslo.pipeline.schema import COLUMNS, KIND_DTYPE, SAMPLE_SCHEMA, Kind, empty_frame, label

ParseFn = Callable[..., pl.DataFrame]

# The one place that names the exposition parser the source modules' one-shot
# ``parse`` helpers use by default (the fast one, text format unless told).
default_parse: ParseFn = parse_text

# Kinds a histogram family's rows carry, keyed by the suffix of the sample name.
_HISTOGRAM_SUFFIXES: tuple[tuple[str, Kind], ...] = (
    ("_bucket", Kind.HISTOGRAM_BUCKET),
    ("_sum", Kind.HISTOGRAM_SUM),
    ("_count", Kind.HISTOGRAM_COUNT),
)
_HIST_KINDS = [k.value for _, k in _HISTOGRAM_SUFFIXES]


@dataclass(frozen=True)
class SeriesRef:
    """One upstream series a signal can be derived from.

    Attributes:
        metric: upstream metric name as exposed (``vllm:prefix_cache_hits_total``),
            or the family name for a histogram signal.
        match: label constraints; each label's value must be one of the given
            values (``{"kv_cache_block_type": ("fraction",)}``).
        scale: multiply the value by this to reach the signal's base unit
            (4 for InfiniBand 4-octet data words, 1024 for KiB, 1e-9 for ns).
        superseded_by: the newer upstream name; this ref is used only for
            entities that do not expose that name.
    """

    metric: str
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    scale: float = 1.0
    superseded_by: str | None = None


@dataclass(frozen=True)
class Signal:
    """A normalised signal and the upstream series it is derived from.

    Attributes:
        name: normalised metric name, unit-suffixed (``gpuslo_..._bytes_total``).
            For a histogram, the family name (rows get ``_bucket``/``_sum``/``_count``).
        unit: base unit in words (``bytes``, ``seconds``, ``ratio``, ``requests``...).
        kind: kind of the normalised rows; ``None`` keeps the upstream row's kind
            (used for histograms).
        series: upstream refs; every ref that matches contributes rows.
        help: one line for ``gpuslo scrape`` and docs.
    """

    name: str
    unit: str
    kind: Kind | None
    series: tuple[SeriesRef, ...]
    help: str = ""
    histogram: bool = False


def ref(
    metric: str,
    *,
    scale: float = 1.0,
    superseded_by: str | None = None,
    **match: str | tuple[str, ...],
) -> SeriesRef:
    """Shorthand for :class:`SeriesRef` with label constraints as keyword arguments."""
    m = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in match.items()}
    return SeriesRef(metric, m, scale, superseded_by)


def signal(
    name: str,
    unit: str,
    kind: Kind | None,
    *series: SeriesRef | str,
    help: str = "",
    histogram: bool = False,
) -> Signal:
    """Shorthand for :class:`Signal`; plain strings become unconstrained refs."""
    refs = tuple(s if isinstance(s, SeriesRef) else SeriesRef(s) for s in series)
    return Signal(name, unit, kind, refs, help, histogram)


def histogram(name: str, unit: str, *series: SeriesRef | str, help: str = "") -> Signal:
    """A histogram signal: each ref names an upstream histogram family."""
    return signal(name, unit, None, *series, help=help, histogram=True)


def check_signals(signals: Sequence[Signal]) -> list[str]:
    """Problems with a signal table (empty when fine); used by tests of every table.

    A name must start with ``gpuslo_``; a counter must end in ``_total``; a
    gauge must not end in ``_total`` (the suffix lies about the kind otherwise).
    """
    problems: list[str] = []
    for s in signals:
        if not s.name.startswith("gpuslo_"):
            problems.append(f"{s.name}: normalised names start with gpuslo_")
        if s.kind is Kind.COUNTER and not s.name.endswith("_total"):
            problems.append(f"{s.name}: a counter's name ends in _total")
        if s.kind is Kind.GAUGE and s.name.endswith("_total"):
            problems.append(f"{s.name}: a gauge's name must not end in _total")
        if s.histogram and s.kind is not None:
            problems.append(f"{s.name}: a histogram keeps its rows' kinds (kind=None)")
        if not s.series:
            problems.append(f"{s.name}: no upstream series")
    return problems


def _match_expr(match: Mapping[str, tuple[str, ...]]) -> pl.Expr:
    expr = pl.lit(True)
    for name, values in match.items():
        expr = expr & label(name).is_in(list(values)).fill_null(False)
    return expr


def _scale_le(labels: list[dict[str, str]], scale: float) -> list[dict[str, str]]:
    out = []
    for lab in labels:
        if lab["name"] == "le":
            bound = float(lab["value"])
            scaled = bound * scale if math.isfinite(bound) else bound
            out.append({"name": "le", "value": _format_bound(scaled)})
        else:
            out.append(lab)
    return out


def _format_bound(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(round(v, 12)))


def _upstream_names(sig: Signal, metric: str) -> dict[str, str]:
    """Sample names a ref matches -> the normalised name each becomes.

    ``prometheus_client``'s parser (and the fast parser, which matches it
    exactly) exposes a counter sample declared without ``_total`` as
    ``<name>_total`` (Triton's ``nv_inference_request_success``, DCGM's
    counters, Ceph's ``ceph_pool_rd``).  A ref written with the upstream
    spelling matches both, so tables stay in upstream terms whatever the parser.
    """
    if sig.histogram:
        return {metric + sfx: sig.name + sfx for sfx, _ in _HISTOGRAM_SUFFIXES}
    if metric.endswith("_total"):
        return {metric: sig.name}
    return {metric: sig.name, metric + "_total": sig.name}


def _rows_for(frame: pl.DataFrame, sig: Signal, r: SeriesRef,
              traced: bool = False) -> pl.DataFrame:
    """The normalised rows that one ref of one signal yields from ``frame``.

    ``traced``: keep ``frame``'s ``_SRC`` column and add ``_FACTOR``, the factor
    each row's value was scaled by (see :class:`Derivation`).
    """
    names = _upstream_names(sig, r.metric)
    rows = frame.filter(pl.col("metric").is_in(list(names)))
    if sig.histogram:
        # Only real histogram samples: an untyped "<name>_sum" (a malformed
        # payload, like Triton's doc example) must not pass for a histogram.
        rows = rows.filter(pl.col("kind").cast(pl.String).is_in(_HIST_KINDS))
    elif not r.metric.endswith("_total"):
        # The "_total" spelling is the parser's, and only for counters.
        rows = rows.filter((pl.col("metric") == r.metric) | (pl.col("kind") == Kind.COUNTER.value))
    if r.match and rows.height:
        rows = rows.filter(_match_expr(r.match))
    if r.superseded_by is not None and rows.height:
        newer_names = list(_upstream_names(sig, r.superseded_by))
        has_newer = (
            frame.filter(pl.col("metric").is_in(newer_names))
            .select("node", "source", "entity")
            .unique()
        )
        rows = rows.join(has_newer, on=["node", "source", "entity"], how="anti")
    if rows.height == 0:
        return rows
    value = pl.col("value")
    if r.scale != 1.0:
        if sig.histogram:
            value = (
                pl.when(pl.col("metric") == r.metric + "_sum")
                .then(pl.col("value") * r.scale)
                .otherwise(pl.col("value"))
            )
        else:
            value = pl.col("value") * r.scale
    kind = pl.col("kind") if sig.kind is None else pl.lit(sig.kind.value, dtype=KIND_DTYPE)
    trace: dict[str, pl.Expr] = {}
    if traced:
        factor = pl.lit(r.scale, dtype=pl.Float64)
        if sig.histogram and r.scale != 1.0:
            factor = pl.when(pl.col("metric") == r.metric + "_sum").then(factor).otherwise(1.0)
        trace[_FACTOR] = factor
    out = rows.with_columns(
        value=value,
        kind=kind,
        metric=pl.col("metric").replace_strict(names, return_dtype=pl.String),
        **trace,
    )
    if sig.histogram and r.scale != 1.0:
        # Bucket bounds are in the upstream unit too (e.g. Triton's ms histogram).
        is_bucket = pl.col("metric") == sig.name + "_bucket"
        buckets = out.filter(is_bucket)
        scaled = pl.Series(
            "labels",
            [_scale_le(labs, r.scale) for labs in buckets["labels"].to_list()],
            dtype=SAMPLE_SCHEMA["labels"],
        )
        out = pl.concat([out.filter(~is_bucket), buckets.with_columns(scaled)])
    return out.select(*COLUMNS, *((_SRC, _FACTOR) if traced else ()))


# Column names the compiled lookups add to the upstream rows while they are joined.
_ROW = "__gpuslo_row"
_REF = "__gpuslo_ref"
_NAME = "__gpuslo_name"
_SCALE = "__gpuslo_scale"
_KIND = "__gpuslo_kind"
_HIST = "__gpuslo_histogram"
_COUNTER_ONLY = "__gpuslo_counter_only"
# Added by a traced run (see Derivation): the input row an output row reads, and the
# factor on its value.
_SRC = "__gpuslo_src"
_FACTOR = "__gpuslo_factor"


def _label_col(name: str) -> str:
    return "__gpuslo_label_" + name


@dataclass(frozen=True)
class _Lookup:
    """The joinable refs whose label constraints name the same labels.

    One row per (ref, upstream sample name, allowed label values); joining the
    upstream rows on ``metric`` and those labels' values selects every row
    those refs take, and the row's ref, new name, scale and kind with it.
    """

    labels: tuple[str, ...]
    metrics: list[str]
    frame: pl.DataFrame


@dataclass(frozen=True)
class _Compiled:
    """A signal table compiled once for :func:`normalised_rows`.

    Refs that need only a rename, a scale, a kind and label constraints are
    applied by one join per :class:`_Lookup`.  Refs with a superseding name or
    a scaled histogram (its ``le`` bounds are rewritten) stay on the per-ref
    path, ``special``.  Refs are numbered in table order, so the output keeps
    the order the per-ref loop gives.
    """

    signals: tuple[Signal, ...]
    wanted: list[str]
    lookups: tuple[_Lookup, ...]
    special: tuple[tuple[int, Signal, SeriesRef, frozenset[str]], ...]


def _is_special(sig: Signal, r: SeriesRef) -> bool:
    return r.superseded_by is not None or (sig.histogram and r.scale != 1.0)


def _compile(signals: tuple[Signal, ...]) -> _Compiled:
    wanted: dict[str, None] = {}
    special: list[tuple[int, Signal, SeriesRef, frozenset[str]]] = []
    groups: dict[tuple[str, ...], dict[str, list[object]]] = {}
    i = 0
    for sig in signals:
        for r in sig.series:
            names = _upstream_names(sig, r.metric)
            wanted.update(dict.fromkeys(names))
            if _is_special(sig, r):
                special.append((i, sig, r, frozenset(names)))
                i += 1
                continue
            labels = tuple(sorted(r.match))
            cols = groups.setdefault(labels, {
                "metric": [], **{_label_col(k): [] for k in labels}, _REF: [], _NAME: [],
                _SCALE: [], _KIND: [], _HIST: [], _COUNTER_ONLY: []})
            for upstream, normalised in names.items():
                for values in itertools.product(*(r.match[k] for k in labels)):
                    cols["metric"].append(upstream)
                    for k, v in zip(labels, values, strict=True):
                        cols[_label_col(k)].append(v)
                    cols[_REF].append(i)
                    cols[_NAME].append(normalised)
                    cols[_SCALE].append(r.scale)
                    cols[_KIND].append(None if sig.kind is None else sig.kind.value)
                    cols[_HIST].append(sig.histogram)
                    # The "_total" spelling is the parser's, and only for counters.
                    cols[_COUNTER_ONLY].append(
                        not sig.histogram and not r.metric.endswith("_total")
                        and upstream != r.metric)
            i += 1
    lookups = []
    for labels, cols in groups.items():
        schema: dict[str, pl.DataType] = {
            "metric": pl.String(), **{_label_col(k): pl.String() for k in labels},
            _REF: pl.UInt32(), _NAME: pl.String(), _SCALE: pl.Float64(), _KIND: KIND_DTYPE,
            _HIST: pl.Boolean(), _COUNTER_ONLY: pl.Boolean()}
        frame = pl.DataFrame(cols, schema=schema).unique(maintain_order=True)
        metrics = list(dict.fromkeys(str(m) for m in cols["metric"]))
        lookups.append(_Lookup(labels, metrics, frame))
    return _Compiled(signals, list(wanted), tuple(lookups), tuple(special))


# Compiled tables by the identity of their signals; an entry holds its signals,
# so their ids are not reused while it lives.
_COMPILED: dict[tuple[int, ...], _Compiled] = {}
_COMPILED_MAX = 64


def _compiled(signals: tuple[Signal, ...]) -> _Compiled:
    key = tuple(map(id, signals))
    hit = _COMPILED.get(key)
    if hit is not None and all(a is b for a, b in zip(hit.signals, signals, strict=True)):
        return hit
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    compiled = _COMPILED[key] = _compile(signals)
    return compiled


def _joined_rows(candidates: pl.DataFrame, lookups: tuple[_Lookup, ...]) -> pl.DataFrame:
    """The rows of every joinable ref at once, with ``_REF`` and ``_ROW`` to order them."""
    kind = pl.col("kind")
    keep = (
        pl.when(pl.col(_HIST))
        # Only real histogram samples: an untyped "<name>_sum" (a malformed
        # payload, like Triton's doc example) must not pass for a histogram.
        .then(kind.cast(pl.String).is_in(_HIST_KINDS))
        .when(pl.col(_COUNTER_ONLY))
        .then(kind == Kind.COUNTER.value)
        .otherwise(pl.lit(True))
    )
    narrow = candidates.lazy().select("metric", "kind", "labels").with_row_index(_ROW)
    pieces = []
    for lk in lookups:
        rows = narrow
        if lk.labels:
            # A constrained label must be present with an allowed value (a null never joins).
            rows = rows.filter(pl.col("metric").is_in(lk.metrics)).with_columns(
                label(k).alias(_label_col(k)) for k in lk.labels)
        on = ["metric", *(_label_col(k) for k in lk.labels)]
        pieces.append(
            rows.join(lk.frame.lazy(), on=on, how="inner")
            .filter(keep)
            .select(_ROW, _REF, _NAME, _SCALE, _KIND)
        )
    picked = (pl.concat(pieces) if len(pieces) > 1 else pieces[0]).collect()
    scale = picked.get_column(_SCALE)
    return (
        candidates.select(COLUMNS)[picked.get_column(_ROW)]
        .with_columns(
            value=pl.when(scale != 1.0).then(pl.col("value") * scale).otherwise(pl.col("value")),
            kind=pl.coalesce(picked.get_column(_KIND), pl.col("kind")),
            metric=picked.get_column(_NAME),
        )
        .with_columns(picked.get_column(_REF), picked.get_column(_ROW), scale.alias(_FACTOR))
    )


_EMPTY = empty_frame()
_D = TypeVar("_D")
_TS_AT = COLUMNS.index("ts")
_VALUE_AT = COLUMNS.index("value")


@dataclass(frozen=True, slots=True)
class Derivation:
    """A structural transform of one layout, less its numbers: what a repeated scrape reuses.

    Why: a target serves the same series scrape after scrape, and selecting,
    renaming and labelling them (Polars queries over every row) costs more than
    the parse.  For a frame whose columns other than ``ts`` and ``value`` equal
    those of the frame this was made from, the transform's output is ``series``
    with each row's ``ts`` and ``value`` taken from input row ``rows[i]``, the
    value multiplied by its ``factor`` where that is not 1 (the same float
    operation the uncached path does, so the result is equal bit for bit).

    Attributes:
        series: the output for the frame this was made from (only its columns
            other than ``ts`` and ``value`` are reused).
        rows: per output row, the input row whose ``ts`` and ``value`` it takes.
        scaled_at: the output rows whose value is scaled (``None``: none).
        factors: their factors.
        upstream_rows: how many leading output rows are upstream rows (kept as
            scraped, with entities); the rest are derived (normalised) rows.
        dropped: input rows the transform left out (another collector's
            families, cAdvisor's aggregates).
    """

    series: pl.DataFrame
    rows: pl.Series
    scaled_at: pl.Series | None = None
    factors: pl.Series | None = None
    upstream_rows: int = 0
    dropped: int = 0

    @classmethod
    def of(cls, series: pl.DataFrame, rows: pl.Series, factor: pl.Series) -> Derivation:
        """From the output, its input rows and every row's factor (1: unscaled)."""
        scaled = factor != 1.0
        if not scaled.any():
            return cls(series, rows.cast(pl.UInt32))
        at = scaled.arg_true().cast(pl.UInt32)
        return cls(series, rows.cast(pl.UInt32), at, factor.gather(at))

    @classmethod
    def upstream(cls, frame: pl.DataFrame) -> Derivation:
        """Every row of ``frame`` as it is (a mapping's upstream rows)."""
        return cls(frame.select(COLUMNS),
                   pl.int_range(frame.height, dtype=pl.UInt32, eager=True),
                   upstream_rows=frame.height)

    @classmethod
    def empty(cls) -> Derivation:
        return cls(_EMPTY, pl.Series(dtype=pl.UInt32))

    @property
    def height(self) -> int:
        return self.series.height

    def then(self, *others: Derivation) -> Derivation:
        """This output followed by the others' (of the same input)."""
        parts = [self, *others]
        offsets = itertools.accumulate((d.height for d in parts[:-1]), initial=0)
        at: list[pl.Series] = []
        factors: list[pl.Series] = []
        for off, d in zip(offsets, parts, strict=True):
            if d.scaled_at is not None and d.factors is not None:
                at.append(d.scaled_at + off)
                factors.append(d.factors)
        return Derivation(
            pl.concat([d.series for d in parts], how="vertical"),
            pl.concat([d.rows for d in parts]),
            pl.concat(at) if at else None, pl.concat(factors) if factors else None,
            self.upstream_rows, self.dropped)

    def through(self, kept: pl.Series) -> Derivation:
        """The same of the frame that ``frame.filter(kept)`` was taken from."""
        at = kept.arg_true().cast(pl.UInt32)
        return Derivation(self.series, at.gather(self.rows), self.scaled_at, self.factors,
                          self.upstream_rows, self.dropped + len(kept) - len(at))

    def where(self, keep: pl.Series) -> Derivation:
        """Only the output rows where ``keep`` (a mask over the output) is true."""
        if keep.all():
            return self
        at = keep.arg_true().cast(pl.UInt32)
        scaled_at, factors = None, None
        if self.scaled_at is not None and self.factors is not None:
            # Output row -> its position among the kept ones (null where dropped).
            new_pos = pl.Series(dtype=pl.UInt32).extend_constant(None, self.height).scatter(
                at, pl.int_range(len(at), dtype=pl.UInt32, eager=True))
            moved = new_pos.gather(self.scaled_at)
            alive = moved.is_not_null()
            if alive.any():
                scaled_at, factors = moved.filter(alive), self.factors.filter(alive)
        upstream = int(keep.head(self.upstream_rows).sum())
        return Derivation(self.series.filter(keep), self.rows.gather(at), scaled_at, factors,
                          upstream, self.dropped)

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The transform's output for ``frame`` (a frame of this layout)."""
        # Indexing by a Series of positions takes the rows directly; Series.gather plans
        # and runs a one-column query, ten times the cost on a page's columns.
        ts = frame.get_column("ts")[self.rows]
        value = frame.get_column("value")[self.rows]
        if self.scaled_at is not None and self.factors is not None:
            value = value.scatter(self.scaled_at, value[self.scaled_at] * self.factors)
        # In place on a shallow copy: with_columns would plan and run a query.
        out = self.series.clone()
        out.replace_column(_TS_AT, ts)
        out.replace_column(_VALUE_AT, value)
        return out


def layout_derivation(shape_cache: ShapeCache | None, frame: pl.DataFrame,
                      derive: Callable[[pl.DataFrame], _D], kind: type[_D]) -> _D | None:
    """``derive(frame)``, kept per layout in ``shape_cache`` (``frame`` was parsed through it).

    ``kind``: what ``derive`` returns (a :class:`Derivation`, or a mapping's own
    layout record that holds one).

    ``None`` when the last parse through ``shape_cache`` named no layout (a file,
    a JSON page, a general-path parse): the caller takes its uncached path.  The
    parser numbers each layout once and never reuses a number, so a page whose
    series changed gets a new number and a new derivation, never a stale one.
    """
    serial = shape_cache.last if shape_cache is not None else None
    if shape_cache is None or serial is None:
        return None
    kept = shape_cache.derived(serial)
    if isinstance(kept, kind):
        return kept
    made = derive(frame)
    shape_cache.keep_derived(serial, made)
    return made


def normalised_rows(frame: pl.DataFrame, signals: Iterable[Signal]) -> pl.DataFrame:
    """Only the normalised rows that ``signals`` derive from ``frame``.

    Pure: ``frame`` is not changed.  Rows whose value is NaN upstream stay NaN
    (an engine that has not observed anything yet); dropping them is the
    consumer's call.  Rows come grouped by ref in table order, each ref's rows
    in ``frame`` order (a scaled histogram's buckets after its other rows).
    """
    out = _normalised(frame, tuple(signals), traced=False)
    return _EMPTY.clone() if out is None else out


def normalised_derivation(frame: pl.DataFrame, signals: Iterable[Signal]) -> Derivation:
    """What :func:`normalised_rows` makes of ``frame``, as a :class:`Derivation` of it.

    ``normalised_derivation(f, s).apply(g)`` equals ``normalised_rows(g, s)`` for
    every ``g`` whose columns other than ``ts`` and ``value`` equal ``f``'s.
    """
    out = _normalised(frame, tuple(signals), traced=True)
    if out is None:
        return Derivation.empty()
    return Derivation.of(out.select(COLUMNS), out.get_column(_SRC), out.get_column(_FACTOR))


def _normalised(frame: pl.DataFrame, signals: tuple[Signal, ...],
                traced: bool) -> pl.DataFrame | None:
    """The normalised rows (``None``: none); ``traced`` adds ``_SRC`` and ``_FACTOR``."""
    table = _compiled(signals)
    wanted = frame.get_column("metric").is_in(table.wanted)
    candidates = frame.filter(wanted)
    if candidates.height == 0:
        return None
    src = wanted.arg_true().cast(pl.UInt32) if traced else None
    parts = []
    if table.lookups:
        joined = _joined_rows(candidates, table.lookups)
        if src is not None:
            joined = joined.with_columns(src.gather(joined.get_column(_ROW)).alias(_SRC))
        parts.append(joined)
    if table.special:
        # A table declares every engine's spelling; one target exposes few of them.
        # Skipping refs with no sample here, by name, saves frame queries per ref.
        present = set(candidates.get_column("metric").unique().to_list())
        with_src = candidates if src is None else candidates.with_columns(src.alias(_SRC))
        for i, sig, r, names in table.special:
            if present.isdisjoint(names):
                continue
            part = _rows_for(with_src, sig, r, traced)
            if part.height:
                parts.append(part.with_columns(
                    pl.lit(i, dtype=pl.UInt32).alias(_REF),
                    pl.int_range(part.height, dtype=pl.UInt32).alias(_ROW)))
    if not parts:
        return None
    keep = (*COLUMNS, _REF, _ROW, *((_SRC, _FACTOR) if traced else ()))
    out = pl.concat([p.select(keep) for p in parts], how="vertical") if len(parts) > 1 \
        else parts[0].select(keep)
    out = out.sort(_REF, _ROW)
    body = pl.concat([_EMPTY, out.select(COLUMNS)], how="vertical")  # the sample schema
    return body.with_columns(out.get_column(_SRC), out.get_column(_FACTOR)) if traced else body


def row_wise(signals: Iterable[Signal]) -> bool:
    """Whether each normalised row depends on its own upstream row alone.

    True unless a ref is superseded (its rows depend on which other series an
    entity has) or rewrites a histogram's bounds: then dropping upstream rows drops
    exactly their normalised rows, so a mapping may filter after deriving.
    """
    return not _compiled(tuple(signals)).special


def normalise(frame: pl.DataFrame, signals: Iterable[Signal]) -> pl.DataFrame:
    """``frame`` with the normalised rows of ``signals`` appended (upstream rows untouched)."""
    return pl.concat([frame.select(COLUMNS), normalised_rows(frame, signals)], how="vertical")


def signal_table(signals: Iterable[Signal]) -> pl.DataFrame:
    """The declared mapping as a frame (name, unit, kind, upstream series), for display."""
    rows: dict[str, list[str]] = {"name": [], "unit": [], "kind": [], "upstream": []}
    for sig in signals:
        for r in sig.series:
            rows["name"].append(sig.name)
            rows["unit"].append(sig.unit)
            rows["kind"].append("histogram" if sig.histogram else str(sig.kind))
            desc = r.metric
            if r.match:
                desc += "{" + ",".join(f"{k} in {list(v)}" for k, v in r.match.items()) + "}"
            if r.scale != 1.0:
                desc += f" x{r.scale:g}"
            if r.superseded_by:
                desc += f" (if no {r.superseded_by})"
            rows["upstream"].append(desc)
    return pl.DataFrame(rows)


def with_entity(frame: pl.DataFrame, entity: pl.Expr) -> pl.DataFrame:
    """Set the ``entity`` column from an expression over the frame (nulls become "")."""
    return frame.with_columns(entity=entity.fill_null("").cast(pl.String))


def first_label(*names: str) -> pl.Expr:
    """The first of several alias labels that is present and non-empty (null if none).

    Upstreams renamed labels across releases (``Hostname``→``hostname``,
    ``pod_name``→``pod``); readers accept every spelling through this.
    """
    exprs = [pl.when(label(n) != "").then(label(n)) for n in names]
    return pl.coalesce(exprs)
