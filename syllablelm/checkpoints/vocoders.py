"""Unit vocoder files (issue 29, item 3), the owner of their keys: textless-lib's code HiFi-GAN checkpoints and this
suite's shipped iSTFT vocoder. Neither needs textless-lib, fairseq or Lightning.

textless-lib / speech-resynthesis format (what TWIST released as ``hifigan_lj_mhubert_base_25hz.pt`` +
``hifigan_lj_mhubert_base_25hz_config.json``):

* a ``torch.save`` dict whose ``"generator"`` entry is the ``CodeGenerator`` state dict: ``dict.weight`` (unit
  embedding), ``conv_pre``, ``ups.{i}``, ``resblocks.{i*K+j}.convs1.{m}`` / ``.convs2.{m}`` (``.convs.{m}`` for
  resblock "2"), ``conv_post`` — each convolution weight-normed as ``weight_g`` (``(out_or_in, 1, 1)``) +
  ``weight_v`` + ``bias`` — and, optionally, ``dur_predictor.conv1.0``, ``.ln1``, ``.conv2.0``, ``.ln2``, ``.proj``;
* a JSON config beside it (textless-lib's keys: ``upsample_rates``, ``upsample_kernel_sizes``,
  ``upsample_initial_channel``, ``resblock``, ``resblock_kernel_sizes``, ``resblock_dilation_sizes``,
  ``num_embeddings``, ``embedding_dim``, ``model_in_dim``, ``dur_predictor_params`` {``encoder_embed_dim``,
  ``var_pred_hidden_dim``, ``var_pred_kernel_size``, ``var_pred_dropout``}, ``sampling_rate``, ...).

Residual-block kind: the config's ``resblock`` ("1" or "2"; anything else is a :class:`CheckpointError` naming the
config file) picks ResBlock1 (``convs1``/``convs2`` keys) or ResBlock2 (``convs`` keys). textless-lib's generator
ignores that field and always builds ResBlock1, so a file it runs can carry a config saying "2" over ResBlock1
weights; when the weights' key names show one kind and the config names the other, the weights decide (with a
warning naming both files).

Weight norm is folded once at load: ``weight = g * v / ||v||``, the norm over every dimension but the first (torch's
``weight_norm(dim=0)``, for transposed convolutions too); weights already folded (``weight``) or in torch's
parametrized form (``parametrizations.weight.original0`` = g, ``original1`` = v) load as well.

This suite's vocoder checkpoint (``experiments/pretrained/vocoder.ckpt``, from :mod:`lightning_modules.vocoder`):
a Lightning checkpoint with ``hyper_parameters["vocoder"]`` (the :class:`ISTFTVocoderConfig` fields) and
``state_dict["vocoder.*"]``; :func:`strip_vocoder_checkpoint` drops the optimizer, loss buffers and loop state.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.checkpoints.suite import HYPER_PARAMETERS, STATE_DICT  # Lightning's keys
from syllablelm.models.code_hifigan import CodeHiFiGAN, check_resblock
from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig
from syllablelm.models.vocoder import UnitVocoder
from syllablelm.runtime.fileio import atomic_write

GENERATOR = "generator"  # textless-lib: the generator's state dict
VOCODER = "vocoder"  # this suite: hyper-parameter (ISTFTVocoderConfig) and state-dict prefix
CONFIG_SUFFIXES = ("_config.json", "-config.json", ".json")  # TWIST / textless-lib names for the config beside
# generator state keys that only one residual-block kind has: ResBlock1 "convs1"/"convs2", ResBlock2 "convs"
RESBLOCK_KEYS = {"1": re.compile(r"^resblocks\.\d+\.convs[12]\."), "2": re.compile(r"^resblocks\.\d+\.convs\.")}


def _read(path: str | Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such vocoder checkpoint") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
        raise CheckpointError(f"{path}: not a readable vocoder checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a vocoder checkpoint (a {type(obj).__name__}, not a dict)")
    return obj


def find_textless_config(checkpoint_file: str | Path) -> Path:
    """The JSON config beside a textless-lib checkpoint: ``<stem>_config.json``, ``<stem>-config.json``,
    ``<stem>.json`` or ``config.json`` in its folder (the first that exists)."""
    p = Path(checkpoint_file)
    candidates = [p.with_name(p.stem + s) for s in CONFIG_SUFFIXES] + [p.with_name("config.json")]
    for c in candidates:
        if c.is_file():
            return c
    raise CheckpointError(f"{p}: no JSON config beside it (looked for {', '.join(c.name for c in candidates)}); "
                          "pass config_json")


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``*.weight_g`` + ``*.weight_v`` (and torch's ``*.parametrizations.weight.original0/1``) -> ``*.weight`` =
    ``g * v / ||v||`` with the norm over all dimensions but the first."""
    out, pairs = {}, {}
    for k, v in state.items():
        for g_name, v_name in ((".weight_g", ".weight_v"),
                               (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if k.endswith(g_name) or k.endswith(v_name):
                base = k[: -len(g_name)] if k.endswith(g_name) else k[: -len(v_name)]
                pairs.setdefault(base, {})["g" if k.endswith(g_name) else "v"] = v
                break
        else:
            out[k] = v
    for base, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise ValueError(f"{base}: weight-norm pair incomplete (has only {sorted(gv)})")
        g, v = gv["g"].float(), gv["v"].float()
        norm = v.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (v.dim() - 1)))
        if g.numel() != v.shape[0]:
            raise ValueError(f"{base}: weight_g has {g.numel()} values for {v.shape[0]} output slices")
        out[base + ".weight"] = v * (g.reshape(norm.shape) / norm)
    return out


def _load_strict(model: torch.nn.Module, state: dict, path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})" for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if shapes:
            parts.append(f"wrong shapes {shapes[:4]}{' ...' if len(shapes) > 4 else ''}")
        raise CheckpointError(f"{path}: weights do not fit the vocoder its config describes: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_textless_vocoder(checkpoint_file: str | Path, config_json: str | Path | None = None) -> CodeHiFiGAN:
    """A :class:`CodeHiFiGAN` from a textless-lib checkpoint (state under ``"generator"``) and its JSON config
    (``None``: :func:`find_textless_config`), in eval mode. :class:`CheckpointError` names the file and problem."""
    path = Path(checkpoint_file)
    config_path = Path(config_json) if config_json is not None else find_textless_config(path)
    cfg = _read_config(config_path)
    return _textless_from(_read(path), cfg, path, config_path)


def _read_config(config_path: Path) -> dict:
    try:
        cfg = json.loads(Path(config_path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: not a readable JSON config ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{config_path}: the config is a {type(cfg).__name__}, not a JSON object")
    return cfg


def _textless_from(ckpt: dict, cfg: dict, path, config_path) -> CodeHiFiGAN:
    if GENERATOR not in ckpt or not isinstance(ckpt[GENERATOR], dict):
        raise CheckpointError(f"{path}: no generator state under {GENERATOR!r} (keys {sorted(ckpt)[:10]}); not a "
                              "textless-lib / speech-resynthesis vocoder checkpoint")
    try:
        kind = check_resblock(cfg)  # a bad value is refused whatever the weights hold; the rest when building
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    try:
        state = fold_weight_norm(ckpt[GENERATOR])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    held = weights_resblock(state)
    if held is not None and held != kind:
        warnings.warn(f"{config_path}: resblock {cfg.get('resblock')!r}, but the weights in {path} are ResBlock{held} "
                      f"(keys {'convs1/convs2' if held == '1' else 'convs'}); building ResBlock{held} from the weights "
                      "(textless-lib ignores the config's resblock)", stacklevel=3)
        cfg = dict(cfg, resblock=held)
    try:
        model = CodeHiFiGAN(cfg)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    _load_strict(model, state, path)
    return model.eval()


def weights_resblock(state: dict) -> str | None:
    """The residual-block kind ("1" or "2") a generator state dict holds, from its key names; ``None`` when it has
    no residual-block keys or keys of both kinds (then the strict load reports the mismatch)."""
    kinds = {kind for k in state for kind, pattern in RESBLOCK_KEYS.items() if pattern.match(k)}
    return kinds.pop() if len(kinds) == 1 else None


def load_suite_vocoder(ckpt: dict, path) -> ISTFTVocoder:
    hp = ckpt.get(HYPER_PARAMETERS) or {}
    if VOCODER not in hp:
        raise CheckpointError(f"{path}: no hyper_parameters[{VOCODER!r}]; not a vocoder checkpoint of this suite")
    try:
        model = ISTFTVocoder(ISTFTVocoderConfig.from_dict(dict(hp[VOCODER])))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad vocoder hyper-parameters ({e})") from e
    prefix = VOCODER + "."
    state = {k[len(prefix):]: v for k, v in (ckpt.get(STATE_DICT) or {}).items() if k.startswith(prefix)}
    _load_strict(model, state, path)
    return model.eval()


def vocoder_format(ckpt: dict) -> str | None:
    """``"textless"``, ``"suite"`` or ``None`` for a loaded checkpoint dict."""
    if isinstance(ckpt.get(GENERATOR), dict):
        return "textless"
    if STATE_DICT in ckpt and VOCODER in (ckpt.get(HYPER_PARAMETERS) or {}):
        return "suite"
    return None


def load_unit_vocoder(path: str | Path, config_json: str | Path | None = None) -> UnitVocoder:
    """Any unit vocoder file, its format detected: a textless-lib checkpoint (``"generator"`` state; config
    ``config_json`` or beside it) or this suite's vocoder checkpoint. Eval mode, CPU."""
    ckpt = _read(path)
    kind = vocoder_format(ckpt)
    if kind == "textless":
        config_path = Path(config_json) if config_json is not None else find_textless_config(path)
        return _textless_from(ckpt, _read_config(config_path), path, config_path)
    if kind == "suite":
        return load_suite_vocoder(ckpt, path)
    raise CheckpointError(f"{path}: neither a textless-lib vocoder (no {GENERATOR!r} state) nor this suite's "
                          f"vocoder checkpoint (no hyper_parameters[{VOCODER!r}]); keys {sorted(ckpt)[:10]}")


def strip_vocoder_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write ``dst``: ``src`` (a training checkpoint of :mod:`lightning_modules.vocoder`) with only the vocoder's
    weights, its hyper-parameters and the step it was taken at (no optimizer, scheduler, loss buffers or loops).
    ``dtype``: floating weights stored in this type (default float16, half the size; loading casts them back to
    the model's float32; ``None`` keeps them as trained). Checks that the result loads before replacing ``dst``
    atomically."""
    ckpt = _read(src)
    if vocoder_format(ckpt) != "suite":
        raise CheckpointError(f"{src}: not a vocoder training checkpoint of this suite")
    load_suite_vocoder(ckpt, src)
    prefix = VOCODER + "."
    weights = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
               for k, v in ckpt[STATE_DICT].items() if k.startswith(prefix)}
    out = {STATE_DICT: weights,
           HYPER_PARAMETERS: dict(ckpt[HYPER_PARAMETERS])}
    for k in ("pytorch-lightning_version", "epoch", "global_step"):
        if k in ckpt:
            out[k] = ckpt[k]
    load_suite_vocoder(out, dst)
    with atomic_write(dst, "wb") as f:
        torch.save(out, f)
    return Path(dst)
