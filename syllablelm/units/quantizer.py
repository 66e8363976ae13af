"""Stage 3 units: pool frame features over segments, standardise, k-means, Ward merge, dedup.

Framework-free (torch, numpy, scikit-learn; faiss when importable), never imports lightning.

Types: every function accepts torch tensors or numpy arrays and returns the kind its first argument is
(torch results stay on that tensor's device). Segments here are **frames** (50 Hz), ``[start, end)``; only
:meth:`UnitQuantizer.tokenize` turns them into seconds, the unit on every file and public contract.

Pooling modes (:func:`pool_segments`), for a segment ``[s, e)`` of ``L = e - s`` frames:
  ``"drop_edge"``    Stage 3 units: ``[s + 1, e - 1)``. The official code would average an empty slice (NaN) for
                     ``L <= 2``; its min-cut never makes such segments, ours may see them (gap segments, tiny
                     stores), so ``L <= 2`` falls back to the whole segment.
  ``"middle_third"`` Stage 2 SylBoost targets, as the authors' data loader computes them in floats:
                     ``[s + int(L * 0.33), e - int(L * (1 - 0.67)))``. ``1 - 0.67`` is 0.32999999999999996 in
                     binary floating point, so the end trim is one frame smaller than the start trim when
                     ``L * 0.33`` is a whole number (L a multiple of 100: long pauses, the last segment of a
                     crop). Both trims are 0 for ``L < 4``, so short segments use the whole segment.
  ``"middle_third_symmetric"`` ``int(L * 0.33)`` at both ends (a cleaner variant; not the authors').
  ``"mean"``         the whole segment.

Example: ``q = UnitQuantizer.fit(pooled, k=24576, k_merged=8192); segs_s, units = q.tokenize(feats, bounds)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from syllablelm.audio.frames import frames_to_seconds
from syllablelm.runtime.fileio import write_npz
from syllablelm.units.clustering import MappedChunks, agglomerate, kmeans, np32

POOLING_MODES = ("drop_edge", "middle_third", "middle_third_symmetric", "mean")
# unit variants of an LM's data (docs/algorithms.md, "Units"): variant -> deduplicate after the Ward merge
UNIT_VARIANTS = {"authors_lm": False, "dedup": True}
_FORMAT = "syllablelm.units/1"


def _tensor(x: Any, device: torch.device | str | None = None) -> torch.Tensor:
    return x.to(device) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), device=device)


def _like(out: torch.Tensor, ref: Any) -> Any:
    """Return ``out`` as the kind ``ref`` is (torch stays torch; anything else becomes numpy)."""
    return out if isinstance(ref, torch.Tensor) else out.cpu().numpy()


def _mode(mode: str) -> str:
    m = mode.replace("-", "_")
    if m not in POOLING_MODES:
        raise ValueError(f"pooling mode {mode!r} not in {POOLING_MODES}")
    return m


def check_variant(variant: str) -> str:
    """``variant`` if it names a unit variant (:data:`UNIT_VARIANTS`), else ValueError."""
    if variant not in UNIT_VARIANTS:
        raise ValueError(f"unknown unit variant {variant!r}: one of {', '.join(UNIT_VARIANTS)}")
    return variant


def deduplicates(variant: str) -> bool:
    """Whether ``variant`` collapses runs of equal units (the tokenizer's ``deduplicate`` argument)."""
    return UNIT_VARIANTS[check_variant(variant)]


# ---------------------------------------------------------------------------------------------- pooling
def as_segments(boundaries: Any) -> Any:
    """(n + 1,) boundary frames ``[0, b1, ..., T]`` -> (n, 2) ``[start, end)`` frames; (n, 2) passes through."""
    b = _tensor(boundaries).long()
    if b.ndim == 1:
        b = torch.stack([b[:-1], b[1:]], 1)  # (n, 2); fewer than 2 boundaries give (0, 2)
    elif b.ndim != 2 or b.shape[1] != 2:
        raise ValueError(f"expected (n+1,) boundaries or (n, 2) segments, got shape {tuple(b.shape)}")
    return _like(b, boundaries)


def pooling_range(segments: Any, mode: str = "drop_edge") -> tuple[Any, Any]:
    """The ``[lo, hi)`` frames each segment is averaged over (module docstring); ``hi > lo`` for ``end > start``."""
    seg = _tensor(segments).long()
    start, end = seg[:, 0], seg[:, 1]
    m = _mode(mode)
    if m == "mean":
        head = tail = torch.zeros_like(start)
    elif m == "drop_edge":
        head = tail = (end - start > 2).long()
    else:  # float64: the arithmetic of Python's int(L * 0.33) and int(L * (1 - 0.67)) in the official code
        length = (end - start).double()
        head = (length * 0.33).floor().long()
        tail = head if m == "middle_third_symmetric" else (length * (1 - 0.67)).floor().long()
    return _like(start + head, segments), _like(end - tail, segments)


def _pool(x: torch.Tensor, seg: torch.Tensor, batch: torch.Tensor, mode: str) -> torch.Tensor:
    """Means over ``pooling_range`` via one cumulative sum: no per-segment loop. x (B, T, D), seg (n, 2)."""
    if len(seg) and bool(((seg[:, 1] <= seg[:, 0]) | (seg[:, 0] < 0) | (seg[:, 1] > x.shape[1])).any()):
        raise ValueError(f"segments must satisfy 0 <= start < end <= T={x.shape[1]}")
    lo, hi = pooling_range(seg, mode)  # (n,), (n,)
    # float64: a float32 running sum over 400+ frames loses the digits a short segment's mean needs (no f64 on MPS)
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    csum = F.pad(x.to(acc).cumsum(1), (0, 0, 1, 0))  # (B, T + 1, D), csum[:, t] = sum of frames < t
    return (csum[batch, hi] - csum[batch, lo]) / (hi - lo).unsqueeze(1).to(acc)  # (n, D)


def pool_segments(features: Any, segments: Any, mode: str = "drop_edge", *, batch_index: Any = None) -> Any:
    """Mean of each segment's frames (mode: module docstring). Gaps between segments are simply not read.

    features (T, D), or (B, T, D) with ``batch_index`` (n,) naming each segment's item; segments (n, 2) frames
    or (n + 1,) boundaries. Returns (n, D) in the features' dtype (accumulated in float64).
    """
    x = _tensor(features)
    x3 = x.unsqueeze(0) if x.ndim == 2 else x  # (B, T, D)
    seg = _tensor(as_segments(segments), x.device).long()  # (n, 2)
    batch = seg.new_zeros(len(seg)) if batch_index is None else _tensor(batch_index, x.device).long()
    return _like(_pool(x3, seg, batch, mode).to(x.dtype), features)


def segment_cuts(seg_frames: Any, T: int) -> Any:
    """SylBoost cut points: ``unique(starts ∪ ends)`` inside ``[0, T)`` plus ``T`` -> (m + 1,) boundaries.

    A gap between stored segments (a pause) thus becomes a segment of its own, the last segment runs to the
    crop end ``T``, and frames before the first cut belong to no segment.
    """
    c = torch.unique(_tensor(seg_frames).long().reshape(-1))  # sorted
    c = c[(c >= 0) & (c < T)]
    return _like(torch.cat([c, c.new_tensor([T])]), seg_frames)


def segment_mean_targets(features: Any, seg_frames: Any, T: Any = None, mode: str = "middle_third",
                         end: Any = None) -> Any:
    """The SylBoost target: every frame of a segment gets the segment's pooled mean, other frames zero.

    features (T_max, D) with seg_frames (n, 2) frames (or boundaries) and T an int; or batched: features
    (B, T_max, D), seg_frames a sequence of B arrays, T a sequence of B valid lengths. ``T=None`` means T_max.
    Segments come from :func:`segment_cuts`; frames before the first cut and frames ``>= T`` (padding) get zero.

    ``end`` (None, an int, or one per item; each ``>= T``) is where the last segment ends; None = at ``T``. The
    authors' SylBoost pads every clip to its 8 s crop and ends the last segment at the crop's frame 400 (docs/
    algorithms.md, Stage 2): the cuts are then kept inside ``[0, end)``, each pooling window is computed on these
    segments as if every frame up to ``end`` existed, and averaged over its frames below ``T`` only (padding adds
    to neither the sum nor the count); a window without a real frame gives zero. Returns the features' shape and
    dtype.
    """
    x = _tensor(features)
    batched = x.ndim == 3
    if not batched:
        x, seg_frames = x.unsqueeze(0), [seg_frames]
        T, end = (None if T is None else [T]), (None if end is None else [end])
    B, T_max, D = x.shape
    lengths = [T_max] * B if T is None else [int(t) for t in T]
    if len(seg_frames) != B or len(lengths) != B or max(lengths, default=0) > T_max:
        raise ValueError(f"need {B} segment arrays and lengths <= {T_max}")
    ends = lengths if end is None else [int(e) for e in ([end] * B if np.ndim(end) == 0 else end)]
    if len(ends) != B or any(e < t for e, t in zip(ends, lengths)):
        raise ValueError(f"need {B} segment ends, each >= its item's {lengths} real frames, got {ends}")
    segs = [as_segments(segment_cuts(_tensor(s, x.device), e)) for s, e in zip(seg_frames, ends)]
    batch = torch.cat([torch.full((len(s),), b, dtype=torch.long, device=x.device) for b, s in enumerate(segs)])
    seg = torch.cat(segs)  # (n, 2), ends up to `ends`
    out = x.new_zeros(B * T_max, D)
    if len(seg):
        real = torch.tensor(lengths, dtype=torch.long, device=x.device)[batch]  # (n,) real frames of each item
        pooled = _pool_real(x, seg, batch, mode, real).to(x.dtype)  # (n, D)
        lens = (seg[:, 1].minimum(real) - seg[:, 0]).clamp_min(0)  # (n,) real frames of each segment
        sid = torch.repeat_interleave(torch.arange(len(seg), device=x.device), lens)  # (F,) segment per frame
        within = torch.arange(len(sid), device=x.device) - (lens.cumsum(0) - lens)[sid]  # (F,) offset in segment
        out[batch[sid] * T_max + seg[sid, 0] + within] = pooled[sid]
    out = out.view(B, T_max, D)
    return _like(out if batched else out[0], features)


def _pool_real(x: torch.Tensor, seg: torch.Tensor, batch: torch.Tensor, mode: str, real: torch.Tensor
               ) -> torch.Tensor:
    """:func:`_pool` for SylBoost targets: each segment's ``pooling_range`` clipped to its item's first ``real``
    frames (n,); zero where nothing is left. Segments inside the real frames give exactly :func:`_pool`'s means."""
    lo, hi = pooling_range(seg, mode)  # (n,), (n,) on the whole segment, padding included
    lo, hi = lo.minimum(real), hi.minimum(real)
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    csum = F.pad(x.to(acc).cumsum(1), (0, 0, 1, 0))  # (B, T + 1, D)
    count = (hi - lo).clamp_min(1).unsqueeze(1).to(acc)  # an empty window: 0 / 1
    return (csum[batch, hi] - csum[batch, lo]) / count  # (n, D)


# ------------------------------------------------------------------------------------- standardise, dedup
def standardize(vectors: Any, eps: float = 1e-6) -> Any:
    """Per-vector standardisation over the last dim: ``(x - mean) / std``.

    std is the unbiased one (torch's default, which the official code uses); clamped at ``eps`` so a constant
    vector maps to zeros rather than NaN. Half inputs are promoted to float32. (…, D) -> (…, D).
    """
    x = _tensor(vectors)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return _like((x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(eps), vectors)


_standardize = standardize  # UnitQuantizer has a field of the same name


def dedup(segments: Any, units: Any) -> tuple[Any, Any]:
    """Merge runs of consecutive equal unit ids: a run keeps its first start and its last end.

    As in the official code, "consecutive" means adjacent in the sequence: two equal ids separated by a gap
    (pause) still merge, and the merged segment spans the gap. segments (n, 2) seconds or frames, units (n,);
    returns (m, 2), (m,) of the same kinds.
    """
    n = len(units)
    if len(segments) != n:
        raise ValueError(f"{len(segments)} segments but {n} units")
    u, seg = _tensor(units), _tensor(segments).reshape(-1, 2)  # (n,), (n, 2)
    first = torch.ones(min(n, 1), dtype=torch.bool, device=u.device)  # index 0 always opens a run
    starts = torch.nonzero(torch.cat([first, u[1:] != u[:-1]]))[:, 0]  # (m,) first index of each run
    ends = torch.cat([starts[1:], starts.new_full((min(n, 1),), n)]) - 1  # (m,) last index of each run
    return _like(torch.stack([seg[starts, 0], seg[ends, 1]], 1), segments), _like(u[starts], units)


@dataclasses.dataclass(eq=False)
class UnitQuantizer:
    """k-means centroids plus the Ward map: pooled segment vector -> unit id.

    ``pooling`` and ``standardize`` record how the vectors were made so :meth:`tokenize` repeats it exactly;
    ``feature_layer`` is informational (which encoder layer the features came from).
    """

    centroids: np.ndarray  # (K, D) float32
    agglom: np.ndarray  # (K,) int64, k-means id -> merged id in [0, k_merged)
    standardize: bool = True
    pooling: str = "drop_edge"
    feature_layer: int | None = None
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.centroids = np32(self.centroids)
        self.agglom = np.asarray(self.agglom).astype(np.int64).reshape(-1)
        self.pooling = _mode(self.pooling)
        if self.centroids.ndim != 2 or not len(self.agglom) or self.agglom.shape != (len(self.centroids),) \
                or self.agglom.min() < 0:
            raise ValueError(f"centroids {self.centroids.shape} and agglom {self.agglom.shape} do not match")

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def k_merged(self) -> int:
        """The unit vocabulary size."""
        return int(self.agglom.max()) + 1

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @classmethod
    def fit(cls, vectors: Any, k: int, k_merged: int | None = None, *, standardize: bool = True,
            pooling: str = "drop_edge", feature_layer: int | None = None, backend: str = "auto", seed: int = 0,
            **kmeans_kwargs: Any) -> "UnitQuantizer":
        """k-means (:func:`kmeans`) then Ward (:func:`agglomerate`; none when ``k_merged`` is None).

        vectors: pooled, *unstandardised* (N, D) or an iterable of chunks; standardised here when asked.
        """
        prep = (lambda v: np32(_standardize(_tensor(v).float()))) if standardize else np32
        data = prep(vectors) if isinstance(vectors, (np.ndarray, torch.Tensor)) else MappedChunks(vectors, prep)
        C = kmeans(data, k, backend=backend, seed=seed, **kmeans_kwargs)  # (k, D)
        agg = agglomerate(C, k_merged) if k_merged else np.arange(k)
        return cls(C, agg, standardize=standardize, pooling=pooling, feature_layer=feature_layer)

    @classmethod
    def from_arrays(cls, kmeans: Any, agglom: Any = None, **kwargs: Any) -> "UnitQuantizer":
        """The authors' release format: ``*_kmeans.npy`` (K, D) centroids and ``*_agglom.npy`` (K,) map, given
        as arrays or paths (``agglom=None``: no merging). kwargs: ``standardize``, ``pooling``, ``feature_layer``."""
        load = lambda a: np.load(a, allow_pickle=False) if isinstance(a, (str, os.PathLike)) else a  # noqa: E731
        C = np32(load(kmeans))
        return cls(C, np.arange(len(C)) if agglom is None else load(agglom), **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """One ``.npz`` (centroids, agglom, JSON meta), written atomically."""
        meta = {"format": _FORMAT, "k": self.k, "k_merged": self.k_merged, "standardize": self.standardize,
                "pooling": self.pooling, "feature_layer": self.feature_layer}
        write_npz(path, centroids=self.centroids, agglom=self.agglom, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UnitQuantizer":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path}: not a {_FORMAT} file")
            return cls(z["centroids"], z["agglom"], standardize=meta["standardize"], pooling=meta["pooling"],
                       feature_layer=meta["feature_layer"])

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:  # copy the tables to each device/dtype once, not per call
            C = torch.as_tensor(self.centroids, device=device, dtype=dtype)  # (K, D)
            self._cache[key] = (C, (C * C).sum(1), torch.as_tensor(self.agglom, device=device))
        return self._cache[key]

    def assign(self, vectors: Any, *, merged: bool = True, max_elements: int = 1 << 26) -> Any:
        """Unit ids of pooled vectors (N, D) -> (N,) int64: standardise, nearest centroid, then ``agglom``.

        Runs in torch on the vectors' device; distances are computed ``max_elements // K`` rows at a time so
        memory stays bounded (2**26 floats = 256 MiB). ``merged=False`` returns raw k-means ids.
        """
        x = _tensor(vectors)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) vectors, got {tuple(x.shape)}")
        x = _standardize(x) if self.standardize else (x if x.dtype == torch.float64 else x.float())
        C, c2, agg = self._on(x.device, x.dtype)
        step = max(1, max_elements // self.k)
        # argmin |x - c|^2 = argmin (|c|^2 - 2 x.c): |x|^2 is the same for every centroid
        ids = [(c2 - 2 * xc @ C.T).argmin(1) for xc in x.split(step)]  # [(step,)]
        ids = torch.cat(ids) if ids else x.new_zeros(0, dtype=torch.long)
        return _like(agg[ids] if merged else ids, vectors)

    def tokenize(self, features: Any, boundaries: Any, *, offset: float = 0.0,
                 deduplicate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One utterance: features (T, D) and boundary frames (the min-cut's (n + 1,) or (n, 2) frames) ->
        segments (m, 2) float64 seconds (``+ offset``, e.g. a VAD trim) and units (m,) int64, both numpy."""
        x = _tensor(features).float()  # pooled fp16 features would be rounded back to fp16 before assignment
        seg = _tensor(as_segments(boundaries), x.device).long()  # (n, 2)
        units = self.assign(pool_segments(x, seg, self.pooling)).cpu().numpy()  # (n,)
        seconds = frames_to_seconds(seg.cpu().numpy(), offset)  # (n, 2)
        return dedup(seconds, units) if deduplicate else (seconds, units)
