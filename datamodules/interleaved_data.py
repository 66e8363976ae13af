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
Memory: every piece is built at setup (int32 tokens and targets in one array each): fine for LibriSpeech-scale
stores; LibriLight-scale training needs an on-demand path (not built).
"""
from __future__ import annotations

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
    InterleavedVocab,
    authors_size,
    interleave,
    split_pieces,
    stretch_lengths,
)

from .distributed import rank_world, resolve_version
from .label_store import LabelStore
from .resume import ResumableData, SeededLoader
from .samplers import EvalBatchSampler, TokenBudgetBatchSampler, TrainBatchSampler
from .unit_store import UnitStore

log = logging.getLogger(__name__)


class InterleavedPieces(Dataset):
    """Pieces held as one token array and one target array (int32) with offsets; items are ``(epoch, [piece
    indices], batch index)`` from the batch samplers."""

    def __init__(self, tokens: np.ndarray, targets: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, pad: int):
        self.tokens, self.targets, self.offsets = tokens, targets, offsets
        self.sizes = np.asarray(sizes)  # the authors' size of each piece (what the token budget counts)
        self.pad = pad

    @classmethod
    def build(cls, pieces, vocab: InterleavedVocab) -> "InterleavedPieces":
        lengths = np.array([len(p.tokens) for p in pieces], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        cat = (lambda xs: np.concatenate(xs).astype(np.int32)) if pieces else (lambda xs: np.zeros(0, np.int32))
        sizes = np.array([authors_size(int((p.tokens < vocab.fine).sum()), int(p.is_syllable.sum())) for p in pieces],
                         dtype=np.int32)
        return cls(cat([p.tokens for p in pieces]), cat([p.targets for p in pieces]), offsets, sizes, vocab.pad)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def piece(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[lo:hi].astype(np.int64), self.targets[lo:hi].astype(np.int64)

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
        built = {split: self._build(ids, unit_loaded, label_loaded, units.version_dir(uv), labels.version_dir(lv),
                                    train=split == "train")
                 for split, ids in (("train", train_ids), ("val", val_ids))}
        self.datasets["train"] = InterleavedPieces.build(built["train"], vocab)
        if len(val_ids) and built["val"]:
            full = InterleavedPieces.build(built["val"], vocab)
            rank, world = rank_world(self.trainer)
            lo, hi = shard_range(len(full), rank, world)
            o = full.offsets
            self.datasets["val"] = InterleavedPieces(full.tokens[o[lo]:o[hi]], full.targets[o[lo]:o[hi]],
                                                     o[lo:hi + 1] - o[lo], full.sizes[lo:hi], vocab.pad)
        log.info("interleaved: %d train pieces, %d val pieces (this rank), %d fine + %d syllable units, "
                 "%d 50 Hz frames per fine frame", len(self.datasets["train"]), len(self.datasets.get("val", ())),
                 vocab.fine, vocab.syllable, self.frames_per_fine)

    def _build(self, ids, unit_loaded, label_loaded, unit_where, label_where, *, train: bool) -> list:
        """Every piece of ``ids``; on the training split also :attr:`generation_stats`; on the validation split the
        first utterances as :meth:`val_examples`."""
        hp, vocab = self.hparams, self.vocab
        limit = hp.max_size if hp.max_size is not None else hp.max_tokens
        pieces, stretches, tails, skipped, dropped, seconds, n_syl = [], [], [], 0, 0, 0.0, 0
        for utt in ids:
            segments, syl = unit_loaded[utt]
            labels = np.asarray(label_loaded[utt], dtype=np.int64)
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
                stretches.append(lengths[:-1])
                tails.append(lengths[-1])
                seconds += len(labels) * hp.label_hop / 16000
                n_syl += len(syl)
            elif len(self._val_examples) < 4:
                self._val_examples.append({"id": utt, "syllables": np.asarray(syl), "fine_units": fine,
                                           "fine_durations": durations})
            if limit is None:
                pieces.append(stream)
            else:
                cut, lost = split_pieces(stream, vocab, limit)
                pieces.extend(cut)
                dropped += lost
        if skipped:
            log.warning("%d %s utterances have no syllable units and are left out", skipped,
                        "training" if train else "validation")
        if dropped:
            log.warning("%d fine units dropped: a group and its fine units alone exceed max_size %s", dropped, limit)
        if train:
            stretch = np.concatenate(stretches) if stretches else np.zeros(0, np.int64)
            self.generation_stats = {
                "stretch_max": int(stretch.max()) if stretch.size else 0,
                "stretch_q99": int(math.ceil(np.quantile(stretch, 0.99))) if stretch.size else 0,
                "tail_q90": int(math.ceil(np.quantile(tails, 0.9))) if tails else 0,
                "max_piece_tokens": max((len(p.tokens) for p in pieces), default=0),
                "syllables_per_second": n_syl / seconds if seconds else 0.0,
                "fine_per_syllable": float(stretch.mean()) if stretch.size else 0.0,
            }
        return pieces

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
