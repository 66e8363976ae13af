"""Phone-labelled speech for the intelligibility judge (:mod:`syllablelm.evaluation.phone_judge`).

A corpus written by ``syllablelm synth`` (LibriSpeech layout, ``<corpus>/<split>/<spk>/<chapter>/<utt>.flac``, and
``<corpus>/alignments/<split>/...<utt>.json``) becomes ``(log-mel, phone ids)`` pairs: every utterance's 80-bin
log-mel (not yet normalised: the module normalises after augmenting) is computed once at setup and kept in memory
in float16 (a 4-hour corpus is ~110 MB), the targets are the stress-stripped ``phones`` tier mapped to the judge's
inventory. Every utterance needs its alignment; a missing or phone-less one, an unreadable or empty audio file
or a phone outside the inventory stops setup with an error naming the file.

Batches are length-bucketed (:class:`BucketBatchSampler`): a seeded, epoch-dependent shuffle, sorted within pools
of ``50 x batch_size`` utterances, cut into batches whose order is shuffled again; the same ``(seed, epoch)`` gives
the same batches, so a run resumed from an end-of-epoch checkpoint sees the batches the first run would have.

Train the judge only on a corpus made with ``--exclude-held-out``: the held-out voice variants are how its PER on
unseen voices is measured.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from syllablelm.audio.io import AudioError, read_audio
from syllablelm.evaluation.phone_judge import PHONES, FeatureSettings, LogMel, phone_ids, phones_of_alignment

log = logging.getLogger(__name__)


def split_items(corpus: str | Path, split: str, limit: int | None = None) -> list[tuple[str, Path, Path]]:
    """``(utterance id, audio path, alignment path)`` of every ``.flac``/``.wav`` under ``<corpus>/<split>``,
    sorted by path; a file without ``<corpus>/alignments/<split>/<same relative path>.json`` is an error."""
    root, aligned = Path(corpus) / split, Path(corpus) / "alignments" / split
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such split folder (a corpus from `syllablelm synth`)")
    audio = sorted(p for p in root.rglob("*") if p.suffix in (".flac", ".wav"))
    if not audio:
        raise FileNotFoundError(f"{root}: no .flac or .wav files")
    items = []
    for path in audio[:limit] if limit else audio:
        json_path = aligned / path.relative_to(root).with_suffix(".json")
        if not json_path.is_file():
            raise FileNotFoundError(f"{path}: no alignment ({json_path} is missing)")
        items.append((path.stem, path, json_path))
    return items


class PhoneDataset(Dataset):
    """Log-mel features (float16, ``(frames, n_mels)``) and phone ids of a list of ``(id, audio, alignment)``."""

    def __init__(self, items, features: FeatureSettings | None = None, phones=PHONES):
        features = features or FeatureSettings()
        logmel = LogMel(features)
        self.ids, self.feats, self.targets = [], [], []
        for uid, audio, alignment in items:
            try:
                wave = read_audio(audio, features.sample_rate)
            except AudioError as e:
                raise ValueError(str(e)) from e
            if wave.numel() < features.win_length:
                raise ValueError(f"{audio}: {wave.numel()} samples, shorter than one analysis window")
            targets = phone_ids(phones_of_alignment(alignment), phones, where=str(alignment))
            with torch.no_grad():
                feats = logmel(wave[None])[0]
            if (len(feats) + 1) // 2 < len(targets):
                raise ValueError(f"{audio}: {len(targets)} phones do not fit in {(len(feats) + 1) // 2} CTC frames")
            self.ids.append(uid)
            self.feats.append(feats.to(torch.float16))
            self.targets.append(torch.tensor(targets, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"id": self.ids[i], "feats": self.feats[i], "targets": self.targets[i]}


def collate(items: list[dict]) -> dict:
    """Pad features to ``(B, T, n_mels)`` float32; CTC targets concatenated with their lengths."""
    return {"ids": [x["id"] for x in items],
            "feats": torch.nn.utils.rnn.pad_sequence([x["feats"].float() for x in items], batch_first=True),
            "lengths": torch.tensor([len(x["feats"]) for x in items]),
            "targets": torch.cat([x["targets"] for x in items]),
            "target_lengths": torch.tensor([len(x["targets"]) for x in items])}


class BucketBatchSampler(Sampler):
    """Batches of similar length: shuffled with ``(seed, epoch)``, sorted inside pools of ``pool x batch_size``,
    cut, and the batches shuffled; ``shuffle=False``: longest first, for evaluation."""

    def __init__(self, lengths, batch_size: int, *, shuffle: bool = True, seed: int = 0, pool: int = 50):
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.seed, self.pool = seed, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n, b = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: -self.lengths[i])
            return [order[i:i + b] for i in range(0, n, b)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order, out = rng.permutation(n).tolist(), []
        for p in range(0, n, b * self.pool):
            chunk = sorted(order[p:p + b * self.pool], key=lambda i: self.lengths[i])
            out += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


class PhoneDataModule(pl.LightningDataModule):
    """Train/validation phone data from one ``syllablelm synth`` corpus.

    Args:
        corpus: the corpus folder (``<corpus>/<split>/...`` and ``<corpus>/alignments/<split>/...``).
        train_split, val_split: split names (the validation split selects the checkpoint; its voices must not be
            the held-out ones either).
        batch_size: utterances per batch.
        limit: at most this many utterances per split (tests).
        seed: the batch order's seed.
    """

    def __init__(self, corpus: str, train_split: str = "train", val_split: str = "dev", batch_size: int = 16,
                 limit: int | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.features = FeatureSettings()
        self.train_set: PhoneDataset | None = None
        self.val_set: PhoneDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = PhoneDataset(split_items(hp.corpus, hp.train_split, hp.limit), self.features)
            log.info("phone data: %d training utterances from %s/%s", len(self.train_set), hp.corpus, hp.train_split)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = PhoneDataset(split_items(hp.corpus, hp.val_split, hp.limit), self.features)

    def _loader(self, dataset: PhoneDataset, shuffle: bool) -> DataLoader:
        lengths = [len(f) for f in dataset.feats]
        sampler = BucketBatchSampler(lengths, self.hparams.batch_size, shuffle=shuffle, seed=self.hparams.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
