"""Batched exact K-segment min-cut: segment-cost tables, the DP, backtracking and the rate-search table.

Internal to :mod:`syllablelm.boundaries.mincut` (which holds the public API and its documentation). Everything here is
batched over padded utterances ``(B, T, ...)`` with per-utterance ``lengths``; a single utterance is a batch of one.

Cost tables are indexed by length and segment START ``j``: ``cost[b, l, j]`` is the cost of frames
``[j, j + min_len + l)``; with ``j`` innermost the DP's add and min run over contiguous memory. The DP runs
from the end of the utterance towards the start, ``H_k[j] = min_L cost(j, L) + H_{k-1}[j + L]`` with
``H_0[len] = 0``, so every utterance's answer sits at ``H_k[0]`` whatever its padding, and backtracking walks
forward from frame 0. Cost: O(B·T·max_len·D) for the table (two batched matmuls), O(K·B·T·nL) for the DP.

Tie-break: ``torch.min`` returns the first minimum, i.e. the SHORTEST segment starting at ``j``; the chosen
segmentation is therefore the lexicographically smallest boundary list among the optimal ones (earliest cuts).

Why padding cannot change results (bit for bit, on the CPU): padded frames never enter a valid segment's cost;
the feature mean is a reduction over exactly the utterance's ``(len, D)`` frames; the similarity row/column sums
are read from sequential float64 cumulative sums at ``len - 1`` (the same numbers whatever follows); and the
Gram band is built from fixed-size ``max_len`` blocks, so every matrix product has the same shape in the
padded and the unpadded call.
"""
from __future__ import annotations

import torch

INF = float("inf")


def _skew_sums(band: torch.Tensor) -> torch.Tensor:
    """Sum pair terms over every window: ``out[b, j, L-1] = Σ_{a<=c in [j, j+L)} band[b, c, c-a]``.

    ``band[b, e, d]`` holds the term between frames ``e-d`` and ``e`` (``d = 0``: the frame with itself); it is
    zero where ``e - d < 0``. Windows running past the end read zeros (callers never use them).
    """
    B, T, s = band.shape
    W = band.cumsum(-1)  # (B, T, s): W[e, d] = what frame e adds to a window that starts at e - d
    W = torch.cat([W, W.new_zeros(B, s, s)], 1).contiguous()  # (B, T+s, s)
    # V[j, l] = W[j + l, l]: the frame added when the window starting at j grows from l to l+1 frames.
    V = W.as_strided((B, T + 1, s), (W.stride(0), s, s + 1))  # (B, T+1, s)
    return V.cumsum(-1)  # (B, T+1, s)


def _window_sums(v: torch.Tensor, s: int) -> torch.Tensor:
    """``out[b, j, L-1] = Σ v[b, j:j+L]`` for L = 1..s; ``v`` is (B, T), zeros past the end."""
    B, T = v.shape
    vp = torch.cat([v, v.new_zeros(B, s)], 1)  # (B, T+s)
    return vp.unfold(1, s, 1)[:, : T + 1].cumsum(-1)  # (B, T+1, s)


def _valid_prefix_sum(x: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``x`` over the first ``lengths[b]`` entries along ``dim`` (1 or 2), read from a float64 cumsum.

    A cumulative sum is sequential along ``dim`` on the CPU, so the value at ``len - 1`` does not depend on
    what padding follows (a tree reduction over the padded length would regroup the additions).
    """
    c = x.cumsum(dim)
    idx = (lengths - 1).clamp(min=0).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
    shape = list(c.shape)
    shape[dim] = 1
    return c.gather(dim, idx.expand(shape)).squeeze(dim)


def sse_cost_table(feats: torch.Tensor, lengths: torch.Tensor, min_len: int, max_len: int) -> torch.Tensor:
    """SylBoost segment costs: within-segment sum of squared deviations from the segment mean, divided by D.

    ``SSE = Σ_a ||x_a||² - ||Σ_a x_a||² / L``; both sums come from the banded Gram matrix ``x_a · x_c``
    (``|a - c| < max_len``) in float64, after centring each utterance on its own mean (the cost is
    shift-invariant, and centring keeps the subtraction from cancelling away the digits that matter).
    Returns ``(B, max_len-min_len+1, T+1)``: ``[b, l, j]`` is segment ``[j, j+min_len+l)``.
    """
    B, T, D = feats.shape
    s = max_len
    nb = -(-T // s)
    x = torch.empty(B, nb * s, D, dtype=torch.float64, device=feats.device)  # (B, nb*s, D)
    x[:, :T] = feats
    x[:, T:] = 0.0
    for b, n in enumerate(lengths.tolist()):  # the same (n, D) reduction as an unpadded call: same bits
        x[b, :n] -= x[b, :n].sum(0) / n
        x[b, n:] = 0.0
    blocks = x.view(B * nb, s, D)  # (B*nb, s, D)
    same = torch.bmm(blocks, blocks.transpose(1, 2))  # (B*nb, s, s): [r, c] = x[ks+r] · x[ks+c]
    prev = torch.bmm(blocks[1:], blocks[:-1].transpose(1, 2))  # [r, c] = x[ks+r] · x[(k-1)s+c]
    prev = torch.cat([prev.new_zeros(1, s, s), prev]).view(B, nb, s, s)  # block 0's "previous" block belongs
    # to another utterance: only pairs with e - d < 0 read it, and the mask below zeroes those
    pair = torch.cat([prev, same.view(B, nb, s, s)], -1)  # (B, nb, s, 2s)
    r = torch.arange(s, device=x.device)
    col = s + r[:, None] - r[None, :]  # (s, s): column of frame (ks+r) - d
    band = pair.gather(3, col.expand(B, nb, s, s)).reshape(B, nb * s, s)[:, :T]  # (B, T, s): x[e-d]·x[e]
    band = band.masked_fill(torch.arange(T, device=x.device)[:, None] < r[None, :], 0.0)  # e - d < 0
    diag = band[..., 0].clone()  # (B, T): ||x_e||²
    band[..., 1:] *= 2.0  # each unordered pair appears twice in ||Σ x||²
    sq_norm = _window_sums(diag, s)  # (B, T+1, s)
    sq_sum = _skew_sums(band)  # (B, T+1, s)
    L = torch.arange(1, s + 1, device=x.device, dtype=x.dtype)
    sse = (sq_norm - sq_sum / L).clamp_min_(0.0) / D  # (B, T+1, s)
    return sse[..., min_len - 1 :].transpose(1, 2).contiguous()  # (B, nL, T+1): the DP's layout


def ncut_cost_table(sim: torch.Tensor, lengths: torch.Tensor, min_len: int, max_len: int) -> torch.Tensor:
    """Normalized-cut segment costs ``out / (out + interior + 1e-5)`` (docs/algorithms.md, "Stage 1").

    ``interior`` is a band sum (a segment is at most ``max_len`` frames, so only ``|r - c| < max_len``
    matters); ``out = row-block + column-block - 2 interior`` with the row/column sums over valid frames.
    Same float64 and layout as :func:`sse_cost_table`.
    """
    B, T, _ = sim.shape
    s = max_len
    S = sim.to(torch.float64)  # (B, T, T); padding is never read: band entries past len are unused windows,
    # and row/column sums stop at len - 1
    e = torch.arange(T, device=S.device)[:, None]  # (T, 1)
    d = torch.arange(s, device=S.device)[None, :]  # (1, s)
    a = (e - d).clamp(min=0)  # (T, s)
    band = S[:, a, e] + S[:, e, a]  # (B, T, s): S[e-d, e] + S[e, e-d]
    band[..., 0] *= 0.5  # the diagonal counts once
    band = band.masked_fill(e < d, 0.0)
    interior = _skew_sums(band)  # (B, T+1, s)
    rows = _valid_prefix_sum(S, lengths, 2)  # (B, T): Σ_c S[r, c]
    cols = _valid_prefix_sum(S, lengths, 1)  # (B, T): Σ_r S[r, c]
    blocks = _window_sums(rows + cols, s)  # (B, T+1, s)
    out = (blocks - 2.0 * interior).clamp_min_(0.0)
    cost = out / (out + interior + 1e-5)
    return cost[..., min_len - 1 :].transpose(1, 2).contiguous()  # (B, nL, T+1)


def min_cut_dp(cost: torch.Tensor, lengths: torch.Tensor, max_k: int, min_len: int):
    """Exact DP for every segment count ``k = 1..max_k`` at once.

    ``cost`` (B, nL, T+1). Returns ``best`` (B, max_k) float64 (``best[:, k-1]`` = optimum with k segments,
    inf when infeasible) and backpointers ``bp`` (max_k, B, T+1): ``bp[k-1, b, j]`` = length index of the first
    segment of the optimal k-segment split of ``[j, len)`` (only meaningful where that split exists).
    """
    B, nL, T1 = cost.shape
    max_len = min_len + nL - 1
    T = int(lengths.max())
    H = cost.new_full((B, T1 + max_len), INF)  # (B, T+1+max_len): H_k[j], inf past the end
    H[torch.arange(B, device=cost.device), lengths] = 0.0  # H_0: nothing left to cut only at j = len
    idx_dtype = torch.uint8 if nL <= 256 else torch.int32
    bp = torch.zeros(max_k, B, T1, dtype=idx_dtype, device=cost.device)
    best = cost.new_empty(B, max_k)
    for k in range(max_k):
        # k+1 segments need (k+1)·min_len frames: starts past jh are infeasible for every utterance.
        jh = max(1, min(T1, T - (k + 1) * min_len + 1))
        nxt = H.as_strided((B, nL, jh), (H.stride(0), 1, 1), min_len)  # (B, nL, jh): H_{k-1}[j + min_len + l]
        val, arg = torch.min(nxt + cost[:, :, :jh], 1)  # first minimum = shortest first segment
        H[:, :jh] = val
        H[:, jh:T1] = INF
        bp[k, :, :jh] = arg.to(idx_dtype)
        best[:, k] = val[:, 0]
    return best, bp


def backtrack(bp: torch.Tensor, cost: torch.Tensor, ks: torch.Tensor, min_len: int):
    """Segment lengths and per-frame costs of the optimal ``ks[b, c]``-segment solutions (0 = none).

    ``ks`` (B, C) must be feasible counts. Returns ``lens`` (B, C, K) long (0 past the k-th segment) and
    ``per_frame`` (B, C, K) float64 (segment cost / length; +inf past the k-th segment), K = ``ks.max()``.
    """
    _, B, T1 = bp.shape
    C = ks.shape[1]
    K = int(ks.max())
    dev = cost.device
    bflat = bp.reshape(-1)
    cflat = cost.reshape(-1)
    nL = cost.shape[1]
    b = torch.arange(B, device=dev)[:, None].expand(B, C)  # (B, C)
    j = torch.zeros(B, C, dtype=torch.long, device=dev)  # (B, C): start of the next segment
    lens = torch.zeros(B, C, K, dtype=torch.long, device=dev)
    per_frame = torch.full((B, C, K), INF, dtype=cost.dtype, device=dev)
    for t in range(K):
        left = ks - t  # (B, C): segments still to place, this one included
        live = left >= 1
        # index_select, not advanced indexing: the latter costs time proportional to the whole table here
        li = bflat.index_select(0, (((left - 1).clamp(min=0) * B + b) * T1 + j).view(-1)).view(B, C).long()
        seg = cflat.index_select(0, ((b * nL + li) * T1 + j).view(-1)).view(B, C)
        L = li + min_len
        lens[:, :, t] = torch.where(live, L, 0)
        per_frame[:, :, t] = torch.where(live, seg / L, INF)
        j = torch.where(live, j + L, j).clamp(max=T1 - 1)
    return lens, per_frame


def rows_quantile(values: torch.Tensor, n: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values[..., :n], q)`` (linear) for every row, rows padded with +inf past ``n``.

    Same arithmetic as ``torch.quantile`` (rank ``q·(n-1)``, gather below/above, ``lerp``), hence the same
    bits for float64; numpy's default 'linear' agrees for q = 0.75.
    """
    srt = values.sort(-1).values
    rank = q * (n - 1).to(values.dtype)  # (...)
    below = rank.long()
    above = rank.ceil().long()
    vb = srt.gather(-1, below[..., None]).squeeze(-1)
    va = srt.gather(-1, above[..., None]).squeeze(-1)
    return torch.lerp(vb, va, rank - below.to(values.dtype))


def quantile_table(bp, cost, lo, hi, min_len, q, chunk_elems=1 << 22) -> torch.Tensor:
    """``qtab[b, k - lo[b]]`` = q-quantile of the per-frame costs of the optimal k-segment solution.

    For k in ``[lo[b], hi[b]]`` (``nan`` past ``hi[b]``); chunked over k to bound memory at ~chunk_elems.
    """
    B = lo.shape[0]
    width = int((hi - lo).max()) + 1
    step = max(1, chunk_elems // max(1, B * int(hi.max())))
    out = []
    for c0 in range(0, width, step):
        offs = torch.arange(c0, min(width, c0 + step), device=lo.device)  # (C,)
        ks = lo[:, None] + offs[None, :]  # (B, C)
        ok = ks <= hi[:, None]
        ks = torch.where(ok, ks, 0)
        _, per_frame = backtrack(bp, cost, ks, min_len)
        qs = rows_quantile(per_frame, ks.clamp(min=1), q)
        out.append(torch.where(ok, qs, float("nan")))
    return torch.cat(out, 1)  # (B, width)
