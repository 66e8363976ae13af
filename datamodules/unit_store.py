"""Unit store: each utterance's deduplicated syllable units with their segments (the SpeechLM's training data).

Same layout and protocol as the boundary store (:mod:`datamodules.shard_store`). An entry is written as
``(segments (n, 2) seconds in file time, units (n,) int)`` and stored as one ``(n, 3)`` float64 array
``[start, end, unit]`` (unit ids are exact in float64 up to 2^53). The manifest's ``meta`` records
``vocab_size`` (units are ``0 .. vocab_size - 1``) and how they were made.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from syllablelm.alignments import SegmentError, check_segments

from .shard_store import ShardStore


class UnitStore(ShardStore):
    kind = "units"
    empty_shape = (0, 3)
    dtype = np.float64

    def encode(self, utt: str, value, version: int) -> np.ndarray:
        segments, units = value
        where = f"utterance {utt!r} (unit version {version})"
        seg = check_segments(segments, where=where)
        ids = np.asarray(units)
        if ids.shape != (len(seg),) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
            raise SegmentError(f"{where}: need one non-negative integer unit per segment, got {ids.dtype} "
                               f"{ids.shape} for {len(seg)} segments")
        return np.concatenate([seg, ids[:, None].astype(np.float64)], 1)

    def decode(self, utt: str, value: np.ndarray, where: str, durations: Mapping[str, float] | None):
        value = value.reshape(-1, 3)
        duration = None if durations is None else durations.get(utt)
        return check_segments(value[:, :2], duration=duration, where=where), value[:, 2].astype(np.int64)

    def load(self, version: int, durations: Mapping[str, float] | None = None
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{id: (segments (n, 2) seconds, units (n,) int64)}``."""
        return super().load(version, durations)

    def vocab_size(self, version: int) -> int:
        return int(self.manifest(version)["meta"]["vocab_size"])
