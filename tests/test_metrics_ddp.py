"""Two CPU processes (gloo) give exactly the single-process metric values, with 7 utterances split 4/3.

The workers run through ``torch.multiprocessing.spawn`` (not ``strategy="ddp"``, which would relaunch pytest);
each test run takes its own free port.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from syllablelm.evaluation.boundary_metrics import BoundaryMetric, boundary_scores, tune_shift
from syllablelm.evaluation.cluster_metrics import ClusterMetric, cluster_scores
from syllablelm.evaluation.token_metrics import TokenRateMetric, token_stats
from tests.test_metrics import random_corpus

N_UTTS, SPLIT, SHIFTS_CHECKED = 7, 4, (-0.05, 0.0, 0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_python(d: dict) -> dict:
    return {k: v.item() for k, v in d.items()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ref, labels, pred, units, durations = random_corpus(5, N_UTTS)
        mine = range(0, SPLIT) if rank == 0 else range(SPLIT, N_UTTS)  # 4 / 3 utterances
        bm = {p: BoundaryMetric(protocol=p) for p in ("syllablelm", "sdhubert")}
        cm, cm_idle, tm = ClusterMetric(), ClusterMetric(), TokenRateMetric(vocab_size=6)
        cm_overlap = ClusterMetric(protocol="overlap")
        for a in range(mine.start, mine.stop, 2):  # batches of two (the last one may hold one)
            b = min(a + 2, mine.stop)
            for m in bm.values():
                m.update(pred[a:b], ref[a:b])
            cm.update(pred[a:b], units[a:b], ref[a:b], labels[a:b])
            cm_overlap.update(pred[a:b], units[a:b], ref[a:b], labels[a:b])
            tm.update(units[a:b], durations[a:b])
            if rank == 0:  # rank 1 never updates this one: its empty state must still gather as int64
                cm_idle.update(pred[a:b], units[a:b], ref[a:b], labels[a:b])
        result = {f"boundary_{p}": _as_python(m.compute()) for p, m in bm.items()}
        for p, m in bm.items():
            for s in SHIFTS_CHECKED:  # collective: every rank calls it
                result[f"boundary_{p}_at_{s}"] = _as_python(m.scores_at(s))
        result.update(cluster=_as_python(cm.compute()), cluster_idle=_as_python(cm_idle.compute()),
                      cluster_overlap=_as_python(cm_overlap.compute()),
                      tokens=_as_python(tm.compute()))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_metrics_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0 == r1  # every rank computes the same values

    ref, labels, pred, units, durations = random_corpus(5, N_UTTS)
    for p in ("syllablelm", "sdhubert"):
        got = r0[f"boundary_{p}"]
        fixed = boundary_scores(pred, ref, protocol=p)
        best, tuned = tune_shift(pred, ref, protocol=p)
        assert {k: got[k] for k in fixed} == fixed  # exact: integer counts summed over ranks
        assert got["best_shift"] == best and got["best_r_value"] == tuned["r_value"]
        assert got["best_f1"] == tuned["f1"] and got["hits"] > 0
        for s in SHIFTS_CHECKED:
            assert r0[f"boundary_{p}_at_{s}"] == boundary_scores(pred, ref, protocol=p, shift=s)
    def numeric(scores: dict) -> dict:  # compute() returns the numbers; the protocol's name is an attribute
        return {k: v for k, v in scores.items() if k != "protocol"}

    assert r0["cluster"] == numeric(cluster_scores(pred, units, ref, labels)) and r0["cluster"]["n_pairs"] > 10
    first = slice(0, SPLIT)
    assert r0["cluster_idle"] == numeric(cluster_scores(pred[first], units[first], ref[first], labels[first]))
    assert r0["cluster_overlap"] == numeric(cluster_scores(pred, units, ref, labels, protocol="overlap"))
    want = token_stats(units, durations, vocab_size=6)
    assert {k: v for k, v in r0["tokens"].items() if "n_tokens" in k} == \
        {k: v for k, v in want.items() if "n_tokens" in k}
    # seconds are a float64 sum (added in another order across ranks): equal up to round-off only
    assert np.allclose([r0["tokens"][k] for k in want], [want[k] for k in want], rtol=1e-12, atol=0)
