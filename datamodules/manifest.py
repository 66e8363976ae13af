"""Audio manifests: one scan of a corpus folder (LibriSpeech or LibriLight layout), cached on disk.

A manifest row is ``(id, path, num_samples, sample_rate, channels)``. Files that cannot be used — unreadable,
empty, truncated, with NaN or infinite samples (``verify="decode"``: every sample is decoded once), too short —
are dropped *here*, once, with a logged count and their names, so that no epoch can crash halfway on a bad file.
Each dropped file is also recorded as skipped (:func:`syllablelm.runtime.outcome.record_skip`, ``where="manifest"``), so
the command line's summary and exit status 4 cover every stage that reads audio through a manifest. The cache keeps
every file's ``(size, mtime)`` and its verdict: a rescan reuses the rows of unchanged files and only opens new or
modified ones (a cached "bad" verdict is reported and recorded again, as a fresh one).

Files are found by :func:`syllablelm.audio.io.list_audio` (the listing ``syllablelm tokenize`` uses too): symbolic
links to folders and files are followed, a folder reached twice is searched once, hidden names are skipped.

Ids: LibriSpeech file stems (``<speaker>-<chapter>-<utt>``) are globally unique and are the ids; for any other
layout (LibriLight ``<speaker>/<book>/<file>.flac``, plain folders) the id is the path relative to the root
without its extension.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from tqdm.auto import tqdm

from syllablelm.audio.io import AudioError, audio_info, decoded_length, list_audio
from syllablelm.runtime.fileio import write_json
from syllablelm.runtime.outcome import record_skip

log = logging.getLogger(__name__)

LIBRISPEECH_ID = re.compile(r"^\d+-\d+-\d+$")
CACHE_FORMAT = 3  # 3: the decode check refuses NaN/inf samples (caches of older checks are rebuilt once)
Verify = Literal["header", "decode"]


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


@dataclasses.dataclass
class Manifest:
    entries: list[Entry]
    skipped: dict[str, str]  # path -> problem

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def seconds(self) -> np.ndarray:
        return np.array([e.seconds for e in self.entries], dtype=np.float64)


def utterance_id(path: Path, root: Path) -> str:
    """LibriSpeech stems as they are; otherwise the root-relative path without extension."""
    if LIBRISPEECH_ID.match(path.stem):
        return path.stem
    if root.is_file():
        return path.stem
    return path.relative_to(root).with_suffix("").as_posix()


def _check(path: Path, verify: Verify) -> tuple[tuple[int, int, int] | None, str | None]:
    """Open one file; return ``((num_samples, sample_rate, channels), None)`` or ``(None, problem)``.
    The length limit is applied later, so the cached result does not depend on it."""
    try:
        info = audio_info(path)
        if info.num_samples == 0:
            return None, "empty (no samples)"
        if verify == "decode":
            # a truncated or corrupt stream usually has a valid header; only decoding shows it
            n = decoded_length(path)
            if n != info.num_samples:
                return None, f"truncated or corrupt: header says {info.num_samples} samples, decoded {n}"
        return (info.num_samples, info.sample_rate, info.channels), None
    except AudioError as e:
        return None, e.problem


def librilight_voice_activity(path: str | os.PathLike) -> np.ndarray | None:
    """LibriLight's per-file JSON (``<file>.json`` beside ``<file>.flac``) ``voice_activity`` as an ``(n, 2)``
    array of seconds, or None when there is no such file or field (any other layout)."""
    meta = Path(path).with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        va = json.loads(meta.read_text()).get("voice_activity")
        return None if not va else np.asarray(va, dtype=np.float64).reshape(-1, 2)
    except (OSError, ValueError, AttributeError) as e:
        log.warning("%s: unreadable LibriLight metadata (%s); pauses are detected from the audio", meta, e)
        return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYLLABLELM_CACHE", Path.home() / ".cache" / "syllablelm")) / "manifests"


def build_manifest(
    roots: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    verify: Verify = "decode",
    min_seconds: float = 0.1,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 4,
    progress: bool = True,
) -> Manifest:
    """Scan ``roots`` (folders or single files), reusing the on-disk cache, and return the usable files.

    Raises ``FileNotFoundError`` for a missing root, ``ValueError`` for duplicate ids or when no usable file
    is left (the message lists the first problems found). Every file left out is in ``Manifest.skipped`` with its
    problem and recorded as skipped by the manifest (:func:`syllablelm.runtime.outcome.record_skip`: each logged once
    per
    process, counted in the command line's summary).
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    entries: list[Entry] = []
    skipped: dict[str, str] = {}
    for root in roots:
        part = _scan_root(Path(root).resolve(), verify, min_seconds, cache_dir, num_workers, progress)
        entries += part.entries
        skipped.update(part.skipped)
    seen: dict[str, str] = {}
    for e in entries:
        if e.id in seen:
            raise ValueError(f"duplicate utterance id {e.id!r}: {seen[e.id]} and {e.path}")
        seen[e.id] = e.path
    for path, problem in skipped.items():
        record_skip(path, problem, "manifest")
    if skipped:
        reasons: dict[str, int] = {}
        for problem in skipped.values():
            key = problem.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        names = ", ".join(f"{p} ({why})" for p, why in list(skipped.items())[:10])
        log.warning("skipped %d of %d audio files (%s): %s%s", len(skipped), len(skipped) + len(entries),
                    ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())), names,
                    " ..." if len(skipped) > 10 else "")
    if not entries:
        detail = "; ".join(f"{p}: {why}" for p, why in list(skipped.items())[:5]) or "no audio files found"
        raise ValueError(f"no usable audio under {', '.join(map(str, roots))} ({detail})")
    multi = sum(e.channels > 1 for e in entries)
    if multi:
        log.warning("%d files have more than one channel; they are mixed down to mono", multi)
    return Manifest(entries, skipped)


def _scan_root(root: Path, verify: Verify, min_seconds: float, cache_dir, num_workers: int,
               progress: bool) -> Manifest:
    files = list_audio(root)
    cache_path = Path(cache_dir or default_cache_dir()) / (
        hashlib.sha1(f"{root}|{verify}".encode()).hexdigest()[:16] + ".json")
    cached = _read_cache(cache_path)
    rows, todo = {}, []
    for path in files:
        st = path.stat()
        key = str(path.relative_to(root)) if root.is_dir() else path.name
        hit = cached.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            rows[key] = hit
        else:
            todo.append((key, path, st.st_size, st.st_mtime_ns))
    if todo:
        with ThreadPoolExecutor(max(1, num_workers)) as pool:  # libsndfile releases the GIL
            results = pool.map(lambda t: _check(t[1], verify), todo)
            for (key, _, size, mtime), (info, problem) in tqdm(
                    zip(todo, results), total=len(todo), desc=f"manifest {root.name}", disable=not progress,
                    unit="file"):
                rows[key] = [size, mtime, *(info or (0, 0, 0)), problem]
        try:
            write_json(cache_path, {"format": CACHE_FORMAT, "root": str(root), "rows": rows})
        except OSError as e:  # a read-only cache location must not stop the run
            log.warning("could not write manifest cache %s: %s", cache_path, e)
    entries, skipped = [], {}
    for path in files:
        key = str(path.relative_to(root)) if root.is_dir() else path.name
        _, _, n, sr, ch, problem = rows[key]
        if problem is None and n / sr < min_seconds:
            problem = f"too short ({n / sr:.3f} s < {min_seconds} s)"
        if problem is not None:
            skipped[str(path)] = problem
        else:
            entries.append(Entry(utterance_id(path, root), str(path), n, sr, ch))
    return Manifest(entries, skipped)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["rows"] if data.get("format") == CACHE_FORMAT else {}
    except (OSError, ValueError, KeyError):
        return {}
