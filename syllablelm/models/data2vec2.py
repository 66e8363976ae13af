"""data2vec 2.0 audio encoder (fairseq ``data2vec_multi``, AUDIO modality), inference/fine-tuning part only.

The paper's SylBoost backbone is data2vec 2.0 Base; its feature layer is ``hidden_states[11]``. Structure (fairseq
``examples/data2vec/models``: ``modalities/audio.py`` AudioEncoder, ``modalities/base.py``, ``modalities/modules.py``
AltBlock/AltAttention/BlockEncoder, ``data2vec2.py`` Data2VecMultiModel):

    waves (B, S) -> CNN (fairseq ConvFeatureExtractionModel, no bias, extractor_mode layer_norm) -> (B, T, 512)
      -> LayerNorm(512) -> Linear(512, D)                                  "project_features"
      x + pos(x), pos = conv_pos_depth x [Conv1d(k, groups) -> LN(no affine) -> GELU], k = max(3, width // depth)
      -> context LayerNorm (post-LN models only) -> prenet_depth blocks -> depth blocks [-> final LN if pre-LN]
    ALiBi (use_alibi_encoder): per head a bias -slope_h * |i - j| on the attention logits, times a learned
    per-head (per-layer) scale clamped at 0.

Layerdrop (training mode only): each prenet block is skipped with probability ``prenet_layerdrop``, each main
block with ``layerdrop``, one draw per block and forward, as fairseq's BlockEncoder and main loop do.

``hidden_states[0]`` is the input to block 1 and ``hidden_states[k]`` the output of block k, counting the prenet
and main blocks together (the final LayerNorm of a pre-LN model is applied to the last entry, as HF does).
The pretraining-only parts (decoder, EMA teacher, masking) are not built.

Padding: a padded batch gives exactly the per-utterance features. The CNN (per-frame LayerNorm) and attention (padded
keys masked) are exact by construction; the positional convolutions would carry padding into real frames, so padded
frames are zeroed before each of them (fairseq does not, so its own batched features depend on the padding).

    enc = Data2Vec2AudioEncoder(Data2Vec2Config.tiny())
    hidden, frame_mask = enc(waves, attention_mask)   # tuple of (B, T, D), (B, T) bool
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from syllablelm.models.common import parse_conv_spec


@dataclass
class Data2Vec2Config:
    """Field names follow fairseq's Data2VecMultiConfig (model) and D2vAudioConfig (model.modalities.audio)."""
    embed_dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    depth: int = 8  # main blocks (model.depth)
    prenet_depth: int = 4  # modality blocks before them (modalities.audio.prenet_depth)
    layer_norm_first: bool = False
    norm_eps: float = 1e-5
    norm_affine: bool = True
    feature_encoder_spec: str = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    extractor_mode: str = "layer_norm"  # or "default": GroupNorm after the first conv only
    conv_pos_width: int = 95
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    use_alibi_encoder: bool = True
    alibi_scale: float = 1.0  # initial value of the learned scale
    learned_alibi: bool = False
    alibi_max_pos: int | None = None
    learned_alibi_scale: bool = True
    learned_alibi_scale_per_head: bool = True
    learned_alibi_scale_per_layer: bool = False
    encoder_dropout: float = 0.1  # attention output projection
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # inside the MLP
    post_mlp_drop: float = 0.1
    dropout_input: float = 0.0  # before the main blocks
    prenet_dropout: float = 0.1  # after the context LayerNorm
    layerdrop: float = 0.05  # main blocks (model.layerdrop); the authors' SylBoost student sets it to 0
    prenet_layerdrop: float = 0.05  # prenet blocks (modalities.audio.prenet_layerdrop); their student keeps it
    normalize_waveform: bool = True  # what it was pretrained with (fairseq task.normalize); applied by callers

    @classmethod
    def base(cls, **kw) -> "Data2Vec2Config":
        """The released Base audio model (base_libri.pt): 768 wide, 12 blocks, ALiBi with a learned per-head scale,
        post-LN, LayerNorm eps 1e-5 (fairseq v2/base_audio_only_task.yaml). That yaml says depth 12 / prenet_depth 0;
        downstream code restoring base_libri.pt uses depth 8 / prenet_depth 4, used here. The two compute the same
        function (post-LN: the context LayerNorm precedes either split; one shared ALiBi scale); only key names
        differ, and the importer follows whatever the file's config says."""
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> "Data2Vec2Config":
        """Laptop-sized, same 320-sample hop."""
        base = dict(embed_dim=32, num_heads=2, depth=2, prenet_depth=1, conv_pos_width=6, conv_pos_depth=2,
                    conv_pos_groups=4, feature_encoder_spec="[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2")
        return cls(**{**base, **kw})

    @property
    def num_layers(self) -> int:
        return self.prenet_depth + self.depth

    def conv_layers(self) -> list[tuple[int, int, int]]:
        return parse_conv_spec(self.feature_encoder_spec)


def alibi_slopes(heads: int) -> list[float]:
    """fairseq ``get_alibi``'s slopes: geometric for a power of two, else the closest power of two's slopes plus
    every other slope of twice that many."""
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(heads).is_integer():
        return pow2(heads)
    p = 2 ** math.floor(math.log2(heads))
    return pow2(p) + alibi_slopes(2 * p)[0::2][: heads - p]


def alibi_bias(heads: int, T: int, device=None) -> torch.Tensor:  # (1, H, T, T) float32
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32, device=device)
    pos = torch.arange(T, device=device)
    return (slopes[:, None, None] * -(pos[None, :] - pos[:, None]).abs().float())[None]


class ConvBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, k: int, stride: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(n_in, n_out, k, stride=stride, bias=False)
        self.norm = (nn.LayerNorm(n_out) if norm == "layer" else nn.GroupNorm(n_out, n_out) if norm == "group"
                     else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S) -> (B, C', S')
        x = self.conv(x)
        if isinstance(self.norm, nn.LayerNorm):  # fairseq Fp32LayerNorm over channels
            x = F.layer_norm(x.transpose(1, 2).float(), self.norm.normalized_shape, self.norm.weight.float(),
                             self.norm.bias.float(), self.norm.eps).type_as(x).transpose(1, 2)
        elif self.norm is not None:  # Fp32GroupNorm
            x = F.group_norm(x.float(), self.norm.num_groups, self.norm.weight.float(), self.norm.bias.float(),
                             self.norm.eps).type_as(x)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    def __init__(self, layers: list[tuple[int, int, int]], mode: str):
        super().__init__()
        if mode not in ("layer_norm", "default"):
            raise ValueError(f"extractor_mode must be 'layer_norm' or 'default', got {mode!r}")
        dims = [1] + [d for d, _, _ in layers]
        self.conv_layers = nn.ModuleList(
            ConvBlock(dims[i], d, k, s, "layer" if mode == "layer_norm" else "group" if i == 0 else None)
            for i, (d, k, s) in enumerate(layers))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, C, T)
        x = waves[:, None]
        for block in self.conv_layers:
            x = block(x)
        return x


class Attention(nn.Module):
    """fairseq AltAttention: fused qkv; ALiBi bias added to the logits in fp32; padded keys at -inf."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = nn.Dropout(attn_drop), nn.Dropout(proj_drop)

    def forward(self, x, pad=None, bias=None):  # (B, T, D), (B, T) bool True = padding, (1|B, H, T, T)
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        dtype = q.dtype
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, T, T)
        if bias is not None:
            attn = attn.type_as(bias) + bias
        if pad is not None:
            attn = attn.masked_fill(pad[:, None, None, :], float("-inf"))
        attn = self.attn_drop(attn.softmax(-1, dtype=torch.float32).to(dtype))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, T, D)))


class Mlp(nn.Module):  # timm Mlp: fc1 -> GELU -> drop -> fc2 -> drop
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """fairseq AltBlock. Post-LN: x = norm2(r + mlp(r)), r = norm1(x + attn(x)). Pre-LN reproduces fairseq's
    quirk: after the attention residual, x = 2 * mlp(norm2(x)) (its MLP has no residual)."""

    def __init__(self, c: Data2Vec2Config):
        super().__init__()
        d = c.embed_dim
        self.layer_norm_first = c.layer_norm_first
        self.norm1 = nn.LayerNorm(d, eps=c.norm_eps, elementwise_affine=c.norm_affine)
        self.attn = Attention(d, c.num_heads, c.attention_dropout, c.encoder_dropout)
        self.norm2 = nn.LayerNorm(d, eps=c.norm_eps, elementwise_affine=c.norm_affine)
        self.mlp = Mlp(d, int(d * c.mlp_ratio), c.activation_dropout)
        self.post_mlp_dropout = nn.Dropout(c.post_mlp_drop)

    def forward(self, x, pad=None, bias=None):
        if self.layer_norm_first:
            x = x + self.attn(self.norm1(x), pad, bias)
            r = x = self.mlp(self.norm2(x))
            return r + self.post_mlp_dropout(x)
        r = self.norm1(x + self.attn(x, pad, bias))
        return self.norm2(r + self.post_mlp_dropout(self.mlp(r)))


class Data2Vec2AudioEncoder(nn.Module):
    """Hidden states of every block (see the module docstring); ``truncate(k)`` keeps blocks 1..k only."""

    def __init__(self, config: Data2Vec2Config):
        super().__init__()
        c = self.config = config
        layers = c.conv_layers()
        self.conv_layers_spec = layers
        self.feature_extractor = FeatureExtractor(layers, c.extractor_mode)
        self.feature_norm = nn.LayerNorm(layers[-1][0])
        self.feature_proj = nn.Linear(layers[-1][0], c.embed_dim)
        self.pos_pre_ln = nn.LayerNorm(c.embed_dim) if c.conv_pos_pre_ln else None
        k = max(3, c.conv_pos_width // c.conv_pos_depth)
        self.pos_convs = nn.ModuleList(nn.Conv1d(c.embed_dim, c.embed_dim, k, padding=k // 2,
                                                 groups=c.conv_pos_groups) for _ in range(c.conv_pos_depth))
        self.alibi_scale = self.alibi_bias = None
        if c.use_alibi_encoder:
            shape = (c.num_layers if c.learned_alibi_scale_per_layer else 1, 1,
                     c.num_heads if c.learned_alibi_scale_per_head else 1, 1, 1)
            self.alibi_scale = nn.Parameter(torch.full(shape, float(c.alibi_scale)),
                                            requires_grad=c.learned_alibi_scale)
            if c.learned_alibi:
                if c.alibi_max_pos is None:
                    raise ValueError("learned_alibi needs alibi_max_pos")
                self.alibi_bias = nn.Parameter(alibi_bias(c.num_heads, c.alibi_max_pos))
        self.context_norm = (None if c.layer_norm_first else
                             nn.LayerNorm(c.embed_dim, eps=c.norm_eps, elementwise_affine=c.norm_affine))
        self.prenet_dropout, self.dropout_input = nn.Dropout(c.prenet_dropout), nn.Dropout(c.dropout_input)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.final_norm = (nn.LayerNorm(c.embed_dim, eps=c.norm_eps, elementwise_affine=c.norm_affine)
                           if c.layer_norm_first else None)

    @property
    def padding_exact(self) -> bool:
        """A padded batch gives the per-utterance features (not with a GroupNorm-over-time CNN, mode "default")."""
        return self.config.extractor_mode == "layer_norm"

    def truncate(self, layers: int) -> None:
        """Keep blocks 1..``layers`` (and the final LayerNorm only if all are kept): no unused parameters."""
        if not 1 <= layers <= len(self.blocks):
            raise ValueError(f"feature layer must be in [1, {len(self.blocks)}] for data2vec 2.0, got {layers}")
        if layers < len(self.blocks):
            self.blocks = self.blocks[:layers]
            self.final_norm = None

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _, k, s in self.conv_layers_spec:
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths

    def _bias(self, T: int, device) -> torch.Tensor | None:  # (1, H, T, T) before the per-layer scale
        if self.alibi_scale is None:
            return None
        if self.alibi_bias is None:
            return alibi_bias(self.config.num_heads, T, device)
        b = self.alibi_bias  # learned: grown by edge replication if too short, as fairseq does
        if b.shape[-1] < T:
            p = math.ceil((T - b.shape[-1]) / 2)
            b = F.pad(b, (p, p, p, p), mode="replicate")
        return b[..., :T, :T].float()

    def forward(self, waves: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:  # (B, S) -> L+1 x (B, T, D), (B, T) bool
        c = self.config
        x = self.feature_proj(self.feature_norm(self.feature_extractor(waves).transpose(1, 2)))  # (B, T, D)
        B, T, _ = x.shape
        if attention_mask is None:
            frame_mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        else:
            n = self.frame_lengths(attention_mask.long().sum(-1))
            frame_mask = torch.arange(T, device=x.device)[None] < n[:, None]
        pad = None if bool(frame_mask.all()) else ~frame_mask
        keep = None if pad is None else frame_mask[..., None].to(x.dtype)
        pos = x if keep is None else x * keep
        if self.pos_pre_ln is not None:
            pos = self.pos_pre_ln(pos) if keep is None else self.pos_pre_ln(pos) * keep
        for conv in self.pos_convs:
            pos = conv(pos.transpose(1, 2))[..., :T].transpose(1, 2)  # [:T] = fairseq SamePad for even k
            pos = F.gelu(F.layer_norm(pos, (c.embed_dim,), eps=1e-5))
            if keep is not None:
                pos = pos * keep
        x = x + pos
        bias, scale = self._bias(T, x.device), None
        if bias is not None:
            scale = self.alibi_scale.clamp_min(0)  # (L|1, 1, H|1, 1, 1)
            if scale.shape[0] == 1:
                bias, scale = bias * scale[0].type_as(bias), None
        if self.context_norm is not None:
            x = self.context_norm(x)
        x = self.prenet_dropout(x)
        hidden = [x]
        for i, block in enumerate(self.blocks):
            if i == c.prenet_depth:
                x = self.dropout_input(x)
            drop = c.prenet_layerdrop if i < c.prenet_depth else c.layerdrop
            if not (self.training and drop > 0 and float(torch.rand(())) < drop):
                x = block(x, pad, bias if scale is None else bias * scale[i].type_as(bias))
            hidden.append(x)
        if self.final_norm is not None:
            hidden[-1] = self.final_norm(x)
        return tuple(hidden), frame_mask
