"""Read just enough of a file to know what it is: audio folders, model checkpoints (fairseq HuBERT / data2vec 2.0
``.pt``, HF model folders, Lightning ``.ckpt``) and k-means files. ``syllablelm pipeline --dry-run`` uses these;
each raises ``ValueError`` (or ``AudioError``) naming the file when it is not what it should be.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from syllablelm.audio import AUDIO_EXTENSIONS


def audio_folder_info(path: Path, sample: int = 3) -> str:
    """A short description of an audio folder (layout, rate of a few files); raises ValueError when it holds
    no readable audio. Stops after ``sample`` files, so it is quick on LibriLight-sized trees."""
    from syllablelm.audio import audio_info

    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    found, layout = [], "audio folder"
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = set(filenames)
        for f in sorted(filenames):
            if f.lower().endswith(AUDIO_EXTENSIONS) and not f.startswith("."):
                found.append(Path(dirpath) / f)
                stem = f.rsplit(".", 1)[0]
                if f"{stem}.json" in names:
                    layout = "LibriLight layout"
                elif any(n.endswith(".trans.txt") for n in names):
                    layout = "LibriSpeech layout"
        if len(found) >= sample:
            break
    if not found:
        raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    infos = [audio_info(f) for f in found[:sample]]  # AudioError names the file
    rates = sorted({i.sample_rate for i in infos})
    return f"{layout}, {'/'.join(map(str, rates))} Hz"


@dataclass
class ModelInfo:
    kind: str  # "fairseq-hubert", "hf", "lightning"
    layers: int | None = None
    hidden: int | None = None
    num_labels: int | None = None  # classes the pretraining head predicts (fairseq HuBERT)
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.kind] + [f"{k}={v}" for k, v in (("layers", self.layers), ("hidden", self.hidden),
                                                        ("labels", self.num_labels)) if v is not None]
        return ", ".join(parts)


def model_info(path: Path) -> ModelInfo:
    """Read just enough of a model file to know what it is; ValueError naming the file otherwise."""
    import torch

    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path}: a model folder needs config.json (a transformers save_pretrained folder)")
        cfg = json.loads(cfg_file.read_text())
        if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")) and not list(
                path.glob("model*.safetensors")):
            raise ValueError(f"{path}: config.json but no model weights (model.safetensors / pytorch_model.bin)")
        return ModelInfo("hf", cfg.get("num_hidden_layers"), cfg.get("hidden_size"),
                         extra={"model_type": cfg.get("model_type")})
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".ckpt":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable Lightning checkpoint ({e})") from e
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError(f"{path}: no 'state_dict': not a Lightning checkpoint")
        return ModelInfo("lightning", extra={"hyper_parameters": state.get("hyper_parameters") or {}})
    from syllablelm.checkpoints import _read_config, _stub_pickle
    from syllablelm.checkpoints_data2vec2 import _config, _load_state, is_fairseq_data2vec2

    try:
        d2v2 = is_fairseq_data2vec2(path)
    except Exception:  # unreadable: the HuBERT reader below says so
        d2v2 = False
    if d2v2:
        try:
            c = _config(_load_state(path), path)
        except Exception as e:
            raise ValueError(f"{path}: not a readable fairseq data2vec 2.0 checkpoint ({e})") from e
        return ModelInfo("fairseq-data2vec2", c.prenet_depth + c.depth, c.embed_dim,
                         extra={"normalize": c.normalize_waveform})
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
    except Exception as e:
        raise ValueError(f"{path}: not a readable fairseq checkpoint ({e})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: no 'model' state: not a fairseq checkpoint")
    c = _read_config(state, path)
    sd = state["model"]
    labels = sd["label_embs_concat"].shape[0] - 4 if "label_embs_concat" in sd else None
    return ModelInfo("fairseq-hubert", int(c["encoder_layers"]), int(c["encoder_embed_dim"]), labels,
                     extra={"has_head": "final_proj.weight" in sd})


def kmeans_info(path: Path) -> tuple[int, int]:
    from syllablelm.checkpoints import load_kmeans_centroids

    return tuple(load_kmeans_centroids(path).shape)
