"""The shared signal-table machinery: scaling, label matches, renames, histograms."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.collectors.mappings import dcgm, kubelet, kvcache, rdma, storage
from gpuslo.collectors.mappings.normalise import (
    SeriesRef,
    Signal,
    _match_expr,
    _scale_le,
    _upstream_names,
    check_signals,
    default_parse,
    histogram,
    normalise,
    normalised_rows,
    ref,
    signal,
    signal_table,
)
from gpuslo.collectors.scrape.files import read_sysfs
from gpuslo.pipeline.schema import (
    COLUMNS,
    KIND_DTYPE,
    SAMPLE_SCHEMA,
    Kind,
    empty_frame,
    frame_from_rows,
    validate,
)

TS = 1_700_000_000_000


def rows(*specs: tuple[str, float, dict[str, str]], entity: str = "e",
         kind: Kind = Kind.GAUGE) -> pl.DataFrame:
    return frame_from_rows((TS, "n1", "src", m, kind, v, entity, lab) for m, v, lab in specs)


@pytest.mark.parametrize(
    "table",
    [dcgm.SIGNALS, kvcache.SIGNALS, rdma.SIGNALS, kubelet.SIGNALS, storage.SIGNALS],
    ids=["dcgm", "kvcache", "rdma", "kubelet", "storage"],
)
def test_every_declared_table_follows_the_naming_rules(table: tuple) -> None:
    assert check_signals(table) == []
    shown = signal_table(table)
    assert shown.height == sum(len(s.series) for s in table)


def test_check_signals_names_each_problem() -> None:
    bad = [signal("foo_bytes", "bytes", Kind.GAUGE, "x"),
           signal("gpuslo_x_bytes", "bytes", Kind.COUNTER, "x"),
           signal("gpuslo_y_total", "bytes", Kind.GAUGE, "y")]
    problems = check_signals(bad)
    assert len(problems) == 3
    assert "gpuslo_" in problems[0] and "_total" in problems[1] and "_total" in problems[2]


def test_scale_and_label_match_and_upstream_rows_untouched() -> None:
    frame = rows(
        ("blocks", 0.5, {"type": "fraction"}),
        ("blocks", 64.0, {"type": "tokens_per"}),
    )
    sig = signal("gpuslo_usage_ratio", "ratio", Kind.GAUGE, ref("blocks", type="fraction"))
    out = normalise(frame, [sig])
    assert out.head(2).equals(frame)
    added = out.slice(2)
    assert added["metric"].to_list() == ["gpuslo_usage_ratio"]
    assert added["value"].to_list() == [0.5]
    assert added["labels"].to_list() == [[{"name": "type", "value": "fraction"}]]
    validate(out)

    scaled = normalised_rows(rows(("fb", 2.0, {})), [signal(
        "gpuslo_fb_bytes", "bytes", Kind.GAUGE, ref("fb", scale=1024.0 * 1024.0))])
    assert scaled["value"].to_list() == [2.0 * 1048576]


def test_superseded_name_is_used_only_where_the_new_name_is_absent() -> None:
    frame = pl.concat([
        rows(("new", 0.25, {}), ("old", 0.25, {}), entity="both"),
        rows(("old", 0.75, {}), entity="only_old"),
    ])
    sig = signal("gpuslo_u_ratio", "ratio", Kind.GAUGE, "new", ref("old", superseded_by="new"))
    out = normalised_rows(frame, [sig]).sort("entity")
    assert out.select("entity", "value").rows() == [("both", 0.25), ("only_old", 0.75)]


def test_histogram_family_maps_suffixes_and_scales_sum_and_bounds_not_counts() -> None:
    frame = frame_from_rows([
        (TS, "n", "s", "lat_ms_bucket", Kind.HISTOGRAM_BUCKET, 3.0, "e", {"le": "100"}),
        (TS, "n", "s", "lat_ms_bucket", Kind.HISTOGRAM_BUCKET, 5.0, "e", {"le": "+Inf"}),
        (TS, "n", "s", "lat_ms_sum", Kind.HISTOGRAM_SUM, 1500.0, "e", {}),
        (TS, "n", "s", "lat_ms_count", Kind.HISTOGRAM_COUNT, 5.0, "e", {}),
    ])
    sig = histogram("gpuslo_lat_seconds", "seconds", ref("lat_ms", scale=1e-3))
    out = normalised_rows(frame, [sig])
    got = {(r["metric"], tuple((lab["name"], lab["value"]) for lab in r["labels"])):
           (r["kind"], r["value"]) for r in out.iter_rows(named=True)}
    # 100 ms bound -> 0.1 s; counts stay counts; sum 1500 ms -> 1.5 s.
    assert got[("gpuslo_lat_seconds_bucket", (("le", "0.1"),))] == ("histogram_bucket", 3.0)
    assert got[("gpuslo_lat_seconds_bucket", (("le", "+Inf"),))] == ("histogram_bucket", 5.0)
    assert got[("gpuslo_lat_seconds_sum", ())] == ("histogram_sum", 1.5)
    assert got[("gpuslo_lat_seconds_count", ())] == ("histogram_count", 5.0)


def test_empty_and_unrelated_frames_give_no_rows() -> None:
    sig = signal("gpuslo_a_ratio", "ratio", Kind.GAUGE, "a")
    assert normalised_rows(empty_frame(), [sig]).height == 0
    assert normalised_rows(rows(("b", 1.0, {})), [sig]).height == 0
    assert normalise(empty_frame(), [sig]).schema == empty_frame().schema


def test_nan_upstream_stays_nan() -> None:
    out = normalised_rows(rows(("a", math.nan, {})),
                          [signal("gpuslo_a_ratio", "ratio", Kind.GAUGE, "a")])
    assert math.isnan(out["value"][0])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]),
                  st.floats(allow_nan=False, allow_infinity=False, width=32),
                  st.sampled_from(["x", "y"])),
        max_size=20,
    ),
    st.floats(min_value=1e-9, max_value=1e9),
)
def test_normalise_appends_exactly_one_row_per_match(
    specs: list[tuple[str, float, str]], scale: float
) -> None:
    frame = frame_from_rows((TS, "n", "s", m, Kind.COUNTER, v, "e", {"l": lab})
                            for m, v, lab in specs) if specs else empty_frame()
    sig = signal("gpuslo_a_total", "things", Kind.COUNTER, ref("a", scale=scale, l="x"))
    out = normalise(frame, [sig])
    assert out.head(frame.height).equals(frame)
    expected = [v * scale for m, v, lab in specs if m == "a" and lab == "x"]
    assert out.slice(frame.height)["value"].to_list() == pytest.approx(expected)


# --- the joined implementation against the per-ref algorithm it replaced ---------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ALL_TABLES: dict[str, tuple[Signal, ...]] = {
    "dcgm": dcgm.SIGNALS,
    "kvcache": kvcache.SIGNALS,
    "rdma": rdma.SIGNALS,
    "storage": storage.SIGNALS,
    "kubelet": kubelet.SIGNALS,
    "cadvisor": kubelet.cadvisor_signals(with_usage=True),
    "cadvisor_only": kubelet.cadvisor_signals(with_usage=False),
}


def reference_rows_for(frame: pl.DataFrame, sig: Signal, r: SeriesRef) -> pl.DataFrame:
    """The per-ref algorithm, kept verbatim as the reference: several queries per ref."""
    names = _upstream_names(sig, r.metric)
    out_rows = frame.filter(pl.col("metric").is_in(list(names)))
    if sig.histogram:
        kinds = [k.value for k in (Kind.HISTOGRAM_BUCKET, Kind.HISTOGRAM_SUM,
                                   Kind.HISTOGRAM_COUNT)]
        out_rows = out_rows.filter(pl.col("kind").cast(pl.String).is_in(kinds))
    elif not r.metric.endswith("_total"):
        out_rows = out_rows.filter((pl.col("metric") == r.metric)
                                   | (pl.col("kind") == Kind.COUNTER.value))
    if r.match and out_rows.height:
        out_rows = out_rows.filter(_match_expr(r.match))
    if r.superseded_by is not None and out_rows.height:
        newer_names = list(_upstream_names(sig, r.superseded_by))
        has_newer = (frame.filter(pl.col("metric").is_in(newer_names))
                     .select("node", "source", "entity").unique())
        out_rows = out_rows.join(has_newer, on=["node", "source", "entity"], how="anti")
    if out_rows.height == 0:
        return out_rows
    value = pl.col("value")
    if r.scale != 1.0:
        if sig.histogram:
            value = (pl.when(pl.col("metric") == r.metric + "_sum")
                     .then(pl.col("value") * r.scale).otherwise(pl.col("value")))
        else:
            value = pl.col("value") * r.scale
    kind = pl.col("kind") if sig.kind is None else pl.lit(sig.kind.value, dtype=KIND_DTYPE)
    out = out_rows.with_columns(
        value=value, kind=kind,
        metric=pl.col("metric").replace_strict(names, return_dtype=pl.String))
    if sig.histogram and r.scale != 1.0:
        is_bucket = pl.col("metric") == sig.name + "_bucket"
        buckets = out.filter(is_bucket)
        scaled = pl.Series("labels", [_scale_le(labs, r.scale)
                                      for labs in buckets["labels"].to_list()],
                           dtype=SAMPLE_SCHEMA["labels"])
        out = pl.concat([out.filter(~is_bucket), buckets.with_columns(scaled)])
    return out.select(COLUMNS)


def reference_normalised_rows(frame: pl.DataFrame, signals: Iterable[Signal]) -> pl.DataFrame:
    signals = list(signals)
    wanted = {n for sig in signals for r in sig.series for n in _upstream_names(sig, r.metric)}
    candidates = frame.filter(pl.col("metric").is_in(list(wanted)))
    parts = [empty_frame()]
    present = set(candidates.get_column("metric").to_list())
    for sig in signals:
        for r in sig.series:
            if present.isdisjoint(_upstream_names(sig, r.metric)):
                continue
            part = reference_rows_for(candidates, sig, r)
            if part.height:
                parts.append(part)
    return pl.concat(parts, how="vertical")


def assert_same_as_reference(frame: pl.DataFrame, tables: Mapping[str, Sequence[Signal]],
                             ) -> int:
    """Both implementations agree exactly (rows, values, dtypes, and even row order)."""
    produced = 0
    for name, table in tables.items():
        got = normalised_rows(frame, table)
        want = reference_normalised_rows(frame, table)
        assert got.schema == want.schema == empty_frame().schema, name
        assert_frame_equal(got, want, check_exact=True)
        # Order is kept too; the comparison above would already fail otherwise.
        produced += got.height
    return produced


def _prom_fixture_frames() -> Iterator[tuple[str, pl.DataFrame]]:
    texts = {
        "cadvisor/prometheus_metrics": "kubelet", "cadvisor/prometheus_machine_metrics": "kubelet",
        "kubelet/metrics_resource.metrics-server-client_test.prom": "kubelet",
        "node_exporter/e2e-output.node_disk.excerpt.prom": "storage",
        "node_exporter/e2e-output.node_infiniband.excerpt.prom": "rdma",
        "node_exporter/e2e-output.txt": "storage",
        "triton-trtllm/tensorrtllm_backend-README-metrics.prom": "kvcache",
        "triton-trtllm/triton-server-docs-histogram-example.MALFORMED.prom": "kvcache",
        "triton-trtllm/triton-server-docs-summary-example.prom": "kvcache",
        "lustre/lustrefs_exporter__routes__tests__metrics_endpoint_is_idempotent.snap": "storage",
        "lustre/lustrefs_exporter__tests__valid_fixture_valid.txt.histsnap": "storage",
    }
    for rel, source in texts.items():
        text = storage.strip_insta_header((FIXTURES / rel).read_text())
        try:
            frame = default_parse(text, node="n1", source=source, scrape_ts_ms=TS)
        except ValueError:
            continue  # a fixture kept for its parse error
        yield rel, frame
    yield "proc-diskstats", storage.parse_diskstats(
        (FIXTURES / "node_exporter" / "proc-diskstats").read_text(), node="n1",
        scrape_ts_ms=TS, device_exclude=None).frame
    yield "stats_summary", kubelet.summary_to_frame(
        (FIXTURES / "kubelet" / "stats_summary.metrics-server-types_test.json").read_text(),
        node="n1", scrape_ts_ms=TS).frame
    yield "procfs", read_sysfs(FIXTURES / "procfs" / "sys", node="n1",
                                   scrape_ts_ms=TS).frame


def _with_entities(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """The frame as parsed and as each collector's entity derivation leaves it."""
    out = [frame]
    for derive in (dcgm.derive_entities, kvcache.derive_entities, kubelet.derive_entities,
                   storage.derive_entities):
        try:
            out.append(derive(frame))
        except pl.exceptions.PolarsError:
            continue
    return out


def test_joined_normalisation_matches_the_per_ref_reference_on_every_fixture() -> None:
    produced = 0
    for _, frame in _prom_fixture_frames():
        for variant in _with_entities(frame):
            produced += assert_same_as_reference(variant, ALL_TABLES)
    assert produced > 1000  # the fixtures do exercise the tables


def test_joined_normalisation_matches_the_per_ref_reference_on_simulated_pages() -> None:
    from gpuslo.simulator.endpoints import endpoints
    from gpuslo.simulator.scenario import default_scenario

    fleet, _ = default_scenario().build()
    fleet.advance(fleet.t + 120.0)
    ts = int(fleet.t * 1000)
    produced = 0
    kinds = set()
    for ep in endpoints(fleet):
        body = ep.render(fleet, ts)
        if body is None:
            continue
        if ep.kind == "kubelet_summary":
            frame = kubelet.summary_to_frame(body, node=ep.node, scrape_ts_ms=ts).frame
        elif ep.kind == "diskstats":
            frame = storage.parse_diskstats(body, node=ep.node, scrape_ts_ms=ts).frame
        else:
            frame = default_parse(body, node=ep.node, source=ep.source, scrape_ts_ms=ts)
        kinds.add(ep.kind)
        if ep.source == "kvcache":
            frame = kvcache.derive_entities(frame, ep.entity)
        produced += assert_same_as_reference(frame, ALL_TABLES)
    assert {"dcgm", "node_exporter", "kubelet_cadvisor", "kubelet_summary", "diskstats"} <= kinds
    assert produced > 1000


MIXED_TABLE = (
    signal("gpuslo_a_total", "things", Kind.COUNTER, "a", ref("a_old", superseded_by="a")),
    signal("gpuslo_b_ratio", "ratio", Kind.GAUGE, ref("b", t=("x", "y")), ref("b", scale=2.0)),
    signal("gpuslo_c_total", "things", Kind.COUNTER, ref("b", t="y", u="1", scale=0.5)),
    histogram("gpuslo_h_seconds", "seconds", "h", ref("h_ms", scale=1e-3),
              ref("h_old", superseded_by="h")),
)
METRICS = ["a", "a_total", "a_old", "a_old_total", "b", "b_total", "h_bucket", "h_sum",
           "h_count", "h_ms_bucket", "h_ms_sum", "h_ms_count", "h_old_bucket", "h_old_sum",
           "zz"]


@settings(max_examples=30, deadline=None)
@given(st.lists(
    st.tuples(
        st.sampled_from(METRICS),
        st.sampled_from([Kind.COUNTER, Kind.GAUGE, Kind.UNTYPED, Kind.HISTOGRAM_BUCKET,
                         Kind.HISTOGRAM_SUM, Kind.HISTOGRAM_COUNT]),
        st.one_of(st.floats(width=32), st.just(math.nan)),
        st.sampled_from(["e1", "e2"]),
        st.builds(lambda tu, le: {**tu, **le},
                  st.dictionaries(st.sampled_from(["t", "u"]),
                                  st.sampled_from(["x", "y", "1", ""]), max_size=2),
                  st.dictionaries(st.just("le"), st.sampled_from(["0.5", "100", "+Inf"]))),
    ),
    max_size=40,
))
def test_joined_normalisation_matches_the_reference_on_mixed_refs(
    specs: list[tuple[str, Kind, float, str, dict[str, str]]],
) -> None:
    frame = frame_from_rows((TS, "n", "s", m, k, v, e, lab) for m, k, v, e, lab in specs
                            ) if specs else empty_frame()
    assert_same_as_reference(frame, {"mixed": MIXED_TABLE, "twice": MIXED_TABLE + MIXED_TABLE})
