"""Stage 2: SylBoost — a student distilled from a frozen teacher's features pooled inside syllable-like segments.

    syllablelm fit --config experiments/configs/tiny/sylboost.yaml

Student and frozen teacher start from the same checkpoint (this project's teacher ``.ckpt``, a fairseq HuBERT
``.pt`` or an HF HuBERT / WavLM / data2vec-audio directory), cut after ``feature_layer``. Target: the teacher's
features mean-pooled over the middle third of each segment of the current boundary version (a pause between
stored segments is a segment of its own; frames before the first boundary get zero; as the authors, the last
segment ends at the training crop's end, ``pad_targets``); loss: MSE over non-padded frames. The student keeps the
checkpoint's layerdrop except data2vec 2.0's main blocks (``student_layerdrop``).
``callbacks.boundary_regeneration.BoundaryRegeneration`` decides when boundaries are regenerated (every
``epochs_per_iteration`` epochs) and calls :meth:`SylBoostModule.start_iteration`; this module decides how, with
the pure :meth:`extract_boundaries`. The callback uses only the members of
:class:`datamodules.contracts.RegenerationModule`, which this module implements.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from torchmetrics import MeanMetric

from datamodules.contracts import SpeechBatch
from datamodules.dataset import is_empty, item_keys
from lightning_modules.skipped_batches import log_skipped, skipped_batch_loss
from syllablelm.audio.frames import HOP, SAMPLE_RATE, seconds_to_frames
from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig
from syllablelm.checkpoints import load_backbone, suite
from syllablelm.models import common, flops
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder
from syllablelm.models.encoder import D2V2_TYPE, SpeechEncoder
from syllablelm.models.schedules import bert_warmup_linear, linear_warmup_decay
from syllablelm.units.quantizer import segment_mean_targets

LR_SCHEDULES = ("linear_warmup_decay", "bert_warmup_linear")  # the first is the default
PAD_TARGETS = ("authors", "none")  # where the last segment ends: the crop's end (the default), the clip's end
STUDENT_LAYERDROP = ("authors", "none")  # the default; or a dict of values


def layerdrop_settings(model: torch.nn.Module) -> dict[str, float]:
    """The layerdrop fields of an encoder network (what :class:`SpeechEncoder` wraps): data2vec 2.0's ``layerdrop``
    (main blocks, fairseq ``model.layerdrop``) and ``prenet_layerdrop`` (``modalities.audio.prenet_layerdrop``);
    an HF model's ``layerdrop`` (HuBERT: fairseq's ``encoder_layerdrop``); {} for a model without one."""
    if isinstance(model, Data2Vec2AudioEncoder):
        return {"layerdrop": float(model.config.layerdrop), "prenet_layerdrop": float(model.config.prenet_layerdrop)}
    value = getattr(model.config, "layerdrop", None)
    return {} if value is None else {"layerdrop": float(value)}


def resolve_student_layerdrop(rule: str | dict, pretrained: dict[str, float], data2vec2: bool) -> dict[str, float]:
    """The student's layerdrop values under ``rule`` (see :class:`SylBoostModule`), from the checkpoint's
    (``pretrained``, :func:`layerdrop_settings` read before :class:`SpeechEncoder` zeroes them)."""
    if isinstance(rule, dict):
        values = {k: float(v) for k, v in rule.items()}
        if set(values) != set(pretrained) or not all(0.0 <= v <= 1.0 for v in values.values()):
            raise ValueError(f"student_layerdrop: expected values in [0, 1] for exactly {sorted(pretrained)} "
                             f"(this backbone's layerdrop fields), got {rule}")
        return values
    if rule == "none":
        return {k: 0.0 for k in pretrained}
    if rule == "authors":  # their SylBoost zeroes data2vec 2.0's main-block layerdrop only; HuBERT keeps its own
        return {**pretrained, "layerdrop": 0.0} if data2vec2 else dict(pretrained)
    raise ValueError(f"student_layerdrop must be one of {', '.join(STUDENT_LAYERDROP)} or a dict of values, "
                     f"got {rule!r}")


def set_layerdrop(model: torch.nn.Module, values: dict[str, float]) -> None:
    """Write ``values`` into the network's config, which its forward reads at every call (HF encoders share the
    model's config object; :class:`Data2Vec2AudioEncoder` reads its own)."""
    for key, value in values.items():
        setattr(model.config, key, float(value))


def active_layerdrop(model: torch.nn.Module) -> dict[str, float]:
    """The layerdrop fields above 0 that apply to a block the network keeps (a data2vec 2.0 file with
    ``prenet_depth: 0`` has no prenet block to skip, whatever its ``prenet_layerdrop``)."""
    values = {k: v for k, v in layerdrop_settings(model).items() if v > 0}
    if isinstance(model, Data2Vec2AudioEncoder):
        prenet = min(model.config.prenet_depth, len(model.blocks))
        if prenet == 0:
            values.pop("prenet_layerdrop", None)
        if len(model.blocks) == prenet:
            values.pop("layerdrop", None)
    return values


def crop_frames(seconds: float | None) -> int | None:
    """Frames of a crop of ``seconds``, as the authors' loader counts them: ``round(16000 * seconds / 320)``
    (400 for 8 s; the CNN itself gives 399). None for no crop."""
    return None if not seconds else round(SAMPLE_RATE * float(seconds) / HOP)


class SylBoostModule(pl.LightningModule):
    """SylBoost student + frozen teacher.

    Args:
        init_from: the checkpoint both start from (required for a new run; checkpoints of this module rebuild
            from their own hyper-parameters).
        feature_layer: ``hidden_states[feature_layer]`` (HF numbering) for student, target and units: 11 of 12
            for data2vec 2.0, 10 for HuBERT-Base (docs/algorithms.md).
        normalize_waveform: per-utterance input normalisation. False (the authors': their SylBoost feeds raw
            audio to every backbone, normalised-pretrained ones included, and the released δ values assume it);
            None = as the checkpoint was pretrained; True = always.
        freeze_cnn: keep the student's CNN fixed. None (the authors' rule: they freeze the parameters named
            ``feature_extractor``) freezes the CNN of HuBERT-style backbones and trains data2vec 2.0's, whose CNN
            is ``local_encoder`` in fairseq; True / False force it.
        optimizer, warmup, lr_schedule: the optimizer (AdamW by default; the paper configs use the authors' BertAdam,
            :class:`syllablelm.models.optimizers.BertAdam`) and its learning-rate multiplier per step, ``warmup``
            the fraction of an iteration's steps spent warming up: ``linear_warmup_decay`` (default; first step
            ``1 / warmup steps``) or ``bert_warmup_linear`` (the authors' BertAdam schedule: the first update at
            learning rate 0; :func:`syllablelm.models.schedules.bert_warmup_linear`).
        iterations, epochs_per_iteration: the schedule (the authors' training script: 2 x 3 epochs; the paper's
            text says 5); ``trainer.max_epochs`` must equal their product.
        reinit_each_iteration: re-initialise the student from the start checkpoint and restart the optimizer and
            LR schedule at every iteration (paper); False continues training across iterations.
        cache_frozen: keep what cannot change in memory, per crop (utterance, offset, length): the frozen CNN's
            output and the teacher's features. Each step then runs only the student's trainable layers; results
            are the same (up to float rounding). Needs ``freeze_cnn`` and fixed crops (``data.crop_mode: first``);
            memory ~ frames x (CNN channels + hidden) x 4 bytes, so it is for small corpora and models (the demo:
            the CNN is most of a tiny model's cost), not for 100 h of LibriSpeech.
        compile_layers: ``torch.compile`` each transformer layer of student and teacher in place (opt-in: a
            speed-up on GPUs whose kernels round differently from eager ones; not saved with the checkpoint).
        pad_targets: where the last segment of a training crop ends. ``"authors"`` (default): at the crop's end,
            ``round(data.crop_seconds * 16000 / 320)`` frames (400 for 8 s), as their data loader pads every clip to
            the crop; a clip shorter than the crop then has a last segment reaching into padding, whose pooling
            window is averaged over its real frames only, or is zero if it has none (docs/algorithms.md, Stage 2).
            Validation uses ``data.eval_crop_seconds``; without a crop (or a datamodule) the clip's end. ``"none"``:
            always at the clip's last real frame.
        student_layerdrop: ``"authors"`` (default): the student keeps the checkpoint's layerdrop (HuBERT's
            ``encoder_layerdrop``, data2vec 2.0's ``prenet_layerdrop``) except data2vec 2.0's main-block
            ``layerdrop``, which is 0, as their SylBoost sets it; ``"none"``: no layerdrop at all; or a dict of
            values for this backbone's fields (what checkpoints save: the resolved values). Layerdrop > 0 leaves
            the skipped blocks' parameters unused in a step, so DDP needs ``trainer.strategy:
            ddp_find_unused_parameters_true`` (checked at setup). The frozen teacher runs in eval mode: none.
    """

    def __init__(
        self,
        *,
        init_from: str | None = None,
        feature_layer: int = 11,
        normalize_waveform: bool | None = False,
        freeze_cnn: bool | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup: float = 0.1,
        lr_schedule: str = "linear_warmup_decay",
        iterations: int = 2,
        epochs_per_iteration: int = 5,
        reinit_each_iteration: bool = True,
        cache_frozen: bool = False,
        segmenter: SegmenterConfig | None = None,
        encoder: dict | None = None,
        compile_layers: bool = False,
        pad_targets: str = "authors",
        student_layerdrop: str | dict = "authors",
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        if pad_targets not in PAD_TARGETS:
            raise ValueError(f"pad_targets must be one of {', '.join(PAD_TARGETS)}, got {pad_targets!r}")
        if encoder is not None:  # rebuilding from a checkpoint's hyper-parameters
            self.teacher = SpeechEncoder.from_spec(encoder)
            pretrained = layerdrop_settings(self.teacher.model)  # the spec's (zero): checkpoints save the values
        elif init_from:
            backbone = load_backbone(init_from)
            pretrained = layerdrop_settings(backbone.encoder)  # before SpeechEncoder zeroes them
            if backbone.layers is not None and feature_layer > backbone.layers:
                raise ValueError(f"{init_from}: feature layer {feature_layer} asked for, the {backbone.format} file "
                                 f"keeps {backbone.layers}")
            normalize = backbone.normalize_waveform if normalize_waveform is None else normalize_waveform
            self.teacher = SpeechEncoder(backbone.encoder, layer=feature_layer, normalize_waveform=bool(normalize))
        else:
            raise ValueError("SylBoostModule needs init_from (a teacher .ckpt, a fairseq .pt or an HF model dir)")
        self.student = copy.deepcopy(self.teacher)
        data2vec2 = isinstance(self.teacher.model, Data2Vec2AudioEncoder)
        layerdrop = resolve_student_layerdrop(student_layerdrop, pretrained, data2vec2)
        set_layerdrop(self.student.model, layerdrop)
        # the loaders return eval-mode models and Lightning keeps a module's mode at fit start: without this the
        # student of iteration 1 trained without dropout, and later iterations (after a regeneration restored train
        # mode) with it, and a run resumed inside iteration 2 without it again
        self.student.train()
        self.teacher.requires_grad_(False).eval()
        if freeze_cnn is None:
            freeze_cnn = not data2vec2
        if freeze_cnn:
            self.student.freeze_cnn()
        elif cache_frozen:
            raise ValueError("cache_frozen needs freeze_cnn: a trained CNN's output cannot be cached")
        if compile_layers:  # after deepcopy: student and teacher each compile their own layers
            common.compile_layers(self.student)
            common.compile_layers(self.teacher)
        self._frontend_cache: dict[tuple, torch.Tensor] = {}  # crop -> CNN output (T, C); frozen, identical in both
        self._target_cache: dict[tuple, torch.Tensor] = {}  # crop -> teacher features (T, H)
        seg = SegmenterConfig.of(segmenter)
        self.segmenter = seg
        self.optimizer = optimizer
        self.iteration = 0  # training iteration in progress (0-based); the callback keeps it across resumes
        self.val_loss = MeanMetric()
        self.register_buffer("delta", torch.tensor(float("nan") if seg.delta is None else seg.delta,
                                                   dtype=torch.float64))
        self.save_hyperparameters({
            "_class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_from": None,
            "feature_layer": feature_layer, "normalize_waveform": self.teacher.normalize_waveform,
            "freeze_cnn": freeze_cnn, "warmup": warmup, "lr_schedule": lr_schedule, "iterations": iterations,
            "epochs_per_iteration": epochs_per_iteration, "reinit_each_iteration": reinit_each_iteration,
            "cache_frozen": cache_frozen, "pad_targets": pad_targets, "student_layerdrop": layerdrop,
            suite.SYLBOOST_SEGMENTER: seg.to_dict(), suite.SYLBOOST_ENCODER: self.teacher.spec()})
        self._target_ends: dict[str, int | None] = {"train": None, "val": None}  # crop frames per split (setup)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: never dropout, whatever Lightning toggles
        return self

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer.datamodule, "hparams", None)  # setup has a trainer
        crop = getattr(data, "crop_mode", "first")
        if self.hparams.cache_frozen and stage == "fit" and crop != "first":
            raise ValueError(f"cache_frozen needs the same crop of each file every epoch (data.crop_mode: first), "
                             f"got crop_mode {crop!r}: every epoch would add new crops to the cache")
        if self.hparams.pad_targets == "authors":
            self._target_ends = {"train": crop_frames(getattr(data, "crop_seconds", None)),
                                 "val": crop_frames(getattr(data, "eval_crop_seconds", None))}
        strategy = self.trainer.strategy
        drops = active_layerdrop(self.student.model)
        if stage == "fit" and drops and isinstance(strategy, DDPStrategy) and \
                not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
            raise ValueError(f"the student's layerdrop {drops} skips blocks at random, leaving their parameters "
                             "unused in a step, which DDP rejects: set trainer.strategy: "
                             "ddp_find_unused_parameters_true (as the paper configs do) or "
                             "model.student_layerdrop: none")

    # ---- the frozen-feature cache -------------------------------------------------------------------------
    def _crops(self, batch) -> list[tuple[tuple, torch.Tensor]]:
        """(cache key, unpadded wave) of every item; the key names the file, crop offset and length."""
        return [((*key, int(n)), batch["waves"][b, : int(n)])
                for b, (key, n) in enumerate(zip(item_keys(batch), batch["lengths"]))]

    @torch.no_grad()
    def _frontend(self, key: tuple, wave: torch.Tensor) -> torch.Tensor:
        """Cached in float32 (what the CNN gives outside autocast; under bf16 autocast the layers after it cast
        again) and handed out on the wave's device (Lightning moves the module back to the CPU after fit)."""
        if key not in self._frontend_cache:
            self._frontend_cache[key] = self.teacher.frontend(wave).float()  # = the student's frozen CNN
        return self._frontend_cache[key].to(wave.device)

    @torch.no_grad()
    def _cached(self, batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per item: the frozen CNN output and the teacher's features, computed on first sight."""
        frames, targets = [], []
        for key, wave in self._crops(batch):
            frames.append(self._frontend(key, wave))
            if key not in self._target_cache:
                lengths = torch.tensor([len(wave)], device=wave.device)
                self._target_cache[key] = self.teacher.forward_frontend([frames[-1]], lengths)[0][0].float()
            targets.append(self._target_cache[key].to(wave.device))
        return frames, targets

    # ---- distillation -----------------------------------------------------------------------------------
    def _shared_step(self, batch, split: str = "train") -> tuple[torch.Tensor, int]:  # (mean loss, elements)
        """The distillation loss of a batch; ``split`` ("train" / "val") names the crop the last segment ends at
        (``pad_targets``)."""
        waves, mask = batch["waves"], batch["attention_mask"]
        if self.hparams.cache_frozen:
            frames, targets = self._cached(batch)
            target_feats = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
            feats, frame_mask = self.student.forward_frontend(frames, batch["lengths"])
        else:
            with torch.no_grad():
                target_feats, frame_mask = self.teacher(waves, mask)  # (B, T, H)
            feats, _ = self.student(waves, mask)
        T = frame_mask.sum(1).tolist()
        seg_frames = []
        for b, segs in enumerate(batch["segments"]):
            if segs is None:
                raise ValueError(f"utterance {batch['ids'][b]} has no boundaries: set the DataModule's "
                                 "boundary_dir/boundary_version (LossPred's store, version 0)")
            seg_frames.append(seconds_to_frames(segs, float(batch["offsets"][b])))
        end = self._target_ends.get(split)  # None: the clip's end
        ends = None if end is None else [max(end, t) for t in T]  # a crop is never shorter than its clip
        targets = segment_mean_targets(target_feats, seg_frames, T, mode="middle_third", end=ends)  # (B, T, H)
        valid = frame_mask[..., None].to(feats.dtype)
        n = int(frame_mask.sum()) * feats.shape[-1]
        loss = (((feats - targets) ** 2) * valid).sum() / max(1, n)
        return loss, n

    def training_flops(self, samples: int, batch: int) -> int | None:
        """Model FLOPs of one training step on ``batch`` crops of ``samples`` samples (syllablelm.models.flops): the
        student's trainable layers 3x, a frozen CNN 1x (0 with the frozen-feature cache), the frozen teacher's
        forward 1x (0 with the cache). None for encoders without a formula (data2vec 2.0)."""
        spec = self.student.spec()
        if spec["model_type"] == D2V2_TYPE:
            return None
        cfg, layers = spec["config"], spec["layer"]
        body = flops.hubert_forward(samples, cfg, layers=layers, cnn=False)
        cnn = flops.hubert_forward(samples, cfg, layers=layers) - body
        cached = self.hparams.cache_frozen
        cnn_trains = any(p.requires_grad for p in self.student.model.feature_extractor.parameters())
        student = flops.training(body + (cnn if cnn_trains else 0), 0 if cached or cnn_trains else cnn)
        return batch * (student + (0 if cached else body + cnn))

    def training_step(self, batch, batch_idx):
        """Mean squared error per real frame and dimension of this rank's batch (DDP averages gradients). A batch
        with no readable file gives a zero loss on every trainable parameter (:mod:`.skipped_batches`)."""
        if is_empty(batch):
            return skipped_batch_loss(self, batch, batch_idx)
        log_skipped(self, False)
        self.flops_per_batch = self.training_flops(batch["waves"].shape[1], len(batch["ids"]))
        loss, _ = self._shared_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("train/iteration", float(self.iteration), batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch, batch_idx):
        if is_empty(batch):
            return None
        out = {"ids": batch["ids"], "segments": self.extract_boundaries(batch)}
        if all(s is not None for s in batch["segments"]):
            loss, n = self._shared_step(batch, "val")
            self.val_loss.update(loss, weight=n)  # weighted sums: the exact per-element mean across ranks
            self.log("val/loss", self.val_loss, batch_size=len(batch["ids"]))
        return out

    def test_step(self, batch, batch_idx):
        return None if is_empty(batch) else {"ids": batch["ids"], "segments": self.extract_boundaries(batch)}

    def predict_step(self, batch, batch_idx):
        if is_empty(batch):
            return {"ids": [], "segments": []}
        return {"ids": batch["ids"], "segments": self.extract_boundaries(batch)}

    # ---- boundaries -------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, batch: SpeechBatch) -> list[torch.Tensor]:
        """Student features per utterance, each computed alone (unpadded), so they never depend on what else
        is in the batch: 1-process and multi-process regeneration give identical boundaries."""
        if self.hparams.cache_frozen:
            return [self.student.forward_frontend([self._frontend(key, wave)], torch.tensor([len(wave)]))[0][0]
                    for key, wave in self._crops(batch)]
        return [self.student(batch["waves"][b:b + 1, : int(batch["lengths"][b])])[0][0]
                for b in range(len(batch["ids"]))]

    def boundary_segmenter(self) -> Segmenter:
        """The segmenter with the δ in use (the config's, or the one the regeneration callback calibrated)."""
        return Segmenter(self.segmenter, delta=float(self.delta))

    @torch.no_grad()
    def extract_boundaries(self, batch: SpeechBatch, features: list[torch.Tensor] | None = None) -> list[np.ndarray]:
        """Segments of every item, ``(n, 2)`` seconds in file time (a pure function of the student's weights and
        the audio; used by validation, regeneration and unit extraction)."""
        feats = self.features(batch) if features is None else features
        waves = [batch["waves"][b, : int(batch["lengths"][b])] for b in range(len(feats))]
        return self.boundary_segmenter().segments(feats, waves, [float(o) for o in batch["offsets"]])

    # ---- the regeneration contract (datamodules.contracts.RegenerationModule) -----------------------------
    @property
    def iterations(self) -> int:
        return self.hparams.iterations

    @property
    def epochs_per_iteration(self) -> int:
        return self.hparams.epochs_per_iteration

    @property
    def reinit_each_iteration(self) -> bool:
        return self.hparams.reinit_each_iteration

    @property
    def calibrates_delta(self) -> bool:
        """Whether the segmenter calibrates δ to a target rate (``calibrate_to_hz``)."""
        return self.segmenter.calibrate_to_hz is not None

    def boundary_delta(self) -> float | None:
        """The δ boundaries are cut with (the ``delta`` buffer, saved in checkpoints); None while it is unset."""
        delta = float(self.delta)
        return None if math.isnan(delta) else delta

    def set_boundary_delta(self, delta: float) -> None:
        self.delta.fill_(delta)

    def calibrated_delta(self, features: list[torch.Tensor], waves: list[torch.Tensor]) -> float:
        """The δ whose search gives ``calibrate_to_hz`` on these utterances (sets nothing: see
        :meth:`set_boundary_delta`)."""
        return Segmenter(self.segmenter).calibrate(features, waves)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval + inference mode (regeneration, calibration), then the training flag as it was."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.train(was_training)

    # ---- iterations -------------------------------------------------------------------------------------
    def restore_iteration(self, iteration: int) -> None:
        """The iteration a fit is in (the regeneration callback, at fit start: a resumed run goes on with the
        iteration its checkpoint was in); the weights are left as they are."""
        self.iteration = iteration

    def start_iteration(self, iteration: int) -> None:
        """Called by the regeneration callback on every rank once the new boundaries are in place: the student
        starts again from the initial weights (the frozen teacher holds them) unless training continues."""
        self.iteration = iteration
        if self.hparams.reinit_each_iteration:
            self.student.load_state_dict(self.teacher.state_dict())

    def configure_optimizers(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        opt = self.optimizer(params)
        total = int(self.trainer.estimated_stepping_batches)
        if self.hparams.reinit_each_iteration:  # each iteration has its own warm-up and decay
            total = max(1, total // self.hparams.iterations)
        if self.hparams.get("lr_schedule", LR_SCHEDULES[0]) == "bert_warmup_linear":  # the authors' (with BertAdam)
            multiplier = bert_warmup_linear(self.hparams.warmup, total)
        else:
            multiplier = linear_warmup_decay(int(self.hparams.warmup * total), total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
