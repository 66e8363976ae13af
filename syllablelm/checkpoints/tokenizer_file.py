"""The tokenizer checkpoint: the one file ``tokenize`` / ``units`` / ``evaluate`` need. The one module that names its
keys; :class:`syllablelm.units.tokenizer.Tokenizer` reads it with ``from_pretrained`` and writes it with ``save``.

It lives here, below ``syllablelm.units``, because :func:`syllablelm.checkpoints.load_encoder` reads it too (a
tokenizer's encoder is a backbone SylBoost or the label step can start from), and the core's layers let
``checkpoints`` import nothing above it. This module knows the layout; the tokenizer module turns it into a
:class:`Tokenizer` (segmenter, quantizer) and back.

Format ``syllablelm.tokenizer/1`` (:data:`FORMAT`): a dict saved with ``torch.save`` that loads with
``weights_only=True``, keys in this order (:data:`KEYS`):

* ``"format"``: ``"syllablelm.tokenizer/1"``; another value is refused with a message naming it;
* ``"encoder"``: :meth:`SpeechEncoder.spec` — backbone kind and config, cut at the feature layer, waveform
  normalisation;
* ``"encoder_state"``: that encoder's state dict (the trained SylBoost student; dtypes as written — the
  released-model import keeps the release's fp16);
* ``"segmenter"``: :meth:`SegmenterConfig.to_dict`;
* ``"delta"``: the δ in use (float) or None (rate / frames mode);
* ``"quantizer"``: ``{"centroids": (K, D) float32, "agglom": (K,) int64 k-means id -> unit id, "meta": JSON
  string {"standardize", "pooling", "feature_layer"}}`` (:class:`QuantizerTables`);
* ``"meta"``: plain facts — ``feature_layer``, ``normalize_waveform``, ``weights_fingerprint``, ``k``,
  ``k_merged``, ``pooling``, ``suite_version`` — plus whatever the writer adds (``quantize``: the source checkpoint
  and its arguments; ``import-sylboost``: the released files; ``convert-tokenizer``: the converted file).
  Optional ``"run_precision"`` (:data:`RUN_PRECISION`; ``import-sylboost --precision``): one of
  :data:`PRECISIONS`, the precision ``tokenize`` / ``units`` run the encoder in when their ``--precision`` is not
  given (``"auto"``: fp16 on CUDA, fp32 on the CPU). It says how to run the weights, not how they are stored.

Older tokenizer files (read only, to convert them: ``syllablelm convert-tokenizer``) were a SylBoost checkpoint
(:mod:`.suite`) with two extra top-level entries: ``"quantizer"`` (the same :class:`QuantizerTables` entry; older
``quantize`` outputs and older ``import-sylboost`` outputs) and ``"tokenizer_segmenter"``
(``{"fixed_frames": k}``: a frame-unit baseline), or with the quantizer beside the file as a ``.npz``
(:mod:`syllablelm.units.quantizer`'s format). :func:`legacy_quantizer` and :func:`legacy_fixed_frames` read the
extras.
"""
from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.checkpoints.suite import read_suite_checkpoint
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.runtime.fileio import atomic_write, weights_fingerprint

FORMAT = "syllablelm.tokenizer/1"
FORMAT_KEY = "format"
ENCODER, ENCODER_STATE = "encoder", "encoder_state"
SEGMENTER, DELTA = "segmenter", "delta"
QUANTIZER = "quantizer"  # also the entry older files (SylBoost checkpoints) carried
META = "meta"
KEYS = (FORMAT_KEY, ENCODER, ENCODER_STATE, SEGMENTER, DELTA, QUANTIZER, META)
LEGACY_SEGMENTER = "tokenizer_segmenter"  # older files only: {"fixed_frames": k}
RUN_PRECISION = "run_precision"  # optional entry of "meta": the encoder's default run precision
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # its values (syllablelm.units.tokenizer resolves "auto")


@dataclass
class QuantizerTables:
    """The ``"quantizer"`` entry: k-means centroids (K, D), the Ward map (K,) and the quantizer's options
    (``standardize``, ``pooling``, ``feature_layer``: :class:`~syllablelm.units.quantizer.UnitQuantizer`'s
    keyword arguments)."""

    centroids: torch.Tensor
    agglom: torch.Tensor
    options: dict

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def k_merged(self) -> int:
        return int(self.agglom.max()) + 1

    def entry(self) -> dict:
        """Tensors and a JSON string only: storable in a checkpoint that loads with ``weights_only=True``."""
        return {"centroids": self.centroids, "agglom": self.agglom, "meta": json.dumps(self.options)}

    @classmethod
    def from_entry(cls, entry: dict) -> "QuantizerTables":
        return cls(entry["centroids"], entry["agglom"], json.loads(entry["meta"]))


@dataclass
class TokenizerFile:
    """A tokenizer checkpoint's content (module docstring). ``quantizer`` is None only for a tokenizer being made
    (``quantize`` starts from a SylBoost checkpoint); such a one is never written."""

    encoder: SpeechEncoder
    segmenter: dict
    delta: float | None
    quantizer: QuantizerTables | None
    meta: dict


def suite_version() -> str | None:
    """This suite's installed version (package metadata), None when it is not installed."""
    try:
        return importlib.metadata.version("syllablelm")
    except importlib.metadata.PackageNotFoundError:
        return None


def is_tokenizer_checkpoint(ckpt: dict, path) -> bool:
    """Whether a loaded ``.ckpt`` dict is a tokenizer checkpoint; a ``"format"`` this version does not read is a
    ``CheckpointError`` naming ``path``."""
    if ckpt.get(FORMAT_KEY) == FORMAT:
        return True
    if FORMAT_KEY in ckpt:
        raise CheckpointError(f"{path}: checkpoint format {ckpt[FORMAT_KEY]!r}; this version reads tokenizer "
                              f"checkpoints of format {FORMAT!r}")
    return False


def tokenizer_checkpoint(encoder: SpeechEncoder, segmenter: dict, delta: float | None, quantizer: QuantizerTables,
                         meta: dict | None = None, *, encoder_state: dict | None = None) -> dict:
    """The tokenizer checkpoint as a dict (containers, tensors and strings only). ``meta`` adds to the recorded
    facts; ``encoder_state`` is the encoder's weights as they should be stored (default: its state dict)."""
    info = {"feature_layer": encoder.layer, "normalize_waveform": bool(encoder.normalize_waveform),
            "weights_fingerprint": weights_fingerprint(encoder), "k": quantizer.k, "k_merged": quantizer.k_merged,
            "pooling": quantizer.options.get("pooling"), "suite_version": suite_version(), **(meta or {})}
    state = encoder.state_dict() if encoder_state is None else encoder_state
    return {
        FORMAT_KEY: FORMAT,
        ENCODER: encoder.spec(),
        ENCODER_STATE: {k: v.detach().cpu() for k, v in state.items()},
        SEGMENTER: dict(segmenter),
        DELTA: None if delta is None else float(delta),
        QUANTIZER: quantizer.entry(),
        META: json.loads(json.dumps(info, default=str)),  # plain: loads with weights_only
    }


def run_precision(meta: dict, path=None) -> str | None:
    """The default run precision a tokenizer checkpoint's ``meta`` records (:data:`RUN_PRECISION`), None when it
    records none; a value outside :data:`PRECISIONS` is a ``CheckpointError`` naming ``path``."""
    value = meta.get(RUN_PRECISION)
    if value is not None and value not in PRECISIONS:
        raise CheckpointError(f"{path}: {RUN_PRECISION} {value!r} in the tokenizer checkpoint's meta is none of "
                              f"{list(PRECISIONS)}")
    return value


def precision_meta(precision: str) -> dict:
    """The ``meta`` entry recording ``precision`` (one of :data:`PRECISIONS`) as the default run precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"run precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return {RUN_PRECISION: precision}


def write_tokenizer_checkpoint(path, ckpt: dict) -> dict:
    """Write a :func:`tokenizer_checkpoint` dict atomically; returns its ``"meta"``."""
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)
    return ckpt[META]


def encoder_spec(ckpt: dict) -> dict:
    """The encoder's :meth:`SpeechEncoder.spec`, as recorded."""
    return ckpt[ENCODER]


def read_encoder(ckpt: dict, path) -> SpeechEncoder:
    """The encoder of a tokenizer checkpoint dict, rebuilt from its spec and loaded strictly."""
    if not isinstance(ckpt.get(ENCODER), dict) or not isinstance(ckpt.get(ENCODER_STATE), dict):
        raise CheckpointError(f"{path}: a tokenizer checkpoint without its {ENCODER!r} spec and {ENCODER_STATE!r}")
    encoder = SpeechEncoder.from_spec(ckpt[ENCODER])
    try:
        encoder.load_state_dict(ckpt[ENCODER_STATE])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the tokenizer checkpoint's {ENCODER_STATE} does not fit its encoder spec "
                              f"({e})") from e
    return encoder


def read_tokenizer_checkpoint(ckpt: dict, path) -> TokenizerFile:
    """A tokenizer checkpoint dict (already recognised by :func:`is_tokenizer_checkpoint`) as a
    :class:`TokenizerFile`; ``CheckpointError`` naming ``path`` for a damaged one."""
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: a {FORMAT} checkpoint without {missing} (damaged or not written by "
                              "save_tokenizer)")
    encoder = read_encoder(ckpt, path)
    try:
        tables = QuantizerTables.from_entry(ckpt[QUANTIZER])
        delta = ckpt[DELTA]
        segmenter = dict(ckpt[SEGMENTER])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable quantizer or segmenter in the tokenizer checkpoint "
                              f"({type(e).__name__}: {e})") from e
    return TokenizerFile(encoder, segmenter, None if delta is None else float(delta), tables, dict(ckpt[META]))


# ---- older files: a SylBoost checkpoint with the tokenizer's extras ---------------------------------------------
def legacy_quantizer(ckpt: dict) -> QuantizerTables | None:
    """The quantizer an older tokenizer file (a SylBoost checkpoint) carries inside, if any."""
    return QuantizerTables.from_entry(ckpt[QUANTIZER]) if QUANTIZER in ckpt else None


def legacy_fixed_frames(ckpt: dict) -> int | None:
    """The frame-unit cut an older tokenizer file records (``"tokenizer_segmenter"``), if any."""
    return (ckpt.get(LEGACY_SEGMENTER) or {}).get("fixed_frames") or None


def load_tokenizer_checkpoint(path: str | Path) -> TokenizerFile:
    """:func:`read_tokenizer_checkpoint` of the file ``path`` (``CheckpointError`` when it is not one)."""
    ckpt = read_suite_checkpoint(path)
    if not is_tokenizer_checkpoint(ckpt, path):
        raise CheckpointError(f"{path}: not a tokenizer checkpoint (no {FORMAT_KEY!r} entry)")
    return read_tokenizer_checkpoint(ckpt, path)
