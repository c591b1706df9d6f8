"""The shared signal-table machinery: scaling, label matches, renames, histograms."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import dcgm, kubelet, kvcache, rdma, storage
from collectors.normalise import (
    check_signals,
    histogram,
    normalise,
    normalised_rows,
    ref,
    signal,
    signal_table,
)
from pipeline.schema import Kind, empty_frame, frame_from_rows, validate

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
