"""Unit sequences from a unit store (:mod:`datamodules.unit_store`) for the SpeechLM.

    dm = UnitsDataModule(unit_dir="runs/tiny/units", val_fraction=0.1, context_length=256, batch_size=16)
    dm = UnitsDataModule(unit_dir="runs/librilight/units", pack=False, collate="authors", max_tokens=160,
                         batch_size=None, context_length=161)   # the authors' batches (paper configs)

Sequences. BOS and EOS are one id, ``S = vocab_size`` (:mod:`syllablelm.models.gpt`), so one ``S`` both ends an
utterance and starts the next: utterances (sorted by id) become the stream ``S u1 .. un S v1 .. vm S ...``.
A *window* is a slice of ``context_length + 1`` tokens; the model reads ``window[:-1]`` and predicts
``window[1:]`` (padding: target -100).

- ``pack=True`` (default): the stream is cut into windows that overlap by one token (window k starts at
  ``k * context_length``), so every token but the first ``S`` is a target exactly once per epoch and no
  position is wasted on padding; context runs across utterance boundaries (fairseq's ``TokenBlockDataset``).
- ``pack=False`` (``collate="eos_after_each"``): one window per utterance, ``S u1 .. un S``. Training crops
  utterances longer than the context to a random window (seeded by seed, epoch and item: identical on every rank
  and in any worker); validation splits them into consecutive windows instead, so every token is still scored
  exactly once.
- ``pack=False, collate="authors"``: training batches as the authors' ``ClusterAlanDataset.collater``
  (``end_stop=True``) builds them, one utterance per row, no context across utterances. For a batch whose longest
  utterance has ``N`` units, a row holding ``u1 .. un`` is (:class:`AuthorsUtterances`)::

      input   S   u1 .. un  P .. P          (N + 1 columns; P = -100 mod (V + 1), see below)
      target  u1 .. un  -100 .. -100  S     (the stop token in the LAST column, whatever n is)
      padding F   F  .. F   T  .. T         (``padding_mask``: the model hides these keys, as their attention does)

  so a row shorter than the batch is never trained to stop after its last unit: its stop token is predicted at
  column ``N`` from a padding position. Their padding value -100 indexes their embedding table from the end (row
  ``V + 1 - 100`` of ``V + 1``), and that is the id written here (``-100 mod (V + 1)``; their code cannot index a
  table of fewer than 100 rows, which this rule also covers). They collate ``N + 2`` columns and drop the last
  column's output; here the input stops one column earlier, which changes no logit (causal attention). Batches
  follow fairseq's token budget (:class:`~datamodules.samplers.TokenBudgetBatchSampler`): ``max_tokens`` per rank
  counted as ``rows x longest unit count`` (fairseq's ``num_tokens`` is their manifest's size column, here the
  unit count), whole split sorted longest first, row counts a multiple of ``batch_multiple`` (8) or below it.
  Utterances longer than ``min(context_length - 1, max_tokens)`` units (fairseq refuses items over
  ``max_tokens``; the model has ``context_length`` positions) are cut into the fewest consecutive pieces of
  near-equal length within that limit, each a row of its own (their manifest's utterances, a segmentation in
  neither repository, all fit the budget). Validation scores each utterance as their collate does for a batch of
  one (``S u1 .. un S``, the ``pack=False`` windows): the corpus perplexity then depends neither on batching nor on
  the number of ranks.

Resume: a checkpoint holds the next training batch and a restarted run serves from there (:mod:`datamodules.resume`).

Sharding. Training: :class:`~datamodules.samplers.TrainBatchSampler` over window lengths (or, for
``collate="authors"``, :class:`~datamodules.samplers.TokenBudgetBatchSampler` over unit counts) — the same seeded
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
write it explicitly; the module checks at setup). Memory: the stream is never built. :class:`UnitStream` reads
it on demand from the unit store's memory-mapped unit column (:class:`~datamodules.store_columns.StoreView`),
holding per utterance its rank in the store's sorted ids and where it starts in the stream (int32 + int64) and
its unit count (int32, shared by the splits); windows and rows are slices of it, so a batch is identical to one
cut from the materialized stream. A store of the old layout (one ``.npz`` per shard) is read into memory as
before (``syllablelm store-convert`` rewrites it as columns).
"""
from __future__ import annotations

import logging
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from syllablelm.runtime.fileio import shard_range

from .distributed import rank_world, resolve_version
from .resume import ResumableData, SeededLoader
from .samplers import EvalBatchSampler, TokenBudgetBatchSampler, TrainBatchSampler
from .store_columns import StoreView
from .unit_store import UnitStore, largest_unit

log = logging.getLogger(__name__)
COLLATES = ("eos_after_each", "authors")  # UnitsDataModule.collate; the first is the default


class UnitSource:
    """The utterances of one loaded unit-store version in sorted id order (what :meth:`UnitStore.load` returned):
    their unit counts, ids and units on demand. A column-layout version is read from its maps; an old-layout one
    (a dict) from memory."""

    def __init__(self, loaded):
        self.view = loaded if isinstance(loaded, StoreView) else None
        if self.view is not None:
            self.lengths = np.asarray(self.view.counts(), dtype=np.int32)
        else:
            self._ids = sorted(loaded)
            self._units = [loaded[i][1] for i in self._ids]
            self.lengths = np.array([len(u) for u in self._units], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def id(self, k: int) -> str:
        return self.view.id_at(k) if self.view is not None else self._ids[k]

    def units(self, k: int, lo: int, hi: int) -> np.ndarray:
        """Units ``[lo, hi)`` of the ``k``-th utterance."""
        return self.view.rows(k, lo, hi, "units") if self.view is not None else self._units[k][lo:hi]


class UnitStream:
    """``S u1 .. un S v1 .. S`` over some utterances of a :class:`UnitSource` (``order``: their ranks, in stream
    order), as one array would hold it, but read on demand: ``stream[a:b]`` gathers the units it spans
    (module docstring, Memory). ``starts[i]`` is the index of utterance ``i``'s leading ``S``."""

    def __init__(self, source: UnitSource, order: np.ndarray | None, sep: int):
        self.source, self.order, self.sep = source, None if order is None else np.asarray(order, np.int32), sep
        n = self.lengths()
        # starts[i] = sum over j < i of (n_j + 1), made without int64 temporaries the size of the corpus
        self.starts = np.zeros(len(n), dtype=np.int64)
        np.cumsum(n[:-1], dtype=np.int64, out=self.starts[1:])
        for lo in range(1, len(n), 1 << 20):
            self.starts[lo:lo + (1 << 20)] += np.arange(lo, min(len(n), lo + (1 << 20)), dtype=np.int64)
        self.size = int(n.sum(dtype=np.int64)) + len(n) + 1
        self.dtype = np.dtype(np.uint16 if sep < np.iinfo(np.uint16).max else np.int32)

    def __len__(self) -> int:
        return self.size

    def ranks(self) -> np.ndarray:
        """The source ranks of the stream's utterances, in stream order."""
        return np.arange(len(self.source)) if self.order is None else self.order

    def lengths(self) -> np.ndarray:
        """Units per utterance, in stream order."""
        return self.source.lengths if self.order is None else self.source.lengths[self.order]

    def __array__(self, dtype=None, copy=None):
        out = self[0:self.size]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, window: slice) -> np.ndarray:
        a, b, step = window.indices(self.size)
        if step != 1:
            raise IndexError("a unit stream is read in contiguous slices")
        out = np.full(max(0, b - a), self.sep, dtype=self.dtype)
        i = int(np.searchsorted(self.starts, a, side="right")) - 1  # the utterance whose S is at or before a
        while i < len(self.starts) and self.starts[i] < b:
            first = int(self.starts[i]) + 1  # the stream index of its first unit
            k = i if self.order is None else int(self.order[i])
            lo, hi = max(a, first), min(b, first + int(self.source.lengths[k]))
            if hi > lo:
                out[lo - a:hi - a] = self.source.units(k, lo - first, hi - first)
            i += 1
        return out


def split_windows(start: int, length: int, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of at most ``context_length + 1`` tokens over ``[start, start + length)`` that overlap by one:
    each token after the first is a target exactly once. Returns ``(starts, lengths)``."""
    offsets = np.arange(0, max(1, length - 1), context_length, dtype=np.int64)
    return start + offsets, np.minimum(context_length + 1, length - offsets)


class UnitWindows(Dataset):
    """Windows ``stream[s : s + l]`` as batches. Items are ``(epoch, [window indices], batch index)`` from the
    batch samplers (the batch keeps ``position = (epoch, batch index)``, :mod:`datamodules.resume`);
    a window longer than ``context_length + 1`` is cropped at a random offset seeded by (seed, epoch, index)."""

    def __init__(self, stream: np.ndarray | UnitStream, starts: np.ndarray, lengths: np.ndarray, *,
                 context_length: int, pad_id: int, seed: int = 0):
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


def authors_pad_id(vocab_size: int) -> int:
    """The embedding row the authors' model reads at a padding position: their collate pads with -100 and their
    ``embed_weight[input_tokens]`` indexes from the end, ``-100 mod (vocab_size + 1)``.

    >>> authors_pad_id(8192), authors_pad_id(1024)
    (8093, 925)
    """
    return -100 % (vocab_size + 1)


def split_pieces(lengths: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each length ``n`` cut into ``k = max(1, ceil(n / limit))`` consecutive pieces whose lengths differ by at most
    one (the first ``n mod k`` one longer). Returns ``(owner, offset, length)`` per piece: which input it belongs
    to, where it starts in it, how long it is.

    >>> split_pieces(np.array([3, 7, 0]), 3)
    (array([0, 1, 1, 1, 2]), array([0, 0, 3, 5, 0]), array([3, 3, 2, 2, 0]))
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    k = np.maximum(1, -(-lengths // limit))
    owner = np.repeat(np.arange(len(lengths)), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)  # piece number inside its input
    q, r = lengths[owner] // k[owner], lengths[owner] % k[owner]
    return owner, j * q + np.minimum(j, r), q + (j < r)


class AuthorsUtterances(Dataset):
    """Training rows of the authors' collate (module docstring): piece ``i`` is the ``lengths[i]`` units that start
    ``offsets[i]`` units into utterance ``owners[i]`` of the stream, ``stream[starts[i] : starts[i] + lengths[i]]``
    with ``starts[i] = stream.starts[owners[i]] + 1 + offsets[i]``. ``owners`` None: row ``i`` is utterance ``i``;
    ``offsets`` None: every row starts at its utterance's first unit (nothing was split), so a million rows cost
    4 bytes each. Items are ``(epoch, [piece indices], batch index)`` from the batch sampler; a batch is ``input``,
    ``target`` and ``padding_mask`` (B, N + 1) each, and its ``position``."""

    def __init__(self, stream: UnitStream, lengths: np.ndarray, *, stop_id: int, owners: np.ndarray | None = None,
                 offsets: np.ndarray | None = None):
        self.stream, self.lengths, self.owners, self.offsets = stream, np.asarray(lengths), owners, offsets
        self.stop_id, self.pad_id = stop_id, authors_pad_id(stop_id)

    def start(self, i: int) -> int:
        owner = i if self.owners is None else int(self.owners[i])
        return int(self.stream.starts[owner]) + 1 + (0 if self.offsets is None else int(self.offsets[i]))

    @property
    def starts(self) -> np.ndarray:
        """Every row's first stream index (made when asked)."""
        return np.array([self.start(i) for i in range(len(self))], dtype=np.int64)

    @property
    def sizes(self) -> np.ndarray:
        """Units per row: what fairseq's ``num_tokens`` counts for the token budget."""
        return self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, item: tuple[int, list[int], int]) -> dict:
        epoch, indices, *index = item
        n = [int(self.lengths[i]) for i in indices]
        B, N = len(indices), max(n)
        inp = torch.full((B, N + 1), self.pad_id, dtype=torch.long)
        tgt = torch.full((B, N + 1), -100, dtype=torch.long)
        pad = torch.zeros((B, N + 1), dtype=torch.bool)
        inp[:, 0], tgt[:, N] = self.stop_id, self.stop_id  # BOS first; the stop token in the last column
        for b, (i, m) in enumerate(zip(indices, n)):
            s = self.start(i)
            u = torch.from_numpy(self.stream[s:s + m].astype(np.int64))
            inp[b, 1:m + 1], tgt[b, :m], pad[b, m + 1:] = u, u, True
        return {"input": inp, "target": tgt, "padding_mask": pad,  # (B, N + 1) each
                "position": (int(epoch), int(index[0]) if index else -1)}


class UnitsDataModule(ResumableData, pl.LightningDataModule):
    """Unit sequences for the SpeechLM (module docstring: packing, cropping, sharding).

    Args:
        unit_dir, version: the training unit store and its version (``"latest"``: the newest complete one,
            resolved on rank 0 and broadcast).
        val_unit_dir, val_version: a separate validation store; without one, ``val_fraction`` of the training
            utterances (a seeded random choice, the same on every rank) is held out. Neither: no validation.
        context_length: tokens the model reads per window (at most the model's ``block_size``).
        batch_size: windows per batch per rank; ``max_batch_tokens`` also caps padded tokens per batch (with
            ``collate="authors"``, of validation batches only). With
            ``collate="authors"``: at most this many rows per training batch (fairseq's ``dataset.batch_size``;
            None, as in the authors' runs: no row limit).
        pack: pack utterances into full windows (True) or one window per utterance (False).
        collate: with ``pack=False``, ``"eos_after_each"`` (``S u1 .. un S`` per row, long ones cropped) or
            ``"authors"`` (their collate and fairseq's token budget; module docstring).
        max_tokens: ``collate="authors"``: fairseq's ``max_tokens``, per rank and batch, counted as rows x longest
            unit count (None: rows limited by ``batch_size`` only). Validation batches cap padded tokens with it
            too unless ``max_batch_tokens`` is given.
        batch_multiple: ``collate="authors"``: fairseq's ``required_batch_size_multiple`` (8 by default there; the
            authors' configs leave it).
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
        batch_size: int | None = 16,
        max_batch_tokens: int | None = None,
        pack: bool = True,
        collate: Literal["eos_after_each", "authors"] = "eos_after_each",
        max_tokens: int | None = None,
        batch_multiple: int = 8,
        num_workers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        if context_length < 1 or (batch_size is not None and batch_size < 1) or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"need context_length >= 1, batch_size >= 1, 0 <= val_fraction < 1; got "
                             f"{context_length}, {batch_size}, {val_fraction}")
        if collate not in COLLATES:
            raise ValueError(f"collate must be one of {', '.join(COLLATES)}, got {collate!r}")
        if collate == "authors":
            if pack:
                raise ValueError("collate: authors builds one utterance per row (their collate): set pack: false")
            if context_length < 2 or batch_multiple < 1 or (max_tokens is not None and max_tokens < 1):
                raise ValueError(f"collate: authors needs context_length >= 2, batch_multiple >= 1, max_tokens >= 1; "
                                 f"got {context_length}, {batch_multiple}, {max_tokens}")
            if max_tokens is None and batch_size is None:
                raise ValueError("collate: authors needs max_tokens (fairseq's token budget) or batch_size")
        elif max_tokens is not None or batch_size is None:
            raise ValueError("max_tokens and batch_size: null belong to collate: authors (fairseq's token budget); "
                             "the other layouts batch by batch_size (and max_batch_tokens)")
        self.save_hyperparameters()
        self.context_length = context_length
        self.datasets: dict[str, UnitWindows | AuthorsUtterances] = {}
        self._splits: dict[str, UnitStream] = {}  # the stream of each split
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
    @property
    def ids(self) -> dict[str, list[str]]:
        """The utterances of each split, in stream order (made when asked: not held)."""
        return {split: [st.source.id(int(k)) for k in st.ranks()] for split, st in self._splits.items()}

    def _load(self, root: str, version) -> tuple[UnitSource, int, str | None]:
        store = UnitStore(root)
        v = self._resolve(store, version)
        loaded = store.load(v)
        vocab = store.vocab_size(v)
        if (top := largest_unit(loaded)) >= vocab:
            raise ValueError(f"{store.version_dir(v)}: holds unit ids up to {top}, not below the manifest's "
                             f"vocab_size {vocab}")
        return UnitSource(loaded), vocab, store.variant(v)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        train, self._vocab, variant = self._load(hp.unit_dir, hp.version)
        self._variant = (variant,)
        train_order = None  # every utterance, in sorted id order (the store's order)
        if hp.val_unit_dir is not None:
            val, val_vocab, val_variant = self._load(hp.val_unit_dir, hp.val_version)
            if val_vocab != self._vocab:
                raise ValueError(f"validation units have vocab_size {val_vocab}, training units {self._vocab}")
            if None not in (variant, val_variant) and val_variant != variant:
                raise ValueError(f"validation units are {val_variant!r} units, training units {variant!r} "
                                 "(syllablelm units --variant): write both stores with the same variant")
            val_order = None
        else:
            k = round(hp.val_fraction * len(train))
            held = np.random.default_rng(hp.seed).permutation(len(train))[:k] if k else np.zeros(0, np.int64)
            val, val_order = train, np.sort(held).astype(np.int32)
            train_order = np.delete(np.arange(len(train), dtype=np.int32), held)
        sep = self.vocab_size
        self._splits = {"train": UnitStream(train, train_order, sep), "val": UnitStream(val, val_order, sep)}
        self.datasets["train"] = self.windows(self._splits["train"], train=True)
        if len(self._splits["val"].starts):
            rank, world = self._rank_world()
            full = self.windows(self._splits["val"], train=False)
            lo, hi = shard_range(len(full), rank, world)
            self.datasets["val"] = UnitWindows(full.stream, full.starts[lo:hi], full.lengths[lo:hi],
                                               context_length=hp.context_length, pad_id=self._vocab)
        log.info("units: %d train sequences, %d val windows (this rank), vocab %d, %s units",
                 len(self.datasets["train"]), len(self.datasets.get("val", ())), self._vocab, variant or "unrecorded")

    def windows(self, stream: UnitStream, *, train: bool) -> UnitWindows | AuthorsUtterances:
        """All windows of a split (utterances sorted by id; see the module docstring); the training rows of
        ``collate="authors"``."""
        C, sep = self.hparams.context_length, self.vocab_size
        starts = stream.starts
        n_units = stream.lengths()
        if train and self.hparams.collate == "authors":
            return self.authors_rows(stream, n_units)
        if self.hparams.pack:
            w_starts, w_lengths = split_windows(0, len(stream), C)
        else:
            utt_lengths = n_units.astype(np.int64) + 2
            if train:  # one window each; the dataset crops the long ones at random
                w_starts, w_lengths = starts, utt_lengths
                if (cropped := int((utt_lengths > C + 1).sum())):
                    log.warning("%d of %d training utterances are longer than the context (%d) and are cropped",
                                cropped, len(utt_lengths), C)
            else:
                parts = [split_windows(s, n, C) for s, n in zip(starts, utt_lengths)]
                w_starts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
                w_lengths = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return UnitWindows(stream, w_starts, w_lengths, context_length=C, pad_id=sep, seed=self.hparams.seed)

    def authors_rows(self, stream: UnitStream, n_units: np.ndarray) -> AuthorsUtterances:
        """One row per utterance, or per piece of one longer than ``min(context_length - 1, max_tokens)`` units."""
        hp = self.hparams
        limit = hp.context_length - 1 if hp.max_tokens is None else min(hp.context_length - 1, hp.max_tokens)
        n_units = np.asarray(n_units, dtype=np.int32)
        long = np.flatnonzero(n_units > limit)
        if not len(long):
            return AuthorsUtterances(stream, n_units, stop_id=self.vocab_size)
        # split_pieces over the long utterances only; every other utterance is one row (4 bytes a row per array)
        owner, offset, length = split_pieces(n_units[long], limit)
        pieces = np.ones(len(n_units), dtype=np.int32)
        pieces[long] = np.bincount(owner, minlength=len(long))
        owners = np.repeat(np.arange(len(n_units), dtype=np.int32), pieces)
        rows = np.searchsorted(owners, long)[owner] + (np.arange(len(owner)) - np.searchsorted(owner, owner))
        offsets, lengths = np.zeros(len(owners), dtype=np.int32), n_units[owners]
        offsets[rows], lengths[rows] = offset, length
        log.warning("%d of %d training utterances are longer than %d units (min(context_length - 1, max_tokens)): "
                    "each is cut into consecutive pieces of near-equal length, %d rows in all", len(long),
                    len(n_units), limit, len(owners))
        return AuthorsUtterances(stream, lengths, stop_id=self.vocab_size, owners=owners, offsets=offsets)

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
        if hp.collate == "authors":
            sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=hp.max_tokens, max_sentences=hp.batch_size,
                                              multiple=hp.batch_multiple, rank=rank, world_size=world, seed=hp.seed)
        else:
            sampler = TrainBatchSampler(ds.sizes, batch_size=hp.batch_size, max_batch_seconds=hp.max_batch_tokens,
                                        rank=rank, world_size=world, seed=hp.seed)
        return self._loader(ds, self.resumable(sampler), training=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        hp, ds = self.hparams, self.datasets["val"]
        cap = hp.max_batch_tokens if hp.max_batch_tokens is not None else hp.max_tokens
        return self._loader(ds, EvalBatchSampler(ds.sizes, batch_size=hp.batch_size or max(1, len(ds)),
                                                 max_batch_seconds=cap))
