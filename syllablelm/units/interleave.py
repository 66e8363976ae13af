"""The interleaved vocoder LM's token stream (issue 29, item 2): syllable units and fine units in one sequence.

The authors' Interleaved Vocoder LM reads one decoder sequence that mixes the syllable units (given) with the
deduplicated fine units (predicted), in time order. This module restates the rule of their
``ClusterAlanDatasetInterleaved.interleave5`` (``interleave_strat=5``, the paper run's setting), whose arithmetic is
in docs/algorithms.md ("Interleaved vocoder LM: the token stream") with a worked example:

Vocabulary (:class:`InterleavedVocab`): fine units ``0 .. F - 1``, the fine stop token ``F``, syllable units
``F + 1 .. F + S`` (syllable ``u`` is ``F + 1 + u``), the syllable stop token ``F + S + 1`` and padding ``F + S + 2``.

Time: syllable segments in 50 Hz frames; fine units as runs (unit, duration in fine frames), each fine frame
``frames_per_fine`` 50 Hz frames (2 for a 25 Hz fine encoder such as TWIST's mHuBERT).

Rule. The first group of syllables comes first. Then, while both kinds remain, the next fine unit goes in when its
midpoint (the 50 Hz time where it starts plus half its length) is at or before the next syllable's start minus
``lead`` frames (5: 100 ms; clipped at 0); otherwise the next group of syllables goes in. When one kind runs out
the other follows in order. A group is ``grouping`` consecutive syllables (1 in the paper run) followed by one
syllable stop token. Targets: each fine unit is predicted at the position before it; the position before a group
(when there is one) predicts the fine stop token, "the fine units of this stretch are done"; syllables and the
syllable stop token are given, never predicted; the last position predicts nothing.
"""
from __future__ import annotations

import dataclasses

import numpy as np

IGNORE = -100  # the target of a position that predicts nothing


@dataclasses.dataclass(frozen=True)
class InterleavedVocab:
    fine: int  # number of fine units F
    syllable: int  # number of syllable units S

    @property
    def stop_fine(self) -> int:
        return self.fine

    @property
    def syllable_offset(self) -> int:
        return self.fine + 1

    @property
    def stop_syllable(self) -> int:
        return self.fine + self.syllable + 1

    @property
    def pad(self) -> int:
        return self.fine + self.syllable + 2

    @property
    def size(self) -> int:
        """Embedding rows: every id above, padding included."""
        return self.fine + self.syllable + 3


@dataclasses.dataclass
class Interleaved:
    tokens: np.ndarray  # (T,) int64 ids of the vocabulary
    targets: np.ndarray  # (T,) int64: what position t predicts (IGNORE: nothing)
    is_syllable: np.ndarray  # (T,) bool: a syllable unit (the authors' ``moe_mask``)


def interleave(fine_units, fine_durations, syllable_units, syllable_segments, vocab: InterleavedVocab, *,
               frames_per_fine: int = 2, lead: float = 5, grouping: int = 1) -> Interleaved:
    """One utterance's interleaved stream (module docstring). ``fine_units``/``fine_durations``: the deduplicated
    fine units and their run lengths in fine frames; ``syllable_units`` with ``syllable_segments`` ``(n, 2)``
    ``[start, end]`` in 50 Hz frames."""
    fine = np.asarray(fine_units, dtype=np.int64)
    dur = np.asarray(fine_durations, dtype=np.float64)
    syl = np.asarray(syllable_units, dtype=np.int64)
    seg = np.asarray(syllable_segments, dtype=np.float64).reshape(-1, 2)
    if fine.shape != dur.shape or len(syl) != len(seg):
        raise ValueError(f"need one duration per fine unit and one segment per syllable, got {fine.shape} / "
                         f"{dur.shape} and {syl.shape} / {seg.shape}")
    if grouping < 1:
        raise ValueError(f"grouping must be >= 1, got {grouping}")
    if (fine < 0).any() or (fine >= vocab.fine).any() or (syl < 0).any() or (syl >= vocab.syllable).any():
        raise ValueError(f"units outside the vocabulary ({vocab.fine} fine, {vocab.syllable} syllable)")
    tokens: list[int] = []
    targets: list[int] = []
    is_syl: list[bool] = []
    i = j = 0  # next fine unit, next syllable
    fine_time = 0.0  # 50 Hz frame where the next fine unit starts

    def add(token: int, syllable: bool) -> None:
        tokens.append(token)
        targets.append(IGNORE)
        is_syl.append(syllable)

    def predict(token: int) -> None:  # the position before the next token predicts ``token``
        if tokens:
            targets[-1] = token

    def put_fine() -> None:
        nonlocal i, fine_time
        predict(int(fine[i]))
        add(int(fine[i]), False)
        fine_time += frames_per_fine * dur[i]
        i += 1

    def put_group() -> None:
        nonlocal j
        predict(vocab.stop_fine)
        for _ in range(min(grouping, len(syl) - j)):
            add(vocab.syllable_offset + int(syl[j]), True)
            j += 1
        add(vocab.stop_syllable, False)

    if len(syl):
        put_group()
    while i < len(fine) or j < len(syl):
        if i >= len(fine):
            put_group()
        elif j >= len(syl):
            put_fine()
        elif fine_time + frames_per_fine * dur[i] / 2 <= max(0.0, seg[j, 0] - lead):
            put_fine()
        else:
            put_group()
    return Interleaved(np.array(tokens, dtype=np.int64), np.array(targets, dtype=np.int64),
                       np.array(is_syl, dtype=bool))


def authors_size(num_fine: int, num_syllables: int) -> int:
    """The authors' size of an utterance for batching (their dataset's ``size``): fine units plus three per syllable
    (a count from their earlier layouts, which spent three tokens on a syllable; ``interleave_strat`` 5 spends two
    with one syllable a group). fairseq's ``max_tokens`` budget counts this, rows x the largest size of a batch."""
    return int(num_fine) + 3 * int(num_syllables)


def deinterleave(tokens, vocab: InterleavedVocab, *, with_owner: bool = False):
    """An interleaved stream -> ``(fine_units, syllable_units)`` in order (stop and padding tokens dropped); with
    ``with_owner`` also, per fine unit, the index of the last syllable before it (-1 before any). Ids outside the
    vocabulary are an error."""
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if t.size and ((t < 0).any() or (t >= vocab.size).any()):
        bad = t[(t < 0) | (t >= vocab.size)]
        raise ValueError(f"token ids {bad[:5].tolist()} are outside the vocabulary of {vocab.size} ids")
    is_fine = t < vocab.fine
    is_syl = (t >= vocab.syllable_offset) & (t < vocab.stop_syllable)
    fine, syllables = t[is_fine], t[is_syl] - vocab.syllable_offset
    if not with_owner:
        return fine, syllables
    owner = (np.cumsum(is_syl) - 1)[is_fine]
    return fine, syllables, owner


def group_starts(tokens, vocab: InterleavedVocab) -> np.ndarray:
    """Positions where a group of syllables begins: a syllable token not preceded by another syllable token."""
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    is_syl = (t >= vocab.syllable_offset) & (t < vocab.stop_syllable)
    return np.flatnonzero(is_syl & ~np.r_[False, is_syl[:-1]])


def stretch_lengths(tokens, vocab: InterleavedVocab) -> np.ndarray:
    """Fine units after each group of an utterance's stream, up to the next group or the end: the last entry is
    the tail after the last group (the stretch no stop token closes). Empty for a stream without syllables."""
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    starts = group_starts(t, vocab)
    fine_before = np.r_[0, np.cumsum(t < vocab.fine)]  # fine units in t[:i]
    return np.diff(fine_before[np.r_[starts, len(t)]]) if len(starts) else np.zeros(0, np.int64)


def split_pieces(stream: Interleaved, vocab: InterleavedVocab, max_size: int) -> tuple[list[Interleaved], int]:
    """Cut an utterance's stream at group starts into consecutive pieces of :func:`authors_size` at most
    ``max_size``: whole blocks (a group and the fine units after it) are taken greedily while they fit; a block
    that alone is larger keeps its first ``max_size - 3 x syllables`` fine units (the rest are dropped). Each piece
    starts with a group, as an utterance does, and its last position predicts nothing (target
    :data:`IGNORE`), as an utterance's last does. Returns ``(pieces, fine units dropped)``; the whole stream when it
    fits."""
    t = stream.tokens
    starts = group_starts(t, vocab)
    if not len(starts) or starts[0] != 0:
        raise ValueError("a stream to cut must start with a group of syllables")
    bounds = np.r_[starts, len(t)]
    n_fine = np.diff(np.r_[0, np.cumsum(t < vocab.fine)][bounds])
    n_syl = np.diff(np.r_[0, np.cumsum(stream.is_syllable)][bounds])
    if (3 * n_syl > max_size).any():
        raise ValueError(f"max_size {max_size} holds no group of {int(n_syl.max())} syllables (3 a syllable)")
    pieces: list[Interleaved] = []
    dropped = 0

    def take(lo: int, hi: int) -> None:
        tokens, targets = t[lo:hi].copy(), stream.targets[lo:hi].copy()
        targets[-1] = IGNORE
        pieces.append(Interleaved(tokens, targets, stream.is_syllable[lo:hi].copy()))

    b = 0
    while b < len(starts):
        size, e = 0, b
        while e < len(starts) and size + n_fine[e] + 3 * n_syl[e] <= max_size:
            size += n_fine[e] + 3 * n_syl[e]
            e += 1
        if e == b:  # one block alone is too large: keep its first fine units
            keep = max_size - 3 * int(n_syl[b])
            lo = int(bounds[b])
            fine_pos = lo + np.flatnonzero(t[lo:bounds[b + 1]] < vocab.fine)
            take(lo, int(fine_pos[keep - 1]) + 1 if keep > 0 else lo + int(n_syl[b]) + 1)
            dropped += int(n_fine[b]) - keep
            e = b + 1
        else:
            take(int(bounds[b]), int(bounds[e]))
        b = e
    return pieces, dropped
