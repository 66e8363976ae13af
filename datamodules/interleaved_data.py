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

The parts: the piece datasets, and what a split holds in memory (Memory), are in
:mod:`datamodules.interleaved_pieces`; the pass that indexes the pieces, its pool and its on-disk cache (Persistent
index: ``index_cache``, ``index_workers``) in :mod:`datamodules.interleaved_index`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from syllablelm.audio.frames import HOP
from syllablelm.runtime.fileio import shard_range
from syllablelm.units.interleave import InterleavedVocab

from .distributed import rank_world, resolve_version
from .interleaved_index import (
    INDEX_FORMAT,
    PassSettings,
    generation_caps,
    parallel_pass,
    read_cached_index,
    store_identity,
    write_cached_index,
)
from .interleaved_pieces import InterleavedPieces, MaterializedPieces, OnDemandPieces, StoreRows
from .label_store import LabelStore
from .resume import ResumableData, SeededLoader
from .samplers import EvalBatchSampler, TokenBudgetBatchSampler, TrainBatchSampler
from .unit_store import UnitStore

log = logging.getLogger(__name__)


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
            for it: the same batches, memory flat in the corpus size (:mod:`datamodules.interleaved_pieces`, Memory).
        index_cache: a folder for the piece index of each split: built once (:meth:`prepare_data`, or the first
            :meth:`setup`) and then memory-mapped, under a key of everything it depends on
            (:mod:`datamodules.interleaved_index`, Persistent index). None: every setup makes the pass.
        index_workers: processes of the pass (0: in this process); the same index either way.
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
        index_cache: str | None = None,
        index_workers: int = 0,
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
        if index_workers < 0 or (index_cache is not None and materialize):
            raise ValueError(f"need index_workers >= 0 (got {index_workers}) and no index_cache with materialize "
                             f"(the cache holds the on-demand index)")
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
    def _split_ids(self, unit_ids) -> tuple[list[str], list[str]]:
        """The training and validation ids; ``unit_ids()`` lists the unit store's sorted ids (called only without
        ``train_data``: at LibriLight scale a list of every id is millions of strings)."""
        hp = self.hparams
        if hp.train_data is not None:
            from .manifest import build_manifest

            def ids_of(folders) -> list[str]:
                folders = [folders] if isinstance(folders, str) else list(folders)
                return sorted(build_manifest(folders, verify="header", cache_dir=hp.manifest_cache,
                                             progress=False).ids)
            return ids_of(hp.train_data), ids_of(hp.val_data) if hp.val_data else []
        unit_ids = unit_ids()
        k = round(hp.val_fraction * len(unit_ids))
        held = set(np.random.default_rng(hp.seed).permutation(len(unit_ids))[:k].tolist()) if k else set()
        return ([u for i, u in enumerate(unit_ids) if i not in held], [u for i, u in enumerate(unit_ids) if i in held])

    def _open(self, trainer, *, collective: bool = True) -> dict:
        """The resolved store versions, their loaded contents, their readers and the splits' ids. ``collective``:
        ``"latest"`` resolved on rank 0 and broadcast (:func:`~datamodules.distributed.resolve_version`); without
        it (:meth:`prepare_data`, which other ranks do not call) each caller resolves it itself."""
        hp = self.hparams
        units, labels = UnitStore(hp.unit_dir), LabelStore(hp.label_dir)
        if collective:
            uv, lv = (resolve_version(s, v, trainer) for s, v in ((units, hp.unit_version),
                                                                  (labels, hp.label_version)))
        else:
            uv, lv = units.resolve(hp.unit_version), labels.resolve(hp.label_version)
        unit_loaded, label_loaded = units.load(uv), labels.load(lv)
        train_ids, val_ids = self._split_ids(lambda: sorted(unit_loaded))
        if not train_ids:
            raise ValueError("no training utterances")
        return {"units": units, "labels": labels, "uv": uv, "lv": lv, "loaded": (unit_loaded, label_loaded),
                "sources": (StoreRows(unit_loaded, UnitStore.columns), StoreRows(label_loaded, LabelStore.columns)),
                "splits": (("train", train_ids), ("val", val_ids))}

    def _pass(self, split: str, ids: list[str], ctx: dict) -> dict:
        """Check that both stores hold ``ids``, then one pass over them
        (:func:`~datamodules.interleaved_index.parallel_pass`); the pass's warnings logged, its sums turned into
        :attr:`generation_stats` (training) and examples (validation)."""
        hp = self.hparams
        wheres = (ctx["units"].version_dir(ctx["uv"]), ctx["labels"].version_dir(ctx["lv"]))
        for store, loaded in zip(wheres, ctx["loaded"]):
            missing = [u for u in ids if u not in loaded]
            if missing:
                raise ValueError(f"{store}: {len(missing)} of the {len(ids)} {split} utterances are not in this "
                                 f"store: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        limit = hp.max_size if hp.max_size is not None else hp.max_tokens
        settings = PassSettings(vocab=self.vocab, fine_pool=hp.fine_pool, frames_per_fine=self.frames_per_fine,
                                label_hop=hp.label_hop, lead=hp.lead, grouping=hp.grouping, limit=limit,
                                train=split == "train", materialize=hp.materialize, unit_where=str(wheres[0]),
                                label_where=str(wheres[1]))
        result = parallel_pass(ids, ctx["sources"], settings, hp.index_workers)
        if result["skipped"]:
            log.warning("%d %s utterances have no syllable units and are left out", result["skipped"],
                        "training" if split == "train" else "validation")
        if result["dropped"]:
            log.warning("%d fine units dropped: a group and its fine units alone exceed max_size %s",
                        result["dropped"], limit)
        result["generation_stats"] = generation_caps(result, hp.label_hop) if split == "train" else {}
        return result

    def index_key(self, split: str, ids: list[str], ctx: dict) -> str:
        """The name of a split's cached index: a hash of everything the index depends on (the two store versions'
        manifests, the split's utterance ids, every setting of the pass,
        :data:`~datamodules.interleaved_index.INDEX_FORMAT`)."""
        hp, vocab = self.hparams, self.vocab
        settings = {"format": INDEX_FORMAT, "split": split, "units": store_identity(ctx["units"], ctx["uv"]),
                    "labels": store_identity(ctx["labels"], ctx["lv"]), "fine_pool": hp.fine_pool,
                    "label_hop": hp.label_hop, "lead": float(hp.lead), "grouping": hp.grouping,
                    "max_size": hp.max_size if hp.max_size is not None else hp.max_tokens,
                    "fine_vocab": vocab.fine, "syllable_vocab": vocab.syllable}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for u in ids:
            h.update(u.encode() + b"\0")
        return f"{split}-{h.hexdigest()[:32]}"

    def _cached(self, split: str, ids: list[str], ctx: dict) -> dict:
        """A split's index from ``index_cache``: read (memory-mapped) when its key's folder exists, otherwise built
        by a pass, written and read back."""
        folder = Path(self.hparams.index_cache) / self.index_key(split, ids, ctx)
        if not folder.exists():
            result = self._pass(split, ids, ctx)
            examples = [{"id": e["id"], **{k: np.asarray(e[k]).tolist() for k in e if k != "id"}}
                        for e in result["examples"]]
            write_cached_index(folder, result, {"generation_stats": result["generation_stats"],
                                                "val_examples": examples, "utterances": len(ids)})
            log.info("interleaved: wrote the %s piece index (%d pieces) to %s", split, len(result["sizes"]), folder)
        else:
            log.info("interleaved: reading the cached %s piece index %s", split, folder)
        cached = read_cached_index(folder)
        cached["examples"] = [{"id": e["id"], **{k: np.asarray(e[k], dtype=np.int64) for k in e if k != "id"}}
                              for e in cached["val_examples"]]
        return cached

    def prepare_data(self) -> None:
        """With ``index_cache``: build each split's index unless cached (Lightning calls this once per node, on
        local rank 0, before any rank's :meth:`setup`; ``"latest"`` store versions are resolved here alone)."""
        if self.hparams.index_cache is None:
            return
        ctx = self._open(None, collective=False)
        for split, ids in ctx["splits"]:
            if ids:
                self._cached(split, ids, ctx)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        ctx = self._open(self.trainer)
        vocab = self.vocab
        for split, ids in ctx["splits"]:
            if not ids:
                continue
            result = self._cached(split, ids, ctx) if hp.index_cache is not None else self._pass(split, ids, ctx)
            if hp.materialize:
                pieces = MaterializedPieces.build(result["built"], vocab)
            else:
                pieces = OnDemandPieces(*ctx["sources"], result["ranks"], result["index"], result["sizes"], vocab,
                                        fine_pool=hp.fine_pool, frames_per_fine=self.frames_per_fine, lead=hp.lead,
                                        grouping=hp.grouping)
            if split == "train":
                self.datasets["train"] = pieces
                self.generation_stats = result["generation_stats"]
            else:
                self._val_examples = list(result["examples"])
                if len(pieces):
                    rank, world = rank_world(self.trainer)
                    self.datasets["val"] = pieces.subset(*shard_range(len(pieces), rank, world))
        log.info("interleaved: %d train pieces, %d val pieces (this rank), %d fine + %d syllable units, "
                 "%d 50 Hz frames per fine frame, pieces %s", len(self.datasets["train"]),
                 len(self.datasets.get("val", ())), vocab.fine, vocab.syllable, self.frames_per_fine,
                 "built" if hp.materialize else "read on demand")

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
