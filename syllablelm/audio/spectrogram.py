"""The suite's one log-mel spectrogram and log-mel distance (issue 29): HiFi-GAN's definition at 16 kHz.

:class:`LogMel` is the mel spectrogram HiFi-GAN's mel loss uses: the magnitude (power 1) STFT with ``n_fft`` 1024,
window 1024 (Hann), hop 256, centred, folded into 80 Slaney-scale, Slaney-normalised mel bands over 0-8 kHz, then
``log(max(x, 1e-5))``. The unit vocoder trains with it (``syllablelm.models.istft_vocoder.VocoderLosses``) and
the speech evaluation measures with it (:func:`log_mel_distance`), so the number reported is the loss trained on.

:func:`log_mel` and :func:`log_mel_distance` use one module per device, built on first use and kept (the mel
filterbank is not rebuilt per call).
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio
from torch import nn

from syllablelm.audio.frames import SAMPLE_RATE

N_FFT, HOP, N_MELS, FLOOR = 1024, 256, 80, 1e-5


class LogMel(nn.Module):
    """HiFi-GAN's log-mel spectrogram at 16 kHz: 80 Slaney mel bands of the magnitude STFT (``n_fft`` 1024, hop 256,
    window 1024, 0-8 kHz), ``log(max(x, 1e-5))``. ``(S,) -> (80, frames)``, ``(B, S) -> (B, 80, frames)``."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP, n_mels: int = N_MELS):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop,
                                                        f_min=0.0, f_max=sample_rate / 2, n_mels=n_mels, power=1.0,
                                                        norm="slaney", mel_scale="slaney", center=True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.mel(wave.float()), min=FLOOR))


_SHARED: dict[torch.device, LogMel] = {}


def shared_log_mel(device: torch.device | str = "cpu") -> LogMel:
    """The one :class:`LogMel` (default settings) kept for ``device``: built on the first call, reused after."""
    device = torch.device(device)
    module = _SHARED.get(device)
    if module is None:
        module = _SHARED[device] = LogMel().to(device)
    return module


def _as_wave(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor of a wave ``(S,)`` or ``(B, S)`` (numpy arrays land on the CPU)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.float()
    else:
        wave = torch.from_numpy(np.array(wave, dtype=np.float32))  # a copy: read-only or strided arrays too
    if wave.dim() not in (1, 2):
        raise ValueError(f"a wave is (S,) or (B, S), got shape {tuple(wave.shape)}")
    return wave


def log_mel(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """:class:`LogMel` of a 16 kHz wave ``(S,)`` or ``(B, S)`` (numpy or tensor), on the wave's device, by the
    shared module of that device."""
    wave = _as_wave(wave)
    return shared_log_mel(wave.device)(wave)


def log_mel_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Mean absolute difference of the log-mel spectrograms (:class:`LogMel`) of two 16 kHz waves ``(S,)`` or
    ``(B, S)``, numpy or tensor, both cut to the shorter length; the mean runs over batch, bands and frames."""
    a, b = _as_wave(a), _as_wave(b)
    n = min(a.shape[-1], b.shape[-1])
    return float((log_mel(a[..., :n]) - log_mel(b.to(a.device)[..., :n])).abs().mean())
