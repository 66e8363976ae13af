"""k-means and Ward clustering for the unit quantizer (and the LossPred teacher's frame labels).

scikit-learn by default, faiss when importable (``backend="auto"``); deterministic for a given seed and backend.
Inputs may be torch tensors or numpy arrays; results are float32 / int64 numpy arrays.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

KMEANS_BACKENDS = ("auto", "sklearn", "faiss")


def np32(x: Any) -> np.ndarray:
    """A contiguous float32 numpy copy (or view) of a tensor or array."""
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


class MappedChunks:
    """Lazy ``map`` that stays re-iterable when ``chunks`` is (a list), so streaming can run several epochs."""

    def __init__(self, chunks: Iterable[Any], fn: Callable[[Any], np.ndarray]):
        self.chunks, self.fn = chunks, fn

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.fn(c) for c in self.chunks)


def _rebatch(chunks: Iterable[np.ndarray], first: int, size: int) -> Iterator[np.ndarray]:
    """Concatenate chunks into batches of >= ``first`` rows (then >= ``size``); the remainder comes last."""
    buf, rows, need = [], 0, first
    for c in chunks:
        buf.append(c)
        rows += len(c)
        if rows >= need:
            yield np.concatenate(buf)
            buf, rows, need = [], 0, size
    if buf:
        yield np.concatenate(buf)


def kmeans(vectors: Any, k: int, *, backend: str = "auto", seed: int = 0, max_iter: int = 100,
           batch_size: int = 4096, stream_epochs: int = 1, n_init: int | None = None,
           gpu: bool | None = None) -> np.ndarray:
    """k-means centroids (k, D) float32, deterministic for a given seed and backend.

    vectors: (N, D) array/tensor, or an iterable of (n, D) chunks for data that does not fit in memory.
    ``backend="auto"`` takes faiss when importable, else scikit-learn.
      sklearn: MiniBatchKMeans (k-means++ init); arrays use ``fit`` (``max_iter`` epochs, early stopping),
               chunk iterables are streamed through ``partial_fit`` in batches of ``batch_size`` rows (the first
               batch >= 3k rows, for the init) for ``stream_epochs`` passes (pass a list, not a generator, for >1).
      faiss:   ``faiss.Kmeans`` with ``niter=max_iter``, on the GPU when faiss sees one (``gpu`` overrides);
               chunks are concatenated (faiss subsamples to 256 points per centroid anyway). Its init is random
               points (k-means++ costs O(N K D) per pass, too slow at K = 24576), so small K can split a cluster.
    ``n_init``: restarts, the best objective kept (sklearn ``n_init``, default "auto"; faiss ``nredo``, default 1).
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"backend {backend!r} not in {KMEANS_BACKENDS}")
    if backend == "auto":
        backend = "faiss" if faiss_available() else "sklearn"
    in_memory = isinstance(vectors, (np.ndarray, torch.Tensor))
    if backend == "faiss":
        import faiss

        X = np32(vectors) if in_memory else np.concatenate([np32(c) for c in vectors])  # (N, D)
        use_gpu = getattr(faiss, "get_num_gpus", lambda: 0)() > 0 if gpu is None else gpu
        km = faiss.Kmeans(X.shape[1], k, niter=max_iter, nredo=n_init or 1, seed=seed, gpu=bool(use_gpu),
                          verbose=False)
        km.train(X)
        return np.asarray(km.centroids, dtype=np.float32).reshape(k, X.shape[1])
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, max_iter=max_iter, batch_size=batch_size,
                         compute_labels=False, n_init=n_init or "auto")
    if in_memory:
        km.fit(np32(vectors))
    else:
        for _ in range(stream_epochs):
            for batch in _rebatch((np32(c) for c in vectors), max(3 * k, batch_size), batch_size):
                km.partial_fit(batch)
    return km.cluster_centers_.astype(np.float32)


def agglomerate(centroids: Any, k_merged: int) -> np.ndarray:
    """Ward clustering of the k-means centroids into ``k_merged`` groups: the (K,) int64 map ``agglom[kmeans_id]``.

    Merged ids are renumbered in order of their first k-means id (so ``agglom[0] == 0``), which makes the map
    independent of scikit-learn's internal label order. ``k_merged >= K`` gives the identity.
    """
    from sklearn.cluster import AgglomerativeClustering

    C = np32(centroids).astype(np.float64)  # (K, D)
    if k_merged >= len(C):
        return np.arange(len(C), dtype=np.int64)
    labels = AgglomerativeClustering(n_clusters=k_merged, linkage="ward").fit_predict(C)  # (K,)
    _, first = np.unique(labels, return_index=True)  # (k_merged,) first k-means id of each label
    remap = np.empty(k_merged, dtype=np.int64)
    remap[np.argsort(first)] = np.arange(k_merged)
    return remap[labels]
