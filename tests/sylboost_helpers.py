"""Small SylBoost set-ups shared by the SylBoost tests and their DDP script."""
from __future__ import annotations

import os
from pathlib import Path

import lightning
import lightning.pytorch as pl
import numpy as np
import torch

from callbacks.boundary_regeneration import BoundaryRegeneration
from datamodules.boundary_store import BoundaryStore
from datamodules.manifest import build_manifest
from datamodules.speech import SpeechDataModule
from lightning_modules.sylboost import SylBoostModule
from lightning_modules.teacher import TeacherModule
from syllablelm.audio.io import read_audio
from syllablelm.boundaries.baselines import uniform_segments
from syllablelm.models.hubert import TeacherConfig


def save_teacher(path: Path, seed: int = 0) -> Path:
    """A random 1-layer teacher saved as a Lightning checkpoint (what `fit` would leave)."""
    torch.manual_seed(seed)
    module = TeacherModule(network=TeacherConfig.tiny(num_hidden_layers=1, hidden_size=64, num_attention_heads=2,
                                                      intermediate_size=128, num_labels=10, final_dim=16))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def write_v0(corpus: Path, store_dir: Path, cache: str, splits: tuple[str, ...] = ("train", "dev")) -> list[str]:
    """Version 0 (LossPred's place) from uniform segments: what SylBoost starts from."""
    entries = build_manifest([corpus / s for s in splits], cache_dir=cache, progress=False).entries
    segs = {e.id: uniform_segments(read_audio(e.path).numpy(), 16000, rate_hz=5.0) for e in entries}
    store = BoundaryStore(store_dir)
    store.write_shard(0, 0, 1, segs)
    store.finalize(0, 1)
    return sorted(segs)


def datamodule(corpus: Path, store_dir: Path, cache: str) -> SpeechDataModule:
    return SpeechDataModule(train_dirs=[str(corpus / "train")], val_dirs=[str(corpus / "dev")],
                            alignment_dir=str(corpus / "alignments"), boundary_dir=str(store_dir),
                            boundary_version=0, require_boundaries=True, batch_size=4, crop_seconds=3.0,
                            num_workers=0, manifest_cache=cache)


def one_file_batches(corpus: Path, store_dir: Path, cache: str) -> SpeechDataModule:
    """Training only, one file per batch: a file that cannot be read empties its batch."""
    return SpeechDataModule(train_dirs=[str(corpus / "train")], boundary_dir=str(store_dir), boundary_version=0,
                            batch_size=1, crop_seconds=1.0, num_workers=0, manifest_cache=cache)


def break_file(path: str | Path) -> Path:
    """Overwrite an audio file with garbage of the same size and keep its mtime: a file that broke after the
    manifest was built (the manifest cache still lists it as readable); reading it raises ``AudioError``."""
    path = Path(path)
    st = path.stat()
    path.write_bytes(np.random.default_rng(0).integers(0, 256, st.st_size, dtype=np.uint8).tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path


def module(teacher_ckpt: Path, segmenter: dict | None = None) -> SylBoostModule:
    """Fixed 6.25 segments/s unless ``segmenter`` says otherwise (``{}``: the default, the δ search)."""
    torch.manual_seed(1)
    return SylBoostModule(init_from=str(teacher_ckpt), feature_layer=1, iterations=2, epochs_per_iteration=1,
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
                          segmenter={"rate_hz": 6.25} if segmenter is None else segmenter)


def trainer(root: Path, callbacks=(), **kw) -> pl.Trainer:
    # saved at validation end, i.e. *before* the epoch-end regeneration: the harder case for resuming
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True,
                                        enable_version_counter=False, save_on_train_epoch_end=False)
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("devices", 1)
    kw.setdefault("logger", False)
    return pl.Trainer(max_epochs=2, default_root_dir=root, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[*callbacks, BoundaryRegeneration(), ckpt],
                      num_sanity_val_steps=0, **kw)


def offline_boundaries(model: SylBoostModule, corpus: Path, cache: str) -> dict[str, np.ndarray]:
    """One process, one utterance at a time: what the regeneration should have written for these weights."""
    model.eval()
    out = {}
    entries = build_manifest([corpus / "train", corpus / "dev"], cache_dir=cache, progress=False).entries
    for e in entries:
        wave = read_audio(e.path)
        batch = {"ids": [e.id], "waves": wave[None], "lengths": torch.tensor([len(wave)]),
                 "offsets": torch.zeros(1, dtype=torch.float64)}
        out[e.id] = model.extract_boundaries(batch)[0]
    return out
