"""Exact resume on the data side: where training stands goes into the checkpoint, and a restart serves the rest.

A run killed at any point and restarted from its last checkpoint must train on exactly the batches the first run
would have trained on next (docs/architecture.md, "Reliability"). Three pieces make that true for every
DataModule of the suite (:class:`~datamodules.speech.SpeechDataModule`,
:class:`~datamodules.unit_data.UnitsDataModule`):

- the batches of an epoch are a function of ``(seed, epoch)`` (:mod:`datamodules.samplers`) and every batch
  carries its ``position``, ``(epoch, batch index)``;
- :class:`ResumableData` notes the position of each training batch as it is handed to the model
  (``on_before_batch_transfer``, in the main process: prefetching workers cannot confuse it), saves the next one
  in the checkpoint (``state_dict``: Lightning stores a DataModule's state beside the weights) and, after a
  restart, makes the first training iterator start there (:meth:`EpochBatchSampler.resume`). Lightning builds that
  first iterator before it sets the sampler's epoch, so without this a restarted run replays epoch 0's order;
- :class:`SeededLoader` seeds each iterator's workers from ``(seed, epoch)`` with a generator of its own, so
  building an iterator neither depends on nor consumes the global random state (which
  :class:`callbacks.exact_resume.ExactResume` resets per epoch);
- the training loader takes its epoch from ``trainer.current_epoch`` when it makes an iterator, not from the
  count Lightning passes to ``set_epoch``: after a restart from a checkpoint saved at an epoch's end, Lightning's
  count runs one ahead of ``current_epoch`` (it replays the finished epoch as an empty one), and the batches of
  every later epoch would shift by one.

    class MyData(ResumableData, pl.LightningDataModule):
        def train_dataloader(self):
            return SeededLoader(ds, sampler=self.resumable(TrainBatchSampler(...)), seed=self.hparams.seed,
                                epoch_of=self.training_epoch, ...)
"""
from __future__ import annotations

import gc
import logging
from typing import Callable

import torch
from torch.utils.data import DataLoader

from syllablelm.runtime.seeding import derive, seed_worker

from .samplers import EpochBatchSampler

log = logging.getLogger(__name__)
POSITION_KEY = "train_position"


def init_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the suite's loaders: :func:`~syllablelm.runtime.seeding.seed_worker`, after
    ``gc.freeze()``. A worker is a fork of the main process; freezing moves every object it inherited to the
    collector's permanent generation, so the worker's garbage collections never write to those objects' headers and
    the parent's heap stays shared instead of being copied page by page into each worker (its private memory would
    otherwise grow towards the size of the main process's Python heap, whatever the data)."""
    gc.freeze()
    seed_worker(worker_id)


class SeededLoader(DataLoader):
    """A DataLoader over one of the suite's batch samplers (``batch_size=None``) whose workers are seeded from
    ``(seed, the epoch the sampler serves next)``: Python's, numpy's and torch's generators in worker ``w`` are
    a function of ``(seed, epoch, w)``. Without its own generator a DataLoader draws its workers' base seed from
    the global torch generator each time an iterator is made."""

    def __init__(self, dataset, *, sampler: EpochBatchSampler, seed: int = 0,
                 epoch_of: Callable[[], int | None] | None = None, **kwargs):
        super().__init__(dataset, batch_size=None, sampler=sampler, generator=torch.Generator(),
                         worker_init_fn=init_worker, **kwargs)
        self.seed = seed
        self.epoch_of = epoch_of  # the training epoch an iterator made now serves (None: the sampler's own)

    def __iter__(self):
        epoch = self.epoch_of() if self.epoch_of is not None else None
        if epoch is not None and self.sampler.resume_point is None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive(self.seed, self.sampler.next_epoch, 0x5EED))
        return super().__iter__()


class ResumableData:
    """Mixin for a LightningDataModule whose training loader is a :class:`SeededLoader` over a sampler passed
    through :meth:`resumable` (module docstring). Its checkpoint state is ``{"train_position": [epoch, next
    batch]}``; subclasses add theirs to :meth:`state_dict` and call ``super()``."""

    _trained_position: tuple[int, int] | None = None  # (epoch, index) of the last training batch handed over
    _resume_at: tuple[int, int] | None = None  # from a checkpoint: where the first training iterator starts

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and isinstance(batch, dict) and "position" in batch:
            self._trained_position = tuple(int(x) for x in batch["position"])
        return batch

    def state_dict(self) -> dict:
        if self._trained_position is None:
            return {}
        epoch, index = self._trained_position
        return {POSITION_KEY: [epoch, index + 1]}  # the next batch to train on

    def load_state_dict(self, state_dict: dict) -> None:
        if POSITION_KEY in state_dict:
            epoch, start = state_dict[POSITION_KEY]
            self._resume_at = (int(epoch), int(start))
            self._trained_position = (int(epoch), int(start) - 1)

    def training_epoch(self) -> int | None:
        """``trainer.current_epoch`` while a trainer drives this DataModule (the training loader's ``epoch_of``)."""
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def resumable(self, sampler: EpochBatchSampler) -> EpochBatchSampler:
        """The training sampler, set to resume where the restored checkpoint stopped (once)."""
        if self._resume_at is not None:
            sampler.resume(*self._resume_at)
            log.info("training data resumes at epoch %d, batch %d (from the checkpoint)", *sampler.resume_point)
            self._resume_at = None
        return sampler
