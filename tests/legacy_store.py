"""Store versions in the layout written before issue 28 (one ``.npz`` per shard), made here independently of the
store code so that the tests of reading and converting them do not depend on what they test.

The old layout: ``iter_K/shard-RRRRR-of-WWWWW.npz`` with members ``ids`` (a numpy unicode array, sorted),
``offsets`` (int64, n + 1) and ``values`` (every utterance's rows concatenated: boundary ``(m, 2)`` float64 seconds,
units ``(m, 3)`` float64 ``[start, end, unit]``, labels ``(m,)`` int32); ``manifest.json`` lists each shard's file,
utterance count and (``sizes=True``, as the later old writer did) each file's bytes and CRC-32; no ``layout`` key.
"""
from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np


def legacy_values(kind: str, value) -> np.ndarray:
    if kind == "units":
        segments, units = value
        return np.concatenate([np.asarray(segments, np.float64).reshape(-1, 2),
                               np.asarray(units, np.float64).reshape(-1, 1)], 1)
    if kind == "labels":
        return np.asarray(value, dtype=np.int32)
    return np.asarray(value, dtype=np.float64).reshape(-1, 2)


def write_legacy_version(root, kind: str, version: int, shards: list[dict], meta: dict | None = None,
                         sizes: bool = True) -> Path:
    """Write ``shards`` (one ``{id: value}`` per shard) as version ``version`` of a ``kind`` store at ``root``
    in the old layout; returns the version folder."""
    vdir = Path(root) / f"iter_{version}"
    vdir.mkdir(parents=True, exist_ok=True)
    empty = {"units": (0, 3), "labels": (0,), "boundary": (0, 2)}[kind]
    records = []
    for r, entries in enumerate(shards):
        ids = sorted(entries)
        values = [legacy_values(kind, entries[i]) for i in ids]
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
        joined = np.concatenate(values) if values else np.zeros(empty, np.int32 if kind == "labels" else np.float64)
        path = vdir / f"shard-{r:05d}-of-{len(shards):05d}.npz"
        with open(path, "wb") as f:
            np.savez(f, ids=np.array(ids, dtype=str), offsets=offsets, values=joined)
        record = {"file": path.name, "num_utterances": len(ids)}
        if sizes:
            data = path.read_bytes()
            record["files"] = {path.name: {"bytes": len(data), "crc32": f"{zlib.crc32(data):08x}"}}
        records.append(record)
    manifest = {"kind": kind, "version": version, "world_size": len(shards),
                "num_utterances": sum(r["num_utterances"] for r in records), "shards": records,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "meta": dict(meta or {})}
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return vdir
