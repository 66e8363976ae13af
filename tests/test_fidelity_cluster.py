"""Fidelity of the clustering metrics (CPur / SPur / SNMI) to SD-HuBERT's protocol, the package default.

SD-HuBERT (github.com/cheoljun95/sdhubert, ``utils/syllable.py`` and ``evaluate_purity.py``) is restated below in
this file's own code -- numpy + scipy only, nothing imported from ``syllablelm`` -- and compared with the package:

* ``temporal_iou_mat(gt, pred)``: reference rows, prediction columns; ``inter = min(ends) - max(starts)`` is NOT
  clamped (disjoint pairs are negative), ``union = max(ends) - min(starts)`` (the hull, which equals
  ``len_gt + len_pred - inter`` with the unclamped ``inter``), ``IoU = inter / (union + 1e-4)``;
* ``match_cluster``: ``linear_sum_assignment(IoU, maximize=True)``, and every assigned pair counts;
* ``trim_label``: deletes every character ``0``, ``1``, ``2``, ``3``;
* ``evaluate_purity.py``: co-occurrence counts of (label, unit); "Cluster Purity" = sum over syllables of their
  most frequent unit's count / N, "Syllable Purity" = sum over units of their most frequent syllable's count / N.
  SD-HuBERT computes no SNMI; it is restated as I(syllable; unit) / H(syllable) over the same N pairs.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from syllablelm.evaluation.cluster_metrics import (
    CLUSTER_PROTOCOLS,
    DEFAULT_CLUSTER_PROTOCOL,
    ClusterMetric,
    cluster_pairs,
    cluster_scores,
    label_id,
    match_segments,
    strip_stress,
)
from tests.test_metrics import random_corpus

A = np.array


# ------------------------------------------------------------------------------ SD-HuBERT, restated independently

def sd_trim(label: str) -> str:
    for digit in "0123":
        label = label.replace(digit, "")
    return label


def sd_match(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gt_idx, pred_idx)`` of every assigned pair, SD-HuBERT's way."""
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    g = np.repeat(gt[:, None, :], len(pred), axis=1)
    p = np.repeat(pred[None, :, :], len(gt), axis=0)
    starts = np.stack([g[..., 0], p[..., 0]], -1)
    ends = np.stack([g[..., 1], p[..., 1]], -1)
    inter = ends.min(-1) - starts.max(-1)
    union = ends.max(-1) - starts.min(-1)
    return linear_sum_assignment(inter / (union + 0.0001), maximize=True)


def sd_cooccurrence(pred, units, ref, labels) -> Counter:
    counts = Counter()
    for p, u, r, lab in zip(pred, units, ref, labels):
        if len(lab) == 0:  # evaluate_purity.py skips utterances without syllables
            continue
        gt_idx, pred_idx = sd_match(np.asarray(r, float).reshape(-1, 2), np.asarray(p, float).reshape(-1, 2))
        for g, q in zip(gt_idx, pred_idx):
            counts[(sd_trim(lab[g]), int(u[q]))] += 1
    return counts


def sd_scores(pred, units, ref, labels) -> dict:
    counts = sd_cooccurrence(pred, units, ref, labels)
    total = sum(counts.values())
    by_syllable, by_unit = defaultdict(list), defaultdict(list)
    for (syl, unit), c in counts.items():
        by_syllable[syl].append(c)
        by_unit[unit].append(c)
    cpur = sum(max(cs) / total for cs in by_syllable.values())
    spur = sum(max(cs) / total for cs in by_unit.values())
    p_syl = {s: sum(cs) / total for s, cs in by_syllable.items()}
    p_unit = {u: sum(cs) / total for u, cs in by_unit.items()}
    mi = sum(c / total * math.log((c / total) / (p_syl[s] * p_unit[u])) for (s, u), c in counts.items())
    h = -sum(p * math.log(p) for p in p_syl.values())
    return {"cpur": cpur, "spur": spur, "snmi": mi / h if h > 0 else 0.0, "n_pairs": total}


# ------------------------------------------------------------------------------------------------ test data

ARPABET = ["B AH1", "B AH0", "D IY1", "D IY2", "K AE1 T", "K AE0 T", "S OW2", "T ER0", "HH AH0 L OW1", "M AY1"]


def random_case(seed: int, n: int = 10):
    """Reference syllables with pauses between them, and an independent predicted segmentation (more or fewer
    segments, some in the pauses or beyond the last syllable), on a 10 ms grid so that ties and touching segments
    occur. Utterance 0 has no syllables, utterance 1 no predictions."""
    rng = np.random.default_rng(seed)
    pred, units, ref, labels = [], [], [], []
    for i in range(n):
        t, r = 0.0, []
        for _ in range(int(rng.integers(2, 9))):
            if rng.random() < 0.3:
                t += rng.uniform(0.05, 0.4)  # a pause
            d = rng.uniform(0.08, 0.35)
            r.append([round(t, 2), round(t + d, 2)])
            t += d
        r = np.array(r) if i != 0 else np.zeros((0, 2))
        end = t + rng.uniform(0.0, 0.5)
        edges = np.unique(np.round(np.sort(rng.uniform(0.0, end, int(rng.integers(1, 2 * len(r) + 4)))), 2))
        p = np.stack([edges[:-1], edges[1:]], 1) if len(edges) > 1 else np.zeros((0, 2))
        if len(p) > 2:
            p = p[rng.random(len(p)) > 0.2]  # gaps in the prediction too
        if i == 1:
            p = np.zeros((0, 2))
        pred.append(p), units.append(rng.integers(0, 5, len(p))), ref.append(r)
        labels.append([str(x) for x in rng.choice(ARPABET, len(r))])
    return pred, units, ref, labels


def numeric(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k != "protocol"}


# ------------------------------------------------------------------------------------------------ tests

def test_default_protocol_is_sdhubert():
    assert DEFAULT_CLUSTER_PROTOCOL == "sdhubert" and set(CLUSTER_PROTOCOLS) == {"sdhubert", "overlap"}
    assert ClusterMetric().protocol == "sdhubert"
    with pytest.raises(ValueError, match="protocol"):
        ClusterMetric(protocol="iou")
    with pytest.raises(ValueError, match="protocol"):
        cluster_scores([], [], [], [], protocol="iou")


# (a) utterance 1: syllables A=[1.0, 2.0] "B AH1", B=[2.9, 4.0] "D IY0"; predictions Q=[0.0, 0.5] unit 2 (in the
#     leading pause, overlapping nothing), P=[1.9, 3.0] unit 1 (0.1 s into A and 0.1 s into B).
#     SD-HuBERT's IoU (rows A, B; columns Q, P):
#       A-Q: (0.5 - 1.0) / (2.0 - 0.0 + 1e-4) = -0.5 / 2.0001 = -0.2500      A-P: 0.1 / 2.0001 = +0.0500
#       B-Q: (0.5 - 2.9) / (4.0 - 0.0 + 1e-4) = -2.4 / 4.0001 = -0.6000      B-P: 0.1 / 2.1001 = +0.0476
#     {A-P, B-Q} sums to -0.5500, {A-Q, B-P} to -0.2024: SD-HuBERT assigns A-Q and B-P, and both pairs count:
#     (unit 2, B AH), (unit 1, D IY). Clamped ("overlap"): A-P 0.1/2.0 = 0.0500 beats B-P 0.1/2.1 = 0.0476 and
#     the Q entries are 0, so it assigns A-P (and B-Q, dropped for no overlap): only (unit 1, B AH).
# utterance 2: syllables [0, .5] "B AH0", [.5, 1] "D IY1" predicted exactly, units 1, 2 -> (1, B AH), (2, D IY).
# utterance 3: syllable [0, 1] "B AH2"; predictions [0, .45] unit 3 and [.45, 1] unit 1: IoU .45 vs .55 ->
#     (1, B AH) under both; the other prediction is left unassigned and counts under neither.
HAND = (
    [A([[0.0, 0.5], [1.9, 3.0]]), A([[0.0, 0.5], [0.5, 1.0]]), A([[0.0, 0.45], [0.45, 1.0]])],
    [A([2, 1]), A([1, 2]), A([3, 1])],
    [A([[1.0, 2.0], [2.9, 4.0]]), A([[0.0, 0.5], [0.5, 1.0]]), A([[0.0, 1.0]])],
    [["B AH1", "D IY0"], ["B AH0", "D IY1"], ["B AH2"]],
)


def test_hand_case_negative_iou_changes_assignment_and_counts():
    pred, units, ref, labels = HAND
    assert [x.tolist() for x in match_segments(pred[0], ref[0])] == [[0, 1], [0, 1]]  # Q-A, P-B
    assert [x.tolist() for x in match_segments(pred[0], ref[0], protocol="overlap")] == [[1], [0]]  # P-A only

    # SD-HuBERT: pairs (2,BAH) (1,DIY) (1,BAH) (2,DIY) (1,BAH), N = 5; joint counts (1,BAH)=2, (1,DIY)=1,
    # (2,BAH)=1, (2,DIY)=1; marginals unit 1: 3, unit 2: 2, BAH: 3, DIY: 2
    # CPur: BAH -> max(2, 1) = 2, DIY -> max(1, 1) = 1 -> 3/5;  SPur: unit 1 -> 2, unit 2 -> 1 -> 3/5
    mi = (0.4 * math.log(0.4 / (0.6 * 0.6)) + 0.2 * math.log(0.2 / (0.6 * 0.4))
          + 0.2 * math.log(0.2 / (0.4 * 0.6)) + 0.2 * math.log(0.2 / (0.4 * 0.4)))
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    expected = {"cpur": 3 / 5, "spur": 3 / 5, "snmi": mi / h, "n_pairs": 5}
    assert sd_scores(*HAND) == pytest.approx(expected, rel=1e-12)  # the restatement agrees with the hand
    got = cluster_scores(*HAND)
    assert got["protocol"] == "sdhubert" and got["n_pairs"] == 5
    assert numeric(got) == pytest.approx(expected, rel=1e-12)
    assert 0 < got["snmi"] < 0.1  # nearly independent

    # "overlap": pairs (1,BAH) (1,BAH) (2,DIY) (1,BAH), N = 4: every unit and syllable pure, SNMI 1
    over = cluster_scores(*HAND, protocol="overlap")
    assert over == {"cpur": 1.0, "spur": 1.0, "snmi": pytest.approx(1.0), "n_pairs": 4, "protocol": "overlap"}


def test_match_segments_keeps_zero_and_negative_iou_pairs():
    # the second prediction overlaps nothing: SD-HuBERT still pairs it with the remaining syllable
    p, r = match_segments(A([[0.0, 0.2], [1.0, 1.2]]), A([[0.0, 0.2], [0.5, 0.7]]))
    assert p.tolist() == [0, 1] and r.tolist() == [0, 1]
    # touching segments (IoU 0 up to round-off) count too; one syllable, two predictions -> one pair
    p, r = match_segments(A([[0.1 + 0.2, 0.5]]), A([[0.1, 0.3]]))
    assert p.tolist() == [0] and r.tolist() == [0]
    # min(n, m) pairs, sorted by syllable
    p, r = match_segments(A([[0.0, 0.3], [0.3, 0.6], [0.6, 0.9]]), A([[0.5, 0.9], [0.0, 0.5]]))
    assert r.tolist() == [0, 1] and p.tolist() == [2, 0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_default_equals_sdhubert_restated_on_random_cases(seed):
    pred, units, ref, labels = random_case(seed)
    for p, r in zip(pred, ref):  # the very same pairs, utterance by utterance
        g_idx, p_idx = sd_match(r, p)
        mine_p, mine_r = match_segments(p, r)
        assert mine_r.tolist() == list(g_idx) and mine_p.tolist() == list(p_idx)
        assert len(mine_p) == min(len(p), len(r))
    u, ids = cluster_pairs(pred, units, ref, labels)
    want = sd_cooccurrence(pred, units, ref, labels)
    assert Counter(zip(ids.tolist(), u.tolist())) == Counter(
        {(label_id(s), unit): c for (s, unit), c in want.items()})
    got, ref_scores = cluster_scores(pred, units, ref, labels), sd_scores(pred, units, ref, labels)
    assert got["protocol"] == "sdhubert" and got["n_pairs"] == ref_scores["n_pairs"] > 20
    assert numeric(got) == pytest.approx(ref_scores, rel=1e-12, abs=0)


def test_random_cases_tell_the_protocols_apart():
    """The random cases exercise what differs: negative-IoU pairs, and assignments that change, not only the
    filter (a positive-overlap SD-HuBERT pair that the clamped assignment does not choose)."""
    negative = changed = 0
    for seed in range(6):
        pred, _, ref, _ = random_case(seed)
        for p, r in zip(pred, ref):
            sd = set(zip(*match_segments(p, r)))
            ov = set(zip(*match_segments(p, r, protocol="overlap")))
            overlap = {(i, j) for i, j in sd if min(p[i, 1], r[j, 1]) - max(p[i, 0], r[j, 0]) > 1e-9}
            negative += len(sd - overlap)
            changed += overlap != ov
    assert negative > 10 and changed > 0


def test_labels_strip_stress_agrees_with_trim_label_on_arpabet():
    for label in ARPABET + ["AXR0", "EY1 SH AH0 N", "AW2", "OY1", "UH0 K", "ER0"]:
        assert strip_stress(label) == sd_trim(label)
    # a deliberate departure: trim_label would delete eSpeak phoneme digits and keep eSpeak stress marks
    assert strip_stress("k0t") == "k0t" != sd_trim("k0t") and strip_stress("'ka") == "ka" != sd_trim("'ka")


# today's (pre-"sdhubert") default, recorded from the previous implementation on tests.test_metrics.random_corpus
OVERLAP_RECORDED = {
    (1, 9): {"cpur": 0.42857142857142855, "spur": 0.5357142857142857, "snmi": 0.355509264029213, "n_pairs": 28},
    (5, 7): {"cpur": 0.45454545454545453, "spur": 0.5454545454545454, "snmi": 0.3922913884557625, "n_pairs": 22},
    (11, 12): {"cpur": 0.4186046511627907, "spur": 0.4883720930232558, "snmi": 0.2549368943250379, "n_pairs": 43},
}


@pytest.mark.parametrize("seed_n", sorted(OVERLAP_RECORDED))
def test_overlap_protocol_reproduces_the_former_default(seed_n):
    ref, labels, pred, units, _ = random_corpus(*seed_n)
    got = cluster_scores(pred, units, ref, labels, protocol="overlap")
    assert got.pop("protocol") == "overlap"
    assert got == pytest.approx(OVERLAP_RECORDED[seed_n], rel=1e-12, abs=0)
    assert got["n_pairs"] == OVERLAP_RECORDED[seed_n]["n_pairs"]


@pytest.mark.parametrize("protocol", ["sdhubert", "overlap"])
def test_cluster_metric_equals_cluster_scores(protocol):
    pred, units, ref, labels = random_case(7, 12)
    expected = cluster_scores(pred, units, ref, labels, protocol=protocol)
    assert expected.pop("protocol") == protocol
    for order in (range(0, 12, 5), reversed(range(0, 12, 5))):  # order-independent
        m = ClusterMetric(protocol=protocol)
        for a in order:
            m.update(pred[a:a + 5], [torch.as_tensor(u) for u in units[a:a + 5]], ref[a:a + 5], labels[a:a + 5])
        out = m.compute()
        assert m.protocol == protocol and out["n_pairs"].dtype == torch.int64
        assert {k: v.item() for k, v in out.items()} == expected
    assert cluster_scores(*HAND, protocol=protocol)["protocol"] == protocol
