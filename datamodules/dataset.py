"""The map-style dataset behind every stage: items are whole utterances or chunks of long files.

An item is ``(entry, offset, duration)`` in seconds of the original file. Items are held as three arrays
(:class:`Items`) over a columnar :class:`~datamodules.manifest.Manifest`, so a DataLoader worker forked from the
main process touches no per-file Python object (whose reference counts and garbage-collector headers it would
write, copying their pages: worker memory would grow with the corpus). ``dataset[(epoch, [i, j, ...], k)]``
returns a whole padded batch, batch ``k`` of ``epoch`` (the samplers yield batches, see
:mod:`datamodules.samplers`)::

    {"ids": [str] * B, "waves": (B, T) float32, "attention_mask": (B, T) long, "lengths": (B,) long,
     "offsets": (B,) float64 seconds where each wave starts in its file, "durations": (B,) file seconds,
     "segments": [(n, 2) float64 seconds, file time, clipped to the wave] or None per item,
     "alignments": [{tier: ((n, 2) seconds, labels)}, clipped] or None per item,
     "labels": (B, F) long frame labels of each wave (-100 = none/padding) when a label version is loaded,
     "unreadable": [str] paths of the batch's files that could not be read (dropped, each with a warning),
     "unreadable_problems": [str] why, one per path,
     "position": (epoch, k)}

(:class:`datamodules.contracts.SpeechBatch` declares these keys and their types.)

``segments`` are cut from the boundaries the dataset holds when the batch is built (a :class:`Swappable`: the
DataModule swaps the version it forwards to), possibly in a DataLoader worker forked before a newer boundary version
was loaded; the DataModule therefore cuts them again in the main process right before the batch is used
(:func:`attach_segments` in ``on_before_batch_transfer``), so a batch always carries the version training is on.

A batch none of whose files can be read (they broke after the manifest was built) is an *empty* batch (B = 0,
:func:`is_empty`), never ``None``: Lightning's training loop would skip a ``None`` without calling
``training_step``, and under DDP the other ranks would then wait forever in the gradient all-reduce of a backward
that rank never runs. Every step and offline pass skips an empty batch its own way (a training step returns a
zero loss, see :mod:`lightning_modules.skipped_batches`).

Stored times stay in file time; a model converts with :func:`syllablelm.audio.frames.seconds_to_frames`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Iterable, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from syllablelm.audio.frames import FRAME_SECONDS, num_frames, seconds_to_frames
from syllablelm.audio.io import AudioError, read_audio
from syllablelm.runtime.outcome import record_skip

from .contracts import SpeechBatch
from .manifest import Entry, Manifest

log = logging.getLogger(__name__)
CropMode = Literal["first", "random"]


@dataclasses.dataclass(frozen=True)
class Item:
    entry: int  # index into the manifest entries
    offset: float  # seconds into the file
    duration: float  # seconds


class Items(Sequence):
    """A dataset's items as three arrays: ``entry`` (int64 manifest rows), ``offset`` and ``duration`` (float64
    seconds). Indexing makes one :class:`Item` (Python numbers); nothing per item is kept."""

    __slots__ = ("entry", "offset", "duration")

    def __init__(self, entry, offset, duration):
        self.entry = np.asarray(entry, dtype=np.int64).reshape(-1)
        self.offset = np.asarray(offset, dtype=np.float64).reshape(-1)
        self.duration = np.asarray(duration, dtype=np.float64).reshape(-1)
        if not len(self.entry) == len(self.offset) == len(self.duration):
            raise ValueError("item columns of different lengths")

    @classmethod
    def from_items(cls, items: Iterable[Item]) -> "Items":
        items = list(items)
        return cls([it.entry for it in items], [it.offset for it in items], [it.duration for it in items])

    def __len__(self) -> int:
        return len(self.entry)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        return Item(int(self.entry[i]), float(self.offset[i]), float(self.duration[i]))

    def __iter__(self) -> Iterator[Item]:
        for a in range(0, len(self), 4096):  # a block of Python numbers at a time
            b = a + 4096
            for k, off, dur in zip(self.entry[a:b].tolist(), self.offset[a:b].tolist(), self.duration[a:b].tolist()):
                yield Item(k, off, dur)


class Swappable(Mapping):
    """A read-only ``Mapping`` that forwards to the one it holds now; :meth:`swap` replaces it. Datasets hold this
    (not the store's mapping), so a new boundary version reaches every live dataset, whatever ``Mapping`` the store
    returns (read-only, memory-mapped: nothing to clear or update in place)."""

    __slots__ = ("current",)

    def __init__(self, current: Mapping):
        self.current = current

    def swap(self, new: Mapping) -> None:
        self.current = new

    def __getitem__(self, key):
        return self.current[key]

    def get(self, key, default=None):
        return self.current.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.current

    def __iter__(self):
        return iter(self.current)

    def __len__(self) -> int:
        return len(self.current)


def is_empty(batch: dict | None) -> bool:
    """A batch with no item (all its files unreadable); ``None`` counts as empty too."""
    return batch is None or len(batch["ids"]) == 0


def item_keys(batch: dict) -> list[tuple[str, int]]:
    """``(id, offset in ms)`` of every item of a batch: names a chunk of a file across runs and rank counts."""
    return [(utt, round(float(off) * 1000)) for utt, off in zip(batch["ids"], batch["offsets"])]


def clip_segments(segments: np.ndarray, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Segments overlapping ``[start, end)``, clipped to it; also returns the kept row indices."""
    keep = np.flatnonzero((segments[:, 1] > start) & (segments[:, 0] < end))
    return np.clip(segments[keep], start, end), keep


class SpeechDataset(Dataset):
    """Items (:class:`Items`) of a columnar manifest; ``entries`` is the manifest's :class:`~datamodules.manifest.Entry`
    view (``ds.entries[k].path``), ``manifest`` the manifest itself. Lists of :class:`Entry` / :class:`Item` are
    accepted and turned into columns."""

    def __init__(
        self,
        entries: Manifest | Sequence[Entry],
        items: Items | Sequence[Item],
        *,
        sample_rate: int = 16_000,
        crop_seconds: float | None = None,
        crop_mode: CropMode = "first",
        seed: int = 0,
        boundaries: Mapping[str, np.ndarray] | None = None,
        alignments: Mapping[str, dict] | None = None,
        labels: Mapping[str, np.ndarray] | None = None,
    ):
        self.manifest = entries if isinstance(entries, Manifest) else Manifest.from_entries(entries)
        self.entries = self.manifest.entries
        self.items = items if isinstance(items, Items) else Items.from_items(items)
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds
        self.crop_mode = crop_mode
        self.seed = seed
        self.boundaries = boundaries
        self.alignments = alignments
        self.labels = labels

    def __len__(self) -> int:
        return len(self.items)

    @property
    def seconds(self) -> np.ndarray:
        """Per-item seconds after cropping (what the samplers batch by)."""
        d = self.items.duration.copy()
        return np.minimum(d, self.crop_seconds) if self.crop_seconds else d

    def window(self, index: int, epoch: int = 0) -> tuple[float, float]:
        """``(offset, duration)`` actually read for item ``index`` in ``epoch``. Random crops start on a 20 ms
        grid of the file (frames stay aligned with file time) and depend only on (seed, epoch, index)."""
        offset, duration = float(self.items.offset[index]), float(self.items.duration[index])
        if not self.crop_seconds or duration <= self.crop_seconds:
            return offset, duration
        if self.crop_mode == "first":
            return offset, self.crop_seconds
        rng = np.random.default_rng([self.seed, epoch, index])
        slack_frames = int((duration - self.crop_seconds) / FRAME_SECONDS)
        return offset + FRAME_SECONDS * int(rng.integers(0, slack_frames + 1)), self.crop_seconds

    def load(self, index: int, epoch: int = 0) -> dict:
        m, k = self.manifest, int(self.items.entry[index])
        utt = m.ids[k]
        offset, duration = self.window(index, epoch)
        wave = read_audio(m.paths[k], self.sample_rate, offset=offset, duration=duration)
        out = {"id": utt, "wave": wave, "offset": offset, "duration": int(m.num_samples[k]) / int(m.sample_rate[k]),
               "segments": None, "alignment": None, "labels": None}
        end = offset + len(wave) / self.sample_rate
        out["segments"] = window_segments(self.boundaries, utt, offset, end)
        if self.alignments is not None and utt in self.alignments:
            clipped = {}
            for tier, (times, labels) in self.alignments[utt].items():
                t, keep = clip_segments(times, offset, end)
                clipped[tier] = (t, [labels[k] for k in keep])
            out["alignment"] = clipped
        if self.labels is not None and utt in self.labels:
            first = int(seconds_to_frames(offset))  # windows start on the 20 ms grid (crops, chunks, VAD trims)
            out["labels"] = self.labels[utt][first:first + num_frames(len(wave))]
        return out

    def __getitem__(self, request: tuple[int, list[int], int] | tuple[int, list[int]] | int) -> SpeechBatch:
        if isinstance(request, (int, np.integer)):
            request = (0, [int(request)])
        epoch, indices, *index = request
        loaded, unreadable, problems = [], [], []
        for i in indices:
            try:
                loaded.append(self.load(i, epoch))
            except AudioError as e:  # checked at manifest time; a file that broke since is skipped, not fatal
                log.warning("skipping %s", e)
                unreadable.append(e.path)
                problems.append(e.problem)
        # empty when nothing could be read (module docstring)
        return collate(loaded, unreadable, problems, position=(int(epoch), int(index[0]) if index else -1))


def window_segments(boundaries: Mapping[str, np.ndarray] | None, utt: str, start: float,
                    end: float) -> np.ndarray | None:
    """The stored segments of ``utt`` that overlap the window ``[start, end)`` seconds, clipped to it; None when
    ``utt`` has no boundaries."""
    if boundaries is None or utt not in boundaries:
        return None
    return clip_segments(boundaries[utt], start, end)[0]


def attach_segments(batch: dict, boundaries: Mapping[str, np.ndarray] | None, sample_rate: int) -> dict:
    """Cut every item's ``segments`` again from ``boundaries`` (the version in use now), in place."""
    if is_empty(batch) or "segments" not in batch:
        return batch
    batch["segments"] = [
        window_segments(boundaries, utt, float(off), float(off) + int(n) / sample_rate)
        for utt, off, n in zip(batch["ids"], batch["offsets"], batch["lengths"])]
    return batch


def record_unreadable(batch: dict | None, where: str = "training") -> list[str]:
    """Record every file of ``batch["unreadable"]`` as skipped by ``where``, with the reader's reason (each path
    logged once per process, :func:`syllablelm.runtime.outcome.record_skip`); returns those paths."""
    paths = [str(p) for p in (batch or {}).get("unreadable") or ()]
    problems = list((batch or {}).get("unreadable_problems") or ())
    for i, path in enumerate(paths):
        record_skip(path, problems[i] if i < len(problems) else f"unreadable when read for {where}", where)
    return paths


def keep_batch(batch: dict) -> dict:
    """The DataLoader's ``collate_fn``: the dataset already yields whole batches (:func:`collate`). The default
    (``default_convert``) would turn their numpy segments and alignments into tensors, which Lightning then moves
    to the GPU, where numpy cannot read them."""
    return batch


def collate(items: list[dict], unreadable: Sequence[str] = (), problems: Sequence[str] = (), *,
            position: tuple[int, int] = (0, -1)) -> SpeechBatch:
    """One batch of loaded items (:meth:`SpeechDataset.load`), ``unreadable`` the paths of those that could not be
    read and ``problems`` why; ``position`` is ``(epoch, batch index)`` (``(0, -1)``: no sampler numbered it)."""
    lengths = torch.tensor([len(it["wave"]) for it in items], dtype=torch.long)
    waves = torch.zeros(len(items), int(lengths.max()) if items else 0)
    for b, it in enumerate(items):
        waves[b, : len(it["wave"])] = it["wave"]
    mask = (torch.arange(waves.shape[1])[None, :] < lengths[:, None]).long()  # (B, T)
    labels = None
    if any(it["labels"] is not None for it in items):
        labels = torch.full((len(items), num_frames(waves.shape[1])), -100, dtype=torch.long)  # (B, F)
        for b, it in enumerate(items):
            if it["labels"] is not None:
                labels[b, : len(it["labels"])] = torch.from_numpy(it["labels"].astype(np.int64))
    return {
        "ids": [it["id"] for it in items],
        "waves": waves,
        "attention_mask": mask,
        "lengths": lengths,
        "offsets": torch.tensor([it["offset"] for it in items], dtype=torch.float64),
        "durations": torch.tensor([it["duration"] for it in items], dtype=torch.float64),
        "segments": [it["segments"] for it in items],
        "alignments": [it["alignment"] for it in items],
        "labels": labels,
        "unreadable": list(unreadable),
        "unreadable_problems": list(problems),
        "position": (int(position[0]), int(position[1])),
    }
