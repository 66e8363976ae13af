"""Min-cut segmentation: the SylBoost SSE min-cut with rate control, the LossPred normalized cut, time helpers.

Frames (50 Hz) exist only inside these algorithms; :mod:`syllablelm.audio.frames` converts at the boundary to the
seconds every file and public API uses (docs/algorithms.md, "Frames and time").

Every function returns boundary frames as a 1-D long CPU tensor ``[0, b_1, ..., T]`` (``k + 1`` entries for k
segments); segment lengths ``min_len..max_len`` are inclusive. The DPs are exact (not beam or greedy):

* objective = sum of segment costs, computed in float64 (features are centred on the utterance mean first);
* ties are broken towards the lexicographically smallest boundary list (earliest cuts first);
* the ``*_batch`` variants take padded ``(B, T, ...)`` inputs plus ``lengths`` and return, on the CPU,
  bit-for-bit the per-utterance answers (padding never enters a cost; it must only be finite). On CUDA, cuBLAS
  may pick a different kernel for a different batch size, so costs can differ in the last bits; only exact ties
  could then flip.

Rate control (:func:`sse_segment` with ``delta``) is the official binary search of docs/algorithms.md ("The
segmenter"), read from a table of quantiles for every segment count it may visit; one DP pass serves all counts. The
quantile is linear interpolation, computed exactly as ``torch.quantile`` does (the official inference code calls
``np.quantile``, whose default gives the same value for ``quantile=0.75``).

Example::

    feats = torch.randn(400, 768)                       # (T, D): 8 s of 50 Hz features
    bounds = sse_segment(feats, rate_hz=6.25)           # tensor([0, ..., 400]), 50 segments
    segs = syllablelm.audio.frames.frames_to_segments(bounds, offset=0.3)   # (50, 2) seconds in the file's time
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
import torch

from syllablelm.audio.frames import FRAME_HZ
from syllablelm.boundaries import dp


# --------------------------------------------------------------------------------------------- validation ----
def _check_lengths(min_len: int, max_len: int) -> tuple[int, int]:
    if not (isinstance(min_len, numbers.Integral) and isinstance(max_len, numbers.Integral)) \
            or min_len < 1 or max_len < min_len:
        raise ValueError(f"need integers 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    return int(min_len), int(max_len)


def _feasible_range(T: int, min_len: int, max_len: int) -> tuple[int, int]:
    """Segment counts k for which T frames split into lengths in [min_len, max_len]: ceil(T/max) .. T//min."""
    return max(1, -(-T // max_len)), T // min_len


def _prepare(x: torch.Tensor, lengths, ndim: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got {getattr(x, 'shape', type(x))}")
    B, T = x.shape[:2]
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).to(x.device)
    if lengths.numel() != B or B == 0:
        raise ValueError(f"lengths must hold one length per utterance ({B}), got {lengths.numel()}")
    if int(lengths.min()) < 1 or int(lengths.max()) > T:
        raise ValueError(f"lengths must lie in [1, {T}], got {lengths.tolist()}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x, lengths


def _counts(num_segments, B: int) -> list[int]:
    ks = [int(num_segments)] * B if np.ndim(num_segments) == 0 else [int(k) for k in num_segments]
    if len(ks) != B:
        raise ValueError(f"num_segments must be an int or hold one count per utterance ({B}), got {len(ks)}")
    return ks


def _check_counts(ks: list[int], lengths: list[int], min_len: int, max_len: int) -> None:
    for i, (k, T) in enumerate(zip(ks, lengths)):
        lo, hi = _feasible_range(T, min_len, max_len)
        if not lo <= k <= hi:
            raise ValueError(
                f"utterance {i}: {k} segments of {min_len}..{max_len} frames cannot cover T={T} frames "
                f"(feasible counts: {lo}..{hi})" if lo <= hi else
                f"utterance {i}: T={T} frames cannot be cut into segments of {min_len}..{max_len} frames")


def _boundaries(lens: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
    """(B, 1, K) segment lengths -> list of boundary tensors [0, ..., T]."""
    cum = lens[:, 0].cumsum(-1).cpu()  # (B, K)
    return [torch.cat([cum.new_zeros(1), cum[b, :k]]) for b, k in enumerate(ks)]


def _solve(cost: torch.Tensor, lengths: torch.Tensor, ks: list[int], min_len: int) -> list[torch.Tensor]:
    _, bp = dp.min_cut_dp(cost, lengths, max(ks), min_len)
    lens, _ = dp.backtrack(bp, cost, torch.tensor(ks, device=cost.device)[:, None], min_len)
    return _boundaries(lens, ks)


# -------------------------------------------------------------------------------------------- SSE min-cut ----
def sse_mincut_batch(features: torch.Tensor, num_segments, lengths=None, min_len: int = 3,
                     max_len: int = 50) -> list[torch.Tensor]:
    """:func:`sse_mincut` for padded ``features`` (B, T, D) with ``lengths`` (B,); ``num_segments`` int or (B,)."""
    min_len, max_len = _check_lengths(min_len, max_len)
    x, lengths = _prepare(features, lengths, 3, "features")
    ks = _counts(num_segments, x.shape[0])
    _check_counts(ks, lengths.tolist(), min_len, max_len)
    cost = dp.sse_cost_table(x, lengths, min_len, max_len)  # (B, nL, T+1)
    return _solve(cost, lengths, ks, min_len)


def sse_mincut(features: torch.Tensor, num_segments: int, min_len: int = 3, max_len: int = 50) -> torch.Tensor:
    """Exact optimum of the SylBoost objective with ``num_segments`` segments.

    Objective: Σ over segments of Σ_frames ||x - segment mean||² / D. ``features`` (T, D). Raises ValueError when
    no split exists (T < num_segments·min_len or T > num_segments·max_len).
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a (T, D) tensor, got {getattr(features, 'shape', type(features))}")
    return sse_mincut_batch(features[None], [num_segments], None, min_len, max_len)[0]


def search_range(T: int, min_len: int, max_len: int, max_rate: float) -> tuple[int, int]:
    """The official search interval ``[m//3, m]`` (m = int(max_rate·T)) intersected with the feasible counts.

    With the defaults and T >= 15 frames it is the official interval unchanged. Otherwise it is clamped into
    ``[ceil(T/max_len), T//min_len]`` (and at least 1 segment, where the official code would try 0).
    """
    kmin, kmax = _feasible_range(T, min_len, max_len)
    if kmin > kmax:
        raise ValueError(f"T={T} frames cannot be cut into segments of {min_len}..{max_len} frames")
    m = int(max_rate * T)
    clamp = lambda k: min(max(k, kmin), kmax)  # noqa: E731
    return clamp(max(m // 3, 1)), clamp(m)


def _rate_search(qtab: np.ndarray, lo: np.ndarray, hi: np.ndarray, delta: float) -> np.ndarray:
    """The official loop, run for every row at once; ``qtab[b, k - lo[b]]`` is the quantile for k segments."""
    base = lo.copy()
    lo, hi, best = lo.copy(), hi.copy(), lo.copy()
    rows = np.arange(len(lo))
    while True:
        act = lo <= hi
        if not act.any():
            return best
        mid = (lo + hi) // 2
        above = act & (qtab[rows, np.where(act, mid - base, 0)] > delta)
        best = np.where(above, mid, best)
        lo = np.where(above, mid + 1, lo)
        hi = np.where(act & ~above, mid - 1, hi)


def _quantile_tables(x, lengths, quantile, min_len, max_len, max_rate):
    """One DP pass up to the largest count searched; returns (cost, bp, qtab numpy, lo, hi numpy)."""
    rng = np.array([search_range(int(T), min_len, max_len, max_rate) for T in lengths.tolist()])
    lo, hi = rng[:, 0], rng[:, 1]
    cost = dp.sse_cost_table(x, lengths, min_len, max_len)  # (B, nL, T+1)
    _, bp = dp.min_cut_dp(cost, lengths, int(hi.max()), min_len)
    qtab = dp.quantile_table(bp, cost, torch.as_tensor(lo, device=x.device), torch.as_tensor(hi, device=x.device),
                              min_len, quantile)
    return cost, bp, qtab.cpu().numpy(), lo, hi


def sse_segment_batch(features: torch.Tensor, lengths=None, *, delta: float | None = None,
                      rate_hz: float | None = None, quantile: float = 0.75, min_len: int = 3, max_len: int = 50,
                      max_rate: float = 0.2) -> list[torch.Tensor]:
    """:func:`sse_segment` for padded ``features`` (B, T, D) with ``lengths`` (B,)."""
    min_len, max_len = _check_lengths(min_len, max_len)
    if (delta is None) == (rate_hz is None):
        raise ValueError("give exactly one of delta (official rate search) or rate_hz (fixed rate)")
    x, lengths = _prepare(features, lengths, 3, "features")
    Ts = lengths.tolist()
    if rate_hz is not None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        ks = []
        for T in Ts:
            kmin, kmax = _feasible_range(T, min_len, max_len)
            if kmin > kmax:
                raise ValueError(f"T={T} frames cannot be cut into segments of {min_len}..{max_len} frames")
            ks.append(min(max(math.floor(rate_hz * T / FRAME_HZ + 0.5), kmin), kmax))  # round half up
        cost = dp.sse_cost_table(x, lengths, min_len, max_len)
        return _solve(cost, lengths, ks, min_len)
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    cost, bp, qtab, lo, hi = _quantile_tables(x, lengths, quantile, min_len, max_len, max_rate)
    ks = _rate_search(qtab, lo, hi, float(delta)).tolist()
    lens, _ = dp.backtrack(bp, cost, torch.tensor(ks, device=x.device)[:, None], min_len)
    return _boundaries(lens, ks)


def sse_segment(features: torch.Tensor, *, delta: float | None = None, rate_hz: float | None = None,
                quantile: float = 0.75, min_len: int = 3, max_len: int = 50, max_rate: float = 0.2) -> torch.Tensor:
    """SSE min-cut with the number of segments chosen by ``delta`` or fixed by ``rate_hz``; exactly one.

    ``delta``: the official rate search (docs/algorithms.md): binary search over k in ``[m//3, m]``, m =
    ``int(max_rate·T)``, moving up while the ``quantile`` of the k-segment solution's per-frame costs
    (segment cost / length) exceeds ``delta``. Counts no split can reach are clamped into the feasible range
    (``ceil(T/max_len)..T//min_len``, at least 1); with the defaults this changes nothing for T >= 15 frames.
    ``rate_hz``: k = round-half-up(rate_hz · T / 50), clamped into the same feasible range.
    Raises ValueError when T cannot be cut at all (T < min_len).
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a (T, D) tensor, got {getattr(features, 'shape', type(features))}")
    return sse_segment_batch(features[None], None, delta=delta, rate_hz=rate_hz, quantile=quantile,
                             min_len=min_len, max_len=max_len, max_rate=max_rate)[0]


def calibrate_delta(features_list: Sequence[torch.Tensor], target_hz: float, *, quantile: float = 0.75,
                    min_len: int = 3, max_len: int = 50, max_rate: float = 0.2, batch_size: int = 16,
                    device: torch.device | str | None = None) -> float:
    """The ``delta`` whose rate search gives the mean rate closest to ``target_hz`` on these utterances.

    Rate = total segments / total seconds (50 frames/s). Each utterance's chosen count is a non-increasing
    step function of delta (two deltas follow the same binary-search path until a comparison ``q > delta``
    differs, where the smaller delta goes up and the larger goes down), so the mean rate is too, and it only
    changes at the quantile values the search reads. One DP pass per utterance gives the table of those values
    for every count; bisection over the sorted values then costs only table look-ups. Returns the midpoint of
    the delta interval achieving the closest rate (the target may lie between two achievable rates).
    """
    if len(features_list) == 0:
        raise ValueError("calibrate_delta needs at least one utterance")
    min_len, max_len = _check_lengths(min_len, max_len)
    tabs, los, his, total_frames = [], [], [], 0
    for i in range(0, len(features_list), batch_size):
        chunk = features_list[i : i + batch_size]
        for f in chunk:
            if not isinstance(f, torch.Tensor) or f.dim() != 2:
                raise ValueError(f"each features entry must be a (T, D) tensor, got {getattr(f, 'shape', f)}")
        Ts = [f.shape[0] for f in chunk]
        x = torch.nn.utils.rnn.pad_sequence(list(chunk), batch_first=True)
        x = x.to(device) if device is not None else x  # (b, T, D)
        x, lengths = _prepare(x, Ts, 3, "features")
        _, _, qtab, lo, hi = _quantile_tables(x, lengths, quantile, min_len, max_len, max_rate)
        tabs += list(qtab)
        los.append(lo)
        his.append(hi)
        total_frames += sum(Ts)
    width = max(len(t) for t in tabs)
    qtab = np.stack([np.pad(t, (0, width - len(t)), constant_values=np.nan) for t in tabs])  # (N, width)
    lo, hi = np.concatenate(los), np.concatenate(his)
    seconds = total_frames / FRAME_HZ
    rate = lambda d: _rate_search(qtab, lo, hi, d).sum() / seconds  # noqa: E731
    cand = np.unique(qtab[np.isfinite(qtab)])  # the rate is constant on [cand[i], cand[i+1])
    # Rate at delta below every value (index -1) and at each candidate; find the first index at/below target.
    left, right = -1, len(cand) - 1
    if rate(cand[-1]) >= target_hz:
        left = right
    else:
        while right - left > 1:  # invariant: rate(left) > target >= rate(right), rate(-1) = rate(-inf)
            mid = (left + right) // 2
            if rate(cand[mid]) > target_hz:
                left = mid
            else:
                right = mid
    rate_at = lambda i: rate(cand[i] if i >= 0 else -np.inf)  # noqa: E731
    i = min((left, right), key=lambda i: abs(rate_at(i) - target_hz))
    if i < 0:  # below every candidate
        return float(cand[0] / 2 if cand[0] > 0 else cand[0] - 1.0)
    if i == len(cand) - 1:
        return float(cand[i] * 2 if cand[i] > 0 else cand[i] + 1.0)
    return float((cand[i] + cand[i + 1]) / 2)


# ------------------------------------------------------------------------------------------ normalized cut ----
def ncut_mincut_batch(similarity: torch.Tensor, num_segments, lengths=None, min_len: int = 1,
                      max_len: int = 49) -> list[torch.Tensor]:
    """:func:`ncut_mincut` for padded ``similarity`` (B, T, T) with ``lengths`` (B,); ``num_segments`` int or (B,)."""
    min_len, max_len = _check_lengths(min_len, max_len)
    S, lengths = _prepare(similarity, lengths, 3, "similarity")
    if S.shape[1] != S.shape[2]:
        raise ValueError(f"similarity must be square per utterance, got {tuple(S.shape)}")
    ks = _counts(num_segments, S.shape[0])
    _check_counts(ks, lengths.tolist(), min_len, max_len)
    cost = dp.ncut_cost_table(S, lengths, min_len, max_len)  # (B, nL, T+1)
    return _solve(cost, lengths, ks, min_len)


def ncut_mincut(similarity: torch.Tensor, num_segments: int, min_len: int = 1, max_len: int = 49) -> torch.Tensor:
    """Exact normalized-cut segmentation of a (T, T) similarity into ``num_segments`` segments.

    Segment ``[j, i)`` costs ``out / (out + interior + 1e-5)`` with ``interior = ΣS[j:i, j:i]`` and ``out`` the
    similarity between the segment and everything else (both directions); the summed cost is minimised.
    """
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2:
        raise ValueError(f"similarity must be a (T, T) tensor, got {getattr(similarity, 'shape', similarity)}")
    return ncut_mincut_batch(similarity[None], [num_segments], None, min_len, max_len)[0]
