"""Token rate and bitrate of unit sequences, before and after de-duplicating consecutive equal ids.

Definitions (docs/algorithms.md, "Stage 3" and "Evaluation"), over a corpus:

* token rate (Hz) = tokens / total duration, silence included (durations are whole files, not speech only);
* nominal bitrate (bit/s) = token rate x log2(vocabulary size);
* entropy bitrate (bit/s) = tokens x unigram entropy (bits/token) / total duration, the entropy taken over the
  corpus's own unigram distribution.

Conventions: zero total duration -> rates 0; no tokens -> entropy 0. ``dedup_ids`` here only counts (it is not
the segment-merging dedup of ``syllablelm.units.quantizer``); ``token_stats`` applies it for the ``dedup_*`` keys,
which are
equal to the plain ones when the units were already de-duplicated (unit shards are stored after dedup).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric


def _ids(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64).reshape(-1)


def dedup_ids(ids) -> np.ndarray:
    """Collapse runs of equal consecutive ids to one id: ``[3, 3, 5, 3] -> [3, 5, 3]``."""
    a = _ids(ids)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _seconds(durations) -> float:
    if isinstance(durations, Tensor):
        durations = durations.detach().cpu().numpy()
    return float(np.sum(np.asarray(durations, dtype=np.float64)))


def token_rate(units_or_counts, durations) -> float:
    """Tokens per second. ``units_or_counts``: a list whose items are id sequences (their lengths count) or
    token counts (ints), or one int total; ``durations``: per-utterance seconds or one total."""
    if isinstance(units_or_counts, (int, np.integer)):
        n = int(units_or_counts)
    else:
        n = sum(int(u) if isinstance(u, (int, np.integer)) else len(_ids(u)) for u in units_or_counts)
    seconds = _seconds(durations)
    return n / seconds if seconds > 0 else 0.0


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    if len(c) == 0:
        return 0.0
    p = c / c.sum()
    return float(-np.sum(p * np.log2(p)))


def unigram_entropy(units: Sequence) -> float:
    """Entropy (bits per token) of the unigram distribution of all ids in a list of id sequences."""
    ids = np.concatenate([_ids(u) for u in units]) if len(units) else np.zeros(0, dtype=np.int64)
    return _entropy_bits(np.unique(ids, return_counts=True)[1])


def _token_compute(unit_counts: np.ndarray, seconds: float, vocab_size: int | None) -> dict[str, float]:
    """Rates from per-unit token counts (zeros allowed; ordered by unit id) and the total seconds."""
    n = int(unit_counts.sum())
    entropy = _entropy_bits(unit_counts)
    out = {"n_tokens": n, "seconds": float(seconds),
           "token_rate": n / seconds if seconds > 0 else 0.0,
           "entropy_bits": entropy,
           "entropy_bps": n * entropy / seconds if seconds > 0 else 0.0}
    if vocab_size is not None:
        out["nominal_bps"] = out["token_rate"] * math.log2(vocab_size)
    return out


def bitrate(units: Sequence, durations, vocab_size: int | None = None) -> dict[str, float]:
    """``{"n_tokens", "seconds", "token_rate", "entropy_bits", "entropy_bps"}`` and, given ``vocab_size``,
    ``"nominal_bps"`` for a list of id sequences and their durations (seconds)."""
    ids = np.concatenate([_ids(u) for u in units]) if len(units) else np.zeros(0, dtype=np.int64)
    return _token_compute(np.unique(ids, return_counts=True)[1], _seconds(durations), vocab_size)


def token_stats(units: Sequence, durations, vocab_size: int | None = None) -> dict[str, float]:
    """:func:`bitrate` keys, and the same keys prefixed ``dedup_`` after :func:`dedup_ids` per utterance.

    >>> s = token_stats([[1, 1, 2, 2], [3, 3]], durations=[1.0, 1.0], vocab_size=4)
    >>> s["token_rate"], s["dedup_token_rate"], s["nominal_bps"], round(s["dedup_entropy_bps"], 4)
    (3.0, 1.5, 6.0, 2.3774)
    """
    out = bitrate(units, durations, vocab_size)
    out.update({f"dedup_{k}": v for k, v in bitrate([dedup_ids(u) for u in units], durations, vocab_size).items()})
    return out


class TokenRateMetric(Metric):
    """Token rate, entropy and nominal bitrates, before and after dedup, as sum states.

    States: per-unit token counts before and after dedup (int64, length ``vocab_size``: exact under DDP) and the
    total seconds (float64). ``compute()`` returns the :func:`token_stats` keys as 0-d tensors.

    >>> m = TokenRateMetric(vocab_size=4)
    >>> m.update([[1, 1, 2, 2]], [1.0]); m.update([[3, 3]], [1.0])
    >>> float(m.compute()["dedup_token_rate"])
    1.5
    """

    is_differentiable = False
    higher_is_better = None  # neither direction is better in itself (a trade-off with quality)
    full_state_update = False

    def __init__(self, *, vocab_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.add_state("counts", default=torch.zeros(self.vocab_size, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("dedup_counts", default=torch.zeros(self.vocab_size, dtype=torch.int64),
                       dist_reduce_fx="sum")
        self.add_state("seconds", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, units: Sequence, durations) -> None:
        """``units``: list of id sequences; ``durations``: their seconds (one per utterance)."""
        if not isinstance(durations, (int, float)) and len(durations) != len(units):
            raise ValueError(f"{len(units)} unit sequences but {len(durations)} durations")
        for name, seqs in (("counts", units), ("dedup_counts", [dedup_ids(u) for u in units])):
            ids = np.concatenate([_ids(u) for u in seqs]) if len(seqs) else np.zeros(0, dtype=np.int64)
            if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise ValueError(f"unit ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
            state = getattr(self, name)
            state += torch.from_numpy(np.bincount(ids, minlength=self.vocab_size)).to(state.device)
        self.seconds += _seconds(durations)

    def compute(self) -> dict[str, Tensor]:
        seconds = float(self.seconds)
        out = _token_compute(self.counts.cpu().numpy(), seconds, self.vocab_size)
        out.update({f"dedup_{k}": v
                    for k, v in _token_compute(self.dedup_counts.cpu().numpy(), seconds, self.vocab_size).items()})
        return {k: torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
                for k, v in out.items()}
