"""A repeated ``/stats/summary`` or ``/proc/diskstats`` layout gives exactly the uncached frame.

The kubelet and storage mappings keep, per target, the layouts of their own readers'
pages (see ``collectors/mappings/reader_layout.py``): a page with the series of one
read before reuses that read's frame columns and transform.  Each step below reads a
page through one mapping (cache on) and reads the same page without any cache, and
requires equal raw and transformed frames, while the values change and the page's
structure changes and changes back: a layout reused for a page of other series would
keep stale names, entities or labels.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.collectors.base import Partial, ScrapeTarget
from gpuslo.collectors.mappings.kubelet import KubeletMapping, summary_to_frame
from gpuslo.collectors.mappings.reader_layout import ReaderLayouts
from gpuslo.collectors.mappings.storage import StorageMapping, parse_diskstats
from gpuslo.pipeline.schema import FrameBuilder
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.kubelet import summary

NODE = "node-5"
BASE = "http://127.0.0.1:9800/node-5/kubelet"
SUMMARY = ScrapeTarget(BASE + "/stats/summary", NODE, meta=(("endpoint", "summary"),))
RESOURCE = ScrapeTarget(BASE + "/metrics/resource", NODE, meta=(("endpoint", "resource"),))
CADVISOR = ScrapeTarget(BASE + "/metrics/cadvisor", NODE, meta=(("endpoint", "cadvisor"),))
DISKS = ScrapeTarget("http://127.0.0.1:9800/node-5/node/diskstats", NODE)


# ---------------------------------------------------------------- /stats/summary pages

Edit = Callable[[dict[str, Any]], None]


def _fewer_containers(d: dict[str, Any]) -> None:
    del d["pods"][-1]["containers"][0]


def _new_field(d: dict[str, Any]) -> None:
    d["node"]["memory"]["swapBytes"] = 12345
    d["pods"][0]["volume"] = [{"name": "data", "time": "2026-01-01T00:00:00Z",
                               "usedBytes": 10, "capacityBytes": 100}]


def _renamed_pod(d: dict[str, Any]) -> None:
    d["pods"][1]["podRef"]["name"] += "-x"  # as many rows, other labels and entities


def _odd(d: dict[str, Any]) -> None:
    # A null field (not reported), an untimed block, a non-number: rows go, problems come.
    d["node"]["memory"]["rssBytes"] = None
    del d["node"]["cpu"]["time"]
    d["node"]["fs"]["usedBytes"] = "lots"


def _no_time(d: dict[str, Any]) -> None:
    # Same series as the page: the block's rows take the scrape time instead.
    del d["pods"][0]["containers"][0]["cpu"]["time"]


EDITS: dict[str, Edit | None] = {"same": None, "fewer": _fewer_containers, "field": _new_field,
                                 "renamed": _renamed_pod, "odd": _odd, "untimed": _no_time}


def _summary_page(fleet: Fleet, t: int, edit: Edit | None) -> str:
    fleet.advance(fleet.spec.start_s + 17.0 * (t + 1))
    page = copy.deepcopy(summary(fleet, NODE))
    for i, pod in enumerate(page["pods"]):  # the block times move with every scrape
        for c in pod.get("containers", []):
            for block in ("cpu", "memory"):
                if isinstance(c.get(block), dict):
                    c[block]["time"] = f"2026-01-01T00:{t:02d}:{i:02d}Z"
    if edit is not None:
        edit(page)
    return json.dumps(page)


def _kubelet() -> KubeletMapping:
    # With resource and cAdvisor read too, the summary's usage and pod network are skipped.
    return KubeletMapping([SUMMARY, RESOURCE, CADVISOR])


def _read(mapping: KubeletMapping | StorageMapping, text: str, target: ScrapeTarget,
          ts_ms: int) -> tuple[pl.DataFrame, Partial]:
    got = mapping.parse(text, False, target, ts_ms, None)
    assert isinstance(got, Partial)
    return mapping.transform(got.frame, target, None), got


# (page, reuses a layout read before): two layouts are kept, so "same" is read
# afresh after "field" and "renamed" pushed it out.
SUMMARY_STEPS = [("same", False), ("same", True), ("untimed", True), ("fewer", False),
                 ("same", True), ("fewer", True), ("field", False), ("renamed", False),
                 ("same", False), ("renamed", True), ("odd", False), ("odd", True)]


@pytest.mark.parametrize("with_others", [True, False], ids=["with-resource-cadvisor", "alone"])
def test_summary_layout_equals_uncached_across_structure_changes(with_others: bool) -> None:
    fleet = Fleet()
    cached = _kubelet() if with_others else KubeletMapping([SUMMARY])
    plain = _kubelet() if with_others else KubeletMapping([SUMMARY])
    layouts = cached.summary_layouts
    for t, (name, reused) in enumerate(SUMMARY_STEPS):
        text = _summary_page(fleet, t, EDITS[name])
        ts_ms = 1_700_000_000_000 + 1000 * t
        hits = layouts.hits
        got, partial = _read(cached, text, SUMMARY, ts_ms)
        assert (layouts.hits == hits + 1) == reused, (name, t)
        # Without any layout: the reader's own frame, the mapping's uncached transform.
        result = summary_to_frame(text, node=NODE, scrape_ts_ms=ts_ms)
        want = plain.transform(result.frame, SUMMARY, None)
        assert_frame_equal(partial.frame, result.frame, check_exact=True)
        assert got.height > result.frame.height  # normalised rows were added
        assert_frame_equal(got, want, check_exact=True)
        assert partial.problems == {"summary_field": len(result.errors)}
    assert layouts.hits == sum(r for _, r in SUMMARY_STEPS)


def test_summary_frame_not_from_the_last_read_takes_the_uncached_path() -> None:
    fleet = Fleet()
    mapping = _kubelet()
    first = mapping.parse(_summary_page(fleet, 0, None), False, SUMMARY, 1, None)
    second = mapping.parse(_summary_page(fleet, 1, _fewer_containers), False, SUMMARY, 2, None)
    assert isinstance(first, Partial) and isinstance(second, Partial)
    # ``first`` is of a layout that is still kept, but it is not the last read's frame.
    want = _kubelet().transform(first.frame, SUMMARY, None)
    assert_frame_equal(mapping.transform(first.frame, SUMMARY, None), want, check_exact=True)


# ---------------------------------------------------------------- /proc/diskstats pages

_DEVICES = ["nvme0n1", "nvme1n1", "sda", "dm-0", "sda1", "loop0", "md127"]


def _diskstats_line(major: int, device: int, fields: int, values: list[int]) -> str:
    name = _DEVICES[device]
    nums = " ".join(str(values[(device * 31 + i) % len(values)]) for i in range(fields))
    return f" {major:3d} {device:7d} {name} {nums}"


pages = st.lists(
    st.tuples(
        # the major number (a label only), the devices present (ordered), the
        # kernel's field count, a malformed line, the numbers
        st.sampled_from([259, 8]),
        st.lists(st.integers(0, len(_DEVICES) - 1), min_size=1, max_size=5, unique=True),
        st.sampled_from([11, 15, 17]),
        st.booleans(),
        st.lists(st.integers(0, 2**62), min_size=1, max_size=8),
    ),
    min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(pages=pages, repeat=st.lists(st.integers(0, 11), max_size=12))
def test_diskstats_layout_equals_uncached(
        pages: list[tuple[int, list[int], int, bool, list[int]]], repeat: list[int]) -> None:
    # Pages of random devices and field counts, some read again later with new values:
    # each read through one mapping equals a read without any layout.
    order = list(range(len(pages))) + [i % len(pages) for i in repeat]
    cached, plain = StorageMapping(), StorageMapping()
    for step, i in enumerate(order):
        major, devices, fields, malformed, values = pages[i]
        values = [v + step for v in values]  # the same layout, other numbers
        lines = [_diskstats_line(major, d, fields, values) for d in devices]
        if malformed:
            lines.insert(0, " 8 0 sdz 1 2 x 4 5 6 7 8 9 10 11")
        text = "\n".join(lines) + "\n"
        ts_ms = 1_700_000_000_000 + step
        got, partial = _read(cached, text, DISKS, ts_ms)
        result = parse_diskstats(text, node=NODE, scrape_ts_ms=ts_ms)
        assert_frame_equal(partial.frame, result.frame, check_exact=True)
        assert_frame_equal(got, plain.transform(result.frame, DISKS, None), check_exact=True)
        assert partial.problems == {"malformed": len(result.errors)}


def test_diskstats_layout_is_reused_on_the_simulated_page() -> None:
    fleet = Fleet()
    ep = next(e for e in endpoints(fleet) if e.node == NODE and e.path.endswith("diskstats"))
    mapping, plain = StorageMapping(), StorageMapping()
    for t in range(3):
        fleet.advance(fleet.spec.start_s + 30.0 * (t + 1))
        text = ep.render(fleet, 1_700_000_000_000 + t)
        assert text is not None
        got, _ = _read(mapping, text, DISKS, t)
        result = parse_diskstats(text, node=NODE, scrape_ts_ms=t)
        assert_frame_equal(got, plain.transform(result.frame, DISKS, None), check_exact=True)
        assert got.filter(pl.col("metric").str.starts_with("gpuslo_disk_")).height > 0
    assert (mapping.diskstats_layouts.misses, mapping.diskstats_layouts.hits) == (1, 2)


# ---------------------------------------------------------------- the key


def test_key_tells_apart_every_series_column() -> None:
    def rows(**change: Any) -> FrameBuilder:
        r = FrameBuilder(change.get("node", "n"), "s", 5)
        r.add(change.get("metric", "m"), change.get("kind", "gauge"), 1.0,
              change.get("entity", "e"), change.get("labels", {"a": "1"}), ts_ms=7)
        return r

    base = rows().key()
    assert rows().key() == base
    for change in ({"node": "o"}, {"metric": "x"}, {"kind": "counter"}, {"entity": "f"},
                   {"labels": {"a": "2"}}, {"labels": {"a": "1", "b": "1"}}):
        assert rows(**change).key() != base, change
    # Numbers are not part of it; the frame of a kept layout takes the new ones.
    layouts = ReaderLayouts()
    layouts.frame("t", rows())
    again = FrameBuilder("n", "s", 6)
    again.add("m", "gauge", 2.5, "e", {"a": "1"}, ts_ms=9)
    assert_frame_equal(layouts.frame("t", again), again.frame(), check_exact=True)
    assert layouts.hits == 1


def test_diskstats_labels_alone_make_another_layout() -> None:
    # Same devices, fields and numbers; only a device's major number (a label) differs.
    cached, plain = StorageMapping(), StorageMapping()
    for t, major in enumerate([259, 8, 259]):
        text = _diskstats_line(major, 0, 17, [1, 2, 3]) + "\n"
        got, _ = _read(cached, text, DISKS, t)
        result = parse_diskstats(text, node=NODE, scrape_ts_ms=t)
        assert_frame_equal(got, plain.transform(result.frame, DISKS, None), check_exact=True)
    assert (cached.diskstats_layouts.misses, cached.diskstats_layouts.hits) == (2, 1)
