"""Fuzz the exposition parser: any payload parses or raises ExpositionError naming its line.

Three kinds of input, each in text and OpenMetrics mode (and auto-detected):
the real fixtures mutated byte by byte, the same mutated line by line, and
grammar-shaped payloads built from the pieces the grammar has (names, label
blocks with escapes, values, timestamps, exemplars, metadata, ``# EOF``),
valid or nearly so.  The large run is ``benchmarks/fuzz.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fuzzing import fuzz_settings, mutated_bytes, mutated_lines
from hypothesis import given
from hypothesis import strategies as st

from gpuslo.collectors.exposition import ExpositionError, parse_exposition

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KW: dict[str, Any] = {"node": "n", "source": "fuzz", "scrape_ts_ms": 1_700_000_000_000,
                      "entity_label": "container"}
# Exposition payloads among the fixtures (cut to keep each case fast).
PAYLOADS = [
    "cadvisor/prometheus_metrics",
    "node_exporter/e2e-output.txt",
    "kubelet/metrics_resource.metrics-server-client_test.prom",
    "triton-trtllm/tensorrtllm_backend-README-metrics.prom",
    "triton-trtllm/triton-server-docs-summary-example.prom",
    "triton-trtllm/triton-server-docs-histogram-example.MALFORMED.prom",
    "lustre/lustrefs_exporter__tests__valid_fixture_valid.txt.histsnap",
]
SEEDS: list[bytes] = [(FIXTURES / p).read_bytes()[:6000] for p in PAYLOADS]
# An OpenMetrics seed with every OM-only construct, so OM mode gets past the first line.
OM_SEED = (
    b"# TYPE rq counter\n# UNIT rq_seconds seconds\n# HELP rq Requests.\n"
    b'rq_total{code="200"} 12 1700000000.5 # {trace_id="a"} 1 1700000000.1\n'
    b'rq_created{code="200"} 1700000000.0\n'
    b"# TYPE lat histogram\n"
    b'lat_bucket{le="0.5"} 3\nlat_bucket{le="+Inf"} 5\nlat_count 5\nlat_sum 2.5\n'
    b"# TYPE st stateset\nst{st=\"a\"} 1\n# TYPE inf info\ninf_info{v=\"1\"} 1\n"
    b"# TYPE gh gaugehistogram\ngh_bucket{le=\"+Inf\"} 2\ngh_gcount 2\ngh_gsum 1\n# EOF\n"
)
SEEDS.append(OM_SEED)
TEXT_SEEDS = [s.decode("utf-8", "replace") for s in SEEDS]
MODES = st.sampled_from([None, False, True])

_names = st.one_of(st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,8}", fullmatch=True),
                   st.sampled_from(["", "9x", "a-b", "é", '"quoted"', "x_total", "h_bucket"]))
_label_values = st.one_of(st.text(max_size=8),
                          st.sampled_from(['\\"', "\\\\", "\\n", "\\", "+Inf", "0.5"]))
_values = st.one_of(
    st.sampled_from(["1", "-1", "0.5", "NaN", "+Inf", "-Inf", "1e999", "1_0", "0x10", "", "a",
                     "{sum:2,schema:0}", "{count:3,sum:2,schema:0}", "{count:1}", "--1"]),
    st.floats(allow_nan=True).map(repr),
)
_timestamps = st.one_of(st.none(),
                        st.sampled_from(["0", "-1", "1.5", "1e3", "x", "99999999999999"]),
                        st.integers(-(10**19), 10**19).map(str))


@st.composite
def grammar_lines(draw: st.DrawFn) -> str:
    """One line shaped like the grammar: metadata, a sample, a comment, EOF or blank."""
    kind = draw(st.sampled_from(["sample", "sample", "sample", "type", "help", "unit",
                                 "comment", "eof", "blank"]))
    name = draw(_names)
    if kind == "type":
        typ = draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped",
                                    "unknown", "info", "stateset", "gaugehistogram", "bogus", ""]))
        return f"# TYPE {name} {typ}"
    if kind == "help":
        return f"# HELP {name} {draw(st.text(max_size=10))}"
    if kind == "unit":
        return f"# UNIT {name} {draw(st.sampled_from(['seconds', 'bytes', '', 'x y']))}"
    if kind == "comment":
        return "#" + draw(st.text(max_size=10))
    if kind == "eof":
        return "# EOF"
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "\t", "\r", "\x1c", "# HELP \x1c"]))
    suffix = draw(st.sampled_from(["", "_total", "_bucket", "_sum", "_count", "_created",
                                   "_gsum", "_gcount", "_info"]))
    labels = draw(st.lists(st.tuples(_names, _label_values), max_size=3))
    block = ",".join(f'{k}="{v}"' for k, v in labels)
    if draw(st.booleans()):
        block += draw(st.sampled_from([",", "", ' ,', '=""']))
    head = name + suffix + (f"{{{block}}}" if labels or draw(st.booleans()) else "")
    line = f"{head} {draw(_values)}"
    ts = draw(_timestamps)
    if ts is not None:
        line += f" {ts}"
    if draw(st.integers(0, 5)) == 0:
        line += f' # {{trace_id="{draw(st.text(max_size=4))}"}} {draw(_values)}'
    return line


@st.composite
def grammar_payloads(draw: st.DrawFn) -> str:
    """Families of lines: a TYPE, then samples of that family, sometimes ``# EOF``."""
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        fam = draw(_names)
        typ = draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped",
                                    "unknown", "stateset", "info", "gaugehistogram"]))
        lines.append(f"# TYPE {fam} {typ}")
        for _ in range(draw(st.integers(0, 4))):
            line = draw(grammar_lines())
            if line and not line.startswith("#") and draw(st.booleans()):
                line = fam + line[line.index(" "):] if " " in line else fam
            lines.append(line)
    if draw(st.booleans()):
        lines.append("# EOF")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))


def check(payload: str | bytes, openmetrics: bool | None) -> None:
    """The promise: a frame, or an ExpositionError whose message names the bad line."""
    try:
        frame = parse_exposition(payload, openmetrics=openmetrics, **KW)
    except ExpositionError as exc:
        message = str(exc)
        assert exc.reason and message
        if exc.line_no:
            assert message.startswith(f"line {exc.line_no}: "), message
            text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
            lines = text.split("\n")
            assert exc.line_no <= len(lines) + 1, (exc.line_no, len(lines))
            if exc.line_no <= len(lines):
                # Text mode reports the line without its surrounding blanks.
                assert exc.line.strip() == lines[exc.line_no - 1].strip(), (
                    exc.line, lines[exc.line_no - 1])
        return
    assert frame.columns[0] == "ts"


FUZZ = fuzz_settings(150)


@FUZZ
@given(mutated_bytes(SEEDS), MODES)
def test_byte_mutated_fixtures_parse_or_name_the_line(payload: bytes, om: bool | None) -> None:
    check(payload, om)


@FUZZ
@given(mutated_lines(TEXT_SEEDS, grammar_lines()), MODES)
def test_line_mutated_fixtures_parse_or_name_the_line(payload: str, om: bool | None) -> None:
    check(payload, om)


@FUZZ
@given(grammar_payloads(), MODES)
def test_grammar_shaped_payloads_parse_or_name_the_line(payload: str, om: bool | None) -> None:
    check(payload, om)


@fuzz_settings(100)
@given(st.binary(max_size=200), MODES)
def test_arbitrary_bytes_parse_or_name_the_line(payload: bytes, om: bool | None) -> None:
    check(payload, om)

