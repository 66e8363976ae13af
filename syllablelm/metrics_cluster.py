"""Syllable clustering metrics: cluster purity (CPur), syllable purity (SPur) and syllable-normalised mutual
information (SNMI) of discrete units against reference syllables (REFERENCE.md, "Evaluation protocols").

Per utterance, predicted segments are matched one-to-one to reference syllables by temporal IoU with the
Hungarian algorithm (maximising total IoU); matched pairs whose overlap is ``<= 1e-9`` s (touching or disjoint
segments) are dropped. Over the corpus, with ``N`` matched (unit, syllable) pairs::

    CPur = sum over syllable types of (count of its most frequent unit) / N
    SPur = sum over units of (count of its most frequent syllable type) / N
    SNMI = I(syllable; unit) / H(syllable)

Conventions: ``N == 0`` -> all three are 0; ``H(syllable) == 0`` (one syllable type) -> SNMI 0 (nothing to
explain). Labels are compared after :func:`strip_stress` and as 64-bit BLAKE2b hashes (:func:`label_id`), the
same on every rank and in every process (Python's ``hash`` is salted); a collision needs ~2**32 distinct
labels, far beyond any syllable inventory. Only the pairs are kept (a concatenated state), never a dense
vocab x vocab table; the arithmetic runs on the sorted unique pairs, so the result does not depend on the order
in which utterances (or ranks) arrive.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from syllablelm.alignments import segments_array as _segments

# eSpeak: ' primary, , secondary, % unstressed, = stress on the preceding syllable; IPA: U+02C8, U+02CC
STRESS_MARKS = "',%=\u02c8\u02cc"
# ARPAbet stress digits sit on (upper-case) vowels only (AH0, IY1, ER2); digits inside eSpeak names (I2, 3:, 0)
# stay. Labels may join phones with spaces (this project's alignments) or not at all: the pattern needs neither.
_ARPABET_STRESS = re.compile(r"(AXR|AA|AE|AH|AO|AW|AX|AY|EH|ER|EY|IH|IX|IY|OW|OY|UH|UW|UX)[012]")
_STRESS_TABLE = str.maketrans("", "", STRESS_MARKS)
_MIN_OVERLAP = 1e-9  # seconds; less overlap than this is float round-off of touching segments


def strip_stress(label: str) -> str:
    """Remove stress marks: eSpeak/IPA marks anywhere, ARPAbet digits after (upper-case) vowels.

    >>> strip_stress("HH AH0 L OW1"), strip_stress("h@'loU"), strip_stress(",Ek%s")
    ('HH AH L OW', 'h@loU', 'Eks')
    """
    return _ARPABET_STRESS.sub(r"\1", label.translate(_STRESS_TABLE)).strip()


def label_id(label: str) -> int:
    """Deterministic signed 64-bit id of a stress-stripped label (BLAKE2b; identical on every rank)."""
    digest = hashlib.blake2b(strip_stress(label).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)



def match_segments(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one IoU matching of one utterance's segments: index arrays ``(pred_idx, ref_idx)`` of the kept
    pairs (Hungarian on IoU, maximised; pairs without positive overlap dropped), sorted by ``ref_idx``."""
    p, r = _segments(pred, "pred"), _segments(ref, "ref")
    if len(p) == 0 or len(r) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    inter = np.minimum(p[:, None, 1], r[None, :, 1]) - np.maximum(p[:, None, 0], r[None, :, 0])  # (n, m)
    inter = np.where(inter > _MIN_OVERLAP, inter, 0.0)
    union = (p[:, 1] - p[:, 0])[:, None] + (r[:, 1] - r[:, 0])[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    keep = inter[rows, cols] > 0  # the assignment fills up with zero-overlap pairs: they do not count
    order = np.argsort(cols[keep], kind="stable")
    return rows[keep][order].astype(np.int64), cols[keep][order].astype(np.int64)


def cluster_pairs(pred, pred_units, ref, ref_labels) -> tuple[np.ndarray, np.ndarray]:
    """Matched ``(units, label_ids)`` int64 arrays over a list of utterances (see :func:`cluster_scores`)."""
    lengths = {len(pred), len(pred_units), len(ref), len(ref_labels)}
    if len(lengths) != 1:
        raise ValueError(f"pred, pred_units, ref, ref_labels must have one entry per utterance; got lengths "
                         f"{len(pred)}, {len(pred_units)}, {len(ref)}, {len(ref_labels)}")
    units, labels = [], []
    for i, (p, u, r, lab) in enumerate(zip(pred, pred_units, ref, ref_labels)):
        p, r = _segments(p, f"pred[{i}]"), _segments(r, f"ref[{i}]")
        u = np.asarray(u.detach().cpu() if isinstance(u, Tensor) else u, dtype=np.int64).reshape(-1)
        if len(u) != len(p) or len(lab) != len(r):
            raise ValueError(f"utterance {i}: {len(p)} segments but {len(u)} units, or {len(r)} syllables but "
                             f"{len(lab)} labels")
        pi, ri = match_segments(p, r)
        units.append(u[pi])
        labels.append(np.array([label_id(lab[k]) for k in ri], dtype=np.int64))
    if not units:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(units), np.concatenate(labels)


def _group_max(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Maximum of ``values`` within each group of equal ``keys``."""
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return np.maximum.reduceat(v, starts)


def _cluster_compute(units: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """CPur / SPur / SNMI from matched pairs (int64 arrays of equal length)."""
    n = len(units)
    if n == 0:
        return {"cpur": 0.0, "spur": 0.0, "snmi": 0.0, "n_pairs": 0}
    pairs, joint = np.unique(np.stack([units, labels], axis=1), axis=0, return_counts=True)  # sorted (K, 2)
    _, u_inv = np.unique(pairs[:, 0], return_inverse=True)
    _, l_inv = np.unique(pairs[:, 1], return_inverse=True)
    u_count = np.bincount(u_inv, weights=joint)  # marginal counts, exact in float64
    l_count = np.bincount(l_inv, weights=joint)
    cpur = int(_group_max(pairs[:, 1], joint).sum()) / n
    spur = int(_group_max(pairs[:, 0], joint).sum()) / n
    p_joint = joint / n
    mi = float(np.sum(p_joint * np.log(joint * n / (u_count[u_inv] * l_count[l_inv]))))
    p_label = l_count / n
    h_label = float(-np.sum(p_label * np.log(p_label)))
    # I <= H(syllable) exactly; clip the round-off (e.g. 1 + 2e-16 for a perfect clustering)
    snmi = min(max(mi / h_label, 0.0), 1.0) if h_label > 0 else 0.0
    return {"cpur": cpur, "spur": spur, "snmi": snmi, "n_pairs": n}


def cluster_scores(pred, pred_units, ref, ref_labels) -> dict[str, float]:
    """Micro-averaged clustering scores of units against syllable labels.

    ``pred``: list of ``(n, 2)`` segment seconds; ``pred_units``: list of ``(n,)`` int unit ids; ``ref``: list of
    ``(m, 2)`` syllable seconds; ``ref_labels``: list of ``m`` label strings. Returns ``{"cpur", "spur", "snmi"}``
    (floats in [0, 1]) and ``"n_pairs"`` (int, matched pairs N).

    >>> import numpy as np
    >>> ref = [np.array([[0.0, 0.2], [0.2, 0.4], [0.4, 0.6]])]
    >>> s = cluster_scores([ref[0] + 0.01], [np.array([7, 3, 7])], ref, [["B AH1", "D IY0", "B AH2"]])
    >>> s["cpur"], s["spur"], s["snmi"], s["n_pairs"]
    (1.0, 1.0, 1.0, 3)
    """
    return _cluster_compute(*cluster_pairs(pred, pred_units, ref, ref_labels))


class ClusterMetric(Metric):
    """CPur / SPur / SNMI over matched (unit, syllable) pairs kept as concatenated int64 states.

    ``update(pred, pred_units, ref, ref_labels)`` takes the arguments of :func:`cluster_scores` for a batch;
    ``compute()`` returns 0-d tensors ``cpur, spur, snmi`` (float64) and ``n_pairs`` (int64). Labels travel as
    :func:`label_id` hashes, so ranks need no shared vocabulary.

    >>> import numpy as np
    >>> m = ClusterMetric()
    >>> ref = [np.array([[0.0, 0.2], [0.2, 0.4]])]
    >>> m.update(ref, [np.array([1, 1])], ref, [["ba", "di"]])   # one unit for two syllable types
    >>> {k: round(float(v), 3) for k, v in m.compute().items()}
    {'cpur': 1.0, 'spur': 0.5, 'snmi': 0.0, 'n_pairs': 2.0}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("units", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, pred, pred_units, ref, ref_labels) -> None:
        units, labels = cluster_pairs(pred, pred_units, ref, ref_labels)
        # always append (even an empty batch) so that every updated rank gathers int64 tensors
        self.units.append(torch.from_numpy(units).to(self.device))
        self.labels.append(torch.from_numpy(labels).to(self.device))

    def _sync_dist(self, dist_sync_fn=gather_all_tensors, process_group=None) -> None:
        # torchmetrics stands in a float tensor of the default dtype for a rank with no update at all; that
        # would gather float buffers against int64 ones (and floats cannot hold 64-bit hashes): send int64
        for name in ("units", "labels"):
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.zeros(0, dtype=torch.int64, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _cat(self, name: str) -> np.ndarray:
        state = getattr(self, name)
        if isinstance(state, list):
            state = torch.cat(state) if state else torch.zeros(0, dtype=torch.int64)
        return state.cpu().numpy().astype(np.int64, copy=False)

    def compute(self) -> dict[str, Tensor]:
        scores = _cluster_compute(self._cat("units"), self._cat("labels"))
        return {k: torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
                for k, v in scores.items()}
