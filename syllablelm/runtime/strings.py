"""Strings as columns: one UTF-8 buffer plus offsets (:class:`Strings`), and an index that finds them by hash
(:class:`StringIndex`). What the manifests and the stores hold their ids and paths in (issue 28).

**The layout.** ``data`` (uint8) holds the strings' UTF-8 bytes one after another; ``offsets`` (int64, one more
than there are strings) says where each begins: string ``i`` is ``data[offsets[i]:offsets[i + 1]]``. Millions of
ids or paths cost their bytes plus 8 per string and no Python object per string, so a forked DataLoader worker
only reads these pages and they stay shared (a per-string object would be copied into every worker as soon as its
reference count or its garbage-collector header is written). A string is decoded when it is asked for; iteration
decodes :data:`DECODE_BLOCK` strings at a time. The same two arrays are the on-disk form wherever the project
writes strings: a store shard's ids (``shard-*.ids.npy`` and ``shard-*.id_offsets.npy``,
:mod:`datamodules.store_columns`) and the manifest cache's keys and problem texts (members of its ``.npz``,
:mod:`datamodules.manifest_cache`). The arrays may be memory-mapped (``np.load(mmap_mode="r")``): nothing here reads
more of them than the strings asked for.

**The index.** :class:`StringIndex` sorts the strings' hashes once (16 bytes per string: the hash and its row); a
lookup is a binary search and then an exact comparison, so strings of equal hash are still told apart. Python's
``hash`` of a ``str`` is salted per interpreter: an index (and :meth:`Strings.hashes`) is valid in the process that
built it and those forked from it, never stored or pickled.
"""
from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Iterable, Iterator, overload

import numpy as np

DECODE_BLOCK = 4096  # strings decoded at once when iterating
GATHER_BYTES = 1 << 16  # bytes gathered or compared at once (the index arrays take 8 bytes per byte)


def sequence_index(i, n: int, what: str) -> int:
    """``i`` as a position in a sequence of ``n`` (negative: from the end); ``IndexError`` ``"<what> <i> of <n>"``
    when it is outside."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"{what} {i} of {n}")
    return i


class Strings(Sequence):
    """Strings as one UTF-8 buffer (``data``, uint8) and ``offsets`` (int64, ``len + 1``): string ``i`` is
    ``data[offsets[i]:offsets[i + 1]]`` (module docstring). Indexing decodes one string; nothing per string is
    kept. ``offsets`` need not start at 0 (a slice of a bigger buffer's offsets reads as its strings)."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: np.ndarray | None = None, offsets: np.ndarray | None = None):
        self.data = np.zeros(0, np.uint8) if data is None else np.asarray(data, dtype=np.uint8)
        self.offsets = np.zeros(1, np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)

    @classmethod
    def from_iter(cls, strings: Iterable[str]) -> "Strings":
        """Encode ``strings`` into one buffer as they come (no list of them is made)."""
        data, offsets = bytearray(), array.array("q", [0])
        for s in strings:
            data += s.encode()
            offsets.append(len(data))
        return cls(np.frombuffer(data, dtype=np.uint8) if data else None, np.frombuffer(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> "Strings": ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        i = sequence_index(i, len(self), "string")
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()

    def __iter__(self) -> Iterator[str]:
        """Decoded a block at a time: an ASCII block is one decode, then slices."""
        for a in range(0, len(self), DECODE_BLOCK):
            offs = self.offsets[a:a + DECODE_BLOCK + 1]
            block = self.data[offs[0]:offs[-1]].tobytes()
            text = block.decode()
            rel = (offs - offs[0]).tolist()
            if len(text) == len(block):  # ASCII: byte offsets are character offsets
                for k in range(len(rel) - 1):
                    yield text[rel[k]:rel[k + 1]]
            else:
                for k in range(len(rel) - 1):
                    yield block[rel[k]:rel[k + 1]].decode()

    def __eq__(self, other) -> bool:
        if not isinstance(other, Strings):
            return NotImplemented
        return np.array_equal(self.offsets - self.offsets[0], other.offsets - other.offsets[0]) and np.array_equal(
            self.data[self.offsets[0]:self.offsets[-1]], other.data[other.offsets[0]:other.offsets[-1]])

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        return f"Strings({len(self)} strings, {len(self.data)} bytes)"

    @property
    def lengths(self) -> np.ndarray:
        """Bytes per string."""
        return np.diff(self.offsets)

    def take(self, indices: np.ndarray | Sequence[int]) -> "Strings":
        """The strings at ``indices``, in their order, as a new buffer (gathered a block at a time)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} strings")
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        offsets = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        return Strings(_gather(self.data, starts, lens, offsets), offsets)

    @staticmethod
    def concat(parts: Sequence["Strings"]) -> "Strings":
        parts = list(parts)
        if not parts:
            return Strings()
        data = np.concatenate([p.data[p.offsets[0]:p.offsets[-1]] for p in parts])
        offsets, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.offsets[1:] - p.offsets[0] + base)
            base += int(p.offsets[-1] - p.offsets[0])
        return Strings(data, np.concatenate(offsets))

    def hashes(self) -> np.ndarray:
        """Python's ``hash`` of every string (int64). Valid in this process and the processes forked from it only
        (string hashes are salted per interpreter), so never store or pickle them."""
        return np.fromiter((hash(s) for s in self), dtype=np.int64, count=len(self))

    def fixed_width(self) -> np.ndarray:
        """The strings as one fixed-width bytes array ``S<L>`` (``L`` the longest, at least 1), without a Python
        object per string: the rows of a zero-padded ``(n, L)`` byte matrix. numpy compares such bytes as Python
        compares the ``str`` (UTF-8 byte order is code point order), so the array sorts and binary-searches as
        the strings do; a string that ends in ``"\\0"`` reads back without it."""
        offsets, lengths = self.offsets, self.lengths
        width = max(1, int(lengths.max()) if len(lengths) else 1)
        matrix = np.zeros((len(lengths), width), dtype=np.uint8)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        cols = np.arange(int(offsets[-1]) - int(offsets[0])) - np.repeat(offsets[:-1] - offsets[0], lengths)
        matrix[rows, cols] = self.data[offsets[0]:offsets[-1]]
        return matrix.view(f"S{width}").reshape(-1)


def _gather(data: np.ndarray, starts: np.ndarray, lens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``data[starts[k]:starts[k] + lens[k]]`` for every k, concatenated (``offsets``: where each lands), about
    :data:`GATHER_BYTES` at a time so the index arrays (8 bytes per byte gathered) stay small."""
    out = np.empty(int(offsets[-1]), np.uint8)
    if not len(out):
        return out
    if len(starts) > 1 and np.all(starts[1:] == starts[:-1] + lens[:-1]):  # one contiguous run
        out[:] = data[starts[0]:starts[0] + len(out)]
        return out
    step = max(1, GATHER_BYTES // max(1, int(lens.mean())))
    for a in range(0, len(starts), step):
        b = min(len(starts), a + step)
        lo, hi = int(offsets[a]), int(offsets[b])
        if hi > lo:
            shift = np.repeat(starts[a:b] - offsets[a:b], lens[a:b])
            out[lo:hi] = data[np.arange(lo, hi) + shift]
    return out


class StringIndex:
    """Where each string of ``strings`` is, by hash (module docstring): ``order`` sorts the hashes, ``sorted`` holds
    them in that order. A lookup is a binary search then an exact comparison (equal hashes of different strings are
    told apart)."""

    __slots__ = ("strings", "sorted", "order")

    def __init__(self, strings: Strings):
        self.strings = strings
        hashes = strings.hashes()
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def find(self, s: str) -> int:
        """Row of ``s``, -1 when absent; O(log n)."""
        h = hash(s)
        i = int(np.searchsorted(self.sorted, h))
        while i < len(self.sorted) and self.sorted[i] == h:
            j = int(self.order[i])
            if self.strings[j] == s:
                return j
            i += 1
        return -1

    def find_all(self, queries: Strings) -> np.ndarray:
        """Row of every query (-1: absent), vectorized; exact."""
        h = queries.hashes()
        pos = np.searchsorted(self.sorted, h)
        out = np.full(len(queries), -1, np.int64)
        inside = pos < len(self.sorted)
        hit = np.zeros(len(queries), bool)
        hit[inside] = self.sorted[pos[inside]] == h[inside]
        cand = np.flatnonzero(hit)
        if len(cand):
            j = self.order[pos[cand]]
            same = _same_strings(queries, cand, self.strings, j)
            out[cand[same]] = j[same]
            for q in cand[~same]:  # another string with the same hash came first: rare, look further
                out[q] = self.find(queries[int(q)])
        return out

    def first_repeat(self) -> tuple[int, int] | None:
        """``(second, first)``: the first row (in order) whose string an earlier row holds, and the first row that
        holds it; None when the strings are all different. Only strings of equal hash are compared (the runs of
        the sorted hashes)."""
        same = self.sorted[1:] == self.sorted[:-1]
        if not same.any():
            return None
        best: tuple[int, int] | None = None
        for s in np.flatnonzero(same & ~np.concatenate([[False], same[:-1]])).tolist():  # where each run starts
            e = s + 1
            while e < len(self.sorted) and self.sorted[e] == self.sorted[s]:
                e += 1
            first: dict[str, int] = {}
            for r in sorted(self.order[s:e].tolist()):
                text = self.strings[r]
                if text in first:
                    if best is None or r < best[0]:
                        best = (r, first[text])
                    break
                first[text] = r
        return best


def _same_strings(a: Strings, ia: np.ndarray, b: Strings, ib: np.ndarray) -> np.ndarray:
    """Whether ``a[ia[k]] == b[ib[k]]`` for every k: equal lengths, then the bytes compared about
    :data:`GATHER_BYTES` at a time."""
    same = a.lengths[ia] == b.lengths[ib]
    k = np.flatnonzero(same)
    step = max(1, GATHER_BYTES // max(1, int(a.lengths[ia[k]].mean()) if len(k) else 1))
    for lo in range(0, len(k), step):
        kk = k[lo:lo + step]
        ga, gb = a.take(ia[kk]), b.take(ib[kk])
        differ = np.flatnonzero(ga.data != gb.data)  # byte positions
        if len(differ):
            bad = np.zeros(len(kk), bool)
            bad[np.searchsorted(ga.offsets, differ, side="right") - 1] = True  # the strings holding them
            same[kk[bad]] = False
    return same
