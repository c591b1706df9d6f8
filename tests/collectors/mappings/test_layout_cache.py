"""A repeated layout reuses its derivation, and gives exactly the uncached frame.

Structural mappings keep what they derive from a page's layout (row selection,
names, entities, labels) in the target's shape cache, so a repeated scrape only
moves the numbers.  Each step below parses a simulated page through one shape
cache, transforms it with that cache and without, and requires equal frames,
while the page's series set changes and changes back: a derivation reused for
a page of another layout would select the wrong rows or keep stale labels.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.collectors.base import ScrapeTarget, SourceMapping
from gpuslo.collectors.exposition import ShapeCache
from gpuslo.collectors.mappings.dcgm import XID_EVENT_METRIC, XID_METRIC, DcgmLayout, DcgmMapping
from gpuslo.collectors.mappings.kubelet import KubeletMapping
from gpuslo.collectors.mappings.kvcache import KvCacheMapping
from gpuslo.collectors.mappings.normalise import Derivation, layout_derivation
from gpuslo.collectors.mappings.rdma import NodeExporterLayout, RdmaMapping
from gpuslo.collectors.mappings.storage import StorageMapping
from gpuslo.pipeline.schema import empty_frame
from gpuslo.simulator.endpoints import Endpoint, endpoints
from gpuslo.simulator.fleet import Fleet

NODE = "node-5"  # DCGM, kubelet, RDMA, storage and two vLLM engines


def _target(ep: Endpoint) -> ScrapeTarget:
    return ScrapeTarget(f"http://127.0.0.1:9800/{ep.node}/{ep.process}{ep.path}", ep.node,
                        replica=ep.entity)


def _kubelet(targets: list[ScrapeTarget]) -> Callable[[], SourceMapping]:
    return lambda: KubeletMapping(targets)


def _cases() -> list[tuple[str, Endpoint, Callable[[], SourceMapping]]]:
    fleet = Fleet()
    eps = endpoints(fleet)
    node = [e for e in eps if e.node == NODE]
    kubelet_all = [_target(e) for e in node if e.process == "kubelet"]
    cases: list[tuple[str, Endpoint, Callable[[], SourceMapping]]] = []
    for e in node + [e for e in eps if e.kind in ("ceph", "sglang", "triton")]:
        if e.kind == "node_exporter":
            cases += [("rdma", e, RdmaMapping), ("storage", e, StorageMapping),
                      ("rdma-all", e, lambda: RdmaMapping(own_families_only=False)),
                      ("storage-all", e, lambda: StorageMapping(own_families_only=False))]
        elif e.kind in ("kubelet_resource", "kubelet_cadvisor"):
            # With every endpoint read, some usage signals are skipped on this one.
            cases += [(e.kind + "-alone", e, _kubelet([_target(e)])),
                      (e.kind + "-with-summary", e, _kubelet(kubelet_all))]
        elif e.kind == "dcgm":
            cases.append(("dcgm", e, DcgmMapping))
        elif e.kind == "ceph":
            cases.append(("ceph", e, StorageMapping))
        elif e.kind in ("vllm", "sglang", "triton"):
            cases.append((e.kind, e, KvCacheMapping))
    kinds = {c[0] for c in cases}
    assert {"dcgm", "rdma", "storage", "kubelet_cadvisor-with-summary", "vllm", "sglang", "triton",
            "ceph"} <= kinds, kinds
    return cases


CASES = _cases()


def _sample_lines(text: str) -> list[int]:
    return [i for i, ln in enumerate(text.split("\n")) if ln and not ln.startswith("#")]


def fewer_series(text: str) -> str:
    """The page without its last sample line (a series went away)."""
    lines = text.split("\n")
    del lines[_sample_lines(text)[-1]]
    return "\n".join(lines)


def blanked(text: str) -> str:
    """The same layout with odd values: DCGM's blank sentinel, NaN, -0 and +Inf."""
    lines = text.split("\n")
    odd = ["9223372036854775794", "NaN", "-0", "+Inf"]
    for k, i in enumerate(_sample_lines(text)[::3]):
        cut = lines[i].rfind("}") + 1 or lines[i].index(" ")
        head, (_, _value, *stamp) = lines[i][:cut], lines[i][cut:].split(" ")
        lines[i] = " ".join([head, odd[k % len(odd)], *stamp])
    return "\n".join(lines)


def relabelled(text: str) -> str:
    """The page with one more label on its first labelled sample (as many rows, new labels)."""
    lines = text.split("\n")
    for i in _sample_lines(text):
        if "{" in lines[i]:
            head, _, rest = lines[i].partition("{")
            lines[i] = head + '{zz_extra="1",' + rest
            return "\n".join(lines)
    raise AssertionError("no labelled sample")


@pytest.mark.parametrize(("name", "ep", "mapping"), CASES, ids=[c[0] for c in CASES])
def test_cached_transform_equals_uncached_across_layout_changes(
        name: str, ep: Endpoint, mapping: Callable[[], SourceMapping]) -> None:
    fleet = Fleet()
    target = _target(ep)
    cached_mapping, plain_mapping = mapping(), mapping()
    cache = ShapeCache()
    # (page, step, reuses the derivation last made for that page): the cache holds
    # two layouts, so "same" is evicted by "relabelled" and derived afresh at the end.
    # "blanked" is "same" with odd values, so the same layout.
    steps = [("same", 0, False), ("same", 1, True), ("fewer", 2, False), ("fewer", 3, True),
             ("blanked", 4, True), ("relabelled", 5, False), ("relabelled", 6, True),
             ("same", 7, False), ("blanked", 8, True)]
    kept: dict[str, object] = {}
    for layout, t, reused in steps:
        # New values every step (Ceph's mgr serves only after its first collection).
        fleet.advance(fleet.spec.start_s + fleet.spec.ceph_ready_after_s + 30.0 * (t + 1))
        page = ep.render(fleet, 1_700_000_000_000 + t)
        assert page is not None
        text = {"same": page, "blanked": blanked(page), "fewer": fewer_series(page),
                "relabelled": relabelled(page)}[layout]
        layout = "same" if layout == "blanked" else layout
        ts_ms = 1_700_000_000_000 + 1000 * t
        frame = cached_mapping.parse(text, False, target, ts_ms, cache)
        assert isinstance(frame, pl.DataFrame)
        assert cache.last is not None, "the page must take the parser's cached path"
        got = cached_mapping.transform(frame, target, cache)
        derivation = cache.derived(cache.last)
        assert isinstance(derivation, (Derivation, NodeExporterLayout, DcgmLayout)), \
            "the cached path must have been taken"
        plain = plain_mapping.parse(text, False, target, ts_ms, None)
        assert isinstance(plain, pl.DataFrame)
        want = plain_mapping.transform(plain, target)
        assert got.height > 0
        assert_frame_equal(got, want, check_exact=True)
        assert (derivation is kept.get(layout)) == reused, (layout, t)
        kept[layout] = derivation
    if isinstance(cached_mapping, DcgmMapping):
        assert isinstance(plain_mapping, DcgmMapping)
        assert cached_mapping.blank_samples == plain_mapping.blank_samples > 0
    if isinstance(cached_mapping, KubeletMapping):
        assert isinstance(plain_mapping, KubeletMapping)
        assert cached_mapping.aggregates_dropped == plain_mapping.aggregates_dropped


def test_no_layout_means_no_derivation() -> None:
    # A file, a JSON page or a general-path parse names no layout: nothing is derived.
    cache = ShapeCache()
    called: list[int] = []

    def derive(frame: pl.DataFrame) -> Derivation:
        called.append(1)
        return Derivation.upstream(frame)

    assert layout_derivation(None, empty_frame(), derive, Derivation) is None
    assert layout_derivation(cache, empty_frame(), derive, Derivation) is None
    assert called == []


def _frame(values: list[float]) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame({
        "ts": pl.Series([1_700_000_000_000 + i for i in range(n)], dtype=pl.Int64),
        "node": ["n"] * n, "source": ["s"] * n, "metric": [f"m{i}" for i in range(n)],
        "kind": ["gauge"] * n, "value": values, "entity": [""] * n,
        "labels": [[] for _ in range(n)],
    }, schema_overrides={"ts": pl.Int64}).pipe(
        lambda f: pl.concat([empty_frame(), f.with_columns(pl.col("ts").cast(pl.Datetime(
            "ms", "UTC")), pl.col("kind").cast(empty_frame().schema["kind"]),
            pl.col("labels").cast(empty_frame().schema["labels"]))], how="vertical"))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1,
                       max_size=12),
       picks=st.lists(st.tuples(st.integers(0, 11), st.sampled_from([1.0, 0.001, 4.0, 1e-9])),
                      max_size=20),
       mask=st.lists(st.booleans(), min_size=32, max_size=32))
def test_derivation_algebra_matches_frame_operations(
        values: list[float], picks: list[tuple[int, float]], mask: list[bool]) -> None:
    frame = _frame(values)
    n = frame.height
    picks = [(i % n, s) for i, s in picks]
    rows = pl.Series([i for i, _ in picks], dtype=pl.UInt32)
    factor = pl.Series([s for _, s in picks], dtype=pl.Float64)
    picked = frame[rows] if picks else frame.clear()
    scaled_value = pl.Series("value", [v * s if s != 1.0 else v for v, s in
                                       zip(picked["value"].to_list(), factor.to_list(),
                                           strict=True)], dtype=pl.Float64)
    derived = Derivation.of(picked, rows, factor)
    whole = Derivation.upstream(frame).then(derived)
    want = pl.concat([frame, picked.with_columns(scaled_value)])
    assert_frame_equal(whole.apply(frame), want, check_exact=True)
    assert whole.upstream_rows == n
    keep = pl.Series(mask[:whole.height])
    assert_frame_equal(whole.where(keep).apply(frame), want.filter(keep), check_exact=True)
    # Through a filter: the same rows of the frame the filtered one was taken from.
    outer = pl.concat([frame, frame])
    kept = pl.Series([False] * n + [True] * n)
    assert_frame_equal(whole.through(kept).apply(outer), want, check_exact=True)
    assert whole.through(kept).dropped == n


def _with_xids(text: str, codes: list[str]) -> str:
    """The DCGM page with its XID gauges' values set to ``codes``, GPU by GPU."""
    lines = text.split("\n")
    at = [i for i, ln in enumerate(lines) if ln.startswith(XID_METRIC + "{")]
    assert len(at) >= 2, "the page must have XID rows of two GPUs"
    for i, code in zip(at, codes, strict=False):
        cut = lines[i].rfind("}") + 1
        _value, *stamp = lines[i][cut:].split()
        lines[i] = " ".join([lines[i][:cut], code, *stamp])
    return "\n".join(lines)


@pytest.mark.parametrize("first_sight", [False, True])
def test_dcgm_xids_on_a_kept_layout_equal_the_uncached_events(first_sight: bool) -> None:
    # Codes that repeat (no event, no query), change, clear, go NaN and come back: the
    # cached path skips the tracker only where it would have emitted nothing.
    fleet = Fleet()
    ep = next(e for e in endpoints(fleet) if e.node == NODE and e.kind == "dcgm")
    target = _target(ep)
    cached = DcgmMapping(xid_on_first_sight=first_sight)
    plain = DcgmMapping(xid_on_first_sight=first_sight)
    cache = ShapeCache()
    codes = [["31", "0"], ["31", "0"], ["79", "0"], ["79", "0"], ["79", "NaN"], ["79", "13"],
             ["0", "13"], ["0", "13"], ["48", "48"], ["48", "48"]]
    events = 0
    for t, step in enumerate(codes):
        page = ep.render(fleet, 1_700_000_000_000 + t)
        assert page is not None
        text = _with_xids(page, step)
        frame = cached.parse(text, False, target, t, cache)
        assert isinstance(frame, pl.DataFrame) and cache.last is not None
        got = cached.transform(frame, target, cache)
        assert isinstance(cache.derived(cache.last), DcgmLayout)
        want_frame = plain.parse(text, False, target, t, None)
        assert isinstance(want_frame, pl.DataFrame)
        want = plain.transform(want_frame, target)
        assert_frame_equal(got, want, check_exact=True)
        events += got.filter(pl.col("metric") == XID_EVENT_METRIC).height
        assert cached.xids.last == plain.xids.last
    assert events == (5 if first_sight else 4)
