"""Frame geometry, in one place: every encoder of this suite has HuBERT's CNN, so frames are 20 ms (50 Hz).

At 16 kHz, frame ``t`` covers samples ``[HOP * t, HOP * t + RECEPTIVE_FIELD)``; a wave of ``S`` samples gives
:func:`num_frames` ``(S) = (S - 400) // 320 + 1`` frames. Files and public APIs hold seconds (docs/algorithms.md,
"Frames and time"); these helpers convert at the edges of the algorithms:

* seconds -> frames: ``round((t - offset) / 0.02)`` with round-half-to-even, Python's ``round`` that the authors'
  SylBoost data loader uses (:func:`seconds_to_frames`);
* frames -> seconds: ``frame * 0.02 + offset`` (:func:`frames_to_seconds`, :func:`frames_to_segments`).

>>> num_frames(16000), samples_for_frames(49), seconds_to_frames([0.01, 0.03, 0.5])
(49, 15760, array([ 0,  2, 25]))
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


class FrameGeometry:
    """The frame grid of an encoder whose CNN has other strides than HuBERT's (issue 29: fine units at their own
    rate). A CNN of kernels ``k_i`` and strides ``s_i`` (in order) has hop ``H = prod s_i`` samples and receptive field
    ``R = 1 + sum_i (k_i - 1) prod_{j<i} s_j`` samples; ``S`` samples give ``(S - R) // H + 1`` frames (0 when
    ``S < R``). HuBERT / data2vec: ``[(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2`` -> H 320, R 400 (50 Hz, the module
    constants above). TWIST's mHuBERT-25Hz adds one more ``(2, 2)`` layer -> H 640, R 720 (25 Hz).

    >>> g = FrameGeometry.from_conv([10, 3, 3, 3, 3, 2, 2, 2], [5, 2, 2, 2, 2, 2, 2, 2])
    >>> g.hop, g.receptive_field, g.hz, g.num_frames(16000)
    (640, 720, 25.0, 24)
    """

    def __init__(self, hop: int = HOP, receptive_field: int = RECEPTIVE_FIELD):
        if int(hop) < 1 or int(receptive_field) < 1:
            raise ValueError(f"hop and receptive field must be positive, got {hop} / {receptive_field}")
        self.hop, self.receptive_field = int(hop), int(receptive_field)

    @classmethod
    def from_conv(cls, kernels, strides) -> "FrameGeometry":
        kernels, strides = [int(k) for k in kernels], [int(s) for s in strides]
        if len(kernels) != len(strides) or not kernels:
            raise ValueError(f"need one stride per kernel, got {kernels} / {strides}")
        field, jump = 1, 1
        for k, s in zip(kernels, strides):
            field += (k - 1) * jump
            jump *= s
        return cls(jump, field)

    @property
    def hz(self) -> float:
        return SAMPLE_RATE / self.hop

    @property
    def seconds(self) -> float:
        return self.hop / SAMPLE_RATE

    def num_frames(self, num_samples: int) -> int:
        return max(0, (int(num_samples) - self.receptive_field) // self.hop + 1)

    def samples_for_frames(self, frames: int) -> int:
        return self.receptive_field + self.hop * (int(frames) - 1) if frames > 0 else 0

    def frames_per(self, base: "FrameGeometry") -> int:
        """How many ``base`` frames one frame of this grid spans (2 for 25 Hz over 50 Hz); an error unless whole."""
        if self.hop % base.hop:
            raise ValueError(f"a {self.hz:g} Hz grid is not a whole number of {base.hz:g} Hz frames")
        return self.hop // base.hop

    def __eq__(self, other) -> bool:
        return isinstance(other, FrameGeometry) and (self.hop, self.receptive_field) == (other.hop,
                                                                                           other.receptive_field)

    def __repr__(self) -> str:
        return f"FrameGeometry(hop={self.hop}, receptive_field={self.receptive_field})"


FIFTY_HZ = FrameGeometry(HOP, RECEPTIVE_FIELD)
