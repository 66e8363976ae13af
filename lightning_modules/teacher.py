"""Stage 1: the masked-prediction teacher. ``fit`` = HuBERT pretraining; ``test``/``predict`` = LossPred.

    syllablelm labels --data data/synth/train data/synth/dev data/synth/test --out runs/labels --num-clusters 100
    syllablelm fit --config experiments/configs/tiny/teacher.yaml
    syllablelm test --config experiments/configs/tiny/teacher.yaml --ckpt_path runs/teacher/.../last.ckpt
    syllablelm predict --config experiments/configs/tiny/teacher.yaml --ckpt_path ...   # -> boundary store v0

LossPred per utterance: energy-VAD trim (on the 20 ms grid); frame labels of the trimmed wave from the label
model the label store recorded (``losspred.labels: trimmed``, as the authors' notebook; ``whole_file`` slices the
stored whole-file labels); the CNN front end once, on the raw waveform; the
transformer once per mask pattern (spans 150 frames apart share a forward; one span per forward with ``exact`` or
when the utterance fits in one gap); matrix C from the per-frame losses (softmax over every row of the label
table) on masked frames; normalized-cut DP on ``S = exp(-C)`` at 6.25 segments/s; segments that start on a
VAD-silent frame dropped; results in file time. The defaults of :class:`LossPredConfig` follow the authors'
notebook (``fast_get_hubert_losses`` / ``process_loss_multiple``); each has a named alternative. The algorithm is
:func:`syllablelm.boundaries.losspred.losspred_segments` (no Lightning); the test/predict steps only wrap it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric

from datamodules.dataset import is_empty, item_keys
from datamodules.label_store import CHECKPOINT, FEATURES, KMEANS, LAYER, LabelStore
from lightning_modules.skipped_batches import log_skipped, skipped_batch_loss
from syllablelm.boundaries.losspred import (
    LossPredMatrices,
    LossPredOptions,
    losspred_flops,
    losspred_matrices,
    losspred_segments,
)
from syllablelm.checkpoints import load_teacher, suite
from syllablelm.models import common, flops
from syllablelm.models.hubert import HubertTeacher, TeacherConfig, compute_span_mask
from syllablelm.models.schedules import linear_warmup_decay
from syllablelm.units.frame_labels import FrameLabeler

log = logging.getLogger(__name__)


@dataclass
class LossPredConfig(LossPredOptions):
    """LossPred settings: the algorithm's (:class:`~syllablelm.boundaries.losspred.LossPredOptions`; defaults = the
    authors' notebook, the named alternatives restore cleaner variants) plus what the test step logs."""

    keep_matrices: int = 4  # utterances per test batch whose similarity matrix goes to the images callback


class TeacherModule(pl.LightningModule):
    """HuBERT-style teacher.

    Args:
        network: the architecture (``TeacherConfig`` fields; presets ``tiny``/``base``/``large`` in code);
            ignored when ``init_from`` is given.
        init_from: start from a fairseq HuBERT ``.pt`` (encoder + head, label offset 4) or an HF HuBERT
            directory (encoder only; the head starts fresh and needs training). The checkpoint this module saves
            is self-contained either way.
        optimizer: e.g. ``torch.optim.AdamW`` with its arguments; ``warmup`` is the warm-up fraction of all steps.
        mask_prob, mask_length: HuBERT span masking for training (0.8, 10).
        losspred: LossPred settings (:class:`LossPredConfig`). With ``labels: trimmed`` (default) test/predict
            label each VAD-trimmed wave with the label model of the DataModule's label store (``label_dir``, the
            version it reads), found in :meth:`setup`; without a trainer call :meth:`use_label_store` first.
        compile_layers: ``torch.compile`` each transformer layer in place (opt-in: a speed-up on GPUs whose
            kernels round differently from eager ones; not saved with the checkpoint).
    """

    def __init__(
        self,
        *,
        network: TeacherConfig | None = None,
        init_from: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup: float = 0.08,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        losspred: LossPredConfig | None = None,
        compile_layers: bool = False,
    ):
        super().__init__()
        net = TeacherConfig(**network) if isinstance(network, dict) else (network or TeacherConfig.tiny())
        if init_from:  # a fairseq HuBERT .pt or a teacher .ckpt (head included), or an HF folder (fresh head)
            self.teacher = load_teacher(init_from, num_labels=net.num_labels, final_dim=net.final_dim)
            net = self.teacher.config
        else:
            self.teacher = HubertTeacher(net)
        if compile_layers:
            common.compile_layers(self.teacher)
        lp = LossPredConfig(**losspred) if isinstance(losspred, dict) else (losspred or LossPredConfig())
        self.optimizer = optimizer
        self.losspred_config = lp
        self.predict_skip: set[tuple[str, int]] = set()  # (id, offset ms) a BoundaryWriter already has
        # LossPred's label model (losspred.labels: trimmed); a plain attribute: never part of the checkpoint
        self.labeler: FrameLabeler | None = None
        # plain types only, so the checkpoint loads with torch's weights_only=True and rebuilds the network;
        # `_class_path` lets LightningCLI (--ckpt_path) re-apply these to the config, as its own hook would
        self.save_hyperparameters({"_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                   suite.TEACHER_NETWORK: net.to_dict(), "init_from": None, "warmup": warmup,
                                   "mask_prob": mask_prob, "mask_length": mask_length,
                                   "losspred": dataclasses.asdict(lp)})
        self.val_loss, self.val_accuracy = MeanMetric(), MeanMetric()

    # ---- masked prediction (fit) ------------------------------------------------------------------------
    def _masked_prediction(self, batch, generator=None):
        feats, frame_mask = self.teacher.frontend(batch["waves"], batch["attention_mask"])
        labels = batch["labels"]
        if labels is None:
            raise ValueError("the teacher trains on frame labels: give the DataModule a label_dir "
                             "(made by `syllablelm labels`)")
        T = min(feats.shape[1], labels.shape[1])
        feats, frame_mask, labels = feats[:, :T], frame_mask[:, :T] & (labels[:, :T] >= 0), labels[:, :T]
        span = compute_span_mask(frame_mask, self.hparams.mask_prob, self.hparams.mask_length, generator=generator)
        # training: softmax over the real labels (column k = label k); identical to fairseq's all-row softmax for
        # this project's teachers (label_offset 0)
        logits = self.teacher.logits(self.teacher.transformer(feats, frame_mask, span), rows="labels")  # (B, T, K)
        loss_sum, count = self.teacher.masked_prediction_loss(logits, labels, span, frame_mask)
        sel = span & frame_mask
        correct = ((self.teacher.predicted_labels(logits, rows="labels") == labels) & sel).sum()
        return loss_sum, count, correct

    def training_step(self, batch, batch_idx):
        """Mean cross-entropy over this rank's masked frames. DDP averages gradients over ranks, so the global
        loss weights ranks equally (HuBERT's recipe does the same with equal-sized batches). A batch with no
        readable file gives a zero loss on every trainable parameter (:mod:`.skipped_batches`)."""
        if is_empty(batch):
            return skipped_batch_loss(self, batch, batch_idx)
        log_skipped(self, False)
        # model FLOPs of this step, for callbacks.throughput (MFU): the padded batch, every part trains
        cfg = self.teacher.config
        self.flops_per_batch = flops.training(len(batch["ids"]) * flops.hubert_forward(
            batch["waves"].shape[1], cfg, head_rows=self.teacher.column_offset("labels") + cfg.num_labels))
        loss_sum, count, correct = self._masked_prediction(batch)
        loss = loss_sum / count.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("train/accuracy", correct / count.clamp(min=1), batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch, batch_idx):
        if is_empty(batch):
            return None
        generator = torch.Generator().manual_seed(batch_idx)  # the same masks every validation
        loss_sum, count, correct = self._masked_prediction(batch, generator)
        n = count.clamp(min=1)
        self.val_loss.update(loss_sum / n, weight=count)  # weighted sums: exact frame means across ranks
        self.val_accuracy.update(correct / n, weight=count)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("val/accuracy", self.val_accuracy, batch_size=len(batch["ids"]))
        return None

    def configure_optimizers(self):
        opt = self.optimizer(self.parameters())
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(int(self.hparams.warmup * total), total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- LossPred (test / predict): syllablelm.boundaries.losspred on the batch ------------------------------
    def use_label_store(self, label_dir: str, version: int | str = "latest") -> FrameLabeler:
        """LossPred labels each VAD-trimmed wave with the label model of ``version`` of the label store at
        ``label_dir`` (:meth:`datamodules.label_store.LabelStore.labeler`) from now on; returns it."""
        store = LabelStore(label_dir)
        v = store.resolve(version)
        self.labeler = store.labeler(v, device=str(self.device))
        meta = store.manifest(v)["meta"]
        log.info("LossPred labels each VAD-trimmed wave with the label model of %s (%s)", store.version_dir(v),
                 ", ".join(f"{k} {meta.get(k)}" for k in (FEATURES, CHECKPOINT, LAYER, KMEANS)))
        return self.labeler

    def setup(self, stage: str) -> None:
        """For test/predict with ``losspred.labels: trimmed``: the label model of the label version the
        DataModule reads (its ``label_dir`` and resolved ``label_version``), unless one was set already."""
        if stage not in ("test", "predict") or self.losspred_config.labels != "trimmed" or self.labeler is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        label_dir = getattr(getattr(dm, "hparams", None), "label_dir", None)
        if label_dir is None:
            raise ValueError("LossPred (losspred.labels: trimmed) labels each VAD-trimmed wave with the label model "
                             "of a label store: give the DataModule a label_dir (made by `syllablelm labels`), call "
                             "TeacherModule.use_label_store first, or set model.losspred.labels: whole_file")
        version = getattr(dm, "label_version", None)
        self.use_label_store(label_dir, "latest" if version is None else version)

    def _utterances(self, batch) -> tuple[list[torch.Tensor], torch.Tensor | None, FrameLabeler | None]:
        """The batch's unpadded waves, its label rows (``whole_file``) and the label model (``trimmed``): the
        core's inputs."""
        waves = [batch["waves"][b, : int(batch["lengths"][b])] for b in range(len(batch["ids"]))]
        if self.losspred_config.labels == "whole_file":
            if batch["labels"] is None:
                raise ValueError("LossPred (losspred.labels: whole_file) slices the stored frame labels: give the "
                                 "DataModule a label_dir")
            return waves, batch["labels"], None
        if self.labeler is None:
            raise ValueError("LossPred (losspred.labels: trimmed) needs the label model: run it through a Trainer "
                             "whose DataModule has a label_dir, or call TeacherModule.use_label_store first")
        return waves, None, self.labeler.to(self.device)

    @torch.no_grad()
    def losspred_matrices(self, batch) -> LossPredMatrices:
        """LossPred matrices C of a batch: ``(matrices, frames per utterance, (first frame, speech regions))``
        (:func:`~syllablelm.boundaries.losspred.losspred_matrices`); sets ``flops_per_batch``."""
        waves, labels, labeler = self._utterances(batch)
        out = losspred_matrices(self.teacher, waves, labels, labeler=labeler, options=self.losspred_config)
        self.flops_per_batch = losspred_flops(self.teacher, out.lengths, self.losspred_config)
        return out

    def losspred(self, batch, keep_matrices: int = 0) -> dict:
        """LossPred boundaries for every item of a batch: ``{"ids", "segments": [(n, 2) file seconds],
        "matrices": {item: (S, trim seconds)}}`` (matrices for the first ``keep_matrices`` items). The work is
        :func:`~syllablelm.boundaries.losspred.losspred_segments`; this sets ``flops_per_batch`` (MFU)."""
        waves, labels, labeler = self._utterances(batch)
        results = losspred_segments(self.teacher, waves, labels, labeler=labeler, options=self.losspred_config,
                                    offsets=[float(o) for o in batch["offsets"]], keep_similarity=keep_matrices)
        self.flops_per_batch = losspred_flops(self.teacher, [r.frames for r in results], self.losspred_config)
        return {"ids": list(batch["ids"]), "segments": [r.segments for r in results],
                "matrices": {b: (r.similarity, r.trim_seconds) for b, r in enumerate(results)
                             if r.similarity is not None}}

    def test_step(self, batch, batch_idx):
        if is_empty(batch):
            return None
        return self.losspred(batch, keep_matrices=self.losspred_config.keep_matrices if batch_idx == 0 else 0)

    def predict_step(self, batch, batch_idx):
        if is_empty(batch):
            return {"ids": [], "segments": []}
        keys = item_keys(batch)
        if self.predict_skip and all(k in self.predict_skip for k in keys):  # done by a stopped run (BoundaryWriter)
            return {"ids": list(batch["ids"]), "segments": [None] * len(keys)}
        out = self.losspred(batch)
        return {"ids": out["ids"], "segments": out["segments"]}
