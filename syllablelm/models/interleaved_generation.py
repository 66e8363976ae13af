"""Fine units from syllable units with the interleaved vocoder LM (issue 29, item 2): syllables given, fine units and
the fine stop token predicted, on the decoder's KV cache (:class:`~syllablelm.models.generation.KVCache`).

The stream is the one the LM trained on (:mod:`syllablelm.units.interleave`, docs/algorithms.md "Interleaved vocoder
LM: the token stream"): the first group (``grouping`` syllables and the syllable stop token) comes first; then the
model predicts fine units one at a time. When it predicts the fine stop token, the stop itself is not written: the
next group goes in (in training the position before a group predicts the stop, and the group's tokens follow).
After the last group the model never saw a stop (the last position of an utterance predicts nothing), so the tail
ends at a predicted stop or after ``tail_cap`` fine units. Every stretch ends after at most ``stretch_cap`` fine units
(the next group is forced in), so generation always terminates. Only fine units and the fine stop can be drawn:
the logits of syllable ids, the syllable stop, padding and any spare rows are dropped before sampling.

Context. The LM trained on pieces of at most a few hundred tokens that start with a group (the authors: fairseq's
``max_tokens`` 128 per piece), so positions past the longest piece are untrained. ``max_context`` bounds the
context: when the next tokens would not fit, the oldest whole blocks (a group and its fine units) are dropped so the
context again starts with a group, and the cache is rebuilt from what is kept (one forward over it).

Prompt prefix. ``prefix_tokens`` is an already-interleaved stream that comes before the new syllables: a prompt's
syllable groups with its true deduplicated fine units (:func:`syllablelm.units.interleave.interleave` with the
vocabulary, ``frames_per_fine``, ``lead`` and ``grouping`` the LM trained with). It must start with a group, as
every training piece does, and holds only fine units, syllables and syllable stops (no fine stop, no padding: a
stream never writes them). It is the context of the first feed, prefix and first new group in one forward, so the
new fine units condition on the prompt's voice and content. Boundary: the prefix's last position (after its last
fine unit, or after its last group when its fine units ran out first) is followed directly by the first new group;
in training the position before a group predicts the fine stop and the group follows, and here, as for every group,
that stop is not written, so nothing is drawn at the prefix's end and the stream reads as one utterance that goes on.
The prefix's group starts join the block starts: when the context overflows, the prefix's oldest whole blocks go
first (the whole prefix when the new tokens need the room), and the cached path rebuilds its cache as it does
otherwise. The result holds only what follows the prefix: ``tokens`` is the new part of the stream, ``fine_units``
the new fine units (consecutive repeats collapsed among them only) and ``syllable_index`` indexes the new syllables.

This module sits below :mod:`syllablelm.units` (import-linter layers), so the vocabulary is any object with
:class:`~syllablelm.units.interleave.InterleavedVocab`'s fields (:class:`InterleavedLayout`).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import torch

from syllablelm.models.generation import KVCache


class InterleavedLayout(Protocol):
    """The id layout of :class:`syllablelm.units.interleave.InterleavedVocab`."""

    fine: int
    syllable: int

    @property
    def stop_fine(self) -> int: ...

    @property
    def syllable_offset(self) -> int: ...

    @property
    def stop_syllable(self) -> int: ...


@dataclasses.dataclass
class FineGeneration:
    fine_units: np.ndarray  # (n,) int64 deduplicated fine units in order
    syllable_index: np.ndarray  # (n,) int64: the index (into the given syllables) of the last syllable before each
    tokens: np.ndarray  # the generated stream after any prefix (groups and fine units, as drawn: before deduplication)
    capped: int  # stretches (the tail included) that a cap ended rather than a predicted stop


def _choose(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> int:
    """One id from ``logits`` (V,): argmax at temperature 0, else a draw from the softmax at ``temperature`` over the
    ``top_k`` most likely ids."""
    logits = logits.float()
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def _check_prefix(prefix_tokens, vocab: InterleavedLayout) -> np.ndarray:
    """``prefix_tokens`` as int64 (empty for None), refused unless it is an interleaved stream that starts with a
    group and holds only fine units, syllables and syllable stops."""
    if prefix_tokens is None:
        return np.zeros(0, np.int64)
    prefix = np.asarray(prefix_tokens, dtype=np.int64).reshape(-1)
    if not prefix.size:
        return prefix
    bad = (prefix < 0) | (prefix > vocab.stop_syllable) | (prefix == vocab.stop_fine)
    if bad.any():
        raise ValueError(f"prefix_tokens must hold fine units 0 .. {vocab.fine - 1}, syllables "
                         f"{vocab.syllable_offset} .. {vocab.stop_syllable - 1} and the syllable stop "
                         f"{vocab.stop_syllable}; got {prefix[bad][:5].tolist()}")
    if not vocab.syllable_offset <= prefix[0] < vocab.stop_syllable:
        raise ValueError(f"prefix_tokens must start with a group of syllables (as an interleaved stream does), got "
                         f"id {int(prefix[0])} first")
    return prefix


def _group_starts(tokens: np.ndarray, vocab: InterleavedLayout) -> list[int]:
    """Positions where a group begins: a syllable id not preceded by another syllable id (the rule of
    :func:`syllablelm.units.interleave.group_starts`, restated here below the units layer)."""
    is_syl = (tokens >= vocab.syllable_offset) & (tokens < vocab.stop_syllable)
    return np.flatnonzero(is_syl & ~np.r_[False, is_syl[:-1]]).tolist()


@torch.no_grad()
def generate_fine(model, syllables, vocab: InterleavedLayout, *, grouping: int = 1, temperature: float = 1.0,
                  top_k: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
                  stretch_cap: int = 64, tail_cap: int = 64, max_context: int | None = None,
                  prefix_tokens=None) -> FineGeneration:
    """The fine units of ``syllables`` (syllable unit ids ``0 .. S - 1``) under ``model`` (a
    :class:`~syllablelm.models.gpt.GPT`-like decoder: ``model(idx, cache=...) -> (logits, _)``, ``model.config``,
    ``model.lm_head``), module docstring. ``temperature`` 0 is greedy. ``use_cache`` False recomputes the whole
    context every step (the reference the cached path must equal). ``max_context``: tokens the model reads at most
    (default its ``block_size``). ``prefix_tokens``: an interleaved stream the new syllables continue (module
    docstring, "Prompt prefix"); the result covers the new syllables only."""
    syl = np.asarray(syllables, dtype=np.int64).reshape(-1)
    if syl.size and (syl.min() < 0 or syl.max() >= vocab.syllable):
        raise ValueError(f"syllable units must be 0 .. {vocab.syllable - 1}, got ids from {int(syl.min())} to "
                         f"{int(syl.max())}")
    if grouping < 1 or stretch_cap < 0 or tail_cap < 0:
        raise ValueError(f"need grouping >= 1 and caps >= 0, got {grouping}, {stretch_cap}, {tail_cap}")
    prefix = _check_prefix(prefix_tokens, vocab)
    if not syl.size:
        return FineGeneration(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    block = model.config.block_size
    max_context = block if max_context is None else min(int(max_context), block)
    if max_context < 2 * (grouping + 1) + max(stretch_cap, tail_cap):
        raise ValueError(f"max_context {max_context} cannot hold a stretch of {max(stretch_cap, tail_cap)} fine "
                         f"units between two groups of {grouping} syllables")
    groups = [[vocab.syllable_offset + int(u) for u in syl[i:i + grouping]] + [vocab.stop_syllable]
              for i in range(0, len(syl), grouping)]
    allowed = vocab.fine + 1  # fine units 0 .. F - 1 and the fine stop F: the first F + 1 ids
    weight = model.lm_head.weight
    device = weight.device

    stream: list[int] = []  # the prefix, then everything generated so far
    block_starts: list[int] = _group_starts(prefix, vocab)  # where each group begins in ``stream``
    owner: list[int] = []  # per fine unit: the last syllable before it
    ctx = 0  # ``stream[ctx:]`` is the context the model reads
    cache = KVCache(model.config, 1, max_context, device, weight.dtype) if use_cache else None

    def feed(pending: list[int]) -> torch.Tensor:
        """Append ``pending`` and return the logits that follow it (F + 1 allowed ids)."""
        nonlocal ctx, cache
        refill = False
        if len(stream) + len(pending) - ctx > max_context:  # drop the oldest whole blocks
            keep_from = len(stream) + len(pending) - max_context
            ctx = next(s for s in block_starts if s >= keep_from)  # the current block always qualifies
            refill = True
        stream.extend(pending)
        if cache is None or refill:
            if cache is not None:
                cache = KVCache(model.config, 1, max_context, device, weight.dtype)
            idx = torch.tensor([stream[ctx:]], dtype=torch.long, device=device)
        else:
            idx = torch.tensor([pending], dtype=torch.long, device=device)
        logits, _ = model(idx, cache=cache)
        return logits[0, -1, :allowed]

    capped = 0
    carry = prefix.tolist()  # goes in with the first group: one forward reads the prefix and that group
    for g, group in enumerate(groups):
        last = g == len(groups) - 1
        cap = tail_cap if last else stretch_cap
        block_starts.append(len(stream) + len(carry))
        logits = feed(carry + group)
        carry = []
        count = 0
        while True:
            if count >= cap:
                capped += 1
                break
            nxt = _choose(logits, temperature, top_k, generator)
            if nxt == vocab.stop_fine:
                break
            owner.append(min(len(syl), (g + 1) * grouping) - 1)
            count += 1
            if last and count >= cap:  # the tail is full: nothing more will be read
                stream.append(nxt)
                capped += 1
                break
            logits = feed([nxt])
    tokens = np.asarray(stream[len(prefix):], dtype=np.int64)
    fine = tokens[tokens < vocab.fine]
    own = np.asarray(owner, dtype=np.int64)
    keep = np.r_[True, fine[1:] != fine[:-1]] if fine.size else np.zeros(0, bool)  # consecutive repeats collapsed
    return FineGeneration(fine[keep], own[keep], tokens, capped)
