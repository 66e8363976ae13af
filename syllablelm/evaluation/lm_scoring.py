"""Score ZeroSpeech-style pair sets (sWUGGY / sBLIMP / tSC) with a SpeechLM over a tokenizer's units.

    syllablelm evaluate ... --lm runs/tiny/speechlm/checkpoints/last.ckpt --pairs data/pairs

Each audio file is tokenized once, in the unit variant the LM was trained on (:func:`resolve_variant`), and scored
once: the summed log-probability of ``BOS units EOS`` and its token count; accuracies are reported both summed and
length-normalised (per token), with ties counting 0.5 (:mod:`syllablelm.evaluation.pair_sets`).

Unit variant (:data:`syllablelm.units.quantizer.UNIT_VARIANTS`): ``authors_lm`` (one merged unit per min-cut segment,
what the authors' LM read) or ``dedup`` (runs of equal units collapsed). ``variant="auto"`` (the default) takes
the one the LM checkpoint records (the training unit store's, which the SpeechLM stage keeps in its
checkpoints; the checkpoint is read by :func:`syllablelm.checkpoints.suite.load_speechlm`, its format's owner); a
checkpoint without a record falls back to ``deduplicate`` (True: ``dedup``, the earlier behaviour). An explicit
``variant`` wins over both.
"""
from __future__ import annotations

import logging

import torch

from syllablelm.checkpoints.suite import load_speechlm
from syllablelm.evaluation.pair_sets import evaluate_sets
from syllablelm.units.quantizer import check_variant, deduplicates

log = logging.getLogger(__name__)


def resolve_variant(variant: str = "auto", recorded: str | None = None, deduplicate: bool = True) -> str:
    """The unit variant to tokenize pairs with: an explicit ``variant``; for ``"auto"`` the LM's ``recorded`` one,
    else ``dedup`` / ``authors_lm`` as ``deduplicate`` says. ``deduplicate=False`` (e.g. ``evaluate --no-dedup``)
    against an LM recorded as trained on ``dedup`` units is an error, not a silent choice."""
    if variant != "auto":
        return check_variant(variant)
    if recorded is None:
        return "dedup" if deduplicate else "authors_lm"
    if not deduplicate and deduplicates(recorded):
        raise ValueError(f"the LM was trained on {recorded!r} units but undeduplicated scoring was asked for "
                         "(--no-dedup): drop it, or pass variant='authors_lm' to score them anyway")
    return check_variant(recorded)


def make_score_fn(lm, tokenizer, *, batch_size: int = 16, deduplicate: bool = True, variant: str | None = None):
    """``paths -> [(sum log-prob, tokens)]`` for :func:`syllablelm.evaluation.pair_sets.evaluate_sets`; ``variant``
    (a unit
    variant name) overrides ``deduplicate``."""
    if variant is not None:
        deduplicate = deduplicates(variant)

    def score(paths):
        units = [torch.as_tensor(u) for _, u in tokenizer.batch(list(paths), deduplicate=deduplicate)]
        logprob, tokens = lm.log_likelihood(units, batch_size=batch_size)
        return [(float(lp), int(n)) for lp, n in zip(logprob, tokens)]
    return score


def score_pairs(lm_checkpoint: str, tokenizer, pairs_root: str, *, device: str = "cpu", split: str = "dev",
                deduplicate: bool = True, variant: str = "auto") -> dict:
    """``{set name: accuracies}`` (:func:`syllablelm.evaluation.pair_sets.evaluate_sets`); units in the variant
    :func:`resolve_variant` picks from ``variant``, the checkpoint's record and ``deduplicate``."""
    lm, recorded = load_speechlm(lm_checkpoint, device)
    if lm.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{lm_checkpoint}: the LM's vocabulary ({lm.config.vocab_size}) is not the "
                         f"tokenizer's ({tokenizer.vocab_size})")
    chosen = resolve_variant(variant, recorded, deduplicate)
    log.info("pair scoring with %s units (LM checkpoint records %s)", chosen, recorded or "no unit variant")
    return evaluate_sets(pairs_root, make_score_fn(lm, tokenizer, variant=chosen), split=split, batch_size=64)
