"""The fast parser gives exactly prometheus_client's samples, or an error naming the line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)

from gpuslo.collectors import reference
from gpuslo.collectors.exposition import (
    _FLOAT_CALLS_MAX,
    _VALUE,
    ExpositionError,
    ShapeCache,
    _om_ts_ms,
    detect_openmetrics,
    parse_exposition,
    sample_kind,
)
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, Kind, canonical_labels
from gpuslo.simulator.synthetic import dcgm_payload

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KW: dict[str, Any] = {"node": "node-a", "source": "test", "scrape_ts_ms": 1_700_000_000_123}

TEXT_FIXTURES = [
    "cadvisor/prometheus_metrics",
    "cadvisor/prometheus_machine_metrics",
    "node_exporter/e2e-output.txt",
    "kubelet/metrics_resource.metrics-server-client_test.prom",
    "triton-trtllm/tensorrtllm_backend-README-metrics.prom",
    "triton-trtllm/triton-server-docs-summary-example.prom",
    "triton-trtllm/triton-server-docs-histogram-example.MALFORMED.prom",
    "lustre/lustrefs_exporter__routes__tests__metrics_endpoint_is_idempotent.snap",
    "lustre/lustrefs_exporter__tests__valid_fixture_valid.txt.histsnap",
]


def read_fixture(rel: str) -> str:
    text = (FIXTURES / rel).read_text()
    if rel.startswith("lustre/"):
        text = text.split("\n", 4)[4]  # the 4-line insta snapshot header
    return text


def assert_same(text: str, entity_label: str | None = None) -> pl.DataFrame:
    expected = reference.parse_text_reference(text, entity_label=entity_label, **KW)
    got = parse_exposition(text, entity_label=entity_label, openmetrics=False, **KW)
    assert_frame_equal(got, expected)
    return got


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.from_regex(_VALUE, fullmatch=True), min_size=1, max_size=30),
       st.booleans())
def test_numbers_read_alike_whether_a_page_is_small_or_large(values: list[str],
                                                              stamped: bool) -> None:
    """A page's numbers are read with float() up to _FLOAT_CALLS_MAX of them and by
    Arrow's cast beyond: both pages must match the reference, spelling by spelling."""
    for n in (len(values), _FLOAT_CALLS_MAX + 1 + len(values)):
        spelled = (values * (n // len(values) + 1))[:n]
        stamp = " 1700000000456" if stamped else ""
        text = "".join(f'm{{i="{i}"}} {v}{stamp}\n' for i, v in enumerate(spelled))
        expected = reference.parse_text_reference(text, **KW)
        got = parse_exposition(text, openmetrics=False, **KW)
        assert_frame_equal(got, expected, check_exact=True)


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**15) + 1, 10**15 - 1), st.integers(1, 12), st.none() | st.integers(0, 11))
def test_a_page_stamped_once_reads_its_stamp_as_the_reference_does(
        stamp: int, n: int, other_at: int | None) -> None:
    """Every sample with one stamp (read once) or one sample with another (read per
    sample): the milliseconds the reference computes, through its float seconds."""
    stamps = [str(stamp)] * n
    if other_at is not None and other_at < n:
        stamps[other_at] = str(stamp + 1)
    text = "".join(f'm{{i="{i}"}} {i}.5 {s}\n' for i, s in enumerate(stamps))
    expected = reference.parse_text_reference(text, **KW)
    for cache in (None, ShapeCache()):
        for _ in range(2):  # the second parse of a cache takes the template
            got = parse_exposition(text, openmetrics=False, shape_cache=cache, **KW)
            assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.parametrize("rel", TEXT_FIXTURES)
def test_every_text_fixture_matches_the_reference(rel: str) -> None:
    got = assert_same(read_fixture(rel), entity_label="container")
    assert got.height > 0
    assert got.schema == SAMPLE_SCHEMA


def test_dcgm_shaped_payload_matches_and_takes_the_entity_label() -> None:
    got = assert_same(dcgm_payload(nodes=2, gpus=2), entity_label="UUID")
    assert got["entity"].str.starts_with("GPU-").all()
    assert set(got["kind"].unique().to_list()) == {"gauge", "counter"}


def test_bytes_crlf_and_padding_are_accepted() -> None:
    text = '# TYPE a_total counter\r\na_total{x="1"} 3 1700000000000\r\n  b 2  \r\n\r\n'
    assert_same(text)
    got = parse_exposition(text.encode(), openmetrics=False, **KW)
    assert got["metric"].to_list() == ["a_total", "b"]
    assert got["kind"].to_list() == [Kind.COUNTER, Kind.UNTYPED]


def test_hard_lines_take_the_exact_slow_path() -> None:
    text = "\n".join([
        "# HELP m help with \\\\ and \\n escapes",
        "# TYPE m gauge",
        'm{path="C:\\\\dir",msg="say \\"hi\\"\\nbye",u="\u00e9\u6f22"} NaN',
        'm{a="1" , b="2",} +Inf 1700000000999',
        'm {a="3"} -Inf',
        "m\t5",
        "m 1 2 3",
        'm{,a="4"} 1e3',
    ]) + "\n"
    got = assert_same(text)
    assert got.height == 6
    labels = got["labels"][0].to_list()
    assert {"name": "msg", "value": 'say "hi"\nbye'} in labels
    assert math.isnan(got["value"][0])


def test_the_malformed_triton_doc_example_is_not_misread_as_a_histogram() -> None:
    got = assert_same(read_fixture(
        "triton-trtllm/triton-server-docs-histogram-example.MALFORMED.prom"))
    # The family name does not match the samples, so nothing may come out as a histogram.
    assert set(got["kind"].to_list()) == {Kind.UNTYPED}
    assert not got["metric"].str.ends_with("_bucket").any()


def test_sample_kind_is_the_reference_mapping() -> None:
    types = ["counter", "gauge", "summary", "histogram", "gaugehistogram", "untyped", "info"]
    for typ in types:
        for suffix in ["", "_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_x"]:
            assert sample_kind(typ, "f", "f" + suffix) == reference.sample_kind(typ, "f",
                                                                                "f" + suffix)


@pytest.mark.parametrize(
    ("text", "line_no"),
    [
        ("a 1\nb{c=\"d\" 2\n", 2),
        ("a 1\nb not-a-number\n", 2),
        ('# TYPE a gauge\na{__bad="x"} 1\n', 2),
        ('a{x="1",x="2"} 1\n', 1),
        ('a{x="1",,y="2"} 1\n', 1),
        ("a 1\n# TYPE b\n", 2),
        ("a 1\n# TYPE 9b gauge\n", 2),
        ("a 1\nb 1_000\n", 2),
        ('a 1\n{x="1"} 2\n', 2),
        ('a{__name__="b"} 2\n', 1),
        ("a 1\n\n\n1abc 2\n", 4),
        ("# TYPE a bogus\na 1\n# TYPE b gauge\n", 1),  # names the TYPE line
    ],
)
def test_malformed_text_names_the_line(text: str, line_no: int) -> None:
    with pytest.raises(ValueError):
        reference.parse_text_reference(text, **KW)
    with pytest.raises(ExpositionError) as info:
        parse_exposition(text, openmetrics=False, **KW)
    assert info.value.line_no == line_no
    assert f"line {line_no}" in str(info.value)


def test_openmetrics_is_detected_and_its_rules_apply() -> None:
    assert detect_openmetrics("a 1\n# EOF\n")
    assert not detect_openmetrics("a 1\n")
    assert detect_openmetrics("a 1\n", "application/openmetrics-text; version=1.0.0")
    with pytest.raises(ExpositionError, match="EOF"):
        parse_exposition("a 1\n", openmetrics=True, **KW)
    with pytest.raises(ExpositionError, match="line 2"):
        parse_exposition("a 1\n\n# EOF\n", openmetrics=True, **KW)
    with pytest.raises(ExpositionError, match="line 3"):
        parse_exposition("a 1\n# EOF\nb 2\n", openmetrics=True, **KW)
    # lustrefs-exporter ends with "# EOF" but is not valid OpenMetrics (a counter
    # family named ..._total): the OpenMetrics reference rejects it too.
    text = read_fixture(
        "lustre/lustrefs_exporter__routes__tests__metrics_endpoint_is_idempotent.snap")
    with pytest.raises(ValueError, match="Clashing name"):
        list(om_families(text))
    with pytest.raises(ExpositionError, match="clashing name"):
        parse_exposition(text, **KW)


# --- generated payloads --------------------------------------------------------------------------

_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
_lnames = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,8}", fullmatch=True)
_lvalues = st.text(
    st.one_of(st.sampled_from(list('ab ,={}#"\\\n\t')), st.characters(codec="utf-8",
                                                                         exclude_categories=("Cs",))),
    max_size=12,
)
_values = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, width=64).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "Inf", "nan", "-0", "0.0", "-0.0", "1e3", ".5", "5."]),
)
_timestamps = st.one_of(st.none(), st.integers(-(10**14), 10**14).map(str))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample_line(name: str, labels: dict[str, str], value: str, ts: str | None) -> str:
    block = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    line = f"{name}{{{block}}}" if labels or name.endswith("_") else name
    line += f" {value}"
    return line + (f" {ts}" if ts is not None else "")


@st.composite
def text_payloads(draw: st.DrawFn) -> str:
    out: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        fam = draw(_names)
        typ = draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped", None]))
        if draw(st.booleans()):
            out.append(f"# HELP {fam} some help \\n text")
        if typ is not None:
            out.append(f"# TYPE {fam} {typ}")
        suffixes = {"counter": ["", "_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "summary": ["", "_sum", "_count"]}.get(typ or "", [""])
        for _ in range(draw(st.integers(0, 6))):
            suffix = draw(st.sampled_from([*suffixes, "_other"]))
            labels = draw(st.dictionaries(_lnames, _lvalues, max_size=3))
            out.append(_sample_line(fam + suffix, labels, draw(_values), draw(_timestamps)))
    return "\n".join(out) + "\n"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_payloads())
def test_generated_text_payloads_match_the_reference(text: str) -> None:
    try:
        expected = reference.parse_text_reference(text, entity_label="a", **KW)
    except ValueError:
        with pytest.raises(ExpositionError):
            parse_exposition(text, entity_label="a", openmetrics=False, **KW)
        return
    got = parse_exposition(text, entity_label="a", openmetrics=False, **KW)
    assert_frame_equal(got, expected)


def om_reference(text: str) -> pl.DataFrame:
    """The OpenMetrics reference parser's samples, in the sample-frame contract."""
    rows: dict[str, list[Any]] = {c: [] for c in SAMPLE_SCHEMA.names()}
    for fam in om_families(text):
        for s in fam.samples:
            rows["ts"].append(KW["scrape_ts_ms"] if s.timestamp is None else _om_ts_ms(s.timestamp))
            rows["node"].append(KW["node"])
            rows["source"].append(KW["source"])
            rows["metric"].append(s.name)
            rows["kind"].append(sample_kind(fam.type, fam.name, s.name).value)
            rows["value"].append(float(s.value))
            rows["entity"].append("")
            rows["labels"].append(canonical_labels(s.labels))
    frame = pl.DataFrame(rows, schema={**SAMPLE_SCHEMA, "ts": pl.Int64})
    return frame.with_columns(pl.col("ts").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"))


@st.composite
def om_payloads(draw: st.DrawFn) -> str:
    out: list[str] = []
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True),
                          min_size=1, max_size=4, unique=True))
    for i, fam in enumerate(names):
        fam = f"f{i}_{fam}"
        typ = draw(st.sampled_from(["counter", "gauge", "unknown"]))
        out.append(f"# TYPE {fam} {typ}")
        if draw(st.booleans()):
            out.append(f"# HELP {fam} help")
        keys = draw(st.lists(st.dictionaries(_lnames, _lvalues, max_size=2), max_size=4,
                             unique_by=lambda d: tuple(sorted(d.items()))))
        for labels in keys:
            ts = draw(st.one_of(st.none(), st.from_regex(r"[0-9]{1,10}(\.[0-9]{1,9})?",
                                                         fullmatch=True)))
            value = draw(st.one_of(st.integers(0, 10**6).map(str),
                                   st.sampled_from(["1.5", "0", "+Inf", "3e2"])))
            if typ == "gauge":
                value = draw(st.sampled_from([value, "NaN", "-2.5"]))
            name = fam + ("_total" if typ == "counter" else "")
            out.append(_sample_line(name, labels, value, ts))
            if typ == "counter" and ts is None and draw(st.booleans()):
                out.append(_sample_line(fam + "_created", labels, "1700000000.5", None))
    out.append("# EOF")
    return "\n".join(out) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(om_payloads())
def test_generated_openmetrics_payloads_match_the_reference(text: str) -> None:
    try:
        expected = om_reference(text)
    except ValueError:
        with pytest.raises(ExpositionError):
            parse_exposition(text, **KW)
        return
    got = parse_exposition(text, **KW)
    assert_frame_equal(got, expected)


def test_openmetrics_exemplars_are_skipped_and_timestamps_are_seconds() -> None:
    text = (
        "# TYPE h histogram\n"
        'h_bucket{le="1.0"} 2 # {trace_id="abc"} 0.5 1700000000.25\n'
        'h_bucket{le="+Inf"} 3 # {trace_id="def"} 7\n'
        "h_count 3\n"
        "h_sum 7.5\n"
        "# TYPE g gauge\n"
        "g 1 1700000000.123456\n"
        "# EOF\n"
    )
    got = parse_exposition(text, **KW)
    assert_frame_equal(got, om_reference(text))
    assert got["kind"].to_list() == [Kind.HISTOGRAM_BUCKET, Kind.HISTOGRAM_BUCKET,
                                     Kind.HISTOGRAM_COUNT, Kind.HISTOGRAM_SUM, Kind.GAUGE]
    assert got["ts"].dt.epoch("ms").to_list()[4] == 1_700_000_000_123


def test_entity_comes_from_the_decoded_label_not_from_text_inside_another_value() -> None:
    # A label value that looks like `a=` once fooled a text search for the entity label.
    text = '# TYPE m gauge\nm{gpu="{a=",a="GPU-1"} 1\n'
    frame = parse_exposition(text, node="n", source="s", scrape_ts_ms=0, entity_label="a")
    assert frame["entity"].to_list() == ["GPU-1"]


def test_shape_cache_never_returns_another_payloads_labels_or_values() -> None:
    """Scrapes of one target reuse its cached structure; any change in labels must not."""
    kw: dict[str, Any] = {"node": "n", "source": "s", "scrape_ts_ms": 0}
    first = '# HELP m help\n# TYPE m gauge\nm{gpu="0"} 1\nm{gpu="1"} 2\n'
    values_changed = '# HELP m help\n# TYPE m gauge\nm{gpu="0"} 5\nm{gpu="1"} 6\n'
    label_changed = '# HELP m help\n# TYPE m gauge\nm{gpu="0"} 5\nm{gpu="7"} 6\n'
    for text in (first, values_changed, label_changed, first):
        assert_frame_equal(parse_exposition(text, openmetrics=False, **kw),
                           reference.parse_text_reference(text, **kw))


def test_a_shape_cache_is_per_caller_and_bounded() -> None:
    one = '# TYPE a gauge\na{x="1"} 1\n'
    two = '# TYPE b gauge\nb{y="2"} 2\n'
    cache = ShapeCache(capacity=1)
    first = parse_exposition(one, openmetrics=False, shape_cache=cache, **KW)
    again = parse_exposition(one.replace(" 1\n", " 5\n"), openmetrics=False,
                             shape_cache=cache, **KW)
    assert (cache.misses, cache.hits) == (1, 1)
    assert again["value"].to_list() == [5.0] and again.drop("value").equals(first.drop("value"))
    parse_exposition(two, openmetrics=False, shape_cache=cache, **KW)
    parse_exposition(one, openmetrics=False, shape_cache=cache, **KW)
    assert len(cache) == 1 and cache.misses == 3  # capacity 1: "two" evicted "one"
    # Without a cache nothing is kept between calls (no process-wide state).
    other = ShapeCache()
    parse_exposition(one, openmetrics=False, **KW)
    parse_exposition(one, openmetrics=False, shape_cache=other, **KW)
    assert other.misses == 1 and other.hits == 0


@pytest.mark.parametrize("line", [
    "h {sum:2,schema:0}",  # a native-histogram-like value missing its count (fuzz finding)
    "h {count:3,sum:2,schema:0}",
    'h{le="1"} {sum:2}',
])
def test_a_malformed_openmetrics_histogram_value_is_an_exposition_error(line: str) -> None:
    text = f"# TYPE h histogram\n{line}\n# EOF\n"
    with pytest.raises(ExpositionError, match="line 2"):
        parse_exposition(text, openmetrics=True, **KW)


@pytest.mark.parametrize(("text", "om"), [
    # Fuzz finding: a timestamp past 64-bit milliseconds escaped as a polars TypeError
    # ("unexpected value while building Series of type Int64").
    ("# TYPE : counter\n# TYPE : counter\n# TYPE : counter\n: 1 9223372036854775000\n", None),
    ("a 1 99999999999999999999\n", False),
    ("a 1 9223372036854775.808\n# EOF\n", True),
])
def test_a_timestamp_past_64_bit_milliseconds_is_an_exposition_error(
    text: str, om: bool | None
) -> None:
    last = text.rstrip("\n").split("\n")
    line_no = len(last) - (1 if om else 0)
    with pytest.raises(ExpositionError, match=rf"^line {line_no}: .*timestamp out of range"):
        parse_exposition(text, openmetrics=om, **KW)


def test_the_largest_64_bit_timestamp_is_kept() -> None:
    got = parse_exposition("a 1 9223372036854775.807\n# EOF\n", openmetrics=True, **KW)
    assert got["ts"].cast(pl.Int64).to_list() == [2**63 - 1]


@pytest.mark.parametrize("text", [
    # Found by benchmarks/fuzz.py (atheris): the reference's _unquote_unescape('')
    # raised IndexError('string index out of range') out of parse_exposition.
    "# HELP \x1c x\n",
    "# TYPE \x1c gauge\n",
    "# HELP\r\r\x1c\r *cvGS\\CK\\\x02",
])
def test_a_metadata_line_without_a_name_is_an_exposition_error(text: str) -> None:
    with pytest.raises(ExpositionError, match=r"^line 1: .*missing metric name$"):
        parse_exposition(text, openmetrics=None, **KW)
