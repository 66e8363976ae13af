"""Frame features and k-means frame labels for masked-prediction targets (HuBERT's label steps), on the 50 Hz CNN
frame grid.

- :func:`mfcc_features`: 13 MFCCs + deltas + delta-deltas (39 dims, torchaudio's Kaldi MFCC), first-iteration
  targets. fairseq used a 10 ms hop (100 Hz labels); here the hop is 20 ms with HuBERT's 400-sample window, so
  MFCC frame ``i`` and CNN frame ``i`` cover the same samples and no label-rate conversion is needed.
- :func:`logmel_features`: 80 log mel-band energies on the same 25 ms / 20 ms frames (GSLM's "LogMel" unit
  baseline): not self-supervised; the CPU speech-out path's optional spectral fine units (:mod:`syllablelm.units.fine`),
  which keep the phones the tiny teacher's layers lose (docs/results.md, "Where the phones go").
- :class:`HiddenFeatures`: a hidden layer of a backbone (the paper: HuBERT-Base layer 9 with 500 k-means
  clusters), run per utterance so padding never changes a feature (Base's first conv uses GroupNorm over time).
- :class:`FrameLabeler`: features + nearest centroid, wave -> labels. ``syllablelm labels`` stores these labels for
  whole files (in chunks); LossPred runs the same labeler on each VAD-trimmed wave, as the authors' notebook labels
  the trimmed audio (:mod:`syllablelm.boundaries.losspred`).

k-means centroids come from :func:`syllablelm.units.clustering.kmeans` or from an imported model
(:func:`syllablelm.checkpoints.load_kmeans_centroids`); :class:`syllablelm.checkpoints.KMeansLabeler` assigns.

    labeler = FrameLabeler.build("teacher", "hubert_base_ls960_L9_km500.bin", checkpoint="hubert_base_ls960.pt",
                                 layer=9)
    labels = labeler(wave)  # (num_frames(len(wave)),) long
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

from syllablelm.audio.io import SAMPLE_RATE

FEATURE_KINDS = ("mfcc", "teacher", "logmel")  # ``syllablelm labels --features``
SPECTRAL_WIDTHS = {"mfcc": 39, "logmel": 80}  # feature dimensions of the kinds that need no checkpoint
Features = Callable[[torch.Tensor], torch.Tensor]  # mono 16 kHz wave (S,) -> (num_frames(S), D)


def mfcc_features(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``(T, 39)`` MFCC + deltas for a mono wave ``(S,)``; ``T = (S - 400) // 320 + 1`` at 16 kHz."""
    mfcc = kaldi.mfcc(wave[None].float() * 32768, sample_frequency=sample_rate, frame_length=25.0,
                      frame_shift=20.0, num_ceps=13, use_energy=False, dither=0.0)  # (T, 13)
    d1 = AF.compute_deltas(mfcc.T[None])  # deltas run along the last axis (time)
    d2 = AF.compute_deltas(d1)
    return torch.cat([mfcc, d1[0].T, d2[0].T], dim=1)  # (T, 39)


LOGMEL_BANDS = SPECTRAL_WIDTHS["logmel"]
_MEL: dict[torch.device, torch.nn.Module] = {}  # one filterbank per device, built on first use


def logmel_features(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``(T, 80)`` log mel-band power for a mono wave ``(S,)``: 400-sample Hann frames every 320 samples, not centred
    (frame ``i`` covers samples ``[320 i, 320 i + 400)``, CNN frame ``i``'s span), so ``T = (S - 400) // 320 + 1``
    (0 for a wave shorter than one window); power spectrum (``n_fft`` 400) into 80 HTK mel bands over 0-8 kHz, then
    ``log(max(x, 1e-5))``. No normalisation: the k-means sees the raw log energies (their per-band spread is
    similar, 3.5-5.5 on the vocoder corpus)."""
    if sample_rate != SAMPLE_RATE:
        wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
    wave = wave.float().reshape(-1)
    if wave.numel() < 400:
        return wave.new_zeros((0, LOGMEL_BANDS))
    mel = _MEL.get(wave.device)
    if mel is None:
        mel = _MEL[wave.device] = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=400, win_length=400, hop_length=320, n_mels=LOGMEL_BANDS, center=False).to(wave.device)
    return torch.log(mel(wave).clamp_min(1e-5)).T  # (T, 80)


class HiddenFeatures:
    """``hidden_states[layer]`` of any backbone :func:`syllablelm.checkpoints.load_backbone` reads (HF
    convention: the output of transformer layer ``layer``), through :class:`~syllablelm.models.encoder.SpeechEncoder`
    like every other feature in this suite; one utterance at a time."""

    def __init__(self, checkpoint, layer: int, device: str | torch.device = "cpu"):
        from syllablelm.checkpoints import load_encoder

        self.encoder = load_encoder(checkpoint, layer=layer).eval().to(device)
        self.layer = layer
        self.device = torch.device(device)

    def to(self, device: str | torch.device) -> "HiddenFeatures":
        """Move the encoder to ``device`` (a no-op when it is there)."""
        device = torch.device(device)
        if device != self.device:
            self.encoder.to(device)
            self.device = device
        return self

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:  # (S,) -> (T, H)
        if sample_rate != SAMPLE_RATE:
            wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
        return self.encoder(wave[None].to(self.device))[0][0].float().cpu()


def feature_function(features: str, checkpoint: str | Path | None = None, layer: int | None = None,
                     device: str | torch.device = "cpu") -> Features:
    """The frame features ``features`` names (:data:`FEATURE_KINDS`): :func:`mfcc_features`,
    :func:`logmel_features`, or :class:`HiddenFeatures` of ``checkpoint`` at ``layer`` on ``device``."""
    if features == "mfcc":
        return mfcc_features
    if features == "logmel":
        return logmel_features
    if features == "teacher":
        if not checkpoint or layer is None:
            raise ValueError(f"teacher features need a checkpoint and a layer (got checkpoint={checkpoint!r}, "
                             f"layer={layer!r})")
        return HiddenFeatures(checkpoint, int(layer), device)
    raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")


class FrameLabeler:
    """A wave's k-means frame labels: ``features`` (:data:`Features`) then the nearest of ``centroids`` ((K, D)).

    One label per 20 ms frame of the wave it is given (``num_frames(len(wave))``), computed in float32 whatever
    autocast the caller runs under (the label store's labels are float32 too), in inference mode. Labels come back
    on the CPU as ``long``."""

    def __init__(self, features: Features, centroids: np.ndarray | torch.Tensor):
        from syllablelm.checkpoints import KMeansLabeler

        self.features = features
        self.kmeans = KMeansLabeler(centroids)

    @classmethod
    def build(cls, features: str, kmeans: str | Path, *, checkpoint: str | Path | None = None,
              layer: int | None = None, device: str | torch.device = "cpu") -> "FrameLabeler":
        """The labeler of ``syllablelm labels --features F [--checkpoint C --layer L] --kmeans K``."""
        from syllablelm.checkpoints import load_kmeans_centroids

        centroids = load_kmeans_centroids(kmeans)
        width = SPECTRAL_WIDTHS.get(features)
        if width is not None and centroids.shape[1] != width:
            raise ValueError(f"{kmeans}: {features} frames have {width} dimensions, the k-means centroids "
                             f"{centroids.shape[1]} (a k-means of other features?)")
        return cls(feature_function(features, checkpoint, layer, device), centroids)

    @property
    def num_labels(self) -> int:
        return int(self.kmeans.centroids.shape[0])

    def to(self, device: str | torch.device) -> "FrameLabeler":
        """Run the features on ``device`` from now on (hidden-layer features; MFCCs and log-mels follow the wave)."""
        if isinstance(self.features, HiddenFeatures):
            self.features.to(device)
        return self

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor) -> torch.Tensor:  # (S,) 16 kHz -> (T,) long, CPU
        with torch.autocast(device_type=wave.device.type, enabled=False):
            feats = self.features(wave.float())
        return self.kmeans(feats.float()).cpu()
