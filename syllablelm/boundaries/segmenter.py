"""The one segmenter: features -> syllable segments, as SylBoost's targets, its regeneration, the tokenizer, the
released-model import, ``ceiling`` and the report all cut them (docs/algorithms.md, "The segmenter").

    seg = Segmenter(SegmenterConfig())                  # the authors' default: δ search, δ calibrated to 6.25 Hz
    seg.calibrate(train_features, train_waves)          # finds δ on a sample (a fresh model has its own scale)
    bounds = seg.cut(features, waves)                   # [(n_b + 1,) boundary frames], one per utterance
    segments = seg.segments(features, waves, offsets)   # [(n_b, 2) seconds in file time]

Modes (exactly one):

* **δ** (``delta`` and/or ``calibrate_to_hz``; the default, calibrated to 6.25 Hz): the official rate search of
  :func:`~syllablelm.boundaries.mincut.sse_segment` — the segment count adapts to each utterance; ``calibrate_to_hz``
  says
  which mean rate :meth:`Segmenter.calibrate` tunes δ to (the released δ values belong to the released models'
  feature scales);
* **rate** (``rate_hz``): ``round(rate_hz · seconds)`` segments per utterance (a convenience, not the paper's);
* **frames** (``fixed_frames``): a boundary every k frames (k = 2: the 25 Hz frame-unit baseline).

``vad_trim`` cuts only the energy-VAD speech span of each utterance (first onset to last offset,
:func:`~syllablelm.audio.io.speech_frame_span`); counts, rates and δ calibration then refer to seconds of that span
and the silent edges belong to no segment. Off in the authors' code (the whole utterance is cut).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from syllablelm.audio.frames import frames_to_segments
from syllablelm.audio.io import SAMPLE_RATE, speech_frame_span
from syllablelm.boundaries.mincut import calibrate_delta, sse_segment_batch

DEFAULT_RATE_HZ = 6.25  # the paper's main rate; the δ search is calibrated to it when no mode is given


@dataclass
class SegmenterConfig:
    """How features become segments (module docstring). Plain fields: YAML and checkpoint friendly.

    With none of ``rate_hz``, ``delta``, ``calibrate_to_hz``, ``fixed_frames`` given, the authors' procedure
    applies: the δ search with δ calibrated to :data:`DEFAULT_RATE_HZ`. ``delta`` with ``calibrate_to_hz`` is a
    starting δ that calibration replaces. Segment lengths ``min_len..max_len`` are inclusive frames — the authors'
    extractor's ``min_hop..s``, a segment of exactly ``s`` frames allowed: ``s`` is 50 for LibriSpeech, 35 for
    LibriLight (``syllablelm units --max-segment-frames``); a ``max_len`` above an utterance's length is that
    length, as their ``min(n, s)``. ``max_rate`` caps the δ search at ``int(max_rate · T)`` segments (10 Hz)."""

    rate_hz: float | None = None
    delta: float | None = None
    calibrate_to_hz: float | None = None
    quantile: float = 0.75
    min_len: int = 3
    max_len: int = 50
    max_rate: float = 0.2
    vad_trim: bool = False
    fixed_frames: int | None = None

    def __post_init__(self) -> None:
        if self.rate_hz is None and self.delta is None and self.calibrate_to_hz is None and not self.fixed_frames:
            self.calibrate_to_hz = DEFAULT_RATE_HZ
        by_delta = self.delta is not None or self.calibrate_to_hz is not None
        if (self.rate_hz is not None) + by_delta + bool(self.fixed_frames) != 1:
            raise ValueError(f"segmenter: give exactly one of rate_hz, delta / calibrate_to_hz, fixed_frames; got "
                             f"rate_hz={self.rate_hz}, delta={self.delta}, calibrate_to_hz={self.calibrate_to_hz}, "
                             f"fixed_frames={self.fixed_frames}")
        for name in ("rate_hz", "calibrate_to_hz"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"segmenter: {name} must be positive, got {getattr(self, name)}")
        lengths = (self.min_len, self.max_len)
        integers = all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in lengths)
        if not integers or not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"segmenter: need integer segment lengths 1 <= min_len <= max_len (frames), got "
                             f"min_len={self.min_len!r}, max_len={self.max_len!r}")

    @property
    def mode(self) -> str:
        """``"delta"``, ``"rate"`` or ``"frames"``."""
        return "frames" if self.fixed_frames else "rate" if self.rate_hz is not None else "delta"

    @classmethod
    def at_rate(cls, rate_hz: float, mode: str = "delta", **fields) -> "SegmenterConfig":
        """``rate_hz`` as a fixed count per second (``mode="rate"``) or as the δ search's calibration target
        (``mode="delta"``); ``fields``: the other settings."""
        if mode not in ("rate", "delta"):
            raise ValueError(f"mode must be 'rate' or 'delta', got {mode!r}")
        return cls(**{"rate_hz" if mode == "rate" else "calibrate_to_hz": rate_hz}, **fields)

    @classmethod
    def of(cls, value: "SegmenterConfig | dict | None") -> "SegmenterConfig":
        """A config from a config, a dict (hyper-parameters, YAML; unknown keys are an error) or None (defaults)."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"segmenter: unknown setting(s) {sorted(unknown)}; known: "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _finite(delta) -> float | None:
    return None if delta is None or math.isnan(float(delta)) else float(delta)


class Segmenter:
    """A :class:`SegmenterConfig` plus the δ in use (``delta``: the config's, a calibrated one, or a checkpoint's).

    Every method takes per-utterance ``features`` ``(T, D)`` (any device; the DP runs there) and, when the config
    trims to the speech span, the matching 16 kHz ``waves``."""

    def __init__(self, config: SegmenterConfig | dict | None = None, *, delta: float | None = None):
        self.config = SegmenterConfig.of(config)
        self.delta = _finite(delta) if delta is not None else _finite(self.config.delta)

    def spans(self, features: Sequence[torch.Tensor], waves: Sequence | None) -> list[tuple[int, int]] | None:
        """``(first, end)`` speech-span frames per utterance (``vad_trim``), else None."""
        if not self.config.vad_trim or self.config.fixed_frames:
            return None
        if waves is None or len(waves) != len(features):
            raise ValueError("this segmenter trims to the speech span (vad_trim): pass one wave per utterance")
        return [speech_frame_span(w, SAMPLE_RATE, len(f)) for f, w in zip(features, waves)]

    def cut(self, features: Sequence[torch.Tensor], waves: Sequence | None = None) -> list[torch.Tensor]:
        """Boundary frames ``[first, ..., end]`` (1-D long, CPU) of each utterance; ``[0, ..., T]`` without
        ``vad_trim``. All utterances run in one batched DP; padding never changes a result."""
        c = self.config
        if c.mode == "delta" and self.delta is None:
            raise RuntimeError("the segmenter has no δ yet: calibrate it (calibrate_to_hz) or give delta")
        return segment_frames(features, rate_hz=c.rate_hz, delta=self.delta if c.mode == "delta" else None,
                              quantile=c.quantile, min_len=c.min_len, max_len=c.max_len, max_rate=c.max_rate,
                              fixed_frames=c.fixed_frames, spans=self.spans(features, waves))

    def segments(self, features: Sequence[torch.Tensor], waves: Sequence | None = None,
                 offsets: Sequence[float] | None = None) -> list[np.ndarray]:
        """``(n, 2)`` float64 seconds of each utterance (+ its ``offset``: where its wave starts in its file)."""
        offsets = [0.0] * len(features) if offsets is None else [float(o) for o in offsets]
        return [frames_to_segments(b.numpy(), offset=o) for b, o in zip(self.cut(features, waves), offsets)]

    def segments_calibrated(self, test_features, test_waves, dev_features, dev_waves) -> tuple[list, list]:
        """``(test segments, dev segments)``; a δ segmenter with a target rate is first calibrated on the dev
        features (the split shifts are tuned on), as a SylBoost run calibrates on its training sample."""
        if self.config.mode == "delta" and self.config.calibrate_to_hz is not None:
            self.calibrate(dev_features, dev_waves)
        return self.segments(test_features, test_waves), self.segments(dev_features, dev_waves)

    def calibrate(self, features: Sequence[torch.Tensor], waves: Sequence | None = None,
                  target_hz: float | None = None) -> float:
        """Set (and return) the δ whose search gives ``target_hz`` (default ``calibrate_to_hz``) as the mean rate
        on these utterances — per second of their speech spans with ``vad_trim``."""
        c = self.config
        target = c.calibrate_to_hz if target_hz is None else target_hz
        if c.mode != "delta" or target is None:
            raise ValueError(f"only a δ segmenter with a target rate calibrates (mode {c.mode!r})")
        spans = self.spans(features, waves)
        feats = [f.float() for f in features] if spans is None else \
            [f[a:b].float() if b - a >= c.min_len else f.float() for f, (a, b) in zip(features, spans)]
        self.delta = calibrate_delta(feats, target, quantile=c.quantile, min_len=c.min_len, max_len=c.max_len,
                                     max_rate=c.max_rate)
        return self.delta


def segment_frames(features: Sequence[torch.Tensor], *, rate_hz: float | None = None, delta: float | None = None,
                   quantile: float = 0.75, min_len: int = 3, max_len: int = 50, max_rate: float = 0.2,
                   fixed_frames: int | None = None, spans: Sequence[tuple[int, int]] | None = None
                   ) -> list[torch.Tensor]:
    """SSE min-cut boundary frames ``[0, ..., T]`` of each utterance's features ``(T, D)`` (fixed ``rate_hz`` or
    the official δ rate search), all utterances in one batched DP; padding never changes a result.
    ``fixed_frames=k`` instead cuts every k frames.

    ``spans`` (one ``(first, end)`` frame pair per utterance) cuts only ``features[first:end]``: boundaries
    ``[first, ..., end]``, the segment count from the span's length, frames outside it in no segment. A span
    shorter than ``min_len`` frames falls back to the whole utterance. :class:`Segmenter` is the usual entry."""
    if spans is not None:
        if len(spans) != len(features):
            raise ValueError(f"spans must hold one (first, end) pair per utterance ({len(features)}), "
                             f"got {len(spans)}")
        spans = [(int(a), int(b)) if 0 <= a and b <= len(f) and b - a >= min_len else (0, len(f))
                 for f, (a, b) in zip(features, spans)]
        inner = segment_frames([f[a:b] for f, (a, b) in zip(features, spans)], rate_hz=rate_hz, delta=delta,
                               quantile=quantile, min_len=min_len, max_len=max_len, max_rate=max_rate,
                               fixed_frames=fixed_frames)
        return [bd + a for bd, (a, _) in zip(inner, spans)]
    lengths = [len(f) for f in features]
    if fixed_frames:
        return [torch.cat([torch.arange(0, T, fixed_frames), torch.tensor([T])]).unique() for T in lengths]
    padded = torch.zeros(len(features), max(lengths), features[0].shape[-1], dtype=torch.float32,
                         device=features[0].device)
    for b, f in enumerate(features):
        padded[b, : len(f)] = f.float()
    kw = dict(quantile=quantile, min_len=min_len, max_len=max_len, max_rate=max_rate)
    if rate_hz is not None:
        return [b.cpu() for b in sse_segment_batch(padded, lengths, rate_hz=rate_hz, **kw)]
    if delta is None or np.isnan(delta):
        raise ValueError("the segmenter has neither rate_hz nor a (calibrated) delta")
    return [b.cpu() for b in sse_segment_batch(padded, lengths, delta=delta, **kw)]
