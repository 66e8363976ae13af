"""Figures for TensorBoard and reports: boundaries over a spectrogram, the LossPred matrix.

matplotlib with the Agg backend only (no display needed); every function returns a ``Figure`` the caller
logs (``SummaryWriter.add_figure``) or saves (:func:`save_png`, atomic) and then closes.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from syllablelm.audio.frames import FRAME_SECONDS  # noqa: E402
from syllablelm.boundaries.baselines import log_mel  # noqa: E402


def boundary_figure(wave, sample_rate: int, *, predicted: np.ndarray, reference: np.ndarray | None = None,
                    reference_labels: list[str] | None = None, matrix: np.ndarray | torch.Tensor | None = None,
                    matrix_offset: float = 0.0, title: str = "") -> "plt.Figure":
    """Log-mel spectrogram with predicted boundaries (white, solid) and reference syllables (cyan, dashed, with
    labels); below it, optionally, a LossPred similarity matrix (log scale) on the same time axis. Times are
    seconds of the wave; ``matrix_offset`` is where the matrix's frame 0 starts (after a VAD trim)."""
    spec = log_mel(wave, sample_rate, n_mels=64).numpy().T  # (M, T)
    duration = len(wave) / sample_rate
    rows = 2 if matrix is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, duration * 1.6), 3.0 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2][:rows]})
    ax = axes[0, 0]
    ax.imshow(spec, origin="lower", aspect="auto", extent=(0, duration, 0, spec.shape[0]), cmap="magma")
    for s, e in np.asarray(predicted).reshape(-1, 2):
        ax.axvline(s, color="white", lw=1.2)
        ax.axvline(e, color="white", lw=1.2)
    if reference is not None:
        for k, (s, e) in enumerate(np.asarray(reference).reshape(-1, 2)):
            ax.axvline(s, color="cyan", lw=1.0, ls="--")
            ax.axvline(e, color="cyan", lw=1.0, ls="--")
            if reference_labels is not None:
                ax.text((s + e) / 2, spec.shape[0] - 4, reference_labels[k], color="cyan", fontsize=7,
                        ha="center", va="top", rotation=90)
    ax.set_xlim(0, duration)
    ax.set_ylabel("mel bin")
    ax.set_title(title or "predicted (white) vs reference syllables (cyan)", fontsize=9)
    if matrix is not None:
        m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
        T = m.shape[0]
        ax2 = axes[1, 0]
        end = matrix_offset + T * FRAME_SECONDS
        ax2.imshow(np.log(np.maximum(m, 1e-12)), origin="upper", aspect="auto", cmap="viridis",
                   extent=(matrix_offset, end, end, matrix_offset),
                   vmin=-12, vmax=0)
        for s, _ in np.asarray(predicted).reshape(-1, 2):
            ax2.axvline(s, color="white", lw=0.6)
        ax2.set_xlim(0, duration)
        ax2.set_xlabel("seconds")
        ax2.set_ylabel("row (s)")
        ax2.set_title("LossPred similarity log S = -C (band |r - c| <= 25 frames)", fontsize=9)
    else:
        ax.set_xlabel("seconds")
    fig.tight_layout()
    return fig


def save_png(fig: "plt.Figure", path: str | os.PathLike, dpi: int = 100) -> None:
    """Save atomically and close the figure."""
    from syllablelm.runtime.fileio import atomic_write

    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
