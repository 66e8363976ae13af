"""Frame-label store: the targets of masked-prediction training and of LossPred, one version per label step.

Same layout and protocol as the boundary store (:mod:`datamodules.shard_store`). An entry is a 1-D int32 array
with one k-means label per 20 ms frame of the *whole file* (frame ``i`` covers samples ``[320 i, 320 i + 400)``,
HuBERT's CNN grid), so any crop, chunk or VAD trim that starts on the 20 ms grid slices it directly. The manifest's
``meta`` records ``num_labels`` and the label model that made them (:func:`label_model_meta`: features,
checkpoint, layer, k-means); :meth:`LabelStore.labeler` rebuilds that model, with which LossPred labels each
VAD-trimmed wave itself (``losspred.labels: trimmed``, the authors' way; ``whole_file`` slices the stored labels).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from syllablelm.audio.alignments import SegmentError
from syllablelm.audio.frames import num_frames
from syllablelm.units.frame_labels import FrameLabeler

from . import store_columns as cols
from .shard_store import ShardStore

# the label model as the manifest's meta records it (read back by LabelStore.labeler)
FEATURES, CHECKPOINT, LAYER, KMEANS = "features", "checkpoint", "layer", "kmeans"
OWN_KMEANS = "kmeans.npy"  # centroids `syllablelm labels` fitted itself, kept in the version's folder


def label_model_meta(features: str, checkpoint: str | None, layer: int | None, kmeans: str) -> dict:
    """The manifest ``meta`` entries that name the label model (``syllablelm labels`` writes them)."""
    return {FEATURES: features, CHECKPOINT: None if checkpoint is None else str(checkpoint),
            LAYER: None if layer is None else int(layer), KMEANS: str(kmeans)}


class LabelStore(ShardStore):
    kind = "labels"
    dtype = np.int32

    def encode(self, utt: str, value, version: int) -> np.ndarray:
        labels = np.asarray(value)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise SegmentError(f"utterance {utt!r} (label version {version}): expected a 1-D array of "
                               f"non-negative integer labels, got {labels.dtype} {labels.shape}")
        return labels.astype(np.int32)

    def to_columns(self, joined: np.ndarray) -> dict[str, np.ndarray]:
        return {"values": joined.astype(cols.smallest_unsigned(joined))}  # int32 again when read

    def from_columns(self, columns, start: int, stop: int) -> np.ndarray:
        return np.array(columns["values"][start:stop], dtype=np.int32)

    def check_context(self, where, utt, columns, start, stop, num_samples: Mapping[str, int]) -> None:
        self.decode(utt, range(stop - start), where, num_samples)  # decode looks at the length only

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

    def labeler(self, version: int, device: str = "cpu") -> FrameLabeler:
        """The label model of ``version`` (its features and k-means, as ``syllablelm labels`` recorded them), as a
        :class:`~syllablelm.units.frame_labels.FrameLabeler` on ``device``. Recorded relative paths are looked up
        from here, then from the labelling run's working directory (``meta["cwd"]``); centroids the run fitted
        itself are also found in the version's folder. A missing file is an error naming the version and file."""
        meta = self.manifest(version)["meta"]
        where = f"label version {int(version)} ({self.version_dir(version)})"
        absent = [k for k in (FEATURES, KMEANS) if not meta.get(k)]
        if absent:
            raise ValueError(f"{where}: its manifest does not record the label model ({', '.join(absent)} missing); "
                             f"relabel with {self.writer_hint(version)}")
        checkpoint = meta.get(CHECKPOINT)
        labeler = FrameLabeler.build(
            meta[FEATURES], self._recorded_file(meta, meta[KMEANS], "k-means", version, own=OWN_KMEANS),
            checkpoint=None if not checkpoint else self._recorded_file(meta, checkpoint, "checkpoint", version),
            layer=meta.get(LAYER), device=device)
        if "num_labels" in meta and labeler.num_labels != int(meta["num_labels"]):
            raise ValueError(f"{where}: its k-means {meta[KMEANS]} has {labeler.num_labels} centroids but the "
                             f"version records {meta['num_labels']} labels")
        return labeler

    def _recorded_file(self, meta: Mapping, recorded: str, what: str, version: int, own: str | None = None) -> Path:
        path = Path(recorded)
        candidates = [path]
        if not path.is_absolute() and meta.get("cwd"):
            candidates.append(Path(meta["cwd"]) / path)
        if own is not None and path.name == own:  # the run's own fitted centroids, wherever the store moved
            candidates.append(self.version_dir(version) / own)
        for c in candidates:
            if os.path.exists(c):
                return c
        raise FileNotFoundError(
            f"label version {int(version)} ({self.version_dir(version)}) was made with the {what} {recorded}, "
            f"which is not there (looked in: {', '.join(str(c) for c in candidates)}); LossPred labels each "
            "VAD-trimmed wave with it: put it back, or set model.losspred.labels: whole_file")
