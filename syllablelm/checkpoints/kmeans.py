"""k-means models: fairseq ``learn_kmeans.py`` joblib files or ``.npy`` centroids, and the nearest-centroid labeler.
The one module that reads and writes k-means centroid files.

Formats:

* ``.npy``: one (K, D) array of centroids (float32 when written here; read as float32), no pickle
  (:func:`save_kmeans_centroids` / :func:`load_kmeans_centroids`);
* anything else: fairseq ``learn_kmeans.py`` output, a joblib-pickled sklearn (MiniBatch)KMeans whose
  ``cluster_centers_`` are the centroids (read only; a pickle: trusted files only).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from syllablelm.runtime.fileio import atomic_write


def load_kmeans_centroids(path: str | Path) -> np.ndarray:  # (K, D) float32
    """Centroids from a ``.npy`` array or from fairseq ``learn_kmeans.py`` output (a joblib-pickled sklearn
    (MiniBatch)KMeans; only ``cluster_centers_`` is read, so sklearn version-mismatch warnings are silenced).
    joblib files are pickles too: trusted files only."""
    path = Path(path)
    if path.suffix == ".npy":
        centers = np.load(path, allow_pickle=False)
    else:
        import joblib
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(version|Trying to unpickle).*")
            model = joblib.load(path)
        if not hasattr(model, "cluster_centers_"):
            raise ValueError(f"{path}: {type(model).__name__} has no cluster_centers_")
        centers = model.cluster_centers_
    centers = np.asarray(centers, dtype=np.float32)
    if centers.ndim != 2:
        raise ValueError(f"{path}: centroids must be (K, D), got shape {centers.shape}")
    return centers


def save_kmeans_centroids(path: str | Path, centroids) -> None:
    """Write (K, D) centroids as a float32 ``.npy`` atomically (what :func:`load_kmeans_centroids` reads back)."""
    centers = np.asarray(centroids, dtype=np.float32)
    if centers.ndim != 2:
        raise ValueError(f"{path}: centroids must be (K, D), got shape {centers.shape}")
    if Path(path).suffix != ".npy":
        raise ValueError(f"{path}: k-means centroids are written as .npy")
    with atomic_write(path, "wb") as f:
        np.save(f, centers, allow_pickle=False)


class KMeansLabeler(nn.Module):
    """Nearest centroid in squared Euclidean distance (fairseq's ApplyKmeans), in chunks of ``chunk`` rows."""

    def __init__(self, centroids: np.ndarray | torch.Tensor, chunk: int = 8192):
        super().__init__()
        c = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)  # (K, D)
        self.register_buffer("centroids", c)
        self.register_buffer("sq_norms", (c ** 2).sum(-1))  # (K,)
        self.chunk = chunk

    @classmethod
    def from_file(cls, path: str | Path, **kw) -> "KMeansLabeler":
        return cls(load_kmeans_centroids(path), **kw)

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N,) long
        x = torch.as_tensor(features).to(self.centroids.device, torch.float32)
        out = [(self.sq_norms - 2 * part @ self.centroids.T).argmin(-1)  # ||x||^2 is constant per row
               for part in x.split(self.chunk)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)
