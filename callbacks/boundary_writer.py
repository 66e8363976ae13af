"""Write a stage's ``predict`` output to a boundary-store version (per-rank shards, rank-0 manifest).

``predict_step`` returns ``{"ids": [...], "segments": [(n, 2) seconds, file time]}``; chunks of one long file
(same id) are merged. At the end of the predict epoch each rank writes its shard atomically, all ranks meet at
a barrier, rank 0 checks every shard and writes the manifest, and all meet again — so when ``predict`` returns,
the version is complete on every rank or the run failed loudly.

Resume: every ``flush_every`` batches each rank also writes what it produced since the last flush to
``iter_K/partial/`` (atomically). A rerun — any number of ranks — reads every partial file, tells the module which
items are done (``pl_module.predict_skip``: ``(id, offset in ms)`` pairs; a module that has that attribute
returns ``None`` segments for a batch whose items are all done) and fills them from the partial files. Partial
results are used only when the module's weights match the run that wrote them (a fingerprint); the partial
folder is removed once the manifest exists.

    syllablelm predict --config teacher.yaml --trainer.callbacks+=callbacks.boundary_writer.BoundaryWriter \
        --trainer.callbacks.store_dir=runs/boundaries
"""
from __future__ import annotations

import json
import logging
import shutil

import lightning.pytorch as pl
import numpy as np

from datamodules.boundary_store import BoundaryStore
from datamodules.dataset import item_keys
from syllablelm.runtime.faults import fault_point
from syllablelm.runtime.fileio import weights_fingerprint, write_json, write_npz

log = logging.getLogger(__name__)


class BoundaryWriter(pl.Callback):
    """Args: store_dir, version: where the boundaries go; meta: extra manifest fields; flush_every: batches
    between partial writes (0: no partial files, a stopped run starts again)."""

    def __init__(self, *, store_dir: str, version: int = 0, meta: dict | None = None, flush_every: int = 20):
        self.store = BoundaryStore(store_dir)
        self.version = version
        self.meta = dict(meta or {})
        self.flush_every = flush_every
        self._segments: dict[str, list[np.ndarray]] = {}
        self._pending: dict[tuple[str, int], np.ndarray] = {}
        self._done: dict[tuple[str, int], np.ndarray] = {}
        self._parts = 0

    @property
    def partial_dir(self):
        return self.store.version_dir(self.version) / "partial"

    def on_predict_epoch_start(self, trainer, pl_module):
        self._segments, self._pending, self._parts = {}, {}, 0
        fingerprint = weights_fingerprint(pl_module)
        if trainer.is_global_zero:
            self.store.invalidate(self.version)  # a rewrite is incomplete until its new manifest exists
            stamp = self.partial_dir / "fingerprint.json"
            if stamp.exists() and json.loads(stamp.read_text()).get("weights") != fingerprint:
                log.info("%s: written by other weights; starting over", self.partial_dir)
                shutil.rmtree(self.partial_dir)
            if self.flush_every and not stamp.exists():
                write_json(stamp, {"weights": fingerprint})
        trainer.strategy.barrier()
        self._done = self._read_partials() if self.flush_every else {}
        if self._done and hasattr(pl_module, "predict_skip"):
            pl_module.predict_skip = set(self._done)
            log.info("boundary version %d: %d item(s) done by an earlier run are reused", self.version,
                     len(self._done))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        keys = item_keys(batch) if batch is not None else []
        for utt, segs, key in zip(outputs["ids"], outputs["segments"], keys):
            if segs is None:  # skipped by the module: done in an earlier run
                segs = self._done[key]
            else:
                segs = np.asarray(segs, dtype=np.float64).reshape(-1, 2)
                if self.flush_every:
                    self._pending[key] = segs
            self._segments.setdefault(utt, []).append(segs)
        if self.flush_every and (batch_idx + 1) % self.flush_every == 0:
            self._flush(trainer.global_rank)
        fault_point("predict_batch_end", type(pl_module).__name__)

    def _flush(self, rank: int) -> None:
        if not self._pending:
            return
        keys = list(self._pending)
        values = [self._pending[k] for k in keys]
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        # never overwrite an earlier run's part: that run's items would be lost if this one stopped too
        while (self.partial_dir / f"rank{rank:05d}-part{self._parts:05d}.npz").exists():
            self._parts += 1
        write_npz(self.partial_dir / f"rank{rank:05d}-part{self._parts:05d}.npz",
                  ids=np.array([k[0] for k in keys], dtype=str), offsets_ms=np.array([k[1] for k in keys]),
                  bounds=np.concatenate([[0], np.cumsum(lengths)]), values=np.concatenate(values).reshape(-1, 2))
        self._pending, self._parts = {}, self._parts + 1

    def _read_partials(self) -> dict[tuple[str, int], np.ndarray]:
        done = {}
        for path in sorted(self.partial_dir.glob("rank*-part*.npz")):
            try:
                with np.load(path) as z:
                    ids, offs, bounds, values = z["ids"], z["offsets_ms"], z["bounds"], z["values"]
            except Exception as err:  # noqa: BLE001 - a damaged partial file only costs its recomputation
                log.warning("%s is unreadable (%s): its items are recomputed", path, err)
                continue
            for i, (utt, off) in enumerate(zip(ids.tolist(), offs.tolist())):
                done[(utt, int(off))] = values[bounds[i]:bounds[i + 1]]
        return done

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
            shutil.rmtree(self.partial_dir, ignore_errors=True)
            log.info("boundary version %d complete: %d utterances in %s", self.version,
                     manifest["num_utterances"], self.store.version_dir(self.version))
        trainer.strategy.barrier()
        if hasattr(pl_module, "predict_skip"):
            pl_module.predict_skip = set()
