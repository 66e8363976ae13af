"""Length-bucketed batch samplers that are exact under DDP.

Both samplers yield whole batches, ``(epoch, [dataset indices])``, and the DataLoader runs with
``batch_size=None`` so the dataset builds (and pads) each batch itself. They subclass ``DistributedSampler``
only so that Lightning recognises them as already distributed and leaves them alone; their sharding is
their own:

- :class:`TrainBatchSampler` — the same seeded, epoch-dependent list of bucketed batches on every rank, dealt
  round-robin; ranks get equal batch counts (the last batches are repeated from the start when they do not
  divide evenly), which DDP training needs to stay in lock-step.
- :class:`EvalBatchSampler` — no shuffling, no repeats: it batches one rank's own dataset (built from an
  unrepeated contiguous shard, see :func:`syllablelm.fileio.shard_range`), longest first.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler


def make_batches(order: Sequence[int], seconds: np.ndarray, batch_size: int,
                 max_batch_seconds: float | None) -> list[list[int]]:
    """Greedy batches over ``order`` (already sorted longest first): at most ``batch_size`` items and, when
    given, at most ``max_batch_seconds`` of *padded* audio (items x longest item)."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in order:
        s = float(seconds[i])
        grown = max(longest, s) * (len(current) + 1)
        if current and (len(current) >= batch_size or (max_batch_seconds and grown > max_batch_seconds)):
            batches.append(current)
            current, longest = [], 0.0
        current.append(int(i))
        longest = max(longest, s)
    if current:
        batches.append(current)
    return batches


class _BatchSampler(DistributedSampler):
    def __init__(self, seconds: Sequence[float], *, batch_size: int, max_batch_seconds: float | None,
                 rank: int, world_size: int, shuffle: bool, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seconds = np.asarray(seconds, dtype=np.float64)
        super().__init__(self.seconds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self._cache: tuple[int, list[list[int]]] | None = None

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make())
        return self._cache[1]

    def _make(self) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return iter([(self.epoch, b) for b in self._batches()])

    def __len__(self) -> int:
        return len(self._batches())


class TrainBatchSampler(_BatchSampler):
    """Shuffled, length-bucketed batches, sharded round-robin across ranks with equal counts per rank.

    Each epoch: a seeded permutation (seed + epoch; identical on every rank) is cut into windows of
    ``bucket_batches`` batches; each window is sorted by length and batched (little padding), and the batch
    order is shuffled again.
    """

    def __init__(self, seconds: Sequence[float], *, batch_size: int, max_batch_seconds: float | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, bucket_batches: int = 50):
        super().__init__(seconds, batch_size=batch_size, max_batch_seconds=max_batch_seconds, rank=rank,
                         world_size=world_size, shuffle=True, seed=seed)
        self.bucket_batches = bucket_batches

    def _make(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.seconds))
        window = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(perm), window):
            chunk = perm[start:start + window]
            chunk = chunk[np.argsort(-self.seconds[chunk], kind="stable")]
            batches += make_batches(chunk, self.seconds, self.batch_size, self.max_batch_seconds)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = math.ceil(len(batches) / self.num_replicas)
        padded = (batches * math.ceil(per_rank * self.num_replicas / max(1, len(batches))))[
            : per_rank * self.num_replicas]
        return padded[self.rank::self.num_replicas]


class EvalBatchSampler(_BatchSampler):
    """Every item of a rank-local dataset exactly once, longest first, never shuffled or repeated."""

    def __init__(self, seconds: Sequence[float], *, batch_size: int, max_batch_seconds: float | None = None):
        # the dataset is already this rank's shard: as a DistributedSampler this is "rank 0 of 1"
        super().__init__(seconds, batch_size=batch_size, max_batch_seconds=max_batch_seconds, rank=0,
                         world_size=1, shuffle=False, seed=0)

    def _make(self) -> list[list[int]]:
        order = np.argsort(-self.seconds, kind="stable")
        return make_batches(order, self.seconds, self.batch_size, self.max_batch_seconds)
