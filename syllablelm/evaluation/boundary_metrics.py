"""Boundary metrics (precision / recall / F1 / over-segmentation / R-value) as pure functions and as a
torchmetrics class. Clustering and token-rate metrics have their own modules (:mod:`.cluster_metrics`,
:mod:`.token_metrics`).

Protocols (docs/algorithms.md, "Evaluation"); inputs are per-utterance ``(n, 2)`` arrays of ``[start, end]``
seconds, counts are micro-averaged over the corpus:

* ``"syllablelm"``: both sides are the unique set of all segment starts and ends; ``shift`` is added to the
  predictions (tuned over -60..+30 ms). The authors' notebook tunes it on the first 50 utterances of the set it
  scores (:func:`paper_shift`); reports here also tune it on a separate dev split (:func:`tune_shift` on dev).
* ``"sdhubert"``: reference = unique syllable starts and ends, predictions = unique segment starts only;
  ``shift`` is added to the reference (tuned over -50..+45 ms).

Matching is greedy one-to-one over sorted boundary times (two pointers), a hit when ``|ref - pred| <= tol``;
on a line with one common tolerance the greedy matching is also a maximum matching.

Conventions (all explicit so that no score is NaN and nothing divides by zero):

* ``|ref - pred| <= tolerance + 1e-9`` -- the 1 ns slack absorbs float round-off (0.35 - 0.30 > 0.05 in
  float64), far below any frame size.
* Boundary times are rounded to the microsecond before ``np.unique``, so an end and the next start that differ
  only by round-off count as one boundary.
* No predictions -> precision 0 (not the vacuous 1: an empty system must not score). No references -> recall 0,
  and os = r_value = 0 (undefined; the returned counts show ``n_ref == 0``). precision + recall == 0 -> f1 = 0.
* A constant shift is applied after de-duplication, so it never changes ``n_pred`` / ``n_ref``; the class still
  keeps them per shift so that a protocol that drops shifted boundaries would stay correct.
* ``tune_shift`` maximises R-value; ties (within 1e-12) keep the first shift in grid order, as the authors' loop
  does (``tie="nearest_zero"``: the smallest ``|shift|``, then the smaller shift).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from syllablelm.audio.alignments import segments_array as _segments

__all__ = [
    "PROTOCOLS", "SHIFT_GRIDS", "SYLLABLELM_SHIFTS", "SDHUBERT_SHIFTS", "TOLERANCE_SLACK",
    "boundary_times", "boundary_scores", "boundary_rates", "boundary_counts", "tune_shift", "BoundaryMetric",
    "PAPER_TUNE_UTTERANCES", "paper_shift",
]

PROTOCOLS = ("syllablelm", "sdhubert")
# grids built from integer milliseconds so that e.g. -0.05 and 0.05 are exact negatives (tie-breaking by |shift|)
SYLLABLELM_SHIFTS: tuple[float, ...] = tuple(ms / 1000 for ms in range(-60, 31, 5))  # 19 shifts
SDHUBERT_SHIFTS: tuple[float, ...] = tuple(ms / 1000 for ms in range(-50, 46, 5))  # 20 shifts
SHIFT_GRIDS = {"syllablelm": SYLLABLELM_SHIFTS, "sdhubert": SDHUBERT_SHIFTS}
TOLERANCE_SLACK = 1e-9  # seconds added to the tolerance against float round-off
_TIME_DECIMALS = 6  # boundary times are de-duplicated at microsecond resolution
_TIE = 1e-12  # R-values this close are a tie in tune_shift
# the authors' notebook chooses the "syllablelm" shift on the first 50 entries of the list it then scores in full
PAPER_TUNE_UTTERANCES = 50



def _utterances(pred, ref) -> tuple[list[np.ndarray], list[np.ndarray]]:
    for name, x in (("pred", pred), ("ref", ref)):
        # a bare (n, 2) array would silently iterate as n one-segment utterances
        if isinstance(x, (np.ndarray, Tensor)) and x.ndim == 2:
            raise TypeError(f"{name} must be a list of per-utterance (n, 2) arrays, not one array")
    if len(pred) != len(ref):
        raise ValueError(f"pred has {len(pred)} utterances but ref has {len(ref)}")
    return ([_segments(p, f"pred[{i}]") for i, p in enumerate(pred)],
            [_segments(r, f"ref[{i}]") for i, r in enumerate(ref)])


def boundary_times(segments, *, starts_only: bool = False) -> np.ndarray:
    """Sorted unique boundary times (seconds) of one utterance: all starts and ends, or the starts only."""
    seg = _segments(segments, "segments")
    t = seg[:, 0] if starts_only else seg.ravel()
    return np.unique(np.round(t, _TIME_DECIMALS))


def _check(protocol: str, tolerance: float) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 seconds, got {tolerance}")


def _greedy_hits(pred: list[float], ref: list[float], tol: float) -> int:
    """One-to-one greedy two-pointer matching of two sorted lists of times; returns the number of hits."""
    i = j = hits = 0
    while i < len(pred) and j < len(ref):
        d = pred[i] - ref[j]
        if -tol <= d <= tol:
            hits += 1
            i += 1
            j += 1
        elif d < 0:  # this prediction is too early for every remaining reference
            i += 1
        else:  # this reference is too early for every remaining prediction
            j += 1
    return hits


def _boundary_update(pred, ref, *, protocol: str, tolerance: float, shifts: Sequence[float]):
    """Counts ``(hits, n_pred, n_ref)``, each an int64 array over ``shifts``, summed over the utterances."""
    _check(protocol, tolerance)
    preds, refs = _utterances(pred, ref)
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1)
    hits = np.zeros(len(shifts), dtype=np.int64)
    n_pred, n_ref = np.zeros_like(hits), np.zeros_like(hits)
    tol = tolerance + TOLERANCE_SLACK
    for p, r in zip(preds, refs):
        pb = boundary_times(p, starts_only=protocol == "sdhubert")
        rb = boundary_times(r)
        n_pred += len(pb)
        n_ref += len(rb)
        if len(pb) == 0 or len(rb) == 0:
            continue
        for k, s in enumerate(shifts):  # adding a constant keeps both lists sorted
            if protocol == "syllablelm":
                hits[k] += _greedy_hits((pb + s).tolist(), rb.tolist(), tol)
            else:
                hits[k] += _greedy_hits(pb.tolist(), (rb + s).tolist(), tol)
    return hits, n_pred, n_ref


def boundary_rates(hits, n_pred, n_ref) -> dict[str, np.ndarray]:
    """precision, recall, f1, os, r_value from counts (scalars or equal-shaped arrays, e.g. bootstrap resamples);
    docs/algorithms.md formulas with the edge cases of the module docstring."""
    hits, n_pred, n_ref = (np.asarray(x, dtype=np.float64) for x in (hits, n_pred, n_ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, hits / n_pred, 0.0)
        recall = np.where(n_ref > 0, hits / n_ref, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        os_ = np.where(n_ref > 0, n_pred / n_ref - 1, 0.0)
    r1 = np.sqrt((1 - recall) ** 2 + os_ ** 2)
    r2 = (-os_ + recall - 1) / np.sqrt(2)
    r_value = np.where(n_ref > 0, 1 - (np.abs(r1) + np.abs(r2)) / 2, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "os": os_, "r_value": r_value}


def _boundary_compute(hits: int, n_pred: int, n_ref: int) -> dict[str, float]:
    """Scores from one shift's counts, as floats, with the counts."""
    scores = {k: float(v) for k, v in boundary_rates(hits, n_pred, n_ref).items()}
    return {**scores, "hits": int(hits), "n_pred": int(n_pred), "n_ref": int(n_ref)}


TIE_RULES = ("first", "nearest_zero")


def _best_index(shifts: Sequence[float], r_values: Sequence[float], tie: str = "first") -> int:
    """Index of the best R-value. Ties (within 1e-12): ``"first"`` keeps the first in grid order, as the authors'
    loop does (a later shift replaces the best only with a strictly greater R-value; their grid ascends, so the
    most negative tied shift wins); ``"nearest_zero"`` takes the smallest ``|shift|``, then the smaller shift."""
    if tie not in TIE_RULES:
        raise ValueError(f"tie must be one of {TIE_RULES}, got {tie!r}")
    r = np.asarray(r_values, dtype=np.float64)
    tied = np.flatnonzero(r >= r.max() - _TIE)
    if tie == "first":
        return int(tied[0])
    return int(min(tied, key=lambda k: (round(abs(shifts[k]), 9), shifts[k])))


def boundary_counts(pred, ref, tolerance: float = 0.05, protocol: str = "syllablelm", shift: float = 0.0
                    ) -> np.ndarray:
    """Per-utterance ``(hits, n_pred, n_ref)`` as an ``(N, 3)`` int64 array (their column sums are what
    :func:`boundary_scores` scores): the unit a bootstrap over utterances resamples."""
    return np.array([[int(c[0]) for c in _boundary_update([p], [r], protocol=protocol, tolerance=tolerance,
                                                          shifts=[shift])] for p, r in zip(*_utterances(pred, ref))],
                    dtype=np.int64).reshape(-1, 3)


def boundary_scores(pred, ref, tolerance: float = 0.05, protocol: str = "syllablelm",
                    shift: float = 0.0) -> dict[str, float]:
    """Micro-averaged boundary scores of ``pred`` against ``ref`` (lists of per-utterance ``(n, 2)`` seconds).

    Returns ``{"precision", "recall", "f1", "os", "r_value"}`` (floats; the first three in [0, 1]) and the
    counts ``{"hits", "n_pred", "n_ref"}`` (ints). ``shift`` (seconds) is added to the predictions
    (``"syllablelm"``) or to the reference (``"sdhubert"``).

    >>> import numpy as np
    >>> ref = [np.array([[0.0, 0.2], [0.2, 0.5]])]          # boundaries 0.0, 0.2, 0.5
    >>> pred = [np.array([[0.01, 0.3], [0.3, 0.52]])]       # boundaries 0.01, 0.3, 0.52
    >>> s = boundary_scores(pred, ref)                      # 0.01~0.0 and 0.52~0.5 hit; 0.3 misses 0.2
    >>> s["hits"], s["n_pred"], s["n_ref"], round(s["f1"], 4)
    (2, 3, 3, 0.6667)
    """
    hits, n_pred, n_ref = _boundary_update(pred, ref, protocol=protocol, tolerance=tolerance, shifts=[shift])
    return _boundary_compute(hits[0], n_pred[0], n_ref[0])


def tune_shift(pred, ref, protocol: str = "syllablelm", tolerance: float = 0.05,
               grid: Sequence[float] | None = None, tie: str = "first") -> tuple[float, dict[str, float]]:
    """The shift of ``grid`` (default: the protocol's, ``SHIFT_GRIDS``, ascending) with the best R-value, and the
    :func:`boundary_scores` at that shift. Ties: the first in grid order (the authors'), or ``tie="nearest_zero"``.

    >>> import numpy as np
    >>> ref = [np.array([[0.10, 0.30], [0.30, 0.50]])]
    >>> pred = [ref[0] + 0.08]                               # predictions 80 ms late: no hit at shift 0
    >>> best, s = tune_shift(pred, ref)                      # shifts -60..-30 ms hit all; -60 ms comes first
    >>> round(best, 3), s["r_value"]
    (-0.06, 1.0)
    >>> round(tune_shift(pred, ref, tie="nearest_zero")[0], 3)
    -0.03
    """
    _check(protocol, tolerance)
    shifts = tuple(float(s) for s in (SHIFT_GRIDS[protocol] if grid is None else grid))
    if not shifts:
        raise ValueError("the shift grid is empty")
    counts = _boundary_update(pred, ref, protocol=protocol, tolerance=tolerance, shifts=shifts)
    scores = [_boundary_compute(*c) for c in zip(*counts)]
    k = _best_index(shifts, [s["r_value"] for s in scores], tie)
    return shifts[k], scores[k]


def paper_shift(pred, ref, tolerance: float = 0.05, n: int = PAPER_TUNE_UTTERANCES
                ) -> tuple[float, dict[str, float]]:
    """The "syllablelm" shift as the authors' notebook chooses it: :func:`tune_shift` (R-value, ties to the first
    shift of the ascending grid) on the first ``n`` utterances of the scored set itself, in the order given (all
    of them when it has fewer). Returns the shift and the scores of those ``n`` utterances at it.

    The notebook slices the first 50 entries before skipping any without reference boundaries, so the slice here
    also counts such utterances. It then scores the whole set at this shift, the ``n`` tuning utterances included:
    the shift is partly chosen with the answers it is scored on (wholly, when the set has at most ``n``). A shift
    tuned on a separate split (:func:`tune_shift` on dev) is the honest alternative.

    >>> import numpy as np
    >>> ref = [np.array([[0.10, 0.30], [0.30, 0.50]])] * 90
    >>> late, early = ref[0] + 0.072, ref[0] - 0.068         # hit at shifts -60..-25 ms / +20..+30 ms
    >>> pred = [late] * 20 + [early] * 30 + [late] * 40      # the first 50: mostly early; all 90: mostly late
    >>> round(paper_shift(pred, ref)[0], 3), round(tune_shift(pred, ref)[0], 3)
    (0.02, -0.06)
    """
    if n < 1:
        raise ValueError(f"the paper setting tunes on at least one utterance, got n={n}")
    preds, refs = _utterances(pred, ref)
    return tune_shift(preds[:n], refs[:n], protocol="syllablelm", tolerance=tolerance)


class BoundaryMetric(Metric):
    """Boundary P/R/F1/OS/R-value accumulated as counts over a whole grid of shifts at once.

    States are int64 counts per shift (``hits``, ``n_pred``, ``n_ref``) reduced with ``sum``, so DDP results are
    exact. ``compute()`` returns, as 0-d tensors, the scores at the fixed ``shift`` (keys ``precision, recall,
    f1, os, r_value, hits, n_pred, n_ref, shift``) and at the tuned shift (``best_shift`` and ``best_precision,
    best_recall, best_f1, best_os, best_r_value``). ``scores_at(s)`` gives any grid shift. Under DDP every rank
    must call ``compute`` / ``scores_at`` (they gather states).

    Args:
        protocol: ``"syllablelm"`` or ``"sdhubert"`` (module docstring).
        tolerance: seconds.
        shifts: the tuning grid (default: the protocol's, ``SHIFT_GRIDS``).
        shift: the fixed shift reported without tuning; added to the grid if missing.
        tie: how tied R-values pick the tuned shift (:func:`tune_shift`; the grid is sorted ascending).

    ``best_*`` is tuned on the data it scores: an oracle. Report a shift tuned on another split (``scores_at``).

    >>> import numpy as np
    >>> m = BoundaryMetric(protocol="syllablelm")
    >>> ref = [np.array([[0.10, 0.30], [0.30, 0.50]])]
    >>> m.update([ref[0] + 0.08], ref)                       # 80 ms late predictions
    >>> out = m.compute()
    >>> float(out["f1"]), float(out["best_f1"]), round(float(out["best_shift"]), 3)
    (0.0, 1.0, -0.06)
    >>> int(m.scores_at(-0.06)["hits"])
    3
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, protocol: str = "syllablelm", tolerance: float = 0.05,
                 shifts: Sequence[float] | None = None, shift: float = 0.0, tie: str = "first", **kwargs) -> None:
        super().__init__(**kwargs)
        _check(protocol, tolerance)
        _best_index([0.0], [0.0], tie)  # checks the rule's name
        self.tie = tie
        grid = [float(s) for s in (SHIFT_GRIDS[protocol] if shifts is None else shifts)]
        if not any(abs(s - shift) < 1e-9 for s in grid):
            grid.append(float(shift))
        self.protocol, self.tolerance, self.shift = protocol, float(tolerance), float(shift)
        self.shifts: tuple[float, ...] = tuple(sorted(grid))
        for name in ("hits", "n_pred", "n_ref"):
            self.add_state(name, default=torch.zeros(len(self.shifts), dtype=torch.int64), dist_reduce_fx="sum")
        self._totals: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def update(self, pred, ref) -> None:
        """Add a batch: ``pred`` / ``ref`` are lists of per-utterance ``(n, 2)`` seconds (arrays or tensors)."""
        counts = _boundary_update(pred, ref, protocol=self.protocol, tolerance=self.tolerance, shifts=self.shifts)
        for name, c in zip(("hits", "n_pred", "n_ref"), counts):
            state = getattr(self, name)
            state += torch.from_numpy(c).to(state.device)

    def _index(self, shift: float) -> int:
        for k, s in enumerate(self.shifts):
            if abs(s - shift) < 1e-9:
                return k
        raise ValueError(f"shift {shift} is not in this metric's grid {self.shifts}")

    def compute(self) -> dict[str, Tensor]:
        # runs on synced states; keep the totals so scores_at needs no second gather
        self._totals = tuple(getattr(self, n).cpu().numpy().copy() for n in ("hits", "n_pred", "n_ref"))
        scores = [_boundary_compute(*c) for c in zip(*self._totals)]
        fixed = scores[self._index(self.shift)]
        k = _best_index(self.shifts, [s["r_value"] for s in scores], self.tie)
        out = {**fixed, "shift": self.shift, "best_shift": self.shifts[k]}
        out.update({f"best_{n}": scores[k][n] for n in ("precision", "recall", "f1", "os", "r_value")})
        return {n: torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
                for n, v in out.items()}

    def scores_at(self, shift: float) -> dict[str, Tensor]:
        """Scores (same keys as :func:`boundary_scores`) at one shift of the grid, over all ranks."""
        k = self._index(shift)
        self.compute()  # the wrapped compute syncs (or returns its cache, after which _totals is current)
        scores = _boundary_compute(*(t[k] for t in self._totals))
        return {n: torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
                for n, v in scores.items()}
