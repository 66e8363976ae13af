"""TensorBoard images of predicted boundaries over a spectrogram (and the LossPred matrix when a stage returns
one) for the first ``num_images`` utterances of each validation/test epoch; PNG copies go to
``<log_dir>/images/``. Only rank 0 draws (it sees its own shard's first utterances).

A stage's step output: ``{"segments": [(n, 2) file seconds per item], "matrices": {item index: (S, trim seconds)}}``
(matrices optional).
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from syllablelm.audio.io import SAMPLE_RATE
from syllablelm.evaluation.plots import boundary_figure, save_png


class BoundaryImages(pl.Callback):
    def __init__(self, *, num_images: int = 4, tier: str = "syllables", every_n_epochs: int = 1):
        self.num_images = num_images
        self.tier = tier
        self.every_n_epochs = every_n_epochs
        self._kept: list[dict] = []

    def _active(self, trainer) -> bool:
        return trainer.is_global_zero and (trainer.sanity_checking is False) and (
            trainer.current_epoch % self.every_n_epochs == 0 or trainer.state.fn != "fit")

    def _collect(self, trainer, outputs, batch) -> None:
        if not self._active(trainer) or not isinstance(outputs, dict) or "segments" not in outputs:
            return
        matrices = outputs.get("matrices", {})
        for b, pred in enumerate(outputs["segments"]):
            if len(self._kept) >= self.num_images:
                return
            offset = float(batch["offsets"][b])
            alignment = batch["alignments"][b] or {}
            ref, labels = alignment.get(self.tier, (None, None))
            matrix, trim = matrices.get(b, (None, 0.0))
            self._kept.append({
                "id": batch["ids"][b], "wave": batch["waves"][b, : int(batch["lengths"][b])].cpu().numpy(),
                "pred": np.asarray(pred) - offset, "ref": None if ref is None else ref - offset, "labels": labels,
                "matrix": None if matrix is None else matrix.cpu().numpy(), "trim": trim})

    def _flush(self, trainer, split: str) -> None:
        kept, self._kept = self._kept, []
        if not kept:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        # not trainer.log_dir: it broadcasts, and only rank 0 gets here (a collective on one rank hangs DDP or
        # pairs with another rank's collective)
        folder = Path(loggers[0].log_dir if loggers else trainer.default_root_dir) / "images"
        for item in kept:
            fig = boundary_figure(item["wave"], SAMPLE_RATE, predicted=item["pred"], reference=item["ref"],
                                  reference_labels=item["labels"], matrix=item["matrix"], matrix_offset=item["trim"],
                                  title=f"{split} {item['id']} (epoch {trainer.current_epoch})")
            for lg in loggers:
                lg.experiment.add_figure(f"{split}/boundaries/{item['id']}", fig, trainer.global_step, close=False)
            save_png(fig, folder / f"{split}_{item['id'].replace('/', '_')}_e{trainer.current_epoch}.png")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._flush(trainer, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module):
        self._flush(trainer, "test")
