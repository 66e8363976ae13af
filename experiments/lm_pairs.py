"""Score ZeroSpeech-style pair sets (sWUGGY / sBLIMP / tSC) with a SpeechLM over a tokenizer's units.

    syllablelm evaluate ... --lm runs/tiny/speechlm/checkpoints/last.ckpt --pairs data/pairs

Each audio file is tokenized once (deduplicated units, as the LM was trained on) and scored once: the summed
log-probability of ``BOS units EOS`` and its token count; accuracies are reported both summed and
length-normalised (per token), with ties counting 0.5 (:mod:`syllablelm.lm_eval`).
"""
from __future__ import annotations

import torch

from syllablelm.lm_eval import evaluate_sets


def make_score_fn(lm, tokenizer, *, batch_size: int = 16, deduplicate: bool = True):
    """``paths -> [(sum log-prob, tokens)]`` for :func:`syllablelm.lm_eval.evaluate_sets`."""
    def score(paths):
        units = [torch.as_tensor(u) for _, u in tokenizer.batch(list(paths), deduplicate=deduplicate)]
        logprob, tokens = lm.log_likelihood(units, batch_size=batch_size)
        return [(float(lp), int(n)) for lp, n in zip(logprob, tokens)]
    return score


def score_pairs(lm_checkpoint: str, tokenizer, pairs_root: str, *, device: str = "cpu", split: str = "dev",
                deduplicate: bool = True) -> dict:
    from lightning_modules.speechlm import SpeechLMModule

    lm = SpeechLMModule.load_from_checkpoint(lm_checkpoint, map_location=device).eval()
    if lm.hparams.network["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(f"{lm_checkpoint}: the LM's vocabulary ({lm.hparams.network['vocab_size']}) is not the "
                         f"tokenizer's ({tokenizer.vocab_size})")
    return evaluate_sets(pairs_root, make_score_fn(lm, tokenizer, deduplicate=deduplicate), split=split,
                         batch_size=64)
