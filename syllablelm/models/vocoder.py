"""Unit vocoders (issue 29, item 3): fine units (+ durations) -> a 16 kHz wave, one interface for two generators.

Fine units are frame-level k-means ids on an encoder's grid (:mod:`syllablelm.units.fine`); the language models
upstream emit them *deduplicated*, so every vocoder carries a duration predictor that turns a run of distinct units
back into frame counts. The interface (:class:`UnitVocoder`):

- :attr:`~UnitVocoder.num_units`, :attr:`~UnitVocoder.hop` (16 kHz samples per fine frame: 320 at 50 Hz, 640 at
  25 Hz), :attr:`~UnitVocoder.sample_rate` (16000);
- :meth:`~UnitVocoder.predict_durations` ``(units) -> LongTensor`` (each >= 1);
- :meth:`~UnitVocoder.synthesize` ``(units, durations=None) -> FloatTensor`` wave of ``sum(durations) * hop``
  samples (``None``: the predicted durations); :meth:`~UnitVocoder.synthesize_batch` for several utterances.

Generators implement two methods: :meth:`~UnitVocoder.log_durations` (the predictor's output, ``log(1 + d)`` per
unit, as textless-lib / FastSpeech regress it) and :meth:`~UnitVocoder.frames_to_wave` (frame-level ids ``(B, T)``
-> ``(B, T * hop)``). The two in this suite: :class:`syllablelm.models.code_hifigan.CodeHiFiGAN` (textless-lib's
code HiFi-GAN, the paper path) and :class:`syllablelm.models.istft_vocoder.ISTFTVocoder` (small, CPU-trainable).

:class:`DurationPredictor` is the duration network both use: textless-lib's / fairseq's variance predictor (two
1-D convolutions with ReLU, LayerNorm and dropout after each, a linear projection to one value per unit), with the
parameter names of textless-lib's checkpoints (``conv1.0``, ``ln1``, ``conv2.0``, ``ln2``, ``proj``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16_000


class DurationPredictor(nn.Module):
    """Unit embeddings ``(B, n, C)`` -> ``(B, n)`` predicted ``log(1 + duration)``.

    ``conv -> ReLU -> LayerNorm -> dropout`` twice, then a linear map to one value per unit. Both convolutions keep
    the length (padding ``(k - 1) // 2``; textless-lib pads the second one by 1, which is the same for its kernel 3,
    the only size its checkpoints use)."""

    def __init__(self, in_dim: int, hidden: int = 128, kernel: int = 3, dropout: float = 0.5):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"duration predictor kernel must be odd (length-preserving), got {kernel}")
        self.conv1 = nn.Sequential(nn.Conv1d(in_dim, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln1(x), self.dropout, self.training)
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln2(x), self.dropout, self.training)
        return self.proj(x).squeeze(-1)


def durations_from_log(log_durations: torch.Tensor) -> torch.Tensor:
    """``log(1 + d)`` predictions -> whole frame counts: ``max(1, round(exp(x) - 1))`` (textless-lib's rule)."""
    return torch.clamp(torch.round(torch.exp(log_durations) - 1.0), min=1).long()


def duration_targets(durations: torch.Tensor) -> torch.Tensor:
    """The regression target of a duration predictor: ``log(1 + d)`` (float)."""
    return torch.log1p(durations.float())


class UnitVocoder(nn.Module):
    """Base of the unit vocoders: input checks, duration prediction and synthesis on top of two generator methods.

    Subclasses set :attr:`num_units` and :attr:`hop` and implement :meth:`log_durations` and
    :meth:`frames_to_wave`. Inputs may be lists, numpy arrays or tensors of unit ids ``(n,)``."""

    sample_rate: int = SAMPLE_RATE
    num_units: int
    hop: int

    # ---- what a generator implements ------------------------------------------------------------------------
    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        """Deduplicated units ``(B, n)`` -> predicted ``log(1 + duration)`` ``(B, n)``."""
        raise NotImplementedError

    def frames_to_wave(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame-level unit ids ``(B, T)`` -> waves ``(B, T * hop)`` in [-1, 1]."""
        raise NotImplementedError

    # ---- the interface ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_units(self, units) -> torch.Tensor:
        """``units`` as a 1-D LongTensor on the model's device; ``ValueError`` for an empty sequence, a non-integer
        or out-of-range id (naming the first bad id and its position)."""
        u = torch.as_tensor(np.asarray(units) if not torch.is_tensor(units) else units)
        if u.dim() != 1:
            u = u.reshape(-1) if u.dim() == 2 and u.shape[0] == 1 else u
        if u.dim() != 1:
            raise ValueError(f"units must be one sequence (n,), got shape {tuple(u.shape)}")
        if u.numel() == 0:
            raise ValueError("no units to synthesize (an empty sequence)")
        if u.is_floating_point() or u.is_complex() or u.dtype == torch.bool:
            raise ValueError(f"units must be integer ids, got dtype {u.dtype}")
        u = u.long()
        bad = ((u < 0) | (u >= self.num_units)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(f"unit id {int(u[i])} at position {i} is outside [0, {self.num_units}) "
                             f"({bad.numel()} ids out of range)")
        return u.to(self.device)

    def check_durations(self, durations, n: int) -> torch.Tensor:
        """``durations`` as a 1-D LongTensor of ``n`` whole frame counts >= 1; ``ValueError`` otherwise."""
        d = torch.as_tensor(np.asarray(durations) if not torch.is_tensor(durations) else durations)
        if d.dim() == 2 and d.shape[0] == 1:
            d = d.reshape(-1)
        if d.shape != (n,):
            raise ValueError(f"need one duration per unit: {n} units, durations of shape {tuple(d.shape)}")
        if d.is_floating_point():
            if not torch.all(torch.isfinite(d)) or torch.any(d != torch.round(d)):
                raise ValueError("durations must be whole frame counts")
        if n and int(d.min()) < 1:
            raise ValueError(f"durations must be >= 1 frame, got {int(d.min())}")
        return d.long().to(self.device)

    @torch.no_grad()
    def predict_durations(self, units) -> torch.Tensor:
        """Frame counts (each >= 1) for deduplicated ``units`` ``(n,)``, from the duration predictor."""
        u = self.check_units(units)
        was = self.training
        self.eval()
        try:
            return durations_from_log(self.log_durations(u[None]))[0]
        finally:
            self.train(was)

    @torch.no_grad()
    def synthesize(self, units, durations=None) -> torch.Tensor:
        """A float32 wave ``(sum(durations) * hop,)`` on the CPU for ``units`` ``(n,)``; ``durations=None``: the
        predicted ones (:meth:`predict_durations`)."""
        u = self.check_units(units)
        d = self.predict_durations(u) if durations is None else self.check_durations(durations, u.numel())
        frames = torch.repeat_interleave(u, d)
        was = self.training
        self.eval()
        try:
            return self.frames_to_wave(frames[None])[0].float().cpu()
        finally:
            self.train(was)

    @torch.no_grad()
    def synthesize_batch(self, units: list, durations: list | None = None) -> list[torch.Tensor]:
        """:meth:`synthesize` for several utterances: one padded forward pass of the generator, each wave cut to
        its own length (the padding frames only reach a wave through the generator's receptive field at its end;
        call :meth:`synthesize` per utterance for bit-exact single-utterance output)."""
        if durations is not None and len(durations) != len(units):
            raise ValueError(f"{len(units)} unit sequences but {len(durations)} duration sequences")
        seqs = []
        for i, u in enumerate(units):
            u = self.check_units(u)
            d = self.predict_durations(u) if durations is None else self.check_durations(durations[i], u.numel())
            seqs.append(torch.repeat_interleave(u, d))
        if not seqs:
            return []
        lengths = [s.numel() for s in seqs]
        frames = torch.zeros(len(seqs), max(lengths), dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            frames[i, :s.numel()] = s
            frames[i, s.numel():] = s[-1]  # repeat the last unit: the padding sounds like a held frame
        was = self.training
        self.eval()
        try:
            waves = self.frames_to_wave(frames).float().cpu()
        finally:
            self.train(was)
        return [waves[i, :n * self.hop] for i, n in enumerate(lengths)]
