"""A persistent map from 64-bit keys to dense ids, looked up a whole array at a time.

Why not a Polars join: a join builds its hash table again on every call, so
routing a 20,000-sample batch against the series a stage has learned costs in
proportion to *all* known series (5 ms against 200,000), not to the batch.  A
Python dict costs a bytecode round trip per sample.  This table is built
once, grows by doubling, and answers a lookup of ``n`` keys with a few NumPy
gathers (open addressing, linear probing, load factor at most one quarter), so a
batch costs in proportion to the batch.

Keys are already hashes (Polars' series hash, BLAKE2b route keys); a
Fibonacci multiply spreads them over the slots anyway, so a poor hash still
probes briefly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_FIB = np.uint64(0x9E3779B97F4A7C15)
_MIN_BITS = 10

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


class HashIndex:
    """``uint64`` key → dense id ``0, 1, 2, …`` in insertion order; ids are never reused."""

    def __init__(self) -> None:
        self._bits = _MIN_BITS
        self._keys: U64 = np.zeros(1 << self._bits, np.uint64)
        # Ids as int32 (12 bytes a slot, not 16): two billion ids is past any fleet.
        self._ids: I32 = np.full(1 << self._bits, -1, np.int32)  # -1: empty slot
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, keys: U64) -> I64:
        """The id of each key, or -1 where the key is absent."""
        keys = np.asarray(keys, np.uint64)
        out = np.full(keys.shape, -1, np.int64)
        todo = np.arange(keys.size)
        slot = self._slot(keys)
        mask = np.int64((1 << self._bits) - 1)
        while todo.size:
            ids = self._ids[slot]
            hit = (ids >= 0) & (self._keys[slot] == keys[todo])
            out[todo[hit]] = ids[hit]
            probe = (ids >= 0) & ~hit  # an occupied slot holding another key: look further
            todo, slot = todo[probe], (slot[probe] + 1) & mask
        return out

    def add(self, keys: U64) -> I64:
        """Ids of ``keys``, giving new ids (in first-seen order) to keys not yet present."""
        keys = np.asarray(keys, np.uint64)
        ids = self.get(keys)
        absent = ids < 0
        if not absent.any():
            return ids
        new, first = np.unique(keys[absent], return_index=True)
        new = new[np.argsort(first, kind="stable")]  # first-seen order, not sorted order
        if 4 * (self._size + new.size) > (1 << self._bits):
            self._grow(self._size + new.size)
        self._place(new, np.arange(self._size, self._size + new.size, dtype=np.int64))
        self._size += new.size
        return self.get(keys)

    def keys(self) -> U64:
        """All keys, ordered by id."""
        used = self._ids >= 0
        out = np.empty(self._size, np.uint64)
        out[self._ids[used]] = self._keys[used]
        return out

    # -- internals --------------------------------------------------------------------------

    def _slot(self, keys: U64) -> I64:
        return ((keys * _FIB) >> np.uint64(64 - self._bits)).astype(np.int64)

    def _place(self, keys: U64, ids: I64) -> None:
        """Insert keys known to be absent and distinct."""
        slot = self._slot(keys)
        mask = np.int64((1 << self._bits) - 1)
        while keys.size:
            free = self._ids[slot] < 0
            # Of several keys aiming at one free slot, the first takes it.
            cand = np.flatnonzero(free)
            _, win = np.unique(slot[cand], return_index=True)
            won = np.zeros(keys.size, bool)
            won[cand[win]] = True
            self._keys[slot[won]] = keys[won]
            self._ids[slot[won]] = ids[won]
            lost = ~won
            keys, ids = keys[lost], ids[lost]
            # Losers of a tie retry the same slot (now taken, so they move on next time).
            slot = np.where(free[lost], slot[lost], (slot[lost] + 1) & mask)

    def _grow(self, size: int) -> None:
        keys = self.keys()
        while 4 * size > (1 << self._bits):
            self._bits += 1
        self._keys = np.zeros(1 << self._bits, np.uint64)
        self._ids = np.full(1 << self._bits, -1, np.int32)
        self._place(keys, np.arange(keys.size, dtype=np.int64))
