"""Interleaved syllable + fine unit streams for the interleaved vocoder LM (issue 29, item 2).

    dm = InterleavedDataModule(unit_dir="runs/tiny/units", label_dir="runs/tiny/labels", fine_pool=2,
                               train_data=["data/synth/train"], val_data=["data/synth/dev"], max_tokens=256)

Inputs: syllable units from a unit store (:mod:`datamodules.unit_store`: ``(segments (n, 2) seconds, units (n,))``,
the vocabulary in its manifest) and fine units from a label store (:mod:`datamodules.label_store`: each file's
whole k-means label sequence, one label per ``label_hop`` samples from sample 0: 320 (50 Hz) for the labels stage,
640 for a 25 Hz encoder such as TWIST's mHuBERT). ``fine_pool`` majority-pools the labels over blocks of that many
(:func:`syllablelm.units.fine.pool_labels`: 2 turns 50 Hz labels into 25 Hz ones); the fine units are the runs of
the result (:func:`syllablelm.units.fine.runs`), each fine frame ``frames_per_fine = label_hop / 320 x fine_pool``
frames of 50 Hz. Syllable segments go to 50 Hz frames with :func:`syllablelm.audio.frames.seconds_to_frames`. Each
utterance becomes one stream by :func:`syllablelm.units.interleave.interleave` (the authors' ``interleave_strat``
5, ``lead`` frames, ``grouping`` syllables a group); an utterance without syllables is left out (logged).

Splits: both stores hold every split. With ``train_data`` / ``val_data`` (data folders, as the other stages take
them) a split is the utterances of those folders (their manifest ids); otherwise every utterance of the unit store
trains and ``val_fraction`` of them (a seeded choice, as :class:`~datamodules.unit_data.UnitsDataModule`) is held
out. Every utterance of a split must be in both stores: a missing one is an error naming the store and the ids.

Batches as the authors' (``ClusterAlanDatasetInterleaved`` under fairseq): their ``dataset.max_tokens`` (128 in the
paper run, per GPU, on 2 GPUs) is fairseq's token budget, not a crop: a batch holds rows x (the largest size in it)
<= max_tokens, where an utterance's size is fine units + 3 x syllables
(:func:`~syllablelm.units.interleave.authors_size`; the stream itself is fine units + 2 x syllables at grouping 1).
fairseq refuses an item larger than ``max_tokens`` and their task filters nothing, so every item of their manifest
was at most 128 in size: pieces of about 3-4 s of speech cut before the manifest, by code in neither repository.
Here an utterance larger than ``max_size`` (default ``max_tokens``) is cut into consecutive pieces at group starts
(:func:`~syllablelm.units.interleave.split_pieces`: whole blocks greedily; a single over-long block keeps its first
fine units), each starting with a group and ending in a position that predicts nothing, as an utterance does.
``max_tokens`` batches with :class:`~datamodules.samplers.TokenBudgetBatchSampler` (longest first, rows a multiple
of ``batch_multiple`` or below it, batch order shuffled per epoch); without it, ``batch_size`` pieces a batch. A
batch is ``input`` (B, T) padded with the vocabulary's padding id, ``target`` (padding -100: the padding id is never
a target), ``padding_mask`` (True = padding: the model hides those keys, as the authors' attention) and its
``position`` (:mod:`datamodules.resume`: a restarted run serves the batches the first would have served next).

:attr:`InterleavedDataModule.generation_stats` (training split, whole utterances) gives the generation caps the LM
keeps in its checkpoints: fine units per stretch between two groups, after the last group, and the longest piece.
Memory: setup makes one pass over the utterances of each split (each one's stream made, cut into pieces,
:attr:`generation_stats` counted in histograms, the tokens let go) and keeps, per piece, 7 int32 (its utterance,
its label rows and syllable rows in the stores, its token count and its authors' size: 28 bytes) and, per utterance
with pieces, its rank in the unit store and in the label store (8 bytes): flat in the length of the utterances, the
pieces about 4 a LibriSpeech-length utterance at ``max_size`` 128. A batch rebuilds its pieces
(:class:`OnDemandPieces`) from the stores' memory-mapped columns
(:class:`~datamodules.store_columns.StoreView`, shared page cache; picklable, so DataLoader workers map the files
again), reading only each piece's own label and syllable rows: O(the piece), however long its utterance. The
batches are those of ``materialize=True`` (every piece built at setup, int32 tokens and targets: about 4 KB a piece
held, for small stores), the same pieces, sizes, order and padding. A store of the old layout (one ``.npz`` per
shard) is in memory already and is read from there.
"""
from __future__ import annotations

import array
import bisect
import logging
import math
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from syllablelm.audio.frames import HOP, seconds_to_frames
from syllablelm.runtime.fileio import shard_range
from syllablelm.units.fine import pool_labels, runs
from syllablelm.units.interleave import (
    IGNORE,
    Interleaved,
    InterleavedVocab,
    authors_size,
    group_starts,
    interleave,
    split_pieces,
    stretch_lengths,
)

from .distributed import rank_world, resolve_version
from .label_store import LabelStore
from .resume import ResumableData, SeededLoader
from .samplers import EvalBatchSampler, TokenBudgetBatchSampler, TrainBatchSampler
from .store_columns import StoreView
from .unit_store import UnitStore

log = logging.getLogger(__name__)


class InterleavedPieces(Dataset):
    """A split's pieces as the batch samplers see them: ``sizes`` (the authors' size of each piece, what the token
    budget counts), ``lengths`` (tokens) and :meth:`piece`; items are ``(epoch, [piece indices], batch index)`` and
    become one padded batch. :class:`MaterializedPieces` holds the tokens, :class:`OnDemandPieces` rebuilds them."""

    sizes: np.ndarray
    pad: int

    @property
    def lengths(self) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.sizes)

    def piece(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Piece ``i``'s tokens and targets (int64)."""
        raise NotImplementedError

    def subset(self, lo: int, hi: int) -> "InterleavedPieces":
        """Pieces ``[lo, hi)`` (a rank's share of the validation pieces)."""
        raise NotImplementedError

    def __getitem__(self, item: tuple[int, list[int], int]) -> dict:
        epoch, indices, *index = item
        rows = [self.piece(i) for i in indices]
        T = max(len(t) for t, _ in rows)
        inp = torch.full((len(rows), T), self.pad, dtype=torch.long)
        tgt = torch.full((len(rows), T), IGNORE, dtype=torch.long)
        for b, (t, y) in enumerate(rows):
            inp[b, :len(t)], tgt[b, :len(t)] = torch.from_numpy(t), torch.from_numpy(y)
        return {"input": inp, "target": tgt, "padding_mask": inp == self.pad,  # (B, T) each
                "position": (int(epoch), int(index[0]) if index else -1)}


class MaterializedPieces(InterleavedPieces):
    """Every piece built: one token array and one target array (int32) with offsets (``materialize=True``)."""

    def __init__(self, tokens: np.ndarray, targets: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, pad: int):
        self.tokens, self.targets, self.offsets = tokens, targets, offsets
        self.sizes = np.asarray(sizes)
        self.pad = pad

    @classmethod
    def build(cls, pieces, vocab: InterleavedVocab) -> "MaterializedPieces":
        lengths = np.array([len(p.tokens) for p in pieces], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        cat = (lambda xs: np.concatenate(xs).astype(np.int32)) if pieces else (lambda xs: np.zeros(0, np.int32))
        sizes = np.array([authors_size(int((p.tokens < vocab.fine).sum()), int(p.is_syllable.sum())) for p in pieces],
                         dtype=np.int32)
        return cls(cat([p.tokens for p in pieces]), cat([p.targets for p in pieces]), offsets, sizes, vocab.pad)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def piece(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[lo:hi].astype(np.int64), self.targets[lo:hi].astype(np.int64)

    def subset(self, lo: int, hi: int) -> "MaterializedPieces":
        o = self.offsets
        return MaterializedPieces(self.tokens[o[lo]:o[hi]], self.targets[o[lo]:o[hi]], o[lo:hi + 1] - o[lo],
                                  self.sizes[lo:hi], self.pad)


class StoreRows:
    """The utterances of one loaded store version addressed by rank in sorted id order: rows ``[lo, hi)`` of a
    column of one utterance. A column-layout version (:class:`~datamodules.store_columns.StoreView`) is read from
    its maps (a view, no copy; picklable, a DataLoader worker maps the files again); an old-layout one (a dict,
    already in memory) from its values, ``columns`` naming the parts of a value (one column: the value itself)."""

    def __init__(self, loaded, columns: tuple[str, ...]):
        self.loaded, self.columns = loaded, columns
        self.view = loaded if isinstance(loaded, StoreView) else None
        if self.view is None:
            self._ids = sorted(loaded)

    def rank(self, utt: str) -> int:
        if self.view is not None:
            return int(self.view.position(utt))
        return bisect.bisect_left(self._ids, utt)

    def rows(self, k: int, lo: int, hi: int, column: str) -> np.ndarray:
        if self.view is not None:
            return self.view.rows(k, lo, hi, column)
        value = self.loaded[self._ids[k]]
        return (value if len(self.columns) == 1 else value[self.columns.index(column)])[lo:hi]


# the columns of OnDemandPieces.index: the utterance (a row of ``ranks``), its label rows [label_lo, label_hi), its
# syllable rows [syllable_lo, syllable_hi) (the piece's syllables and the next one, when there is one), the tokens
INDEX = ("utterance", "label_lo", "label_hi", "syllable_lo", "syllable_hi", "length")


class OnDemandPieces(InterleavedPieces):
    """Pieces rebuilt from the memory-mapped stores when a batch asks for them (the default; module docstring,
    Memory). Per piece ``index`` (int32, columns :data:`INDEX`) and ``sizes`` (int32); per utterance ``ranks``
    ``(n, 2)`` int32, its rank in the unit store and in the label store.

    A piece starts with a group at syllable ``j0`` and fine unit ``i0`` of its utterance, after
    ``p0 = durations[:i0].sum()`` fine frames. Its fine units are the runs of its own label rows (the pooled frames
    ``[p0, p1)`` start and end runs, and pooling works on blocks aligned to the utterance's start, so pooling and
    run-finding the rows alone gives the same units and durations); the interleaving rule placed its tokens by
    comparing fine midpoints with syllable starts, both measured from the utterance's start, so the same tokens
    come out of :func:`~syllablelm.units.interleave.interleave` given the piece's fine units, its syllables and the
    next one (the next group's start decides where the piece's last fine units go), with the syllable frames moved
    back by ``p0 x frames_per_fine`` (integers, exact; a fine unit lasts at least one frame, so the clip at 0 of
    "start minus lead" never decides differently). The first ``length`` tokens are the piece; its last target is
    :data:`~syllablelm.units.interleave.IGNORE`, as :func:`~syllablelm.units.interleave.split_pieces` sets it.
    Reading and rebuilding cost O(the piece), whatever the utterance's length."""

    def __init__(self, units: StoreRows, labels: StoreRows, ranks: np.ndarray, index: np.ndarray, sizes: np.ndarray,
                 vocab: InterleavedVocab, *, fine_pool: int, frames_per_fine: int, lead: float, grouping: int):
        self.units, self.labels, self.ranks, self.index = units, labels, ranks, index
        self.sizes = np.asarray(sizes)
        self.vocab, self.pad = vocab, vocab.pad
        self.fine_pool, self.frames_per_fine, self.lead, self.grouping = fine_pool, frames_per_fine, lead, grouping

    @property
    def lengths(self) -> np.ndarray:
        return self.index[:, INDEX.index("length")].astype(np.int64)

    def piece(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        u, l_lo, l_hi, s_lo, s_hi, length = (int(x) for x in self.index[i])
        unit_rank, label_rank = (int(x) for x in self.ranks[u])
        labels = np.asarray(self.labels.rows(label_rank, l_lo, l_hi, "values"), dtype=np.int64)
        fine, durations = runs(pool_labels(labels, self.fine_pool))
        syllables = np.asarray(self.units.rows(unit_rank, s_lo, s_hi, "units"), dtype=np.int64)
        frames = seconds_to_frames(self.units.rows(unit_rank, s_lo, s_hi, "segments"))
        frames = frames - (l_lo // self.fine_pool) * self.frames_per_fine
        stream = interleave(fine, durations, syllables, frames, self.vocab, frames_per_fine=self.frames_per_fine,
                            lead=self.lead, grouping=self.grouping)
        tokens, targets = stream.tokens[:length], stream.targets[:length].copy()
        targets[-1] = IGNORE
        return tokens, targets

    def subset(self, lo: int, hi: int) -> "OnDemandPieces":
        return OnDemandPieces(self.units, self.labels, self.ranks, self.index[lo:hi], self.sizes[lo:hi], self.vocab,
                              fine_pool=self.fine_pool, frames_per_fine=self.frames_per_fine, lead=self.lead,
                              grouping=self.grouping)


def piece_index(stream: Interleaved, pieces: list[Interleaved], durations: np.ndarray, num_labels: int,
                num_syllables: int, vocab: InterleavedVocab, fine_pool: int) -> np.ndarray:
    """The :data:`INDEX` rows (without the utterance column) of ``pieces``, the consecutive pieces
    :func:`~syllablelm.units.interleave.split_pieces` cut from ``stream`` (or ``[stream]``): ``(len(pieces), 5)``
    int64. A piece starts at the group of its first syllable (syllables are never dropped, so that is the count of
    the pieces before it), its first fine unit is the number of fine tokens before that group in ``stream``."""
    t = stream.tokens
    starts = group_starts(t, vocab)
    syllables_before = np.r_[0, np.cumsum(stream.is_syllable)][starts]  # syllables before each group
    fine_before = np.r_[0, np.cumsum(t < vocab.fine)]
    frames_before = np.r_[0, np.cumsum(durations)]  # pooled fine frames before each fine unit
    out = np.zeros((len(pieces), 5), dtype=np.int64)
    s_lo = 0
    for k, p in enumerate(pieces):
        n_fine, n_syl = int((p.tokens < vocab.fine).sum()), int(p.is_syllable.sum())
        g = int(np.searchsorted(syllables_before, s_lo))
        i0 = int(fine_before[starts[g]])
        out[k] = (frames_before[i0] * fine_pool, min(int(frames_before[i0 + n_fine]) * fine_pool, num_labels),
                  s_lo, min(s_lo + n_syl + 1, num_syllables), len(p.tokens))
        s_lo += n_syl
    return out


def quantile_of_counts(counts: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear interpolation) of the values a histogram holds (``counts[v]``:
    how many equal ``v``, at least one in all), without the values: the index ``(n - 1) q``, the two order
    statistics around it and numpy's interpolation between them (``a + (b - a) t``, or ``b - (b - a) (1 - t)`` from
    ``t = 0.5`` on), in float64 as numpy computes them, so the result is the same number."""
    n = int(counts.sum())
    v = np.float64(n - 1) * np.float64(q)
    lo = min(int(np.floor(v)), n - 1)
    t = v - np.float64(lo)
    cum = np.cumsum(counts)
    a, b = (np.float64(int(np.searchsorted(cum, r, side="right"))) for r in (lo, min(lo + 1, n - 1)))
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


class InterleavedDataModule(ResumableData, pl.LightningDataModule):
    """Interleaved streams for :class:`lightning_modules.interleaved_lm.InterleavedLMModule` (module docstring).

    Args:
        unit_dir, unit_version: the syllable unit store and its version (``"latest"``: the newest complete one).
        label_dir, label_version: the label store of the fine units and its version.
        label_hop: samples per stored label (320: 50 Hz, the ``labels`` stage; 640 for a 25 Hz encoder).
        fine_pool: majority-pool the stored labels over blocks of this many (1: none; 2: 50 Hz -> 25 Hz).
        fine_vocab_size, syllable_vocab_size: vocabulary sizes (default: the label store's ``num_labels`` and the unit
            store's ``vocab_size``); larger values keep another model's id layout (the authors' 1024 fine slots).
        lead, grouping: the interleaving rule's lead (50 Hz frames) and syllables per group.
        train_data, val_data: data folders whose utterances make each split (module docstring).
        val_fraction: without ``train_data``, the share of the unit store's utterances held out (seeded).
        max_tokens: the authors' token budget per batch and rank (None: ``batch_size`` pieces a batch).
        max_size: the largest piece (authors' size); longer utterances are cut (default ``max_tokens``; None with
            no ``max_tokens``: never cut).
        batch_size: pieces per batch (with ``max_tokens``: at most this many, None for no limit).
        batch_multiple: with ``max_tokens``, fairseq's ``required_batch_size_multiple``.
        materialize: build every piece at setup and hold them (int32 tokens and targets); the default (False)
            holds a small index per piece and rebuilds each piece from the memory-mapped stores when a batch asks
            for it: the same batches, memory flat in the corpus size (module docstring, Memory).
    """

    def __init__(
        self,
        *,
        unit_dir: str,
        label_dir: str,
        unit_version: int | Literal["latest"] = "latest",
        label_version: int | Literal["latest"] = "latest",
        label_hop: int = HOP,
        fine_pool: int = 1,
        fine_vocab_size: int | None = None,
        syllable_vocab_size: int | None = None,
        lead: float = 5,
        grouping: int = 1,
        train_data: list[str] | None = None,
        val_data: list[str] | None = None,
        val_fraction: float = 0.0,
        max_tokens: int | None = None,
        max_size: int | None = None,
        batch_size: int | None = 16,
        batch_multiple: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        manifest_cache: str | None = None,
        materialize: bool = False,
    ):
        super().__init__()
        if fine_pool < 1 or label_hop < 1 or label_hop % HOP or grouping < 1:
            raise ValueError(f"need fine_pool >= 1, grouping >= 1 and label_hop a multiple of {HOP}; got "
                             f"{fine_pool}, {grouping}, {label_hop}")
        if not 0.0 <= val_fraction < 1.0 or (batch_size is not None and batch_size < 1):
            raise ValueError(f"need 0 <= val_fraction < 1 and batch_size >= 1, got {val_fraction}, {batch_size}")
        if max_tokens is None and batch_size is None:
            raise ValueError("set max_tokens (the authors' token budget) or batch_size")
        if (max_tokens is not None and max_tokens < 1) or batch_multiple < 1:
            raise ValueError(f"need max_tokens >= 1 and batch_multiple >= 1, got {max_tokens}, {batch_multiple}")
        if val_data is not None and train_data is None:
            raise ValueError("val_data needs train_data (the utterances of the training folders)")
        self.save_hyperparameters()
        self.datasets: dict[str, InterleavedPieces] = {}
        self._vocab: InterleavedVocab | None = None
        self.generation_stats: dict = {}
        self._val_examples: list[dict] = []

    # ---- vocabulary ---------------------------------------------------------------------------------------
    @property
    def frames_per_fine(self) -> int:
        """50 Hz frames per fine frame."""
        return self.hparams.label_hop // HOP * self.hparams.fine_pool

    @property
    def vocab(self) -> InterleavedVocab:
        if self._vocab is None:
            hp = self.hparams
            units, labels = UnitStore(hp.unit_dir), LabelStore(hp.label_dir)
            stored_s = units.vocab_size(units.resolve(hp.unit_version))
            stored_f = labels.num_labels(labels.resolve(hp.label_version))
            for name, given, stored, where in (
                    ("fine_vocab_size", hp.fine_vocab_size, stored_f, hp.label_dir),
                    ("syllable_vocab_size", hp.syllable_vocab_size, stored_s, hp.unit_dir)):
                if given is not None and given < stored:
                    raise ValueError(f"{name} {given} is smaller than the {stored} units of the store {where}")
            self._vocab = InterleavedVocab(fine=hp.fine_vocab_size or stored_f,
                                           syllable=hp.syllable_vocab_size or stored_s)
        return self._vocab

    # ---- setup --------------------------------------------------------------------------------------------
    def _split_ids(self, unit_ids: list[str]) -> tuple[list[str], list[str]]:
        hp = self.hparams
        if hp.train_data is not None:
            from .manifest import build_manifest

            def ids_of(folders) -> list[str]:
                folders = [folders] if isinstance(folders, str) else list(folders)
                return sorted(build_manifest(folders, verify="header", cache_dir=hp.manifest_cache,
                                             progress=False).ids)
            return ids_of(hp.train_data), ids_of(hp.val_data) if hp.val_data else []
        k = round(hp.val_fraction * len(unit_ids))
        held = set(np.random.default_rng(hp.seed).permutation(len(unit_ids))[:k].tolist()) if k else set()
        return ([u for i, u in enumerate(unit_ids) if i not in held], [u for i, u in enumerate(unit_ids) if i in held])

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        units, labels = UnitStore(hp.unit_dir), LabelStore(hp.label_dir)
        uv, lv = resolve_version(units, hp.unit_version, self.trainer), resolve_version(labels, hp.label_version,
                                                                                       self.trainer)
        unit_loaded, label_loaded = units.load(uv), labels.load(lv)
        train_ids, val_ids = self._split_ids(sorted(unit_loaded))
        for split, ids in (("train", train_ids), ("val", val_ids)):
            for store, loaded in ((units.version_dir(uv), unit_loaded), (labels.version_dir(lv), label_loaded)):
                missing = [u for u in ids if u not in loaded]
                if missing:
                    raise ValueError(f"{store}: {len(missing)} of the {len(ids)} {split} utterances are not in this "
                                     f"store: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if not train_ids:
            raise ValueError("no training utterances")
        vocab = self.vocab
        sources = (StoreRows(unit_loaded, UnitStore.columns), StoreRows(label_loaded, LabelStore.columns))
        self.datasets["train"] = self._build(train_ids, sources, units.version_dir(uv), labels.version_dir(lv),
                                             train=True)
        if len(val_ids):
            full = self._build(val_ids, sources, units.version_dir(uv), labels.version_dir(lv), train=False)
            if len(full):
                rank, world = rank_world(self.trainer)
                self.datasets["val"] = full.subset(*shard_range(len(full), rank, world))
        log.info("interleaved: %d train pieces, %d val pieces (this rank), %d fine + %d syllable units, "
                 "%d 50 Hz frames per fine frame, pieces %s", len(self.datasets["train"]),
                 len(self.datasets.get("val", ())), vocab.fine, vocab.syllable, self.frames_per_fine,
                 "built" if hp.materialize else "read on demand")

    def _build(self, ids, sources: tuple[StoreRows, StoreRows], unit_where, label_where, *,
               train: bool) -> InterleavedPieces:
        """The pieces of ``ids`` in one pass over their utterances (each one's stream made, cut and, unless
        ``materialize``, indexed and let go); on the training split also :attr:`generation_stats` (from histograms
        of the stretch and tail lengths, so the pass holds no per-group arrays); on the validation split the first
        utterances as :meth:`val_examples`."""
        hp, vocab = self.hparams, self.vocab
        unit_rows, label_rows = sources
        limit = hp.max_size if hp.max_size is not None else hp.max_tokens
        built: list[Interleaved] = []  # materialize only
        columns = {c: array.array("q") for c in (*INDEX, "size")}  # grows without a Python object per piece
        ranks = {"unit": array.array("q"), "label": array.array("q")}
        stretch_counts, tail_counts = np.zeros(1, np.int64), np.zeros(1, np.int64)
        stretch_sum, skipped, dropped, seconds, n_syl, longest = 0, 0, 0, 0.0, 0, 0

        def add_counts(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
            c = np.bincount(values, minlength=len(counts))
            c[:len(counts)] += counts
            return c

        for utt in ids:
            segments, syl = unit_rows.loaded[utt]
            labels = np.asarray(label_rows.loaded[utt], dtype=np.int64)
            if len(syl) and (syl.max() >= vocab.syllable):
                raise ValueError(f"{unit_where}: utterance {utt!r} holds syllable unit {int(syl.max())}, not below "
                                 f"the vocabulary's {vocab.syllable}")
            if len(labels) and labels.max() >= vocab.fine:
                raise ValueError(f"{label_where}: utterance {utt!r} holds label {int(labels.max())}, not below the "
                                 f"vocabulary's {vocab.fine} fine units")
            if not len(syl):
                skipped += 1
                continue
            fine, durations = runs(pool_labels(labels, hp.fine_pool))
            stream = interleave(fine, durations, syl, seconds_to_frames(segments), vocab,
                                frames_per_fine=self.frames_per_fine, lead=hp.lead, grouping=hp.grouping)
            if train:
                lengths = stretch_lengths(stream.tokens, vocab)
                stretch_counts = add_counts(stretch_counts, lengths[:-1])
                tail_counts = add_counts(tail_counts, lengths[-1:])
                stretch_sum += int(lengths[:-1].sum())
                seconds += len(labels) * hp.label_hop / 16000
                n_syl += len(syl)
            elif len(self._val_examples) < 4:
                self._val_examples.append({"id": utt, "syllables": np.asarray(syl), "fine_units": fine,
                                           "fine_durations": durations})
            if limit is None:
                cut = [stream]
            else:
                cut, lost = split_pieces(stream, vocab, limit)
                dropped += lost
            longest = max([longest, *(len(p.tokens) for p in cut)])
            if hp.materialize:
                built.extend(cut)
                continue
            rows = piece_index(stream, cut, durations, len(labels), len(syl), vocab, hp.fine_pool)
            for c, values in zip(INDEX[1:], rows.T):
                columns[c].extend(values.tolist())
            columns["utterance"].extend([len(ranks["unit"])] * len(cut))
            columns["size"].extend(authors_size(int((p.tokens < vocab.fine).sum()), int(p.is_syllable.sum()))
                                   for p in cut)
            ranks["unit"].append(unit_rows.rank(utt))
            ranks["label"].append(label_rows.rank(utt))
        if skipped:
            log.warning("%d %s utterances have no syllable units and are left out", skipped,
                        "training" if train else "validation")
        if dropped:
            log.warning("%d fine units dropped: a group and its fine units alone exceed max_size %s", dropped, limit)
        if train:
            n_stretch, n_tail = int(stretch_counts.sum()), int(tail_counts.sum())
            self.generation_stats = {
                "stretch_max": int(np.flatnonzero(stretch_counts).max()) if n_stretch else 0,
                "stretch_q99": int(math.ceil(quantile_of_counts(stretch_counts, 0.99))) if n_stretch else 0,
                "tail_q90": int(math.ceil(quantile_of_counts(tail_counts, 0.9))) if n_tail else 0,
                "max_piece_tokens": longest,
                "syllables_per_second": n_syl / seconds if seconds else 0.0,
                "fine_per_syllable": stretch_sum / n_stretch if n_stretch else 0.0,
            }
        if hp.materialize:
            return MaterializedPieces.build(built, vocab)

        def as_int32(values: array.array) -> np.ndarray:
            x = np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, np.int64)
            if x.size and x.max() > np.iinfo(np.int32).max:
                raise ValueError(f"{unit_where}, {label_where}: an index value {int(x.max())} does not fit int32")
            return x.astype(np.int32)
        index = np.stack([as_int32(columns[c]) for c in INDEX], 1) if len(columns["size"]) else \
            np.zeros((0, len(INDEX)), np.int32)
        return OnDemandPieces(unit_rows, label_rows, np.stack([as_int32(ranks["unit"]), as_int32(ranks["label"])], 1),
                              index, as_int32(columns["size"]), vocab, fine_pool=hp.fine_pool,
                              frames_per_fine=self.frames_per_fine, lead=hp.lead, grouping=hp.grouping)

    def val_examples(self, n: int = 2) -> list[dict]:
        """The first ``n`` validation utterances (at most 4): ``id``, ``syllables``, ``fine_units``,
        ``fine_durations`` (what the LM's validation vocodes)."""
        return self._val_examples[:n]

    # ---- loaders ------------------------------------------------------------------------------------------
    def _loader(self, dataset, sampler, *, training: bool = False) -> DataLoader:
        n = self.hparams.num_workers
        return SeededLoader(dataset, sampler=sampler, seed=self.hparams.seed, num_workers=n, persistent_workers=False,
                            epoch_of=self.training_epoch if training else None, pin_memory=torch.cuda.is_available(),
                            prefetch_factor=2 if n > 0 else None)

    def train_dataloader(self) -> DataLoader:
        hp, ds = self.hparams, self.datasets["train"]
        rank, world = rank_world(self.trainer)
        if hp.max_tokens is not None:
            sampler = TokenBudgetBatchSampler(ds.sizes, max_tokens=hp.max_tokens, max_sentences=hp.batch_size,
                                              multiple=hp.batch_multiple, rank=rank, world_size=world, seed=hp.seed)
        else:
            sampler = TrainBatchSampler(ds.lengths.astype(np.float64), batch_size=hp.batch_size, rank=rank,
                                        world_size=world, seed=hp.seed)
        return self._loader(ds, self.resumable(sampler), training=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        hp, ds = self.hparams, self.datasets["val"]
        return self._loader(ds, EvalBatchSampler(ds.lengths.astype(np.float64),
                                                 batch_size=hp.batch_size or max(1, len(ds)),
                                                 max_batch_seconds=hp.max_tokens))
