"""Versioned per-rank shard stores: the on-disk hand-off between stages.

Layout::

    ROOT/iter_0/shard-00000-of-00002.npz   rank 0's utterances (ids, offsets, values)
    ROOT/iter_0/shard-00001-of-00002.npz
    ROOT/iter_0/manifest.json              written by rank 0 after every shard exists: the version is complete

Every file is written atomically (temp + rename). A version without ``manifest.json`` is incomplete and is
never read; rerunning a step overwrites its shards and then the manifest. Subclasses say what one utterance's
value is and how it is checked (:class:`~datamodules.boundary_store.BoundaryStore`: segments in seconds;
:class:`~datamodules.label_store.LabelStore`: frame labels).

Typical use under DDP (the regeneration callback and the offline steps do exactly this)::

    store.write_shard(v, rank, world, {utt_id: value, ...})
    barrier()
    if rank == 0:
        store.finalize(v, world)
    barrier()
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from syllablelm.alignments import SegmentError
from syllablelm.fileio import atomic_write, write_json, write_npz

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^iter_(\d+)$")


class IncompleteVersionError(FileNotFoundError):
    """A version that has no manifest (still being written, or its writer crashed)."""


class ShardStore:
    """Read and write ``iter_K`` versions under ``root``; values are numpy arrays concatenated along axis 0."""

    kind = "values"
    empty_shape: tuple[int, ...] = (0,)
    dtype: Any = np.float64

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ---- what one utterance's value is (subclasses) -------------------------------------------------------
    def encode(self, utt: str, value, version: int) -> np.ndarray:
        """Check and convert one value before it is written (raise naming ``utt``)."""
        return np.asarray(value, dtype=self.dtype)

    def decode(self, utt: str, value: np.ndarray, where: str, context: Any) -> np.ndarray:
        """Check one value after it is read; ``where`` names the shard file, ``context`` is what
        :meth:`load` was given (e.g. durations)."""
        return value

    # ---- paths --------------------------------------------------------------------------------------------
    def version_dir(self, version: int) -> Path:
        return self.root / f"iter_{int(version)}"

    def shard_path(self, version: int, rank: int, world_size: int) -> Path:
        return self.version_dir(version) / f"shard-{rank:05d}-of-{world_size:05d}.npz"

    # ---- state --------------------------------------------------------------------------------------------
    def is_complete(self, version: int) -> bool:
        """True when the manifest exists and every shard it lists is present."""
        try:
            manifest = self.manifest(version)
        except IncompleteVersionError:
            return False
        return all((self.version_dir(version) / s["file"]).is_file() for s in manifest["shards"])

    def versions(self) -> list[int]:
        """Complete versions, ascending."""
        if not self.root.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(v for v in (int(m.group(1)) for m in found if m) if self.is_complete(v))

    def latest_version(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def manifest(self, version: int) -> dict:
        path = self.version_dir(version) / MANIFEST
        if not path.is_file():
            raise IncompleteVersionError(
                f"{self.version_dir(version)}: {self.kind} version {version} is incomplete (no {MANIFEST}); "
                "it is still being written or its writer stopped early — rerun that step")
        return json.loads(path.read_text())

    def missing_shards(self, version: int, world_size: int) -> list[int]:
        return [r for r in range(world_size) if not self.shard_path(version, r, world_size).is_file()]

    # ---- writing ------------------------------------------------------------------------------------------
    def write_shard(self, version: int, rank: int, world_size: int, entries: Mapping[str, Any]) -> Path:
        """Write one rank's utterances atomically. Entries are checked before anything is written."""
        ids = sorted(entries)
        values = [self.encode(i, entries[i], version) for i in ids]
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        path = self.shard_path(version, rank, world_size)
        joined = np.concatenate(values) if values else np.zeros(self.empty_shape, dtype=self.dtype)
        write_npz(path, ids=np.array(ids, dtype=str), offsets=np.concatenate([[0], np.cumsum(lengths)]),
                  values=joined)
        return path

    def finalize(self, version: int, world_size: int, meta: Mapping | None = None) -> dict:
        """Rank 0, after a barrier: check that every shard of ``world_size`` exists, then write the manifest.

        Shards of an earlier attempt with another world size are removed first so a version never mixes runs.
        """
        vdir = self.version_dir(version)
        missing = self.missing_shards(version, world_size)
        if missing:
            raise IncompleteVersionError(f"{vdir}: shards of ranks {missing} (of {world_size}) are missing")
        expected = {self.shard_path(version, r, world_size).name for r in range(world_size)}
        for stale in vdir.glob("shard-*.npz"):
            if stale.name not in expected:
                stale.unlink()
        shards, total = [], 0
        for r in range(world_size):
            with np.load(self.shard_path(version, r, world_size)) as z:
                n = len(z["ids"])
            shards.append({"file": self.shard_path(version, r, world_size).name, "num_utterances": n})
            total += n
        manifest = {"kind": self.kind, "version": int(version), "world_size": world_size, "num_utterances": total,
                    "shards": shards, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "meta": dict(meta or {})}
        write_json(vdir / MANIFEST, manifest, indent=1)
        return manifest

    def finalize_when_complete(self, version: int, world_size: int, meta: Mapping | None = None, *,
                               timeout: float = 6 * 3600.0, poll: float = 2.0) -> dict:
        """Rank 0 of a step whose ranks share no process group (separate jobs, SLURM arrays): wait until every
        rank's shard exists, then :meth:`finalize`. Raises ``TimeoutError`` naming the missing ranks."""
        start = time.time()
        while missing := self.missing_shards(version, world_size):
            if time.time() - start > timeout:
                raise TimeoutError(f"{self.version_dir(version)}: after {timeout:.0f} s the shards of ranks "
                                   f"{missing} are still missing")
            time.sleep(poll)
        return self.finalize(version, world_size, meta)

    def shards_to_write(self, version: int, rank: int, world_size: int, shards: int | None = None
                        ) -> tuple[int, list[int]]:
        """An offline pass's plan for one rank: the output is ``shards`` shard files (default: one per rank) dealt
        round-robin to the ranks; returns ``(number of shard files, the indices this rank has still to write)``.
        More shards than ranks give finer resume points: a stopped pass redoes only unwritten shards, and the
        rerun may use a different number of ranks (keep ``shards`` the same)."""
        n = shards or world_size
        if n < world_size:
            raise ValueError(f"{self.root}: {n} shards for {world_size} ranks; need at least one shard per rank")
        todo = []
        for s in range(rank, n, world_size):
            if self.shard_path(version, s, n).exists():
                log.info("shard %d of %d already done (%s)", s, n, self.version_dir(version))
            else:
                todo.append(s)
        return n, todo

    def copy_version(self, version: int, dest: "ShardStore", dest_version: int | None = None) -> dict:
        """Copy a complete version into another store (shards atomically, then the manifest): e.g. LossPred's
        version 0 as the starting point of a second SylBoost run that keeps its own later versions."""
        if not self.is_complete(version):
            raise IncompleteVersionError(f"{self.version_dir(version)}: no complete version {version} to copy")
        manifest = self.manifest(version)
        target = version if dest_version is None else dest_version
        dest.invalidate(target)
        for shard in manifest["shards"]:
            data = (self.version_dir(version) / shard["file"]).read_bytes()
            with atomic_write(dest.version_dir(target) / shard["file"], "wb") as f:
                f.write(data)
        meta = {**manifest["meta"], "copied_from": str(self.version_dir(version))}
        return dest.finalize(target, manifest["world_size"], meta=meta)

    def invalidate(self, version: int) -> None:
        """Remove a version's manifest (making it incomplete) before it is rewritten."""
        (self.version_dir(version) / MANIFEST).unlink(missing_ok=True)

    def remove(self, version: int) -> None:
        shutil.rmtree(self.version_dir(version), ignore_errors=True)

    # ---- reading ------------------------------------------------------------------------------------------
    def load(self, version: int, context: Any = None) -> dict[str, np.ndarray]:
        """All utterances of a complete version, ``{id: value}``; errors name the shard file."""
        manifest = self.manifest(version)
        out: dict[str, np.ndarray] = {}
        for shard in manifest["shards"]:
            path = self.version_dir(version) / shard["file"]
            try:
                with np.load(path) as z:
                    ids, offsets, values = z["ids"], z["offsets"], z["values"]
            except (OSError, ValueError, KeyError) as e:
                raise SegmentError(f"{path}: unreadable {self.kind} shard ({e})") from e
            if len(ids) != shard["num_utterances"] or len(offsets) != len(ids) + 1:
                raise SegmentError(f"{path}: shard holds {len(ids)} utterances, manifest says "
                                   f"{shard['num_utterances']}")
            for i, utt in enumerate(ids.tolist()):
                if utt in out:
                    raise SegmentError(f"{path}: utterance {utt!r} appears in more than one shard")
                out[utt] = self.decode(utt, values[offsets[i]:offsets[i + 1]], f"{path} [utterance {utt}]",
                                       context)
        return out
