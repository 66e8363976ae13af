"""Throughput and model-FLOP utilisation (MFU) of every stage, in the TensorBoard logs.

Lightning's :class:`~lightning.pytorch.callbacks.ThroughputMonitor` with what this suite needs:

- the device's dense peak FLOP rate passed explicitly (``peak_flops``, per device): Lightning's own table does
  not know the name ``NVIDIA H200`` and lists a sparse figure for some chips. H100 / H200 dense bf16: 989e12.
  ``measured_flops`` (a bf16 matmul rate measured on the device, e.g. by ``benchmarks/gpu_check.sh``) adds
  ``device/mfu_measured`` beside ``device/mfu``;
- the batch measures of each stage: samples = utterances (speech stages) or sequences (the SpeechLM); lengths =
  audio samples at 16 kHz, or target tokens. ``train/audio_seconds_per_sec`` (speech) and
  ``train/tokens_per_sec`` (the LM) are logged beside Lightning's ``train/items_per_sec``;
- the module's ``flops_per_batch`` (set by each training step from :mod:`syllablelm.models.flops`) counted for training
  only (validation batches report throughput, not MFU).

    trainer = Trainer(callbacks=[StageThroughput(peak_flops=989e12)])
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from syllablelm.audio.frames import SAMPLE_RATE


def batch_size(batch) -> int:
    """Utterances (speech batches) or sequences (unit windows)."""
    if isinstance(batch, dict) and "ids" in batch:
        return max(1, len(batch["ids"]))
    return max(1, len(batch["input"]))


def batch_length(batch) -> int:
    """Audio samples (speech batches) or target tokens (unit windows); at least the batch size."""
    if isinstance(batch, dict) and "lengths" in batch:
        return max(batch_size(batch), int(torch.as_tensor(batch["lengths"]).sum()))
    return max(batch_size(batch), int((batch["target"] != -100).sum()))


class StageThroughput(ThroughputMonitor):
    def __init__(self, *, peak_flops: float | None = None, measured_flops: float | None = None,
                 window_size: int = 50):
        super().__init__(batch_size_fn=batch_size, length_fn=batch_length, window_size=window_size)
        self.peak_flops = peak_flops
        self.measured_flops = measured_flops

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops is not None:  # the explicit dense peak replaces Lightning's guess
            self.available_flops = self.peak_flops
            for throughput in self._throughputs.values():
                throughput.available_flops = self.peak_flops

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        pl_module.flops_per_batch = None  # the training step's count does not describe a validation batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not trainer.is_global_zero or trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        metrics = self._throughputs[trainer.state.stage].compute()
        items = metrics.get("device/items_per_sec")
        if items is not None:  # lengths per second on this device, times the devices
            speech = isinstance(batch, dict) and "lengths" in batch
            name = "train/audio_seconds_per_sec" if speech else "train/tokens_per_sec"
            value = items * trainer.world_size / (SAMPLE_RATE if speech else 1)
            extra = {name: value}
            mfu = metrics.get("device/mfu")
            if mfu is not None and self.measured_flops and self.available_flops:
                extra["train/device/mfu_measured"] = mfu * self.available_flops / self.measured_flops
            for logger in trainer.loggers:
                logger.log_metrics(extra, step=trainer.global_step)
