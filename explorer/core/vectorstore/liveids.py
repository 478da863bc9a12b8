"""A set of live image ids kept as a bitmap: the reduced store's lean answer to ``set[int]``.

A Python ``set`` of 1M ids costs about 60 MiB (a 32 MiB hash table plus a 28-byte int object per
id); image ids are small dense non-negative integers (SQLite row ids), so a byte per id up to the
largest one (1 MiB at 1M) holds the same information. :class:`LiveIds` is a read-compatible
``collections.abc.Set`` (``in``, ``len``, iteration in ascending order, ``==``, ``-``, ``&`` with
plain sets) with the mutating methods the stores use (``update``, ``discard``,
``difference_update``), and ``ids()``: the members as a sorted int64 array without building a list.
Negative ids are refused (``ValueError``): no store gives them out. Like the reduced store's
full-vector file (row = id), the bitmap assumes dense ids (SQLite row ids): its size follows the largest.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

import numpy as np


def _as_ids(ids) -> np.ndarray:
    if isinstance(ids, LiveIds):
        return ids.ids()
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).reshape(-1)
    if not isinstance(ids, (list, tuple)):
        ids = list(ids)
    return np.asarray(ids, np.int64).reshape(-1)


class LiveIds(Set):
    """Non-negative int ids as a growable bitmap (one byte per id up to the largest added)."""

    __slots__ = ("_bits", "_n")

    def __init__(self, ids: Iterable[int] = ()):
        self._bits = np.zeros(0, np.bool_)
        self._n = 0
        self.update(ids)

    @classmethod
    def _from_iterable(cls, it):
        return cls(it)

    # -- reading -------------------------------------------------------------------------------------
    def __contains__(self, i) -> bool:
        if not isinstance(i, (int, np.integer)):
            return False
        i = int(i)
        return 0 <= i < len(self._bits) and bool(self._bits[i])

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        return iter(self.ids().tolist())

    def ids(self) -> np.ndarray:
        """The members, ascending, as an int64 array."""
        return np.flatnonzero(self._bits).astype(np.int64)

    def max(self) -> int:
        """The largest member (-1 when empty)."""
        if not self._n:
            return -1
        return int(len(self._bits) - 1 - np.argmax(self._bits[::-1]))

    def _mask_of(self, ids) -> np.ndarray:
        a = _as_ids(ids)
        inside = (a >= 0) & (a < len(self._bits))
        out = np.zeros(len(a), np.bool_)
        out[inside] = self._bits[a[inside]]
        return out

    def __eq__(self, other):
        if isinstance(other, LiveIds):
            return self._n == other._n and np.array_equal(self.ids(), other.ids())
        if isinstance(other, Set):
            return len(other) == self._n and (not self._n or bool(self._mask_of(list(other)).all()))
        return NotImplemented

    __hash__ = None

    def __sub__(self, other):
        if not isinstance(other, (Set, LiveIds)):
            return NotImplemented
        out = self.copy()
        out.difference_update(other)
        return out

    def __rsub__(self, other):
        if not isinstance(other, Set):
            return NotImplemented
        a = _as_ids(list(other))
        return set(a[~self._mask_of(a)].tolist())

    def __and__(self, other):
        if not isinstance(other, Set):
            return NotImplemented
        a = _as_ids(other if isinstance(other, LiveIds) else list(other))
        return LiveIds(a[self._mask_of(a)])

    __rand__ = __and__

    def copy(self) -> LiveIds:
        out = LiveIds()
        out._bits, out._n = self._bits.copy(), self._n
        return out

    def __repr__(self) -> str:
        return f"LiveIds({self._n} ids)"

    # -- changing --------------------------------------------------------------------------------------
    # the count is recounted over the bitmap (~30 us at 1M ids): cheaper than de-duplicating the ids
    def update(self, ids) -> None:
        a = _as_ids(ids)
        if not len(a):
            return
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            raise ValueError(f"negative id {lo}")
        if hi >= len(self._bits):
            grown = np.zeros(max(hi + 1, int(len(self._bits) * 1.5)), np.bool_)
            grown[:len(self._bits)] = self._bits
            self._bits = grown
        self._bits[a] = True
        self._n = int(np.count_nonzero(self._bits))

    def add(self, i) -> None:
        self.update([int(i)])

    def difference_update(self, ids) -> None:
        a = _as_ids(ids)
        a = a[(a >= 0) & (a < len(self._bits))]
        if len(a):
            self._bits[a] = False
            self._n = int(np.count_nonzero(self._bits))

    def discard(self, i) -> None:
        self.difference_update([int(i)])
