"""Regenerate SylBoost's boundaries between iterations: the callback owns *when* and the communication.

Iteration ``k`` (0-based) trains on boundary version ``k`` (version 0 = LossPred). Version ``v`` is due once
``v x epochs_per_iteration`` epochs are complete and training is still on an older version (``done``, the
callback's state, saved in every checkpoint through ``state_dict``). The rule is checked at three hooks, so that
whatever point a run resumes from, each version is made exactly once:

* ``on_train_epoch_end`` (the regular path): after an iteration's last epoch and its validation. A run resumed
  from a checkpoint saved at that validation's end gets here too: Lightning resumes by finishing the epoch.
* ``on_train_start``: a checkpoint saved during the epoch-end hooks before the regeneration was done (by an
  earlier callback, or a preemption while it ran) resumes at the next epoch; the version is made before its first
  batch. (That epoch's DataLoader was made before any fit hook, but its batches get their segments from the
  DataModule's current version in the main process, so they carry the new version: :mod:`datamodules.speech`.)
* ``on_fit_end``: a resumed run whose checkpoint left no epoch to train (the trainer skips training) still writes
  the final version.

A version already complete on disk and written by this module class is reused, not recomputed (a crash after the
store was written but before a checkpoint recorded it). To make a version, every rank runs the student's
``extract_boundaries`` over its unrepeated contiguous shard of the training set (and dev), in eval + inference
mode, one utterance at a time (so the result never depends on batch composition or world size); the segment
counts and boundary metrics are summed over ranks; then:

    rank 0 invalidates version k+1 -> barrier -> every rank writes its shard atomically -> barrier
    -> rank 0 checks the shards and writes the manifest -> barrier -> every rank loads version k+1

The DataModule swaps its boundaries in place and cuts every batch's targets from the version in use when the batch
reaches the model, so training switches to the new version at once, whichever DataLoader workers prepared the
batches. Unless the version is the final one
(``iterations``, for evaluation and unit extraction), the module then re-initialises the student
(``start_iteration``) and the optimizer and LR schedule start again (unless training continues across
iterations). With a segmenter that calibrates δ, δ is calibrated at fit start (so validation can cut before the
first regeneration) and again before each regeneration.

Every version's rate and boundary scores are logged as ``regen/*`` through ``pl_module.log`` (identical values on
every rank), so ``trainer.callback_metrics`` holds them for ``ModelCheckpoint(monitor=...)`` or ``EarlyStopping``
and the loggers receive them at the epoch's end; only the ``on_fit_end`` path, where Lightning allows no
``self.log``, writes them to the loggers directly.

The callback uses the module and the DataModule only through :class:`datamodules.contracts.RegenerationModule` and
:class:`~datamodules.contracts.RegenerationData` (checked in ``setup``): it reads their members and calls their
methods, and never sets an attribute of either (docs/architecture.md, "The regeneration contract").

    trainer = Trainer(max_epochs=10, callbacks=[BoundaryRegeneration()])   # iterations x epochs_per_iteration
"""
from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import numpy as np
import torch

from datamodules.boundary_store import BoundaryStore
from datamodules.contracts import RegenerationData, RegenerationModule, SpeechBatch
from datamodules.dataset import is_empty
from datamodules.shard_store import StoreError
from syllablelm.audio.io import SAMPLE_RATE
from syllablelm.evaluation.boundary_metrics import BoundaryMetric
from syllablelm.runtime.faults import fault_point

log = logging.getLogger(__name__)
LEGACY_STATE_KEY = "boundary_regeneration"  # where checkpoints written before ``state_dict`` keep the state
RECORD_KEYS = ("version", "epoch", "rate_hz", "delta", "metrics")
SCORES = ("precision", "recall", "f1", "r_value")


class BoundaryRegeneration(pl.Callback):
    """Args:
        splits: DataModule splits to regenerate (those it has folders for).
        calibration_utterances: training utterances (the first, identical on every rank) used to calibrate δ
            when the module's segmenter has ``calibrate_to_hz``.
        tier: alignment tier the per-iteration boundary metrics compare against.
    """

    def __init__(self, *, splits: tuple[str, ...] = ("train", "val"), calibration_utterances: int = 64,
                 tier: str = "syllables"):
        self.splits = tuple(splits)
        self.calibration_utterances = calibration_utterances
        self.tier = tier
        self.done = 0  # regenerations completed = the boundary version training is on
        self.history: list[dict] = []  # per version: version, epoch, rate, δ, metrics (for reports)

    # ---- state across checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"done": self.done, "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.done, self.history = int(state_dict["done"]), list(state_dict.get("history", []))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if LEGACY_STATE_KEY in checkpoint:  # written before the state moved to state_dict (which, if present, wins)
            self.load_state_dict(checkpoint[LEGACY_STATE_KEY])

    # ---- schedule -----------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        if not isinstance(pl_module, RegenerationModule):
            raise TypeError(f"BoundaryRegeneration needs a module implementing datamodules.contracts."
                            f"RegenerationModule (SylBoostModule), got {type(pl_module).__name__}")
        iterations, epochs = pl_module.iterations, pl_module.epochs_per_iteration
        if not trainer.fast_dev_run and trainer.max_epochs != iterations * epochs:
            raise ValueError(f"trainer.max_epochs ({trainer.max_epochs}) must equal iterations x "
                             f"epochs_per_iteration ({iterations} x {epochs})")
        dm = trainer.datamodule
        if not isinstance(dm, RegenerationData) or dm.boundary_dir is None:
            raise ValueError("BoundaryRegeneration writes into the DataModule's boundary store: set data "
                             "boundary_dir (and boundary_version: 0 for LossPred's boundaries)"
                             + ("" if isinstance(dm, RegenerationData) else
                                f"; {type(dm).__name__} does not implement datamodules.contracts.RegenerationData"))

    def on_fit_start(self, trainer, pl_module):
        if trainer.datamodule.version != self.done:  # resumed: the version the checkpoint trained on
            trainer.datamodule.set_boundary_version(self.done)
        pl_module.restore_iteration(min(self.done, pl_module.iterations - 1))
        if pl_module.calibrates_delta and pl_module.boundary_delta() is None:
            self._recalibrate(trainer, pl_module)  # a δ for the starting weights: validation cuts before version 1

    def on_train_start(self, trainer, pl_module):
        # trainer.current_epoch = epochs complete; on a fresh run 0, so nothing is due
        self._next_iteration(trainer, pl_module, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module):
        self._next_iteration(trainer, pl_module, trainer.current_epoch + 1)

    def on_fit_end(self, trainer, pl_module):
        version = self._due(pl_module, trainer.current_epoch)
        if version is None:  # the usual case: on_train_epoch_end wrote the final version
            return
        device = pl_module.device  # the strategy moved the module to the CPU when training ended
        pl_module.to(trainer.strategy.root_device)
        try:
            self._advance(trainer, pl_module, version, via_module=False)
        finally:
            pl_module.to(device)

    def _due(self, pl_module, epochs: int) -> int | None:
        """The version due once ``epochs`` epochs are complete, or None."""
        E = pl_module.epochs_per_iteration
        return epochs // E if epochs % E == 0 and epochs // E > self.done else None

    def _next_iteration(self, trainer, pl_module, epochs: int) -> bool:
        """Make the version due after ``epochs`` epochs, if any, and start the next iteration; True if it did."""
        version = self._due(pl_module, epochs)
        if version is None:
            return False
        self._advance(trainer, pl_module, version)
        if version < pl_module.iterations:  # another iteration follows
            pl_module.start_iteration(version)
            if pl_module.reinit_each_iteration:  # a fresh optimizer and LR schedule (after any from a checkpoint)
                trainer.strategy.setup_optimizers(trainer)
        return True

    def _advance(self, trainer, pl_module, version: int, *, via_module: bool = True) -> None:
        """Make (or reuse) ``version``, load it on every rank and log it."""
        version = int(trainer.strategy.broadcast(version, src=0))  # every rank follows rank 0's count
        store = BoundaryStore(trainer.datamodule.boundary_dir)
        record = self._reusable(trainer, pl_module, store, version)
        if record is None:
            record = self.regenerate(trainer, pl_module, store, version)
            fault_point("regeneration.written")  # on disk, not yet in any checkpoint (tests crash here)
        trainer.datamodule.set_boundary_version(version)
        self.done = version
        self.history.append(record)
        self._log(trainer, pl_module, record, via_module=via_module)

    def _reusable(self, trainer, pl_module, store: BoundaryStore, version: int) -> dict | None:
        """The record of ``version`` if it is already complete and was written by this module class (before a
        crash that predates the checkpoint); rank 0 decides for every rank."""
        reuse = False
        if trainer.is_global_zero:
            try:  # complete, and every shard's bytes as written (a damaged version is made again)
                reuse = store.verify(version, checksums=True)["meta"].get("stage") == type(pl_module).__name__
            except StoreError:
                reuse = False
        if not trainer.strategy.broadcast(reuse, src=0):
            return None
        log.info("boundary version %d is already complete: reusing it", version)
        meta = store.manifest(version)["meta"]
        if meta["delta"] is not None:  # the δ it was cut with, as if this run had made it
            pl_module.set_boundary_delta(meta["delta"])
        return {k: meta[k] for k in RECORD_KEYS}

    # ---- the regeneration itself --------------------------------------------------------------------------
    def regenerate(self, trainer, pl_module, store: BoundaryStore, version: int) -> dict:
        """Write ``version`` from the student's current weights (every rank calls this); returns its record."""
        if pl_module.calibrates_delta:
            self._recalibrate(trainer, pl_module)
        segments, counts, metrics = self._extract(trainer, pl_module)
        rate, scores = self._reduce(trainer, counts, metrics)
        record = {"version": version, "epoch": version * pl_module.epochs_per_iteration - 1,
                  "rate_hz": rate, "delta": pl_module.boundary_delta(), "metrics": scores}
        self._write(trainer, store, version, segments, meta={"stage": type(pl_module).__name__, **record})
        return record

    def _extract(self, trainer, pl_module) -> tuple[dict[str, np.ndarray], tuple[int, float], dict]:
        """This rank's shard of every split: segments per utterance, ``(segments, seconds)`` of the utterances
        it stores, and per split a :class:`BoundaryMetric` updated on the utterances with references."""
        dm = trainer.datamodule
        splits = [split for split in self.splits if dm.has_split(split)]
        # a file in two splits is stored (and counted) once, by its first split; every rank knows every split's
        # files, so shards on different ranks never hold the same utterance
        owner: dict[str, str] = {}
        for split in splits:
            for entry in dm.manifest(split).entries:
                owner.setdefault(entry.id, split)
        parts: dict[str, list[np.ndarray]] = {}
        n_segments, seconds, metrics = 0, 0.0, {}
        with pl_module.evaluating():
            for split in splits:
                metrics[split] = metric = BoundaryMetric(protocol="syllablelm").to(trainer.strategy.root_device)
                for batch in dm.offline_dataloader(split):
                    if is_empty(batch):  # no readable file in it (the dataset named them)
                        continue
                    segs = pl_module.extract_boundaries(_to(batch, pl_module.device))
                    preds, refs = [], []
                    for b, (utt, s) in enumerate(zip(batch["ids"], segs)):
                        if owner.get(utt, split) == split:
                            parts.setdefault(utt, []).append(s)  # chunks of one long file share the id
                            n_segments += len(s)
                            seconds += float(batch["lengths"][b]) / SAMPLE_RATE
                        alignment = batch["alignments"][b]
                        if alignment is not None and self.tier in alignment:
                            preds.append(s)
                            refs.append(alignment[self.tier][0])
                    if preds:
                        metric.update(preds, refs)
        return {u: _merge_chunks(p) for u, p in parts.items()}, (n_segments, seconds), metrics

    def _reduce(self, trainer, counts: tuple[int, float], metrics: dict) -> tuple[float, dict]:
        """The rate and boundary scores over all ranks (collectives: every rank calls this)."""
        with torch.inference_mode():
            total = torch.tensor(counts, dtype=torch.float64, device=trainer.strategy.root_device)
            total = trainer.strategy.reduce(total, reduce_op="sum")
            scores = {}
            for split, metric in metrics.items():
                with warnings.catch_warnings():  # a rank with no references never updated its metric
                    warnings.filterwarnings("ignore", message=".*compute.*before the ..update")
                    result = metric.compute()  # count states: exact under DDP
                if float(result["n_ref"]) > 0:
                    scores[split] = {k: float(result[k]) for k in SCORES}
        return (float(total[0] / total[1]) if total[1] > 0 else 0.0), scores

    def _write(self, trainer, store: BoundaryStore, version: int, segments: dict, meta: dict) -> None:
        """rank 0 invalidates -> barrier -> every rank writes its shard -> barrier -> rank 0 writes the manifest
        -> barrier (after which every rank may load the version)."""
        strategy = trainer.strategy
        if trainer.is_global_zero:
            store.invalidate(version)
        strategy.barrier()
        store.write_shard(version, trainer.global_rank, trainer.world_size, segments)
        strategy.barrier()
        if trainer.is_global_zero:
            store.finalize(version, trainer.world_size, meta=meta)
        strategy.barrier()

    def _log(self, trainer, pl_module, record: dict, *, via_module: bool) -> None:
        flat = {"regen/rate_hz": record["rate_hz"],
                **{f"regen/{split}_{k}": v for split, m in record["metrics"].items() for k, v in m.items()}}
        if via_module:  # -> trainer.callback_metrics now, the loggers at the epoch's end; reduced already
            pl_module.log_dict(flat, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)
        else:
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)
        if trainer.is_global_zero:
            log.info("boundary version %d: %.2f Hz, %s", record["version"], record["rate_hz"], record["metrics"])

    # ---- δ ------------------------------------------------------------------------------------------------
    def _recalibrate(self, trainer, pl_module) -> None:
        with pl_module.evaluating():
            pl_module.set_boundary_delta(self._calibrate(trainer, pl_module))

    def _calibrate(self, trainer, pl_module) -> float:
        """δ giving ``calibrate_to_hz`` on the first ``calibration_utterances`` training utterances (rank 0
        computes it; every rank receives the same value)."""
        delta = None
        if trainer.is_global_zero:
            feats, waves = [], []
            for batch in trainer.datamodule.first_utterances("train", self.calibration_utterances):
                feats.append(pl_module.features(_to(batch, pl_module.device))[0].float().cpu())
                waves.append(batch["waves"][0])
            delta = pl_module.calibrated_delta(feats, waves)
        return float(trainer.strategy.broadcast(delta, src=0))


def _merge_chunks(parts: list[np.ndarray]) -> np.ndarray:
    """The segments of a file's chunks (one array per chunk) as one array sorted by start."""
    segs = np.concatenate(parts)
    return segs[np.argsort(segs[:, 0], kind="stable")]


def _to(batch: SpeechBatch, device) -> SpeechBatch:
    return {**batch, "waves": batch["waves"].to(device)}
