"""The one log-mel spectrogram and log-mel distance (``syllablelm.audio.spectrogram``, issue 29): HiFi-GAN's
definition, checked against torchaudio's MelSpectrogram built here from the stated parameters."""
import numpy as np
import pytest
import torch
import torchaudio

from syllablelm.audio import spectrogram
from syllablelm.models import istft_vocoder


def _waves(n=2, length=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    return [tone * (i + 1) + 0.05 * torch.randn(length, generator=g) for i in range(n)]


def _reference_log_mel(wave: torch.Tensor) -> torch.Tensor:
    """HiFi-GAN's log-mel as stated: 16 kHz, magnitude STFT n_fft 1024 / window 1024 / hop 256, centred, 80 Slaney
    mel bands (Slaney-normalised) over 0-8 kHz, natural log of the values floored at 1e-5."""
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, win_length=1024, hop_length=256, f_min=0.0,
                                               f_max=8000.0, n_mels=80, power=1.0, norm="slaney",
                                               mel_scale="slaney", center=True)
    return torch.log(torch.clamp(mel(wave), min=1e-5))


def test_log_mel_matches_the_stated_definition():
    a, _ = _waves()
    spec = spectrogram.log_mel(a)
    assert spec.shape == (80, 8000 // 256 + 1)
    assert torch.allclose(spec, _reference_log_mel(a), atol=1e-5)
    assert torch.allclose(spectrogram.log_mel(a.numpy()), spec)  # numpy in, the same
    silence = spectrogram.log_mel(torch.zeros(4096))
    assert torch.allclose(silence, torch.full_like(silence, float(np.log(1e-5))))  # the floor


def test_log_mel_distance_definition_symmetry_and_shorter_length():
    a, b = _waves()
    expected = float((_reference_log_mel(a) - _reference_log_mel(b)).abs().mean())
    d = spectrogram.log_mel_distance(a, b)
    assert d > 0.1 and d == pytest.approx(expected, rel=1e-5)
    assert spectrogram.log_mel_distance(b, a) == pytest.approx(d, rel=1e-6)  # symmetric
    assert spectrogram.log_mel_distance(a, a) == 0.0
    assert spectrogram.log_mel_distance(a.numpy(), b.numpy()) == pytest.approx(d, rel=1e-6)  # numpy in
    longer = torch.cat([b, torch.randn(3000)])  # extra samples past the shorter wave are not compared
    assert spectrogram.log_mel_distance(a, longer) == pytest.approx(d, rel=1e-6)
    assert spectrogram.log_mel_distance(longer, a.numpy()) == pytest.approx(d, rel=1e-6)
    assert spectrogram.log_mel_distance(a[:5000], a) == 0.0
    batch = spectrogram.log_mel_distance(torch.stack([a, b]), torch.stack([b, a]))  # (B, S): mean over the batch
    assert batch == pytest.approx(d, rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        spectrogram.log_mel_distance(torch.zeros(1, 1, 100), a)


def test_the_module_is_built_once_and_the_vocoder_trains_with_it(monkeypatch):
    original, built = spectrogram.LogMel, []

    class Counting(spectrogram.LogMel):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(spectrogram, "_SHARED", {})
    monkeypatch.setattr(spectrogram, "LogMel", Counting)
    a, b = _waves()
    for _ in range(3):
        spectrogram.log_mel_distance(a, b)
        spectrogram.log_mel(a.numpy())
    assert len(built) == 1
    assert spectrogram.shared_log_mel() is spectrogram.shared_log_mel("cpu")
    assert istft_vocoder.LogMel is original and type(istft_vocoder.VocoderLosses().mel) is original  # one definition
