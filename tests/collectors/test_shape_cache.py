"""What the parser's per-target shape cache promises the rest of the collection path.

``ShapeCache.last`` names the shape a parse used: the scrape engine turns it into a
series key, and the collect stage then stores a repeated target's series once.  A hit
must give exactly the frame a parse without the cache gives (the kept frame's columns
are reused, only ts and values are new).
"""

from __future__ import annotations

import re

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.collectors.exposition import (
    _NUMBERS,
    _TEXT_TS,
    _VALUE,
    ShapeCache,
    parse_exposition,
)

KW = {"node": "n", "source": "dcgm", "openmetrics": False}


def payload(values: list[float], stamp: int | None = None, extra: bool = False) -> str:
    ts = f" {stamp}" if stamp is not None else ""
    lines = ["# HELP m_temp Temperature.", "# TYPE m_temp gauge"]
    lines += [f'm_temp{{gpu="{i}",UUID="GPU-{i}"}} {v!r}{ts}' for i, v in enumerate(values)]
    if extra:
        lines += ["# HELP m_new A series that appeared.", "# TYPE m_new counter", "m_new 1"]
    return "\n".join(lines) + "\n"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.floats(allow_nan=False, width=32), min_size=3, max_size=3),
                min_size=1, max_size=5),
       st.lists(st.none() | st.integers(0, 2_000_000_000_000), min_size=5, max_size=5),
       st.integers(1_700_000_000_000, 1_800_000_000_000))
def test_a_repeated_shape_keeps_its_name_and_gives_the_uncached_frame(
        scrapes: list[list[float]], stamps: list[int | None], ts_ms: int) -> None:
    cache = ShapeCache()
    names = []
    for values, stamp in zip(scrapes, stamps, strict=False):
        text = payload(values, stamp)
        got = parse_exposition(text, scrape_ts_ms=ts_ms, shape_cache=cache, **KW)
        assert_frame_equal(got, parse_exposition(text, scrape_ts_ms=ts_ms, **KW))
        names.append(cache.last)
    # Timestamps are not part of the shape: with or without them, one shape.
    assert None not in names and len(set(names)) == 1


def test_a_new_series_is_a_new_shape_and_no_number_is_reused() -> None:
    a, b = ShapeCache(), ShapeCache()
    parse_exposition(payload([1.0, 2.0, 3.0]), scrape_ts_ms=0, shape_cache=a, **KW)
    first = a.last
    parse_exposition(payload([1.0, 2.0, 3.0], extra=True), scrape_ts_ms=0, shape_cache=a, **KW)
    assert a.last not in (None, first)
    parse_exposition(payload([1.0, 2.0, 3.0]), scrape_ts_ms=0, shape_cache=a, **KW)
    assert a.last == first  # the old shape is still held (two entries)
    parse_exposition(payload([1.0, 2.0, 3.0]), scrape_ts_ms=0, shape_cache=b, **KW)
    assert b.last not in (None, first)  # another target's cache: its own numbers


def test_a_general_path_parse_names_no_shape() -> None:
    cache = ShapeCache()
    parse_exposition(payload([1.0, 2.0, 3.0]), scrape_ts_ms=0, shape_cache=cache, **KW)
    assert cache.last is not None
    # An escaped label value takes the general path, which keeps nothing.
    parse_exposition('m{a="x\\"y"} 1\n', scrape_ts_ms=0, shape_cache=cache, **KW)
    assert cache.last is None


def test_kept_frames_are_only_those_of_held_shapes() -> None:
    cache = ShapeCache(capacity=1)
    for extra in (False, True, False):
        parse_exposition(payload([1.0, 2.0, 3.0], extra=extra), scrape_ts_ms=0,
                         shape_cache=cache, **KW)
        assert cache.last is not None
        assert cache.frame(cache.last, "n", "dcgm") is not None
    assert len(cache) == 1 and len(cache._frames) == 1


# ---- the layout template: a repeated payload told apart without the findall -------------

BASE = [
    "# HELP m_temp Temperature.", "# TYPE m_temp gauge",
    'm_temp{gpu="0",UUID="GPU-0"} 1', 'm_temp{gpu="1",UUID="GPU-1"} 2',
    "# HELP m_bytes Bytes moved.", "# TYPE m_bytes counter",
    'm_bytes_total{gpu="0"} 3', "m_up 4",
]
SAMPLE_AT = [2, 3, 6, 7]
VALUES = st.sampled_from(["0", "-0", "+0", "1", "-12", "3.25", ".5", "1e-7", "2.5E+3", "NaN",
                          "nan", "+Inf", "-Inf", "inf", "123456789012345678"])
# Text after a sample's head that is no value (and timestamp): the general path decides.
NOT_NUMBERS = st.sampled_from(["abc", "1 2 3", "1  2", "", "1 ", " 1", "0x10", "1_0", "1\r",
                               "1 -", "1 2.5", "Infinity", "1 1000000000000000"])
CHANGES = st.sampled_from(["none", "none", "none", "label", "name", "help", "drop", "add",
                           "blank", "not_number", "crlf"])


def _outcome(text: str, cache: ShapeCache | None, ts_ms: int) -> object:
    try:
        return parse_exposition(text, scrape_ts_ms=ts_ms, shape_cache=cache, **KW)
    except ValueError as exc:
        return f"error: {exc}"


def _layout(text: str) -> list[str]:
    """Every line without the numbers of a sample line (what a shape depends on)."""
    return [line if not line or line.startswith("#") else
            line[:line.rindex("}") + 1] if "}" in line else line.split(" ", 1)[0]
            for line in text.split("\n")]


@st.composite
def scrape_sequence(draw: st.DrawFn) -> list[tuple[str, bool]]:
    """Payloads of one target, each with whether its lines but numbers equal the last one's."""
    out: list[tuple[str, bool]] = []
    lines = list(BASE)
    for _ in range(draw(st.integers(1, 6))):
        change = draw(CHANGES)
        before = list(lines)
        for at in SAMPLE_AT:
            if at < len(lines) and lines[at] and not lines[at].startswith("#"):
                head = lines[at].rsplit("}", 1)[0] + "} " if "}" in lines[at] else (
                    lines[at].split(" ", 1)[0] + " ")
                stamp = draw(st.none() | st.integers(0, 10**15 - 1))
                lines[at] = head + draw(VALUES) + ("" if stamp is None else f" {stamp}")
        if change == "label":
            lines[2] = lines[2].replace('gpu="0"', 'gpu="9"')
        elif change == "name":
            lines[7] = lines[7].replace("m_up", "m_down", 1)
        elif change == "help":
            lines[0] += " Now in Celsius."
        elif change == "drop":
            del lines[3]
        elif change == "add":
            lines.insert(4, 'm_temp{gpu="2",UUID="GPU-2"} 5')
        elif change == "blank":
            lines.insert(4, "")
        elif change == "not_number":
            lines[6] = 'm_bytes_total{gpu="0"} ' + draw(NOT_NUMBERS)
        elif change == "crlf":
            lines[7] += "\r"
        text = "\n".join(lines) + "\n"
        # Text that is no number (or a CR) may still parse, on the general path.
        simple = change not in ("not_number", "crlf")
        out.append((text, simple and bool(out) and _layout(text) == _layout(out[-1][0])))
        if change in ("drop", "add", "blank", "not_number", "crlf", "name", "label", "help"):
            lines = before if draw(st.booleans()) else lines  # flip back, or keep the change
            lines = list(BASE) if len(lines) != len(BASE) or "\r" in lines[7] else lines
    return out


@settings(max_examples=150, deadline=None)
@given(scrape_sequence(), st.integers(1_700_000_000_000, 1_800_000_000_000))
def test_a_cached_parse_is_the_uncached_parse_whatever_changes(
        scrapes: list[tuple[str, bool]], ts_ms: int) -> None:
    """Values, timestamps, labels, names, metadata, blank lines and text that is no
    number, in any order: the cache (its template included) never changes a result."""
    cache = ShapeCache()
    last: int | None = None
    for text, same_layout in scrapes:
        got, want = _outcome(text, cache, ts_ms), _outcome(text, None, ts_ms)
        if isinstance(want, str):
            assert got == want
        else:
            assert isinstance(got, pl.DataFrame)
            assert_frame_equal(got, want)
            if same_layout and last is not None:
                assert cache.last == last  # one shape, so one series key
        last = cache.last if not isinstance(want, str) else None


def test_the_template_skips_the_findall_and_a_changed_line_invalidates_it() -> None:
    cache = ShapeCache()
    text = payload([1.0, 2.0, 3.0])
    for _ in range(2):
        parse_exposition(text, scrape_ts_ms=0, shape_cache=cache, **KW)
    assert cache.template(None) is not None  # a shape seen twice keeps its template
    first = cache.last
    hits = cache.hits
    got = parse_exposition(payload([4.0, 5.0, 6.0], stamp=7), scrape_ts_ms=0, shape_cache=cache,
                           **KW)
    assert cache.hits == hits + 1 and cache.last == first
    assert got["value"].to_list() == [4.0, 5.0, 6.0] and got["ts"].dt.epoch("ms").to_list() == [
        7, 7, 7]
    # A label value that changed: another shape, whose frame is its own.
    changed = payload([1.0, 2.0, 3.0]).replace('gpu="1"', 'gpu="7"')
    got = parse_exposition(changed, scrape_ts_ms=0, shape_cache=cache, **KW)
    assert cache.last not in (None, first)
    assert_frame_equal(got, parse_exposition(changed, scrape_ts_ms=0, **KW))
    # Another entity label is another template (the shape key holds it).
    assert cache.template("gpu") is None


def test_a_template_goes_with_its_shape() -> None:
    cache = ShapeCache(capacity=1)
    a, b = payload([1.0, 2.0, 3.0]), payload([1.0, 2.0, 3.0], extra=True)
    for text in (a, a):
        parse_exposition(text, scrape_ts_ms=0, shape_cache=cache, **KW)
    assert cache.template(None) is not None
    parse_exposition(b, scrape_ts_ms=0, shape_cache=cache, **KW)  # evicts a's shape
    assert cache.template(None) is None
    cache.clear()
    assert cache.template(None) is None and len(cache) == 0


_PLAIN_NUMBERS = re.compile(rf"{_VALUE}(?: {_TEXT_TS})?(?:\n{_VALUE}(?: {_TEXT_TS})?)*")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="0123456789+-.eE InfaN\n", max_size=12), min_size=1,
                max_size=4))
def test_the_possessive_number_pattern_takes_what_the_plain_one_takes(parts: list[str]) -> None:
    """The template's check of the numbers is ``_VALUE`` (and ``_TEXT_TS``) with possessive
    quantifiers: it must accept exactly the same text, or a payload would parse otherwise
    through the template than through the findall."""
    text = "\n".join(parts)
    assert (_NUMBERS.fullmatch(text) is None) == (_PLAIN_NUMBERS.fullmatch(text) is None)
