"""The interleaved vocoder LM (issue 29, item 2): one decoder over syllable units and fine units interleaved in time.

    syllablelm fit --config experiments/configs/tiny/interleaved_lm.yaml

    ilm = InterleavedLMModule.load_from_checkpoint("last.ckpt")
    fine = ilm.generate_fine(syllable_units, temperature=0.7, top_k=20)     # deduplicated fine units

The stream (:mod:`syllablelm.units.interleave`, the authors' ``interleave_strat`` 5) comes from
:class:`datamodules.interleaved_data.InterleavedDataModule`; syllable tokens are given, the model is trained to
predict the fine units and the fine stop token (cross-entropy over the targets, -100 ignored: syllables, the
syllable stop, padding and each piece's last position predict nothing). The decoder is the SpeechLM's
(:class:`syllablelm.models.gpt.GPT`, the authors' ``cluster_alan`` blocks; their interleaved model is the same
``ValleBlock`` stack without a BOS). Its table has ``network.vocab_size + 1`` rows, which must cover the
vocabulary's ``F + S + 3`` ids: ``network.vocab_size = F + S + 2`` makes the table exactly the vocabulary (the
tiny config); the paper config keeps the authors' 10243 (10244 rows, of which their layout uses 9219). The padding
id is an input only (hidden by the padding mask), never a target.

Optimizer and schedule as the SpeechLM's (:class:`lightning_modules.speechlm.SpeechLMModule`): AdamW with the
config's arguments, ``linear_tri_stage`` (or ``warmup_hold_decay``) over optimizer steps.

Generation (:meth:`InterleavedLMModule.generate_fine`, :func:`syllablelm.models.interleaved_generation.generate_fine`)
uses caps from the training data, kept in every checkpoint (``checkpoint["interleaved_generation"]``): a stretch
between two groups ends after at most ``stretch_max`` fine units (the longest stretch seen in training), the tail
after the last group at a predicted stop or after ``tail_q90`` fine units (90 % of the training utterances' tails
are that short or shorter: the model never learned a stop there), and the context is at most the longest training
piece (positions beyond it were never trained).

Validation logs ``val/loss`` (every target), ``val/fine_accuracy`` (targets that are fine units),
``val/stop_accuracy`` (targets that are the fine stop, whose argmax is the stop); with ``vocoder``
(a file :func:`syllablelm.checkpoints.vocoders.load_unit_vocoder` reads) rank 0 also generates the fine units of a
couple of validation utterances from their syllables and logs them, and their true fine units, as TensorBoard audio.
"""
from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import SumMetric

from lightning_modules.speechlm import DecoderTraining
from syllablelm.audio.frames import seconds_to_frames
from syllablelm.checkpoints import suite
from syllablelm.models.gpt import GPT, GPTConfig, at_least_float32
from syllablelm.models.interleaved_generation import FineGeneration, generate_fine
from syllablelm.units.interleave import IGNORE, InterleavedVocab, interleave

log = logging.getLogger(__name__)
LR_SCHEDULES = ("linear_tri_stage", "warmup_hold_decay")
GENERATION_STATS = "interleaved_generation"  # checkpoint entry: the caps generation uses (module docstring)
DEFAULT_CAP = 64  # fine units a stretch / the tail may hold when a checkpoint records no training statistics


class InterleavedLMModule(DecoderTraining, pl.LightningModule):
    """Interleaved vocoder LM (module docstring).

    Args:
        network: the decoder (:class:`GPTConfig`); ``vocab_size + 1`` rows must cover ``fine_vocab +
            syllable_vocab + 3`` ids.
        fine_vocab, syllable_vocab: ``F`` fine units and ``S`` syllable units (checked against the DataModule).
        frames_per_fine, lead, grouping: the interleaving rule's settings (checked against the DataModule).
        optimizer, warmup, hold, decay, final_lr_scale, lr_schedule: as :class:`SpeechLMModule`.
        vocoder: a unit vocoder file; validation then logs generated speech (module docstring).
        audio_examples: validation utterances vocoded per validation run.
        temperature, top_k: how validation samples (temperature 0: greedy).
    """

    def __init__(
        self,
        *,
        network: GPTConfig | None = None,
        fine_vocab: int = 100,
        syllable_vocab: int = 128,
        frames_per_fine: int = 2,
        lead: float = 5,
        grouping: int = 1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup: int = 8_000,
        hold: int = 92_000,
        decay: int = 100_000,
        final_lr_scale: float = 0.1,
        lr_schedule: str = "linear_tri_stage",
        vocoder: str | None = None,
        audio_examples: int = 2,
        temperature: float = 0.7,
        top_k: int | None = 20,
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.vocab = InterleavedVocab(fine=int(fine_vocab), syllable=int(syllable_vocab))
        net = GPTConfig(**network) if isinstance(network, dict) else (
            network or GPTConfig.tiny(vocab_size=self.vocab.pad))
        if net.vocab_size + 1 < self.vocab.size:
            raise ValueError(f"network.vocab_size {net.vocab_size} gives {net.vocab_size + 1} embedding rows, the "
                             f"vocabulary has {self.vocab.size} ids ({fine_vocab} fine + {syllable_vocab} syllable + "
                             f"3): set network.vocab_size to at least {self.vocab.pad}")
        self.net = GPT(net)
        self.optimizer = optimizer
        self.save_hyperparameters({"_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                   suite.LM_NETWORK: net.to_dict(), "fine_vocab": int(fine_vocab),
                                   "syllable_vocab": int(syllable_vocab), "frames_per_fine": int(frames_per_fine),
                                   "lead": lead, "grouping": int(grouping), "warmup": warmup, "hold": hold,
                                   "decay": decay, "final_lr_scale": final_lr_scale, "lr_schedule": lr_schedule,
                                   "vocoder": vocoder, "audio_examples": audio_examples, "temperature": temperature,
                                   "top_k": top_k})
        self.generation_stats: dict = {}
        self.val_nll = SumMetric().set_dtype(torch.float64)
        self.val_tokens = SumMetric().set_dtype(torch.float64)
        self.val_fine_right = SumMetric().set_dtype(torch.float64)
        self.val_fine = SumMetric().set_dtype(torch.float64)
        self.val_stop_right = SumMetric().set_dtype(torch.float64)
        self.val_stop = SumMetric().set_dtype(torch.float64)
        self._vocoder = [None]  # a list, so the vocoder is never a submodule (not in the state dict)

    @property
    def config(self) -> GPTConfig:
        return self.net.config

    @property
    def syllables_per_second(self) -> float | None:
        """Syllable units per second of the training utterances (None when the checkpoint records none)."""
        return self.generation_stats.get("syllables_per_second") or None

    # ---- set-up and checkpoints ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "vocab"):
            return
        hp = self.hparams
        theirs = {"fine_vocab": dm.vocab.fine, "syllable_vocab": dm.vocab.syllable,
                  "frames_per_fine": dm.frames_per_fine, "lead": dm.hparams.lead, "grouping": dm.hparams.grouping}
        wrong = [f"the model's {k} is {hp[k]} but the data give {v}" for k, v in theirs.items() if hp[k] != v]
        if wrong:
            raise ValueError("the model and the data disagree: " + "; ".join(wrong) + " (set them equal in the config)")
        if stage == "fit":
            dm.setup(stage)
            self.generation_stats = dict(dm.generation_stats)
            longest = self.generation_stats.get("max_piece_tokens", 0)
            if longest > self.config.block_size:
                raise ValueError(f"the longest training piece has {longest} tokens, network.block_size is "
                                 f"{self.config.block_size}: raise block_size or lower data.max_size")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[GENERATION_STATS] = dict(self.generation_stats)  # plain ints and floats (weights_only loads)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if not self.generation_stats:
            self.generation_stats = dict(checkpoint.get(GENERATION_STATS) or {})

    # ---- inference ----------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, rows) of interleaved ids (B, T)."""
        return self.net(idx, padding_mask=padding_mask)[0]

    def generation_caps(self) -> dict:
        """``stretch_cap``, ``tail_cap`` and ``max_context`` from the training statistics (module docstring)."""
        s = self.generation_stats
        return {"stretch_cap": int(s.get("stretch_max") or DEFAULT_CAP),
                "tail_cap": int(s.get("tail_q90") or DEFAULT_CAP),
                "max_context": int(s.get("max_piece_tokens") or self.config.block_size)}

    def prompt_stream(self, fine_units, fine_durations, syllable_units, syllable_segments) -> np.ndarray:
        """A prompt's interleaved tokens, the ``prefix_tokens`` of :meth:`generate_stream`: its true deduplicated
        fine units with their run lengths (fine frames of this model's ``frames_per_fine`` 50 Hz frames) and its
        syllable units with their ``(n, 2)`` segments in seconds of file time (the tokenizer's), which go to 50 Hz
        frames with no offset, as :class:`~datamodules.interleaved_data.InterleavedDataModule` builds its training
        streams from stored segments and labels counted from sample 0. Same vocabulary, ``lead`` and ``grouping`` as
        training."""
        hp = self.hparams
        return interleave(fine_units, fine_durations, syllable_units,
                          seconds_to_frames(np.asarray(syllable_segments, dtype=np.float64).reshape(-1, 2)),
                          self.vocab, frames_per_fine=hp.frames_per_fine, lead=hp.lead, grouping=hp.grouping).tokens

    def generate_stream(self, syllables, *, temperature: float = 1.0, top_k: int | None = None,
                        generator: torch.Generator | None = None, use_cache: bool = True, prefix_tokens=None,
                        **caps) -> FineGeneration:
        """:func:`~syllablelm.models.interleaved_generation.generate_fine` with this model and its caps (``caps``
        overrides them); ``prefix_tokens`` (e.g. :meth:`prompt_stream`) is the interleaved stream the syllables
        continue: the result covers the new syllables only."""
        was_training = self.net.training
        self.net.eval()
        try:
            return generate_fine(self.net, syllables, self.vocab, grouping=self.hparams.grouping,
                                 temperature=temperature, top_k=top_k, generator=generator, use_cache=use_cache,
                                 prefix_tokens=prefix_tokens, **{**self.generation_caps(), **caps})
        finally:
            self.net.train(was_training)

    def generate_fine(self, syllables, **kwargs) -> np.ndarray:
        """The deduplicated fine units of a syllable unit sequence (kwargs as :meth:`generate_stream`, ``prefix_tokens``
        included)."""
        return self.generate_stream(syllables, **kwargs).fine_units

    # ---- training -----------------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        logits, _ = self.net(batch["input"], padding_mask=batch.get("padding_mask"))
        target = batch["target"].flatten()
        logits = at_least_float32(logits.flatten(0, 1))
        self.val_nll.update(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").double())
        self.val_tokens.update((target != IGNORE).sum().double())
        right = logits.argmax(-1) == target
        fine, stop = (target >= 0) & (target < self.vocab.fine), target == self.vocab.stop_fine
        self.val_fine_right.update((right & fine).sum().double())
        self.val_fine.update(fine.sum().double())
        self.val_stop_right.update((right & stop).sum().double())
        self.val_stop.update(stop.sum().double())

    def on_validation_epoch_end(self) -> None:
        tokens = self.val_tokens.compute()
        if tokens > 0:
            loss = self.val_nll.compute() / tokens
            self.log("val/loss", loss.float(), prog_bar=True, sync_dist=False)
            self.log("val/bits_per_token", (loss / math.log(2)).float(), sync_dist=False)
        for name, right, total in (("fine", self.val_fine_right, self.val_fine),
                                   ("stop", self.val_stop_right, self.val_stop)):
            n = total.compute()
            if n > 0:
                self.log(f"val/{name}_accuracy", (right.compute() / n).float(), sync_dist=False)
        for m in (self.val_nll, self.val_tokens, self.val_fine_right, self.val_fine, self.val_stop_right,
                  self.val_stop):
            m.reset()
        if self.hparams.vocoder and self.trainer is not None and self.trainer.is_global_zero \
                and not self.trainer.sanity_checking:
            self._log_audio()

    def _load_vocoder(self):
        if self._vocoder[0] is None:
            from syllablelm.checkpoints.vocoders import load_unit_vocoder

            self._vocoder[0] = load_unit_vocoder(self.hparams.vocoder)
        return self._vocoder[0]

    @torch.no_grad()
    def _log_audio(self) -> None:
        """Generated and true fine units of a couple of validation utterances, vocoded, as TensorBoard audio."""
        dm = self.trainer.datamodule
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(dm, "val_examples") or not hasattr(experiment, "add_audio"):
            return
        vocoder = self._load_vocoder()
        if not vocoder:
            return
        device = getattr(vocoder, "device", None)
        generator = torch.Generator().manual_seed(int(self.global_step))
        for k, ex in enumerate(dm.val_examples(self.hparams.audio_examples)):
            gen = self.generate_fine(ex["syllables"], temperature=self.hparams.temperature, top_k=self.hparams.top_k,
                                     generator=generator)
            for tag, units, durations in (("generated", gen, None),
                                          ("true_fine", ex["fine_units"], ex["fine_durations"])):
                if not len(units):
                    continue
                u = torch.as_tensor(np.asarray(units, dtype=np.int64), device=device)
                d = None if durations is None else torch.as_tensor(np.asarray(durations, dtype=np.int64),
                                                                   device=device)
                try:
                    wave = vocoder.synthesize(u, d).detach().float().cpu().reshape(-1)
                except ValueError as e:  # e.g. a vocoder of fewer fine units than this LM's vocabulary
                    log.warning("validation audio of %s (%s) skipped: %s", ex["id"], tag, e)
                    continue
                experiment.add_audio(f"val_audio/{k}_{ex['id']}/{tag}", wave.clamp(-1, 1)[None], self.global_step,
                                     sample_rate=16000)

