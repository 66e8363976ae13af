"""LossPred (SyllableLM stage 1): masked-prediction losses of a sliding 51-frame span -> matrix C -> similarity.

For every span position ``mid`` in ``[-25, T+24]`` the span ``[mid-25, mid+26)`` is masked and the teacher's
per-frame losses on the masked frames are read off. Row ``mid-26`` (the visible frame just left of the span)
receives the losses of the span's left 25 frames; row ``mid+26`` (just right) those of its right 26 frames. Every
entry of ``C`` comes from exactly one span, so ``C[r, c]`` is "how hard is frame c to predict when the context
stops at frame r". ``S = exp(-C)`` in the band ``|r - c| <= 25`` feeds the normalized-cut DP.

Spans ``gap`` frames apart share one forward (150 in the official run: every utterance longer than ``gap`` costs
150 forwards whatever its length). That is an approximation — attention sees the other masked spans — so the exact
path, one span per forward (``T + 50`` forwards), is available with ``exact=True``. As in the authors' notebook
(``fast_get_hubert_losses``: ``if gap_size >= T: gap_size = None``) an utterance of ``T <= gap`` frames always takes
the exact path (``exact_when_fits=True``, default); ``exact_when_fits=False`` keeps the strict ``gap`` packing, which
for ``gap - 50 < T <= gap`` still puts two spans (``mid`` and ``mid + gap``) into some forwards.

The segment count follows the authors' float arithmetic by default (``num_segments(rule="authors")``:
``int(T / 50 / 0.16)`` at 6.25 Hz, one fewer than ``T // 8`` for a few T such as 232); ``rule="floor"`` is the exact
``floor(T * rate / 50)``.

The teacher is a callable ``run(rows (N,), span_mask (N, T)) -> losses (N, T)`` that runs the transformer on
utterances ``rows`` of its batch with ``span_mask`` replaced by the mask embedding; this module knows nothing
about models, and the CNN front end runs once per utterance outside it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

HALF = 25  # span = [mid - 25, mid + 26): 51 frames
SPAN = 2 * HALF + 1
GAP = 150
FLOOR = -100.0  # log-similarity outside the band and on the diagonal: S = exp(-100)

RunLosses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def span_positions(T: int) -> np.ndarray:
    """All span centres ``mid`` in ``[-25, T + 24]`` (``T + 50`` of them)."""
    return np.arange(-HALF, T + HALF)


def mask_groups(T: int, *, gap: int = GAP, exact: bool = False, exact_when_fits: bool = True) -> list[np.ndarray]:
    """Span centres masked together in one forward: one per forward when ``exact`` (or, with
    ``exact_when_fits``, when ``gap >= T`` as in the authors' code), else centres ``gap`` apart
    (``min(gap, T + 50)`` forwards). ``gap`` must exceed the span (51) so spans never touch."""
    mids = span_positions(T)
    if exact or (exact_when_fits and gap >= T):
        return [mids[i:i + 1] for i in range(len(mids))]
    if gap <= SPAN:
        raise ValueError(f"gap must be larger than the span ({SPAN} frames), got {gap}")
    return [mids[g::gap] for g in range(min(gap, len(mids)))]


def group_span_mask(T: int, mids: Sequence[int]) -> torch.Tensor:
    """``(T,)`` bool mask of the union of the spans centred at ``mids``."""
    mask = torch.zeros(T, dtype=torch.bool)
    for m in mids:
        mask[max(0, m - HALF):max(0, min(T, m + HALF + 1))] = True
    return mask


def scatter_group(C: torch.Tensor, losses: torch.Tensor, mids: Sequence[int]) -> None:
    """Write one forward's per-frame ``losses (T,)`` into ``C (T, T)`` for each span in ``mids``."""
    T = C.shape[0]
    for m in mids:
        left_row, right_row = m - HALF - 1, m + HALF + 1
        if 0 <= left_row < T:  # left 25 frames of the span: c in [r+1, r+25]
            lo, hi = left_row + 1, min(T, left_row + HALF + 1)
            C[left_row, lo:hi] = losses[lo:hi]
        if 0 <= right_row < T:  # right 26 frames: c in [r-26, r-1]
            lo, hi = max(0, right_row - HALF - 1), right_row
            C[right_row, lo:hi] = losses[lo:hi]


def loss_matrices(
    run: RunLosses,
    lengths: Sequence[int],  # frames per utterance of the batch (padded to max(lengths) inside ``run``)
    *,
    gap: int = GAP,
    exact: bool = False,
    exact_when_fits: bool = True,
    forward_batch: int = 32,
) -> list[torch.Tensor]:
    """LossPred matrices ``C`` (each ``(T_b, T_b)`` float32, NaN where no span writes) for a batch of
    utterances. Mask patterns of all utterances are packed into forwards of ``forward_batch`` rows; each row is
    one utterance (padded to the batch) with one group of spans masked."""
    T_max = max(int(t) for t in lengths)
    mats = [torch.full((int(t), int(t)), float("nan")) for t in lengths]
    jobs = [(b, mids) for b in range(len(lengths))
            for mids in mask_groups(int(lengths[b]), gap=gap, exact=exact, exact_when_fits=exact_when_fits)]
    frame_mask = torch.arange(T_max)[None, :] < torch.as_tensor([int(t) for t in lengths])[:, None]  # (B, T)
    for start in range(0, len(jobs), forward_batch):
        chunk = jobs[start:start + forward_batch]
        rows = torch.tensor([b for b, _ in chunk])
        span = torch.stack([group_span_mask(T_max, mids) for _, mids in chunk]) & frame_mask[rows]  # (N, T)
        losses = run(rows, span).float().cpu()  # (N, T)
        for (b, mids), row in zip(chunk, losses):
            scatter_group(mats[b], row[: int(lengths[b])], mids)
    return mats


def similarity(C: torch.Tensor, band: int = HALF) -> torch.Tensor:
    """``S = exp(-C)`` inside ``|r - c| <= band``; ``exp(-100)`` on the diagonal, outside the band and where
    no loss was written."""
    T = C.shape[0]
    idx = torch.arange(T)
    dist = (idx[:, None] - idx[None, :]).abs()
    inside = (dist <= band) & (dist > 0) & ~torch.isnan(C)
    return torch.exp(-torch.where(inside, C.double(), torch.full_like(C, -FLOOR, dtype=torch.float64)))


COUNT_RULES = ("authors", "floor")


def num_segments(T: int, rate_hz: float = 6.25, frame_hz: float = 50.0, rule: str = "authors") -> int:
    """Segments for ``T`` frames at ``rate_hz``, at least one.

    ``rule="authors"`` (default): the authors' ``int(T / frame_hz / (1 / rate_hz))`` in float arithmetic
    (``int(T / 50 / 0.16)`` at 6.25 Hz; their DP takes that + 1 boundaries); rounding makes it one fewer than
    ``T // 8`` for some T (232, 376, 456, ...). ``rule="floor"``: the exact ``floor(T * rate_hz / frame_hz)``."""
    if rule == "authors":
        n = int(T / frame_hz / (1 / rate_hz))
    elif rule == "floor":
        n = int(np.floor(T * rate_hz / frame_hz + 1e-9))
    else:
        raise ValueError(f"rule must be one of {COUNT_RULES}, got {rule!r}")
    return max(1, n)
