"""Is one segmenter really better than another on this test set? A paired bootstrap over utterances, or over
voices and the utterances within them.

A small test split (the demo's has tens of utterances) makes a one-point F1 difference easy to get by chance, and
a split of a few voices makes a difference that holds for those voices only easy to take for a general one.
Utterances are drawn with replacement, the same draw for both systems; with ``groups`` (each utterance's voice)
the draw is two-level: voices with replacement, then utterances with replacement within each drawn voice, so the
interval includes how much the result varies from voice to voice. Each draw's micro-averaged scores come from the
summed per-utterance counts (:func:`syllablelm.evaluation.boundary_metrics.boundary_counts`), exactly as on the whole
set. Reported
per metric: the difference on the whole set, the percentile interval of the resampled differences, and the
fraction of draws in which ``a`` is not better (a one-sided bootstrap p-value).

:func:`paired_ratio_bootstrap` does the same for any statistic that is a ratio of sums over utterances, such as the
phone error rate (summed edit distances over summed reference lengths) of two conditions scored on the same
utterances: voices are drawn with replacement and each drawn voice brings all its utterances, the same draw for
both conditions; it reports each condition's value and the difference ``a - b``, each with its percentile interval.

    >>> import numpy as np
    >>> ref = [np.array([[0.0, 0.3], [0.3, 0.6]])] * 4
    >>> out = paired_bootstrap(ref, [np.array([[0.1, 0.6]])] * 4, ref, n_resamples=200)
    >>> out["f1"]["difference"] > 0 and out["f1"]["p_not_better"] == 0.0
    True
"""
from __future__ import annotations

import numpy as np

from syllablelm.evaluation.boundary_metrics import boundary_counts, boundary_rates

METRICS = ("f1", "r_value")


def voice_of(utterance_id: str) -> str:
    """The voice (speaker) of a LibriSpeech-layout utterance id ``<speaker>-<chapter>-<n>``: the bootstrap's group."""
    return utterance_id.split("-")[0]


def resample_indices(n: int, n_resamples: int, rng: np.random.Generator, groups=None, *,
                     within: bool = True) -> np.ndarray:
    """``(n_resamples, n)`` utterance indices: ``n`` draws with replacement, or, with ``groups`` (a label per
    utterance), as many groups as there are drawn with replacement and, for each drawn group, as many of its
    utterances as it has drawn with replacement within it (so a draw can have more or fewer than ``n`` rows;
    it is padded with -1). ``within=False``: each drawn group brings all its utterances once, as they are (a
    one-level cluster bootstrap: the voices are the sampled units)."""
    if groups is None:
        return rng.integers(0, n, size=(n_resamples, n))
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups must label every utterance ({n}), got {len(groups)}")
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rows = []
    for _ in range(n_resamples):
        picked = rng.integers(0, len(members), size=len(members))
        rows.append(np.concatenate([rng.choice(members[g], size=len(members[g])) if within else members[g]
                                    for g in picked]))
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows])


def paired_bootstrap(pred_a, pred_b, ref, *, shift_a: float = 0.0, shift_b: float = 0.0,
                     protocol: str = "syllablelm", tolerance: float = 0.05, n_resamples: int = 2000,
                     level: float = 0.95, seed: int = 0, groups=None) -> dict:
    """``a - b`` for F1 and R-value (per-utterance ``(n, 2)`` segment lists against the same references; each
    system scored at its own shift); ``groups``: each utterance's voice, for the two-level bootstrap. Returns
    ``{"n_utterances", "n_groups", "n_resamples", "level", "f1": {...}, "r_value": {...}}`` with
    ``difference``, ``low``, ``high`` and ``p_not_better`` per metric."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    counts_a = boundary_counts(pred_a, ref, tolerance, protocol, shift_a)  # (N, 3)
    counts_b = boundary_counts(pred_b, ref, tolerance, protocol, shift_b)
    if len(counts_a) != len(counts_b) or len(counts_a) == 0:
        raise ValueError(f"need the same utterances for both systems (got {len(counts_a)} and {len(counts_b)})")
    draws = resample_indices(len(counts_a), n_resamples, np.random.default_rng(seed), groups)
    pad = np.zeros((1, 3), dtype=counts_a.dtype)  # index -1: a padding row that counts nothing
    resampled_a = boundary_rates(*np.concatenate([counts_a, pad])[draws].sum(1).T)  # each (n_resamples,)
    resampled_b = boundary_rates(*np.concatenate([counts_b, pad])[draws].sum(1).T)
    whole_a, whole_b = boundary_rates(*counts_a.sum(0)), boundary_rates(*counts_b.sum(0))
    out: dict = {"n_utterances": len(counts_a), "n_groups": None if groups is None else len(set(groups)),
                 "n_resamples": n_resamples, "level": level}
    tail = (1 - level) / 2
    for m in METRICS:
        diff = resampled_a[m] - resampled_b[m]
        low, high = np.quantile(diff, [tail, 1 - tail])
        out[m] = {"difference": float(whole_a[m] - whole_b[m]), "low": float(low), "high": float(high),
                  "p_not_better": float(np.mean(diff <= 0))}
    return out


def paired_ratio_bootstrap(num_a, den_a, num_b, den_b=None, *, groups, n_resamples: int = 2000,
                           level: float = 0.95, seed: int = 0) -> dict:
    """A paired voice-level bootstrap of a ratio-of-sums statistic in two conditions on the same utterances.

    ``num_*``/``den_*``: per-utterance numerators and denominators (for PER: edit distances and reference
    lengths; ``den_b`` defaults to ``den_a``); a condition's value on a set is ``sum(num) / sum(den)``.
    ``groups``: each utterance's voice (:func:`voice_of`). Each of ``n_resamples`` draws takes as many voices as
    there are, with replacement, each with all its utterances (:func:`resample_indices` with ``within=False``), and
    scores both conditions on that same draw. Returns ``{"n_utterances", "n_groups", "n_resamples", "level",
    "a", "b", "difference"}``: ``a`` and ``b`` hold ``value`` (on the whole set), ``low`` and ``high`` (the
    percentile interval); ``difference`` (``a - b``) also ``p_nonnegative`` and ``p_nonpositive``, the fractions of
    draws with ``a - b >= 0`` and ``<= 0`` (one-sided bootstrap p-values)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arrays = [np.asarray(x, dtype=np.float64).reshape(-1) for x in (num_a, den_a, num_b, den_a if den_b is None
                                                                     else den_b)]
    n = len(arrays[0])
    if n == 0 or any(len(x) != n for x in arrays):
        raise ValueError(f"need the same utterances in every array, got lengths {[len(x) for x in arrays]}")
    if any(not np.isfinite(x).all() or (x < 0).any() for x in arrays):
        raise ValueError("numerators and denominators must be finite and >= 0")
    groups = np.asarray(groups)
    draws = resample_indices(n, n_resamples, np.random.default_rng(seed), groups, within=False)
    padded = [np.concatenate([x, [0.0]]) for x in arrays]  # index -1: a padding row that counts nothing
    num_a, den_a, num_b, den_b = (x[draws].sum(1) for x in padded)  # each (n_resamples,)
    if (den_a <= 0).any() or (den_b <= 0).any():
        raise ValueError("a resampled set has a zero denominator (a voice whose denominators are all 0?)")
    whole = {k: arrays[i].sum() / arrays[i + 1].sum() for k, i in (("a", 0), ("b", 2))}
    resampled = {"a": num_a / den_a, "b": num_b / den_b}
    resampled["difference"] = resampled["a"] - resampled["b"]
    whole["difference"] = whole["a"] - whole["b"]
    tail = (1 - level) / 2
    out: dict = {"n_utterances": n, "n_groups": len(np.unique(groups)), "n_resamples": n_resamples, "level": level}
    for key in ("a", "b", "difference"):
        low, high = np.quantile(resampled[key], [tail, 1 - tail])
        out[key] = {"value": float(whole[key]), "low": float(low), "high": float(high)}
    out["difference"]["p_nonnegative"] = float(np.mean(resampled["difference"] >= 0))
    out["difference"]["p_nonpositive"] = float(np.mean(resampled["difference"] <= 0))
    return out
