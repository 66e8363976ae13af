"""Audio + fine units of one (or a few) voices, for training a unit vocoder (issue 29, item 3).

    dm = VocoderDataModule(audio_dirs=["data/vocoder/train"], cache="runs/tiny/vocoder/fine_units.npz",
                           kmeans="experiments/pretrained/kmeans_layer2.npy",
                           checkpoint="experiments/pretrained/teacher.ckpt", layer=2)

Every audio file under ``audio_dirs`` (sorted listing) is read once, and its fine units — frame labels of
:class:`syllablelm.units.fine.FineUnitEncoder` on the encoder's grid (``hop`` samples per frame) — are computed once
and cached in one ``.npz`` (``cache``), keyed by the files' paths, sizes and modification times and by the label
model (k-means, checkpoint, layer, pool). Why a private cache and not the ``labels`` stage's label store: the
vocoder's corpus is a small single-voice corpus of its own (a few hundred files, about a minute of encoder time on
one core), and the store's layout, manifests and fingerprints are built for the SSL corpora; one file keeps the
recipe to one command. The dev set is ``dev_utterances`` files spread evenly over the sorted listing (indices
``round(linspace(0, n - 1, k))``: several of the training voices, utterances never trained on).

Alignment: a wave of ``S`` samples gives ``T = geometry.num_frames(S)`` frames; frame ``t`` is paired with samples
``[t * hop, (t + 1) * hop)``, so the target wave is the first ``T * hop`` samples (always within ``S``: ``T * hop
<= S - receptive_field + hop``). Training items are random crops of ``crop_frames`` frames (start frame drawn
uniformly, the wave cut on the same grid) plus the utterance's whole run sequence ``(units, durations)`` for the
duration loss (a crop would truncate the runs at its edges). Validation items are whole dev utterances.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from syllablelm.audio.io import read_audio
from syllablelm.audio.listing import list_audio
from syllablelm.runtime.fileio import write_npz
from syllablelm.units.fine import FineUnitEncoder, runs

log = logging.getLogger(__name__)


def _file_key(path: Path) -> str:
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def cache_fingerprint(files: list[Path], kmeans, checkpoint, layer: int | None, pool: int,
                      features: str = "teacher") -> str:
    """What the cached units depend on: every audio file (path, size, mtime), the label model's files and settings
    (a teacher's checkpoint and layer; the feature kind when it is not a teacher's)."""
    h = hashlib.sha256()
    for p in [*files, Path(kmeans), *([Path(checkpoint)] if features == "teacher" else [])]:
        h.update(_file_key(p).encode())
    h.update((f"layer={int(layer)}|pool={int(pool)}" if features == "teacher" else
              f"features={features}|pool={int(pool)}").encode())
    return h.hexdigest()


def compute_fine_units(files: list[Path], encoder: FineUnitEncoder) -> list[np.ndarray]:
    """Frame labels of each file (int16, the encoder's grid)."""
    out = []
    for i, f in enumerate(files):
        with torch.no_grad():
            out.append(encoder.labels(read_audio(f)).astype(np.int16))
        if (i + 1) % 50 == 0:
            log.info("fine units: %d / %d files", i + 1, len(files))
    return out


def dev_indices(n: int, k: int) -> list[int]:
    """``k`` of ``n`` sorted files spread evenly: ``round(linspace(0, n - 1, k))`` (distinct for ``k <= n``)."""
    return sorted({int(i) for i in np.rint(np.linspace(0, n - 1, k))}) if k > 0 else []


class VocoderTrainSet(Dataset):
    """Random crops: ``frames (crop,)``, ``wave (crop * hop,)``, and the utterance's runs."""

    def __init__(self, waves: list[torch.Tensor], labels: list[np.ndarray], hop: int, crop_frames: int):
        self.items = [(w, torch.from_numpy(lab.astype(np.int64))) for w, lab in zip(waves, labels)
                      if lab.size >= crop_frames]
        if len(self.items) < len(waves):
            log.warning("%d utterances shorter than %d frames are not trained on", len(waves) - len(self.items),
                        crop_frames)
        if not self.items:
            raise ValueError(f"no training utterance has {crop_frames} frames")
        self.runs = [tuple(torch.from_numpy(a) for a in runs(lab.numpy())) for _, lab in self.items]
        self.hop, self.crop = int(hop), int(crop_frames)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        wave, lab = self.items[i]
        s = int(torch.randint(0, lab.numel() - self.crop + 1, ()))
        units, durations = self.runs[i]
        return {"frames": lab[s:s + self.crop], "wave": wave[s * self.hop:(s + self.crop) * self.hop],
                "units": units, "durations": durations}


class VocoderEvalSet(Dataset):
    """Whole utterances: ``frames (T,)``, ``wave (T * hop,)``, the runs, and the file's id."""

    def __init__(self, waves, labels, hop: int, names: list[str]):
        self.waves, self.labels, self.hop, self.names = waves, labels, int(hop), names

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> dict:
        lab = torch.from_numpy(self.labels[i].astype(np.int64))
        units, durations = runs(lab.numpy())
        return {"frames": lab, "wave": self.waves[i][:lab.numel() * self.hop], "units": torch.from_numpy(units),
                "durations": torch.from_numpy(durations), "id": self.names[i]}


def collate(items: list[dict]) -> dict:
    """Stack equal-length crops; pad frames (last unit), waves (zeros) and runs (mask) of unequal ones."""
    t = max(x["frames"].numel() for x in items)
    hop = max(1, items[0]["wave"].numel() // max(1, items[0]["frames"].numel()))
    n = max(x["units"].numel() for x in items)
    b = len(items)
    frames = torch.zeros(b, t, dtype=torch.long)
    wave = torch.zeros(b, t * hop)
    units = torch.zeros(b, n, dtype=torch.long)
    durations = torch.ones(b, n, dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.bool)
    lengths = torch.zeros(b, dtype=torch.long)
    for i, x in enumerate(items):
        k = x["frames"].numel()
        frames[i, :k], frames[i, k:] = x["frames"], x["frames"][-1]
        wave[i, :x["wave"].numel()] = x["wave"]
        m = x["units"].numel()
        units[i, :m], durations[i, :m], mask[i, :m] = x["units"], x["durations"], True
        lengths[i] = k
    out = {"frames": frames, "wave": wave, "units": units, "durations": durations, "mask": mask, "lengths": lengths}
    if "id" in items[0]:
        out["id"] = [x["id"] for x in items]
    return out


class VocoderDataModule(pl.LightningDataModule):
    """See the module docstring.

    Args:
        audio_dirs: folders (or files) of one voice's audio; every file is used (train + dev).
        cache: the ``.npz`` holding the fine units (computed when missing or stale).
        kmeans / features / checkpoint / layer / pool: the fine-unit model (:meth:`FineUnitEncoder.build`;
            ``features: logmel`` needs no checkpoint or layer).
        dev_utterances: this many files, spread evenly over the sorted listing, are the dev set.
        crop_frames: fine frames per training crop; batch_size: crops per batch.
    """

    def __init__(self, audio_dirs: list[str], cache: str, kmeans: str = "experiments/pretrained/kmeans_layer2.npy",
                 checkpoint: str | None = "experiments/pretrained/teacher.ckpt", layer: int | None = 2,
                 pool: int = 1, features: str = "teacher",
                 dev_utterances: int = 8, crop_frames: int = 48, batch_size: int = 8, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.audio_dirs, self.cache = [str(d) for d in audio_dirs], Path(cache)
        self.features = str(features)
        if self.features == "teacher" and (checkpoint is None or layer is None):
            raise ValueError("teacher fine units need a checkpoint and a layer")
        teacher = self.features == "teacher"
        self.kmeans, self.pool = str(kmeans), int(pool)
        self.checkpoint = str(checkpoint) if teacher else None
        self.layer = int(layer) if teacher else None
        self.dev_utterances, self.crop_frames = int(dev_utterances), int(crop_frames)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.hop: int | None = None
        self.num_units: int | None = None
        self._loaded = False

    def files(self) -> list[Path]:
        files = sorted({p for d in self.audio_dirs for p in list_audio(d)}, key=str)
        if len(files) <= self.dev_utterances:
            raise ValueError(f"{self.audio_dirs}: {len(files)} audio files, need more than dev_utterances="
                             f"{self.dev_utterances}")
        return files

    def load_units(self, files: list[Path]) -> list[np.ndarray]:
        """The cached fine units, recomputed (and the cache rewritten atomically) when missing or stale."""
        fp = cache_fingerprint(files, self.kmeans, self.checkpoint, self.layer, self.pool, self.features)
        if self.cache.exists():
            with np.load(self.cache, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("fingerprint") == fp:
                    self.hop, self.num_units = int(meta["hop"]), int(meta["num_units"])
                    lengths, flat = z["lengths"], z["labels"]
                    return np.split(flat, np.cumsum(lengths)[:-1])
            log.info("%s: stale fine-unit cache, recomputing", self.cache)
        encoder = FineUnitEncoder.build(self.kmeans, features=self.features, checkpoint=self.checkpoint,
                                        layer=self.layer, pool=self.pool)
        self.hop, self.num_units = encoder.geometry.hop, encoder.num_units
        labels = compute_fine_units(files, encoder)
        meta = {"fingerprint": fp, "hop": self.hop, "num_units": self.num_units, "files": [str(f) for f in files],
                "kmeans": self.kmeans, "features": self.features, "checkpoint": self.checkpoint, "layer": self.layer,
                "pool": self.pool}
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        write_npz(self.cache, labels=np.concatenate(labels), lengths=np.array([x.size for x in labels]),
                  meta=np.array(json.dumps(meta)))
        return labels

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        files = self.files()
        labels = self.load_units(files)
        waves = [read_audio(f) for f in files]
        for f, w, lab in zip(files, waves, labels):
            if lab.size * self.hop > w.numel():
                raise ValueError(f"{f}: {lab.size} fine frames need {lab.size * self.hop} samples, the file has "
                                 f"{w.numel()} (stale unit cache {self.cache}?)")
        dev = set(dev_indices(len(files), self.dev_utterances))
        train = [i for i in range(len(files)) if i not in dev]
        dev = sorted(dev)
        self.train_set = VocoderTrainSet([waves[i] for i in train], [labels[i] for i in train], self.hop,
                                         self.crop_frames)
        self.val_set = VocoderEvalSet([waves[i] for i in dev], [labels[i] for i in dev], self.hop,
                                      [files[i].stem for i in dev])
        log.info("vocoder data: %d train / %d dev utterances, %d units, hop %d", len(train), len(dev),
                 self.num_units, self.hop)
        self._loaded = True

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=1, shuffle=False, collate_fn=collate,
                          num_workers=self.num_workers)

    test_dataloader = val_dataloader
