"""The regeneration contract: what :class:`callbacks.boundary_regeneration.BoundaryRegeneration` needs of the
LightningModule whose boundaries it regenerates and of the DataModule that serves them, and the batch every speech
loader yields (docs/architecture.md, "The regeneration contract").

The callback touches its module and DataModule only through the members declared here (a test scans its source
for ``pl_module.X`` and ``trainer.datamodule.X`` and fails on any X that is not a member), reads them only and
changes their state only by calling their methods. :class:`~lightning_modules.sylboost.SylBoostModule` and
:class:`~datamodules.speech.SpeechDataModule` implement the two protocols; both are ``runtime_checkable``, and the
callback's ``setup`` checks them with ``isinstance``. They live in ``datamodules`` because both layers above it
(``callbacks`` and ``lightning_modules``) may import it, and neither may import the other.
"""
from __future__ import annotations

from typing import Any, ContextManager, Iterable, Iterator, Mapping, Protocol, TypedDict, runtime_checkable

import numpy as np
import torch

from .manifest import Manifest

__all__ = ["Alignment", "SpeechBatch", "RegenerationModule", "RegenerationData"]

Alignment = dict[str, tuple[np.ndarray, list[str]]]
"""``{tier: ((n, 2) float64 seconds in file time, one label per row)}``, clipped to an item's wave."""


class SpeechBatch(TypedDict):
    """One batch of :class:`~datamodules.dataset.SpeechDataset` (:func:`~datamodules.dataset.collate`); B items,
    T samples. Every key is always present; a batch none of whose files could be read has B = 0."""

    ids: list[str]  # utterance ids (chunks of one long file share theirs)
    waves: torch.Tensor  # (B, T) float32, zero-padded
    attention_mask: torch.Tensor  # (B, T) long: 1 on samples, 0 on padding
    lengths: torch.Tensor  # (B,) long: samples of each wave
    offsets: torch.Tensor  # (B,) float64: seconds where each wave starts in its file
    durations: torch.Tensor  # (B,) float64: seconds of each whole file
    segments: list[np.ndarray | None]  # (n, 2) float64 file seconds clipped to the wave; None: no boundaries
    alignments: list[Alignment | None]  # None: no alignment (or no alignment_dir)
    labels: torch.Tensor | None  # (B, F) long frame labels (-100: none/padding) when a label version is loaded
    unreadable: list[str]  # paths of the files of this batch that could not be read (left out)
    unreadable_problems: list[str]  # why, one per path
    position: tuple[int, int]  # (epoch, batch index); (0, -1) for a batch no sampler numbered


@runtime_checkable
class RegenerationModule(Protocol):
    """What the regeneration callback needs of its LightningModule (:class:`~lightning_modules.sylboost.
    SylBoostModule`). ``device``, ``to`` and ``log_dict`` are LightningModule's own; the rest is the module's."""

    # ---- the schedule: read-only hyper-parameters -----------------------------------------------------------
    @property
    def iterations(self) -> int:
        """Training iterations; version ``iterations`` is the final one (for evaluation and units)."""

    @property
    def epochs_per_iteration(self) -> int:
        """Epochs of each iteration: version ``v`` is due after ``v x epochs_per_iteration`` epochs."""

    @property
    def reinit_each_iteration(self) -> bool:
        """Whether each iteration restarts the optimizer and LR schedule (the callback re-creates them)."""

    # ---- where it runs and what it reports ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where batches must be for :meth:`features` and :meth:`extract_boundaries`."""

    def to(self, device: torch.device | str) -> Any:
        """Move the module (``on_fit_end``: Lightning has moved it to the CPU when training ended)."""

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        """LightningModule.log_dict: the ``regen/*`` metrics."""

    # ---- δ ------------------------------------------------------------------------------------------------
    @property
    def calibrates_delta(self) -> bool:
        """Whether δ is calibrated to a target rate (at fit start and before each regeneration)."""

    def boundary_delta(self) -> float | None:
        """The δ boundaries are cut with now; None when none is set yet."""

    def set_boundary_delta(self, delta: float) -> None:
        """Cut with ``delta`` from now on (calibrated, or the one a reused version was cut with)."""

    def calibrated_delta(self, features: list[torch.Tensor], waves: list[torch.Tensor]) -> float:
        """The δ giving the target rate on these utterances (:meth:`features` and waves of each); sets nothing."""

    # ---- boundaries ---------------------------------------------------------------------------------------
    def evaluating(self) -> ContextManager[None]:
        """Eval + inference mode for the block, then the module's training flag as it was."""

    def features(self, batch: SpeechBatch) -> list[torch.Tensor]:
        """Per item, the features boundaries are cut from (each computed alone, unpadded)."""

    def extract_boundaries(self, batch: SpeechBatch) -> list[np.ndarray]:
        """Per item, ``(n, 2)`` segments in file seconds: a pure function of the weights, δ and the audio."""

    # ---- iterations ---------------------------------------------------------------------------------------
    def restore_iteration(self, iteration: int) -> None:
        """The iteration a (resumed) fit is in; the weights are left as they are."""

    def start_iteration(self, iteration: int) -> None:
        """A new iteration starts on the boundaries just loaded (re-initialises the student if the schedule
        says so)."""


@runtime_checkable
class RegenerationData(Protocol):
    """What the regeneration callback needs of its DataModule (:class:`~datamodules.speech.SpeechDataModule`)."""

    @property
    def boundary_dir(self) -> str | None:
        """The boundary store the callback writes into (None: none configured)."""

    @property
    def version(self) -> int | None:
        """The boundary version in use (None: none loaded)."""

    def set_boundary_version(self, version: int) -> None:
        """Load a complete version of the store on this rank; every batch from now on carries it."""

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has audio folders of its own."""

    def manifest(self, split: str) -> Manifest:
        """Every utterance of ``split``, identical on every rank."""

    def offline_dataloader(self, split: str) -> Iterable[SpeechBatch]:
        """This rank's unrepeated contiguous shard of ``split``, whole files (long ones chunked at pauses)."""

    def first_utterances(self, split: str, n: int) -> Iterator[SpeechBatch]:
        """The first ``n`` utterances of ``split`` (all ranks alike), each whole and alone in a batch."""
