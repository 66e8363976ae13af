"""Audio -> syllable units: SylBoost features, the SSE min-cut, pooling, k-means + Ward lookup, dedup.

    tok = Tokenizer.from_pretrained("runs/tiny/tokenizer.ckpt")      # what `syllablelm quantize` writes
    segments, units = tok("speech.flac")                              # (n, 2) seconds, (n,) int64
    many = tok.batch([wave_a, wave_b], sample_rate=22050)

Framework-free (torch/numpy). One file format: the *tokenizer checkpoint* (format ``syllablelm.tokenizer/1``),
the student encoder cut at its feature layer, the segmenter and δ, the quantizer and metadata — the one file
``tokenize`` / ``units`` / ``evaluate`` need. This module reads it (:meth:`Tokenizer.from_pretrained`) and writes
it (:meth:`Tokenizer.save` / :func:`save_tokenizer`: ``quantize``, ``import-sylboost``, ``convert-tokenizer``);
its layout, key by key, is documented and named in :mod:`syllablelm.checkpoints.tokenizer_file` (it sits below
this module because ``load_encoder`` reads a tokenizer's encoder as a backbone too).

Older tokenizer files — a SylBoost checkpoint (:mod:`syllablelm.checkpoints.suite`) with the quantizer inside
(older ``quantize`` and ``import-sylboost`` outputs, a frame-unit cut under ``"tokenizer_segmenter"``), beside it as
``<stem>.quantizer.npz``, or given as a separate ``.npz`` — have one converter, :func:`convert_tokenizer`
(``syllablelm convert-tokenizer --in OLD --out NEW``). :meth:`Tokenizer.from_pretrained` still opens them: it
converts in memory (the same code) and logs a warning naming the command, so the units are the same either way.
A SylBoost checkpoint without a quantizer opens only with ``require_quantizer=False``: features and boundaries,
what ``quantize`` starts from.

Run settings (none changes the file; docs/algorithms.md, "Stage 3"):

* ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``, or ``"auto"``: fp16 on CUDA, fp32 on the CPU): the dtype the
  encoder's weights and input are cast to, as the authors' extractor casts its model and wave with ``.half()``.
  Only the encoder runs in it: the min-cut and the quantizer read its features as floats (the min-cut's costs in
  float64, pooling in float64), where the authors' extractor converts them with ``.float()`` for the min-cut and
  pools in fp16. The API's default is fp32; ``tokenize`` and ``units`` default to the precision the file records
  (``import-sylboost --precision``), else ``"auto"`` (:func:`resolve_precision`).
* ``chunk_seconds``: files longer than this are cut at pauses into chunks of at most that length (default 60 s);
  ``None`` (or 0) runs the encoder and one min-cut over the whole file, as the authors' extractor does with what it
  is given — memory grows with the square of the length (:func:`whole_file_bytes`).
* ``max_segment_frames``: the min-cut's longest segment, replacing the segmenter's ``max_len`` (the authors: 50
  frames for LibriSpeech, 35 for LibriLight).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from syllablelm.audio.frames import samples_for_frames
from syllablelm.audio.io import SAMPLE_RATE, pause_chunks, read_audio
from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig
from syllablelm.checkpoints import suite, tokenizer_file
from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.checkpoints.tokenizer_file import QuantizerTables
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.units.quantizer import UnitQuantizer, dedup

log = logging.getLogger(__name__)

CONVERT_COMMAND = "syllablelm convert-tokenizer"
LEGACY_QUANTIZER_SUFFIX = ".quantizer.npz"  # an older file's quantizer beside it: <checkpoint stem>.quantizer.npz
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # run precisions (module docstring)
WHOLE_FILE_WARN_BYTES = 8 << 30  # the whole-file path logs its estimate above this (module docstring)


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """``"fp32"``, ``"fp16"`` or ``"bf16"`` for a requested precision: ``"auto"`` (or None) is fp16 on CUDA — the
    authors' extractor runs its model in fp16 on a GPU — and fp32 on any other device."""
    if precision is None or precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {['auto', *DTYPES]}, got {precision!r}")
    return precision


def whole_file_bytes(seconds: float, *, heads: int = 12, dim: int = 768, min_len: int = 3, max_len: int = 35,
                     max_rate: float = 0.2, feature_bytes: int = 4) -> dict[str, int]:
    """Bytes of the largest tensors one whole-file pass holds for ``seconds`` of audio (T = 50 frames a second),
    the released data2vec 2.0 shape by default:

    * ``attention``: the encoder's peak, three ``(heads, T, T)`` float32 tensors alive at once (the ALiBi bias,
      a block's logits and their sum with it; in fp16 / bf16 the logits come first in the run precision, 14 bytes
      a number instead of 12) — 144 bytes × T² measured on the CPU for the released shape (168 in fp16);
    * ``features``: ``(T, dim)`` at ``feature_bytes`` a number (4: fp32, 2: fp16 / bf16);
    * ``cost_table``: the min-cut's segment costs, ``(max_len - min_len + 1, T + 1)`` float64;
    * ``backpointers``: the min-cut DP's ``(int(max_rate·T), T + 1)`` uint8 table, one row per segment count.
    """
    T = int(round(seconds * 50))
    return {"attention": heads * T * T * (12 if feature_bytes == 4 else 14), "features": T * dim * feature_bytes,
            "cost_table": (max_len - min_len + 1) * (T + 1) * 8, "backpointers": int(max_rate * T) * (T + 1)}


def quantizer_tables(q: UnitQuantizer) -> QuantizerTables:
    """A quantizer as the tokenizer checkpoint stores it."""
    return QuantizerTables(torch.from_numpy(q.centroids), torch.from_numpy(q.agglom),
                           {"standardize": q.standardize, "pooling": q.pooling, "feature_layer": q.feature_layer})


def quantizer_from_tables(t: QuantizerTables) -> UnitQuantizer:
    return UnitQuantizer(t.centroids.numpy(), t.agglom.numpy(), **t.options)


def tokenizer_checkpoint(encoder: SpeechEncoder, segmenter: Segmenter, quantizer: UnitQuantizer,
                         meta: dict | None = None, *, encoder_state: dict | None = None) -> dict:
    """The tokenizer checkpoint as a dict (containers, tensors and strings only). ``meta`` adds to the recorded
    facts; ``encoder_state`` stores the encoder's weights as given (e.g. in the dtype of a file they came from)
    instead of its state dict."""
    return tokenizer_file.tokenizer_checkpoint(encoder, segmenter.config.to_dict(), segmenter.delta,
                                               quantizer_tables(quantizer), meta, encoder_state=encoder_state)


def write_tokenizer_checkpoint(path: str | os.PathLike, ckpt: dict) -> dict:
    """Write a :func:`tokenizer_checkpoint` dict atomically; returns its ``"meta"``."""
    return tokenizer_file.write_tokenizer_checkpoint(path, ckpt)


def save_tokenizer(path: str | os.PathLike, encoder: SpeechEncoder, segmenter: Segmenter, quantizer: UnitQuantizer,
                   meta: dict | None = None, *, encoder_state: dict | None = None) -> dict:
    """Write the tokenizer checkpoint atomically (``meta`` adds to the recorded facts); returns its ``"meta"``."""
    return write_tokenizer_checkpoint(path, tokenizer_checkpoint(encoder, segmenter, quantizer, meta,
                                                                 encoder_state=encoder_state))


def convert_tokenizer(old: str | os.PathLike, new: str | os.PathLike, *,
                      quantizer: str | os.PathLike | None = None) -> dict:
    """The converter of older tokenizer files (module docstring): write ``old`` — a SylBoost checkpoint with its
    quantizer inside, beside it, or the file ``quantizer`` — as a tokenizer checkpoint ``new`` that gives the same
    units. The encoder's weights keep their stored dtype. Returns the new file's ``"meta"`` (``"converted_from"``:
    the old file)."""
    old = Path(old)
    ckpt = suite.read_suite_checkpoint(old)
    if tokenizer_file.is_tokenizer_checkpoint(ckpt, old):
        raise CheckpointError(f"{old}: already a tokenizer checkpoint ({tokenizer_file.FORMAT}): nothing to convert")
    tok, state = Tokenizer._from_older_file(ckpt, old, quantizer=quantizer)
    return save_tokenizer(new, tok.encoder, tok.segmenter, tok._quantizer(), encoder_state=state,
                          meta={"command": "convert-tokenizer", "converted_from": str(old.resolve())})


class Tokenizer:
    def __init__(self, encoder: SpeechEncoder, quantizer: UnitQuantizer | None,
                 segmenter: Segmenter | SegmenterConfig | dict, *, delta: float | None = None,
                 device: str | torch.device = "cpu", chunk_seconds: float | None = 60.0,
                 group_seconds: float = 240.0, precision: str = "fp32", max_segment_frames: int | None = None):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = DTYPES[self.precision]
        if self.precision == "fp16" and self.device.type == "cpu":
            log.warning("the encoder runs in fp16 on the CPU: it works, slowly (several times slower than fp32); "
                        "fp16 is the authors' GPU setting")
        # moved and cast in place (nn.Module.to), as the authors' .half(): pass a copy to keep the original
        self.encoder = encoder.eval().to(device=self.device, dtype=self.dtype)
        self.quantizer = quantizer
        self.segmenter = segmenter if isinstance(segmenter, Segmenter) else Segmenter(segmenter, delta=delta)
        if max_segment_frames is not None:
            self.use_max_segment(max_segment_frames)
        self.chunk_seconds = float(chunk_seconds) if chunk_seconds else None  # None: whole files
        self.group_seconds = max(group_seconds, self.chunk_seconds or 0.0)
        self.meta: dict = {}  # a tokenizer checkpoint's "meta" (empty for one made or converted in memory)

    @property
    def delta(self) -> float | None:
        return self.segmenter.delta

    def run_settings(self) -> dict:
        """How this tokenizer runs (what ``units`` records in its manifest): precision, longest segment, chunking."""
        return {"precision": self.precision, "max_segment_frames": self.segmenter.config.max_len,
                "chunk_seconds": self.chunk_seconds}

    def describe_run(self) -> str:
        """One line for the log: the encoder's precision, the segment lengths and the chunking."""
        c = self.segmenter.config
        chunks = (f"files cut at pauses into chunks of at most {self.chunk_seconds:g} s" if self.chunk_seconds
                  else "whole files")
        return f"the encoder in {self.precision}, segments of {c.min_len}..{c.max_len} frames, {chunks}"

    def use_max_segment(self, frames: int) -> None:
        """Cut segments of at most ``frames`` frames (inclusive, as the authors' ``s``: 35 for LibriLight) instead
        of the segmenter's ``max_len``; δ, quantile, rate cap and the rest stay."""
        try:
            config = dataclasses.replace(self.segmenter.config, max_len=frames)  # validated: min_len <= frames
        except ValueError as e:
            raise ValueError(f"max segment of {frames!r} frames: {e}") from e
        self.segmenter = Segmenter(config, delta=self.segmenter.delta)

    def use_fixed_frames(self, frames: int) -> None:
        """Cut every ``frames`` frames instead of the min-cut (frame-unit baselines; 2 = 25 Hz units)."""
        c = self.segmenter.config
        self.segmenter = Segmenter(SegmenterConfig(fixed_frames=frames, min_len=c.min_len, max_len=c.max_len))

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> dict:
        """Write this tokenizer as a tokenizer checkpoint (:func:`save_tokenizer`); returns its ``"meta"``
        (``meta`` adds to the recorded facts)."""
        return save_tokenizer(path, self.encoder, self.segmenter, self._quantizer(), meta)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        quantizer: str | os.PathLike | None = None, require_quantizer: bool = True,
                        chunk_seconds: float | None = 60.0, group_seconds: float = 240.0,
                        precision: str | None = "fp32", max_segment_frames: int | None = None) -> "Tokenizer":
        """The tokenizer a file holds — the one way to open one.

        * A tokenizer checkpoint (``syllablelm quantize``, ``import-sylboost``, ``convert-tokenizer``): as written;
          ``quantizer`` (a ``.npz``) replaces the one inside.
        * An older tokenizer file (module docstring): converted in memory as :func:`convert_tokenizer` converts it
          on disk — quantizer from ``quantizer``, else inside the checkpoint, else ``<stem>.quantizer.npz`` beside
          it — with a warning naming ``syllablelm convert-tokenizer``.
        * A SylBoost checkpoint and no quantizer anywhere: with ``require_quantizer=False`` a tokenizer without
          one (features and boundaries: what ``quantize`` needs), else ``FileNotFoundError``.

        An unreadable file or one of another kind is a ``CheckpointError`` (a ``ValueError``) naming the file.
        ``chunk_seconds`` / ``group_seconds``: see :meth:`batch`. ``precision``: the encoder's (module docstring);
        None = the one the file records (``import-sylboost --precision``), else ``"auto"`` — the commands' rule.
        ``max_segment_frames``: see :meth:`use_max_segment` (None: the file's segmenter)."""
        path = Path(path)
        ckpt = suite.read_suite_checkpoint(path)
        opts = {"device": device, "chunk_seconds": chunk_seconds, "group_seconds": group_seconds,
                "max_segment_frames": max_segment_frames}
        if tokenizer_file.is_tokenizer_checkpoint(ckpt, path):
            f = tokenizer_file.read_tokenizer_checkpoint(ckpt, path)
            opts["precision"] = precision or tokenizer_file.run_precision(f.meta, path) or "auto"
            try:
                q = quantizer_from_tables(f.quantizer)
                segmenter = Segmenter(f.segmenter, delta=f.delta)
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: unreadable quantizer or segmenter in the tokenizer checkpoint "
                                      f"({type(e).__name__}: {e})") from e
            if quantizer is not None:  # an explicit file replaces the one inside
                q = UnitQuantizer.load(quantizer)
            tok = cls(f.encoder, q, segmenter, **opts)
            tok.meta = f.meta
            return tok
        opts["precision"] = precision or "auto"  # older files record none
        tok, _ = cls._from_older_file(ckpt, path, quantizer=quantizer, require_quantizer=require_quantizer, **opts)
        if tok.quantizer is not None:
            log.warning("%s is an older tokenizer file (a SylBoost checkpoint and its quantizer), converted in "
                        "memory; write it once as a tokenizer checkpoint: %s --in %s --out NEW.ckpt", path,
                        CONVERT_COMMAND, path)
        return tok

    @classmethod
    def _from_older_file(cls, ckpt: dict, path: Path, *, quantizer=None, require_quantizer: bool = True,
                         **kwargs) -> tuple["Tokenizer", dict]:
        """The tokenizer an older file (a SylBoost checkpoint dict) describes, and its student's weights as stored:
        the one reading of older files, which :func:`convert_tokenizer` writes out and :meth:`from_pretrained`
        uses in memory."""
        if suite.lightning_format(ckpt, path) != "sylboost-ckpt":
            raise CheckpointError(f"{path}: neither a tokenizer nor a SylBoost checkpoint (no encoder/segmenter "
                                  "hyper-parameters)")
        segmenter, delta = suite.sylboost_segmenter(ckpt, path)
        encoder = suite.read_sylboost_student(ckpt, path)
        beside = path.with_suffix(LEGACY_QUANTIZER_SUFFIX)
        inside = tokenizer_file.legacy_quantizer(ckpt)
        if quantizer is not None:
            q = UnitQuantizer.load(quantizer)
        elif inside is not None:
            q = quantizer_from_tables(inside)
        elif beside.exists():
            q = UnitQuantizer.load(beside)
        elif not require_quantizer:
            q = None
        else:
            raise FileNotFoundError(f"{path}: no quantizer inside the checkpoint or beside it ({beside.name}); run "
                                    "`syllablelm quantize`")
        tok = cls(encoder, q, segmenter, delta=delta, **kwargs)
        frames = tokenizer_file.legacy_fixed_frames(ckpt)  # older quantize outputs' frame-unit baselines
        if frames:
            tok.use_fixed_frames(frames)
        return tok, suite.sylboost_student_state(ckpt, path)

    @property
    def vocab_size(self) -> int:
        return self._quantizer().k_merged

    def _quantizer(self) -> UnitQuantizer:
        if self.quantizer is None:
            raise RuntimeError("this tokenizer has no quantizer yet: run `syllablelm quantize`")
        return self.quantizer

    @torch.inference_mode()
    def features(self, wave: torch.Tensor) -> torch.Tensor:  # (S,) -> (T, D) in the run precision
        """Features of one 16 kHz wave; the wave is cast to the run precision as the encoder is."""
        return self.encoder(wave[None].to(self.device, self.dtype))[0][0]

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
        DP is exact per chunk, so grouping never changes the result. A file no longer than ``chunk_seconds`` is
        one chunk. With ``chunk_seconds=None`` every file is one chunk whatever its length — one encoder pass and
        one min-cut over all its frames, the authors' extractor on a whole file; its memory grows with the square
        of the length (:func:`whole_file_bytes`: about 4.2 TiB of attention for an hour)."""
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
            seconds = len(wave) / SAMPLE_RATE
            if self.chunk_seconds is None:
                self._warn_whole_file(audio if isinstance(audio, (str, os.PathLike)) else f"audio {i}", seconds)
            chunks = [(0.0, seconds)] if self.chunk_seconds is None else \
                pause_chunks(wave, SAMPLE_RATE, max_seconds=self.chunk_seconds)
            for start, end in chunks:
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

    def _warn_whole_file(self, name, seconds: float) -> None:
        config = self.encoder.model.config  # data2vec 2.0's names first, then HF's
        heads = getattr(config, "num_heads", None) or getattr(config, "num_attention_heads", 12)
        dim = getattr(config, "embed_dim", None) or getattr(config, "hidden_size", 768)
        c = self.segmenter.config
        need = whole_file_bytes(seconds, heads=heads, dim=dim, min_len=c.min_len, max_len=c.max_len,
                                max_rate=c.max_rate, feature_bytes=self.dtype.itemsize)
        if max(need.values()) > WHOLE_FILE_WARN_BYTES:
            log.warning("%s: %.0f s as one whole-file pass: about %s", name, seconds,
                        ", ".join(f"{v / 2**30:.1f} GiB for {k}" for k, v in need.items()))

    def __call__(self, audio, sample_rate: int | None = None, *, deduplicate: bool = True):
        return self.batch([audio], sample_rate, deduplicate=deduplicate)[0]
