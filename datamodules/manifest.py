"""Audio manifests: one scan of a corpus folder (LibriSpeech or LibriLight layout), cached on disk, held as columns.

A manifest row is ``(id, path, num_samples, sample_rate, channels)``. Files that cannot be used — unreadable,
empty, truncated, with NaN or infinite samples (``verify="decode"``: every sample is decoded once), too short —
are dropped *here*, once, with a logged count and their names, so that no epoch can crash halfway on a bad file.
Each dropped file is also recorded as skipped (:func:`syllablelm.runtime.outcome.record_skip`, ``where="manifest"``), so
the command line's summary and exit status 4 cover every stage that reads audio through a manifest.

The scan itself — the listing (:func:`syllablelm.audio.listing.iter_audio`), the on-disk cache of every file's
``(size, mtime)`` and verdict (a rescan only opens new or modified files), and decode verification shared across
ranks (:class:`Ranks`) — is :mod:`datamodules.manifest_cache`; this module keeps the usable files, names them and
holds them.

Ids: LibriSpeech file stems (``<speaker>-<chapter>-<utt>``) are globally unique and are the ids; for any other
layout (LibriLight ``<speaker>/<book>/<file>.flac``, plain folders) the id is the path relative to the root
without its extension.

**Columns, not objects.** A :class:`Manifest` holds its ids and paths as one UTF-8 buffer each plus offsets
(:class:`~syllablelm.runtime.strings.Strings`) and its lengths, rates and channel counts as numpy arrays: about
100 bytes per file, and no Python object per file. Forked DataLoader workers only read these pages, so they stay
shared (a per-file object would be copied into every worker as soon as its reference count or its garbage-collector
header is written). ``manifest.entries`` is a sequence of :class:`Entry` made on access. Ids are looked up without
a dict: an index of the ids' hashes, sorted once (16 bytes per id, :class:`~syllablelm.runtime.strings.StringIndex`),
answers :meth:`Manifest.index_of` in O(log n), and :meth:`Manifest.seconds_by_id` /
:meth:`Manifest.samples_by_id` are read-only ``Mapping`` views on it (what the stores' ``load`` takes to validate
their values).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from syllablelm.audio.frames import SAMPLE_RATE
from syllablelm.audio.listing import list_audio  # noqa: F401 (re-exported: the benchmarks import it from here)
from syllablelm.runtime.outcome import record_skip
from syllablelm.runtime.strings import StringIndex, Strings, sequence_index

from .manifest_cache import Ranks, Rows, Verify, checked_rows

log = logging.getLogger(__name__)

LIBRISPEECH_ID = re.compile(r"^\d+-\d+-\d+$")


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    path: str  # absolute
    num_samples: int  # at the file's own sample rate
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


# ---- the manifest -------------------------------------------------------------------------------------------
class Manifest:
    """The usable files of one or more roots, as columns (module docstring), and the files left out.

    ``ids`` and ``paths`` are :class:`Strings`; ``num_samples`` (int64, at the file's own rate), ``sample_rate``
    (int32) and ``channels`` (int16) are arrays; ``skipped`` maps a path to its problem. ``entries`` is a sequence
    of :class:`Entry` made on access."""

    def __init__(self, ids: Strings, paths: Strings, num_samples, sample_rate, channels,
                 skipped: dict[str, str] | None = None):
        self.ids, self.paths = ids, paths
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        self.sample_rate = np.asarray(sample_rate, dtype=np.int32)
        self.channels = np.asarray(channels, dtype=np.int16)
        self.skipped = {} if skipped is None else skipped
        n = len(ids)
        if not (len(paths) == len(self.num_samples) == len(self.sample_rate) == len(self.channels) == n):
            raise ValueError("manifest columns of different lengths")
        self._index: StringIndex | None = None

    @classmethod
    def from_entries(cls, entries: Iterable[Entry], skipped: dict[str, str] | None = None) -> "Manifest":
        entries = list(entries)
        return cls(Strings.from_iter(e.id for e in entries), Strings.from_iter(e.path for e in entries),
                   [e.num_samples for e in entries], [e.sample_rate for e in entries],
                   [e.channels for e in entries], skipped)

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_index"] = None  # hashes are salted per interpreter: rebuilt where needed
        return state

    def __repr__(self) -> str:
        return f"Manifest({len(self)} files, {len(self.skipped)} skipped)"

    # ---- one entry --------------------------------------------------------------------------------------
    def entry(self, i: int) -> Entry:
        i = int(i)
        return Entry(self.ids[i], self.paths[i], int(self.num_samples[i]), int(self.sample_rate[i]),
                     int(self.channels[i]))

    @property
    def entries(self) -> "Entries":
        return Entries(self)

    # ---- columns ----------------------------------------------------------------------------------------
    @property
    def seconds(self) -> np.ndarray:
        """Seconds per file (float64), ``num_samples / sample_rate``."""
        return self.num_samples / self.sample_rate

    def samples_at(self, rate: int = SAMPLE_RATE) -> np.ndarray:
        """Samples per file at ``rate`` (int64, rounded down): the length each file is read at."""
        return self.num_samples * rate // self.sample_rate

    def take(self, indices: np.ndarray | Sequence[int]) -> "Manifest":
        """The files at ``indices``, in that order (``skipped`` stays the same)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Manifest(self.ids.take(idx), self.paths.take(idx), self.num_samples[idx], self.sample_rate[idx],
                        self.channels[idx], self.skipped)

    @staticmethod
    def concat(manifests: Sequence["Manifest"]) -> "Manifest":
        """One after another; ``skipped`` merged (later ones win for a path in several)."""
        skipped: dict[str, str] = {}
        for m in manifests:
            skipped.update(m.skipped)
        return Manifest(Strings.concat([m.ids for m in manifests]), Strings.concat([m.paths for m in manifests]),
                        np.concatenate([m.num_samples for m in manifests] or [np.zeros(0, np.int64)]),
                        np.concatenate([m.sample_rate for m in manifests] or [np.zeros(0, np.int32)]),
                        np.concatenate([m.channels for m in manifests] or [np.zeros(0, np.int16)]), skipped)

    # ---- ids --------------------------------------------------------------------------------------------
    def _ids_index(self) -> StringIndex:
        if self._index is None:
            self._index = StringIndex(self.ids)
        return self._index

    def build_index(self) -> "Manifest":
        """Build the id index now (e.g. before DataLoader workers fork, which then share it); returns self."""
        self._ids_index()
        return self

    def index_of(self, utt: str) -> int:
        """Row of id ``utt``, -1 when absent; O(log n) (the index is built on first use)."""
        return self._ids_index().find(utt)

    def indices_of(self, ids: Strings) -> np.ndarray:
        """Row of every id of ``ids`` (-1: absent), vectorized."""
        return self._ids_index().find_all(ids)

    def seconds_by_id(self) -> "ByIdView":
        """A read-only ``Mapping`` ``id -> seconds`` (Python floats) over this manifest."""
        return ByIdView([self], "seconds")

    def samples_by_id(self, rate: int = SAMPLE_RATE) -> "ByIdView":
        """A read-only ``Mapping`` ``id -> samples at rate`` (Python ints) over this manifest."""
        return ByIdView([self], "samples", rate)


class Entries(Sequence):
    """A manifest's rows as :class:`Entry` objects, each made when asked for (none kept)."""

    __slots__ = ("manifest",)

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.manifest.entry(k) for k in range(len(self))[i]]
        return self.manifest.entry(sequence_index(i, len(self), "entry"))

    def __iter__(self) -> Iterator[Entry]:
        m = self.manifest
        for k, (utt, path) in enumerate(zip(m.ids, m.paths)):
            yield Entry(utt, path, int(m.num_samples[k]), int(m.sample_rate[k]), int(m.channels[k]))

    def __eq__(self, other) -> bool:
        if isinstance(other, Entries):
            a, b = self.manifest, other.manifest
            return (a.ids == b.ids and a.paths == b.paths and np.array_equal(a.num_samples, b.num_samples)
                    and np.array_equal(a.sample_rate, b.sample_rate) and np.array_equal(a.channels, b.channels))
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(x == y for x, y in zip(self, other))
        return NotImplemented

    __hash__ = None


class ByIdView(Mapping):
    """A read-only ``Mapping`` from id to a per-file value of one or more manifests (``"seconds"``, or
    ``"samples"`` at ``rate``), looked up through each manifest's id index: O(log n) per lookup and no object per
    file. An id in several manifests takes the value of the last one (as a dict built in their order would)."""

    def __init__(self, manifests: Sequence[Manifest], what: Literal["seconds", "samples"], rate: int = SAMPLE_RATE):
        unique: dict[int, Manifest] = {}
        for m in manifests:
            unique[id(m)] = m  # one manifest object listed twice (predict = train) is searched once
        self.manifests = list(unique.values())
        self.what, self.rate = what, rate
        self._len: int | None = None
        self._last: tuple[str | None, object] = (None, None)
        for m in self.manifests:
            m.build_index()

    def _value(self, m: Manifest, i: int):
        if self.what == "seconds":
            return int(m.num_samples[i]) / int(m.sample_rate[i])
        return int(m.num_samples[i]) * self.rate // int(m.sample_rate[i])

    def get(self, utt, default=None):
        if not isinstance(utt, str):
            return default
        if self._last[0] == utt:  # "utt in view" then "view[utt]", as validation does: one search
            value = self._last[1]
        else:
            value = _MISSING
            for m in reversed(self.manifests):
                i = m.index_of(utt)
                if i >= 0:
                    value = self._value(m, i)
                    break
            self._last = (utt, value)
        return default if value is _MISSING else value

    def __getitem__(self, utt):
        value = self.get(utt, _MISSING)
        if value is _MISSING:
            raise KeyError(utt)
        return value

    def __contains__(self, utt) -> bool:
        return self.get(utt, _MISSING) is not _MISSING

    def _fresh(self, k: int) -> np.ndarray:
        """Rows of manifest ``k`` whose id no earlier manifest holds (the ids this view lists for it)."""
        keep = np.ones(len(self.manifests[k]), bool)
        for m in self.manifests[:k]:
            keep &= m.indices_of(self.manifests[k].ids) < 0
        return np.flatnonzero(keep)

    def __iter__(self) -> Iterator[str]:
        for k, m in enumerate(self.manifests):
            rows = self._fresh(k)
            if len(rows) == len(m):
                yield from m.ids
            else:
                yield from m.ids.take(rows)

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(len(self._fresh(k)) for k in range(len(self.manifests)))
        return self._len


_MISSING = object()


# ---- ids -----------------------------------------------------------------------------------------------------
def utterance_id(path: Path, root: Path) -> str:
    """LibriSpeech stems as they are; otherwise the root-relative path without extension."""
    if LIBRISPEECH_ID.match(path.stem):
        return path.stem
    if root.is_file():
        return path.stem
    return path.relative_to(root).with_suffix("").as_posix()


def _key_id(key: str, single_file: bool) -> str:
    """:func:`utterance_id` of the file at root-relative ``key`` (its name when the root is that file), on strings."""
    stem_path = _without_suffix(key)
    stem = stem_path.rsplit("/", 1)[-1]
    if single_file or LIBRISPEECH_ID.match(stem):
        return stem
    return stem_path


def _without_suffix(key: str) -> str:
    """``key`` less its name's last suffix, as ``Path.with_suffix("")`` has it (a name's leading dot is no suffix)."""
    cut = key.rfind(".")
    slash = key.rfind("/")
    if cut <= slash + 1 or cut == len(key) - 1:
        return key
    return key[:cut]


def librilight_voice_activity(path: str | os.PathLike) -> np.ndarray | None:
    """LibriLight's per-file JSON (``<file>.json`` beside ``<file>.flac``) ``voice_activity`` as an ``(n, 2)``
    array of seconds, or None when there is no such file or field (any other layout)."""
    import json

    meta = Path(path).with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        va = json.loads(meta.read_text()).get("voice_activity")
        return None if not va else np.asarray(va, dtype=np.float64).reshape(-1, 2)
    except (OSError, ValueError, AttributeError) as e:
        log.warning("%s: unreadable LibriLight metadata (%s); pauses are detected from the audio", meta, e)
        return None


# ---- building -----------------------------------------------------------------------------------------------
def build_manifest(
    roots: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    verify: Verify = "decode",
    min_seconds: float = 0.1,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 4,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> Manifest:
    """Scan ``roots`` (folders or single files), reusing the on-disk cache, and return the usable files.

    Raises ``FileNotFoundError`` for a missing root, ``ValueError`` for duplicate ids or when no usable file
    is left (the message lists the first problems found). Every file left out is in ``Manifest.skipped`` with its
    problem and recorded as skipped by the manifest (:func:`syllablelm.runtime.outcome.record_skip`: each logged once
    per process, counted in the command line's summary). ``ranks``: build together with other processes, each
    decoding its share (:mod:`datamodules.manifest_cache`, "Sharded verification"); every rank must call this with
    the same roots and options.
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    parts = [_scan_root(Path(root).resolve(), verify, min_seconds, cache_dir, num_workers, progress, ranks)
             for root in roots]
    manifest = parts[0] if len(parts) == 1 else Manifest.concat(parts)
    _refuse_duplicates(manifest)
    skipped = manifest.skipped
    for path, problem in skipped.items():
        record_skip(path, problem, "manifest")
    if skipped:
        reasons: dict[str, int] = {}
        for problem in skipped.values():
            key = problem.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        names = ", ".join(f"{p} ({why})" for p, why in list(skipped.items())[:10])
        log.warning("skipped %d of %d audio files (%s): %s%s", len(skipped), len(skipped) + len(manifest),
                    ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())), names,
                    " ..." if len(skipped) > 10 else "")
    if not len(manifest):
        detail = "; ".join(f"{p}: {why}" for p, why in list(skipped.items())[:5]) or "no audio files found"
        raise ValueError(f"no usable audio under {', '.join(map(str, roots))} ({detail})")
    multi = int((manifest.channels > 1).sum())
    if multi:
        log.warning("%d files have more than one channel; they are mixed down to mono", multi)
    return manifest


def _refuse_duplicates(manifest: Manifest) -> None:
    """``ValueError`` for an id held by two files, naming both paths: of the repeated ids, the one whose second file
    comes first in the manifest (:meth:`~syllablelm.runtime.strings.StringIndex.first_repeat`)."""
    repeat = manifest._ids_index().first_repeat()
    if repeat is not None:
        second, first = repeat
        raise ValueError(f"duplicate utterance id {manifest.ids[second]!r}: {manifest.paths[first]} and "
                         f"{manifest.paths[second]}")


def _scan_root(root: Path, verify: Verify, min_seconds: float, cache_dir, num_workers: int, progress: bool,
               ranks: Ranks | None = None) -> Manifest:
    """The manifest of one root (resolved): its files and their verdicts from the scan
    (:func:`~datamodules.manifest_cache.checked_rows`), the usable ones kept."""
    rows, prefix = checked_rows(root, verify, cache_dir, num_workers, progress, ranks)
    return _usable(rows, root, not prefix, prefix, min_seconds)


def _usable(rows: Rows, root: Path, single: bool, prefix: str, min_seconds: float) -> Manifest:
    """The manifest of the usable rows; the others (and the too short) go to ``skipped`` in listing order."""
    ok = rows.problem < 0
    seconds = np.zeros(len(ok))
    seconds[ok] = rows.num_samples[ok] / rows.sample_rate[ok]
    short = ok & (seconds < min_seconds)
    keep = np.flatnonzero(ok & ~short)
    skipped: dict[str, str] = {}
    for i in np.flatnonzero(~ok | short).tolist():
        path = str(root) if single else prefix + rows.keys[i]
        if short[i]:
            skipped[path] = f"too short ({int(rows.num_samples[i]) / int(rows.sample_rate[i]):.3f} s < {min_seconds} s)"
        else:
            skipped[path] = rows.problems[rows.problem[i]]
    keys = rows.keys if len(keep) == len(rows.keys) else rows.keys.take(keep)
    ids = Strings.from_iter(_key_id(k, single) for k in keys)
    paths = Strings.from_iter((str(root) for _ in keys) if single else (prefix + k for k in keys))
    return Manifest(ids, paths, rows.num_samples[keep], rows.sample_rate[keep], rows.channels[keep], skipped)


