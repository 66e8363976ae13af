"""Frame-label store: the targets of masked-prediction training and of LossPred, one version per label step.

Same layout and protocol as the boundary store (:mod:`datamodules.shard_store`). An entry is a 1-D int32 array
with one k-means label per 20 ms frame of the *whole file* (frame ``i`` covers samples ``[320 i, 320 i + 400)``,
HuBERT's CNN grid), so any crop or VAD trim that starts on the 20 ms grid slices it directly. The manifest's
``meta`` records ``num_labels`` and how the labels were made.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from syllablelm.audio.alignments import SegmentError
from syllablelm.audio.frames import num_frames

from .shard_store import ShardStore


class LabelStore(ShardStore):
    kind = "labels"
    dtype = np.int32

    def encode(self, utt: str, value, version: int) -> np.ndarray:
        labels = np.asarray(value)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise SegmentError(f"utterance {utt!r} (label version {version}): expected a 1-D array of "
                               f"non-negative integer labels, got {labels.dtype} {labels.shape}")
        return labels.astype(np.int32)

    def writer_hint(self, version: int) -> str:
        return (f"`syllablelm labels --out {self.root} --version {int(version)}` with the features, checkpoint and "
                "k-means it was written from")

    def decode(self, utt: str, value: np.ndarray, where: str, num_samples: Mapping[str, int] | None):
        if num_samples is not None and utt in num_samples:
            expected = num_frames(num_samples[utt])
            if abs(len(value) - expected) > 1:
                raise SegmentError(f"{where}: {len(value)} labels for {expected} frames of audio")
        return value

    def num_labels(self, version: int) -> int:
        return int(self.manifest(version)["meta"]["num_labels"])
