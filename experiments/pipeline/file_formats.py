"""Read just enough of a file to know what it is: audio folders, model checkpoints (fairseq HuBERT / data2vec 2.0
``.pt``, HF model folders, Lightning ``.ckpt``) and k-means files. ``syllablelm pipeline --dry-run`` uses these;
each raises ``ValueError`` (or ``AudioError``) naming the file when it is not what it should be.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from syllablelm.audio.io import AUDIO_EXTENSIONS


def audio_folder_info(path: Path, sample: int = 3) -> str:
    """A short description of an audio folder (layout, rate of a few files); raises ValueError when it holds
    no readable audio. Reads only the first ``sample`` files it meets, so it is quick on LibriLight-sized trees."""
    from syllablelm.audio.io import audio_info, list_audio

    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    found = list_audio(path, limit=sample)  # the listing the manifests use: symlinks followed
    if not found:
        raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    layout = "audio folder"
    for f in found:
        if f.with_suffix(".json").exists():
            layout = "LibriLight layout"
        elif any(f.parent.glob("*.trans.txt")):
            layout = "LibriSpeech layout"
    infos = [audio_info(f) for f in found]  # AudioError names the file
    rates = sorted({i.sample_rate for i in infos})
    return f"{layout}, {'/'.join(map(str, rates))} Hz"


@dataclass
class ModelInfo:
    kind: str  # syllablelm.checkpoints.FORMATS
    layers: int | None = None
    hidden: int | None = None
    num_labels: int | None = None  # classes the pretraining head predicts (fairseq HuBERT)
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.kind] + [f"{k}={v}" for k, v in (("layers", self.layers), ("hidden", self.hidden),
                                                        ("labels", self.num_labels)) if v is not None]
        return ", ".join(parts)


def model_info(path: Path) -> ModelInfo:
    """What a model file is (:func:`syllablelm.checkpoints.describe`); ValueError naming the file otherwise."""
    from syllablelm.checkpoints import describe

    d = describe(path)  # CheckpointError is a ValueError naming the file
    extra = {k: v for k, v in d.items() if k not in ("format", "layers", "hidden", "num_labels")}
    return ModelInfo(d["format"], d["layers"], d["hidden"], d["num_labels"], extra=extra)


def kmeans_info(path: Path) -> tuple[int, int]:
    from syllablelm.checkpoints import load_kmeans_centroids

    return tuple(load_kmeans_centroids(path).shape)
