"""Frame features for masked-prediction targets (HuBERT's label steps), on the 50 Hz CNN frame grid.

- :func:`mfcc_features`: 13 MFCCs + deltas + delta-deltas (39 dims, torchaudio's Kaldi MFCC), first-iteration
  targets. fairseq used a 10 ms hop (100 Hz labels); here the hop is 20 ms with HuBERT's 400-sample window, so
  MFCC frame ``i`` and CNN frame ``i`` cover the same samples and no label-rate conversion is needed.
- :class:`HiddenFeatures`: a hidden layer of a backbone (the paper: HuBERT-Base layer 9 with 500 k-means
  clusters), run per utterance so padding never changes a feature (Base's first conv uses GroupNorm over time).

k-means centroids come from :func:`syllablelm.units.clustering.kmeans` or from an imported model
(:func:`syllablelm.checkpoints.load_kmeans_centroids`); :class:`syllablelm.checkpoints.KMeansLabeler` assigns.
"""
from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

from syllablelm.audio.io import SAMPLE_RATE


def mfcc_features(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``(T, 39)`` MFCC + deltas for a mono wave ``(S,)``; ``T = (S - 400) // 320 + 1`` at 16 kHz."""
    mfcc = kaldi.mfcc(wave[None].float() * 32768, sample_frequency=sample_rate, frame_length=25.0,
                      frame_shift=20.0, num_ceps=13, use_energy=False, dither=0.0)  # (T, 13)
    d1 = AF.compute_deltas(mfcc.T[None])  # deltas run along the last axis (time)
    d2 = AF.compute_deltas(d1)
    return torch.cat([mfcc, d1[0].T, d2[0].T], dim=1)  # (T, 39)


class HiddenFeatures:
    """``hidden_states[layer]`` of any backbone :func:`syllablelm.checkpoints.load_backbone` reads (HF
    convention: the output of transformer layer ``layer``), through :class:`~syllablelm.models.encoder.SpeechEncoder`
    like every other feature in this suite; one utterance at a time."""

    def __init__(self, checkpoint, layer: int, device: str | torch.device = "cpu"):
        from syllablelm.checkpoints import load_encoder

        self.encoder = load_encoder(checkpoint, layer=layer).eval().to(device)
        self.layer = layer
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:  # (S,) -> (T, H)
        if sample_rate != SAMPLE_RATE:
            wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
        return self.encoder(wave[None].to(self.device))[0][0].float().cpu()
