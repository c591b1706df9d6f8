"""What the parser's per-target shape cache promises the rest of the collection path.

``ShapeCache.last`` names the shape a parse used: the scrape engine turns it into a
series key, and the collect stage then stores a repeated target's series once.  A hit
must give exactly the frame a parse without the cache gives (the kept frame's columns
are reused, only ts and values are new).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.collectors.exposition import ShapeCache, parse_exposition

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
