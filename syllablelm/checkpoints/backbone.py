"""One loader for every backbone file this suite reads, without Lightning.

    bb = load_backbone("checkpoints/hubert_base_ls960.pt")   # or an HF folder, a .ckpt of this suite, ...
    bb.encoder            # the network whose hidden_states[k] are features (HF model or Data2Vec2AudioEncoder)
    bb.teacher            # the HuBERT with its masked-prediction head, when the file holds one (LossPred)
    bb.normalize_waveform # whether it was pretrained on normalised audio

Formats (:func:`checkpoint_format` tells them apart from the file alone); each has one owner module that names
its keys, and this module only dispatches to it:

* ``"hf"``: a transformers ``save_pretrained`` folder (HuBERT, WavLM, wav2vec 2.0, data2vec-audio) — transformers;
* ``"fairseq-hubert"``: a fairseq HuBERT pretraining ``.pt`` (encoder + head, label offset 4) —
  :mod:`.fairseq_hubert`;
* ``"fairseq-data2vec2"``: a fairseq data2vec 2.0 ``.pt`` (``data2vec_multi``, audio) — :mod:`.fairseq_data2vec2`;
* ``"teacher-ckpt"``: this suite's ``TeacherModule`` checkpoint — :mod:`.suite`;
* ``"sylboost-ckpt"``: this suite's ``SylBoostModule`` checkpoint (its student, cut at the feature layer) —
  :mod:`.suite`;
* ``"tokenizer"``: this suite's tokenizer checkpoint (the encoder cut at the feature layer) — :mod:`.tokenizer_file`.

A SpeechLM checkpoint of this suite (:mod:`.suite`) is recognised and refused: it holds no speech encoder.
fairseq files are pickles (trusted files only, :mod:`.fairseq`); this suite's ``.ckpt`` files load with
``weights_only=True``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

import syllablelm.checkpoints.suite as suite
import syllablelm.checkpoints.tokenizer_file as tokenizer_file
from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.models.common import pretrained_normalization
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.models.hubert import HubertTeacher

FORMATS = ("hf", "fairseq-hubert", "fairseq-data2vec2", "teacher-ckpt", "sylboost-ckpt", "tokenizer")


@dataclass
class Backbone:
    encoder: nn.Module
    normalize_waveform: bool  # as pretrained
    format: str
    teacher: HubertTeacher | None = None  # the whole masked-prediction model, when the file has its head
    layers: int | None = None  # transformer layers the encoder keeps (cut checkpoints keep only the used ones)


def suite_format(ckpt: dict, path) -> str:
    """``"tokenizer"``, ``"teacher-ckpt"``, ``"sylboost-ckpt"`` or ``"speechlm-ckpt"`` for a dict
    :func:`~syllablelm.checkpoints.suite.read_suite_checkpoint` gave; ``CheckpointError`` naming ``path`` for any
    other dict."""
    if tokenizer_file.is_tokenizer_checkpoint(ckpt, path):
        return "tokenizer"
    return suite.lightning_format(ckpt, path)


def checkpoint_format(path: str | Path) -> str:
    """Which of :data:`FORMATS` ``path`` is (reads configs and headers, not all weights where it can)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p}: a model folder needs config.json (a transformers save_pretrained folder)")
        return "hf"
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.suffix == ".ckpt":
        kind = suite_format(suite.read_suite_checkpoint(p), p)
        if kind not in FORMATS:
            raise CheckpointError(f"{p}: a {kind} of this suite holds no speech encoder (a backbone is a teacher, "
                                  "SylBoost or tokenizer checkpoint, a fairseq .pt or an HF folder)")
        return kind
    from syllablelm.checkpoints.fairseq_data2vec2 import is_fairseq_data2vec2

    try:
        return "fairseq-data2vec2" if is_fairseq_data2vec2(p) else "fairseq-hubert"
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
        raise CheckpointError(f"{p}: not a readable fairseq checkpoint ({type(e).__name__}: {e})") from e


def load_backbone(path: str | Path) -> Backbone:
    """The network of any supported file (module docstring), on the CPU, in eval mode."""
    p = Path(path)
    kind = checkpoint_format(p)
    if kind == "hf":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(p), local_files_only=True).eval()
        return Backbone(model, pretrained_normalization(p, model.config), kind,
                        layers=getattr(model.config, "num_hidden_layers", None))
    if kind == "fairseq-data2vec2":
        from syllablelm.checkpoints.fairseq_data2vec2 import load_fairseq_data2vec2

        model = load_fairseq_data2vec2(p).eval()
        c = model.config
        return Backbone(model, c.normalize_waveform, kind, layers=c.prenet_depth + c.depth)
    if kind == "fairseq-hubert":
        from syllablelm.checkpoints.fairseq_hubert import load_fairseq_hubert

        teacher = load_fairseq_hubert(p).eval()
        return Backbone(teacher.encoder, teacher.config.normalize_waveform, kind, teacher,
                        teacher.config.num_hidden_layers)
    ckpt = suite.read_suite_checkpoint(p)
    if kind == "teacher-ckpt":
        teacher = suite.read_teacher(ckpt, p).eval()
        return Backbone(teacher.encoder, teacher.config.normalize_waveform, kind, teacher,
                        teacher.config.num_hidden_layers)
    if kind == "tokenizer":
        encoder = tokenizer_file.read_encoder(ckpt, p).eval()
    else:
        encoder = suite.read_sylboost_student(ckpt, p).eval()
    return Backbone(encoder.model, encoder.normalize_waveform, kind, layers=encoder.layer)


def load_teacher(path: str | Path, *, num_labels: int | None = None, final_dim: int | None = None) -> HubertTeacher:
    """A HuBERT teacher with its masked-prediction head: a fairseq HuBERT ``.pt`` or a teacher ``.ckpt``; from an
    HF HuBERT folder the encoder with a fresh head of ``num_labels`` x ``final_dim`` (HF folders hold no head)."""
    p = Path(path)
    if checkpoint_format(p) == "hf":
        if num_labels is None or final_dim is None:
            raise CheckpointError(f"{p}: an HF folder holds no pretraining head; give num_labels and final_dim "
                                  "for a fresh one")
        return HubertTeacher.from_hf_dir(p, num_labels=num_labels, final_dim=final_dim)
    bb = load_backbone(p)
    if bb.teacher is None:
        raise CheckpointError(f"{p}: a {bb.format} file has no masked-prediction head (a HuBERT teacher is a fairseq "
                              "HuBERT pretraining .pt or a teacher .ckpt of this suite)")
    return bb.teacher


def describe(path: str | Path) -> dict:
    """What a backbone file is, read cheaply where possible: ``{"format", "layers", "hidden", "num_labels",
    "normalize", "has_head"}`` (None where unknown). ``CheckpointError`` names the file when it is unreadable."""
    p = Path(path)
    kind = checkpoint_format(p)
    out = {"format": kind, "layers": None, "hidden": None, "num_labels": None, "normalize": None, "has_head": None}
    if kind == "hf":
        cfg = json.loads((p / "config.json").read_text())
        if not any((p / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")) and \
                not list(p.glob("model*.safetensors")):
            raise CheckpointError(f"{p}: config.json but no model weights (model.safetensors / pytorch_model.bin)")
        out.update(layers=cfg.get("num_hidden_layers"), hidden=cfg.get("hidden_size"), has_head=False,
                   model_type=cfg.get("model_type"))
        return out
    if kind == "fairseq-data2vec2":
        from syllablelm.checkpoints.fairseq import load_fairseq_state
        from syllablelm.checkpoints.fairseq_data2vec2 import data2vec2_config

        c = data2vec2_config(load_fairseq_state(p), p)
        out.update(layers=c.prenet_depth + c.depth, hidden=c.embed_dim, normalize=c.normalize_waveform,
                   has_head=False)
        return out
    if kind == "fairseq-hubert":
        from syllablelm.checkpoints.fairseq_hubert import describe_fairseq_hubert

        out.update(describe_fairseq_hubert(p))
        return out
    ckpt = suite.read_suite_checkpoint(p)
    if kind == "teacher-ckpt":
        net = suite.teacher_network(ckpt)
        out.update(layers=net.get("num_hidden_layers"), hidden=net.get("hidden_size"),
                   num_labels=net.get("num_labels"), normalize=net.get("normalize_waveform"), has_head=True)
    else:
        spec = tokenizer_file.encoder_spec(ckpt) if kind == "tokenizer" else suite.sylboost_encoder_spec(ckpt)
        out.update(layers=spec["layer"], normalize=spec["normalize_waveform"], has_head=False,
                   hidden=spec["config"].get("hidden_size", spec["config"].get("embed_dim")))
    out[suite.HYPER_PARAMETERS] = suite.hyper_parameters(ckpt)
    return out


def load_encoder(path: str | Path, *, layer: int, normalize_waveform: bool | None = None) -> SpeechEncoder:
    """A :class:`SpeechEncoder` cut after ``layer``, from any backbone file :func:`load_backbone` reads (HF folder,
    fairseq HuBERT or data2vec 2.0 ``.pt``, this suite's ``.ckpt``). ``normalize_waveform`` defaults to what the
    checkpoint was pretrained with."""
    bb = load_backbone(path)
    if bb.layers is not None and layer > bb.layers:
        raise ValueError(f"{path}: feature layer {layer} asked for, the {bb.format} file keeps {bb.layers}")
    normalize = bb.normalize_waveform if normalize_waveform is None else normalize_waveform
    return SpeechEncoder(bb.encoder, layer=layer, normalize_waveform=bool(normalize))
