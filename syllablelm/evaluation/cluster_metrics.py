"""Syllable clustering metrics: cluster purity (CPur), syllable purity (SPur) and syllable-normalised mutual
information (SNMI) of discrete units against reference syllables (docs/algorithms.md, "Evaluation").

Per utterance, predicted segments ``p`` (``n``) are matched one-to-one to reference syllables ``r`` (``m``) with the
Hungarian algorithm (scipy ``linear_sum_assignment``, maximising the summed IoU). Two matching protocols
(``protocol=``, :data:`CLUSTER_PROTOCOLS`):

* ``"sdhubert"`` (default): SD-HuBERT's ``utils/syllable.py`` (``temporal_iou_mat`` / ``match_cluster``), as run
  by its ``evaluate_purity.py``. The ``(m, n)`` matrix has reference rows and prediction columns::

      inter = min(r_end, p_end) - max(r_start, p_start)      # NOT clamped: disjoint pairs are negative
      union = max(r_end, p_end) - min(r_start, p_start)      # the hull (== len_r + len_p - inter, unclamped)
      IoU   = inter / (union + 1e-4)

  and EVERY assigned pair counts -- ``min(n, m)`` pairs per utterance, zero- and negative-IoU pairs included.
  Because disjoint pairs are ranked by their (negative) IoU, the assignment itself can differ from the clamped
  one, not only the set of kept pairs.
* ``"overlap"``: this project's earlier matching. ``inter`` is clamped at 0 (overlaps ``<= 1e-9`` s, i.e.
  touching segments' round-off, count as 0), ``IoU = inter / (len_p + len_r - inter)`` (0 where the union is
  0), prediction rows; assigned pairs without positive overlap are dropped.

Over the corpus, with ``N`` matched (unit, syllable) pairs (natural log; the base cancels in SNMI)::

    CPur = sum over syllable types of (count of its most frequent unit) / N
    SPur = sum over units of (count of its most frequent syllable type) / N
    SNMI = I(syllable; unit) / H(syllable)      both over the N matched pairs

CPur / SPur are SD-HuBERT's ``evaluate_purity.py`` definitions (its "Cluster Purity" iterates over syllables,
its "Syllable Purity" over units). SD-HuBERT computes no SNMI; the definition here is the protocol-independent
one above (the S5-HuBERT evaluation of Komatsu et al. instead divides by H over all reference syllables, matched
or not; not adopted). Units are taken as given, one per predicted segment (no de-duplication; SD-HuBERT scores every
segment it wrote).

Conventions: ``N == 0`` -> all three are 0; ``H(syllable) == 0`` (one syllable type) -> SNMI 0 (nothing to
explain). Labels are compared after :func:`strip_stress` under both protocols (SD-HuBERT's ``trim_label`` deletes
every ``0``-``3`` character: identical on upper-case ARPAbet, whose digits only follow vowels, but it would
merge eSpeak phonemes such as ``I2``/``I`` and keep eSpeak stress marks), and as 64-bit BLAKE2b hashes
(:func:`label_id`), the same on every rank and in every process (Python's ``hash`` is salted); a collision needs
~2**32 distinct labels, far beyond any syllable inventory. Only the pairs are kept (a concatenated state), never
a dense vocab x vocab table; the arithmetic runs on the sorted unique pairs, so the result does not depend on
the order in which utterances (or ranks) arrive.
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

from syllablelm.audio.alignments import segments_array as _segments

# eSpeak: ' primary, , secondary, % unstressed, = stress on the preceding syllable; IPA: U+02C8, U+02CC
STRESS_MARKS = "',%=\u02c8\u02cc"
# ARPAbet stress digits sit on (upper-case) vowels only (AH0, IY1, ER2); digits inside eSpeak names (I2, 3:, 0)
# stay. Labels may join phones with spaces (this project's alignments) or not at all: the pattern needs neither.
_ARPABET_STRESS = re.compile(r"(AXR|AA|AE|AH|AO|AW|AX|AY|EH|ER|EY|IH|IX|IY|OW|OY|UH|UW|UX)[012]")
_STRESS_TABLE = str.maketrans("", "", STRESS_MARKS)
_MIN_OVERLAP = 1e-9  # seconds; less overlap than this is float round-off of touching segments ("overlap")
SDHUBERT_IOU_EPS = 1e-4  # seconds added to the union in SD-HuBERT's temporal_iou_mat
CLUSTER_PROTOCOLS = ("sdhubert", "overlap")
DEFAULT_CLUSTER_PROTOCOL = "sdhubert"


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



def _check_protocol(protocol: str) -> str:
    if protocol not in CLUSTER_PROTOCOLS:
        raise ValueError(f"unknown clustering protocol {protocol!r}; expected one of {CLUSTER_PROTOCOLS}")
    return protocol


def _match_sdhubert(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # reference rows, prediction columns, and the same float operations as SD-HuBERT's temporal_iou_mat, so that
    # the matrix -- and scipy's choice among tied assignments -- is theirs bit for bit
    inter = np.minimum(r[:, None, 1], p[None, :, 1]) - np.maximum(r[:, None, 0], p[None, :, 0])  # (m, n)
    union = np.maximum(r[:, None, 1], p[None, :, 1]) - np.minimum(r[:, None, 0], p[None, :, 0])
    iou = inter / (union + SDHUBERT_IOU_EPS)
    rows, cols = linear_sum_assignment(iou, maximize=True)  # rows come back sorted
    return cols.astype(np.int64), rows.astype(np.int64)  # every assigned pair counts


def _match_overlap(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inter = np.minimum(p[:, None, 1], r[None, :, 1]) - np.maximum(p[:, None, 0], r[None, :, 0])  # (n, m)
    inter = np.where(inter > _MIN_OVERLAP, inter, 0.0)
    union = (p[:, 1] - p[:, 0])[:, None] + (r[:, 1] - r[:, 0])[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    keep = inter[rows, cols] > 0  # the assignment fills up with zero-overlap pairs: they do not count
    order = np.argsort(cols[keep], kind="stable")
    return rows[keep][order].astype(np.int64), cols[keep][order].astype(np.int64)


def match_segments(pred, ref, protocol: str = DEFAULT_CLUSTER_PROTOCOL) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one IoU matching of one utterance's segments: index arrays ``(pred_idx, ref_idx)`` of the pairs
    that count, sorted by ``ref_idx`` (Hungarian on IoU, maximised; see the module docstring for ``protocol``:
    ``"sdhubert"`` keeps all ``min(n, m)`` assigned pairs, ``"overlap"`` only those with positive overlap)."""
    _check_protocol(protocol)
    p, r = _segments(pred, "pred"), _segments(ref, "ref")
    if len(p) == 0 or len(r) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (_match_sdhubert if protocol == "sdhubert" else _match_overlap)(p, r)


def cluster_pairs(pred, pred_units, ref, ref_labels,
                  protocol: str = DEFAULT_CLUSTER_PROTOCOL) -> tuple[np.ndarray, np.ndarray]:
    """Matched ``(units, label_ids)`` int64 arrays over a list of utterances (see :func:`cluster_scores`)."""
    _check_protocol(protocol)
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
        pi, ri = match_segments(p, r, protocol)
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


def cluster_scores(pred, pred_units, ref, ref_labels, protocol: str = DEFAULT_CLUSTER_PROTOCOL) -> dict:
    """Micro-averaged clustering scores of units against syllable labels.

    ``pred``: list of ``(n, 2)`` segment seconds; ``pred_units``: list of ``(n,)`` int unit ids; ``ref``: list of
    ``(m, 2)`` syllable seconds; ``ref_labels``: list of ``m`` label strings; ``protocol``: ``"sdhubert"``
    (default) or ``"overlap"`` (module docstring). Returns ``{"cpur", "spur", "snmi"}`` (floats in [0, 1]),
    ``"n_pairs"`` (int, matched pairs N) and ``"protocol"`` (the matching protocol's name).

    >>> import numpy as np
    >>> ref = [np.array([[0.0, 0.2], [0.2, 0.4], [0.4, 0.6]])]
    >>> s = cluster_scores([ref[0] + 0.01], [np.array([7, 3, 7])], ref, [["B AH1", "D IY0", "B AH2"]])
    >>> s["cpur"], s["spur"], s["snmi"], s["n_pairs"], s["protocol"]
    (1.0, 1.0, 1.0, 3, 'sdhubert')

    A prediction that overlaps nothing still takes part in SD-HuBERT's assignment (here with the nearer
    syllable, IoU -0.1 / 0.4001), and its pair counts; ``"overlap"`` drops it:

    >>> far = [np.array([[0.0, 0.2], [0.7, 0.8]])]
    >>> [cluster_scores(far, [np.array([1, 2])], ref, [["a", "b", "c"]], protocol=p)["n_pairs"]
    ...  for p in ("sdhubert", "overlap")]
    [2, 1]
    """
    scores = _cluster_compute(*cluster_pairs(pred, pred_units, ref, ref_labels, protocol))
    return {**scores, "protocol": protocol}


class ClusterMetric(Metric):
    """CPur / SPur / SNMI over matched (unit, syllable) pairs kept as concatenated int64 states.

    ``ClusterMetric(protocol="sdhubert")`` (or ``"overlap"``; module docstring) fixes the matching protocol, kept
    as the attribute ``protocol``. ``update(pred, pred_units, ref, ref_labels)`` takes the arguments of
    :func:`cluster_scores` for a batch and matches each utterance on the spot, so the states hold only matched
    pairs; ``compute()`` returns 0-d tensors ``cpur, spur, snmi`` (float64) and ``n_pairs`` (int64) -- the numeric
    entries of :func:`cluster_scores` (read the protocol's name from ``metric.protocol``). Labels travel as
    :func:`label_id` hashes, so ranks need no shared vocabulary.

    >>> import numpy as np
    >>> m = ClusterMetric()
    >>> ref = [np.array([[0.0, 0.2], [0.2, 0.4]])]
    >>> m.update(ref, [np.array([1, 1])], ref, [["ba", "di"]])   # one unit for two syllable types
    >>> m.protocol, {k: round(float(v), 3) for k, v in m.compute().items()}
    ('sdhubert', {'cpur': 1.0, 'spur': 0.5, 'snmi': 0.0, 'n_pairs': 2.0})
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, protocol: str = DEFAULT_CLUSTER_PROTOCOL, **kwargs) -> None:
        super().__init__(**kwargs)
        self.protocol = _check_protocol(protocol)
        self.add_state("units", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, pred, pred_units, ref, ref_labels) -> None:
        units, labels = cluster_pairs(pred, pred_units, ref, ref_labels, self.protocol)
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
