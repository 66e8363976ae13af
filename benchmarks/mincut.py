"""SSE min-cut with rate search: this project's batched DP against an official-style per-utterance loop.

    python benchmarks/mincut.py                       # T=500, D=768, 64 utterances, CPU
    python benchmarks/mincut.py --device cuda --batch 64

The baseline is written here the way the authors' code works: one utterance at a time, the cost of every
(end, length) pair from stacked shifted copies of the features and a cumulative sum over the shift
(O(T·max_len·D) memory), the DP vectorised over end positions with a Python loop over segment counts
j = 1..int(0.2·T), then the binary rate search with a Python backtrack per visited count. Both sides use
float64 so that their boundaries can be compared exactly; the check covers every count the search may visit.
Prints wall time, the speed ratio and peak memory (CUDA: max allocated; CPU: peak RSS growth, sampled).
"""
from __future__ import annotations

import argparse
import resource
import threading
import time

import numpy as np
import torch

from syllablelm.boundaries import dp as _dp
from syllablelm.boundaries.mincut import calibrate_delta, search_range, sse_segment_batch


class PeakMemory:
    """Peak memory of the enclosed block: CUDA max allocated, or RSS growth sampled every 2 ms on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._start)
            self._stop.wait(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()


# ------------------------------------------------------------------------------------- official-style baseline ----
def baseline_dp(x: torch.Tensor, m: int, min_len: int, max_len: int):
    """One utterance: end-anchored cost table and the DP for j = 1..m. Returns cost (s, T), back (m+1, T+1)."""
    T, D = x.shape
    s = max_len
    xp = torch.cat([x.new_zeros(s - 1, D), x])  # (T+s-1, D)
    shifted = torch.stack([xp[s - 1 - d : s - 1 - d + T] for d in range(s)])  # (s, T, D): [l, e] = x[e - l]
    sums = shifted.cumsum(0)  # (s, T, D): Σ x[e-l .. e]
    sq = shifted.pow(2).sum(-1).cumsum(0)  # (s, T)
    L = torch.arange(1, s + 1, dtype=x.dtype, device=x.device)[:, None]  # (s, 1)
    cost = (sq - sums.pow(2).sum(-1) / L) / D  # (s, T): segment of length l+1 ending at frame e
    e = torch.arange(T, device=x.device)
    cost[L.long() - 1 > e[None, :]] = float("inf")  # would start before frame 0
    lens = torch.arange(min_len, s + 1, device=x.device)[:, None]  # (nL, 1)
    gather = (e[None, :] + 1 - lens).clamp(min=0)  # (nL, T): prefix end before the last segment
    F = x.new_full((T + 1,), float("inf"))
    F[0] = 0.0
    back = torch.zeros(m + 1, T + 1, dtype=torch.long, device=x.device)
    for j in range(1, m + 1):
        val, arg = (F[gather] + cost[min_len - 1 :]).min(0)  # (T,)
        F = torch.cat([F.new_full((1,), float("inf")), val])
        back[j, 1:] = arg + min_len
    return cost.cpu().numpy(), back.cpu().numpy()


def baseline_borders(cost, back, T, j):
    q, out, costs = T, [T], []
    while q > 0:
        L = back[j, q]
        costs.append(cost[L - 1, q - 1] / L)
        q, j = q - L, j - 1
        out.append(q)
    return out[::-1], costs


def baseline_segment(x, delta, quantile, min_len, max_len, max_rate):
    T = x.shape[0]
    m = int(max_rate * T)
    cost, back = baseline_dp(x, m, min_len, max_len)
    lo, hi, best = m // 3, m, m // 3
    while lo <= hi:
        mid = (lo + hi) // 2
        _, costs = baseline_borders(cost, back, T, mid)
        if np.quantile(costs, quantile) > delta:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return baseline_borders(cost, back, T, best)[0], (cost, back)


# ------------------------------------------------------------------------------------------------------ main ----
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64, help="utterances per batched call")
    p.add_argument("--T", type=int, default=500)
    p.add_argument("--D", type=int, default=768)
    p.add_argument("--utterances", type=int, default=64)
    p.add_argument("--min-len", type=int, default=3)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)  # on a shared, oversubscribed CPU one thread per process can be faster
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randn(a.utterances, a.T, a.D, generator=g).to(dev)  # (N, T, D)
    lengths = torch.full((a.utterances,), a.T)
    kw = dict(quantile=0.75, min_len=a.min_len, max_len=a.max_len, max_rate=0.2)
    delta = calibrate_delta(list(x[:4]), 6.25, min_len=a.min_len, max_len=a.max_len)  # untimed: a sensible delta
    print(f"device={dev} threads={torch.get_num_threads()} N={a.utterances} T={a.T} D={a.D} "
          f"lengths {a.min_len}..{a.max_len} counts up to {int(0.2 * a.T)}  delta={delta:.5f}")

    ours = []
    sync()
    with PeakMemory(dev) as mem_ours:
        t0 = time.perf_counter()
        for i in range(0, a.utterances, a.batch):
            ours += sse_segment_batch(x[i : i + a.batch], lengths[i : i + a.batch], delta=delta, **kw)
        sync()
        t_ours = time.perf_counter() - t0

    base, tables = [], []
    with PeakMemory(dev) as mem_base:
        t0 = time.perf_counter()
        for n in range(a.utterances):
            borders, tab = baseline_segment(x[n].double(), delta, **kw)
            base.append(borders)
            tables.append(tab)
        sync()
        t_base = time.perf_counter() - t0

    same_rate = all(o.tolist() == b for o, b in zip(ours, base))
    # Every count the search may visit, on a few utterances (untimed): our backtrack vs the baseline's.
    lo, hi = search_range(a.T, a.min_len, a.max_len, 0.2)
    xs, ls = x[:4], lengths[:4].to(dev)
    cost = _dp.sse_cost_table(xs, ls, a.min_len, a.max_len)
    _, bp = _dp.min_cut_dp(cost, ls, hi, a.min_len)
    ks = torch.arange(lo, hi + 1, device=dev)[None].expand(len(xs), -1)
    lens, _ = _dp.backtrack(bp, cost, ks, a.min_len)  # (4, C, K)
    cum = torch.cat([torch.zeros_like(lens[..., :1]), lens.cumsum(-1)], -1).cpu()
    same_all = all(cum[n, c, : k + 1].tolist() == baseline_borders(*tables[n], a.T, k)[0]
                   for n in range(len(xs)) for c, k in enumerate(range(lo, hi + 1)))

    rate = sum(len(b) - 1 for b in ours) / (a.utterances * a.T / 50)
    print(f"rate search result: {rate:.2f} segments/s; boundaries equal: rate search {same_rate}, "
          f"all counts {lo}..{hi} (4 utterances) {same_all}")
    what = "max allocated" if dev.type == "cuda" else "RSS growth"
    print(f"ours     {t_ours:8.2f} s  peak {what} {mem_ours.peak / 2**20:8.1f} MiB")
    print(f"baseline {t_base:8.2f} s  peak {what} {mem_base.peak / 2**20:8.1f} MiB")
    print(f"speed ratio baseline/ours: {t_base / t_ours:.1f}x   "
          f"(process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB)")
    if not (same_rate and same_all):
        raise SystemExit("MISMATCH between the batched DP and the baseline")


if __name__ == "__main__":
    main()
