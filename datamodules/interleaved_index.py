"""The piece index of the interleaved vocoder LM's data (issue 29, item 2) and its persistent cache. The pass
over a split's utterances (:func:`index_pass`) makes each one's stream, cuts it into pieces and keeps, per piece,
the :data:`~datamodules.interleaved_pieces.INDEX` row (:func:`piece_index`) that
:class:`~datamodules.interleaved_pieces.OnDemandPieces` rebuilds it from, and counts the sums the generation caps
come from (:func:`generation_caps`, :func:`quantile_of_counts`); :func:`parallel_pass` runs it in a forked pool,
:func:`merge_passes` joins the chunks. :func:`write_cached_index` and :func:`read_cached_index` keep a split's index
on disk (:class:`IndexCacheError`: a damaged one).

Persistent index: the pass costs a few ms an utterance (about a day at LibriLight's ~16 M entries) and leaves the
allocator's leftovers in the process that made it. With ``index_cache`` (a folder) each split's index is made once
and kept: Lightning's :meth:`~datamodules.interleaved_data.InterleavedDataModule.prepare_data` (once per node, local
rank 0, before any setup) makes the pass when the split's folder is absent and writes ``index.npy``, ``sizes.npy``,
``ranks.npy`` (int32) and ``meta.json``
(:attr:`~datamodules.interleaved_data.InterleavedDataModule.generation_stats`, the validation examples, each file's
bytes and shape) into a temporary folder renamed onto ``<split>-<key>``, so a cache folder is complete or absent
(two nodes racing: the first rename wins, both hold the same index). The key is a SHA-256 of everything the index
depends on: each store version's manifest (it records every file's size and CRC-32 and when the version was
finalized, so a rewritten version is another key), the split's utterance ids in order, ``fine_pool``,
``label_hop``, ``lead``, ``grouping``, the piece limit, both vocabulary sizes and :data:`INDEX_FORMAT`; a changed
input is a new folder (old ones are left for the user to remove).
:meth:`~datamodules.interleaved_data.InterleavedDataModule.setup` then memory-maps the arrays
(``np.load(mmap_mode="r")``): no pass, nothing held but the page cache, on every rank and every restart; it still
lists the splits' ids (to hash them), a string per utterance, not a stream. A folder whose key matches but whose
files are unreadable, truncated or of another shape is an error (:class:`IndexCacheError`) naming the file and
saying to remove the folder: files are renamed into place only when complete, so damage is outside interference,
and a silent rebuild would cost every rank hours. ``index_workers`` N runs the pass in a pool of N forked processes
over contiguous chunks of the utterances (:func:`parallel_pass`), merged in order (:func:`merge_passes`: utterance
numbers shifted, histograms and integer sums added): the same index as one pass, the pass's transients freed with
the pool.
"""
from __future__ import annotations

import array
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from syllablelm.audio.frames import seconds_to_frames
from syllablelm.runtime.fileio import current_umask, shard_range, write_json, write_npy
from syllablelm.units.fine import pool_labels, runs
from syllablelm.units.interleave import (
    Interleaved,
    InterleavedVocab,
    authors_size,
    group_starts,
    interleave,
    split_pieces,
    stretch_lengths,
)

from .interleaved_pieces import INDEX, StoreRows
from .shard_store import MANIFEST


def piece_index(stream: Interleaved, pieces: list[Interleaved], durations: np.ndarray, num_labels: int,
                num_syllables: int, vocab: InterleavedVocab, fine_pool: int) -> np.ndarray:
    """The :data:`INDEX` rows (without the utterance column) of ``pieces``, the consecutive pieces
    :func:`~syllablelm.units.interleave.split_pieces` cut from ``stream`` (or ``[stream]``): ``(len(pieces), 5)``
    int64. A piece starts at the group of its first syllable (syllables are never dropped, so that is the count of
    the pieces before it), its first fine unit is the number of fine tokens before that group in ``stream``."""
    t = stream.tokens
    starts = group_starts(t, vocab)
    syllables_before = np.r_[0, np.cumsum(stream.is_syllable)][starts]  # syllables before each group
    fine_before = np.r_[0, np.cumsum(t < vocab.fine)]
    frames_before = np.r_[0, np.cumsum(durations)]  # pooled fine frames before each fine unit
    out = np.zeros((len(pieces), 5), dtype=np.int64)
    s_lo = 0
    for k, p in enumerate(pieces):
        n_fine, n_syl = int((p.tokens < vocab.fine).sum()), int(p.is_syllable.sum())
        g = int(np.searchsorted(syllables_before, s_lo))
        i0 = int(fine_before[starts[g]])
        out[k] = (frames_before[i0] * fine_pool, min(int(frames_before[i0 + n_fine]) * fine_pool, num_labels),
                  s_lo, min(s_lo + n_syl + 1, num_syllables), len(p.tokens))
        s_lo += n_syl
    return out


def quantile_of_counts(counts: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear interpolation) of the values a histogram holds (``counts[v]``:
    how many equal ``v``, at least one in all), without the values: the index ``(n - 1) q``, the two order
    statistics around it and numpy's interpolation between them (``a + (b - a) t``, or ``b - (b - a) (1 - t)`` from
    ``t = 0.5`` on), in float64 as numpy computes them, so the result is the same number."""
    n = int(counts.sum())
    v = np.float64(n - 1) * np.float64(q)
    lo = min(int(np.floor(v)), n - 1)
    t = v - np.float64(lo)
    cum = np.cumsum(counts)
    a, b = (np.float64(int(np.searchsorted(cum, r, side="right"))) for r in (lo, min(lo + 1, n - 1)))
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


INDEX_FORMAT = 1  # the layout of a cached index: part of its key, so a new layout never reads an old cache
CACHE_FILES = ("index", "sizes", "ranks")  # the arrays of a cached index, one .npy each (int32)


class IndexCacheError(RuntimeError):
    """A cached piece index whose key matches but whose files are damaged (module docstring, Persistent index)."""


@dataclass(frozen=True)
class PassSettings:
    """What a pass over a split's utterances needs besides the stores (picklable: it travels to the pool)."""

    vocab: InterleavedVocab
    fine_pool: int
    frames_per_fine: int
    label_hop: int
    lead: float
    grouping: int
    limit: int | None
    train: bool
    materialize: bool
    unit_where: str
    label_where: str


def as_int32(values, where: str) -> np.ndarray:
    """An int64 ``array.array`` or array as int32, refusing a value that does not fit."""
    x = np.frombuffer(values, dtype=np.int64) if isinstance(values, array.array) else np.asarray(values, np.int64)
    if x.size and (x.max() > np.iinfo(np.int32).max or x.min() < np.iinfo(np.int32).min):
        raise ValueError(f"{where}: an index value {int(x.max())} does not fit int32")
    return x.astype(np.int32)


def add_counts(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The histogram ``counts`` with ``values`` added (grown as needed)."""
    c = np.bincount(values, minlength=len(counts))
    c[:len(counts)] += counts
    return c


def index_pass(ids: list[str], sources: tuple[StoreRows, StoreRows], s: PassSettings) -> dict:
    """One pass over ``ids`` (a split, or a contiguous chunk of one): each utterance's stream made, cut into pieces
    and indexed (or, with ``materialize``, kept as ``built``), the tokens let go. Returns the :data:`INDEX` rows
    (``utterance`` counted from the first of ``ids`` with pieces), the pieces' ``sizes``, the utterances' ``ranks``
    in the two stores (int32 each), and the sums :func:`merge_passes` adds up: histograms of stretch and tail
    lengths, fine units in stretches, labels and syllables (training), pieces' longest token count, utterances
    left out and fine units dropped, and up to 4 ``examples`` (validation)."""
    unit_rows, label_rows = sources
    vocab = s.vocab
    built: list[Interleaved] = []  # materialize only
    columns = {c: array.array("q") for c in (*INDEX, "size")}  # grows without a Python object per piece
    ranks = {"unit": array.array("q"), "label": array.array("q")}
    stretch_counts, tail_counts = np.zeros(1, np.int64), np.zeros(1, np.int64)
    stretch_sum = skipped = dropped = n_labels = n_syl = longest = 0
    examples: list[dict] = []
    for utt in ids:
        segments, syl = unit_rows.loaded[utt]
        labels = np.asarray(label_rows.loaded[utt], dtype=np.int64)
        if len(syl) and (syl.max() >= vocab.syllable):
            raise ValueError(f"{s.unit_where}: utterance {utt!r} holds syllable unit {int(syl.max())}, not below "
                             f"the vocabulary's {vocab.syllable}")
        if len(labels) and labels.max() >= vocab.fine:
            raise ValueError(f"{s.label_where}: utterance {utt!r} holds label {int(labels.max())}, not below the "
                             f"vocabulary's {vocab.fine} fine units")
        if not len(syl):
            skipped += 1
            continue
        fine, durations = runs(pool_labels(labels, s.fine_pool))
        stream = interleave(fine, durations, syl, seconds_to_frames(segments), vocab,
                            frames_per_fine=s.frames_per_fine, lead=s.lead, grouping=s.grouping)
        if s.train:
            lengths = stretch_lengths(stream.tokens, vocab)
            stretch_counts = add_counts(stretch_counts, lengths[:-1])
            tail_counts = add_counts(tail_counts, lengths[-1:])
            stretch_sum += int(lengths[:-1].sum())
            n_labels += len(labels)
            n_syl += len(syl)
        elif len(examples) < 4:
            examples.append({"id": utt, "syllables": np.asarray(syl), "fine_units": fine,
                             "fine_durations": durations})
        if s.limit is None:
            cut = [stream]
        else:
            cut, lost = split_pieces(stream, vocab, s.limit)
            dropped += lost
        longest = max([longest, *(len(p.tokens) for p in cut)])
        if s.materialize:
            built.extend(cut)
            continue
        rows = piece_index(stream, cut, durations, len(labels), len(syl), vocab, s.fine_pool)
        for c, values in zip(INDEX[1:], rows.T):
            columns[c].extend(values.tolist())
        columns["utterance"].extend([len(ranks["unit"])] * len(cut))
        columns["size"].extend(authors_size(int((p.tokens < vocab.fine).sum()), int(p.is_syllable.sum()))
                               for p in cut)
        ranks["unit"].append(unit_rows.rank(utt))
        ranks["label"].append(label_rows.rank(utt))
    where = f"{s.unit_where}, {s.label_where}"
    index = np.stack([as_int32(columns[c], where) for c in INDEX], 1) if len(columns["size"]) else \
        np.zeros((0, len(INDEX)), np.int32)
    return {"index": index, "sizes": as_int32(columns["size"], where),
            "ranks": np.stack([as_int32(ranks["unit"], where), as_int32(ranks["label"], where)], 1),
            "built": built, "stretch_counts": stretch_counts, "tail_counts": tail_counts, "stretch_sum": stretch_sum,
            "labels": n_labels, "syllables": n_syl, "longest": longest, "skipped": skipped, "dropped": dropped,
            "examples": examples}


def merge_passes(parts: list[dict]) -> dict:
    """The result of one :func:`index_pass` over the concatenated chunks of ``parts`` (in order): rows
    concatenated with each chunk's utterance numbers moved past the earlier chunks' utterances, histograms and
    counts added (integers: the same result in any grouping), the longest piece the largest, the first 4
    examples."""
    if len(parts) == 1:
        return parts[0]
    width = {k: max(len(p[k]) for p in parts) for k in ("stretch_counts", "tail_counts")}
    out = {k: sum(np.pad(p[k], (0, width[k] - len(p[k]))) for p in parts) for k in width}
    out.update({k: sum(p[k] for p in parts) for k in ("stretch_sum", "labels", "syllables", "skipped", "dropped")})
    out["longest"] = max(p["longest"] for p in parts)
    out["examples"] = [e for p in parts for e in p["examples"]][:4]
    out["built"] = [b for p in parts for b in p["built"]]
    before = np.cumsum([0] + [len(p["ranks"]) for p in parts])
    index = []
    for p, offset in zip(parts, before):
        rows = p["index"].astype(np.int64)
        rows[:, INDEX.index("utterance")] += offset
        index.append(as_int32(rows, "the merged piece index"))
    out["index"] = np.concatenate(index)
    out["sizes"] = np.concatenate([p["sizes"] for p in parts])
    out["ranks"] = np.concatenate([p["ranks"] for p in parts])
    return out


_POOL_ARGS: tuple = ()  # a pool process's (sources, settings), set once by its initializer


def _pool_init(sources: tuple[StoreRows, StoreRows], settings: PassSettings) -> None:
    global _POOL_ARGS
    _POOL_ARGS = (sources, settings)


def _pool_pass(ids: list[str]) -> dict:
    return index_pass(ids, *_POOL_ARGS)


def parallel_pass(ids: list[str], sources: tuple[StoreRows, StoreRows], s: PassSettings, workers: int) -> dict:
    """:func:`index_pass` over ``ids``; with ``workers`` > 0 in a pool of that many processes (forked: they read
    the memory-mapped stores and numpy only), over contiguous chunks (4 a process, for balance) whose results
    :func:`merge_passes` joins in order: the same result as one pass, and the pass's transient memory (the
    allocator's leftovers of its Python objects) stays in the pool's processes, which end with it."""
    if workers <= 0 or s.materialize or len(ids) < 2:
        return index_pass(ids, sources, s)
    n_chunks = min(len(ids), 4 * workers)
    chunks = [ids[slice(*shard_range(len(ids), k, n_chunks))] for k in range(n_chunks)]
    with multiprocessing.get_context("fork").Pool(workers, initializer=_pool_init, initargs=(sources, s)) as pool:
        parts = pool.map(_pool_pass, chunks, chunksize=1)
    return merge_passes(parts)


def generation_caps(result: dict, label_hop: int) -> dict:
    """:attr:`~datamodules.interleaved_data.InterleavedDataModule.generation_stats` from a training pass's sums."""
    stretch_counts, tail_counts = result["stretch_counts"], result["tail_counts"]
    n_stretch, n_tail = int(stretch_counts.sum()), int(tail_counts.sum())
    seconds = result["labels"] * label_hop / 16000
    return {
        "stretch_max": int(np.flatnonzero(stretch_counts).max()) if n_stretch else 0,
        "stretch_q99": int(math.ceil(quantile_of_counts(stretch_counts, 0.99))) if n_stretch else 0,
        "tail_q90": int(math.ceil(quantile_of_counts(tail_counts, 0.9))) if n_tail else 0,
        "max_piece_tokens": int(result["longest"]),
        "syllables_per_second": result["syllables"] / seconds if seconds else 0.0,
        "fine_per_syllable": result["stretch_sum"] / n_stretch if n_stretch else 0.0,
    }


def store_identity(store, version: int) -> str:
    """What identifies one written state of a store version: the SHA-256 of its manifest, which records every
    file's size and CRC-32 and the time it was finalized (a rewritten version has a new manifest)."""
    return hashlib.sha256((store.version_dir(version) / MANIFEST).read_bytes()).hexdigest()


def write_cached_index(folder: Path, result: dict, meta: dict) -> None:
    """Write ``result``'s :data:`CACHE_FILES` and ``meta.json`` (``meta`` plus each file's bytes and shape) into a
    temporary sibling folder and rename it onto ``folder``: a cache folder is complete or absent. When another
    process (another node) renamed its own first, this one's is dropped: both hold the same index."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        files = {}
        for name in CACHE_FILES:
            path = tmp / f"{name}.npy"
            write_npy(path, result[name])
            files[name] = {"bytes": path.stat().st_size, "shape": list(result[name].shape)}
        write_json(tmp / "meta.json", {**meta, "format": INDEX_FORMAT, "files": files}, indent=1)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; caches are shared
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_cached_index(folder: Path) -> dict:
    """A cached index: ``meta.json`` and its arrays memory-mapped (read-only; O(1) time and memory). A file that is
    unreadable, of another size than written, or of another shape or type raises :class:`IndexCacheError` naming
    it (module docstring, Persistent index)."""
    meta_path = folder / "meta.json"
    hint = f"remove {folder} to rebuild the index"
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
        if meta["format"] != INDEX_FORMAT:
            raise ValueError(f"format {meta['format']}, expected {INDEX_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexCacheError(f"{meta_path}: damaged cached piece index ({type(e).__name__}: {e}); {hint}") from e
    out = dict(meta)
    for name in CACHE_FILES:
        path = folder / f"{name}.npy"
        try:
            want = files[name]
            size = path.stat().st_size
            if size != want["bytes"]:
                raise ValueError(f"{size} bytes, {want['bytes']} written")
            empty = math.prod(want["shape"]) == 0  # numpy cannot map an empty array
            x = np.load(path, mmap_mode=None if empty else "r", allow_pickle=False)
            if list(x.shape) != want["shape"] or x.dtype != np.int32:
                raise ValueError(f"{x.dtype} {list(x.shape)}, int32 {want['shape']} written")
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            raise IndexCacheError(f"{path}: damaged cached piece index ({type(e).__name__}: {e}); {hint}") from e
        out[name] = x
    return out
