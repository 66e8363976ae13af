"""textless-lib's code HiFi-GAN (issue 29, item 3): the unit vocoder of the paper path (TWIST's released
``hifigan_lj_mhubert_base_25hz``: one LJ Speech voice, mHuBERT 25 Hz units), for inference.

Architecture, as textless-lib's ``CodeGenerator`` (after speech-resynthesis / HiFi-GAN V1) with unit input only:

- ``dict``: unit embedding (``num_embeddings`` x ``embedding_dim``), one vector per fine frame;
- ``dur_predictor`` (optional, ``dur_predictor_params``): :class:`~syllablelm.models.vocoder.DurationPredictor`
  on the embeddings of the deduplicated units, ``log(1 + d)``; frames = ``max(1, round(exp(x) - 1))`` repeats;
- ``conv_pre``: convolution ``model_in_dim -> upsample_initial_channel`` (kernel 7);
- per upsampling stage ``i``: leaky ReLU (slope 0.1), ``ups[i]`` = transposed convolution (stride ``u_i``, kernel
  ``k_i``, padding ``(k_i - u_i) / 2``) halving the channels, then the mean of ``len(resblock_kernel_sizes)``
  multi-receptive-field residual blocks (``resblocks[i * K + j]``);
- leaky ReLU with PyTorch's default slope 0.01 (not 0.1: textless-lib's generator calls it without a slope and the
  released weights were trained that way), ``conv_post`` (``-> 1`` channel, kernel 7), ``tanh``.

Residual blocks, chosen by the config's ``resblock`` ("1" or "2", HiFi-GAN's two kinds; anything else is refused):
"1" (ResBlock1, HiFi-GAN V1/V2): for each of the first three dilations ``d`` of ``resblock_dilation_sizes[j]``:
``x += c2(lrelu(c1(lrelu(x))))`` with ``c1`` dilated by ``d`` and ``c2`` undilated (``convs1``, ``convs2``); "2"
(ResBlock2, HiFi-GAN V3): for each of the first two dilations ``d``: ``x += c(lrelu(x))`` with ``c`` dilated by ``d``
(``convs``). Kernel ``resblock_kernel_sizes[j]``, padding ``(k * d - d) / 2`` (length kept), slope 0.1, every
convolution weight-normed in the files. HiFi-GAN and speech-resynthesis read exactly three (resp. two) dilations per
block, so longer lists are cut to that and shorter ones refused. textless-lib's own generator always builds
ResBlock1 whatever ``resblock`` says; :mod:`syllablelm.checkpoints.vocoders` therefore lets the weights' key names
decide when they disagree with the config. The output has ``T * prod(upsample_rates)`` samples for
``T`` frames: ``prod = 320`` for 50 Hz units, 640 for 25 Hz ones, at ``sampling_rate`` 16 kHz.

Weights: textless-lib trains with (old-style) weight norm and stores ``weight_g`` / ``weight_v``; this module has
plain convolutions and :mod:`syllablelm.checkpoints.vocoders` computes ``weight = g * v / ||v||`` (norm over every
dimension but the first, torch's ``weight_norm`` with ``dim=0``) once at load, which is what textless-lib's
``remove_weight_norm`` does before inference. Speaker / style / F0 conditioning (multi-speaker models) is not
supported: the suite's speaker policy is one output voice.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from syllablelm.models.vocoder import DurationPredictor, UnitVocoder

LRELU_SLOPE = 0.1
# config keys of textless-lib's CodeGenerator that condition on something besides the units
UNSUPPORTED_KEYS = ("multispkr", "embedder_params", "multistyle", "f0", "f0_quant_num_bin")


def _pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """HiFi-GAN's ResBlock1: three (dilated conv, plain conv) pairs, each behind a leaky ReLU, residual per pair."""

    NUM_DILATIONS = 3  # HiFi-GAN / textless-lib index dilation[0..2]

    def __init__(self, channels: int, kernel: int, dilations):
        super().__init__()
        dilations = list(dilations)[:self.NUM_DILATIONS]
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_pad(kernel, d))
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=_pad(kernel)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN's ResBlock2 (its V3 generator): two dilated convolutions (``convs.0``, ``convs.1``), each applied to
    the leaky-ReLU'd input (slope 0.1) and added back: ``x = x + conv_d(lrelu(x))`` for ``d`` in the first two
    dilations; the padding keeps the length."""

    NUM_DILATIONS = 2  # HiFi-GAN / speech-resynthesis index dilation[0..1]

    def __init__(self, channels: int, kernel: int, dilations):
        super().__init__()
        dilations = list(dilations)[:self.NUM_DILATIONS]
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_pad(kernel, d))
                                   for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


RESBLOCKS = {"1": ResBlock1, "2": ResBlock2}  # the config's "resblock" -> block class


def check_resblock(cfg: dict) -> str:
    """The config's residual-block kind, ``"1"`` or ``"2"`` (default ``"1"``); ``ValueError`` for anything else."""
    kind = str(cfg.get("resblock", "1"))
    if kind not in RESBLOCKS:
        raise ValueError(f"resblock {cfg.get('resblock')!r} is not a HiFi-GAN residual block kind: '1' (ResBlock1) "
                         "or '2' (ResBlock2)")
    return kind


def check_config(cfg: dict) -> None:
    """``ValueError`` naming what a textless-lib JSON config lacks or has that this generator cannot run."""
    need = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes",
            "resblock_dilation_sizes", "num_embeddings", "embedding_dim")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"config lacks {missing}")
    extra = [k for k in UNSUPPORTED_KEYS if cfg.get(k)]
    if extra:
        raise ValueError(f"config conditions on {extra}: only unit-only (single-voice) generators are supported")
    if len(cfg["upsample_rates"]) != len(cfg["upsample_kernel_sizes"]):
        raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
    if len(cfg["resblock_kernel_sizes"]) != len(cfg["resblock_dilation_sizes"]):
        raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
    for u, k in zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"]):
        if (int(k) - int(u)) % 2:
            raise ValueError(f"upsample kernel {k} - rate {u} is odd: the output would not be T * hop samples")
    if int(cfg.get("model_in_dim", 80)) != int(cfg["embedding_dim"]):
        raise ValueError(f"model_in_dim {cfg.get('model_in_dim', 80)} != embedding_dim {cfg['embedding_dim']}: "
                         "extra conditioning channels are not supported")
    kind = check_resblock(cfg)
    need_d = RESBLOCKS[kind].NUM_DILATIONS
    for k, dd in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]):
        if len(dd) < need_d:
            raise ValueError(f"resblock {kind!r} needs {need_d} dilations per kernel, kernel {k} has {list(dd)}")
    hop = math.prod(int(u) for u in cfg["upsample_rates"])
    if "code_hop_size" in cfg and int(cfg["code_hop_size"]) != hop:
        raise ValueError(f"code_hop_size {cfg['code_hop_size']} != prod(upsample_rates) {hop}")
    if int(cfg.get("sampling_rate", 16_000)) != 16_000:
        raise ValueError(f"sampling_rate {cfg['sampling_rate']}: this suite's vocoders write 16 kHz")


class CodeHiFiGAN(UnitVocoder):
    """textless-lib's code HiFi-GAN generator (+ duration predictor) from its JSON config (a dict)."""

    def __init__(self, cfg: dict):
        super().__init__()
        check_config(cfg)
        self.cfg = dict(cfg)
        self.num_units = int(cfg["num_embeddings"])
        self.hop = math.prod(int(u) for u in cfg["upsample_rates"])
        ch = int(cfg["upsample_initial_channel"])
        kernels, dilations = cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]
        block = RESBLOCKS[str(cfg.get("resblock", "1"))]
        self.num_kernels = len(kernels)
        self.dict = nn.Embedding(self.num_units, int(cfg["embedding_dim"]))
        self.conv_pre = nn.Conv1d(int(cfg["embedding_dim"]), ch, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
            c_in, c_out = ch // 2 ** i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, int(k), int(u), padding=(int(k) - int(u)) // 2))
            self.resblocks.extend(block(c_out, int(kk), [int(d) for d in dd]) for kk, dd in zip(kernels, dilations))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, 7, 1, padding=3)
        dp = cfg.get("dur_predictor_params")
        self.dur_predictor = (DurationPredictor(int(dp["encoder_embed_dim"]), int(dp["var_pred_hidden_dim"]),
                                                int(dp["var_pred_kernel_size"]), float(dp["var_pred_dropout"]))
                              if dp else None)

    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        if self.dur_predictor is None:
            raise ValueError("this code HiFi-GAN has no duration predictor (its config has no dur_predictor_params):"
                             " pass durations")
        return self.dur_predictor(self.dict(units))

    def frames_to_wave(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(self.dict(frames).transpose(1, 2))
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(b(x) for b in blocks) / self.num_kernels
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope 0.01 here, as textless-lib
        return x[:, 0, :frames.shape[1] * self.hop]


def weight_normed_names(model: CodeHiFiGAN) -> list[str]:
    """Module paths whose weights textless-lib keeps weight-normed (``weight_g`` / ``weight_v`` in its files):
    ``conv_pre``, every ``ups.*``, every convolution of every residual block, ``conv_post``."""
    names = ["conv_pre", *(f"ups.{i}" for i in range(len(model.ups))), "conv_post"]
    for name, mod in model.resblocks.named_modules():
        if isinstance(mod, nn.Conv1d):
            names.append(f"resblocks.{name}")
    return names
