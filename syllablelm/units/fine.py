"""Fine units (issue 29, item 1): frame-level k-means units of an SSL layer, as runs with durations.

The vocoders and the interleaved vocoder LM read *fine* units: one k-means id per encoder frame, deduplicated into
runs ``(unit, duration in fine frames)``. The paper's path is TWIST's mHuBERT (25 Hz, layer 11, 500 units); the CPU
path is the shipped teacher's layer-2 k-means (``experiments/pretrained/kmeans_layer2.npy``, 100 units) on the 50 Hz
grid, which the ``labels`` stage already stores for every utterance (whole files, 50 Hz, starting at sample 0). A
CPU option that is not an SSL layer: k-means of 80-band log-mel frames (``features="logmel"``,
``experiments/pretrained/kmeans_logmel.npy``, 1000 units, 50 Hz; GSLM's "LogMel" units), which keep the phones the
tiny teacher's layers lose (docs/results.md, "Where the phones go").

- :func:`runs` / :func:`expand`: frame labels <-> runs (exact inverses; ``expand(*runs(x)) == x``);
- :func:`pool_labels`: 50 Hz labels -> a coarser grid by majority vote over each block of ``factor`` frames (ties to
  the smallest id; the last, partial block votes over what it has) — what "pooled to 25 Hz" means here;
- :class:`FineUnitEncoder`: a wave -> frame labels on the encoder's own grid (:class:`FrameGeometry` from its CNN),
  so a 25 Hz encoder's units are never mistaken for 50 Hz ones.

Times: a run starting at fine frame ``f`` starts at ``f * hop / 16000`` seconds of the wave the labels were computed
on. Labels computed on a VAD-trimmed wave (LossPred's ``labels: trimmed``) start at the trim's first sample; callers
add that offset (:func:`run_starts_seconds` takes it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from syllablelm.audio.frames import FIFTY_HZ, FrameGeometry


def runs(labels) -> tuple[np.ndarray, np.ndarray]:
    """Frame labels ``(T,)`` -> ``(units (n,), durations (n,))`` int64, consecutive equal labels collapsed."""
    x = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    return x[starts], np.diff(np.r_[starts, x.size]).astype(np.int64)


def expand(units, durations) -> np.ndarray:
    """Runs -> frame labels (the inverse of :func:`runs`); durations must be positive integers."""
    u = np.asarray(units, dtype=np.int64).reshape(-1)
    d = np.asarray(durations).reshape(-1)
    if u.shape != d.shape:
        raise ValueError(f"need one duration per unit, got {u.shape} / {d.shape}")
    if d.size and (np.any(d < 1) or np.any(d != np.round(d))):
        raise ValueError("durations must be positive whole frame counts")
    return np.repeat(u, d.astype(np.int64))


def run_starts_seconds(durations, geometry: FrameGeometry = FIFTY_HZ, offset: float = 0.0) -> np.ndarray:
    """Start time (s) of each run: ``offset + (frames before it) * hop / 16000``."""
    d = np.asarray(durations, dtype=np.int64).reshape(-1)
    return offset + np.r_[0, np.cumsum(d)[:-1]].astype(np.float64) * geometry.seconds if d.size else np.zeros(0)


def pool_labels(labels, factor: int) -> np.ndarray:
    """Majority label of each block of ``factor`` consecutive frames (ties: the smallest id); ``ceil(T / factor)``
    labels. ``factor`` 2 turns 50 Hz labels into 25 Hz ones."""
    x = np.asarray(labels, dtype=np.int64).reshape(-1)
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1 or x.size == 0:
        return x.copy()
    out = np.empty(-(-x.size // factor), np.int64)
    for b in range(out.size):
        block = x[b * factor:(b + 1) * factor]
        values, counts = np.unique(block, return_counts=True)  # sorted values: argmax picks the smallest on ties
        out[b] = values[np.argmax(counts)]
    return out


def encoder_geometry(encoder) -> FrameGeometry:
    """The frame grid of an encoder with an HF-style ``config.conv_kernel`` / ``config.conv_stride`` (HuBERT,
    wav2vec 2.0, data2vec); 50 Hz when it has none (this suite's encoders all use HuBERT's CNN)."""
    for obj in (encoder, getattr(encoder, "model", None), getattr(encoder, "backbone", None)):
        cfg = getattr(obj, "config", None)
        if cfg is not None and getattr(cfg, "conv_kernel", None) and getattr(cfg, "conv_stride", None):
            return FrameGeometry.from_conv(cfg.conv_kernel, cfg.conv_stride)
    return FIFTY_HZ


class FineUnitEncoder:
    """A wave (16 kHz) -> fine frame labels on the encoder's own grid, and their runs.

    ``pool``: majority-pool the labels over blocks of this many frames (1: none; 2 turns the CPU path's 50 Hz labels
    into 25 Hz ones). :attr:`geometry` is the grid of the units it returns (the encoder's, times ``pool``)."""

    def __init__(self, labeler, geometry: FrameGeometry = FIFTY_HZ, pool: int = 1):
        self.labeler = labeler
        self.pool = int(pool)
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        self.encoder_geometry = geometry
        self.geometry = FrameGeometry(geometry.hop * self.pool,
                                      geometry.receptive_field + geometry.hop * (self.pool - 1))

    @classmethod
    def build(cls, kmeans: str | Path, *, features: str = "teacher", checkpoint: str | Path | None = None,
              layer: int | None = None, pool: int = 1, device: str | torch.device = "cpu") -> "FineUnitEncoder":
        """k-means labels of ``features`` (:data:`~syllablelm.units.frame_labels.FEATURE_KINDS`): ``teacher``, a
        hidden layer of ``checkpoint`` (any backbone the suite loads) on its CNN's grid; ``logmel`` / ``mfcc``,
        spectral frames on the 50 Hz grid (no checkpoint)."""
        from syllablelm.units.frame_labels import FrameLabeler

        labeler = FrameLabeler.build(features, kmeans, checkpoint=checkpoint, layer=layer, device=device)
        geometry = encoder_geometry(labeler.features.encoder) if features == "teacher" else FIFTY_HZ
        return cls(labeler, geometry, pool)

    @property
    def num_units(self) -> int:
        return self.labeler.num_labels

    def labels(self, wave: torch.Tensor) -> np.ndarray:
        frames = self.labeler(wave).numpy()
        return pool_labels(frames, self.pool)

    def __call__(self, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(units, durations)`` runs of the wave's fine labels (durations in frames of :attr:`geometry`)."""
        return runs(self.labels(wave))
