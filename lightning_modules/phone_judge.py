"""Training the intelligibility judge: CTC on the synthetic corpus's phone alignments
(:mod:`syllablelm.evaluation.phone_judge`, data from :mod:`datamodules.phone_data`).

    syllablelm synth --out data/judge_corpus --num-utterances 1800 --speakers 72 --seed 11 \
        --splits train=0.9,dev=0.1 --exclude-held-out
    syllablelm fit --config experiments/configs/tiny/phone_judge.yaml
    python -m lightning_modules.phone_judge export --checkpoint runs/judge/checkpoints/best.ckpt \
        --out experiments/pretrained/judge.ckpt

Each step: the batch's log-mel is augmented (a noise floor at a random SNR, added in the power domain, on half the
utterances; then SpecAugment's frequency and time masks after normalisation), normalised per utterance and scored
with ``CTCLoss(blank=0, zero_infinity=True)`` (mean over utterances of the loss divided by each target length,
torch's ``reduction="mean"``). Validation decodes greedily and logs ``val/per`` (summed edit distances over summed
reference lengths), which selects the checkpoint. ``export`` writes the judge file (float16 weights, inventory,
feature settings; no optimizer state) from a Lightning checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import lightning.pytorch as pl
import torch
import torchaudio

from syllablelm.checkpoints import suite
from syllablelm.evaluation.phone_judge import (
    PHONES,
    FeatureSettings,
    JudgeNetwork,
    PhoneRecognizer,
    greedy_decode,
    judge_sentences,
    normalize_features,
    save_judge,
)
from syllablelm.models.schedules import linear_tri_stage
from syllablelm.runtime.fileio import write_text


class PhoneJudgeModule(pl.LightningModule):
    """CTC phone recognizer.

    Args:
        network: :class:`JudgeNetwork` fields (``n_classes`` defaults to the inventory + blank).
        lr, weight_decay, betas: AdamW.
        warmup, hold, decay, final_lr_scale: the LR multiplier in optimizer steps
            (:func:`syllablelm.models.schedules.linear_tri_stage`, starting at 1 % of ``lr``).
        freq_masks, freq_width, time_masks, time_width: SpecAugment (masks per utterance, widest mask in bins /
            frames at 100 Hz); 0 masks turns one off.
        noise_prob, snr_db: share of training utterances given a flat noise floor, and its SNR range (dB below
            the utterance's mean mel power).
    """

    def __init__(self, *, network: dict | None = None, lr: float = 2e-3, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.98), warmup: int = 300, hold: int = 1000, decay: int = 3000,
                 final_lr_scale: float = 0.05, freq_masks: int = 2, freq_width: int = 12, time_masks: int = 6,
                 time_width: int = 20, noise_prob: float = 0.5, snr_db: tuple[float, float] = (10.0, 35.0)):
        super().__init__()
        self.save_hyperparameters()
        self.net = PhoneRecognizer(JudgeNetwork(**(network or {})))
        self.ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True)
        self.time_mask = torchaudio.transforms.TimeMasking(time_width, iid_masks=True)
        self._errors = self._ref_phones = 0

    def augment(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Noise floor (on raw log-mel), normalisation, then SpecAugment masks (value 0 = the utterance mean)."""
        hp = self.hparams
        b = feats.shape[0]
        if hp.noise_prob > 0:
            mask = (torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]).float()
            mean_log = (feats.mean(-1) * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B,) natural-log power
            snr = torch.empty(b, device=feats.device).uniform_(*hp.snr_db)
            floor = mean_log - snr * math.log(10) / 10
            noisy = torch.logaddexp(feats, floor[:, None, None].expand_as(feats))
            pick = (torch.rand(b, device=feats.device) < hp.noise_prob)[:, None, None]
            feats = torch.where(pick, noisy, feats)
        x = normalize_features(feats, lengths).transpose(1, 2)  # (B, F, T) for torchaudio's masks
        for _ in range(hp.freq_masks):
            x = self.freq_mask(x)
        for _ in range(hp.time_masks):
            x = self.time_mask(x)
        return x.transpose(1, 2)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        return self.net(feats, lengths)

    def _loss(self, logits, out_lengths, batch):
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, C) for CTCLoss
        return self.ctc(log_probs, batch["targets"], out_lengths, batch["target_lengths"])

    def training_step(self, batch, batch_idx):
        feats = self.augment(batch["feats"], batch["lengths"])
        logits, out_lengths = self.net(feats, batch["lengths"])
        loss = self._loss(logits, out_lengths, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._errors = self._ref_phones = 0

    def validation_step(self, batch, batch_idx):
        feats = normalize_features(batch["feats"], batch["lengths"])
        logits, out_lengths = self.net(feats, batch["lengths"])
        self.log("val/loss", self._loss(logits, out_lengths, batch), batch_size=len(batch["ids"]))
        refs = torch.split(batch["targets"], batch["target_lengths"].tolist())
        for row, ref in enumerate(refs):
            hyp = greedy_decode(logits[row], int(out_lengths[row]))
            self._errors += int(torchaudio.functional.edit_distance(ref.tolist(), hyp))
            self._ref_phones += len(ref)

    def on_validation_epoch_end(self) -> None:
        if self._ref_phones:
            self.log("val/per", self._errors / self._ref_phones, prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, linear_tri_stage(hp.warmup, hp.hold, hp.decay, hp.final_lr_scale, init=0.01))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def export(checkpoint: str, out: str, recipe: dict | None = None) -> PhoneJudgeModule:
    """Write the judge file of a Lightning checkpoint (weights only; the optimizer state stays behind). The
    module is rebuilt from the checkpoint's hyper-parameters and state dict directly (Lightning's
    ``load_from_checkpoint`` refuses a class it finds under ``__main__`` when this file runs with ``-m``)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in ckpt[suite.HYPER_PARAMETERS].items() if not k.startswith("_")}  # LightningCLI's
    module = PhoneJudgeModule(**hparams)  # "_class_path" and the like are not arguments
    module.load_state_dict(ckpt[suite.STATE_DICT])
    meta = {"checkpoint": str(checkpoint), "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"),
            "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in hparams.items()}}
    save_judge(out, module.net.eval(), PHONES, FeatureSettings(), {**meta, **(recipe or {})})
    return module


def score(judge_path: str, corpus: str, split: str, out: str | None = None) -> int:
    """Print (and with ``out`` write as JSON) a judge's PER on ``<corpus>/<split>`` and its 95 % voice-level
    bootstrap interval (voices: the utterance ids' speaker field)."""
    from datamodules.phone_data import split_items
    from syllablelm.evaluation.phone_judge import load_judge, score_utterances
    from syllablelm.evaluation.significance import paired_ratio_bootstrap, voice_of
    from syllablelm.runtime.fileio import write_json

    rows = score_utterances(load_judge(judge_path), split_items(corpus, split))
    errors, lengths = [r["errors"] for r in rows], [r["length"] for r in rows]
    boot = paired_ratio_bootstrap(errors, lengths, errors, lengths, groups=[voice_of(r["id"]) for r in rows])["a"]
    summary = {"judge": judge_path, "corpus": corpus, "split": split, "utterances": len(rows),
               "voices": len({voice_of(r["id"]) for r in rows}), "per": boot["value"], "per_low": boot["low"],
               "per_high": boot["high"]}
    print(f"{corpus}/{split}: PER {100 * summary['per']:.1f} % [{100 * boot['low']:.1f}, {100 * boot['high']:.1f}] "
          f"over {len(rows)} utterances, {summary['voices']} voices")
    if out:
        write_json(out, {**summary, "utterances_scored": rows}, indent=1)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_modules.phone_judge",
                                     description="export a trained phone judge (Lightning checkpoint -> judge file) "
                                                 "or score one on a corpus split")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--note", action="append", default=[], help="KEY=VALUE recorded in the file's recipe")
    sc = sub.add_parser("score", help="PER of a judge on one split of a `syllablelm synth` corpus, with a "
                                      "voice-level bootstrap interval")
    sc.add_argument("--judge", required=True)
    sc.add_argument("--corpus", required=True)
    sc.add_argument("--split", default="test")
    sc.add_argument("--out", help="JSON with the per-utterance scores")
    se = sub.add_parser("sentences", help="write the judge's training sentences and the reserved ones (for the "
                                          "evaluation corpora), one a line, for `syllablelm synth --sentences`")
    se.add_argument("--train-out", required=True)
    se.add_argument("--reserved-out", required=True)
    args = parser.parse_args(argv)
    if args.command == "score":
        return score(args.judge, args.corpus, args.split, args.out)
    if args.command == "sentences":
        from syllablelm.synthesis.plan import load_sentences

        train, reserved = judge_sentences(load_sentences())
        write_text(args.train_out, "\n".join(train) + "\n")
        write_text(args.reserved_out, "\n".join(reserved) + "\n")
        print(f"{len(train)} training sentences -> {args.train_out}, {len(reserved)} reserved -> {args.reserved_out}")
        return 0
    recipe = dict(n.split("=", 1) for n in args.note)
    module = export(args.checkpoint, args.out, recipe)
    n = sum(p.numel() for p in module.net.parameters())
    print(f"wrote {args.out}: {n} parameters, network {dataclasses.asdict(module.net.config)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
