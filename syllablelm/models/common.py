"""Pieces every speech encoder wrapper shares: waveform normalisation and what a checkpoint was trained with."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import torch


def normalize_waves(waves: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero mean / unit variance per utterance over its real samples (HF's Wav2Vec2FeatureExtractor: eps 1e-7);
    padding stays 0."""
    valid = torch.ones_like(waves, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    n = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    mean = (waves * valid).sum(-1, keepdim=True) / n
    var = (((waves - mean) * valid) ** 2).sum(-1, keepdim=True) / n
    return ((waves - mean) / torch.sqrt(var + 1e-7)) * valid


def pretrained_normalization(path: str | Path, config) -> bool:
    """Whether an HF model directory's checkpoint was pretrained on normalised audio: its
    ``preprocessor_config.json`` ``do_normalize``, else HuBERT-Large-style layer-norm CNNs do and others don't."""
    pre = Path(path) / "preprocessor_config.json"
    if pre.exists():
        return bool(json.loads(pre.read_text()).get("do_normalize", False))
    return getattr(config, "feat_extract_norm", "group") == "layer"


def parse_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's ``[(dim, kernel, stride), ...]`` expression (lists, tuples, ``+``, ``*``) without ``eval``."""
    def ev(node):
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported conv layer spec (conv_feature_layers / feature_encoder_spec): {spec!r}")
    return [tuple(layer) for layer in ev(ast.parse(spec, mode="eval").body)]


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a network this project builds, or of a wrapper around one: ``HubertModel``'s
    ``encoder.layers``, the data2vec 2.0 encoder's ``blocks``, the GPT decoder's ``transformer.h``."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and (f".{name}").endswith((".encoder.layers", ".blocks",
                                                                              ".transformer.h")):
            return module
    raise TypeError(f"no transformer layers found in {type(model).__name__}")


def compile_layers(model: torch.nn.Module, **options) -> int:
    """``torch.compile`` each transformer layer of ``model`` in place (``nn.Module.compile``: parameter names and
    checkpoints stay as they are; variable lengths compile once with ``dynamic=True``). Opt-in: compiled kernels
    round differently from eager ones. Returns the number of layers compiled."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(**{"dynamic": True, **options})
    return len(blocks)
