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
- :class:`TokenBudgetBatchSampler` — the batches fairseq builds for the authors' SpeechLM (:func:`budget_batch_ends`
  over the whole split sorted longest first, made once), their order shuffled per epoch and dealt round-robin
  like :class:`TrainBatchSampler`'s.

Resuming (:mod:`datamodules.resume`): the batches of an epoch are a function of ``(seed, epoch)``, and
:meth:`EpochBatchSampler.resume` makes the next iterator start at a given batch of a given epoch, so a run restarted
from a checkpoint serves exactly the batches the interrupted run had not trained on yet. The batch index travels
with each batch (the datasets put it in ``batch["position"]``), which is how the DataModule knows where training
stands when a checkpoint is saved.
"""
from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
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


def budget_batch_ends(sizes: Sequence[int], max_tokens: int | None, max_sentences: int | None = None,
                      multiple: int = 1) -> list[int]:
    """fairseq's ``batch_by_size`` (``data_utils_fast.batch_by_size_vec`` and the ``data_utils`` wrapper) over items
    already in batching order with these sizes; returns the end position of each batch (batch ``b`` is positions
    ``ends[b - 1] .. ends[b] - 1``, the first starting at 0). Restated from its arithmetic:

    - a batch costs ``items x its longest size`` (padded tokens), at most ``max_tokens``, and holds at most
      ``max_sentences`` items (None: no limit); an item larger than ``max_tokens`` is an error, as in fairseq;
    - items join the open batch only in groups that leave its count below ``multiple`` or at a multiple of it;
      items waiting for their group form a *tail*. When the next item would break a limit, the open batch (without
      the tail) is finished and the tail plus the item open the next one; if the tail with the item alone breaks
      ``max_tokens``, the tail becomes a batch of its own and the item opens the next one;
    - at the end the open batch, then any tail, are batches; when ``multiple > 1`` the last batch is dropped unless
      its count is a multiple of ``multiple`` (fairseq's wrapper).

    >>> budget_batch_ends([5, 5, 5, 4, 4, 3], max_tokens=10)
    [2, 4, 6]
    >>> budget_batch_ends([3] * 7, max_tokens=20, multiple=2)   # 6 fit; the 7th alone is dropped
    [6]
    """
    ends: list[int] = []
    start = commit = 0  # the open batch is [start, commit); the tail [commit, pos)
    batch_max = tail_max = 0
    for pos, n in enumerate(sizes.tolist() if isinstance(sizes, np.ndarray) else [int(x) for x in sizes]):
        if max_tokens is not None and n > max_tokens:
            raise ValueError(f"item {pos} in batching order has size {n}, more than max_tokens {max_tokens} "
                             "(fairseq refuses it too)")
        tail_max = max(tail_max, n)
        count, longest = pos + 1 - start, max(batch_max, tail_max)
        over = ((max_sentences is not None and count > max_sentences)
                or (max_tokens is not None and count * longest > max_tokens))
        if over:
            ends.append(commit)  # the open batch is finished without its tail
            if max_tokens is not None and tail_max * (pos + 1 - commit) > max_tokens:
                ends.append(pos)  # the tail alone, the item starts afresh
                start, tail_max = pos, n
            else:
                start = commit
            commit, batch_max, tail_max = pos + 1, tail_max, 0
        elif count < multiple or count % multiple == 0:
            commit, batch_max, tail_max = pos + 1, longest, 0
    total = len(sizes)
    if total:
        ends.append(commit)
        if commit < total:
            ends.append(total)
    if multiple > 1 and ends and (ends[-1] - (ends[-2] if len(ends) > 1 else 0)) % multiple:
        ends.pop()
    return ends


class _Batches(SequenceABC):
    """Batches as index ranges of one ordering (``order[bounds[b]:bounds[b + 1]]`` for the batch ids ``picked``):
    millions of utterances need no Python list per batch until a batch is served."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray, picked: np.ndarray):
        self.order, self.bounds, self.picked = order, bounds, picked

    def __len__(self) -> int:
        return len(self.picked)

    def __getitem__(self, i):
        b = int(self.picked[i])
        return self.order[self.bounds[b]:self.bounds[b + 1]].tolist()


class EpochBatchSampler(DistributedSampler):
    size_dtype: type = np.float64  # what the per-item sizes are kept as

    def __init__(self, seconds: Sequence[float], *, batch_size: int, max_batch_seconds: float | None,
                 rank: int, world_size: int, shuffle: bool, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seconds = np.asarray(seconds, dtype=self.size_dtype)
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


class TokenBudgetBatchSampler(EpochBatchSampler):
    """The authors' SpeechLM training batches (fairseq ``get_batch_iterator`` with their ``ClusterAlanDataset``).

    Once: items sorted longest first, equal sizes in a seeded random order (their ``ordered_indices``), then cut by
    :func:`budget_batch_ends` (``max_tokens`` per batch = per rank, ``max_sentences``, ``multiple`` = fairseq's
    ``required_batch_size_multiple``, 8 unless a config changes it). Each epoch: the batch order is shuffled (seed,
    epoch) and dealt round-robin, ``batches[rank::world_size]``. Where the count does not divide evenly fairseq gives
    the short ranks an empty batch (which their collate replaces with the dataset's first 64 items); here, as in
    :class:`TrainBatchSampler`, the epoch's first batches are served again, so every rank steps equally often.
    Sizes are whole unit counts, kept as int32 (4 bytes an item; the batching order too, below 2^31 items).
    """
    size_dtype = np.int32

    def __init__(self, sizes: Sequence[float], *, max_tokens: int | None, max_sentences: int | None = None,
                 multiple: int = 8, rank: int = 0, world_size: int = 1, seed: int = 0):
        if max_tokens is None and max_sentences is None:
            raise ValueError("TokenBudgetBatchSampler needs max_tokens or max_sentences (or both)")
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        super().__init__(sizes, batch_size=max_sentences or max(1, len(sizes)), max_batch_seconds=None, rank=rank,
                         world_size=world_size, shuffle=True, seed=seed)
        self.max_tokens, self.max_sentences, self.multiple = max_tokens, max_sentences, multiple
        self._fixed: tuple[np.ndarray, np.ndarray] | None = None

    def fixed_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, bounds)``: the items in batching order and the batch boundaries in it (the same every epoch)."""
        if self._fixed is None:
            sizes = self.seconds
            ties = np.random.default_rng([self.seed, 0x5EED]).permutation(len(sizes))
            order = np.lexsort((ties, sizes))[::-1]  # longest first; equal sizes in a seeded random order
            del ties
            order = order.astype(np.int32 if len(order) < 2 ** 31 else np.int64)
            ends = budget_batch_ends(sizes[order], self.max_tokens, self.max_sentences, self.multiple)
            if not ends:
                raise ValueError(f"no training batch: {len(sizes)} items, and fairseq's rule drops a last batch whose "
                                 f"size is not a multiple of {self.multiple} (lower the multiple or add data)")
            self._fixed = (order, np.array([0, *ends], dtype=np.int64))
        return self._fixed

    def _make(self) -> _Batches:
        order, bounds = self.fixed_batches()
        n = len(bounds) - 1
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        per_rank = math.ceil(n / self.num_replicas)
        dealt = np.resize(perm, per_rank * self.num_replicas)  # repeats from the start when short
        return _Batches(order, bounds, dealt[self.rank::self.num_replicas])
