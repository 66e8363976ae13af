"""Stage 4: the SpeechLM, a GPT over syllable units (:mod:`syllablelm.models.gpt`), trained on a unit store.

    syllablelm units --checkpoint runs/tiny/tokenizer.ckpt --data data/synth/train --out runs/tiny/units
    syllablelm fit --config experiments/configs/tiny/speechlm.yaml
    syllablelm validate --config experiments/configs/tiny/speechlm.yaml \
        --ckpt_path runs/tiny/speechlm/checkpoints/last.ckpt

    lm = SpeechLMModule.load_from_checkpoint("last.ckpt")   # self-contained: the network config is in hparams
    logprob, ntok = lm.log_likelihood([units_a, units_b])
    sample = lm.generate(torch.tensor([[lm.bos]]), 200, temperature=0.8, top_k=50)

The decoder is the authors' ``cluster_alan`` model by default (``network.style: authors``; ``nanogpt`` is this
project's earlier variant, :mod:`syllablelm.models.gpt`). The unit variant of the training store (``authors_lm`` or
``dedup``, :mod:`datamodules.unit_store`) is kept in every checkpoint as ``checkpoint["unit_variant"]`` and as
:attr:`SpeechLMModule.unit_variant` after loading, so pair scoring tokenizes the way the LM was trained.

Paper settings (docs/algorithms.md, the SpeechLM section): Adam (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 2e-4;
the authors' ``linear_tri_stage`` schedule, 16k warm-up from 0, 84k hold, 300k linear decay to 0.1x (400k updates);
bf16 (``Trainer(precision="bf16-mixed")``, no autocast here). Batches as the authors build them come from
:class:`datamodules.unit_data.UnitsDataModule` with ``collate: authors`` (their ``padding_mask`` is honoured here).
"""
from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import SumMetric

from syllablelm.checkpoints import suite
from syllablelm.models import common, flops
from syllablelm.models.gpt import GPT, GPTConfig, at_least_float32
from syllablelm.models.schedules import linear_tri_stage, warmup_hold_decay

log = logging.getLogger(__name__)
LR_SCHEDULES = ("linear_tri_stage", "warmup_hold_decay")  # SpeechLMModule.lr_schedule; the first is the default


class DecoderTraining:
    """What the SpeechLM and the interleaved vocoder LM train alike: a GPT decoder ``self.net`` on batches
    ``{"input", "target"[, "padding_mask"]}`` (targets -100 ignored), the optimizer ``self.optimizer`` and the
    step schedule of ``hparams`` (``lr_schedule``, ``warmup``, ``hold``, ``decay``, ``final_lr_scale``)."""

    def training_step(self, batch, batch_idx):
        """Mean cross-entropy over this rank's target tokens (padding = -100 excluded). DDP averages gradients
        over ranks, so the global loss is the mean of per-rank token means; with packed windows every rank
        holds the same number of tokens per step (bar a padded last window), so that equals the token mean of
        the global batch. The authors' loss is that same mean of per-GPU means (their model's loss is a token mean,
        ``sample_size`` 1 per GPU). A batch's ``padding_mask`` (``collate: authors``) hides padded keys."""
        self.flops_per_batch = flops.training(flops.gpt_forward(*batch["input"].shape, self.config))
        _, loss = self.net(batch["input"], batch["target"], padding_mask=batch.get("padding_mask"))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input"]))
        return loss

    def configure_optimizers(self):
        opt = self.optimizer(self.parameters())
        hp = self.hparams
        shape = linear_tri_stage if hp.lr_schedule == "linear_tri_stage" else warmup_hold_decay
        schedule = shape(hp.warmup, hp.hold, hp.decay, hp.final_lr_scale)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SpeechLMModule(DecoderTraining, pl.LightningModule):
    """Unit language model.

    Args:
        network: the decoder (:class:`GPTConfig`; presets ``tiny``/``base``/``large`` in code; ``style``
            ``authors`` by default). ``network.vocab_size`` must equal the unit store's (checked at setup against
            the DataModule). Hyper-parameters saved before ``style`` existed load with the default.
        optimizer: e.g. ``torch.optim.AdamW`` with the paper's arguments (fairseq's "adam" decays weights
            decoupled, i.e. AdamW); weight decay applies to every parameter, as in fairseq.
        warmup, hold, decay, final_lr_scale: the LR schedule's stages in optimizer steps.
        lr_schedule: ``linear_tri_stage`` (default; the authors' config: linear warm-up from 0, hold, linear decay to
            ``final_lr_scale``, :func:`syllablelm.models.schedules.linear_tri_stage`) or ``warmup_hold_decay`` (this
            suite's earlier schedule: geometric decay, the first step already at ``1 / warmup``;
            :func:`syllablelm.models.schedules.warmup_hold_decay`).
        compile_layers: ``torch.compile`` each transformer layer in place (opt-in: a speed-up on GPUs whose
            kernels round differently from eager ones; not saved with the checkpoint).
    """

    def __init__(
        self,
        *,
        network: GPTConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup: int = 16_000,
        hold: int = 84_000,
        decay: int = 300_000,
        final_lr_scale: float = 0.1,
        lr_schedule: str = "linear_tri_stage",
        compile_layers: bool = False,
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        net = GPTConfig(**network) if isinstance(network, dict) else (network or GPTConfig.tiny())
        self.net = GPT(net)
        if compile_layers:
            common.compile_layers(self.net)
        self.optimizer = optimizer
        # plain types only, so the checkpoint loads with torch's weights_only=True and rebuilds the network;
        # `_class_path` lets LightningCLI (--ckpt_path) re-apply these to the config, as its own hook would
        self.save_hyperparameters({"_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                   suite.LM_NETWORK: net.to_dict(), "warmup": warmup, "hold": hold, "decay": decay,
                                   "final_lr_scale": final_lr_scale, "lr_schedule": lr_schedule})
        # exact corpus perplexity: sums of token NLL and token counts, summed over ranks, divided once.
        # float64: a float32 sum of ~1e8 token losses would lose the digits perplexities are compared on
        self.val_nll = SumMetric().set_dtype(torch.float64)
        self.val_tokens = SumMetric().set_dtype(torch.float64)
        # the unit variant of the training data (the DataModule's, at setup; a loaded checkpoint's otherwise)
        self.unit_variant: str | None = None

    @property
    def config(self) -> GPTConfig:
        return self.net.config

    @property
    def bos(self) -> int:
        return self.net.bos

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        vocab = getattr(dm, "vocab_size", None)
        if vocab is not None and vocab != self.config.vocab_size:
            raise ValueError(f"the unit store has vocab_size {vocab} but model.network.vocab_size is "
                             f"{self.config.vocab_size}: set network.vocab_size to {vocab} in the config "
                             "(the BOS/EOS id is vocab_size, so the two must agree exactly)")
        context = getattr(dm, "context_length", None)
        if context is not None and context > self.config.block_size:
            raise ValueError(f"data.context_length {context} exceeds network.block_size {self.config.block_size}")
        variant = getattr(dm, "unit_variant", None)
        if variant is not None:
            self.unit_variant = variant

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[suite.UNIT_VARIANT] = self.unit_variant  # a plain str (or None): weights_only loading keeps working

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(suite.HYPER_PARAMETERS) or {}
        if "lr_schedule" not in saved and self.hparams.lr_schedule != LR_SCHEDULES[1]:
            # a run saved before lr_schedule existed resumes on the schedule it started with (Lightning restores
            # the modules before configure_optimizers runs)
            log.info("the checkpoint predates lr_schedule: resuming with %s", LR_SCHEDULES[1])
            self.hparams.lr_schedule = LR_SCHEDULES[1]
        loaded = checkpoint.get(suite.UNIT_VARIANT)  # absent in checkpoints written before it was recorded
        if self.unit_variant is None:
            self.unit_variant = loaded
        elif loaded is not None and loaded != self.unit_variant:
            log.warning("the checkpoint was trained on %r units, the data now are %r units", loaded,
                        self.unit_variant)

    # ---- inference ----------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V + 1) of ids (B, T)."""
        return self.net(idx)[0]

    def log_likelihood(self, sequences, batch_size: int = 32, score_eos: bool = True):
        """Per-sequence ``(summed log-prob, scored tokens)``; BOS prepended, EOS scored (:meth:`GPT.log_likelihood`)."""
        return self.net.log_likelihood(sequences, batch_size=batch_size, score_eos=score_eos)

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Continue ``prompt`` (start it with ``self.bos``); kwargs as :meth:`GPT.generate`."""
        return self.net.generate(prompt, max_new_tokens, **kwargs)

    # ---- training -----------------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        logits, _ = self.net(batch["input"], padding_mask=batch.get("padding_mask"))
        target = batch["target"]
        nll = F.cross_entropy(at_least_float32(logits.flatten(0, 1)), target.flatten(), ignore_index=-100,
                              reduction="sum")
        self.val_nll.update(nll.double())
        self.val_tokens.update((target != -100).sum().double())

    def on_validation_epoch_end(self) -> None:
        # compute() sums the states over ranks (every rank calls it, whatever its batch count), then one ratio
        tokens = self.val_tokens.compute()
        if tokens > 0:
            loss = self.val_nll.compute() / tokens
            self.log("val/loss", loss.float(), prog_bar=True, sync_dist=False)  # identical on every rank
            self.log("val/perplexity", torch.exp(loss).float(), sync_dist=False)
            self.log("val/bits_per_token", (loss / math.log(2)).float(), sync_dist=False)
        self.val_nll.reset()
        self.val_tokens.reset()

