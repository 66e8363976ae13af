"""Model FLOPs per batch, by formula (docs/algorithms.md, "Throughput"): what MFU divides by the device's peak.

One multiply-accumulate is 2 FLOPs; only matrix products and convolutions count (norms, activations, softmax and
the DP are left out, as MFU conventionally does). Training costs 3x the forward (backward = 2x) for the parts that
train; a frozen part that runs costs its forward only. ``tests/test_flops.py`` checks every formula against
``torch.utils.flop_counter.FlopCounterMode`` on real (tiny) networks.

* CNN front end (HuBERT's 7 conv layers): ``sum_l 2 * C_in * C_out * k_l * T_l`` with ``T_l`` the layer's output
  frames (``T_l = (T_{l-1} - k_l) // s_l + 1``).
* Feature projection: ``2 * T * C * d``. Positional convolution (grouped, kernel K, G groups): ``2 * T * d * (d/G) *
  K`` (HF's same-padding conv emits T + 1 frames for even K: counted as T + 1).
* Transformer layer over T frames of width d, FFN width f: projections ``2 * T * (4 d^2 + 2 d f)``; attention
  scores and mixing ``2 * 2 * T * T * d`` (``T_k`` keys for a decode step).
* Heads: HuBERT ``2 * T * d * F + 2 * T * F * R`` (projection, cosine against R label rows); the LM
  ``2 * T * d * (V + 1)`` (the tied output projection).
"""
from __future__ import annotations

from collections.abc import Sequence


def conv_frontend(num_samples: int, conv_dim: Sequence[int], conv_kernel: Sequence[int],
                  conv_stride: Sequence[int]) -> int:
    """Forward FLOPs of the CNN for one utterance of ``num_samples`` samples (mono input)."""
    total, length, c_in = 0, int(num_samples), 1
    for c_out, k, s in zip(conv_dim, conv_kernel, conv_stride):
        length = (length - k) // s + 1
        if length <= 0:
            return total
        total += 2 * c_in * c_out * k * length
        c_in = c_out
    return total


def transformer(frames: int, d_model: int, n_layer: int, d_ff: int, keys: int | None = None) -> int:
    """Forward FLOPs of ``n_layer`` layers over ``frames`` positions attending to ``keys`` (default: frames)."""
    keys = frames if keys is None else keys
    per_layer = 2 * frames * (4 * d_model * d_model + 2 * d_model * d_ff) + 4 * frames * keys * d_model
    return n_layer * per_layer


def positional_conv(frames: int, d_model: int, kernel: int, groups: int) -> int:
    """Forward FLOPs of HuBERT's grouped positional convolution (same padding: ``frames + 1`` outputs for an even
    kernel, as HF computes it before trimming)."""
    out = frames + 1 if kernel % 2 == 0 else frames
    return 2 * out * d_model * (d_model // groups) * kernel


def hubert_forward(num_samples: int, config, *, layers: int | None = None, head_rows: int | None = None,
                   cnn: bool = True) -> int:
    """Forward FLOPs of a HuBERT-shaped encoder (a :class:`~syllablelm.models.hubert.TeacherConfig`, an HF HuBERT /
    wav2vec 2.0 config, or such a config as a dict) on one utterance: CNN (unless ``cnn=False``), projection,
    positional conv, ``layers`` transformer layers (default all) and, with ``head_rows``, the masked-prediction
    head against that many label rows."""
    from syllablelm.audio.frames import num_frames

    if isinstance(config, dict):
        from types import SimpleNamespace

        config = SimpleNamespace(**config)
    T = num_frames(num_samples)
    d = config.hidden_size
    total = conv_frontend(num_samples, config.conv_dim, config.conv_kernel, config.conv_stride) if cnn else 0
    total += 2 * T * config.conv_dim[-1] * d
    total += positional_conv(T, d, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups)
    total += transformer(T, d, config.num_hidden_layers if layers is None else layers, config.intermediate_size)
    if head_rows is not None:
        total += 2 * T * d * config.final_dim + 2 * T * config.final_dim * head_rows
    return total


def gpt_forward(batch: int, seq_len: int, config, keys: int | None = None) -> int:
    """Forward FLOPs of a :class:`~syllablelm.models.gpt.GPTConfig` decoder on ``batch`` sequences of ``seq_len``
    tokens (``keys``: cached positions attended, for a decode step), the tied output projection included."""
    d = config.n_embd
    per_sequence = transformer(seq_len, d, config.n_layer, 4 * d, keys) + 2 * seq_len * d * (config.vocab_size + 1)
    return batch * per_sequence


def training(forward_trained: int, forward_frozen: int = 0) -> int:
    """FLOPs of a training step: 3x the trained part's forward, 1x a frozen part that runs."""
    return 3 * int(forward_trained) + int(forward_frozen)
