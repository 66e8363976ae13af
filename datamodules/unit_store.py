"""Unit store: each utterance's syllable units with their segments (the SpeechLM's training data).

Same layout and protocol as the boundary store (:mod:`datamodules.shard_store`). An entry is written as
``(segments (n, 2) seconds in file time, units (n,) int)`` and stored as one ``(n, 3)`` float64 array
``[start, end, unit]`` (unit ids are exact in float64 up to 2^53). The manifest's ``meta`` records
``vocab_size`` (units are ``0 .. vocab_size - 1``), the unit ``variant`` and how they were made.

Unit variants (:data:`syllablelm.units.quantizer.UNIT_VARIANTS`, ``syllablelm units --variant``), after k-means and
Ward:

- ``"authors_lm"``: one merged unit per min-cut segment, consecutive equal units kept. What the authors' LM
  trained on: their data loader maps each segment's k-means id through the Ward table
  (``reducer[kmeans_ids]``) and does not run-length-deduplicate afterwards.
- ``"dedup"``: runs of consecutive equal merged units collapsed into one (their unit-extraction script's
  output, and this project's earlier default).

Stores written before the variant was recorded have ``meta["deduplicated"]`` instead: True reads as ``dedup``,
False as ``authors_lm`` (the same units: ``--no-dedup`` kept one merged unit per segment).
"""
from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from syllablelm.audio.alignments import SegmentError, check_segments
from syllablelm.runtime.fileio import write_json
from syllablelm.units.quantizer import check_variant

from . import store_columns as cols
from .boundary_store import check_inside
from .shard_store import ShardStore, StoreError

VARIANT_FILE = "unit_variant.json"  # beside the shards while a version is written: resumes must not mix variants


def variant_of_meta(meta: Mapping) -> str | None:
    """The unit variant a manifest's ``meta`` records (``deduplicated`` of older stores), None if neither."""
    if meta.get("variant") is not None:
        return check_variant(str(meta["variant"]))
    if "deduplicated" in meta:
        return "dedup" if meta["deduplicated"] else "authors_lm"
    return None


class UnitStore(ShardStore):
    kind = "units"
    empty_shape = (0, 3)
    dtype = np.float64
    columns = ("segments", "units")  # float64 (m, 2) seconds; unit ids in the smallest unsigned type that holds them

    def encode(self, utt: str, value, version: int) -> np.ndarray:
        segments, units = value
        where = f"utterance {utt!r} (unit version {version})"
        seg = check_segments(segments, where=where)
        ids = np.asarray(units)
        if ids.shape != (len(seg),) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
            raise SegmentError(f"{where}: need one non-negative integer unit per segment, got {ids.dtype} "
                               f"{ids.shape} for {len(seg)} segments")
        return np.concatenate([seg, ids[:, None].astype(np.float64)], 1)

    def writer_hint(self, version: int) -> str:
        return (f"`syllablelm units --out {self.root} --version {int(version)}` with the tokenizer checkpoint, "
                "data and --variant it was written from")

    def decode(self, utt: str, value: np.ndarray, where: str, durations: Mapping[str, float] | None):
        value = value.reshape(-1, 3)
        duration = None if durations is None else durations.get(utt)
        return check_segments(value[:, :2], duration=duration, where=where), value[:, 2].astype(np.int64)

    def to_columns(self, joined: np.ndarray) -> dict[str, np.ndarray]:
        units = joined[:, 2].astype(np.int64)
        return {"segments": np.ascontiguousarray(joined[:, :2]), "units": units.astype(cols.smallest_unsigned(units))}

    def from_columns(self, columns, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return np.array(columns["segments"][start:stop]), np.array(columns["units"][start:stop], dtype=np.int64)

    def check_context(self, where, utt, columns, start, stop, durations: Mapping[str, float]) -> None:
        check_inside(columns["segments"], start, stop, durations.get(utt), where)

    def load(self, version: int, durations: Mapping[str, float] | None = None
             ) -> Mapping[str, tuple[np.ndarray, np.ndarray]]:
        """``{id: (segments (n, 2) seconds, units (n,) int64)}``."""
        return super().load(version, durations)

    def vocab_size(self, version: int) -> int:
        return int(self.manifest(version)["meta"]["vocab_size"])

    def variant(self, version: int) -> str | None:
        """The unit variant of a complete version (module docstring); None when its meta says nothing."""
        return variant_of_meta(self.manifest(version)["meta"])

    def claim_variant(self, version: int, variant: str) -> None:
        """Before writing shards of ``version``: refuse if it already holds units of another variant (a
        complete version's manifest, or the variant file an earlier, stopped run left beside its shards);
        otherwise record ``variant`` beside the shards. Every rank may call it (same content, atomic write)."""
        check_variant(variant)
        try:  # the manifest as recorded: a rerun that regenerates a damaged version must get past this
            done = variant_of_meta(self.manifest(version, check_shards=False)["meta"])
        except StoreError:  # absent, incomplete, or a manifest that does not read: nothing to disagree with
            done = None
        marker = self.version_dir(version) / VARIANT_FILE
        started = json.loads(marker.read_text())["variant"] if marker.is_file() else None
        for found, what in ((done, "its manifest"), (started, VARIANT_FILE)):
            if found is not None and found != variant:
                raise ValueError(f"{self.version_dir(version)} holds {found!r} units ({what}), not {variant!r}: "
                                 "write another --version or --out, or remove it")
        if started is None:
            write_json(marker, {"variant": variant})


def largest_unit(loaded: Mapping) -> int:
    """The largest unit id of what :meth:`UnitStore.load` returned (-1 when it holds none): one pass over the unit
    columns of a column-layout version, over the values of an old-layout one."""
    if isinstance(loaded, cols.StoreView):
        tops = [int(c["units"].max()) for _, _, _, c in loaded.shards() if len(c["units"])]
    else:
        tops = [int(u.max()) for _, u in loaded.values() if len(u)]
    return max(tops, default=-1)
