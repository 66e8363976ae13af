"""Audio -> syllable units: SylBoost features, the SSE min-cut, pooling, k-means + Ward lookup, dedup.

    tok = Tokenizer.from_checkpoint("runs/tiny/tokenizer.ckpt")       # what `syllablelm quantize` writes
    segments, units = tok("speech.flac")                              # (n, 2) seconds, (n,) int64
    many = tok.batch([wave_a, wave_b], sample_rate=22050)

Framework-free (torch/numpy): checkpoints are read as plain dicts (``weights_only``) and the encoder is rebuilt
from its spec. The *tokenizer checkpoint* (:func:`save_tokenizer`, format
:data:`~syllablelm.checkpoints.backbone.TOKENIZER_FORMAT`) holds only what tokenizing needs:

* ``"format"``: ``"syllablelm.tokenizer/1"``;
* ``"encoder"`` / ``"encoder_state"``: the student's :meth:`SpeechEncoder.spec` and state dict, cut at the
  feature layer (``load_backbone`` reads it as a backbone too);
* ``"segmenter"`` / ``"delta"``: the :class:`SegmenterConfig` dict and the δ in use (float or None);
* ``"quantizer"``: :func:`quantizer_state` (k-means centroids, Ward table, pooling);
* ``"meta"``: feature layer, waveform normalisation, weights fingerprint, k / k_merged, suite version and
  whatever the writer adds (``quantize``: the source checkpoint and the command's arguments).

:meth:`Tokenizer.from_checkpoint` also reads a SylBoost ``.ckpt`` (its student), with the quantizer stored inside
under ``"quantizer"`` (older ``quantize`` outputs, the released-model import) or beside it as
``<checkpoint stem>.quantizer.npz``.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from syllablelm.audio.frames import samples_for_frames
from syllablelm.audio.io import SAMPLE_RATE, pause_chunks, read_audio
from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig
from syllablelm.checkpoints.backbone import (
    TOKENIZER_FORMAT,
    encoder_from_checkpoint,
    read_suite_checkpoint,
    suite_format,
)
from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.runtime.fileio import atomic_write, weights_fingerprint
from syllablelm.units.quantizer import UnitQuantizer, dedup

QUANTIZER_KEY = "quantizer"
SEGMENTER_KEY = "tokenizer_segmenter"  # older tokenizer checkpoints (a SylBoost .ckpt): {"fixed_frames": k}
TOKENIZER_KEYS = ("format", "encoder", "encoder_state", "segmenter", "delta", "quantizer", "meta")


def quantizer_state(q: UnitQuantizer) -> dict:
    """Tensors and a JSON string only: storable in a checkpoint that loads with ``weights_only=True``."""
    meta = {"standardize": q.standardize, "pooling": q.pooling, "feature_layer": q.feature_layer}
    return {"centroids": torch.from_numpy(q.centroids), "agglom": torch.from_numpy(q.agglom), "meta": json.dumps(meta)}


def quantizer_from_state(state: dict) -> UnitQuantizer:
    return UnitQuantizer(state["centroids"].numpy(), state["agglom"].numpy(), **json.loads(state["meta"]))


def suite_version() -> str | None:
    """This suite's installed version (package metadata), None when it is not installed."""
    try:
        return importlib.metadata.version("syllablelm")
    except importlib.metadata.PackageNotFoundError:
        return None


def tokenizer_checkpoint(encoder: SpeechEncoder, segmenter: Segmenter, quantizer: UnitQuantizer,
                         meta: dict | None = None) -> dict:
    """The tokenizer checkpoint (module docstring) as a dict: containers, tensors and strings only."""
    info = {"feature_layer": encoder.layer, "normalize_waveform": bool(encoder.normalize_waveform),
            "weights_fingerprint": weights_fingerprint(encoder), "k": quantizer.k, "k_merged": quantizer.k_merged,
            "pooling": quantizer.pooling, "suite_version": suite_version(), **(meta or {})}
    return {
        "format": TOKENIZER_FORMAT,
        "encoder": encoder.spec(),
        "encoder_state": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "segmenter": segmenter.config.to_dict(),
        "delta": segmenter.delta,
        QUANTIZER_KEY: quantizer_state(quantizer),
        "meta": json.loads(json.dumps(info, default=str)),  # plain: loads with weights_only
    }


def save_tokenizer(path: str | os.PathLike, encoder: SpeechEncoder, segmenter: Segmenter, quantizer: UnitQuantizer,
                   meta: dict | None = None) -> dict:
    """Write the tokenizer checkpoint atomically (``meta`` adds to the recorded facts); returns its ``"meta"``."""
    ckpt = tokenizer_checkpoint(encoder, segmenter, quantizer, meta)
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)
    return ckpt["meta"]


class Tokenizer:
    def __init__(self, encoder: SpeechEncoder, quantizer: UnitQuantizer | None,
                 segmenter: Segmenter | SegmenterConfig | dict, *, delta: float | None = None,
                 device: str | torch.device = "cpu", chunk_seconds: float = 60.0, group_seconds: float = 240.0):
        self.encoder = encoder.eval().to(device)
        self.quantizer = quantizer
        self.segmenter = segmenter if isinstance(segmenter, Segmenter) else Segmenter(segmenter, delta=delta)
        self.device = torch.device(device)
        self.chunk_seconds = chunk_seconds
        self.group_seconds = max(group_seconds, chunk_seconds)
        self.meta: dict = {}  # a tokenizer checkpoint's "meta" (empty for other sources)

    @property
    def delta(self) -> float | None:
        return self.segmenter.delta

    def use_fixed_frames(self, frames: int) -> None:
        """Cut every ``frames`` frames instead of the min-cut (frame-unit baselines; 2 = 25 Hz units)."""
        c = self.segmenter.config
        self.segmenter = Segmenter(SegmenterConfig(fixed_frames=frames, min_len=c.min_len, max_len=c.max_len))

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> dict:
        """Write this tokenizer as a tokenizer checkpoint (:func:`save_tokenizer`); returns its ``"meta"``."""
        return save_tokenizer(path, self.encoder, self.segmenter, self._quantizer(), meta)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        quantizer: str | os.PathLike | None = None, require_quantizer: bool = True,
                        **kwargs) -> "Tokenizer":
        """A tokenizer checkpoint (module docstring), or a SylBoost checkpoint (its student) and its quantizer:
        the file ``quantizer``, inside the checkpoint or ``<stem>.quantizer.npz`` beside it — in that order of
        precedence. ``require_quantizer=False`` allows none in a SylBoost checkpoint (features and boundaries
        only: what ``quantize`` needs). An unreadable file or one of another kind is a ``CheckpointError``
        (a ``ValueError``) naming the file."""
        path = Path(path)
        ckpt = read_suite_checkpoint(path)
        if suite_format(ckpt, path) == "tokenizer":
            return cls._from_tokenizer_checkpoint(ckpt, path, device=device, quantizer=quantizer, **kwargs)
        hp = ckpt.get("hyper_parameters") or {}
        if "encoder" not in hp or "segmenter" not in hp:
            raise CheckpointError(f"{path}: neither a tokenizer nor a SylBoost checkpoint (no encoder/segmenter "
                                  "hyper-parameters)")
        encoder = encoder_from_checkpoint(ckpt, path)
        if quantizer is not None:
            q = UnitQuantizer.load(quantizer)
        elif QUANTIZER_KEY in ckpt:
            q = quantizer_from_state(ckpt[QUANTIZER_KEY])
        elif path.with_suffix(".quantizer.npz").exists():
            q = UnitQuantizer.load(path.with_suffix(".quantizer.npz"))
        elif not require_quantizer:
            q = None
        else:
            raise FileNotFoundError(f"{path}: no quantizer inside the checkpoint or beside it "
                                    f"({path.with_suffix('.quantizer.npz').name}); run `syllablelm quantize`")
        delta = ckpt["state_dict"].get("delta")
        tok = cls(encoder, q, hp["segmenter"], delta=None if delta is None else float(delta), device=device, **kwargs)
        frames = ckpt.get(SEGMENTER_KEY, {}).get("fixed_frames")  # older quantize outputs' frame-unit baselines
        if frames:
            tok.use_fixed_frames(frames)
        return tok

    @classmethod
    def _from_tokenizer_checkpoint(cls, ckpt: dict, path: Path, *, device, quantizer, **kwargs) -> "Tokenizer":
        missing = [k for k in TOKENIZER_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: a {TOKENIZER_FORMAT} checkpoint without {missing} (damaged or not "
                                  "written by save_tokenizer)")
        encoder = encoder_from_checkpoint(ckpt, path)
        try:
            q = quantizer_from_state(ckpt[QUANTIZER_KEY])
            delta = ckpt["delta"]
            segmenter = Segmenter(ckpt["segmenter"], delta=None if delta is None else float(delta))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable quantizer or segmenter in the tokenizer checkpoint "
                                  f"({type(e).__name__}: {e})") from e
        if quantizer is not None:  # an explicit file replaces the one inside
            q = UnitQuantizer.load(quantizer)
        tok = cls(encoder, q, segmenter, device=device, **kwargs)
        tok.meta = dict(ckpt["meta"])
        return tok

    @property
    def vocab_size(self) -> int:
        return self._quantizer().k_merged

    def _quantizer(self) -> UnitQuantizer:
        if self.quantizer is None:
            raise RuntimeError("this tokenizer has no quantizer yet: run `syllablelm quantize`")
        return self.quantizer

    @torch.inference_mode()
    def features(self, wave: torch.Tensor) -> torch.Tensor:  # (S,) -> (T, D)
        return self.encoder(wave[None].to(self.device))[0][0]

    def boundaries(self, features: Sequence[torch.Tensor], waves: Sequence[torch.Tensor] | None = None
                   ) -> list[torch.Tensor]:
        """Boundary frames of each utterance's features; ``waves`` (16 kHz) are needed when the segmenter trims
        to the VAD speech span (``vad_trim``)."""
        return self.segmenter.cut(features, waves)

    def _load(self, audio, sample_rate: int | None) -> torch.Tensor:
        if isinstance(audio, (str, os.PathLike)):
            return read_audio(audio, SAMPLE_RATE)
        wave = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio).float()
        if wave.ndim == 2:  # (channels, samples) or (samples, channels): average the shorter axis
            wave = wave.mean(dim=int(np.argmin(wave.shape)))
        if sample_rate is not None and sample_rate != SAMPLE_RATE:
            import torchaudio.functional as AF

            wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
        elif sample_rate is None:
            raise ValueError("give sample_rate with an audio array")
        return wave

    def batch(self, audios: Sequence, sample_rate: int | None = None, *, deduplicate: bool = True
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(segments (n, 2) seconds, units (n,) int64), ...]`` for paths or arrays (at ``sample_rate``).
        Long recordings are cut at pauses into chunks of at most ``chunk_seconds`` (results in file time).
        Chunks go through the encoder and the min-cut DP in groups of at most ``group_seconds`` of audio, file
        after file, so memory stays bounded whatever the files' lengths (an hour of LibriLight included); the
        DP is exact per chunk, so grouping never changes the result."""
        out = [[[], []] for _ in audios]
        group: list[tuple[torch.Tensor, int, float]] = []  # (chunk wave, file index, offset seconds)

        def flush() -> None:
            feats = [self.features(part) for part, _, _ in group]
            for f, b, (_, i, off) in zip(feats, self.boundaries(feats, [p for p, _, _ in group]), group):
                segs, units = self._quantizer().tokenize(f, b, offset=off, deduplicate=False)
                out[i][0].append(segs)
                out[i][1].append(units)
            group.clear()

        for i, audio in enumerate(audios):
            wave = self._load(audio, sample_rate)
            for start, end in pause_chunks(wave, SAMPLE_RATE, max_seconds=self.chunk_seconds):
                part = wave[int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]
                if len(part) < samples_for_frames(2 * self.segmenter.config.min_len + 1):  # too short to cut
                    continue
                if group and (sum(len(p) for p, _, _ in group) + len(part)) / SAMPLE_RATE > self.group_seconds:
                    flush()
                group.append((part, i, start))
        if group:
            flush()
        result = []
        for segs, units in out:
            segs = np.concatenate(segs) if segs else np.zeros((0, 2))
            units = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
            result.append(dedup(segs, units) if deduplicate else (segs, units))
        return result

    def __call__(self, audio, sample_rate: int | None = None, *, deduplicate: bool = True):
        return self.batch([audio], sample_rate, deduplicate=deduplicate)[0]
