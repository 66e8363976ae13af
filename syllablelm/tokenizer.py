"""Audio -> syllable units: SylBoost features, the SSE min-cut, pooling, k-means + Ward lookup, dedup.

    tok = Tokenizer.from_checkpoint("runs/tiny/tokenizer.ckpt")       # a SylBoost checkpoint + its quantizer
    segments, units = tok("speech.flac")                              # (n, 2) seconds, (n,) int64
    many = tok.batch([wave_a, wave_b], sample_rate=22050)

Framework-free (torch/numpy): the checkpoint is read as a plain dict (``weights_only``), the student encoder is
rebuilt from its hyper-parameters, and the quantizer is stored inside the checkpoint under ``"quantizer"``
(``syllablelm quantize`` writes it) or beside it as ``<checkpoint stem>.quantizer.npz``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .audio import SAMPLE_RATE, pause_chunks, read_audio
from .frames import samples_for_frames
from .nn.encoder import SpeechEncoder
from .segmenter import Segmenter, SegmenterConfig
from .units import UnitQuantizer, dedup

QUANTIZER_KEY = "quantizer"
SEGMENTER_KEY = "tokenizer_segmenter"


def quantizer_state(q: UnitQuantizer) -> dict:
    """Tensors and a JSON string only: storable in a checkpoint that loads with ``weights_only=True``."""
    meta = {"standardize": q.standardize, "pooling": q.pooling, "feature_layer": q.feature_layer}
    return {"centroids": torch.from_numpy(q.centroids), "agglom": torch.from_numpy(q.agglom), "meta": json.dumps(meta)}


def quantizer_from_state(state: dict) -> UnitQuantizer:
    return UnitQuantizer(state["centroids"].numpy(), state["agglom"].numpy(), **json.loads(state["meta"]))


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

    @property
    def delta(self) -> float | None:
        return self.segmenter.delta

    def use_fixed_frames(self, frames: int) -> None:
        """Cut every ``frames`` frames instead of the min-cut (frame-unit baselines; 2 = 25 Hz units)."""
        c = self.segmenter.config
        self.segmenter = Segmenter(SegmenterConfig(fixed_frames=frames, min_len=c.min_len, max_len=c.max_len))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        quantizer: str | os.PathLike | None = None, require_quantizer: bool = True,
                        **kwargs) -> "Tokenizer":
        """A SylBoost checkpoint (its student) and its quantizer: inside the checkpoint, the file ``quantizer``,
        or ``<stem>.quantizer.npz`` beside the checkpoint — in that order of precedence: argument, inside, beside.
        ``require_quantizer=False`` allows none (features and boundaries only: what ``quantize`` needs)."""
        path = Path(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp = ckpt.get("hyper_parameters", {})
        if "encoder" not in hp or "segmenter" not in hp:
            raise ValueError(f"{path}: not a SylBoost checkpoint (no encoder/segmenter hyper-parameters)")
        encoder = SpeechEncoder.from_spec(hp["encoder"])
        student = {k[len("student."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
        encoder.load_state_dict(student)
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
        frames = ckpt.get(SEGMENTER_KEY, {}).get("fixed_frames")  # quantize's frame-unit baselines
        if frames:
            tok.use_fixed_frames(frames)
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
