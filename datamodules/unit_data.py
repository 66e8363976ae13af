"""Unit sequences from a unit store (:mod:`datamodules.unit_store`) for the SpeechLM.

    dm = UnitsDataModule(unit_dir="runs/tiny/units", val_fraction=0.1, context_length=256, batch_size=16)

Sequences. BOS and EOS are one id, ``S = vocab_size`` (:mod:`syllablelm.models.gpt`), so one ``S`` both ends an
utterance and starts the next: utterances (sorted by id) become the stream ``S u1 .. un S v1 .. vm S ...``.
A *window* is a slice of ``context_length + 1`` tokens; the model reads ``window[:-1]`` and predicts
``window[1:]`` (padding: target -100).

- ``pack=True`` (default): the stream is cut into windows that overlap by one token (window k starts at
  ``k * context_length``), so every token but the first ``S`` is a target exactly once per epoch and no
  position is wasted on padding; context runs across utterance boundaries (fairseq's ``TokenBlockDataset``).
- ``pack=False``: one window per utterance, ``S u1 .. un S``. Training crops utterances longer than the context
  to a random window (seeded by seed, epoch and item: identical on every rank and in any worker); validation
  splits them into consecutive windows instead, so every token is still scored exactly once.

Resume: a checkpoint holds the next training batch and a restarted run serves from there (:mod:`datamodules.resume`).

Sharding. Training: :class:`~datamodules.samplers.TrainBatchSampler` over window lengths — the same seeded
per-epoch shuffle on every rank, batches dealt round-robin with equal counts per rank (DDP steps in lock-step;
a few batches repeat when they do not divide evenly). Packed windows all have one length, so its length
bucketing is a no-op there and only matters for ``pack=False``. Validation: the windows of the whole split are
built identically on every rank and each rank takes an unrepeated contiguous range of them
(:func:`~syllablelm.runtime.fileio.shard_range`); summing token log-likelihoods and token counts over ranks gives the
exact corpus perplexity.

``unit_variant`` is the training store's unit variant (``authors_lm`` or ``dedup``, :mod:`datamodules.unit_store`;
None for a store that does not record one); a separate validation store must hold the same variant. The SpeechLM
keeps it in its checkpoints so pair scoring can tokenize the same way (:mod:`syllablelm.evaluation.lm_scoring`).

``vocab_size`` comes from the store manifest; the SpeechLM's ``network.vocab_size`` must equal it (configs
write it explicitly; the module checks at setup). Memory: the stream is one uint16 array (2 bytes per unit);
``UnitStore.load`` briefly holds every entry's (n, 3) float64 array while it is built.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from syllablelm.runtime.fileio import shard_range

from .distributed import rank_world, resolve_version
from .resume import ResumableData, SeededLoader
from .samplers import EvalBatchSampler, TrainBatchSampler
from .unit_store import UnitStore

log = logging.getLogger(__name__)


def unit_stream(units: Sequence[np.ndarray], sep: int) -> tuple[np.ndarray, np.ndarray]:
    """``S u1 .. un S v1 .. S`` and each utterance's start (the index of its leading ``S``); utterance i is
    ``stream[start_i : start_i + n_i + 2]`` (it shares its closing ``S`` with the next one)."""
    n = np.array([len(u) for u in units], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n + 1)[:-1]]).astype(np.int64)
    dtype = np.uint16 if sep < np.iinfo(np.uint16).max else np.int32
    stream = np.full(int(n.sum() + len(n) + 1), sep, dtype=dtype)
    for s, u in zip(starts, units):
        stream[s + 1:s + 1 + len(u)] = u
    return stream, starts


def split_windows(start: int, length: int, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of at most ``context_length + 1`` tokens over ``[start, start + length)`` that overlap by one:
    each token after the first is a target exactly once. Returns ``(starts, lengths)``."""
    offsets = np.arange(0, max(1, length - 1), context_length, dtype=np.int64)
    return start + offsets, np.minimum(context_length + 1, length - offsets)


class UnitWindows(Dataset):
    """Windows ``stream[s : s + l]`` as batches. Items are ``(epoch, [window indices], batch index)`` from the
    batch samplers (the batch keeps ``position = (epoch, batch index)``, :mod:`datamodules.resume`);
    a window longer than ``context_length + 1`` is cropped at a random offset seeded by (seed, epoch, index)."""

    def __init__(self, stream: np.ndarray, starts: np.ndarray, lengths: np.ndarray, *, context_length: int,
                 pad_id: int, seed: int = 0):
        self.stream, self.starts, self.lengths = stream, np.asarray(starts), np.asarray(lengths)
        self.context_length, self.pad_id, self.seed = context_length, pad_id, seed

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per window after cropping (the samplers batch by these)."""
        return np.minimum(self.lengths, self.context_length + 1).astype(np.float64)

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, i: int, epoch: int = 0) -> np.ndarray:
        s, n = int(self.starts[i]), int(self.lengths[i])
        if n > self.context_length + 1:
            s += int(np.random.default_rng([self.seed, epoch, i]).integers(0, n - self.context_length))
            n = self.context_length + 1
        return self.stream[s:s + n].astype(np.int64)

    def __getitem__(self, item: tuple[int, list[int], int]) -> dict:
        epoch, indices, *index = item
        windows = [self.window(i, epoch) for i in indices]
        T = max(len(w) for w in windows) - 1
        inp = torch.full((len(windows), T), self.pad_id, dtype=torch.long)
        tgt = torch.full((len(windows), T), -100, dtype=torch.long)
        for b, w in enumerate(windows):
            w = torch.from_numpy(w)
            inp[b, :len(w) - 1], tgt[b, :len(w) - 1] = w[:-1], w[1:]
        return {"input": inp, "target": tgt,  # (B, T) each
                "position": (int(epoch), int(index[0]) if index else -1)}


class UnitsDataModule(ResumableData, pl.LightningDataModule):
    """Unit sequences for the SpeechLM (module docstring: packing, cropping, sharding).

    Args:
        unit_dir, version: the training unit store and its version (``"latest"``: the newest complete one,
            resolved on rank 0 and broadcast).
        val_unit_dir, val_version: a separate validation store; without one, ``val_fraction`` of the training
            utterances (a seeded random choice, the same on every rank) is held out. Neither: no validation.
        context_length: tokens the model reads per window (at most the model's ``block_size``).
        batch_size: windows per batch per rank; ``max_batch_tokens`` also caps padded tokens per batch.
        pack: pack utterances into full windows (True) or one (cropped) window per utterance.
    """

    def __init__(
        self,
        *,
        unit_dir: str,
        version: int | Literal["latest"] = "latest",
        val_unit_dir: str | None = None,
        val_version: int | Literal["latest"] = "latest",
        val_fraction: float = 0.0,
        context_length: int = 1024,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        pack: bool = True,
        num_workers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        if context_length < 1 or batch_size < 1 or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"need context_length >= 1, batch_size >= 1, 0 <= val_fraction < 1; got "
                             f"{context_length}, {batch_size}, {val_fraction}")
        self.save_hyperparameters()
        self.context_length = context_length
        self.datasets: dict[str, UnitWindows] = {}
        self.ids: dict[str, list[str]] = {}  # utterances of each split, in stream order
        self._vocab: int | None = None
        self._variant: tuple[str | None] | None = None  # (variant,) once read: None is a valid answer

    # ---- ranks and versions (as datamodules/speech.py) ----------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        return rank_world(self.trainer)

    def _resolve(self, store: UnitStore, version) -> int:
        return resolve_version(store, version, self.trainer)

    @property
    def vocab_size(self) -> int:
        """Units are ``0 .. vocab_size - 1`` (the training store's manifest)."""
        if self._vocab is None:
            store = UnitStore(self.hparams.unit_dir)
            v = self.hparams.version
            self._vocab = store.vocab_size(store.resolve(v))
        return self._vocab

    @property
    def unit_variant(self) -> str | None:
        """The training store's unit variant (``authors_lm`` / ``dedup``; None if its manifest records none)."""
        if self._variant is None:
            store = UnitStore(self.hparams.unit_dir)
            v = self.hparams.version
            self._variant = (store.variant(store.resolve(v)),)
        return self._variant[0]

    # ---- setup --------------------------------------------------------------------------------------------
    def _load(self, root: str, version) -> tuple[dict[str, np.ndarray], int, str | None]:
        store = UnitStore(root)
        v = self._resolve(store, version)
        units = {utt: u for utt, (_, u) in store.load(v).items()}
        vocab = store.vocab_size(v)
        bad = [utt for utt, u in units.items() if len(u) and int(u.max()) >= vocab]
        if bad:
            raise ValueError(f"{store.version_dir(v)}: {len(bad)} utterances (e.g. {bad[0]!r}) hold unit ids >= "
                             f"the manifest's vocab_size {vocab}")
        return units, vocab, store.variant(v)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        train, self._vocab, variant = self._load(hp.unit_dir, hp.version)
        self._variant = (variant,)
        if hp.val_unit_dir is not None:
            val, val_vocab, val_variant = self._load(hp.val_unit_dir, hp.val_version)
            if val_vocab != self._vocab:
                raise ValueError(f"validation units have vocab_size {val_vocab}, training units {self._vocab}")
            if None not in (variant, val_variant) and val_variant != variant:
                raise ValueError(f"validation units are {val_variant!r} units, training units {variant!r} "
                                 "(syllablelm units --variant): write both stores with the same variant")
        else:
            ids = sorted(train)
            held = np.random.default_rng(hp.seed).permutation(len(ids))[: round(hp.val_fraction * len(ids))]
            val = {ids[i]: train.pop(ids[i]) for i in sorted(held)}
        self.ids = {"train": sorted(train), "val": sorted(val)}
        self.datasets["train"] = self.windows(train, train=True)
        if val:
            rank, world = self._rank_world()
            full = self.windows(val, train=False)
            lo, hi = shard_range(len(full), rank, world)
            self.datasets["val"] = UnitWindows(full.stream, full.starts[lo:hi], full.lengths[lo:hi],
                                               context_length=hp.context_length, pad_id=self._vocab)
        log.info("units: %d train windows, %d val windows (this rank), vocab %d, %s units",
                 len(self.datasets["train"]), len(self.datasets.get("val", ())), self._vocab, variant or "unrecorded")

    def windows(self, units: dict[str, np.ndarray], *, train: bool) -> UnitWindows:
        """All windows of a split (utterances sorted by id; see the module docstring)."""
        C, sep = self.hparams.context_length, self.vocab_size
        ids = sorted(units)
        stream, starts = unit_stream([units[i] for i in ids], sep)
        if self.hparams.pack:
            w_starts, w_lengths = split_windows(0, len(stream), C)
        else:
            utt_lengths = np.array([len(units[i]) + 2 for i in ids], dtype=np.int64)
            if train:  # one window each; the dataset crops the long ones at random
                w_starts, w_lengths = starts, utt_lengths
                if (cropped := int((utt_lengths > C + 1).sum())):
                    log.warning("%d of %d training utterances are longer than the context (%d) and are cropped",
                                cropped, len(ids), C)
            else:
                parts = [split_windows(s, n, C) for s, n in zip(starts, utt_lengths)]
                w_starts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
                w_lengths = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return UnitWindows(stream, w_starts, w_lengths, context_length=C, pad_id=sep, seed=self.hparams.seed)

    # ---- loaders ------------------------------------------------------------------------------------------
    def _loader(self, dataset: UnitWindows, sampler, *, training: bool = False) -> DataLoader:
        n = self.hparams.num_workers
        return SeededLoader(dataset, sampler=sampler, seed=self.hparams.seed, num_workers=n, persistent_workers=False,
                            epoch_of=self.training_epoch if training else None, pin_memory=torch.cuda.is_available(),
                            prefetch_factor=2 if n > 0 else None)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        rank, world = self._rank_world()
        ds = self.datasets["train"]
        return self._loader(ds, self.resumable(TrainBatchSampler(ds.sizes, batch_size=hp.batch_size,
                                                                 max_batch_seconds=hp.max_batch_tokens, rank=rank,
                                                                 world_size=world, seed=hp.seed)), training=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        ds = self.datasets["val"]
        return self._loader(ds, EvalBatchSampler(ds.sizes, batch_size=self.hparams.batch_size,
                                                 max_batch_seconds=self.hparams.max_batch_tokens))
