"""Frame geometry, in one place: every encoder of this suite has HuBERT's CNN, so frames are 20 ms (50 Hz).

At 16 kHz, frame ``t`` covers samples ``[HOP * t, HOP * t + RECEPTIVE_FIELD)``; a wave of ``S`` samples gives
:func:`num_frames` ``(S) = (S - 400) // 320 + 1`` frames. Files and public APIs hold seconds (docs/algorithms.md,
"Frames and time"); these helpers convert at the edges of the algorithms:

* seconds -> frames: ``round((t - offset) / 0.02)`` with round-half-to-even, Python's ``round`` that the authors'
  SylBoost data loader uses (:func:`seconds_to_frames`);
* frames -> seconds: ``frame * 0.02 + offset`` (:func:`frames_to_seconds`, :func:`frames_to_segments`).

>>> num_frames(16000), samples_for_frames(49), seconds_to_frames([0.01, 0.03, 0.5])
(49, 16000, array([ 0,  2, 25]))
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000  # Hz: every encoder's input rate
HOP = 320  # samples between frames
RECEPTIVE_FIELD = 400  # samples one frame sees
FRAME_HZ = SAMPLE_RATE // HOP  # 50
FRAME_SECONDS = HOP / SAMPLE_RATE  # 0.02


def num_frames(num_samples: int) -> int:
    """Frames the CNN gives for ``num_samples`` samples at 16 kHz (0 when shorter than one receptive field)."""
    return max(0, (int(num_samples) - RECEPTIVE_FIELD) // HOP + 1)


def samples_for_frames(frames: int) -> int:
    """The fewest samples that give ``frames`` frames."""
    return RECEPTIVE_FIELD + HOP * (int(frames) - 1) if frames > 0 else 0


def seconds_to_frames(seconds, offset: float = 0.0) -> np.ndarray:
    """``round((seconds - offset) / 0.02)`` as int64, half to even (Python's ``round``; ``np.rint``)."""
    return np.rint((np.asarray(seconds, dtype=np.float64) - offset) / FRAME_SECONDS).astype(np.int64)


def frames_to_seconds(frames, offset: float = 0.0) -> np.ndarray:
    """``frames * 0.02 + offset`` as float64."""
    return np.asarray(frames, dtype=np.float64) * FRAME_SECONDS + offset


def frames_to_segments(boundaries, *, offset: float = 0.0) -> np.ndarray:
    """Boundary frames ``[0, b_1, ..., T]`` -> (n, 2) float64 ``[start, end]`` seconds (+ ``offset``)."""
    b = frames_to_seconds(np.asarray(boundaries).reshape(-1), offset)
    return np.stack([b[:-1], b[1:]], 1) if b.size > 1 else np.zeros((0, 2))
