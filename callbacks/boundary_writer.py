"""Write a stage's ``predict`` output to a boundary-store version (per-rank shards, rank-0 manifest).

``predict_step`` returns ``{"ids": [...], "segments": [(n, 2) seconds, file time]}``; chunks of one long file
(same id) are merged. At the end of the predict epoch each rank writes its shard atomically, all ranks meet at
a barrier, rank 0 checks every shard and writes the manifest, and all meet again — so when ``predict`` returns,
the version is complete on every rank or the run failed loudly.

    syllablelm predict --config teacher.yaml --trainer.callbacks+=callbacks.boundary_writer.BoundaryWriter \
        --trainer.callbacks.store_dir=runs/boundaries
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
import numpy as np

from datamodules.boundary_store import BoundaryStore

log = logging.getLogger(__name__)


class BoundaryWriter(pl.Callback):
    def __init__(self, *, store_dir: str, version: int = 0, meta: dict | None = None):
        self.store = BoundaryStore(store_dir)
        self.version = version
        self.meta = dict(meta or {})
        self._segments: dict[str, list[np.ndarray]] = {}

    def on_predict_epoch_start(self, trainer, pl_module):
        self._segments = {}
        if trainer.is_global_zero:
            self.store.invalidate(self.version)  # a rewrite is incomplete until its new manifest exists
        trainer.strategy.barrier()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        for utt, segs in zip(outputs["ids"], outputs["segments"]):
            self._segments.setdefault(utt, []).append(np.asarray(segs, dtype=np.float64).reshape(-1, 2))

    def on_predict_epoch_end(self, trainer, pl_module):
        merged = {}
        for utt, parts in self._segments.items():
            segs = np.concatenate(parts)
            merged[utt] = segs[np.argsort(segs[:, 0], kind="stable")]
        self.store.write_shard(self.version, trainer.global_rank, trainer.world_size, merged)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            meta = {"stage": type(pl_module).__name__, **self.meta}
            manifest = self.store.finalize(self.version, trainer.world_size, meta=meta)
            log.info("boundary version %d complete: %d utterances in %s", self.version,
                     manifest["num_utterances"], self.store.version_dir(self.version))
        trainer.strategy.barrier()
