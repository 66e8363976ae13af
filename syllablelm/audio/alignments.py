"""Alignment files (the project's contract) and the checks every stored segment list must pass.

Alignment JSON per utterance, seconds in file time::

    {"words": [[start, end, text], ...], "syllables": [[start, end, label], ...], "phones": [[start, end, label], ...]}

Pauses are gaps (or phones labelled ``sil``). Any tier may be missing; evaluation needs ``syllables``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

TIERS = ("words", "syllables", "phones")


class SegmentError(ValueError):
    """Segments that break the contract; the message names the file (or utterance) and the problem."""


def segments_array(x, where: str = "segments") -> np.ndarray:
    """One utterance's segments (numpy or torch) as a float64 ``(n, 2)`` array; empty input -> ``(0, 2)``. Only
    the shape is checked (metrics accept unsorted input); :func:`check_segments` checks the whole contract."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    seg = np.asarray(x, dtype=np.float64)
    if seg.size == 0:
        return seg.reshape(0, 2)
    if seg.ndim != 2 or seg.shape[1] != 2:
        raise ValueError(f"{where}: expected an (n, 2) array of [start, end] seconds, got shape {seg.shape}")
    return seg


def check_segments(segments: np.ndarray, *, duration: float | None = None, where: str = "segments",
                   tolerance: float = 1e-3) -> np.ndarray:
    """Validate an ``(n, 2)`` array of ``[start, end]`` seconds: finite, start < end, sorted,
    non-overlapping (gaps allowed) and, given ``duration``, inside ``[0, duration]`` (``tolerance`` seconds of
    slack for rounding). Returns the array as float64; raises :class:`SegmentError` naming ``where``."""
    seg = np.asarray(segments, dtype=np.float64)
    if seg.size == 0:
        return seg.reshape(0, 2)
    if seg.ndim != 2 or seg.shape[1] != 2:
        raise SegmentError(f"{where}: expected an (n, 2) array of [start, end] seconds, got shape {seg.shape}")
    if not np.isfinite(seg).all():
        raise SegmentError(f"{where}: non-finite segment times")
    bad = np.flatnonzero(seg[:, 1] <= seg[:, 0])
    if len(bad):
        raise SegmentError(f"{where}: segment {bad[0]} has end <= start ({seg[bad[0]].tolist()})")
    bad = np.flatnonzero(seg[1:, 0] < seg[:-1, 1] - tolerance)
    if len(bad):
        i = bad[0]
        raise SegmentError(f"{where}: segments {i} and {i + 1} overlap or are unsorted "
                           f"({seg[i].tolist()} then {seg[i + 1].tolist()})")
    if seg[0, 0] < -tolerance:
        raise SegmentError(f"{where}: segment starts before 0 s ({seg[0, 0]:.4f})")
    if duration is not None and seg[-1, 1] > duration + tolerance:
        raise SegmentError(f"{where}: segment ends at {seg[-1, 1]:.4f} s, after the end of the audio "
                           f"({duration:.4f} s)")
    return seg


def load_alignment(path: str | os.PathLike, *, duration: float | None = None
                   ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Read one alignment JSON into ``{tier: ((n, 2) seconds, labels)}``; a clear error names the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SegmentError(f"{path}: unreadable alignment JSON ({e})") from e
    if not isinstance(raw, dict):
        raise SegmentError(f"{path}: expected a JSON object with tiers {TIERS}")
    out = {}
    for tier in TIERS:
        if tier not in raw:
            continue
        rows = raw[tier]
        try:
            times = np.array([[float(r[0]), float(r[1])] for r in rows], dtype=np.float64).reshape(-1, 2)
            labels = [str(r[2]) for r in rows]
        except (TypeError, ValueError, IndexError) as e:
            raise SegmentError(f"{path}: tier {tier!r} must be a list of [start, end, label] ({e})") from e
        out[tier] = (check_segments(times, duration=duration, where=f"{path} [{tier}]"), labels)
    return out


def index_alignments(root: str | os.PathLike) -> dict[str, Path]:
    """Map utterance id -> alignment file under ``root``, by file stem and by root-relative path (so both
    LibriSpeech ids and relative-path ids resolve)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such alignment folder")
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*.json")):
        index.setdefault(path.stem, path)
        index[path.relative_to(root).with_suffix("").as_posix()] = path
    return index
