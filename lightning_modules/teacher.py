"""Stage 1: the masked-prediction teacher. ``fit`` = HuBERT pretraining; ``test``/``predict`` = LossPred.

    syllablelm labels --data data/synth/train data/synth/dev data/synth/test --out runs/labels --num-clusters 100
    syllablelm fit --config experiments/configs/tiny/teacher.yaml
    syllablelm test --config experiments/configs/tiny/teacher.yaml --ckpt_path runs/teacher/.../last.ckpt
    syllablelm predict --config experiments/configs/tiny/teacher.yaml --ckpt_path ...   # -> boundary store v0

LossPred per utterance: energy-VAD trim (on the 20 ms grid); the CNN front end once, on the raw waveform; the
transformer once per mask pattern (spans 150 frames apart share a forward; one span per forward with ``exact`` or
when the utterance fits in one gap); matrix C from the per-frame losses (softmax over every row of the label
table) on masked frames; normalized-cut DP on ``S = exp(-C)`` at 6.25 segments/s; segments that start on a
VAD-silent frame dropped; results in file time. The defaults of :class:`LossPredConfig` follow the authors'
notebook (``fast_get_hubert_losses`` / ``process_loss_multiple``); each has a named alternative.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric

from datamodules.dataset import is_empty, item_keys
from lightning_modules.skipped_batches import log_skipped, skipped_batch_loss
from syllablelm.audio.frames import HOP, frames_to_seconds, num_frames, samples_for_frames
from syllablelm.audio.io import SAMPLE_RATE, speech_frame_span, speech_regions
from syllablelm.boundaries.losspred import COUNT_RULES, loss_matrices, mask_groups, num_segments, similarity
from syllablelm.boundaries.mincut import ncut_mincut
from syllablelm.checkpoints import load_teacher
from syllablelm.models import common, flops
from syllablelm.models.hubert import SOFTMAX_ROWS, HubertTeacher, TeacherConfig, compute_span_mask
from syllablelm.models.schedules import linear_warmup_decay

WAVEFORM_INPUTS = ("raw", "pretrained")


@dataclass
class LossPredConfig:
    """LossPred settings. Defaults = the authors' notebook; the named alternatives restore cleaner variants."""

    gap: int = 150  # spans this far apart share a forward (official); ignored with exact
    exact: bool = False  # one span per forward (T + 50 forwards per utterance)
    # authors: T <= gap frames -> one span per forward; False: strict gap packing (two spans in some forwards
    # for gap - 50 < T <= gap)
    exact_when_fits: bool = True
    forward_batch: int = 32  # mask patterns per transformer forward
    rate_hz: float = 6.25  # segments per second of VAD-trimmed speech
    # "authors": int(T / 50 / (1 / rate_hz)) in floats (one fewer than T // 8 for T = 232, 376, ...);
    # "floor": floor(T * rate_hz / 50)
    count_rule: Literal["authors", "floor"] = "authors"
    # "all": softmax over every row of the label table (fairseq imports: the 4 special rows too; authors, fairseq);
    # "labels": over the num_labels real labels only. Identical when the teacher's label_offset is 0.
    softmax_rows: Literal["all", "labels"] = "all"
    # "raw": the teacher's front end sees the unnormalised waveform (authors, whatever the checkpoint's
    # task.normalize); "pretrained": normalised iff the teacher's TeacherConfig.normalize_waveform (its training)
    waveform: Literal["raw", "pretrained"] = "raw"
    max_len: int = 49  # longest segment in frames (inclusive)
    vad: bool = True  # trim to the speech region and drop segments starting in silence
    keep_matrices: int = 4  # utterances per test batch whose similarity matrix goes to the images callback

    def __post_init__(self) -> None:
        for name, allowed in (("count_rule", COUNT_RULES), ("softmax_rows", SOFTMAX_ROWS),
                              ("waveform", WAVEFORM_INPUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LossPredConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")


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
        losspred: LossPred settings (:class:`LossPredConfig`).
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
        # plain types only, so the checkpoint loads with torch's weights_only=True and rebuilds the network;
        # `_class_path` lets LightningCLI (--ckpt_path) re-apply these to the config, as its own hook would
        self.save_hyperparameters({"_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                   "network": net.to_dict(), "init_from": None, "warmup": warmup,
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

    # ---- LossPred (test / predict) ----------------------------------------------------------------------
    def _trim(self, wave: torch.Tensor) -> tuple[int, int, np.ndarray]:
        """VAD span on the 20 ms grid ``(first frame, end frame)`` of the wave and its speech regions (s)."""
        n_frames = num_frames(len(wave))
        if not self.losspred_config.vad:
            return 0, n_frames, np.array([[0.0, len(wave) / SAMPLE_RATE]])
        regions = speech_regions(wave.float().cpu().numpy(), SAMPLE_RATE)
        if len(regions) == 0:
            return 0, n_frames, np.array([[0.0, len(wave) / SAMPLE_RATE]])
        first, last = speech_frame_span(wave, SAMPLE_RATE, n_frames, regions=regions)
        return first, last, regions

    @torch.no_grad()
    def losspred_matrices(self, batch) -> tuple[list[torch.Tensor], list[int], list[tuple[int, np.ndarray]]]:
        """LossPred matrices C of a batch: ``(matrices, frames per utterance, (first frame, speech regions))``.
        The front end runs once per utterance, unpadded (Base's GroupNorm spans time, so padding would change
        it); the transformer runs on mask patterns of all utterances packed together."""
        cfg = self.losspred_config
        if batch["labels"] is None:
            raise ValueError("LossPred reads the teacher's frame labels: give the DataModule a label_dir")
        feats, labels, lengths, trims = [], [], [], []
        for b in range(len(batch["ids"])):
            wave = batch["waves"][b, : int(batch["lengths"][b])]
            first, last, regions = self._trim(wave)
            f, _ = self.teacher.frontend(wave[first * HOP:first * HOP + samples_for_frames(last - first)][None],
                                         normalize=self.losspred_normalize)
            lab = batch["labels"][b, first:last]
            T = min(f.shape[1], int((lab >= 0).sum()))
            feats.append(f[0, :T])
            labels.append(lab[:T])
            lengths.append(T)
            trims.append((first, regions))
        T_max = max(lengths)
        F = torch.zeros(len(feats), T_max, feats[0].shape[-1], device=self.device, dtype=feats[0].dtype)
        L = torch.full((len(feats), T_max), -100, dtype=torch.long, device=self.device)
        for b, (f, lab) in enumerate(zip(feats, labels)):
            F[b, : len(f)], L[b, : len(lab)] = f, lab
        frame_mask = torch.arange(T_max, device=self.device)[None] < torch.tensor(lengths, device=self.device)[:, None]

        def run(rows, span):  # (N,), (N, T) -> per-frame losses (N, T)
            rows, span = rows.to(self.device), span.to(self.device)
            return self.losspred_frame_losses(self.teacher.transformer(F[rows], frame_mask[rows], span), L[rows])

        mats = loss_matrices(run, lengths, gap=cfg.gap, exact=cfg.exact, exact_when_fits=cfg.exact_when_fits,
                             forward_batch=cfg.forward_batch)
        # model FLOPs (callbacks.throughput): the front end once per utterance, the transformer and head once per
        # mask pattern over the padded length
        c = self.teacher.config
        forwards = sum(len(mask_groups(T, gap=cfg.gap, exact=cfg.exact, exact_when_fits=cfg.exact_when_fits))
                       for T in lengths)
        rows = self.teacher.column_offset(cfg.softmax_rows) + c.num_labels
        front = sum(flops.hubert_forward(samples_for_frames(T), c, layers=0) for T in lengths)
        per_forward = flops.transformer(T_max, c.hidden_size, c.num_hidden_layers, c.intermediate_size) + \
            2 * T_max * c.hidden_size * c.final_dim + 2 * T_max * c.final_dim * rows
        self.flops_per_batch = front + forwards * per_forward
        return mats, lengths, trims

    @property
    def losspred_normalize(self) -> bool | None:
        """``frontend(normalize=...)`` for LossPred: False for ``waveform="raw"``, None (= as the teacher's config
        says) for ``"pretrained"``."""
        return None if self.losspred_config.waveform == "pretrained" else False

    def losspred_frame_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # (N, T)
        """LossPred's per-frame cross-entropy of ``labels`` given transformer output ``hidden``, softmax over the
        rows ``LossPredConfig.softmax_rows`` names."""
        rows = self.losspred_config.softmax_rows
        logits = self.teacher.logits(hidden, rows=rows)
        return self.teacher.frame_losses(logits, labels, self.teacher.column_offset(rows))

    def boundaries(self, C: torch.Tensor, first: int, regions: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Normalized-cut segments of one matrix in seconds of the wave (+ the similarity matrix)."""
        cfg = self.losspred_config
        T = C.shape[0]
        S = similarity(C)
        if T < 2:
            return np.zeros((0, 2)), S
        k = min(T, max(num_segments(T, cfg.rate_hz, rule=cfg.count_rule), -(-T // cfg.max_len)))
        bounds = ncut_mincut(S, k, min_len=1, max_len=cfg.max_len).numpy()
        starts, ends = frames_to_seconds(first + bounds[:-1]), frames_to_seconds(first + bounds[1:])
        if cfg.vad:  # drop segments whose first frame (its centre) is outside every speech region
            centre = starts[:, None] + 0.01
            keep = ((centre >= regions[None, :, 0]) & (centre < regions[None, :, 1])).any(1)
            starts, ends = starts[keep], ends[keep]
        return np.stack([starts, ends], 1), S

    def losspred(self, batch, keep_matrices: int = 0) -> dict:
        """LossPred boundaries for every item of a batch: ``{"ids", "segments": [(n, 2) file seconds],
        "matrices": {item: (S, trim seconds)}}`` (matrices for the first ``keep_matrices`` items)."""
        mats, _, trims = self.losspred_matrices(batch)
        segments, matrices = [], {}
        for b, (C, (first, regions)) in enumerate(zip(mats, trims)):
            segs, S = self.boundaries(C, first, regions)
            segments.append(segs + float(batch["offsets"][b]))
            if len(matrices) < keep_matrices:
                matrices[b] = (S.float(), float(frames_to_seconds(first)))
        return {"ids": list(batch["ids"]), "segments": segments, "matrices": matrices}

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
