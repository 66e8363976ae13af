"""Length-bucketed batch samplers that are exact under DDP.

Both samplers yield whole batches, ``(epoch, [dataset indices], batch index in the epoch)``, and the DataLoader
runs with ``batch_size=None`` so the dataset builds (and pads) each batch itself. They subclass ``DistributedSampler``
only so that Lightning recognises them as already distributed and leaves them alone; their sharding is
their own:

- :class:`TrainBatchSampler` — the same seeded, epoch-dependent list of bucketed batches on every rank, dealt
  round-robin; ranks get equal batch counts (the last batches are repeated from the start when they do not
  divide evenly), which DDP training needs to stay in lock-step.
- :class:`EvalBatchSampler` — no shuffling, no repeats: it batches one rank's own dataset (built from an
  unrepeated contiguous shard, see :func:`syllablelm.runtime.fileio.shard_range`), longest first.

Resuming (:mod:`datamodules.resume`): the batches of an epoch are a function of ``(seed, epoch)``, and
:meth:`EpochBatchSampler.resume` makes the next iterator start at a given batch of a given epoch, so a run restarted
from a checkpoint serves exactly the batches the interrupted run had not trained on yet. The batch index travels
with each batch (the datasets put it in ``batch["position"]``), which is how the DataModule knows where training
stands when a checkpoint is saved.
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


class EpochBatchSampler(DistributedSampler):
    def __init__(self, seconds: Sequence[float], *, batch_size: int, max_batch_seconds: float | None,
                 rank: int, world_size: int, shuffle: bool, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seconds = np.asarray(seconds, dtype=np.float64)
        super().__init__(self.seconds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self._cache: tuple[int, list[list[int]]] | None = None
        self._resume: tuple[int, int] | None = None

    def _batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            saved, self.epoch = self.epoch, epoch
            try:
                self._cache = (epoch, self._make())
            finally:
                self.epoch = saved
        return self._cache[1]

    def _make(self) -> list[list[int]]:
        raise NotImplementedError

    def resume(self, epoch: int, start: int) -> None:
        """Make the next iterator serve ``epoch`` from its batch ``start`` on (once; later iterators follow
        ``set_epoch`` again). ``start`` at or past the epoch's last batch means the epoch is over: the next
        iterator serves epoch ``epoch + 1`` from its first batch."""
        if start >= len(self._batches(epoch)):
            epoch, start = epoch + 1, 0
        self._resume = (int(epoch), int(start))
        self.set_epoch(epoch)

    @property
    def resume_point(self) -> tuple[int, int] | None:
        """``(epoch, batch)`` the next iterator starts at after :meth:`resume`, until it serves its first batch."""
        return self._resume

    @property
    def next_epoch(self) -> int:
        """The epoch the next iterator serves."""
        return self._resume[0] if self._resume is not None else self.epoch

    def __iter__(self) -> Iterator[tuple[int, list[int], int]]:
        # a generator: the resume point is taken when the first batch is, not when the iterator is made (a
        # multi-process DataLoader iterator calls iter() on its sampler twice and uses the second)
        epoch, start = self._resume if self._resume is not None else (self.epoch, 0)
        self._resume = None
        batches = self._batches(epoch)
        for i in range(start, len(batches)):
            yield epoch, batches[i], i

    def __len__(self) -> int:
        return len(self._batches())


class TrainBatchSampler(EpochBatchSampler):
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


class EvalBatchSampler(EpochBatchSampler):
    """Every item of a rank-local dataset exactly once, longest first, never shuffled or repeated."""

    def __init__(self, seconds: Sequence[float], *, batch_size: int, max_batch_seconds: float | None = None):
        # the dataset is already this rank's shard: as a DistributedSampler this is "rank 0 of 1"
        super().__init__(seconds, batch_size=batch_size, max_batch_seconds=max_batch_seconds, rank=0,
                         world_size=1, shuffle=False, seed=0)

    def _make(self) -> list[list[int]]:
        order = np.argsort(-self.seconds, kind="stable")
        return make_batches(order, self.seconds, self.batch_size, self.max_batch_seconds)
