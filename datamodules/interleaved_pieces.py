"""The piece datasets of the interleaved vocoder LM's data (issue 29, item 2): what
:class:`~datamodules.interleaved_data.InterleavedDataModule` hands its batch samplers and DataLoaders.
:class:`InterleavedPieces` is a split's pieces as the samplers see them (sizes, lengths, one padded batch an item);
:class:`MaterializedPieces` holds every piece built, :class:`OnDemandPieces` rebuilds each from the stores through
:class:`StoreRows` (a store version's utterances by rank), by the index rows of :data:`INDEX` that
:mod:`datamodules.interleaved_index` makes.

Memory: setup makes one pass over the utterances of each split (:func:`~datamodules.interleaved_index.index_pass`:
each one's stream made, cut into pieces,
:attr:`~datamodules.interleaved_data.InterleavedDataModule.generation_stats` counted in histograms, the tokens let
go) and keeps, per piece, 7 int32 (its utterance, its label rows and syllable rows in the stores, its token count and
its authors' size: 28 bytes) and, per utterance with pieces, its rank in the unit store and in the label store (8
bytes): flat in the length of the utterances, the pieces about 4 a LibriSpeech-length utterance at ``max_size`` 128.
A batch rebuilds its pieces (:class:`OnDemandPieces`) from the stores' memory-mapped columns
(:class:`~datamodules.store_columns.StoreView`, shared page cache; picklable, so DataLoader workers map the files
again), reading only each piece's own label and syllable rows: O(the piece), however long its utterance. The
batches are those of ``materialize=True`` (every piece built at setup, int32 tokens and targets: about 4 KB a piece
held, for small stores), the same pieces, sizes, order and padding. A store of the old layout (one ``.npz`` per
shard) is in memory already and is read from there.
"""
from __future__ import annotations

import bisect

import numpy as np
import torch
from torch.utils.data import Dataset

from syllablelm.audio.frames import seconds_to_frames
from syllablelm.units.fine import pool_labels, runs
from syllablelm.units.interleave import IGNORE, InterleavedVocab, authors_size, interleave

from .store_columns import StoreView


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
