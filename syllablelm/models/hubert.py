"""HuBERT-style masked-prediction teacher (SyllableLM stage 1) on top of ``transformers.HubertModel``.

The encoder is a plain ``HubertModel``, so HF HuBERT directories load into it unchanged; the pretraining head
(``final_proj`` + ``label_embs``) sits beside it. LossPred needs the forward split in two:

    feats, frame_mask = teacher.frontend(waves, attention_mask)   # CNN + feature projection, once per utterance
    hidden = teacher.transformer(feats, frame_mask, span_mask)    # mask embedding + pos-conv + layers, per mask
    losses = teacher.frame_losses(teacher.logits(hidden), labels) # (B, T) cross-entropy per frame

``transformer(frontend(x))`` equals ``HubertModel(x)`` (with ``mask_time_indices=span_mask``) in eval mode; the
tests check it. Logits follow fairseq HuBERT: cosine(final_proj(h), label_emb) / logit_temp. Checkpoints imported
from fairseq keep the dictionary's 4 special symbols in the table (``label_offset=4``: label k is row k + 4).
``logits(h, rows=...)`` chooses the softmax's rows: ``"labels"`` (default here: the ``num_labels`` real labels,
column k = label k) or ``"all"`` (every row of the table, specials first, column k + label_offset = label k), as
fairseq pretraining and the authors' LossPred do: the 4 never-targeted special rows then sit in the normaliser.
``frame_losses``/``masked_prediction_loss`` take the matching ``column_offset`` (``teacher.column_offset(rows)``).
Both choices agree when ``label_offset == 0`` (this project's own teachers). LossPred uses ``"all"`` by default
(``LossPredConfig.softmax_rows``); training keeps ``"labels"``.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.masking_utils import create_bidirectional_mask

from syllablelm.models.common import normalize_waves, pretrained_normalization

_KERNELS = [10, 3, 3, 3, 3, 2, 2]  # HuBERT's CNN: 400-sample receptive field, 320-sample hop -> 50 Hz frames
_STRIDES = [5, 2, 2, 2, 2, 2, 2]
SOFTMAX_ROWS = ("labels", "all")  # logits over the real labels only, or over every row of label_embs


@dataclass
class TeacherConfig:
    """Everything needed to rebuild a teacher (plain fields: YAML/JSON and ``save_hyperparameters`` friendly).

    The first block mirrors ``transformers.HubertConfig``; the rest is the pretraining head. Defaults = HuBERT-Base.
    ``layerdrop`` defaults to 0 (not HF's 0.1): skipped layers leave parameters unused, which DDP rejects unless
    ``find_unused_parameters`` is on.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    conv_dim: list[int] = field(default_factory=lambda: [512] * 7)
    conv_kernel: list[int] = field(default_factory=lambda: list(_KERNELS))
    conv_stride: list[int] = field(default_factory=lambda: list(_STRIDES))
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group": GroupNorm in the first conv only (Base); "layer": LN in every conv
    do_stable_layer_norm: bool = False  # pre-LN transformer (fairseq layer_norm_first; Large)
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1  # fairseq `dropout`
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.1  # fairseq `dropout_input`
    layerdrop: float = 0.0
    # pretraining head
    num_labels: int = 500  # k-means clusters (targets)
    final_dim: int = 256
    logit_temp: float = 0.1
    label_offset: int = 0  # 4 for fairseq imports: label k is row k + 4 of label_embs
    normalize_waveform: bool = False  # per-utterance zero-mean/unit-variance input (Large yes, Base no)
    feature_grad_mult: float = 1.0  # scales the CNN's gradients (fairseq Base pretraining: 0.1; 0 freezes it)

    def __post_init__(self) -> None:
        self.conv_dim, self.conv_kernel, self.conv_stride = (list(map(int, v)) for v in
                                                             (self.conv_dim, self.conv_kernel, self.conv_stride))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.label_offset < 0 or self.num_labels < 1:
            raise ValueError("need num_labels >= 1 and label_offset >= 0")

    @classmethod
    def base(cls, **overrides) -> "TeacherConfig":
        """HuBERT-Base: 12 x 768, group-norm CNN, post-LN, final_dim 256, unnormalised input."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides) -> "TeacherConfig":
        """HuBERT-Large (fairseq hubert_large_librivox.yaml): 24 x 1024, 16 heads, LN CNN, pre-LN, final_dim 768,
        no dropout, normalised input."""
        kw = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, final_dim=768, normalize_waveform=True,
                  hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)
        return cls(**{**kw, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "TeacherConfig":
        """Trains on a CPU in minutes; same CNN kernels/strides, so frames stay 50 Hz (320-sample hop)."""
        kw = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                  conv_dim=[64] * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
                  num_labels=100, final_dim=64, hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)
        return cls(**{**kw, **overrides})

    _HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                  "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "do_stable_layer_norm",
                  "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "layer_norm_eps", "hidden_dropout",
                  "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop")

    def to_hf_config(self) -> HubertConfig:
        kw = {k: getattr(self, k) for k in self._HF_FIELDS}
        # mask_time_prob > 0 keeps `masked_spec_embed` in the model; HF's own random masking is never used because
        # `transformer()` masks explicitly. feat_proj_layer_norm: fairseq HuBERT always layer-norms the CNN output.
        return HubertConfig(**kw, feat_proj_layer_norm=True, apply_spec_augment=True, mask_time_prob=0.05,
                            mask_feature_prob=0.0, conv_pos_batch_norm=False)

    @classmethod
    def from_hf_config(cls, hf: HubertConfig, **head) -> "TeacherConfig":
        if getattr(hf, "conv_pos_batch_norm", False) or not getattr(hf, "feat_proj_layer_norm", True):
            raise ValueError("conv_pos_batch_norm / feat_proj_layer_norm=False HuBERT variants are not supported")
        return cls(**{k: getattr(hf, k) for k in cls._HF_FIELDS}, **head)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compute_span_mask(
    frame_mask: torch.Tensor,  # (B, T) bool, True on real frames
    mask_prob: float = 0.8,
    mask_length: int = 10,
    min_masks: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # (B, T) bool
    """HuBERT's training mask: per utterance of n real frames, ``max(min_masks, int(p*n/L + u))`` span starts
    (u ~ U[0,1): probabilistic rounding) drawn without replacement from ``[0, n-L]``; spans may overlap, so about
    ``1 - exp(-p)`` of the frames end up masked (≈ 55 % for p = 0.8). Padding is never masked; utterances shorter
    than L get no mask (as in transformers' ``_compute_mask_indices``). Drawn on the CPU from ``generator`` (a CPU
    generator), so a seed fixes the mask on every device. Unlike fairseq we do not subsample every row down to the
    batch's smallest mask count."""
    lengths = frame_mask.sum(-1).cpu()  # (B,)
    B, T = frame_mask.shape
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        starts = n - mask_length + 1  # valid span starts
        if starts <= 0:
            continue
        u = torch.rand((), generator=generator).item()
        num = min(max(min_masks, int(mask_prob * n / mask_length + u)), starts)
        idx = torch.randperm(starts, generator=generator)[:num]
        pos = (idx[:, None] + torch.arange(mask_length)).flatten()  # (num * L,)
        mask[b, pos] = True
    return mask.to(frame_mask.device) & frame_mask


class HubertTeacher(nn.Module):
    """``encoder`` (HF ``HubertModel``) + pretraining head ``final_proj`` / ``label_embs``.

    Use the methods below, not ``teacher.encoder(waves)`` in train mode: HF's forward would add its own random
    SpecAugment mask there (its config keeps ``mask_time_prob > 0`` only so that ``masked_spec_embed`` exists).
    """

    def __init__(self, config: TeacherConfig, encoder: HubertModel | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else HubertModel(config.to_hf_config())
        if not hasattr(self.encoder, "masked_spec_embed"):  # HF drops it when mask probs are 0
            self.encoder.masked_spec_embed = nn.Parameter(torch.rand(config.hidden_size))
        self.final_proj = nn.Linear(config.hidden_size, config.final_dim)
        self.label_embs = nn.Parameter(torch.rand(config.num_labels + config.label_offset, config.final_dim))

    @classmethod
    def from_hf_dir(cls, path: str | Path, *, num_labels: int, final_dim: int, label_offset: int = 0,
                    normalize_waveform: bool | None = None, **head) -> "HubertTeacher":
        """Encoder from an HF HuBERT directory (offline), head freshly initialised. ``normalize_waveform``
        defaults to the directory's ``preprocessor_config.json`` ``do_normalize``, else to ``feat_extract_norm ==
        'layer'`` (HuBERT-Large style)."""
        hf = HubertConfig.from_pretrained(str(path), local_files_only=True)
        if hf.mask_time_prob <= 0 and hf.mask_feature_prob <= 0:
            hf.mask_time_prob = 0.05  # else HF builds no `masked_spec_embed` and drops the stored one
        encoder = HubertModel.from_pretrained(str(path), config=hf, local_files_only=True)
        if normalize_waveform is None:
            normalize_waveform = pretrained_normalization(path, encoder.config)
        warnings.warn(f"{path}: HF HuBERT directories hold no pretraining head; final_proj/label_embs are freshly "
                      "initialised. LossPred needs a trained head: use a fairseq .pt (load_fairseq_hubert) or a "
                      "teacher trained by this project.", stacklevel=2)
        cfg = TeacherConfig.from_hf_config(encoder.config, num_labels=num_labels, final_dim=final_dim,
                                           label_offset=label_offset, normalize_waveform=normalize_waveform, **head)
        return cls(cfg, encoder=encoder)

    def feature_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames the CNN makes from ``num_samples`` samples (floor arithmetic per conv layer)."""
        return self.encoder._get_feat_extract_output_lengths(num_samples)

    def frontend(
        self,
        waves: torch.Tensor,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S), nonzero on real samples
        *,
        normalize: bool | None = None,  # per-utterance waveform normalisation; None: config.normalize_waveform
    ) -> tuple[torch.Tensor, torch.Tensor]:  # features (B, T, H), frame_mask (B, T) bool
        """CNN + feature projection: independent of any mask, so LossPred runs it once per utterance.
        ``normalize=False`` feeds the raw waveform whatever the teacher was pretrained with (LossPred's default,
        as the authors' notebook does with HuBERT-Large)."""
        if self.config.normalize_waveform if normalize is None else normalize:
            waves = normalize_waves(waves, attention_mask)
        enc, mult = self.encoder, self.config.feature_grad_mult
        with torch.set_grad_enabled(torch.is_grad_enabled() and mult > 0):
            conv = enc.feature_extractor(waves).transpose(1, 2)  # (B, T, C)
        if self.training and 0 < mult != 1.0:  # GradMultiply: same value, gradient scaled by `mult`
            conv = conv * mult + conv.detach() * (1.0 - mult)
        B, T = conv.shape[:2]
        if attention_mask is None:
            frame_mask = torch.ones(B, T, dtype=torch.bool, device=conv.device)
        else:
            frame_mask = enc._get_feature_vector_attention_mask(T, attention_mask).bool()
        return enc.feature_projection(conv), frame_mask

    def transformer(
        self,
        features: torch.Tensor,  # (B, T, H) from frontend
        frame_mask: torch.Tensor | None = None,  # (B, T) bool, True on real frames
        span_mask: torch.Tensor | None = None,  # (B, T) bool, True where the mask embedding replaces the frame
        output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Mask embedding + positional conv + transformer layers (HF's encoder forward, unrolled so that any number
        of layers can run and every layer's output is available). Returns the last hidden state (B, T, H), or with
        ``output_hidden_states`` the list ``[input to layer 1, output of layer 1, ...]`` (HF convention; for the
        pre-LN model the final LayerNorm is applied only to the returned last hidden state, as in transformers 5)."""
        enc = self.encoder.encoder
        layers = enc.layers if num_layers is None else enc.layers[:num_layers]
        x = features
        if span_mask is not None:
            x = torch.where(span_mask[..., None], self.encoder.masked_spec_embed.to(x.dtype), x)
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask[..., None], 0.0)  # padding contributes nothing to the pos-conv
        attn = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=x, attention_mask=frame_mask)
        x = x + enc.pos_conv_embed(x)
        if not self.config.do_stable_layer_norm:
            x = enc.layer_norm(x)
        x = enc.dropout(x)
        states = [x]
        for layer in layers:
            if not (self.training and self.config.layerdrop > 0 and torch.rand([]) < self.config.layerdrop):
                x = layer(x, attention_mask=attn)
            states.append(x)
        if self.config.do_stable_layer_norm and len(layers) == len(enc.layers):
            x = enc.layer_norm(x)
        return states if output_hidden_states else x

    def forward(self, waves: torch.Tensor, attention_mask: torch.Tensor | None = None,
                span_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, T, num_labels), frame_mask (B, T))`` for a batch of waveforms."""
        feats, frame_mask = self.frontend(waves, attention_mask)
        return self.logits(self.transformer(feats, frame_mask, span_mask)), frame_mask

    @torch.no_grad()
    def hidden_states(self, waves: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      layer: int) -> torch.Tensor:  # (B, T, H)
        """Features of ``layer`` for the k-means label step: ``hidden_states[layer]`` in HF numbering (0 = input
        to layer 1, i = output of layer i); stops after layer ``layer``. No mask, no gradient; call in eval mode."""
        if not 0 <= layer <= self.config.num_hidden_layers:
            raise ValueError(f"layer must be in [0, {self.config.num_hidden_layers}], got {layer}")
        feats, frame_mask = self.frontend(waves, attention_mask)
        return self.transformer(feats, frame_mask, output_hidden_states=True, num_layers=layer)[layer]

    def column_offset(self, rows: str = "labels") -> int:
        """Column of label 0 in ``logits(h, rows)``: ``label_offset`` for ``rows="all"``, else 0."""
        if rows not in SOFTMAX_ROWS:
            raise ValueError(f"rows must be one of {SOFTMAX_ROWS}, got {rows!r}")
        return self.config.label_offset if rows == "all" else 0

    def logits(self, hidden: torch.Tensor, rows: str = "labels") -> torch.Tensor:  # (B, T, H) -> (B, T, R), float32
        """fairseq HuBERT's compute_nce scores: cosine(final_proj(h), label_emb) / logit_temp, in float32 also
        under autocast (which would otherwise run the matmul in bf16/fp16: errors of ~0.05 in logits x10).

        ``rows="labels"``: R = num_labels, column k = label k (the table's special rows left out).
        ``rows="all"``: R = label_offset + num_labels, every row of ``label_embs`` (column k + label_offset = label
        k): the softmax normaliser includes the special rows, as in fairseq and the authors' LossPred."""
        start = self.config.label_offset - self.column_offset(rows)
        proj = self.final_proj(hidden)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            proj = F.normalize(proj.float(), dim=-1, eps=1e-8)  # (B, T, F)
            embs = F.normalize(self.label_embs[start:].float(), dim=-1, eps=1e-8)  # (R, F)
            return proj @ embs.T / self.config.logit_temp

    def predicted_labels(self, logits: torch.Tensor, rows: str = "labels") -> torch.Tensor:  # (B, T) long
        """Argmax label of ``logits(h, rows)``; with ``rows="all"`` a special row winning gives a negative value
        (never equal to a label)."""
        return logits.argmax(-1) - self.column_offset(rows)

    @staticmethod
    def frame_losses(logits: torch.Tensor, labels: torch.Tensor, column_offset: int = 0) -> torch.Tensor:  # (B, T)
        """Cross-entropy of each frame's label (``labels`` (B, T) long; -100 marks frames without a label -> 0);
        label k is column ``k + column_offset`` of ``logits`` (``teacher.column_offset(rows)``)."""
        if logits.shape[:2] != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
        labels = labels.long()
        if column_offset:
            labels = torch.where(labels == -100, labels, labels + column_offset)
        return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)

    @classmethod
    def masked_prediction_loss(cls, logits: torch.Tensor, labels: torch.Tensor, span_mask: torch.Tensor,
                               frame_mask: torch.Tensor | None = None,
                               column_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_sum, count)`` over masked real frames with a label: the caller divides (after summing both
        across ranks), so the loss is a per-frame mean over the global batch."""
        sel = span_mask & (labels != -100)
        if frame_mask is not None:
            sel = sel & frame_mask
        return (cls.frame_losses(logits, labels, column_offset) * sel).sum(), sel.sum()
