"""Random state across restarts: a run resumed from a checkpoint draws the same random numbers as one that never
stopped (docs/architecture.md, "Reliability").

Lightning restores weights, optimizer, schedulers, loop counters, callback and DataModule state, but not the random
generators, and whatever ran before training (model construction, the sanity check, a regeneration) has drawn from
them by the time a restarted run trains again. This callback makes training's randomness independent of that:

* at the start of every training epoch, Python's, numpy's and torch's generators (every CUDA device included) are
  seeded from ``(seed, epoch)`` (:func:`syllablelm.runtime.seeding.derive`), so an epoch replays identically whatever
  happened before it;
* every checkpoint also holds the generators' exact states and the position they belong to (epoch, batches done);
  a run restarted from a checkpoint saved *inside* an epoch (``every_n_train_steps``, a SLURM requeue) restores
  them right before its first batch, which is exactly where the saving run stood;
* the data side (which batch comes next, the workers' seeds) is the DataModule's: :mod:`datamodules.resume`.

``seed``: None takes the run's seed (``seed_everything``, i.e. ``PL_GLOBAL_SEED``; 0 if unset). The ``syllablelm``
command line adds this callback to every Lightning stage; add it yourself when you drive a ``Trainer`` directly.

It also hosts the fault point ``train_batch_end:<LightningModule class>`` (:mod:`syllablelm.runtime.faults`): after a
batch's optimizer step, before the checkpoint callbacks of that step.
"""
from __future__ import annotations

import logging
import os

import lightning.pytorch as pl

from syllablelm.runtime.faults import fault_point
from syllablelm.runtime.seeding import derive, rng_states, seed_all, set_rng_states

log = logging.getLogger(__name__)


class ExactResume(pl.Callback):
    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._position: tuple[int, int] = (0, 0)  # (epoch, batches done in it) of the training in progress
        self._restore: dict | None = None  # states from a checkpoint, for the first batch after a restart

    @property
    def run_seed(self) -> int:
        return int(self.seed if self.seed is not None else os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_epoch_start(self, trainer, pl_module):
        seed_all(derive(self.run_seed, trainer.current_epoch))
        self._position = (trainer.current_epoch, 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._restore is not None:  # the first batch since the restart
            state, self._restore = self._restore, None
            if (state["epoch"], state["batches"]) == (trainer.current_epoch, batch_idx):
                set_rng_states(state["rng"])  # saved inside this epoch: continue the saved stream
            # else the checkpoint was saved at an epoch's end and on_train_epoch_start has seeded this epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._position = (trainer.current_epoch, batch_idx + 1)
        fault_point("train_batch_end", type(pl_module).__name__)

    def state_dict(self) -> dict:
        """Called when a checkpoint is saved: the generators as they are now, and where training stands."""
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore = dict(state_dict)
        self._position = (int(state_dict["epoch"]), int(state_dict["batches"]))
