"""The CPU unit vocoder's training (issue 29, item 3): the iSTFT generator and its duration predictor, jointly.

    syllablelm synth --out data/vocoder --num-utterances 600 --speakers 30 --splits train=1.0 \
        --exclude-held-out --seed 7
    syllablelm fit --config experiments/configs/tiny/vocoder.yaml              # add --ckpt_path last to resume
    python -c "from syllablelm.checkpoints.vocoders import strip_vocoder_checkpoint as s; \
        s('runs/tiny/vocoder/checkpoints/last.ckpt', 'experiments/pretrained/vocoder.ckpt')"

Training step: a batch of crops (fine frame ids + their waves) -> :class:`ISTFTVocoder` -> mel L1 + multi-resolution
STFT loss against the real crops, plus the duration predictor's MSE on ``log(1 + d)`` over each utterance's whole run
sequence (:class:`~syllablelm.models.istft_vocoder.VocoderLosses`). Validation: the same losses on whole dev
utterances, with the predicted durations' mean absolute error in frames, and the first ``audio_examples``
utterances resynthesised from their true fine units go to TensorBoard (``add_audio``, next to the original once).

Checkpoint contents that :func:`syllablelm.checkpoints.vocoders.load_unit_vocoder` reads (without importing this
module): ``hyper_parameters["vocoder"]`` (:meth:`ISTFTVocoderConfig.to_dict`) and ``state_dict["vocoder.*"]``.
"""
from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable

from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig, VocoderLosses
from syllablelm.models.vocoder import durations_from_log

log = logging.getLogger(__name__)


def cosine_warmup(warmup: int, total: int, final: float = 0.1):
    """LR multiplier: linear warm-up over ``warmup`` steps, then a cosine from 1 down to ``final`` at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        x = min(1.0, (step - warmup) / max(1, total - warmup))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * x))
    return f


class VocoderModule(pl.LightningModule):
    """Trains :class:`ISTFTVocoder`.

    Args:
        vocoder: :class:`ISTFTVocoderConfig` fields (``num_units`` and ``hop`` must match the data's fine units).
        optimizer: the optimizer (LightningCLI callable), default AdamW(lr 1e-3).
        warmup: warm-up steps of the cosine schedule (to 0.1 x lr at the trainer's last step).
        mel_weight / stft_weight / dur_weight: loss weights.
        audio_examples: dev utterances whose resynthesis is logged as audio at each validation.
    """

    def __init__(self, vocoder: dict | None = None, optimizer: OptimizerCallable | None = None, warmup: int = 200,
                 mel_weight: float = 1.0, stft_weight: float = 1.0, dur_weight: float = 1.0,
                 audio_examples: int = 2):
        super().__init__()
        cfg = ISTFTVocoderConfig.from_dict(dict(vocoder or {}))
        self.save_hyperparameters({"vocoder": cfg.to_dict(), "warmup": warmup, "mel_weight": mel_weight,
                                   "stft_weight": stft_weight, "dur_weight": dur_weight,
                                   "audio_examples": audio_examples})
        self.vocoder = ISTFTVocoder(cfg)
        self.losses = VocoderLosses(mel_weight, stft_weight, dur_weight)
        self.optimizer = optimizer
        self._originals_logged: set[str] = set()

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)  # setup runs inside a Trainer
        for name in ("num_units", "hop"):
            have = getattr(dm, name, None)
            want = getattr(self.vocoder.config, name)
            if have is not None and int(have) != int(want):
                raise ValueError(f"the data's fine units have {name}={have}, the vocoder is configured for {want}")

    def _losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        fake = self.vocoder.frames_to_wave(batch["frames"])
        log_dur = self.vocoder.log_durations(batch["units"])
        return self.losses(fake, batch["wave"], log_dur, batch["durations"], batch["mask"]), fake, log_dur

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out, _, _ = self._losses(batch)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=batch["frames"].shape[0])
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out, fake, log_dur = self._losses(batch)
        mask = batch["mask"]
        dur_err = (durations_from_log(log_dur) - batch["durations"]).abs().float()[mask].mean()
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=1)
        self.log("val/dur_abs_error_frames", dur_err, batch_size=1)
        if batch_idx < self.hparams.audio_examples:
            self._log_audio(batch, fake)

    def _log_audio(self, batch: dict, fake: torch.Tensor) -> None:
        tb = next((lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_audio")), None)
        if tb is None:
            return
        uid = batch["id"][0] if "id" in batch else str(len(self._originals_logged))
        sr = self.vocoder.sample_rate
        tb.add_audio(f"val/from_fine/{uid}", fake[0:1].detach().float().cpu(), self.global_step, sample_rate=sr)
        if uid not in self._originals_logged:
            tb.add_audio(f"val/original/{uid}", batch["wave"][0:1].float().cpu(), self.global_step, sample_rate=sr)
            self._originals_logged.add(uid)

    def configure_optimizers(self):
        opt = (self.optimizer(self.parameters()) if self.optimizer is not None
               else torch.optim.AdamW(self.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.01))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_warmup(int(self.hparams.warmup), total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
