"""The two settings of the "syllablelm" boundary protocol's shift (docs/algorithms.md, "Evaluation"):

- ``syllablelm_paper`` (tuning ``scored_first50``): as the authors' notebook (``Experiments.ipynb``,
  ``get_slow_coco_outs``) chooses it: for each shift of ``arange(-0.06, 0.031, 0.005)`` added to the predicted
  boundaries, micro-averaged counts over ``data_json[:50]`` (the first 50 entries of the very list it scores, an
  entry without reference boundaries skipped after slicing), ``P + 1e-5``, ``R + 1e-5``, the R-value, and
  ``argmax`` (the first maximum, so ties go to the most negative shift); the whole list, those 50 included, is
  then scored at that shift;
- ``syllablelm_tuned`` (tuning ``dev``): the same search on a separate dev split.

The authors' arithmetic is restated here (two-pointer matching within 50 ms, their R-value with its 1e-5), not
taken from the code under test. Every utterance below is built so that its best shift is known: its predicted
boundaries sit alternately 48 ms after and 48 ms before ``ref - target``, so every grid shift hits half of them and
only ``target`` hits all four; a set's best shift is then the target most of its utterances share.
"""
from __future__ import annotations

import numpy as np
import pytest

from syllablelm.evaluation.boundary_metrics import boundary_scores, paper_shift, tune_shift
from syllablelm.evaluation.scoring import tuned_scores

REF_BOUNDARIES = (0.5, 1.0, 1.5, 2.0)
A, B, C = -0.02, 0.01, -0.045  # three targets on the grid, far from its ends


def utterance(target: float) -> tuple[np.ndarray, np.ndarray]:
    """(pred, ref) segments whose four boundaries all hit at ``target`` only (two hit at any other grid shift)."""
    ref = np.array(REF_BOUNDARIES)
    pred = ref - target + np.array([0.048, -0.048, 0.048, -0.048])
    return np.stack([pred[:-1], pred[1:]], 1), np.stack([ref[:-1], ref[1:]], 1)


def split(targets) -> tuple[list, list]:
    pairs = [utterance(t) for t in targets]
    return [p for p, _ in pairs], [r for _, r in pairs]


def authors_shift(pred, ref) -> tuple[float, list[float]]:
    """The notebook's choice, restated: its grid, its first-50 slice, its R-value and argmax."""
    def matches(gt, pr, tol=0.05):
        i = j = hit = 0
        while i < len(gt) and j < len(pr):
            if abs(gt[i] - pr[j]) <= tol:
                hit, i, j = hit + 1, i + 1, j + 1
            elif gt[i] > pr[j]:
                j += 1
            else:
                i += 1
        return hit

    shifts = np.arange(-0.06, 0.031, 0.005)
    r_values = []
    for shift in shifts:
        hits = n_gt = n_pred = 0
        for p, r in list(zip(pred, ref))[:50]:  # slice first, then skip the empty references
            gt = np.unique(r).tolist()
            if not gt:
                continue
            pr = [b + shift for b in np.unique(p).tolist()]
            hits, n_gt, n_pred = hits + matches(gt, pr), n_gt + len(gt), n_pred + len(pr)
        precision, recall = hits / n_pred + 1e-5, hits / n_gt + 1e-5
        over = recall / precision - 1
        r1, r2 = np.sqrt((1 - recall) ** 2 + over ** 2), (-over + recall - 1) / np.sqrt(2)
        r_values.append(1 - (abs(r1) + abs(r2)) / 2)
    return float(shifts[int(np.argmax(r_values))]), r_values


def test_the_paper_shift_is_tuned_on_the_first_50_scored_utterances_and_scores_them_too():
    # test: the first 50 mostly A, the whole 60 mostly B; dev: C
    targets = [A] * 26 + [B] * 24 + [B] * 10
    pred, ref = split(targets)
    dev_pred, dev_ref = split([C] * 10)
    expected, _ = authors_shift(pred, ref)
    assert expected == pytest.approx(A)
    res = tuned_scores(pred, ref, dev_pred, dev_ref)
    paper, tuned = res["syllablelm_paper"], res["syllablelm_tuned"]
    assert paper["shift"] == pytest.approx(expected) and paper["tuning"] == "scored_first50"
    assert paper["tune_utterances"] == 50
    assert tuned["shift"] == pytest.approx(C) and tuned["tuning"] == "dev"
    # neither on the whole scored set, nor on its last 50, nor on its first 50 in another order
    assert tune_shift(pred, ref)[0] == pytest.approx(B)
    assert paper_shift(pred[10:], ref[10:])[0] == pytest.approx(B)
    assert paper_shift(pred[::-1], ref[::-1])[0] == pytest.approx(B) == pytest.approx(authors_shift(
        pred[::-1], ref[::-1])[0])
    # the whole set is scored at that shift, the 50 tuning utterances included: 2 hits each, 2 more per A
    n = len(targets)
    hits = 2 * n + 2 * targets.count(A)
    assert (paper["hits"], paper["n_pred"], paper["n_ref"]) == (hits, 4 * n, 4 * n)
    assert paper["precision"] == pytest.approx(hits / (4 * n)) and paper["f1"] == pytest.approx(hits / (4 * n))
    # utterances after the 50th never move the shift
    moved = split(targets[:50] + [C] * 40)
    assert paper_shift(*moved)[0] == pytest.approx(A) == pytest.approx(authors_shift(*moved)[0])


def test_a_scored_set_under_50_utterances_tunes_the_paper_shift_on_all_of_it():
    """The demo's test split has 25 utterances: the paper shift is tuned on exactly the utterances it scores, so
    its F1 and R-value are never below the dev-tuned ones."""
    targets = [A] * 12 + [B] * 13
    pred, ref = split(targets)
    res = tuned_scores(pred, ref, *split([C] * 5))
    paper, tuned = res["syllablelm_paper"], res["syllablelm_tuned"]
    assert paper["shift"] == pytest.approx(B) == pytest.approx(authors_shift(pred, ref)[0])
    assert paper["tune_utterances"] == 25 and tuned["shift"] == pytest.approx(C)
    assert paper == {**boundary_scores(pred, ref, shift=paper["shift"]), "shift": paper["shift"],
                     "tuning": "scored_first50", "tune_utterances": 25}
    assert paper["f1"] > tuned["f1"] and paper["r_value"] > tuned["r_value"]
    assert "sdhubert_paper" not in res  # the paper setting is the "syllablelm" protocol's only


def test_tied_shifts_go_to_the_first_in_the_ascending_grid_whatever_the_utterance_order():
    for targets in ([B] * 25 + [A] * 25, [A] * 25 + [B] * 25, [B, A] * 25):
        pred, ref = split(targets)
        expected, r_values = authors_shift(pred, ref)
        assert sorted(r_values)[-1] == sorted(r_values)[-2]  # a true tie in the authors' R-value
        assert expected == pytest.approx(min(A, B))
        assert paper_shift(pred, ref)[0] == pytest.approx(expected)


def test_an_utterance_without_reference_boundaries_still_counts_in_the_first_50():
    """The notebook slices ``[:50]`` before it skips entries without reference boundaries: an empty one among the
    first 50 leaves 49 to tune on, not the first 50 non-empty."""
    targets = [A] * 24 + [B] * 25 + [A]  # utterances 1..50 after the empty one: 25 A, 25 B would tie
    pred, ref = split(targets)
    pred, ref = [np.array([[0.2, 0.9]]), *pred], [np.zeros((0, 2)), *ref]
    expected, _ = authors_shift(pred, ref)
    assert expected == pytest.approx(B)  # 24 A against 25 B in the 49 it sees
    assert paper_shift(pred, ref)[0] == pytest.approx(expected)
    assert paper_shift(pred[1:], ref[1:])[0] == pytest.approx(min(A, B))  # the tie, when the slice moves on


def test_the_criterion_is_the_r_value_over_the_protocol_grid():
    """The restated R-values pick the shift: the suite's choice is their argmax on every set below, and each
    grid shift's R-value on the first 50 agrees with the suite's own up to the authors' 1e-5."""
    from syllablelm.evaluation.boundary_metrics import SYLLABLELM_SHIFTS

    rng = np.random.default_rng(0)
    grid = np.array(SYLLABLELM_SHIFTS)
    for _ in range(5):
        targets = rng.choice(grid[2:-2], size=70).tolist()
        pred, ref = split(targets)
        expected, r_values = authors_shift(pred, ref)
        assert paper_shift(pred, ref)[0] == pytest.approx(expected)
        ours = [boundary_scores(pred[:50], ref[:50], shift=s)["r_value"] for s in grid]
        assert ours == pytest.approx(r_values, abs=1e-4)
    with pytest.raises(ValueError, match="at least one utterance"):
        paper_shift(pred, ref, n=0)
