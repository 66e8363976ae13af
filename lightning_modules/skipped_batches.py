"""Training batches with no readable file: a logged skip that keeps every DDP rank in step.

A file can break after the manifest was built (a truncated copy, a disk error); the dataset then drops it with a
warning naming it, and a batch whose files all broke is an empty batch (:func:`datamodules.dataset.is_empty`).
Under DDP a rank that skipped its backward would leave the others waiting in the gradient all-reduce, so a
module's ``training_step`` returns :func:`skipped_batch_loss` for it: zero, but a function of every trainable
parameter, so the backward and DDP's all-reduce involve the same parameters as a real step (this rank adds zero
gradients; the optimizer steps on every rank alike).

Every training step logs ``train/skipped_batches`` (0 or 1; summed over the epoch and over ranks at its end), so
the key exists on every rank and the epoch-end sum is a collective that every rank joins.

The files a batch left out (``batch["unreadable"]``) are recorded as skipped inputs of this process by
:func:`datamodules.dataset.record_unreadable` (:func:`syllablelm.runtime.outcome.record_skip`), so the command line
names
them in its summary and exits with status 4: for every batch of every loop by the DataModule, in the main process
(batches are built in DataLoader workers, whose records would be lost), and here again for an empty training batch
of any loader (recorded once per path).
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch

from datamodules.dataset import record_unreadable

log = logging.getLogger(__name__)
SKIPPED_BATCHES = "train/skipped_batches"


def log_skipped(module: pl.LightningModule, skipped: bool) -> None:
    """Count this training step in ``train/skipped_batches`` (call it at every step, skipped or not)."""
    module.log(SKIPPED_BATCHES, float(skipped), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True,
               batch_size=1)


def skipped_batch_loss(module: pl.LightningModule, batch: dict | None, batch_idx: int) -> torch.Tensor:
    """The loss of an empty training batch, logged as a skipped batch: ``0 x`` the sum of every trainable
    parameter (zero and finite, with zero gradients on every trainable parameter)."""
    names = record_unreadable(batch) or ["?"]
    log.warning("training batch %d on rank %d has no readable file (%s): skipped with a zero loss", batch_idx,
                module.global_rank, ", ".join(names))
    log_skipped(module, True)
    loss = torch.zeros((), device=module.device)
    for p in module.parameters():
        if p.requires_grad:
            loss = loss + p.sum() * 0.0
    return loss
