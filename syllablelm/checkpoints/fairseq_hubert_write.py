"""Writes this project's HuBERT teachers as fairseq-style ``.pt`` files (key names, config layouts, a pickled
``Dictionary``): the round trips that test :func:`syllablelm.checkpoints.load_fairseq_hubert` without fairseq, and
a way to hand a teacher to fairseq tooling."""
from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path

import torch

from syllablelm.checkpoints.fairseq import map_key
from syllablelm.checkpoints.fairseq_hubert import ACTIVATIONS, CONV_NORM_GROUP, CONV_NORM_LAYER, KEY_MAP, NUM_SPECIAL
from syllablelm.models.hubert import HubertTeacher


@contextlib.contextmanager
def _fake_fairseq_dictionary_module():
    """``fairseq.data.dictionary.Dictionary`` importable just long enough to pickle a Dictionary-shaped object."""
    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary")
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    mods["fairseq.data.dictionary"].Dictionary = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
    sys.modules.update(mods)
    try:
        yield mods["fairseq.data.dictionary"].Dictionary
    finally:
        for n, m in saved.items():
            sys.modules.pop(n) if m is None else sys.modules.__setitem__(n, m)


def save_fairseq_style_checkpoint(teacher: HubertTeacher, path: str | Path, *, style: str = "cfg",
                                  label_rate: int = 50) -> None:
    """Write ``teacher`` with fairseq HuBERT's key names, shapes, config layout (``style``: "cfg" = DictConfig
    with model/task groups, "args" = old argparse Namespace) and a pickled ``fairseq.data.dictionary.Dictionary``
    in ``task_state`` (labels "0".."K-1" after the 4 specials). A teacher without the offset gets 4 random
    special rows prepended, as fairseq's table has them."""
    from omegaconf import OmegaConf

    c = teacher.config
    if c.label_offset not in (0, NUM_SPECIAL):
        raise ValueError(f"label_offset must be 0 or {NUM_SPECIAL}, got {c.label_offset}")
    table = [e for e in KEY_MAP if e is not (CONV_NORM_GROUP if c.feat_extract_norm == "layer" else CONV_NORM_LAYER)]
    sd = {}
    for key, value in teacher.state_dict().items():
        target = map_key(key, table, 1, 0)
        if target is None:
            raise ValueError(f"no fairseq name for {key}")
        sd[target] = value.detach().clone()
    if c.label_offset == 0:
        specials = torch.rand(NUM_SPECIAL, c.final_dim, generator=torch.Generator().manual_seed(0))
        sd["label_embs_concat"] = torch.cat([specials, sd["label_embs_concat"]])
    inv_act = {v: k for k, v in ACTIVATIONS.items()}
    model = dict(
        _name="hubert", label_rate=label_rate,
        extractor_mode="layer_norm" if c.feat_extract_norm == "layer" else "default",
        encoder_layers=c.num_hidden_layers, encoder_embed_dim=c.hidden_size, encoder_ffn_embed_dim=c.intermediate_size,
        encoder_attention_heads=c.num_attention_heads, activation_fn=inv_act[c.hidden_act],
        dropout=c.hidden_dropout, attention_dropout=c.attention_dropout, activation_dropout=c.activation_dropout,
        encoder_layerdrop=c.layerdrop, dropout_input=c.feat_proj_dropout, final_dim=c.final_dim,
        untie_final_proj=False, layer_norm_first=c.do_stable_layer_norm, conv_bias=c.conv_bias,
        conv_feature_layers="[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in
                                            zip(c.conv_dim, c.conv_kernel, c.conv_stride)) + "]",
        logit_temp=c.logit_temp, target_glu=False, feature_grad_mult=c.feature_grad_mult, mask_prob=0.8,
        mask_length=10, conv_pos=c.num_conv_pos_embeddings, conv_pos_groups=c.num_conv_pos_embedding_groups)
    task = dict(_name="hubert_pretraining", data="", labels=["km"], label_rate=label_rate, sample_rate=16000,
                normalize=c.normalize_waveform)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(k) for k in range(c.num_labels)]
    ckpt = {"model": sd, "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}
    if style == "cfg":
        ckpt.update(args=None, cfg=OmegaConf.create({"_name": None, "common": {"seed": 1337}, "model": model,
                                                     "task": task}))
    elif style == "args":
        ckpt["args"] = argparse.Namespace(arch="hubert", task="hubert_pretraining",
                                          **{k: v for k, v in {**task, **model}.items() if k != "_name"})
    else:
        raise ValueError(f"style must be 'cfg' or 'args', got {style!r}")
    with _fake_fairseq_dictionary_module() as Dictionary:
        d = Dictionary()
        d.__dict__.update(bos_word="<s>", unk_word="<unk>", pad_word="<pad>", eos_word="</s>", symbols=symbols,
                          count=[1] * len(symbols), indices={s: i for i, s in enumerate(symbols)}, bos_index=0,
                          pad_index=1, eos_index=2, unk_index=3, nspecial=NUM_SPECIAL)
        ckpt["task_state"] = {"dictionaries": [d]}
        torch.save(ckpt, str(path))
