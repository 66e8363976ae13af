"""fairseq data2vec 2.0 (``data2vec_multi``, AUDIO) checkpoints <-> ``Data2Vec2AudioEncoder``, without fairseq.
The one module that names this format's keys: it reads them (:func:`load_fairseq_data2vec2`,
:func:`is_fairseq_data2vec2`, :func:`data2vec2_config`; :func:`encoder_from_fairseq_state` for files that carry the
weights without the config, as the authors' released SylBoost ``.pth``) and writes them
(:func:`save_fairseq_style_data2vec2`).

The format (fairseq ``checkpoint_utils.save_state``; a pickle, read with fairseq's classes stubbed out as
``load_fairseq_hubert`` does — trusted files only):

* ``"cfg"``: a DictConfig; ``cfg.model`` is the Data2VecMultiConfig (``_name`` ``"data2vec_multi"``, which
  :func:`is_fairseq_data2vec2` looks for; depth, heads, widths, dropouts; ``supported_modality`` AUDIO) with the
  audio modality in ``cfg.model.modalities.audio`` (D2vAudioConfig: prenet depth, CNN spec, positional
  convolutions, ALiBi); ``cfg.task.normalize`` says whether the audio was normalised. Absent fields take fairseq's
  defaults (:data:`_MODEL_DEFAULTS`, :data:`_AUDIO_DEFAULTS`); ``${...}`` interpolations that cannot resolve
  offline count as absent;
* ``"model"``: the ``Data2VecMultiModel`` state dict, fairseq key names (:func:`fairseq_key`, this encoder ->
  fairseq): ``modality_encoders.AUDIO.`` + ``local_encoder.conv_layers.{i}`` (the CNN), ``project_features``,
  ``relative_positional_encoder``, ``context_encoder.blocks.{i}`` (the prenet blocks) / ``context_encoder.norm``,
  ``alibi_scale``; then ``blocks.{i}`` (the main blocks) and ``norm`` (pre-LN models). Pretraining-only weights —
  the EMA teacher ``_ema``, decoders, other modalities' encoders — are ignored; any other key the encoder does
  not use is an error naming the file;
* ``"args"`` (None), ``"task_state"``, ``"optimizer_history"``, ``"extra_state"``, ``"last_optimizer_state"``:
  fairseq's, ignored.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from syllablelm.checkpoints.fairseq import CheckpointError, load_fairseq_state, load_strict, to_plain
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config

_A = "modality_encoders.AUDIO."
_IGNORED = re.compile(r"_ema(\..*)?|ema\..*|decoder\..*|shared_decoder\..*|recon_proj\..*"
                      r"|modality_encoders\.AUDIO\.decoder\..*|modality_encoders\.(IMAGE|TEXT)\..*")
# fairseq Data2VecMultiConfig / D2vModalityConfig / D2vAudioConfig defaults, for keys a checkpoint does not store
_MODEL_DEFAULTS = dict(depth=8, num_heads=12, norm_eps=1e-6, norm_affine=True, encoder_dropout=0.1,
                       post_mlp_drop=0.1, attention_dropout=0.1, activation_dropout=0.0, dropout_input=0.0,
                       layerdrop=0.0, embed_dim=768, mlp_ratio=4.0, layer_norm_first=False)
_AUDIO_DEFAULTS = dict(prenet_depth=4, prenet_layerdrop=0.0, prenet_dropout=0.0, num_extra_tokens=0,
                       use_alibi_encoder=False, alibi_scale=1.0, learned_alibi=False, alibi_max_pos=None,
                       learned_alibi_scale=False, learned_alibi_scale_per_head=False,
                       learned_alibi_scale_per_layer=False, extractor_mode="layer_norm",
                       feature_encoder_spec="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
                       conv_pos_width=95, conv_pos_groups=16, conv_pos_depth=5, conv_pos_pre_ln=False)


def fairseq_key(key: str, c: Data2Vec2Config) -> str:
    """This encoder's parameter name -> fairseq Data2VecMultiModel's."""
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|norm)\.(\w+)", key)
    if m:
        i, part, p = m.groups()
        sub = "0" if part == "conv" else "2.1" if c.extractor_mode == "layer_norm" else "2"
        return f"{_A}local_encoder.conv_layers.{i}.{sub}.{p}"
    m = re.fullmatch(r"pos_convs\.(\d+)\.(\w+)", key)
    if m:  # Sequential(TransposeLast, *blocks, TransposeLast), wrapped in Sequential(LayerNorm, .) if pre-LN
        inner = f"{int(m.group(1)) + 1}.0.{m.group(2)}"
        return f"{_A}relative_positional_encoder.{'1.' if c.conv_pos_pre_ln else ''}{inner}"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m:
        i = int(m.group(1))
        if i < c.prenet_depth:
            return f"{_A}context_encoder.blocks.{i}.{m.group(2)}"
        return f"blocks.{i - c.prenet_depth}.{m.group(2)}"
    head, _, p = key.partition(".")
    fixed = {"feature_norm": "project_features.1", "feature_proj": "project_features.2",
             "pos_pre_ln": "relative_positional_encoder.0", "context_norm": "context_encoder.norm"}
    if head in fixed:
        return f"{_A}{fixed[head]}.{p}"
    if key in ("alibi_scale", "alibi_bias"):
        return _A + key
    if head == "final_norm":
        return f"norm.{p}"
    raise KeyError(f"no fairseq name for {key}")


def is_fairseq_data2vec2(path: str | Path) -> bool:
    """Whether a fairseq ``.pt`` is a data2vec 2.0 model (config ``_name``/``arch`` ``data2vec_multi``). A zip
    checkpoint is recognised from its pickle's text alone, without loading the weights."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is not None:
                return b"data2vec_multi" in z.read(name)
    return _model_name(load_fairseq_state(path)) == "data2vec_multi"


def _model_name(state: dict) -> str | None:
    if state.get("cfg") is not None:
        return (to_plain(state["cfg"]).get("model") or {}).get("_name")
    if state.get("args") is not None:
        return getattr(state["args"], "arch", None)
    return None


def data2vec2_config(state: dict, path) -> Data2Vec2Config:
    """The encoder config a fairseq data2vec 2.0 checkpoint's pickled ``cfg`` describes (``CheckpointError``
    naming ``path`` when it is not one)."""
    if _model_name(state) != "data2vec_multi":
        raise CheckpointError(f"{path}: not a fairseq data2vec 2.0 checkpoint (model _name/arch "
                              f"{_model_name(state)!r}, expected 'data2vec_multi')")
    if state.get("cfg") is None:
        raise CheckpointError(f"{path}: no 'cfg' in the checkpoint (data2vec 2.0 files are hydra-configured)")
    cfg = to_plain(state["cfg"])
    model, task = cfg.get("model") or {}, cfg.get("task") or {}
    audio = (model.get("modalities") or {}).get("audio") or {}
    modality = model.get("supported_modality")  # Modality.AUDIO: the name, or auto()'s value 1 once unpickled
    if modality is not None and modality != 1 and not str(modality).upper().endswith("AUDIO"):
        raise CheckpointError(f"{path}: supported_modality={model['supported_modality']!r}, not AUDIO")

    def get(src: dict, key: str, default):
        v = src.get(key)
        return default if v is None or (isinstance(v, str) and v.startswith("${")) else v
    if int(get(audio, "num_extra_tokens", 0)) or get(audio, "mlp_encoder", False):
        raise CheckpointError(f"{path}: num_extra_tokens > 0 / mlp_encoder audio encoders are not supported")
    values = {k: get(model, k, d) for k, d in _MODEL_DEFAULTS.items()}
    values.update({k: get(audio, k, d) for k, d in _AUDIO_DEFAULTS.items() if k != "num_extra_tokens"})
    values["layerdrop"], values["prenet_layerdrop"] = float(values["layerdrop"]), float(values["prenet_layerdrop"])
    if int(get(audio, "num_alibi_heads", values["num_heads"])) != int(values["num_heads"]):
        raise CheckpointError(f"{path}: num_alibi_heads != num_heads is not supported")
    return Data2Vec2Config(**values, normalize_waveform=bool(get(task, "normalize", False)))


def load_fairseq_data2vec2(path: str | Path) -> Data2Vec2AudioEncoder:
    """A fairseq data2vec 2.0 audio checkpoint (e.g. the released ``base_libri.pt``) -> ``Data2Vec2AudioEncoder``
    (config ``normalize_waveform`` = the pretraining task's ``normalize``). fairseq need not be installed."""
    state = load_fairseq_state(path)
    return encoder_from_fairseq_state(state.get("model") or {}, data2vec2_config(state, path), path)


def encoder_from_fairseq_state(model_state: dict, config: Data2Vec2Config, path) -> Data2Vec2AudioEncoder:
    """A ``Data2Vec2AudioEncoder(config)`` holding a fairseq ``Data2VecMultiModel`` state dict (fairseq key names,
    no prefix). Pretraining-only keys are ignored; a missing, unexpected or mis-shaped key raises
    ``CheckpointError`` naming ``path`` (for files that carry their weights but not their config)."""
    encoder = Data2Vec2AudioEncoder(config)
    names = {fairseq_key(k, config): k for k in encoder.state_dict()}
    mapped, unexpected = {}, []
    for key, value in model_state.items():
        if key in names:
            if key == _A + "alibi_scale" and value.dim() == 4:  # fairseq upgrade_state_dict_named
                value = value.unsqueeze(0)
            mapped[names[key]] = value
        elif not _IGNORED.fullmatch(key):
            unexpected.append(key)
    load_strict(encoder, mapped, unexpected, path)
    return encoder


def save_fairseq_style_data2vec2(model: Data2Vec2AudioEncoder, path: str | Path, *,
                                 pretraining_keys: bool = True) -> None:
    """Write ``model`` as fairseq's ``data2vec_multi`` would: its key names and shapes, a DictConfig ``cfg`` with
    ``model`` (Data2VecMultiConfig fields, ``modalities.audio`` = D2vAudioConfig fields) and ``task``
    (audio_pretraining). ``pretraining_keys`` adds an EMA teacher (``_ema``) and decoder weights, as a real
    pretraining checkpoint has them."""
    from omegaconf import OmegaConf

    c = model.config
    if len(model.blocks) != c.num_layers:
        raise ValueError("a truncated encoder cannot be written as a fairseq checkpoint")
    sd = {fairseq_key(k, c): v.detach().clone() for k, v in model.state_dict().items()}
    if pretraining_keys:
        sd["_ema"] = {k: v.clone() for k, v in sd.items() if k.startswith("blocks.")}
        sd[_A + "decoder.blocks.0.0.weight"] = torch.randn(8, c.embed_dim // 4, 3)
        sd[_A + "decoder.proj.weight"] = torch.randn(c.embed_dim, 8)
    audio = {k: getattr(c, k) for k in _AUDIO_DEFAULTS if k != "num_extra_tokens"}
    audio.update(type="AUDIO", num_extra_tokens=0, mask_prob=0.5, mask_length=5, mask_noise_std=0.01,
                 inverse_mask=False, ema_local_encoder=False, num_alibi_heads="${model.num_heads}",
                 model_depth="${model.depth}",
                 decoder=dict(decoder_dim=384, decoder_groups=16, decoder_kernel=7, decoder_layers=4,
                              input_dropout=0.1, add_positions_masked=False, add_positions_all=False,
                              decoder_residual=True, projection_layers=1, projection_ratio=2.0))
    model_cfg = dict(_name="data2vec_multi", **{k: getattr(c, k) for k in _MODEL_DEFAULTS}, loss_beta=0.0,
                     loss_scale=None, average_top_k_layers=8, clone_batch=8, ema_decay=0.999,
                     ema_end_decay=0.99999, ema_anneal_end_step=75000, ema_encoder_only=False,
                     instance_norm_target_layer=True, max_update="${optimization.max_update}",
                     supported_modality="AUDIO", seed="${common.seed}", skip_ema=False,
                     start_drop_path_rate=0.0, end_drop_path_rate=0.0,
                     modalities=dict(audio=audio, image=dict(type="IMAGE"), text=dict(type="TEXT")))
    task = dict(_name="audio_pretraining", data="", max_sample_size=320000, min_sample_size=32000,
                normalize=c.normalize_waveform, sample_rate=16000, labels=None)
    cfg = OmegaConf.create({"_name": None, "common": {"seed": 1337, "fp16": True},
                            "optimization": {"max_update": 400000}, "model": model_cfg, "task": task})
    torch.save({"args": None, "cfg": cfg, "model": sd, "optimizer_history": [], "extra_state": {},
                "last_optimizer_state": None, "task_state": {}}, str(path))


