"""fairseq HuBERT pretraining checkpoints (with the masked-prediction head) <-> ``HubertTeacher``, without fairseq.
The one module that names this format's keys: it reads them (:func:`load_fairseq_hubert`,
:func:`describe_fairseq_hubert`) and writes them (:func:`save_fairseq_style_checkpoint`: round-trip tests, and a
way to hand a teacher to fairseq tooling).

The format (fairseq ``checkpoint_utils.save_state``; a pickle, read by :mod:`syllablelm.checkpoints.fairseq` with
fairseq's classes stubbed out — trusted files only):

* ``"model"``: the ``HubertModel`` state dict, fairseq key names (:data:`KEY_MAP`, fairseq -> ``HubertTeacher``):
  the CNN ``feature_extractor.conv_layers.{i}`` (norm at ``.2`` for ``extractor_mode="default"``, ``.2.1`` for
  ``"layer_norm"``), ``layer_norm`` / ``post_extract_proj`` (absent when the CNN width is the model width),
  ``mask_emb``, the weight-normed ``encoder.pos_conv.0`` (``weight_g`` / ``weight_v``), ``encoder.layers.{i}``,
  ``encoder.layer_norm``, and the head: ``final_proj`` (one chunk per label set when ``untie_final_proj``) and
  ``label_embs_concat`` (every label set's rows, each set's 4 special symbols first);
* ``"cfg"`` (fairseq >= 0.10: a DictConfig with ``model`` and ``task`` groups) or ``"args"`` (older: an argparse
  Namespace): the settings :func:`hubert_config` reads (defaults for absent ones: :data:`_FAIRSEQ_DEFAULTS`);
  ``task.normalize`` says whether the audio was normalised, ``label_rate`` must be the CNN's frame rate
  (50 Hz for HuBERT's CNN; 25 Hz for mHuBERT-25Hz's, one more stride-2 layer: a warning otherwise);
* ``"task_state"["dictionaries"]``: one pickled ``fairseq.data.dictionary.Dictionary`` per label set
  (``symbols``, ``indices``, ``nspecial`` = 4): where each k-means label's row is in ``label_embs_concat``;
* ``"optimizer_history"``, ``"extra_state"``, ``"last_optimizer_state"``: fairseq's, ignored.

``CheckpointError`` lists every missing, unexpected or mis-shaped key instead of skipping it.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import types
import warnings
from pathlib import Path

import torch

from syllablelm.audio.frames import FrameGeometry
from syllablelm.checkpoints.fairseq import CheckpointError, load_fairseq_state, load_strict, map_key, to_plain
from syllablelm.models.common import parse_conv_spec
from syllablelm.models.hubert import HubertTeacher, TeacherConfig

# (fairseq key, HubertTeacher key); {i} layer index, {p} weight|bias, {n} q|k|v|out.
CONV_NORM_GROUP = ("feature_extractor.conv_layers.{i}.2.{p}",  # GroupNorm, extractor_mode "default" (block 0)
                    "encoder.feature_extractor.conv_layers.{i}.layer_norm.{p}")
CONV_NORM_LAYER = ("feature_extractor.conv_layers.{i}.2.1.{p}",  # (TransposeLast, LayerNorm, ...), "layer_norm"
                    "encoder.feature_extractor.conv_layers.{i}.layer_norm.{p}")
_POS = "encoder.encoder.pos_conv_embed.conv."  # weight_norm(dim=2) as a torch parametrization in transformers 5
_LAYER = "encoder.encoder.layers.{i}."
KEY_MAP = [
    ("feature_extractor.conv_layers.{i}.0.{p}", "encoder.feature_extractor.conv_layers.{i}.conv.{p}"),
    CONV_NORM_GROUP, CONV_NORM_LAYER,
    ("layer_norm.{p}", "encoder.feature_projection.layer_norm.{p}"),  # LN on the CNN output
    ("post_extract_proj.{p}", "encoder.feature_projection.projection.{p}"),  # absent if CNN dim == embed dim
    ("mask_emb", "encoder.masked_spec_embed"),
    ("encoder.pos_conv.0.weight_g", _POS + "parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", _POS + "parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", _POS + "bias"),
    ("encoder.layers.{i}.self_attn.{n}_proj.{p}", _LAYER + "attention.{n}_proj.{p}"),
    ("encoder.layers.{i}.self_attn_layer_norm.{p}", _LAYER + "layer_norm.{p}"),
    ("encoder.layers.{i}.fc1.{p}", _LAYER + "feed_forward.intermediate_dense.{p}"),
    ("encoder.layers.{i}.fc2.{p}", _LAYER + "feed_forward.output_dense.{p}"),
    ("encoder.layers.{i}.final_layer_norm.{p}", _LAYER + "final_layer_norm.{p}"),
    ("encoder.layer_norm.{p}", "encoder.encoder.layer_norm.{p}"),
    ("final_proj.{p}", "final_proj.{p}"),  # untie_final_proj: the chosen label set's chunk
    ("label_embs_concat", "label_embs"),  # the chosen label set's rows, reordered so label k is row k + 4
]
# fairseq HubertConfig / HubertPretrainingConfig defaults, for keys an old checkpoint does not store.
_FAIRSEQ_DEFAULTS = dict(
    encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
    activation_fn="gelu", extractor_mode="default",
    conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", conv_bias=False, final_dim=0,
    layer_norm_first=False, conv_pos=128, conv_pos_groups=16, logit_temp=0.1,
    dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
    feature_grad_mult=1.0, untie_final_proj=False, target_glu=False, label_rate=50, normalize=False)
ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "relu": "relu", "tanh": "tanh", "linear": "linear"}
NUM_SPECIAL = 4  # fairseq Dictionary: <s>, <pad>, </s>, <unk>


def hubert_config(state: dict, path) -> dict:
    """Flat dict of model + task settings from ``cfg`` (fairseq >= 0.10, DictConfig/dict) or ``args`` (Namespace)."""
    if state.get("cfg") is not None:
        cfg = to_plain(state["cfg"])
        flat = {**(cfg.get("model") or {}), **(cfg.get("task") or {})}  # `normalize` and `label_rate` are task's
    elif state.get("args") is not None:
        flat = to_plain(state["args"])
    else:
        raise CheckpointError(f"{path}: neither 'cfg' nor 'args' in the checkpoint (keys: {sorted(state)})")
    return {k: default if flat.get(k) is None else flat[k] for k, default in _FAIRSEQ_DEFAULTS.items()}


def _label_rows(state: dict, rows: int, label_set: int, path) -> tuple[slice, list[int] | None, int]:
    """Where the chosen label set lives in ``label_embs_concat`` and the row of each k-means label k."""
    dicts = (state.get("task_state") or {}).get("dictionaries")
    if not dicts:
        warnings.warn(f"{path}: no dictionary in task_state; assuming one label set with {NUM_SPECIAL} special "
                      f"symbols first (label k = row k + {NUM_SPECIAL})", stacklevel=3)
        return slice(0, rows), None, 1
    sizes = [len(d.symbols) for d in dicts]
    if not 0 <= label_set < len(dicts):
        raise CheckpointError(f"{path}: label_set={label_set} but the checkpoint has {len(dicts)} label set(s)")
    if sum(sizes) != rows:
        raise CheckpointError(f"{path}: label_embs_concat has {rows} rows, dictionaries hold {sizes}")
    d, start = dicts[label_set], sum(sizes[:label_set])
    nspecial = getattr(d, "nspecial", NUM_SPECIAL)
    if nspecial != NUM_SPECIAL:
        raise CheckpointError(f"{path}: dictionary has {nspecial} special symbols, expected {NUM_SPECIAL}")
    K = len(d.symbols) - nspecial
    try:
        order = [d.indices[str(k)] for k in range(K)]  # a dictionary may list the labels in any order
    except KeyError as e:
        raise CheckpointError(f"{path}: dictionary symbols are not the k-means ids 0..{K - 1} ({e})") from None
    return slice(start, start + len(d.symbols)), order, len(dicts)


def load_fairseq_hubert(path: str | Path, *, map_location="cpu", label_set: int = 0) -> HubertTeacher:
    """A fairseq HuBERT pretraining checkpoint -> ``HubertTeacher`` with its head (``label_offset=4``).
    fairseq need not be installed. Trusted files only: unpickling runs code (see the module docstring)."""
    state = load_fairseq_state(path, map_location)
    c = hubert_config(state, path)
    if c["target_glu"]:
        raise CheckpointError(f"{path}: target_glu=True checkpoints are not supported")
    if c["activation_fn"] not in ACTIVATIONS:
        raise CheckpointError(f"{path}: unsupported activation_fn {c['activation_fn']!r}")
    layers = parse_conv_spec(c["conv_feature_layers"])
    grid = FrameGeometry.from_conv([k for _, k, _ in layers], [s for _, _, s in layers])
    if float(c["label_rate"]) != grid.hz:  # mHuBERT-25Hz: an extra stride-2 layer, label_rate 25, hop 640
        warnings.warn(f"{path}: label_rate={c['label_rate']} but the CNN's frames are {grid.hz:g} Hz (hop "
                      f"{grid.hop}); labels must be resampled", stacklevel=2)
    sd = dict(state.get("model") or {})
    for key in ("final_proj.weight", "label_embs_concat"):
        if key not in sd:
            raise CheckpointError(f"{path}: no '{key}': not a HuBERT pretraining checkpoint with its head "
                                  "(fine-tuned checkpoints drop it; fairseq keys found: "
                                  f"{sorted(sd)[:8]}...)")
    rows, order, n_sets = _label_rows(state, sd["label_embs_concat"].shape[0], label_set, path)
    embs = sd.pop("label_embs_concat")[rows]  # (K + 4, F)
    if order is not None:  # specials first, then label k at row k + 4
        embs = torch.cat([embs[:NUM_SPECIAL], embs[order]])
    if c["untie_final_proj"] and n_sets > 1:  # one projection chunk per label set
        sd["final_proj.weight"] = sd["final_proj.weight"].chunk(n_sets, 0)[label_set]
        sd["final_proj.bias"] = sd["final_proj.bias"].chunk(n_sets, 0)[label_set]
    embed = int(c["encoder_embed_dim"])
    cfg = TeacherConfig(
        hidden_size=embed, num_hidden_layers=int(c["encoder_layers"]),
        num_attention_heads=int(c["encoder_attention_heads"]), intermediate_size=int(c["encoder_ffn_embed_dim"]),
        hidden_act=ACTIVATIONS[c["activation_fn"]], conv_dim=[d for d, _, _ in layers],
        conv_kernel=[k for _, k, _ in layers], conv_stride=[s for _, _, s in layers], conv_bias=bool(c["conv_bias"]),
        feat_extract_norm="layer" if c["extractor_mode"] == "layer_norm" else "group",
        do_stable_layer_norm=bool(c["layer_norm_first"]), num_conv_pos_embeddings=int(c["conv_pos"]),
        num_conv_pos_embedding_groups=int(c["conv_pos_groups"]), hidden_dropout=float(c["dropout"]),
        attention_dropout=float(c["attention_dropout"]), activation_dropout=float(c["activation_dropout"]),
        feat_proj_dropout=float(c["dropout_input"]), layerdrop=float(c["encoder_layerdrop"]),
        num_labels=embs.shape[0] - NUM_SPECIAL, final_dim=int(c["final_dim"]) or embed,
        logit_temp=float(c["logit_temp"]), label_offset=NUM_SPECIAL, normalize_waveform=bool(c["normalize"]),
        feature_grad_mult=float(c["feature_grad_mult"]))
    teacher = HubertTeacher(cfg)
    if "post_extract_proj.weight" not in sd and layers[-1][0] == embed:  # fairseq skips an identity projection
        sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = torch.eye(embed), torch.zeros(embed)
    mapped, unexpected = {"label_embs": embs}, []
    for key, value in sd.items():
        target = map_key(key, KEY_MAP, 0, 1)
        if target is None:
            unexpected.append(key)
        else:
            mapped[target] = value  # fp16 tensors are cast by load_state_dict
    load_strict(teacher, mapped, unexpected, path)
    return teacher


def describe_fairseq_hubert(path: str | Path) -> dict:
    """``{"layers", "hidden", "normalize", "has_head", "num_labels"}`` of a fairseq HuBERT checkpoint, from its
    config and key names (``num_labels``: rows of ``label_embs_concat`` less the 4 specials; None without a
    head). ``CheckpointError`` names the file when it is unreadable or not a fairseq checkpoint."""
    try:
        state = load_fairseq_state(path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable fairseq checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: no 'model' state: not a fairseq checkpoint")
    c, sd = hubert_config(state, path), state["model"]
    return {"layers": int(c["encoder_layers"]), "hidden": int(c["encoder_embed_dim"]),
            "normalize": bool(c["normalize"]), "has_head": "final_proj.weight" in sd,
            "num_labels": sd["label_embs_concat"].shape[0] - NUM_SPECIAL if "label_embs_concat" in sd else None}


# ---- writing ------------------------------------------------------------------------------------------------
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
