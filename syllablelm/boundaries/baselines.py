"""Feature-free segmentation baselines that every report shows beside the learned segmenters (docs/algorithms.md).

- :func:`uniform_segments` — equal-length segments at a fixed rate inside each energy-detected speech region.
- :func:`envelope_segments` — minima of the amplitude envelope (rectified, low-passed around 8 Hz) with a
  minimum prominence, inside speech regions; each region's edges are boundaries. Its two parameters
  (cut-off, prominence) are tuned on a dev split only (:func:`syllablelm.evaluation.scoring.tune_envelope`).
- :func:`mincut_segments` — the SylBoost SSE min-cut on log-mel features at a fixed rate (measured to score
  below uniform on natural speech: learned features carry the method).

All return ``(n, 2)`` float64 arrays of ``[start, end]`` seconds in the wave's time.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import signal

from syllablelm.audio.frames import FRAME_SECONDS
from syllablelm.audio.io import speech_regions

ENVELOPE_RATE = 100  # Hz of the envelope after decimation


def _to_numpy(wave) -> np.ndarray:
    return wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, dtype=np.float64)


def _regions_to_segments(regions: np.ndarray, cuts_per_region: Sequence[np.ndarray]) -> np.ndarray:
    out = []
    for (a, b), cuts in zip(regions, cuts_per_region):
        edges = np.concatenate([[a], np.sort(cuts[(cuts > a) & (cuts < b)]), [b]])
        out += list(zip(edges[:-1], edges[1:]))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def uniform_segments(wave, sample_rate: int, *, rate_hz: float = 4.5, regions: np.ndarray | None = None) -> np.ndarray:
    """``max(1, round(length * rate_hz))`` equal segments in every speech region."""
    regions = speech_regions(wave, sample_rate) if regions is None else regions
    cuts = [np.linspace(a, b, max(1, int(round((b - a) * rate_hz))) + 1)[1:-1] for a, b in regions]
    return _regions_to_segments(regions, cuts)


def speech_rate_for(waves: Sequence, regions: Sequence[np.ndarray], sample_rate: int, rate_hz: float) -> float:
    """The rate per second of speech (inside ``regions``) that places ``rate_hz`` segments per second of audio
    over all of ``waves``: how a baseline is matched to a system whose achieved rate is ``rate_hz``."""
    speech = sum(float((r[:, 1] - r[:, 0]).sum()) for r in regions if len(r))
    return rate_hz * (sum(len(w) for w in waves) / sample_rate) / max(speech, 1e-9)


def uniform_at_audio_rate(waves: Sequence, sample_rate: int, rate_hz: float,
                          regions: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Uniform segments of every wave, as many in all as ``rate_hz`` per second of audio (:func:`speech_rate_for`)."""
    regions = [speech_regions(w, sample_rate) for w in waves] if regions is None else regions
    per_speech = speech_rate_for(waves, regions, sample_rate, rate_hz)
    return [uniform_segments(w, sample_rate, rate_hz=per_speech, regions=r) for w, r in zip(waves, regions)]


def amplitude_envelope(wave, sample_rate: int, *, cutoff_hz: float = 8.0) -> np.ndarray:
    """Rectified waveform, low-passed at ``cutoff_hz`` (4th-order Butterworth, zero phase), sampled at 100 Hz."""
    x = np.abs(_to_numpy(wave).astype(np.float64))
    hop = sample_rate // ENVELOPE_RATE
    n = len(x) // hop
    x = x[: n * hop].reshape(n, hop).mean(1)  # box-filter decimation to 100 Hz before the low-pass
    if n < 16:
        return x
    sos = signal.butter(4, cutoff_hz, fs=ENVELOPE_RATE, output="sos")
    return np.maximum(signal.sosfiltfilt(sos, x), 0.0)


def envelope_segments(wave, sample_rate: int, *, cutoff_hz: float = 8.0, prominence: float = 0.1,
                      regions: np.ndarray | None = None) -> np.ndarray:
    """Envelope minima with prominence >= ``prominence`` x the region's envelope maximum."""
    env = amplitude_envelope(wave, sample_rate, cutoff_hz=cutoff_hz)
    regions = speech_regions(wave, sample_rate) if regions is None else regions
    cuts = []
    for a, b in regions:
        lo, hi = int(a * ENVELOPE_RATE), int(np.ceil(b * ENVELOPE_RATE))
        part = env[lo:hi]
        if len(part) < 3:
            cuts.append(np.zeros(0))
            continue
        minima, _ = signal.find_peaks(-part, prominence=prominence * float(part.max()))
        cuts.append((lo + minima + 0.5) / ENVELOPE_RATE)
    return _regions_to_segments(regions, cuts)


def log_mel(wave, sample_rate: int, *, n_mels: int = 40) -> torch.Tensor:
    """``(T, n_mels)`` log-mel features at 50 Hz (25 ms windows, 20 ms hop) with torchaudio's Kaldi fbank."""
    import torchaudio.compliance.kaldi as kaldi

    w = torch.as_tensor(_to_numpy(wave), dtype=torch.float32)[None]
    return kaldi.fbank(w * 32768, sample_frequency=sample_rate, frame_shift=20.0, frame_length=25.0,
                       num_mel_bins=n_mels, dither=0.0)


def mincut_segments(wave, sample_rate: int, *, rate_hz: float = 6.25, min_len: int = 3, max_len: int = 50,
                    regions: np.ndarray | None = None) -> np.ndarray:
    """The SSE min-cut at a fixed rate on standardised log-mel features of each speech region."""
    from syllablelm.boundaries.mincut import sse_segment

    x = _to_numpy(wave)
    regions = speech_regions(x, sample_rate) if regions is None else regions
    out = []
    for a, b in regions:
        part = x[int(a * sample_rate):int(b * sample_rate)]
        feats = log_mel(part, sample_rate) if len(part) >= sample_rate * 0.025 else torch.zeros(0, 40)
        T = len(feats)
        if T < 2 * min_len:
            out.append([[a, b]])
            continue
        feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
        bounds = sse_segment(feats, rate_hz=rate_hz, min_len=min_len, max_len=max_len).numpy()
        edges = np.minimum(a + bounds * FRAME_SECONDS, b)
        edges[-1] = b
        out.append(np.stack([edges[:-1], edges[1:]], 1))
    segs = np.concatenate(out).reshape(-1, 2) if out else np.zeros((0, 2))
    return segs[segs[:, 1] > segs[:, 0]]
