"""Boundary, clustering and token-rate metrics: hand-computed cases, edge cases, class == function."""
from __future__ import annotations

import doctest
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from syllablelm.evaluation import boundary_metrics as metrics
from syllablelm.evaluation import cluster_metrics as metrics_cluster
from syllablelm.evaluation import token_metrics as metrics_tokens
from syllablelm.evaluation.boundary_metrics import (
    SDHUBERT_SHIFTS,
    SYLLABLELM_SHIFTS,
    BoundaryMetric,
    boundary_scores,
    tune_shift,
)
from syllablelm.evaluation.cluster_metrics import ClusterMetric, cluster_scores, match_segments, strip_stress
from syllablelm.evaluation.token_metrics import TokenRateMetric, dedup_ids, token_rate, token_stats

A = np.array


def rvalue(hits, n_pred, n_ref):
    """R-value straight from docs/algorithms.md, written independently of the library."""
    r, os_ = hits / n_ref, n_pred / n_ref - 1
    return 1 - (math.sqrt((1 - r) ** 2 + os_ ** 2) + abs((-os_ + r - 1) / math.sqrt(2))) / 2


# utterance 1: ref boundaries {0.10, 0.30, 0.55, 0.60, 0.90}; pred segments below
# utterance 2: ref boundaries {0.0, 0.2}; pred {0.0, 0.21}
REF = [A([[0.10, 0.30], [0.30, 0.55], [0.60, 0.90]]), A([[0.0, 0.2]])]
PRED = [A([[0.12, 0.40], [0.40, 0.62], [0.62, 0.94]]), A([[0.0, 0.21]])]


def test_boundary_scores_syllablelm_hand_computed():
    # utt 1: pred {0.12, 0.40, 0.62, 0.94}: 0.12~0.10 hit; 0.40 is 0.10 from 0.30 and 0.15 from 0.55 (miss);
    #        0.62~0.60 hit (0.55 is 0.07 away); 0.94~0.90 hit -> 3 hits, n_pred 4, n_ref 5
    # utt 2: 0.0~0.0, 0.21~0.2 -> 2 hits, n_pred 2, n_ref 2.  Micro: hits 5, n_pred 6, n_ref 7
    s = boundary_scores(PRED, REF, tolerance=0.05, protocol="syllablelm")
    assert (s["hits"], s["n_pred"], s["n_ref"]) == (5, 6, 7)
    assert s["precision"] == pytest.approx(5 / 6) and s["recall"] == pytest.approx(5 / 7)
    assert s["f1"] == pytest.approx(10 / 13)  # 2 (5/6)(5/7) / (5/6 + 5/7) = (50/42) / (65/42)
    assert s["os"] == pytest.approx(-1 / 7)  # 6/7 - 1
    assert s["r_value"] == pytest.approx(rvalue(5, 6, 7))
    # micro, not macro: utterance 1 alone has precision 3/4, utterance 2 has 1
    assert boundary_scores(PRED[:1], REF[:1])["precision"] == pytest.approx(0.75)


def test_boundary_scores_sdhubert_hand_computed():
    # predictions are segment starts only: utt 1 {0.12, 0.40, 0.62} vs {0.10, 0.30, 0.55, 0.60, 0.90}
    #   -> 0.12~0.10, 0.62~0.60: 2 hits; utt 2 {0.0} vs {0.0, 0.2}: 1 hit.  hits 3, n_pred 4, n_ref 7
    s = boundary_scores(PRED, REF, protocol="sdhubert")
    assert (s["hits"], s["n_pred"], s["n_ref"]) == (3, 4, 7)
    assert s["precision"] == pytest.approx(3 / 4) and s["recall"] == pytest.approx(3 / 7)
    assert s["f1"] == pytest.approx(2 * 0.75 * (3 / 7) / (0.75 + 3 / 7))
    assert s["os"] == pytest.approx(4 / 7 - 1) and s["r_value"] == pytest.approx(rvalue(3, 4, 7))


@pytest.mark.parametrize("protocol", ["syllablelm", "sdhubert"])
def test_boundary_edge_cases(protocol):
    ref = [A([[0.0, 0.3], [0.3, 0.6]])]
    no_pred = boundary_scores([A([]).reshape(0, 2)], ref, protocol=protocol)
    # no predictions: P = 0 by convention, R = 0, OS = -1, R-value = 1 - (sqrt(2) + 0) / 2
    assert (no_pred["precision"], no_pred["recall"], no_pred["f1"], no_pred["os"]) == (0.0, 0.0, 0.0, -1.0)
    assert no_pred["r_value"] == pytest.approx(1 - math.sqrt(2) / 2)
    no_ref = boundary_scores(ref, [np.zeros((0, 2))], protocol=protocol)
    # no references: R = 0; OS and R-value undefined -> 0; the counts say why
    assert no_ref == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "os": 0.0, "r_value": 0.0,
                      "hits": 0, "n_pred": no_ref["n_pred"], "n_ref": 0} and no_ref["n_pred"] > 0
    for both_empty in (boundary_scores([[]], [[]], protocol=protocol), boundary_scores([], [], protocol=protocol)):
        assert all(v == 0 for v in both_empty.values())
    # empty utterances next to non-empty ones add nothing
    assert boundary_scores([[], ref[0]], [[], ref[0]], protocol=protocol) == boundary_scores(ref, ref,
                                                                                             protocol=protocol)


def test_boundary_all_matched_and_round_off():
    same = boundary_scores(REF, REF)
    assert (same["precision"], same["recall"], same["f1"], same["os"], same["r_value"]) == (1, 1, 1, 0, 1)
    # 0.55 - 0.50 > 0.05 in float64: the 1e-9 slack makes an exact-tolerance offset a hit; 0.1 ms more is not
    assert 0.55 - 0.50 > 0.05 and 0.65 - 0.60 > 0.05
    assert boundary_scores([A([[0.55, 0.65]])], [A([[0.50, 0.60]])])["hits"] == 2
    assert boundary_scores([A([[0.5501, 0.9]])], [A([[0.50, 0.9]])])["hits"] == 1  # only 0.9
    # an end and the next start that differ by round-off are one boundary (0.1 + 0.2 != 0.3)
    s = boundary_scores([A([[0.0, 0.1 + 0.2], [0.3, 0.5]])], [A([[0.0, 0.3], [0.3, 0.5]])])
    assert (s["n_pred"], s["hits"]) == (3, 3)


def test_greedy_matching_is_one_to_one():
    # two predictions (0.49, 0.51) near one reference 0.5: {0, 0.49, 0.51, 0.8} vs {0, 0.5} -> 2 hits, not 3
    s = boundary_scores([A([[0.0, 0.49], [0.51, 0.8]])], [A([[0.0, 0.5]])])
    assert (s["hits"], s["n_pred"], s["n_ref"], s["precision"], s["recall"]) == (2, 4, 2, 0.5, 1.0)
    # and the mirror: two references near one prediction
    s = boundary_scores([A([[0.0, 0.5]])], [A([[0.0, 0.49], [0.51, 0.8]])])
    assert (s["hits"], s["n_pred"], s["n_ref"]) == (2, 2, 4)


def test_shift_side_per_protocol():
    ref = [A([[0.10, 0.30], [0.30, 0.50]])]
    late = [ref[0] + 0.08]  # every prediction 80 ms late
    kw = {"tolerance": 0.02}
    # syllablelm adds the shift to the predictions: -80 ms re-aligns them, +80 ms moves them further away
    assert boundary_scores(late, ref, protocol="syllablelm", shift=-0.08, **kw)["hits"] == 3
    assert boundary_scores(late, ref, protocol="syllablelm", shift=0.08, **kw)["hits"] == 0
    # sdhubert adds it to the reference: +80 ms re-aligns (predictions are the 2 starts 0.18, 0.38)
    assert boundary_scores(late, ref, protocol="sdhubert", shift=0.08, **kw)["hits"] == 2
    assert boundary_scores(late, ref, protocol="sdhubert", shift=-0.08, **kw)["hits"] == 0


def test_tune_shift_finds_known_shift_and_breaks_ties():
    assert len(SYLLABLELM_SHIFTS) == 19 and SYLLABLELM_SHIFTS[0] == -0.06 and SYLLABLELM_SHIFTS[-1] == 0.03
    assert len(SDHUBERT_SHIFTS) == 20 and SDHUBERT_SHIFTS[0] == -0.05 and SDHUBERT_SHIFTS[-1] == 0.045
    ref = [A([[0.10, 0.30], [0.30, 0.55]]), A([[1.0, 1.2], [1.3, 1.6]])]
    # a 2 ms tolerance leaves exactly one grid shift that aligns everything
    best, s = tune_shift([r + 0.04 for r in ref], ref, protocol="syllablelm", tolerance=0.002)
    assert best == pytest.approx(-0.04) and s["r_value"] == pytest.approx(1.0)
    best, s = tune_shift([r + 0.03 for r in ref], ref, protocol="sdhubert", tolerance=0.002)
    assert best == pytest.approx(0.03) and s["precision"] == 1.0
    # ties: every shift below matches everything -> the first in grid order (the authors' loop replaces its best
    # only on a strictly greater R-value); the named variant takes the smallest |shift|, then the smaller one
    assert tune_shift(ref, ref, tolerance=0.05, grid=[0.03, 0.02, -0.02])[0] == 0.03
    assert tune_shift(ref, ref, tolerance=0.05, grid=[0.03, 0.02, -0.02], tie="nearest_zero")[0] == -0.02
    assert tune_shift(ref, ref, tolerance=0.05, grid=[-0.02, 0.01], tie="nearest_zero")[0] == 0.01
    with pytest.raises(ValueError, match="tie"):
        tune_shift(ref, ref, tie="closest")


def test_boundary_input_errors():
    with pytest.raises(ValueError, match="utterances"):
        boundary_scores([REF[0]], REF)
    with pytest.raises(TypeError, match="list"):
        boundary_scores(REF[0], REF[0])
    with pytest.raises(ValueError, match="protocol"):
        boundary_scores(REF, REF, protocol="other")


def test_match_segments_hungarian_overlap_protocol_drops_zero_overlap():
    # the "overlap" protocol (the former default; SD-HuBERT's default is in tests/test_fidelity_cluster.py)
    # A=[0,.35] B=[.35,.6] vs X=[0,.3] Y=[.3,.6]: IoU(A,X)=.857, (B,Y)=.833 -> A-X, B-Y
    p, r = match_segments(A([[0.0, 0.35], [0.35, 0.6]]), A([[0.0, 0.3], [0.3, 0.6]]), protocol="overlap")
    assert p.tolist() == [0, 1] and r.tolist() == [0, 1]
    # the second prediction overlaps nothing: the assignment pairs it with Y, and that pair is dropped
    p, r = match_segments(A([[0.0, 0.2], [1.0, 1.2]]), A([[0.0, 0.2], [0.5, 0.7]]), protocol="overlap")
    assert p.tolist() == [0] and r.tolist() == [0]
    # touching (0.1 + 0.2 vs 0.3: overlap of round-off size) counts as no overlap
    assert len(match_segments(A([[0.1 + 0.2, 0.5]]), A([[0.1, 0.3]]), protocol="overlap")[0]) == 0
    for protocol in ("overlap", "sdhubert"):
        assert len(match_segments(np.zeros((0, 2)), A([[0.0, 0.3]]), protocol=protocol)[0]) == 0
    with pytest.raises(ValueError, match="protocol"):
        match_segments(A([[0.0, 0.3]]), A([[0.0, 0.3]]), protocol="iou")


def test_strip_stress():
    assert strip_stress("B AH1 T ER0") == "B AH T ER" and strip_stress("HHAH0LOW1") == "HHAHLOW"
    assert strip_stress("s t 'a n") == "s t a n"  # this project's eSpeak syllable labels: space-joined phones
    assert strip_stress("'bA:") == strip_stress(",bA:") == strip_stress("%bA:") == "bA:"
    assert strip_stress("\u02c8ba") == "ba" and strip_stress("s'I2") == "sI2"  # eSpeak's I2 is a phoneme
    assert strip_stress("k0t") == "k0t"  # eSpeak 0 (the LOT vowel) is not a stress digit


def test_cluster_scores_perfect_and_stress_insensitive():
    ref = [A([[0.0, 0.2], [0.2, 0.4], [0.4, 0.6]]), A([[0.0, 0.3]])]
    labels = [["B AH1", "D IY0", "B AH0"], ["'di"]]
    units = [A([5, 6, 5]), A([9])]
    s = cluster_scores(ref, units, ref, labels)
    assert s == {"cpur": 1.0, "spur": 1.0, "snmi": pytest.approx(1.0), "n_pairs": 4, "protocol": "sdhubert"}
    # without stripping "B AH1" / "B AH0" would be two types sharing unit 5: SPur 3/4
    assert cluster_scores(ref[:1], units[:1], ref[:1], [["B AH1", "D IY0", "B AH9"]])["spur"] == pytest.approx(2 / 3)


def test_cluster_scores_known_confusion():
    # pairs (unit, label): (1,A) (1,A) (1,B) (2,B); N = 4
    ref = [A([[0.0, 0.2], [0.2, 0.4]]), A([[0.0, 0.2], [0.2, 0.4]])]
    pred = [r + 0.01 for r in ref]
    s = cluster_scores(pred, [A([1, 1]), A([1, 2])], ref, [["a", "a"], ["b", "b"]])
    assert s["n_pairs"] == 4
    assert s["cpur"] == pytest.approx(3 / 4)  # A -> unit 1 (2); B -> max(1, 1) = 1
    assert s["spur"] == pytest.approx(3 / 4)  # unit 1 -> A (2); unit 2 -> B (1)
    # I = .5 log(.5/(.75*.5)) + .25 log(.25/(.75*.5)) + .25 log(.25/(.25*.5)); H(label) = log 2
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert s["snmi"] == pytest.approx(mi / math.log(2))
    # no matched pairs -> all 0 (under "overlap": the far prediction overlaps nothing); a single syllable type
    # -> SNMI 0 by convention
    assert cluster_scores([A([[5.0, 6.0]])], [A([1])], ref[:1], [["a", "b"]], protocol="overlap") == {
        "cpur": 0.0, "spur": 0.0, "snmi": 0.0, "n_pairs": 0, "protocol": "overlap"}
    # SD-HuBERT counts it with the nearer syllable: IoU -4.6/5.8001 ("b") beats -4.8/6.0001 ("a")
    assert cluster_scores([A([[5.0, 6.0]])], [A([1])], ref[:1], [["a", "b"]]) == {
        "cpur": 1.0, "spur": 1.0, "snmi": 0.0, "n_pairs": 1, "protocol": "sdhubert"}
    assert cluster_scores([], [], [], []) == {"cpur": 0.0, "spur": 0.0, "snmi": 0.0, "n_pairs": 0,
                                              "protocol": "sdhubert"}
    assert cluster_scores(ref[:1], [A([1, 2])], ref[:1], [["a", "a"]])["snmi"] == 0.0
    with pytest.raises(ValueError, match="units"):
        cluster_scores(ref[:1], [A([1])], ref[:1], [["a", "a"]])


def test_token_rate_and_bitrate():
    units = [[1, 1, 2, 2, 2, 0], [3, 3]]  # 8 tokens, dedup [1, 2, 0], [3] -> 4 tokens
    assert token_rate(units, [3.0, 1.0]) == 2.0 and token_rate([6, 2], 4.0) == 2.0 and token_rate(8, [4.0]) == 2.0
    assert token_rate(units, [0.0]) == 0.0
    assert dedup_ids([3, 3, 5, 3]).tolist() == [3, 5, 3] and dedup_ids([]).tolist() == []
    s = token_stats(units, [3.0, 1.0], vocab_size=8)
    h = -(2 / 8 * math.log2(2 / 8) + 3 / 8 * math.log2(3 / 8) + 1 / 8 * math.log2(1 / 8) + 2 / 8 * math.log2(2 / 8))
    assert s["n_tokens"] == 8 and s["token_rate"] == 2.0 and s["nominal_bps"] == pytest.approx(2.0 * 3)
    assert s["entropy_bits"] == pytest.approx(h) and s["entropy_bps"] == pytest.approx(8 * h / 4)
    assert s["dedup_n_tokens"] == 4 and s["dedup_token_rate"] == 1.0 and s["dedup_entropy_bits"] == pytest.approx(2)
    assert s["dedup_entropy_bps"] == pytest.approx(2.0) and s["dedup_nominal_bps"] == pytest.approx(3.0)
    empty = token_stats([], [], vocab_size=4)
    assert empty["token_rate"] == 0.0 and empty["entropy_bps"] == 0.0


def random_corpus(seed: int, n: int):
    """``n`` utterances of reference syllables (labels with stress variants) and noisy predicted segments."""
    rng = np.random.default_rng(seed)
    labels = ["B AH1", "B AH0", "D IY1", "'ka", ",ka", "ti", "S OW2"]
    ref, ref_labels, pred, units, durations = [], [], [], [], []
    for i in range(n):
        if i == 2:  # one empty utterance on each side
            ref.append(np.zeros((0, 2))), ref_labels.append([]), pred.append(np.zeros((0, 2)))
            units.append(np.zeros(0, dtype=np.int64)), durations.append(0.5)
            continue
        edges = np.round(np.cumsum(rng.uniform(0.1, 0.3, size=rng.integers(3, 9))), 2)
        ref.append(np.stack([edges[:-1], edges[1:]], 1)), ref_labels.append(list(rng.choice(labels, len(edges) - 1)))
        noisy = np.unique(np.round(edges + rng.normal(0, 0.03, len(edges)), 2))
        noisy = noisy[rng.random(len(noisy)) > 0.15] if len(noisy) > 3 else noisy
        pred.append(np.stack([noisy[:-1], noisy[1:]], 1))
        units.append(rng.integers(0, 6, len(noisy) - 1))
        durations.append(float(edges[-1]) + 0.25)
    return ref, ref_labels, pred, units, durations


@pytest.mark.parametrize("protocol", ["syllablelm", "sdhubert"])
def test_boundary_metric_equals_functions(protocol):
    ref, _, pred, _, _ = random_corpus(0, 9)
    m = BoundaryMetric(protocol=protocol, shift=0.0125)  # a shift outside the grid joins it
    for a in range(0, 9, 4):
        m.update(pred[a:a + 4], [torch.as_tensor(r) for r in ref[a:a + 4]])  # tensors are accepted too
    out = m.compute()
    fixed = boundary_scores(pred, ref, protocol=protocol, shift=0.0125)
    best, tuned = tune_shift(pred, ref, protocol=protocol, grid=m.shifts)
    assert {k: out[k].item() for k in fixed} == fixed
    assert out["best_shift"].item() == best and {k: out[f"best_{k}"].item() for k in
                                                 ("precision", "recall", "f1", "os", "r_value")} == \
        {k: tuned[k] for k in ("precision", "recall", "f1", "os", "r_value")}
    for s in (-0.05, 0.0, 0.03):
        assert {k: v.item() for k, v in m.scores_at(s).items()} == boundary_scores(pred, ref, protocol=protocol,
                                                                                   shift=s)
    with pytest.raises(ValueError, match="grid"):
        m.scores_at(0.5)
    assert out["hits"].dtype == torch.int64 and out["f1"].dtype == torch.float64


def test_cluster_and_token_metrics_equal_functions():
    ref, labels, pred, units, durations = random_corpus(1, 9)
    cm, tm = ClusterMetric(), TokenRateMetric(vocab_size=6)
    for a in range(0, 9, 4):
        cm.update(pred[a:a + 4], units[a:a + 4], ref[a:a + 4], labels[a:a + 4])
        tm.update(units[a:a + 4], durations[a:a + 4])
    expected = cluster_scores(pred, units, ref, labels)
    assert expected["n_pairs"] > 20 and 0 < expected["snmi"] < 1
    assert cm.protocol == expected.pop("protocol") == "sdhubert"
    assert {k: v.item() for k, v in cm.compute().items()} == expected
    got, want = {k: v.item() for k, v in tm.compute().items()}, token_stats(units, durations, vocab_size=6)
    assert got == pytest.approx(want, rel=1e-12) and got["n_tokens"] == want["n_tokens"]
    with pytest.raises(ValueError, match="unit ids"):
        tm.update([[6]], [1.0])


@pytest.mark.parametrize("module", [metrics, metrics_cluster, metrics_tokens])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_metrics_do_not_import_lightning():
    code = ("import sys, syllablelm.evaluation.boundary_metrics; "
            "assert not {'lightning', 'pytorch_lightning'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
