"""Regenerate SylBoost's boundaries between iterations: the callback owns *when* and the communication.

Iteration ``k`` (0-based) trains on boundary version ``k`` (version 0 = LossPred). At the end of its last epoch
(every ``epochs_per_iteration`` epochs, after that epoch's validation) every rank runs the student's
``extract_boundaries`` over its unrepeated contiguous shard of the training set (and dev), in eval + inference
mode, one utterance at a time (so the result never depends on batch composition or world size); then:

    rank 0 invalidates version k+1 -> barrier -> every rank writes its shard atomically -> barrier
    -> rank 0 checks the shards and writes the manifest -> barrier -> every rank loads version k+1

The DataModule swaps its boundaries in place, so the next epoch's dataloader iterator (its workers are forked
anew each epoch) serves the new targets without rebuilding loaders. The module then re-initialises the student
and the optimizer and LR schedule start again (unless it continues across iterations). After the last
iteration the final version is written too (version = iterations), for evaluation and unit extraction.

Resume: the completed-regeneration count is in the checkpoint. A checkpoint saved at validation end of an
iteration's last epoch predates that iteration's regeneration; a run resumed from it regenerates at its start
(before the first batch), reusing the version if it is already complete — never repeating or skipping one.

    trainer = Trainer(max_epochs=10, callbacks=[BoundaryRegeneration()])   # iterations x epochs_per_iteration
"""
from __future__ import annotations

import logging
import math
import warnings

import lightning.pytorch as pl
import numpy as np
import torch

from datamodules.boundary_store import BoundaryStore
from syllablelm.audio import SAMPLE_RATE
from syllablelm.metrics import BoundaryMetric
from syllablelm.segmenter import Segmenter

log = logging.getLogger(__name__)
STATE_KEY = "boundary_regeneration"


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
        self._pending_at_start = False
        self._reset_optimizers = False
        self.history: list[dict] = []  # per regeneration: version, rate, metrics (for reports)

    # ---- state across checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[STATE_KEY] = {
            "done": self.done, "epoch": trainer.current_epoch,
            # a checkpoint written at the end of an epoch (validation end) resumes at the next epoch
            "epoch_finished": bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch),
            "history": self.history}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        self.done, self.history = int(state["done"]), list(state.get("history", []))
        E = pl_module.hparams.epochs_per_iteration
        next_epoch = state["epoch"] + (1 if state["epoch_finished"] else 0)
        self._pending_at_start = next_epoch % E == 0 and next_epoch // E > self.done

    # ---- schedule -----------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        hp = pl_module.hparams
        if not trainer.fast_dev_run and trainer.max_epochs != hp.iterations * hp.epochs_per_iteration:
            raise ValueError(f"trainer.max_epochs ({trainer.max_epochs}) must equal iterations x "
                             f"epochs_per_iteration ({hp.iterations} x {hp.epochs_per_iteration})")
        if getattr(trainer.datamodule, "hparams", {}).get("boundary_dir") is None:
            raise ValueError("BoundaryRegeneration writes into the DataModule's boundary store: set data "
                             "boundary_dir (and boundary_version: 0 for LossPred's boundaries)")

    def on_fit_start(self, trainer, pl_module):
        if self._pending_at_start:  # resumed from a checkpoint that predates this iteration's regeneration
            self._advance(trainer, pl_module, self.done + 1)
            self._reset_optimizers = pl_module.hparams.reinit_each_iteration
            self._pending_at_start = False
        elif trainer.datamodule.version != self.done:
            trainer.datamodule.set_boundary_version(self.done)
        pl_module.iteration = min(self.done, pl_module.hparams.iterations - 1)
        if pl_module.segmenter.calibrate_to_hz is not None and torch.isnan(pl_module.delta):
            # a δ for the starting weights, so that validation cuts before the first regeneration
            was_training = pl_module.training
            pl_module.eval()
            with torch.inference_mode():
                pl_module.delta.fill_(self._calibrate(trainer, pl_module))
            pl_module.train(was_training)

    def on_train_start(self, trainer, pl_module):
        if self._reset_optimizers:  # after the trainer restored the previous iteration's optimizer state
            trainer.strategy.setup_optimizers(trainer)
            self._reset_optimizers = False

    def on_train_epoch_end(self, trainer, pl_module):
        E = pl_module.hparams.epochs_per_iteration
        finished = trainer.current_epoch + 1
        if finished % E == 0 and finished // E > self.done:
            self._advance(trainer, pl_module, finished // E)
            if self.done < pl_module.hparams.iterations and pl_module.hparams.reinit_each_iteration:
                trainer.strategy.setup_optimizers(trainer)

    def _advance(self, trainer, pl_module, version: int) -> None:
        version = int(trainer.strategy.broadcast(version, src=0))  # every rank follows rank 0's count
        store = BoundaryStore(trainer.datamodule.hparams.boundary_dir)
        meta = store.manifest(version)["meta"] if store.is_complete(version) else {}
        if meta.get("stage") == type(pl_module).__name__:  # written before a crash that predates the checkpoint
            log.info("boundary version %d is already complete: reusing it", version)
            self.history.append({k: meta[k] for k in ("version", "epoch", "rate_hz", "delta", "metrics")})
        else:
            self.regenerate(trainer, pl_module, store, version)
        trainer.datamodule.set_boundary_version(version)
        self.done = version
        if version < pl_module.hparams.iterations:
            pl_module.start_iteration(version)

    # ---- the regeneration itself --------------------------------------------------------------------------
    def regenerate(self, trainer, pl_module, store: BoundaryStore, version: int) -> dict:
        dm, strategy = trainer.datamodule, trainer.strategy
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode():
            if pl_module.segmenter.calibrate_to_hz is not None:
                pl_module.delta.fill_(self._calibrate(trainer, pl_module))
            segments: dict[str, list[np.ndarray]] = {}
            # a file in two splits is stored (and counted) once, by its first split; every rank knows every split's
            # files, so shards on different ranks never hold the same utterance
            owner: dict[str, str] = {}
            for split in self.splits:
                if dm.dirs.get(split):
                    for entry in dm.manifest(split).entries:
                        owner.setdefault(entry.id, split)
            counts = torch.zeros(2, dtype=torch.float64, device=pl_module.device)  # segments, seconds
            metrics = {}
            for split in self.splits:
                if not dm.dirs.get(split):
                    continue
                metric = BoundaryMetric(protocol="syllablelm").to(pl_module.device)
                for batch in dm.offline_dataloader(split):
                    if batch is None:
                        continue
                    segs = pl_module.extract_boundaries(_to(batch, pl_module.device))
                    preds, refs = [], []
                    for b, (utt, s) in enumerate(zip(batch["ids"], segs)):
                        if owner.get(utt, split) == split:
                            segments.setdefault(utt, []).append(s)  # chunks of one long file share the id
                            counts += torch.tensor([len(s), float(batch["lengths"][b]) / SAMPLE_RATE],
                                                   dtype=torch.float64, device=counts.device)
                        alignment = batch["alignments"][b]
                        if alignment is not None and self.tier in alignment:
                            preds.append(s)
                            refs.append(alignment[self.tier][0])
                    if preds:
                        metric.update(preds, refs)
                with warnings.catch_warnings():  # a rank with no references never updated its metric
                    warnings.filterwarnings("ignore", message=".*compute.*before the ..update")
                    scores = metric.compute()  # count states: exact under DDP (every rank calls compute)
                if float(scores["n_ref"]) > 0:
                    metrics[split] = {k: float(scores[k]) for k in ("precision", "recall", "f1", "r_value")}
        pl_module.train(was_training)
        merged = {u: np.concatenate(p)[np.argsort(np.concatenate(p)[:, 0], kind="stable")]
                  for u, p in segments.items()}
        counts = strategy.reduce(counts, reduce_op="sum")
        rate = float(counts[0] / counts[1]) if counts[1] > 0 else 0.0
        delta = float(pl_module.delta)
        if trainer.is_global_zero:
            store.invalidate(version)
        strategy.barrier()
        store.write_shard(version, trainer.global_rank, trainer.world_size, merged)
        strategy.barrier()
        record = {"version": version, "epoch": trainer.current_epoch, "rate_hz": rate,
                  "delta": None if math.isnan(delta) else delta, "metrics": metrics}
        if trainer.is_global_zero:
            store.finalize(version, trainer.world_size, meta={"stage": type(pl_module).__name__, **record})
            flat = {"regen/rate_hz": rate, **{f"regen/{s}_{k}": v for s, m in metrics.items() for k, v in m.items()}}
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)
            log.info("boundary version %d: %.2f Hz, %s", version, rate, metrics)
        strategy.barrier()
        self.history.append(record)
        return record

    def _calibrate(self, trainer, pl_module) -> float:
        """δ giving ``calibrate_to_hz`` on the first ``calibration_utterances`` training utterances (rank 0
        computes it; every rank receives the same value)."""
        delta = None
        if trainer.is_global_zero:
            ds = trainer.datamodule.dataset("train")
            feats, waves = [], []
            for i in range(min(self.calibration_utterances, len(ds))):
                item = ds.load(i)
                batch = {"waves": item["wave"][None].to(pl_module.device),
                         "lengths": torch.tensor([len(item["wave"])]), "ids": [item["id"]]}
                feats.append(pl_module.features(batch)[0].float().cpu())
                waves.append(item["wave"])
            delta = Segmenter(pl_module.segmenter).calibrate(feats, waves)
        return float(trainer.strategy.broadcast(delta, src=0))


def _to(batch: dict, device) -> dict:
    return {**batch, "waves": batch["waves"].to(device)}
