"""Versioned boundary store: where LossPred and SylBoost leave their segmentations for the next stage.

``ROOT/iter_K/`` holds one version (see :mod:`datamodules.shard_store` for the layout and the atomic
write / manifest protocol). An entry is an ``(n, 2)`` float64 array of ``[start, end]`` seconds in the
original file's time: sorted, non-overlapping, gaps (pauses) allowed. Entries are checked when written and when
read; with utterance durations, reading also checks that every segment lies inside its utterance.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from syllablelm.audio.alignments import check_segments

from .shard_store import (
    MANIFEST,
    AbsentVersionError,
    DamagedVersionError,
    IncompleteVersionError,
    ShardStore,
    StoreError,
)

__all__ = ["BoundaryStore", "IncompleteVersionError", "AbsentVersionError", "DamagedVersionError", "StoreError",
           "MANIFEST"]


class BoundaryStore(ShardStore):
    kind = "boundary"
    empty_shape = (0, 2)
    dtype = np.float64

    def encode(self, utt: str, value, version: int) -> np.ndarray:
        return check_segments(value, where=f"utterance {utt!r} (boundary version {version})")

    def writer_hint(self, version: int) -> str:
        if int(version) == 0:
            return ("LossPred's `syllablelm predict` (the teacher checkpoint with the boundary writer), which writes "
                    "boundary version 0 (or `syllablelm store-reference` / `store-envelope` / `store-copy`, if one "
                    "of them made this store)")
        return (f"the SylBoost `syllablelm fit` that writes boundary version {int(version)} (its boundary "
                f"regeneration after iteration {int(version)})")

    def decode(self, utt: str, value: np.ndarray, where: str, durations: Mapping[str, float] | None):
        duration = None if durations is None else durations.get(utt)
        return check_segments(value.reshape(-1, 2), duration=duration, where=where)

    def check_context(self, where, utt, columns, start, stop, durations: Mapping[str, float]) -> None:
        check_inside(columns["values"], start, stop, durations.get(utt), where)

    def load(self, version: int, durations: Mapping[str, float] | None = None) -> Mapping[str, np.ndarray]:
        """``{id: (n, 2) seconds}``; with ``durations`` every entry must lie inside its utterance."""
        return super().load(version, durations)


def check_inside(segments: np.ndarray, start: int, stop: int, duration: float | None, where: str) -> None:
    """Rows ``[start, stop)`` of a stored segment column end inside an utterance of ``duration`` seconds (the
    check :func:`~syllablelm.audio.alignments.check_segments` makes with a duration; the rest was checked when the
    segments were written)."""
    if duration is not None and stop > start:
        check_segments(segments[stop - 1:stop], duration=duration, where=where)
