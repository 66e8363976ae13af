"""The on-disk column layout of a store version and its memory-mapped reader (issue 28: paper scale in one node).

One shard ``S`` of ``W`` is a few ``.npy`` files named ``shard-SSSSS-of-WWWWW.<column>.npy``:

==================  ======================================================================================
``ids``             uint8: the shard's utterance ids, sorted, UTF-8, concatenated
``id_offsets``      int64 ``(n + 1,)``: id ``i`` is ``ids[id_offsets[i]:id_offsets[i + 1]]`` (the two arrays of
                    :class:`~syllablelm.runtime.strings.Strings`, read through it)
value columns       one file per column the store kind declares (:meth:`ShardStore.to_columns`): boundary
                    ``values`` float64 ``(m, 2)``; unit ``segments`` float64 ``(m, 2)`` and ``units`` in the
                    smallest unsigned type that holds the shard's largest unit; label ``values`` in the
                    smallest unsigned type that holds its largest label
``offsets``         int64 ``(n + 1,)``: utterance ``i``'s rows are ``[offsets[i], offsets[i + 1])`` of every column.
                    Written **last**: a shard is complete when this file exists (the writer removes it first when
                    it rewrites a shard, so an old marker never vouches for new columns)
==================  ======================================================================================

Values are checked when they are written (the store kind's ``encode``); a duplicate id across shards is refused
when the version is finalized. Rank 0 then writes the version-level **id index** (before the manifest, which
records the byte sizes and CRC-32 of every file, the index's too)::

    index.ids.npy     fixed-width bytes ``S<L>``: every id of the version, sorted (numpy's byte order is Python's
                      ``str`` order for UTF-8)
    index.shard.npy   uint16 (uint32 past 65,535 shards): the shard that holds it
    index.start.npy   int64: its first row in that shard's value columns
    index.count.npy   int64: its number of rows

Reading (:class:`StoreView`, what :meth:`ShardStore.load` returns for this layout) opens the index with
``np.load(mmap_mode="r")`` and nothing else; one utterance is a binary search in the index (``np.searchsorted``:
about 20 comparisons at a million ids, touching as many pages) and one slice of each column of its shard, so it
costs O(its length) whatever the number of shards. Shards are opened on first use and kept in a small LRU
(:data:`OPEN_SHARDS` shards; each column holds one file descriptor while it is mapped), so file descriptors do not
grow with a 4,096-shard LibriLight version. Memory-mapped pages belong to the page cache (``RssFile``), shared by
every process and DataLoader worker that maps the file and dropped by the kernel under pressure: what a process
*holds* for a store is the index lookups and the values it copies out.
"""
from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from syllablelm.runtime.fileio import write_npy
from syllablelm.runtime.strings import Strings

LAYOUT = "columns"  # the manifest's "layout" for this format; manifests without one hold one .npz per shard
OPEN_SHARDS = 32  # shards a reader keeps mapped at once (LRU)
INDEX_COLUMNS = ("ids", "shard", "start", "count")
MARKER = "offsets"  # the column written last: a shard is complete when it exists


def index_file(vdir: Path, column: str) -> Path:
    return vdir / f"index.{column}.npy"


def shard_prefix(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}"


def column_file(vdir: Path, prefix: str, column: str) -> Path:
    return vdir / f"{prefix}.{column}.npy"


def smallest_unsigned(values: np.ndarray) -> np.dtype:
    """The smallest unsigned integer type that holds every (non-negative) value (uint8 for none)."""
    return np.min_scalar_type(int(values.max()) if values.size else 0)


def write_shard_columns(vdir: Path, prefix: str, ids: list[str], lengths: np.ndarray,
                        columns: Mapping[str, np.ndarray]) -> Path:
    """Write one shard: the marker is removed first and written last (module docstring). Returns the marker."""
    marker = column_file(vdir, prefix, MARKER)
    marker.unlink(missing_ok=True)
    packed = Strings.from_iter(ids)
    write_npy(column_file(vdir, prefix, "ids"), packed.data)
    write_npy(column_file(vdir, prefix, "id_offsets"), packed.offsets)
    for name, array in columns.items():
        write_npy(column_file(vdir, prefix, name), array)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    write_npy(marker, offsets)
    return marker


def shard_files(vdir: Path, prefix: str, columns: tuple[str, ...]) -> list[Path]:
    """Every file of one shard, the marker last."""
    return [column_file(vdir, prefix, c) for c in ("ids", "id_offsets", *columns, MARKER)]


def read_column(path: Path, headers: dict | None = None) -> np.ndarray:
    """A ``.npy`` file memory-mapped read-only: what ``np.load(path, mmap_mode="r")`` gives, made from the header
    (numpy's ``read_magic`` / ``read_array_header_*``) and one ``mmap`` with ``np.frombuffer``, which costs about a
    quarter of ``np.load``'s Python work: a random read in a 4,096-shard store opens a shard most of the time, and in a
    DataLoader worker every object that work allocates can trigger garbage collections. ``headers``: a dict that
    keeps each file's parsed header (shape, dtype, data offset), so a file mapped again costs no parsing. An empty
    array is not mapped (``mmap`` refuses a zero-length view)."""
    with open(path, "rb") as f:
        header = None if headers is None else headers.get(path)
        if header is None:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path}: not a C-ordered numeric .npy array")
            header = (shape, dtype, f.tell())
            if headers is not None:
                headers[path] = header
        shape, dtype, offset = header
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.zeros(shape, dtype=dtype)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if offset + count * dtype.itemsize > len(mapped):
        raise ValueError(f"{path}: the header says {shape} {dtype}, the file holds {len(mapped) - offset} data bytes")
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)


def read_ids(vdir: Path, prefix: str) -> Strings:
    """One shard's ids as :class:`~syllablelm.runtime.strings.Strings` over the mapped ``ids`` and ``id_offsets``
    files: nothing is decoded until a string is asked for (iteration decodes a block of them at a time)."""
    return Strings(read_column(column_file(vdir, prefix, "ids")), read_column(column_file(vdir, prefix, "id_offsets")))


def check_shard(vdir: Path, prefix: str, columns: tuple[str, ...]) -> int:
    """The number of utterances of a written shard, after checking that its files agree with each other (ids,
    id offsets, value offsets and every column's rows); raises ``ValueError`` naming the file."""
    cols = {c: read_column(column_file(vdir, prefix, c)) for c in ("ids", "id_offsets", MARKER, *columns)}
    n = len(cols["id_offsets"]) - 1
    offsets = cols[MARKER]
    if n < 0 or len(offsets) != n + 1:
        raise ValueError(f"{column_file(vdir, prefix, MARKER)}: {len(offsets)} value offsets for {n} ids")
    if cols["id_offsets"][-1] != len(cols["ids"]):
        raise ValueError(f"{column_file(vdir, prefix, 'id_offsets')}: ends at {cols['id_offsets'][-1]}, the ids "
                         f"hold {len(cols['ids'])} bytes")
    for c in columns:
        if len(cols[c]) != offsets[-1]:
            raise ValueError(f"{column_file(vdir, prefix, c)}: {len(cols[c])} rows, the offsets say {offsets[-1]}")
    return n


def write_index(vdir: Path, prefixes: list[str], duplicate: Callable[[str, str, str], Exception]) -> list[Path]:
    """The version-level id index over every shard (module docstring). ``duplicate(id, shard a, shard b)`` makes
    the error raised when an id is in two shards. Returns the index files."""
    keys, shard, start, count = [], [], [], []
    for s, prefix in enumerate(prefixes):
        offsets = read_column(column_file(vdir, prefix, MARKER))
        keys.append(read_ids(vdir, prefix).fixed_width())
        shard.append(np.full(len(offsets) - 1, s, dtype=np.int64))
        start.append(np.asarray(offsets[:-1]))
        count.append(np.diff(offsets))
    width = max([k.dtype.itemsize for k in keys] + [1])
    ids = np.concatenate([k.astype(f"S{width}") for k in keys]) if keys else np.zeros(0, f"S{width}")
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    where = np.concatenate(shard)[order] if shard else np.zeros(0, np.int64)
    same = np.flatnonzero(ids[1:] == ids[:-1])
    if len(same):
        i = int(same[0])
        raise duplicate(ids[i].decode(), prefixes[where[i]], prefixes[where[i + 1]])
    shard_type = np.uint16 if len(prefixes) <= np.iinfo(np.uint16).max + 1 else np.uint32
    arrays = {"ids": ids, "shard": where.astype(shard_type),
              "start": np.concatenate(start)[order] if start else np.zeros(0, np.int64),
              "count": np.concatenate(count)[order] if count else np.zeros(0, np.int64)}
    for name in INDEX_COLUMNS:
        write_npy(index_file(vdir, name), arrays[name])
    return [index_file(vdir, name) for name in INDEX_COLUMNS]


class StoreView(Mapping):
    """A complete version in the column layout as a read-only ``{id: value}`` mapping (module docstring): the
    index mapped, shards mapped on first use (an LRU of :data:`OPEN_SHARDS`), each value copied out of the maps
    by ``value(columns, start, stop)``. Iterates ids shard by shard (sorted within a shard, as the old layout's
    dict did); :meth:`id_at` and :meth:`at` address them in globally sorted order. Picklable (the maps are
    reopened)."""

    def __init__(self, vdir: Path, prefixes: list[str], columns: tuple[str, ...],
                 value: Callable[[Mapping[str, np.ndarray], int, int], Any], *, max_open: int | None = None):
        self.vdir, self.prefixes, self.columns, self.value = Path(vdir), list(prefixes), tuple(columns), value
        self.max_open = OPEN_SHARDS if max_open is None else max_open
        self._map_index()

    def _map_index(self) -> None:
        self.index = {name: read_column(index_file(self.vdir, name)) for name in INDEX_COLUMNS}
        self._width = self.index["ids"].dtype.itemsize
        self._open: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._headers: dict[Path, tuple] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("index", "_open", "_width", "_headers")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._map_index()

    # ---- lookups ---------------------------------------------------------------------------------------
    def position(self, utt: str) -> int | None:
        """The rank of ``utt`` among the version's sorted ids, None when the version does not hold it."""
        key = utt.encode() if isinstance(utt, str) else None
        if key is None or len(key) > self._width or not key or key.endswith(b"\0"):
            return None
        ids = self.index["ids"]
        i = int(np.searchsorted(ids, np.bytes_(key)))
        return i if i < len(ids) and ids[i] == key else None

    def id_at(self, i: int) -> str:
        return self.index["ids"][i].decode()

    def shard_columns(self, shard: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Value columns of one shard (all of them, or ``columns``), mapped; each (shard, column) is kept in the
        LRU, and its header once parsed is kept for good (a few hundred bytes a file)."""
        out = {}
        for c in columns or self.columns:
            found = self._open.get((shard, c))
            if found is None:
                found = read_column(column_file(self.vdir, self.prefixes[shard], c), self._headers)
                self._open[(shard, c)] = found
                while len(self._open) > self.max_open * len(self.columns):
                    self._open.popitem(last=False)
            else:
                self._open.move_to_end((shard, c))
            out[c] = found
        return out

    def at(self, i: int):
        """The value of the ``i``-th id in sorted order."""
        start = int(self.index["start"][i])
        return self.value(self.shard_columns(int(self.index["shard"][i])), start, start + int(self.index["count"][i]))

    def rows(self, i: int, lo: int, hi: int, column: str) -> np.ndarray:
        """Rows ``[lo, hi)`` of one column of the ``i``-th id's value, as a view into the map (no copy)."""
        start = int(self.index["start"][i])
        return self.shard_columns(int(self.index["shard"][i]), (column,))[column][start + lo:start + hi]

    def counts(self) -> np.ndarray:
        """Rows per id, in sorted id order (int64, a map)."""
        return self.index["count"]

    # ---- Mapping -----------------------------------------------------------------------------------------
    def __getitem__(self, utt: str):
        i = self.position(utt)
        if i is None:
            raise KeyError(utt)
        return self.at(i)

    def __contains__(self, utt: object) -> bool:
        return isinstance(utt, str) and self.position(utt) is not None

    def __len__(self) -> int:
        return len(self.index["ids"])

    def __iter__(self) -> Iterator[str]:
        """Ids shard by shard, sorted within each: the order the old layout's dict had, and one shard mapped at a
        time in a pass over every value (``items()``), whatever the number of shards."""
        for prefix in self.prefixes:
            yield from read_ids(self.vdir, prefix)

    def shards(self) -> Iterator[tuple[str, Iterator[str], np.ndarray, dict[str, np.ndarray]]]:
        """Every shard in turn, for one bounded pass: ``(prefix, its ids (an iterator), value offsets, columns)``,
        all read from the maps as they are used."""
        for prefix in self.prefixes:
            ids = iter(read_ids(self.vdir, prefix))
            cols = {c: read_column(column_file(self.vdir, prefix, c)) for c in self.columns}
            yield prefix, ids, read_column(column_file(self.vdir, prefix, MARKER)), cols
