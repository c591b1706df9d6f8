"""The persistent key → id table behind stage 1's routing, against a dict."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuslo.slo.hashindex import HashIndex

# Keys that differ only in their high or low bits probe the same slots: the
# table must still tell them apart.
_KEYS = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=40).map(lambda k: k << 58),
)


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.lists(_KEYS, max_size=300), max_size=8),
       probes=st.lists(_KEYS, max_size=200))
def test_ids_are_dense_in_first_seen_order_and_lookups_match_a_dict(
    chunks: list[list[int]], probes: list[int]
) -> None:
    index, ref = HashIndex(), {}
    for chunk in chunks:
        got = index.add(np.array(chunk, np.uint64))
        for k in chunk:
            ref.setdefault(k, len(ref))
        assert got.tolist() == [ref[k] for k in chunk]
    assert len(index) == len(ref)
    assert index.keys().tolist() == list(ref)
    asked = probes + list(ref)
    assert index.get(np.array(asked, np.uint64)).tolist() == [ref.get(k, -1) for k in asked]


def test_a_table_grown_many_times_keeps_every_id() -> None:
    keys = np.random.default_rng(7).integers(0, 2**63, 50_000, dtype=np.int64).astype(np.uint64)
    index = HashIndex()
    for part in np.array_split(keys, 25):  # grows from 1,024 slots through several doublings
        index.add(part)
    assert np.array_equal(index.get(keys), np.arange(keys.size))
    assert (index.get(keys + np.uint64(1)) == -1).sum() > 49_000  # absent keys are absent
