"""Boundary metrics of any stage's validation/test predictions, exact under DDP.

A LightningModule's ``validation_step``/``test_step`` returns ``{"segments": [(n, 2) seconds, file time], ...}``
(one entry per batch item); this callback pairs them with the batch's reference syllables and accumulates the
count-state metrics of :mod:`syllablelm.evaluation.boundary_metrics` (both protocols, every shift of the tuning
grid), plus the
achieved segment rate. At epoch end it logs, per split and protocol:

- ``{split}/{protocol}_{f1,precision,recall,r_value,os}`` at shift 0;
- ``{split}/{protocol}_val_shift_*`` (test only): at the shift tuned on the last validation — a shift tuned on
  a separate split, as ``syllablelm evaluate --tune-data`` does, and the number to report;
- ``{split}/{protocol}_oracle_shift_*``: at the shift tuned on the split being scored. An oracle (it chooses the
  shift with the answers it is scored on): an upper bound for monitoring, never a result;
- ``{split}/rate_hz``.

    trainer = Trainer(callbacks=[SegmentationMetrics()])
"""
from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from torchmetrics import SumMetric

from syllablelm.audio.io import SAMPLE_RATE
from syllablelm.evaluation.boundary_metrics import BoundaryMetric

PROTOCOLS = ("syllablelm", "sdhubert")
SCORES = ("precision", "recall", "f1", "r_value", "os")


class SegmentationMetrics(pl.Callback):
    def __init__(self, *, protocols: tuple[str, ...] = PROTOCOLS, tolerance: float = 0.05, tier: str = "syllables"):
        self.protocols = tuple(protocols)
        self.tolerance = tolerance
        self.tier = tier
        self.metrics: dict[str, dict] = {}
        self.results: dict[str, dict[str, float]] = {}  # last computed values per split (for reports)
        self.val_shifts: dict[str, float] = {}  # protocol -> shift tuned on the last validation

    def state_dict(self) -> dict:
        return {"val_shifts": dict(self.val_shifts)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.val_shifts = dict(state_dict.get("val_shifts", {}))

    def _fresh(self, device) -> dict:
        # new objects per epoch: no state shared with a spawned worker, nothing left from the last epoch
        m = {p: BoundaryMetric(protocol=p, tolerance=self.tolerance).to(device) for p in self.protocols}
        m["segments"] = SumMetric().to(device)
        m["seconds"] = SumMetric().to(device)
        m["updates"] = SumMetric().to(device)
        return m

    def _start(self, split: str, pl_module) -> None:
        self.metrics[split] = self._fresh(pl_module.device)

    def _update(self, split: str, outputs, batch) -> None:
        if not isinstance(outputs, dict) or "segments" not in outputs or split not in self.metrics:
            return
        m = self.metrics[split]
        preds, refs = [], []
        for b, pred in enumerate(outputs["segments"]):
            m["segments"].update(float(len(pred)))
            m["seconds"].update(float(batch["lengths"][b]) / SAMPLE_RATE)
            alignment = batch["alignments"][b]
            if alignment is not None and self.tier in alignment:
                preds.append(pred)
                refs.append(alignment[self.tier][0])
        if preds:
            for p in self.protocols:
                m[p].update(preds, refs)
            m["updates"].update(float(len(preds)))

    def _finish(self, split: str, pl_module) -> None:
        m = self.metrics.pop(split, None)
        if m is None:
            return
        values = {}
        with warnings.catch_warnings():  # a stage whose step returns no segments leaves these never updated
            warnings.filterwarnings("ignore", message=".*compute.*before the ..update", category=UserWarning)
            seconds = float(m["seconds"].compute())
            updates = float(m["updates"].compute())
        if seconds > 0:
            values[f"{split}/rate_hz"] = float(m["segments"].compute()) / seconds
        if updates > 0:  # some rank saw references
            for p in self.protocols:
                scores = m[p].compute()
                for k in SCORES:
                    values[f"{split}/{p}_{k}"] = float(scores[k])
                    values[f"{split}/{p}_oracle_shift_{k}"] = float(scores[f"best_{k}"])
                values[f"{split}/{p}_oracle_shift"] = float(scores["best_shift"])
                if split == "val":
                    self.val_shifts[p] = float(scores["best_shift"])
                elif p in self.val_shifts:
                    at = m[p].scores_at(self.val_shifts[p])
                    values.update({f"{split}/{p}_val_shift_{k}": float(at[k]) for k in SCORES})
                    values[f"{split}/{p}_val_shift"] = self.val_shifts[p]
        if values:
            pl_module.log_dict({k: torch.tensor(v) for k, v in values.items()}, sync_dist=False)
        self.results[split] = values

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start("val", pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("val", outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._finish("val", pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        self._start("test", pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("test", outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module):
        self._finish("test", pl_module)
