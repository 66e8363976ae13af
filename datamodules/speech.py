"""The one speech DataModule shared by every stage (LibriSpeech / LibriLight / any audio folder).

Example (tiny synthetic corpus made by ``syllablelm synth --out data/synth``)::

    dm = SpeechDataModule(train_dirs=["data/synth/train"], val_dirs=["data/synth/dev"],
                          alignment_dir="data/synth/alignments", crop_seconds=8.0, batch_size=8)

Under DDP, training batches are sharded by rank (equal counts per rank); validation, test, predict and the
offline passes of later stages (:meth:`offline_dataloader`) read an unrepeated contiguous shard per rank, so
every utterance is seen exactly once and metrics are exact. Long files are cut at pauses into chunks of at most
``chunk_seconds`` for offline passes; each chunk's ``offset`` maps results back to file time.

Manifests are built in ``setup``, which Lightning runs on every rank. With one process, ``prepare_data`` builds them
first, as before (it runs on the first process of each node, before ``setup``). With a trainer of several processes
(and ``shared_manifest_cache``, the default) ``prepare_data`` leaves them alone and ``setup`` builds them together:
every rank lists the files and decodes only its share of those the cache does not cover yet, rank 0 merges the
shares into the cache between two barriers of the trainer's strategy, and every rank reads the merged cache
(:mod:`datamodules.manifest_cache`, "Sharded verification"); each file is decoded once in all. The manifest cache folder
must then be shared by every rank (all nodes), or the ranks stop with an error naming the part or the cache they
waited for (after at most a minute); with ``shared_manifest_cache=False`` (node-local caches) the first process of
each node decodes every file in ``prepare_data`` and the others read its cache, as before. Manifests asked for
later (outside ``setup``, or by a process without a trainer) are built by that process alone.

Manifests, items and the id lookups are columns (:class:`~datamodules.manifest.Manifest`,
:class:`~datamodules.dataset.Items`): DataLoader workers, forked anew every epoch, share them with the main process
instead of copying per-file objects, so their private memory does not grow with the corpus. The boundaries the
datasets hold are a :class:`~datamodules.dataset.Swappable` that forwards to the loaded version's mapping (any
read-only ``Mapping`` a store returns); the stores validate against the manifests' ``id -> seconds`` and ``id ->
samples`` views (:class:`~datamodules.manifest.ByIdView`), not dicts over every file.

Checkpoints hold the boundary version in use and the next training batch (:mod:`datamodules.resume`): a run
restarted from one reads the same version and serves exactly the batches the interrupted run had not trained on.
Each batch's ``segments`` are cut from the version in use when the batch reaches the model (in the main process),
never from what a DataLoader worker forked before a regeneration still holds.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Iterator, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from syllablelm.audio.alignments import SegmentError, index_alignments, load_alignment
from syllablelm.audio.io import SAMPLE_RATE, AudioError, chunk_at_pauses, pause_chunks, read_audio
from syllablelm.runtime.fileio import shard_range
from syllablelm.runtime.outcome import record_skip

from .boundary_store import BoundaryStore
from .contracts import SpeechBatch
from .dataset import CropMode, Items, SpeechDataset, Swappable, attach_segments, collate, keep_batch, record_unreadable
from .distributed import rank_world, resolve_version
from .label_store import LabelStore
from .manifest import ByIdView, Manifest, Ranks, Verify, build_manifest, librilight_voice_activity
from .resume import ResumableData, SeededLoader
from .samplers import EvalBatchSampler, TrainBatchSampler

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test", "predict"]


class SpeechDataModule(ResumableData, pl.LightningDataModule):
    """Audio (+ optional alignments, + optional boundary-store version) for every stage. Implements
    :class:`datamodules.contracts.RegenerationData` (what the boundary-regeneration callback uses).

    Args:
        train_dirs, val_dirs, test_dirs, predict_dirs: audio folders (any depth) or files per split;
            without ``predict_dirs`` predict reads the training set as fit sees it (``train_hours`` subset
            included): LossPred and unit extraction label exactly what SylBoost trains on.
        predict_extra_dirs: without ``predict_dirs``, predict reads these folders too (after the training set):
            e.g. the validation set, which SylBoost's validation needs LossPred boundaries for.
        alignment_dir: folder of ``<id>.json`` alignment files (searched recursively).
        boundary_dir, boundary_version: a boundary store and the version to read (``"latest"`` = the newest
            complete one, resolved on rank 0 and broadcast). ``require_boundaries`` drops (and counts)
            utterances that the version does not cover.
        label_dir, label_version: a frame-label store (the output of ``syllablelm labels``) whose labels come
            with each batch as ``labels (B, F)`` (masked-prediction targets).
        crop_seconds, crop_mode: training crops (SylBoost: the first 8 s); ``eval_crop_seconds`` for the rest.
        chunk_seconds: cut files longer than this at pauses for non-training passes (LibriLight).
        train_hours: a seeded random subset of the training set of about this many hours.
        max_utterances: at most this many utterances per split (seeded random subset; quick runs).
        verify: ``"decode"`` decodes every file once at manifest time (catches truncation); ``"header"`` only
            reads headers (for huge corpora).
        manifest_cache: the folder of the manifest caches (default ``$SYLLABLELM_CACHE/manifests``).
        shared_manifest_cache: under a trainer of several processes, build the manifests in ``setup`` with the
            decode checks split across the ranks; the cache folder must then be shared by every rank (module
            docstring). False: the first process of each node checks every file, as for node-local caches.
    """

    def __init__(
        self,
        *,
        train_dirs: list[str] | None = None,
        val_dirs: list[str] | None = None,
        test_dirs: list[str] | None = None,
        predict_dirs: list[str] | None = None,
        predict_extra_dirs: list[str] | None = None,
        alignment_dir: str | None = None,
        boundary_dir: str | None = None,
        boundary_version: int | Literal["latest"] | None = None,
        require_boundaries: bool = False,
        label_dir: str | None = None,
        label_version: int | Literal["latest"] | None = None,
        sample_rate: int = SAMPLE_RATE,
        batch_size: int = 8,
        max_batch_seconds: float | None = None,
        crop_seconds: float | None = None,
        crop_mode: CropMode = "first",
        eval_crop_seconds: float | None = None,
        chunk_seconds: float | None = None,
        min_seconds: float = 0.5,
        train_hours: float | None = None,
        max_utterances: int | None = None,
        verify: Verify = "decode",
        manifest_cache: str | None = None,
        shared_manifest_cache: bool = True,
        num_workers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.dirs: dict[str, list[str] | None] = {
            "train": train_dirs, "val": val_dirs, "test": test_dirs, "predict": predict_dirs}
        self.manifests: dict[str, Manifest] = {}
        self.boundaries: Swappable | None = None  # forwards to the version in use (datasets hold this object)
        self.version: int | None = None
        self.labels: Mapping[str, np.ndarray] | None = None
        self.label_version: int | None = None
        self._alignments: dict[str, dict] = {}
        self._scans: dict[tuple[str, ...], Manifest] = {}  # one scan (and one skip report) per folder list
        self._ranks: Ranks | None = None  # set while setup() builds the manifests together with the other ranks

    # ---- the regeneration contract (datamodules.contracts.RegenerationData) ----------------------------
    @property
    def boundary_dir(self) -> str | None:
        """The boundary store the batches' segments come from (and SylBoost's regeneration writes into)."""
        return self.hparams.boundary_dir

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has audio folders of its own (predict may still read the training set)."""
        return bool(self.dirs.get(split))

    def first_utterances(self, split: str, n: int) -> Iterator[SpeechBatch]:
        """The first ``n`` utterances of ``split`` in manifest order (the same on every rank), each whole (no crop,
        no chunking) and alone in a batch; a file that cannot be read raises
        :class:`~syllablelm.audio.io.AudioError`. The regeneration callback calibrates δ on them."""
        ds = self.dataset(split)
        for i in range(min(n, len(ds))):
            yield collate([ds.load(i)])

    # ---- rank helpers ---------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        return rank_world(self.trainer)

    # ---- setup ----------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # one process: it builds (and caches) the manifests here, setup() finds them built. Several processes with a
        # shared cache: setup() builds them on every rank, each decoding its share (module docstring). Several with
        # node-local caches: the first process of each node builds them, the node's others read its cache in setup()
        if self._manifest_ranks() is None:
            for split in self.dirs:
                self._maybe_manifest(split)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self._ranks = self._manifest_ranks()
        try:
            for split in self.dirs:
                self._maybe_manifest(split)
        finally:
            self._ranks = None
        if hp.boundary_dir is not None and hp.boundary_version is not None and self.version is None:
            self.set_boundary_version(self._resolve(BoundaryStore(hp.boundary_dir), hp.boundary_version))
        if hp.label_dir is not None and self.labels is None:
            store = LabelStore(hp.label_dir)
            self.label_version = self._resolve(store, "latest" if hp.label_version is None else hp.label_version)
            self.labels = store.load(self.label_version, self._by_id("samples"))

    def _manifest_ranks(self) -> Ranks | None:
        """The ranks that build the manifests together: those of a trainer of several processes (whose hooks run
        on all of them), with a shared cache. None: this process builds them alone (also inside a bare process
        group, where a single-rank step may ask for a manifest that no other rank builds)."""
        trainer = self.trainer
        if not self.hparams.shared_manifest_cache or trainer is None:
            return None
        rank, world = rank_world(trainer)
        return Ranks(rank, world, lambda: trainer.strategy.barrier("manifest")) if world > 1 else None

    def _by_id(self, what: Literal["seconds", "samples"]) -> ByIdView:
        """``id -> seconds`` or ``id -> samples at 16 kHz`` over every split's manifest (an id in several takes the
        last split's value, as the dict of every entry this replaces did): what the stores validate against."""
        manifests = list(self.manifests.values())
        last: dict[int, Manifest] = {}
        for m in reversed(manifests):  # a manifest object listed twice (predict = train) counts where it comes last
            last.setdefault(id(m), m)
        return ByIdView(list(reversed(last.values())), what, SAMPLE_RATE)

    def _resolve(self, store, version) -> int:
        return resolve_version(store, version, self.trainer)

    # ---- checkpoint state and the batches' segments ---------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.version is not None:
            state["boundary_version"] = int(self.version)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the training position and the boundary version the checkpointed run was on."""
        super().load_state_dict(state_dict)
        version = state_dict.get("boundary_version")
        if version is not None and self.hparams.boundary_dir is not None and version != self.version:
            self.set_boundary_version(int(version))

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """In the main process, right before the batch is used: its segments from the boundary version in use, and
        the files it lost recorded as skipped inputs (a worker's own records would be lost)."""
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, dict):
            if self.boundaries is not None:
                attach_segments(batch, self.boundaries, self.hparams.sample_rate)
            trainer = self.trainer
            training = trainer is None or trainer.training
            record_unreadable(batch, "training" if training else getattr(trainer.state.stage, "value", "evaluation"))
        return batch

    def _maybe_manifest(self, split: str) -> None:
        if self.dirs[split] or (split == "predict" and self.dirs["train"]):
            self.manifest(split)

    def _scan(self, dirs: list[str]) -> Manifest:
        hp, key = self.hparams, tuple(dirs)
        if key not in self._scans:
            self._scans[key] = build_manifest(key, verify=hp.verify, min_seconds=hp.min_seconds,
                                              cache_dir=hp.manifest_cache, num_workers=max(1, hp.num_workers),
                                              ranks=self._ranks)
        return self._scans[key]

    def manifest(self, split: str) -> Manifest:
        if split in self.manifests:
            return self.manifests[split]
        if split == "predict" and self.dirs["predict"] is None and self.dirs["train"]:
            # predict defaults to the training set exactly as fit sees it (same train_hours subset), then extras
            manifest = self.manifest("train")
            if self.hparams.predict_extra_dirs:
                extra = self._scan(self.hparams.predict_extra_dirs)
                new = np.flatnonzero(manifest.indices_of(extra.ids) < 0)  # ids the training set lacks
                manifest = Manifest.concat([manifest, extra.take(new)])
            self.manifests[split] = manifest
            return manifest
        hp = self.hparams
        manifest = self._scan(self.dirs[split])
        rng = np.random.default_rng([hp.seed, ["train", "val", "test", "predict"].index(split)])
        if split == "train" and hp.train_hours is not None:
            order = rng.permutation(len(manifest))
            cum = np.cumsum(manifest.seconds[order]) / 3600.0
            manifest = manifest.take(np.sort(order[: int(np.searchsorted(cum, hp.train_hours)) + 1]))
        if hp.max_utterances is not None and len(manifest) > hp.max_utterances:
            manifest = manifest.take(np.sort(rng.permutation(len(manifest))[: hp.max_utterances]))
        self.manifests[split] = manifest
        return manifest

    def set_boundary_version(self, version: int) -> None:
        """Load a complete boundary version for every split (the regeneration callback calls this on every
        rank after the version's manifest exists). Existing datasets see it from their next iterator on
        (workers are not persistent), so loaders need not be rebuilt."""
        loaded = BoundaryStore(self.hparams.boundary_dir).load(version, self._by_id("seconds"))
        if self.boundaries is None:
            self.boundaries = Swappable(loaded)
        else:  # live datasets hold this object, and each epoch's new iterator ships it to its workers
            self.boundaries.swap(loaded)
        self.version = version
        log.info("boundary version %d: %d utterances", version, len(self.boundaries))

    def alignments(self, split: str) -> dict[str, dict]:
        """``{id: {tier: (times, labels)}}`` for one split (loaded once, validated, errors name the file)."""
        if self.hparams.alignment_dir is None:
            return {}
        if split not in self._alignments:
            index = index_alignments(self.hparams.alignment_dir)
            manifest = self.manifest(split)
            seconds, n = manifest.seconds, len(manifest)
            found = {}
            for k, utt in enumerate(tqdm(manifest.ids, total=n, desc=f"alignments {split}", disable=n < 2000)):
                if utt in index:
                    found[utt] = load_alignment(index[utt], duration=float(seconds[k]))
            if len(found) < n:
                log.warning("%s: %d of %d utterances have no alignment", split, n - len(found), n)
            self._alignments[split] = found
        return self._alignments[split]

    # ---- datasets -------------------------------------------------------------------------------------
    def _entries(self, split: str) -> Manifest:
        manifest = self.manifest(split)
        if self.hparams.require_boundaries and self.boundaries is not None:
            boundaries = self.boundaries
            keep = np.fromiter((utt in boundaries for utt in manifest.ids), dtype=bool, count=len(manifest))
            kept = int(keep.sum())
            if kept < len(manifest):
                log.warning("%s: %d of %d utterances have no boundaries in version %s and are skipped", split,
                            len(manifest) - kept, len(manifest), self.version)
            if not kept:
                raise SegmentError(f"boundary version {self.version} covers no utterance of split {split!r}")
            if kept < len(manifest):
                manifest = manifest.take(np.flatnonzero(keep))
        return manifest

    def dataset(self, split: str, *, rank: int = 0, world_size: int = 1, crop_seconds: float | None = None,
                crop_mode: CropMode = "first", chunk_seconds: float | None = None) -> SpeechDataset:
        """This rank's unrepeated contiguous shard of ``split`` (all of it for ``world_size == 1``); files
        longer than ``chunk_seconds`` are cut at pauses into several items."""
        entries = self._entries(split)
        lo, hi = shard_range(len(entries), rank, world_size)
        seconds = entries.seconds[lo:hi]
        counts = np.ones(hi - lo, np.int64)  # items per file: one, or its chunks
        plans: dict[int, list[tuple[float, float]]] = {}
        for k in (np.flatnonzero(seconds > chunk_seconds) + lo).tolist() if chunk_seconds else ():
            path, duration = entries.paths[k], float(seconds[k - lo])
            # LibriLight ships voice activity per file: its pauses spare a pass over the audio
            vad = librilight_voice_activity(path)
            plan = None if vad is None else chunk_at_pauses(duration, vad, max_seconds=chunk_seconds)
            if plan is None:
                try:
                    wave = read_audio(path, self.hparams.sample_rate)
                except AudioError as err:  # broke after the manifest was built: skipped, not fatal
                    record_skip(err.path, err.problem, f"{split} chunking")
                    counts[k - lo] = 0
                    continue
                plan = pause_chunks(wave, self.hparams.sample_rate, max_seconds=chunk_seconds)
            plans[k] = plan
            counts[k - lo] = len(plan)
        entry = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)
        offset = np.zeros(len(entry))
        duration = np.repeat(seconds, counts)
        first = np.cumsum(counts) - counts  # each file's first item
        for k, plan in plans.items():
            at = int(first[k - lo])
            offset[at:at + len(plan)] = [a for a, _ in plan]
            duration[at:at + len(plan)] = [b - a for a, b in plan]
        items = Items(entry, offset, duration)
        return SpeechDataset(entries, items, sample_rate=self.hparams.sample_rate, crop_seconds=crop_seconds,
                             crop_mode=crop_mode, seed=self.hparams.seed, boundaries=self.boundaries,
                             alignments=self.alignments(split) if self.hparams.alignment_dir else None,
                             labels=self.labels)

    def _loader(self, dataset: SpeechDataset, sampler, *, training: bool = False) -> DataLoader:
        n = self.hparams.num_workers
        return SeededLoader(dataset, sampler=sampler, seed=self.hparams.seed, num_workers=n, collate_fn=keep_batch,
                            epoch_of=self.training_epoch if training else None, persistent_workers=False,
                            pin_memory=torch.cuda.is_available(), prefetch_factor=2 if n > 0 else None)

    def offline_dataloader(self, split: str = "predict", *, crop_seconds: float | None = None,
                           chunk_seconds: float | None = None) -> DataLoader:
        """Every utterance of ``split`` exactly once across ranks (this rank's contiguous shard), batched
        longest first. Used by validate/test/predict and by the offline passes of later stages."""
        rank, world = self._rank_world()
        ds = self.dataset(split, rank=rank, world_size=world, crop_seconds=crop_seconds,
                          chunk_seconds=chunk_seconds if chunk_seconds is not None else self.hparams.chunk_seconds)
        return self._loader(ds, EvalBatchSampler(ds.seconds, batch_size=self.hparams.batch_size,
                                                 max_batch_seconds=self.hparams.max_batch_seconds))

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        rank, world = self._rank_world()
        ds = self.dataset("train", crop_seconds=hp.crop_seconds, crop_mode=hp.crop_mode)
        sampler = TrainBatchSampler(ds.seconds, batch_size=hp.batch_size, max_batch_seconds=hp.max_batch_seconds,
                                    rank=rank, world_size=world, seed=hp.seed)
        return self._loader(ds, self.resumable(sampler), training=True)

    def val_dataloader(self) -> DataLoader:
        return self.offline_dataloader("val", crop_seconds=self.hparams.eval_crop_seconds)

    def test_dataloader(self) -> DataLoader:
        return self.offline_dataloader("test", crop_seconds=self.hparams.eval_crop_seconds)

    def predict_dataloader(self) -> DataLoader:
        return self.offline_dataloader("predict", crop_seconds=self.hparams.eval_crop_seconds)
