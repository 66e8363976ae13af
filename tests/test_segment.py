"""Min-cut DPs against exhaustive search and a literal copy of the official rate-search loop."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from syllablelm.audio.frames import frames_to_segments, num_frames, samples_for_frames, seconds_to_frames
from syllablelm.boundaries.mincut import (
    calibrate_delta,
    ncut_mincut,
    ncut_mincut_batch,
    sse_mincut,
    sse_mincut_batch,
    sse_segment,
    sse_segment_batch,
)


# ----------------------------------------------------------------------------------- reference objectives ----
def sse_cost(x: torch.Tensor, j: int, i: int) -> float:
    """SSE/D of frames [j, i), straight from the definition."""
    seg = x[j:i].double()
    return float(((seg - seg.mean(0)) ** 2).sum() / x.shape[1])


def ncut_cost(S: torch.Tensor, j: int, i: int) -> float:
    """The formula of docs/algorithms.md, literally."""
    S = S.double()
    interior = S[j:i, j:i].sum()
    out = S[j:i, :j].sum() + S[:j, j:i].sum() + S[i:, j:i].sum() + S[j:i, i:].sum()
    return float(out / (out + interior + 1e-5))


def exhaustive(cost, T, k, min_len, max_len):
    """All optima by enumeration: (best value, second-best value, every optimal boundary tuple)."""
    c = {(j, i): cost(j, i) for j in range(T) for i in range(j + min_len, min(T, j + max_len) + 1)}
    scored = []
    for cuts in itertools.combinations(range(1, T), k - 1):
        b = (0, *cuts, T)
        if all(min_len <= b[n + 1] - b[n] <= max_len for n in range(k)):
            scored.append((sum(c[b[n], b[n + 1]] for n in range(k)), b))
    scored.sort()
    best = scored[0][0]
    second = next((v for v, _ in scored if v > best + 1e-9), np.inf)
    return best, second, [b for v, b in scored if v <= best + 1e-9]


def objective(cost, b):
    b = b.tolist()
    return sum(cost(b[n], b[n + 1]) for n in range(len(b) - 1))


def check_against_exhaustive(solve, cost, T, min_len, max_len):
    checked_unique = 0
    for k in range(1, T + 1):
        if not (k * min_len <= T <= k * max_len):
            continue
        b = solve(k)
        assert b.dtype == torch.long and b[0] == 0 and b[-1] == T and len(b) == k + 1
        assert ((b[1:] - b[:-1]) >= min_len).all() and ((b[1:] - b[:-1]) <= max_len).all()
        best, second, optima = exhaustive(cost, T, k, min_len, max_len)
        assert objective(cost, b) == pytest.approx(best, rel=1e-9, abs=1e-12)
        if second - best > 1e-7:
            assert len(optima) == 1 and tuple(b.tolist()) == optima[0]
            checked_unique += 1
    return checked_unique


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_len,max_len", [(1, 14), (2, 5), (3, 6), (1, 3)])
def test_sse_mincut_equals_exhaustive(seed, min_len, max_len):
    g = torch.Generator().manual_seed(seed)
    T = 12 if min_len == 1 else 13
    x = torch.randn(T, 3, generator=g) + 5.0  # an offset the centring must absorb
    unique = check_against_exhaustive(lambda k: sse_mincut(x, k, min_len, max_len), lambda j, i: sse_cost(x, j, i),
                                      T, min_len, max_len)
    assert unique > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_len,max_len", [(1, 49), (2, 5), (1, 3)])
def test_ncut_mincut_equals_exhaustive(seed, min_len, max_len):
    g = torch.Generator().manual_seed(seed)
    T = 12
    S = torch.rand(T, T, generator=g) ** 3  # asymmetric, like exp(-loss)
    if seed == 2:  # LossPred-like band: far pairs and the diagonal at exp(-100)
        r = torch.arange(T)
        far = ((r[:, None] - r[None, :]).abs() > 4) | (r[:, None] == r[None, :])
        S = S.masked_fill(far, float(np.exp(-100)))
    unique = check_against_exhaustive(lambda k: ncut_mincut(S, k, min_len, max_len),
                                      lambda j, i: ncut_cost(S, j, i), T, min_len, max_len)
    assert unique > 0


def test_ties_take_the_earliest_cuts():
    # Constant features: every split costs exactly 0, so the tie rule alone decides.
    assert sse_mincut(torch.ones(20, 3), 3, 3, 10).tolist() == [0, 3, 10, 20]
    assert sse_mincut(torch.ones(9, 2), 3, 2, 4).tolist() == [0, 2, 5, 9]  # [0, 2, 4, 9] would need 5 > 4 frames


# ------------------------------------------------------------------------------- batched = per utterance ----
def padded(seqs, fill):
    """Pad with large garbage (not zeros), so a result that reads padding would change."""
    T = max(len(s) for s in seqs)
    square = seqs[0].shape[1] == len(seqs[0])  # similarity matrices pad both axes
    out = torch.full((len(seqs), T, T if square else seqs[0].shape[1]), fill, dtype=seqs[0].dtype)
    for n, s in enumerate(seqs):
        out[n, : len(s), : s.shape[1]] = s
    return out, torch.tensor([len(s) for s in seqs])


def test_batched_equals_per_utterance():
    g = torch.Generator().manual_seed(0)
    Ts = [37, 90, 15, 64, 90, 23]
    feats = [torch.randn(T, 7, generator=g) for T in Ts]  # D = 7: odd, unaligned rows
    feats[2] = torch.ones(15, 7)  # exact ties: the tie rule must survive batching
    feats[3] = torch.repeat_interleave(torch.randn(8, 7, generator=g), 8, 0)  # piecewise constant
    x, lengths = padded(feats, 1e3)
    ks = [max(1, T // 6) for T in Ts]
    got = sse_mincut_batch(x, ks, lengths, 2, 20)
    for f, k, b in zip(feats, ks, got):
        assert torch.equal(b, sse_mincut(f, k, 2, 20))
    for kw in ({"delta": 0.3}, {"delta": 0.8}, {"rate_hz": 7.0}):
        got = sse_segment_batch(x, lengths, **kw)
        for f, b in zip(feats, got):
            assert torch.equal(b, sse_segment(f, **kw))
    sims = [torch.rand(T, T, generator=g) for T in Ts]
    S, lengths = padded(sims, 7.0)
    ks = [T // 8 for T in Ts]
    for s, k, b in zip(sims, ks, ncut_mincut_batch(S, ks, lengths)):
        assert torch.equal(b, ncut_mincut(s, k))


# ----------------------------------------------------------------------------------------- rate control ----
def official_rate_search(x, delta, quantile=0.75, min_len=3, max_len=50, max_rate=0.2):
    """The authors' loop of docs/algorithms.md, literally, one DP per visited count."""
    T = x.shape[0]
    m = int(max_rate * T)
    lo, hi, best = m // 3, m, m // 3
    while lo <= hi:
        mid = (lo + hi) // 2
        b = sse_mincut(x, mid, min_len, max_len).tolist()
        per_frame = torch.tensor([sse_cost(x, b[n], b[n + 1]) / (b[n + 1] - b[n]) for n in range(mid)],
                                 dtype=torch.float64)
        q = torch.quantile(per_frame, quantile)
        if q > delta:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return sse_mincut(x, best, min_len, max_len)


@pytest.mark.parametrize("seed", [0, 1])
def test_rate_search_matches_official_loop(seed):
    g = torch.Generator().manual_seed(seed)
    T = 120 + 37 * seed
    x = torch.repeat_interleave(torch.randn(T // 5 + 1, 8, generator=g), 5, 0)[:T]
    x = x + 0.3 * torch.randn(T, 8, generator=g)
    chosen = set()
    for delta in (0.05, 0.085, 0.1, 0.13, 0.3, 0.5):
        b = sse_segment(x, delta=delta)
        assert torch.equal(b, official_rate_search(x, delta))
        chosen.add(len(b) - 1)
    assert len(chosen) >= 3  # the deltas really exercise different branches of the search
    assert torch.equal(sse_segment(x, delta=0.1, quantile=0.5, min_len=2, max_len=30, max_rate=0.25),
                       official_rate_search(x, 0.1, 0.5, 2, 30, 0.25))


def test_rate_search_clamps_to_feasible_counts():
    x = torch.randn(10, 4)  # m = 2, m // 3 = 0: the official interval would allow 0 segments
    assert len(sse_segment(x, delta=1e9)) - 1 == 1
    assert len(sse_segment(x, delta=-1.0)) - 1 == 2
    x = torch.randn(100, 4)  # max_len=4 needs >= 25 segments, above m = 20: the nearest feasible count is used
    assert len(sse_segment(x, delta=1e9, max_len=4)) - 1 == 25


def test_fixed_rate_count():
    x = torch.randn(400, 6)
    assert len(sse_segment(x, rate_hz=6.25)) - 1 == 50  # 6.25 Hz x 8 s
    assert len(sse_segment(x, rate_hz=5.0)) - 1 == 40
    assert len(sse_segment(x[:125], rate_hz=5.0)) - 1 == 13  # 12.5 rounds half up (Python's round gives 12)
    assert len(sse_segment(x, rate_hz=100.0)) - 1 == 400 // 3  # clamped to the shortest segments
    assert len(sse_segment(x, rate_hz=0.01)) - 1 == 8  # ceil(400 / 50)


def syllable_like(g, T, D=8, noise=0.3):
    """Piecewise-constant features (3..12-frame pieces) plus noise: a clear but imperfect structure."""
    lens = torch.randint(3, 13, (T,), generator=g)
    idx = torch.repeat_interleave(torch.arange(T), lens)[:T]
    return torch.randn(T, D, generator=g)[idx] + noise * torch.randn(T, D, generator=g)


def test_calibrate_delta_hits_target_rate():
    g = torch.Generator().manual_seed(0)
    feats = [syllable_like(g, int(T)) for T in torch.randint(150, 300, (8,), generator=g)]
    seconds = sum(f.shape[0] for f in feats) / 50
    x, lengths = padded(feats, 0.0)
    rates = []
    for target in (4.0, 6.0):
        delta = calibrate_delta(feats, target, batch_size=3)
        rate = sum(len(b) - 1 for b in sse_segment_batch(x, lengths, delta=delta)) / seconds
        assert rate == pytest.approx(target, abs=0.1)  # one segment here is 0.03 Hz
        rates.append(rate)
    assert rates[0] < rates[1]
    # The property calibration relies on: the rate search's count never grows with delta.
    counts = [[len(b) for b in sse_segment_batch(x, lengths, delta=d)] for d in (0.05, 0.08, 0.09, 0.12, 0.3, 1.0)]
    assert all(a >= b for lo, hi in zip(counts, counts[1:]) for a, b in zip(lo, hi))
    assert counts[0] != counts[-1]


# -------------------------------------------------------------------------------------- errors and edges ----
def test_infeasible_and_bad_inputs_raise():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="cannot cover"):
        sse_mincut(x, 4)  # 4 x 3 > 10
    with pytest.raises(ValueError, match="cannot cover"):
        sse_mincut(x, 1, 3, 5)  # 10 > 5
    with pytest.raises(ValueError, match="cannot be cut"):
        sse_segment(x[:2], delta=0.1)
    with pytest.raises(ValueError, match="cannot be cut"):
        sse_segment(x[:2], rate_hz=5.0)
    with pytest.raises(ValueError, match="exactly one"):
        sse_segment(x, delta=0.1, rate_hz=5.0)
    with pytest.raises(ValueError, match="exactly one"):
        sse_segment(x)
    with pytest.raises(ValueError, match="min_len"):
        sse_mincut(x, 2, 5, 4)
    with pytest.raises(ValueError, match="tensor"):
        sse_mincut(x[0], 1)
    with pytest.raises(ValueError, match="NaN"):
        sse_mincut(torch.full((10, 4), float("nan")), 2)
    with pytest.raises(ValueError, match="lengths"):
        sse_mincut_batch(x[None], 2, torch.tensor([11]))
    with pytest.raises(ValueError, match="square"):
        ncut_mincut_batch(torch.rand(1, 5, 6), 1)
    with pytest.raises(ValueError, match="cannot cover"):
        ncut_mincut(torch.rand(5, 5), 6)
    with pytest.raises(ValueError, match="at least one"):
        calibrate_delta([], 5.0)


def test_one_segment_and_exact_fit():
    x = torch.randn(12, 3)
    assert sse_mincut(x, 1, 1, 12).tolist() == [0, 12]
    assert sse_mincut(x, 4, 3, 3).tolist() == [0, 3, 6, 9, 12]  # the only split
    assert ncut_mincut(torch.rand(6, 6), 6).tolist() == list(range(7))


def test_time_helpers():
    segs = frames_to_segments(torch.tensor([0, 10, 25]), offset=0.5)
    assert segs.dtype == np.float64 and segs.shape == (2, 2)
    np.testing.assert_allclose(segs, [[0.5, 0.7], [0.7, 1.0]])
    assert np.unique(seconds_to_frames(segs, offset=0.5)).tolist() == [0, 10, 25]
    # 0.58 s is frame 29 despite float error; exact half frames round to even, as Python's round (the authors')
    assert seconds_to_frames([0.1, 0.58, 0.7, 0.9]).tolist() == [5, 29, 35, 45]
    assert seconds_to_frames([0.01, 0.03, 0.05]).tolist() == [round(0.5), round(1.5), round(2.5)] == [0, 2, 2]
    assert frames_to_segments([0]).shape == (0, 2)
    assert num_frames(399) == 0 and num_frames(400) == 1 and num_frames(16000) == 49
    assert all(num_frames(samples_for_frames(n)) == n > num_frames(samples_for_frames(n) - 1) for n in (1, 2, 49))
