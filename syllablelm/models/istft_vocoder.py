"""A small unit vocoder that trains on a CPU (issue 29, item 3): unit embeddings -> ConvNeXt -> iSTFT, Vocos-style.

Architecture (:class:`ISTFTVocoder`), frame-level fine units ``(B, T)`` at ``hop`` samples per frame in:

1. unit embedding (``dim``) and a width-7 convolution, then ``unit_blocks`` ConvNeXt blocks at the unit rate;
2. a transposed convolution (kernel ``2r``, stride ``r``) to the STFT frame rate, ``r = hop / stft_hop`` (50 Hz
   units, ``stft_hop`` 160 -> 100 STFT frames a second), then ``stft_blocks`` ConvNeXt blocks there;
3. LayerNorm and a linear head giving, per STFT frame, a log magnitude ``m`` and a phase ``p`` for each of the
   ``n_fft / 2 + 1`` bins; the spectrum ``exp(m) * (cos p + i sin p)`` (``m`` clamped at 10) goes through
   ``torch.istft`` (Hann window ``n_fft``, hop ``stft_hop``, centred). ``2 T`` STFT frames plus a copy of the last
   one give exactly ``T * hop`` samples, so the wave is time-aligned with the units' frame grid.

The ConvNeXt block, the magnitude/phase head and the iSTFT output follow Vocos (Siuzdak 2023): depthwise
convolution (kernel 7) -> LayerNorm -> pointwise MLP (GELU) -> layer scale -> residual. A
:class:`~syllablelm.models.vocoder.DurationPredictor` on the same unit embedding predicts ``log(1 + d)`` of each
deduplicated unit.

Losses (:class:`VocoderLosses`): HiFi-GAN's mel loss (L1 between log-mel spectrograms: 80 bands, ``n_fft`` 1024,
hop 256, 0-8 kHz, magnitudes clamped at 1e-5 before the log), the multi-resolution STFT loss of Parallel WaveGAN
(spectral convergence + L1 log magnitude at (512, 50, 240), (1024, 120, 600), (2048, 240, 1200) = FFT size, hop,
window) and, for the duration predictor, the MSE on ``log(1 + d)`` (speech-resynthesis's duration loss). No
adversarial term. The log-mel spectrogram (:class:`~syllablelm.audio.spectrogram.LogMel`) and the evaluation's
log-mel distance (:func:`~syllablelm.audio.spectrogram.log_mel_distance`) are :mod:`syllablelm.audio.spectrogram`'s,
one definition for the loss and the measurement.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from syllablelm.audio.spectrogram import LogMel
from syllablelm.models.vocoder import DurationPredictor, UnitVocoder


@dataclasses.dataclass
class ISTFTVocoderConfig:
    num_units: int = 100
    hop: int = 320  # 16 kHz samples per fine frame (320: 50 Hz units; 640: 25 Hz)
    stft_hop: int = 160
    n_fft: int = 640
    dim: int = 192
    intermediate: int = 576
    unit_blocks: int = 4
    stft_blocks: int = 2
    kernel: int = 7
    dur_hidden: int = 128
    dur_kernel: int = 3
    dur_dropout: float = 0.5

    def __post_init__(self):
        if self.hop % self.stft_hop:
            raise ValueError(f"hop {self.hop} must be a multiple of stft_hop {self.stft_hop}")
        if self.n_fft < self.stft_hop or self.n_fft % 2:
            raise ValueError(f"n_fft must be even and >= stft_hop, got {self.n_fft}")
        if self.num_units < 1:
            raise ValueError(f"num_units must be positive, got {self.num_units}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ISTFTVocoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown iSTFT vocoder settings {sorted(unknown)}")
        return cls(**d)


class ConvNeXtBlock(nn.Module):
    """Vocos' ConvNeXt block on ``(B, C, T)``: depthwise conv -> LayerNorm -> Linear -> GELU -> Linear -> scale."""

    def __init__(self, dim: int, intermediate: int, kernel: int, scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class ISTFTVocoder(UnitVocoder):
    """See the module docstring. ``frames_to_wave``: ``(B, T)`` ids -> ``(B, T * hop)``."""

    def __init__(self, config: ISTFTVocoderConfig | dict | None = None):
        super().__init__()
        cfg = config if isinstance(config, ISTFTVocoderConfig) else ISTFTVocoderConfig(**(config or {}))
        self.config = cfg
        self.num_units, self.hop = cfg.num_units, cfg.hop
        self.ratio = cfg.hop // cfg.stft_hop
        self.embed = nn.Embedding(cfg.num_units, cfg.dim)
        self.conv_in = nn.Conv1d(cfg.dim, cfg.dim, cfg.kernel, padding=cfg.kernel // 2)
        self.norm_in = nn.LayerNorm(cfg.dim, eps=1e-6)
        n_blocks = cfg.unit_blocks + cfg.stft_blocks
        self.unit_blocks = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate, cfg.kernel, 1.0 / n_blocks)
                                         for _ in range(cfg.unit_blocks))
        r = self.ratio
        self.upsample = (nn.ConvTranspose1d(cfg.dim, cfg.dim, 2 * r, r, padding=r // 2) if r > 1 else nn.Identity())
        self.stft_blocks = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate, cfg.kernel, 1.0 / n_blocks)
                                         for _ in range(cfg.stft_blocks))
        self.norm_out = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, 2 * (cfg.n_fft // 2 + 1))
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.dur_predictor = DurationPredictor(cfg.dim, cfg.dur_hidden, cfg.dur_kernel, cfg.dur_dropout)

    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        return self.dur_predictor(self.embed(units))

    def spectrum(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame ids ``(B, T)`` -> complex STFT ``(B, n_fft / 2 + 1, T * r)``."""
        x = self.conv_in(self.embed(frames).transpose(1, 2))
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)
        for block in self.unit_blocks:
            x = block(x)
        x = self.upsample(x)[..., :frames.shape[1] * self.ratio]
        for block in self.stft_blocks:
            x = block(x)
        m, p = self.head(self.norm_out(x.transpose(1, 2))).transpose(1, 2).chunk(2, dim=1)
        return torch.polar(torch.exp(torch.clamp(m.float(), max=10.0)), p.float())

    def frames_to_wave(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        spec = self.spectrum(frames)
        spec = torch.cat([spec, spec[..., -1:]], dim=-1)  # 2T + 1 centred frames span exactly T * hop samples
        wave = torch.istft(spec, cfg.n_fft, cfg.stft_hop, cfg.n_fft, self.window, center=True,
                           length=frames.shape[1] * cfg.hop)
        return wave.clamp(-1.0, 1.0)


# ---- losses -------------------------------------------------------------------------------------------------
class MultiResolutionSTFTLoss(nn.Module):
    """Parallel WaveGAN's loss: mean over resolutions of spectral convergence ``||S - S'||_F / ||S||_F`` plus the
    L1 distance of log magnitudes (magnitudes clamped at 1e-7). Returns ``(spectral convergence, log magnitude)``."""

    RESOLUTIONS = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))

    def __init__(self, resolutions=RESOLUTIONS):
        super().__init__()
        self.resolutions = [tuple(int(v) for v in r) for r in resolutions]
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window{i}", torch.hann_window(win), persistent=False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sc = mag = 0.0
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            w = getattr(self, f"window{i}")
            s_fake = torch.stft(fake, n_fft, hop, win, w, return_complex=True).abs().clamp(min=1e-7)
            s_real = torch.stft(real, n_fft, hop, win, w, return_complex=True).abs().clamp(min=1e-7)
            sc = sc + torch.linalg.norm(s_real - s_fake) / torch.linalg.norm(s_real).clamp(min=1e-7)
            mag = mag + F.l1_loss(torch.log(s_fake), torch.log(s_real))
        k = len(self.resolutions)
        return sc / k, mag / k


class VocoderLosses(nn.Module):
    """The training objective: ``mel_weight * mel L1 + stft_weight * (SC + log-mag) + dur_weight * duration MSE``."""

    def __init__(self, mel_weight: float = 1.0, stft_weight: float = 1.0, dur_weight: float = 1.0):
        super().__init__()
        self.mel, self.stft = LogMel(), MultiResolutionSTFTLoss()
        self.mel_weight, self.stft_weight, self.dur_weight = float(mel_weight), float(stft_weight), float(dur_weight)

    def forward(self, fake: torch.Tensor, real: torch.Tensor, log_dur: torch.Tensor | None = None,
                durations: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``fake``/``real`` ``(B, S)``; ``log_dur`` predictions and true ``durations`` ``(B, n)`` with ``mask``
        (True = a real unit). Returns the named terms and ``loss``."""
        out = {"mel": F.l1_loss(self.mel(fake), self.mel(real))}
        out["sc"], out["logmag"] = self.stft(fake, real)
        loss = self.mel_weight * out["mel"] + self.stft_weight * (out["sc"] + out["logmag"])
        if log_dur is not None:
            target = torch.log1p(durations.float())
            err = (log_dur - target) ** 2
            out["dur"] = err[mask].mean() if mask is not None else err.mean()
            loss = loss + self.dur_weight * out["dur"]
        out["loss"] = loss
        return out
