"""Versioned per-rank shard stores: the on-disk hand-off between stages.

Layout::

    ROOT/iter_0/shard-00000-of-00002.<column>.npy   rank 0's utterances, one file per column (ids, id offsets,
    ROOT/iter_0/shard-00001-of-00002.<column>.npy   value columns, value offsets last; datamodules.store_columns)
    ROOT/iter_0/index.<column>.npy                  the version's id index (sorted ids -> shard, rows)
    ROOT/iter_0/manifest.json                       written by rank 0 after every shard exists: the version is complete

Versions are read memory-mapped (:class:`~datamodules.store_columns.StoreView`: one utterance in O(its length), shards
opened lazily); :mod:`datamodules.store_columns` describes the files. Versions written before that layout (the
manifest records no ``"layout"``) hold one ``.npz`` per shard (``ids``, ``offsets``, ``values``): they still read,
value-identical, into a dict, and :meth:`ShardStore.convert` (``syllablelm store-convert``) rewrites them as columns
in place. A store root may mix both.

Every file is written atomically (temp + rename). A version without ``manifest.json`` is incomplete and is
never read; rerunning a step overwrites its shards and then the manifest. Subclasses say what one utterance's
value is and how it is checked (:class:`~datamodules.boundary_store.BoundaryStore`: segments in seconds;
:class:`~datamodules.label_store.LabelStore`: frame labels) and which step writes their versions
(:meth:`ShardStore.writer_hint`).

Typical use under DDP (the regeneration callback and the offline steps do exactly this)::

    store.write_shard(v, rank, world, {utt_id: value, ...})
    barrier()
    if rank == 0:
        store.finalize(v, world)
    barrier()

Integrity. :meth:`ShardStore.finalize` records in the manifest, for each shard, the files it consists of with
their byte sizes and CRC-32 (``shards[i]["files"] = {name: {"bytes": n, "crc32": "8 hex digits"}}``: the
column files of a shard, or its one ``.npz`` in the old layout; the id index's files in ``index["files"]``), and
in ``meta`` the command line that wrote
the version (``command_line``, a list as in ``sys.argv``, and ``cwd``) unless the caller's meta gives one.
Sizes are checked whenever a version's state is asked (a ``stat`` per file); checksums when a version is read
(:meth:`ShardStore.load`, :meth:`ShardStore.copy_version`) or on request (:meth:`ShardStore.verify`). CRC-32
(``zlib.crc32``, streamed in 1 MiB blocks) rather than SHA-1: measured on one core, 3.7 GB/s against 1.7 GB/s
for ``hashlib.sha1`` with the CPU's SHA instructions (about 0.7 GB/s without them), so the check costs a
fraction of reading the file from disk; it detects every error burst up to 32 bits long (any changed byte) and
other random damage with probability 1 - 2^-32. The threat is a truncated copy, a crashed disk or a flipped bit,
not tampering, so a cryptographic hash would buy nothing. Manifests written before sizes were recorded still
load: their shards are checked for presence only (and a damaged ``.npz`` still fails its read with a clear
error).

The states of a version (:meth:`ShardStore.status`), each with its own error when it is read:

==========  =============================================================================  ======================
absent      no ``iter_K`` folder                                                           AbsentVersionError
incomplete  a folder without ``manifest.json``: still being written, or its writer stopped  IncompleteVersionError
damaged     a manifest, but a shard file it lists is missing, truncated or changed, or the   DamagedVersionError
            manifest itself is unreadable
complete    the manifest and every shard file it lists, at its recorded size
==========  =============================================================================  ======================

Every message is one line naming the version folder or the file, what is wrong and how to regenerate it (the
recorded command, else the step that writes this store kind). :meth:`ShardStore.versions` lists complete versions
only, but :meth:`ShardStore.latest_version` (and so ``"latest"``) refuses to skip a damaged version newer than
the newest complete one: falling back to an older version silently is how a report loses a row.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from syllablelm.audio.alignments import SegmentError
from syllablelm.runtime.fileio import atomic_write, write_json

from . import store_columns as cols

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
CHECKSUM = "crc32"  # the key of a file's checksum in a shard record (zlib.crc32, 8 lower-case hex digits)
ABSENT, INCOMPLETE, DAMAGED, COMPLETE = "absent", "incomplete", "damaged", "complete"
_VERSION_DIR = re.compile(r"^iter_(\d+)$")
_BLOCK = 1 << 20
# what reading a truncated or corrupted .npz can raise (numpy's header parser, zipfile, zlib, a huge bogus shape)
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, SyntaxError,
                MemoryError)


class StoreError(SegmentError):
    """A store version that cannot be read as asked. The message (one line) names the version folder or the file,
    says what is wrong and how to regenerate it. A :class:`~syllablelm.audio.alignments.SegmentError` (a
    ``ValueError``),
    as the store's read errors have always been."""


class IncompleteVersionError(StoreError, FileNotFoundError):
    """A version folder without a manifest (still being written, or its writer stopped early); also a
    ``FileNotFoundError``, as before."""


class AbsentVersionError(IncompleteVersionError):
    """No ``iter_K`` folder at all. An :class:`IncompleteVersionError` too, for callers that only ask whether a
    version is there to read (e.g. before writing it)."""


class DamagedVersionError(StoreError):
    """A version whose manifest exists but whose shards are not what it records (missing, truncated, changed,
    unreadable), or whose manifest is unreadable."""


_ERRORS = {ABSENT: AbsentVersionError, INCOMPLETE: IncompleteVersionError, DAMAGED: DamagedVersionError}


def file_checksum(path: str | os.PathLike) -> str:
    """CRC-32 of a file's bytes as 8 hex digits, streamed (module docstring: why CRC-32)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def command_text(argv: list[str]) -> str:
    """A recorded ``sys.argv`` as a command to paste into a shell: the ``syllablelm`` entry point (its console
    script, or ``experiments/cli.py`` that ``python -m experiments.cli`` and the stage runner run) reads as
    ``syllablelm``; another ``.py`` script as ``python SCRIPT``."""
    if not argv:
        return "(an empty command line)"
    head, rest = Path(argv[0]), [str(a) for a in argv[1:]]
    if head.name == "syllablelm" or head.parts[-2:] == ("experiments", "cli.py"):
        return shlex.join(["syllablelm", *rest])
    if head.suffix == ".py":
        return shlex.join(["python", str(head), *rest])
    return shlex.join([str(head), *rest])


class ShardStore:
    """Read and write ``iter_K`` versions under ``root``; values are numpy arrays concatenated along axis 0."""

    kind = "store"  # what the messages call a store of no known kind; subclasses name theirs
    empty_shape: tuple[int, ...] = (0,)
    dtype: Any = np.float64
    columns: tuple[str, ...] = ("values",)  # the value columns of the column layout (to_columns / from_columns)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ---- what one utterance's value is, and who writes versions (subclasses) --------------------------------
    def encode(self, utt: str, value, version: int) -> np.ndarray:
        """Check and convert one value before it is written (raise naming ``utt``)."""
        return np.asarray(value, dtype=self.dtype)

    def decode(self, utt: str, value: np.ndarray, where: str, context: Any) -> np.ndarray:
        """Check one value after it is read; ``where`` names the shard file, ``context`` is what
        :meth:`load` was given (e.g. durations)."""
        return value

    def to_columns(self, joined: np.ndarray) -> dict[str, np.ndarray]:
        """The value columns of a shard from its encoded values concatenated along axis 0 (:attr:`columns`)."""
        return {"values": joined}

    def from_columns(self, columns: Mapping[str, np.ndarray], start: int, stop: int):
        """One utterance's value from rows ``[start, stop)`` of the (memory-mapped) columns, copied out: what
        :meth:`decode` returns for the same utterance of the old layout."""
        return np.array(columns["values"][start:stop])

    def check_context(self, where: str, utt: str, columns: Mapping[str, np.ndarray], start: int, stop: int,
                      context: Any) -> None:
        """Check one stored value against what :meth:`load` was given (durations, sample counts), in the bounded
        pass :meth:`load` makes over a column-layout version (values were checked when written)."""

    def writer_hint(self, version: int) -> str:
        """The step that writes ``version`` of this store kind: what an error tells the user to rerun when the
        version records no command line (it is incomplete, absent, or was written before commands were
        recorded)."""
        return f"the step that writes version {int(version)} of this store"

    # ---- paths --------------------------------------------------------------------------------------------
    def version_dir(self, version: int) -> Path:
        return self.root / f"iter_{int(version)}"

    def shard_path(self, version: int, rank: int, world_size: int) -> Path:
        """The file a shard writes last: it is complete when this exists (:mod:`datamodules.store_columns`)."""
        return cols.column_file(self.version_dir(version), cols.shard_prefix(rank, world_size), cols.MARKER)

    def legacy_shard_path(self, version: int, rank: int, world_size: int) -> Path:
        """A shard of the old layout: one ``.npz``."""
        return self.version_dir(version) / f"{cols.shard_prefix(rank, world_size)}.npz"

    def shard_files(self, version: int, rank: int, world_size: int) -> list[Path]:
        """The files one shard consists of, as :meth:`finalize` records them (the marker last)."""
        return cols.shard_files(self.version_dir(version), cols.shard_prefix(rank, world_size), self.columns)

    # ---- state --------------------------------------------------------------------------------------------
    def status(self, version: int) -> tuple[str, str | None]:
        """``(state, problem)``: ``"complete"`` with None, or ``"absent"`` / ``"incomplete"`` / ``"damaged"``
        with the one-line message its error carries (module docstring). Checks the recorded sizes, not the
        checksums (no file is read)."""
        state, problem, _ = self._inspect(version, checksums=False)
        return state, problem

    def is_complete(self, version: int) -> bool:
        """True when the manifest exists and every shard file it lists is present at its recorded size: this
        output exists and is whole (use :meth:`status` to say why not)."""
        return self.status(version)[0] == COMPLETE

    def verify(self, version: int, *, checksums: bool = False) -> dict:
        """The manifest of a complete version; raises the error of its state otherwise. Sizes are always checked
        (a ``stat`` per file: cheap before training); ``checksums=True`` reads every shard file through too."""
        state, problem, manifest = self._inspect(version, checksums=checksums)
        if state != COMPLETE:
            raise _ERRORS[state](problem)
        return manifest

    def versions(self) -> list[int]:
        """Complete versions, ascending."""
        return [v for v in self._version_folders() if self.is_complete(v)]

    def latest_version(self) -> int | None:
        """The newest complete version (None if there is none). Raises :class:`DamagedVersionError` when a newer
        version is damaged: "latest" must not fall back to an older version while the newest is broken.
        Incomplete versions (being written) are passed over as before."""
        for v in reversed(self._version_folders()):
            state, problem = self.status(v)
            if state == COMPLETE:
                return v
            if state == DAMAGED:
                raise DamagedVersionError(f"{problem}; \"latest\" does not fall back to an older version while "
                                          f"the newest {self.kind} version with a manifest is damaged")
        return None

    def resolve(self, version: int | str) -> int:
        """A version number; ``"latest"`` is :meth:`latest_version`, and an error saying what the store holds
        when there is no complete version."""
        if version != "latest":
            return int(version)
        latest = self.latest_version()
        if latest is None:
            raise AbsentVersionError(f"{self.root}: no complete {self.kind} version to read ({self.inventory()}); "
                                     f"to write one, {self.regenerate_hint(0)}")
        return latest

    def manifest(self, version: int, *, check_shards: bool = True) -> dict:
        """The manifest of a complete version (raises the error of its state otherwise). ``check_shards=False``:
        the manifest as recorded even when the version is damaged (it still raises for an absent or incomplete
        version, or an unreadable manifest): for a step that rewrites the version."""
        if check_shards:
            return self.verify(version)
        state, problem, manifest = self._read_manifest(version)
        if manifest is None:
            raise _ERRORS[state](problem)
        return manifest

    def missing_shards(self, version: int, world_size: int) -> list[int]:
        return [r for r in range(world_size) if not self.shard_path(version, r, world_size).is_file()]

    def shard_problem(self, version: int, shard: Mapping, *, checksums: bool = False) -> tuple[Path, str] | None:
        """``(file, what is wrong)`` for the first file of a manifest's shard record that is missing, has another
        size than recorded or (with ``checksums``) another CRC-32; None when it is whole. Records of manifests
        written before sizes were recorded are checked for presence only."""
        vdir = self.version_dir(version)
        for name, rec in (shard.get("files") or {shard["file"]: {}}).items():
            path = vdir / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return path, "the shard file is missing, though the manifest lists it"
            except OSError as e:
                return path, f"the shard file cannot be read ({e})"
            want = rec.get("bytes")
            if want is not None and size != want:
                return path, (f"the shard file is truncated: {size} of {want} bytes" if size < want else
                              f"the shard file has {size} bytes, the manifest recorded {want}")
            if checksums and rec.get(CHECKSUM):
                try:
                    got = file_checksum(path)
                except OSError as e:
                    return path, f"the shard file cannot be read ({e})"
                if got != rec[CHECKSUM]:
                    return path, (f"checksum mismatch: the shard file's crc32 is {got}, the manifest recorded "
                                  f"{rec[CHECKSUM]} (its bytes changed after it was written)")
        return None

    def regenerate_hint(self, version: int, manifest: Mapping | None = None) -> str:
        """How to make ``version`` again (``rerun ...``): the command its manifest records, else
        :meth:`writer_hint`."""
        meta = (manifest or {}).get("meta") or {}
        argv = meta.get("command_line")
        if argv:
            where = f" in {meta['cwd']}" if meta.get("cwd") else ""
            text = argv if isinstance(argv, str) else command_text([str(a) for a in argv])
            return f"rerun `{text}`{where} (the command that wrote it)"
        return f"rerun {self.writer_hint(version)}"

    def _version_folders(self) -> list[int]:
        """Every ``iter_K`` folder's K, ascending, whatever its state."""
        if not self.root.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def inventory(self) -> str:
        """What the store holds, for an error message: ``versions here: 0, 1 complete; 2 damaged``."""
        if not self.root.is_dir():
            return f"{self.root} does not exist"
        by: dict[str, list[str]] = {}
        for v in self._version_folders():
            by.setdefault(self.status(v)[0], []).append(str(v))
        if not by:
            return "no versions here"
        return "versions here: " + "; ".join(f"{', '.join(by[s])} {s}" for s in (COMPLETE, INCOMPLETE, DAMAGED)
                                             if s in by)

    def _read_manifest(self, version: int) -> tuple[str, str | None, dict | None]:
        """``(state, problem, manifest)`` from the folder and the manifest alone (no shard is looked at)."""
        vdir = self.version_dir(version)
        what = f"{self.kind} version {version}"
        if not vdir.is_dir():
            return ABSENT, (f"{vdir}: {what} does not exist ({self.inventory()}); to write it, "
                            f"{self.regenerate_hint(version)}"), None
        path = vdir / MANIFEST
        if not path.is_file():
            written = sum(1 for _ in vdir.glob(f"shard-*.{cols.MARKER}.npy")) + sum(1 for _ in vdir.glob("shard-*.npz"))
            return INCOMPLETE, (f"{vdir}: {what} is incomplete (no {MANIFEST}; {written} shard(s) written): "
                                "it is still being written or its writer stopped early; if no writer is running, "
                                f"{self.regenerate_hint(version)}"), None
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or not all(isinstance(s, dict) and "file" in s
                                                         for s in manifest["shards"]):
                raise ValueError("no list of shard records")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return DAMAGED, (f"{path}: {what} is damaged: its manifest is unreadable ({e}); to regenerate it, "
                             f"{self.regenerate_hint(version)}"), None
        return COMPLETE, None, manifest

    def _inspect(self, version: int, checksums: bool) -> tuple[str, str | None, dict | None]:
        """``(state, problem, manifest)``: :meth:`_read_manifest`, then every shard record the manifest lists."""
        state, problem, manifest = self._read_manifest(version)
        if state != COMPLETE:
            return state, problem, manifest
        for shard in [*manifest["shards"], *([manifest["index"]] if "index" in manifest else [])]:
            found = self.shard_problem(version, shard, checksums=checksums)
            if found is not None:
                return DAMAGED, self._damaged(version, manifest, *found), manifest
        return COMPLETE, None, manifest

    def _damaged(self, version: int, manifest: Mapping | None, path: Path, problem: str) -> str:
        return (f"{path}: {self.kind} version {version} is damaged: {problem}; to regenerate it, "
                f"{self.regenerate_hint(version, manifest)}")

    # ---- writing ------------------------------------------------------------------------------------------
    def skipped_path(self, version: int, rank: int, world_size: int) -> Path:
        """Where a shard keeps the inputs it left out (:meth:`write_shard`'s ``skipped``) until :meth:`finalize`."""
        return self.version_dir(version) / f"skipped-{rank:05d}-of-{world_size:05d}.json"

    def write_shard(self, version: int, rank: int, world_size: int, entries: Mapping[str, Any],
                    skipped: Mapping[str, str] | None = None) -> Path:
        """Write one rank's utterances atomically. Entries are checked before anything is written. ``skipped``
        (``{path: reason}``, the inputs this shard left out) is kept beside the shard, written before it so a
        finished shard always has its record, and gathered into the manifest's ``meta["skipped"]`` by
        :meth:`finalize` (the ranks of an offline pass share no process group); a shard written again without
        skips drops the record of an earlier attempt."""
        ids = sorted(entries)
        values = [self.encode(i, entries[i], version) for i in ids]
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        record = self.skipped_path(version, rank, world_size)
        if skipped:
            write_json(record, dict(sorted(skipped.items())))
        else:
            record.unlink(missing_ok=True)
        joined = np.concatenate(values) if values else np.zeros(self.empty_shape, dtype=self.dtype)
        del values
        return cols.write_shard_columns(self.version_dir(version), cols.shard_prefix(rank, world_size), ids, lengths,
                                        self.to_columns(joined))

    def shard_record(self, version: int, rank: int, world_size: int, command: str = "the step that wrote it") -> dict:
        """A shard's manifest record: its file, its number of utterances and the byte size and CRC-32 of each of
        its files (:meth:`shard_files`). ``command`` is what the error of an unreadable shard says to rerun."""
        path = self.shard_path(version, rank, world_size)
        try:
            n = cols.check_shard(self.version_dir(version), cols.shard_prefix(rank, world_size), self.columns)
        except _READ_ERRORS as e:
            raise StoreError(f"{path}: a {self.kind} shard written for version {version} is unreadable "
                             f"({type(e).__name__}: {e}); delete it and rerun {command}") from e
        files = {}
        for f in self.shard_files(version, rank, world_size):
            files[f.name] = {"bytes": f.stat().st_size, CHECKSUM: file_checksum(f)}
        return {"file": path.name, "num_utterances": n, "files": files}

    def finalize(self, version: int, world_size: int, meta: Mapping | None = None) -> dict:
        """Rank 0, after a barrier: check that every shard of ``world_size`` exists, then write the manifest with
        each shard's files, sizes and checksums (:meth:`shard_record`) and, in ``meta``, the command line of this
        process (``command_line``, ``cwd``) unless ``meta`` gives one. The inputs the shards left out
        (:meth:`write_shard`'s ``skipped``) join ``meta["skipped"]`` (``{path: reason}``, sorted by path).

        Rank 0 also writes the version's id index (:func:`~datamodules.store_columns.write_index`; an id in two
        shards is an error here). Shard files of an earlier attempt with another world size or of the old layout
        (and their skip records) are removed once the manifest is written, so a version never mixes runs and a
        stop in between leaves a complete version. Reading every shard once for its checksum costs about a second
        per GB on rank 0.
        """
        vdir = self.version_dir(version)
        meta = dict(meta or {})
        if "command_line" not in meta:
            meta["command_line"] = [str(a) for a in sys.argv]
            meta.setdefault("cwd", os.getcwd())
        missing = self.missing_shards(version, world_size)
        if missing:
            raise IncompleteVersionError(f"{vdir}: shards of ranks {missing} (of {world_size}) are missing")
        records = [self.skipped_path(version, r, world_size) for r in range(world_size)]
        if "skipped" in meta or any(r.is_file() for r in records):
            skipped = dict(meta.get("skipped") or {})
            for record in records:
                if record.is_file():
                    skipped.update(json.loads(record.read_text()))
            meta["skipped"] = dict(sorted(skipped.items()))
        command = f"`{command_text(meta['command_line'])}`"
        shards = [self.shard_record(version, r, world_size, command) for r in range(world_size)]
        index = cols.write_index(vdir, [cols.shard_prefix(r, world_size) for r in range(world_size)],
                                 lambda utt, a, b: StoreError(f"{vdir}: utterance {utt!r} appears in more than one "
                                                              f"shard ({a}, {b}); rerun {command}"))
        manifest = {"kind": self.kind, "version": int(version), "layout": cols.LAYOUT, "world_size": world_size,
                    "num_utterances": sum(s["num_utterances"] for s in shards), "shards": shards,
                    "index": {"file": index[0].name, "files": {f.name: {"bytes": f.stat().st_size,
                                                                        CHECKSUM: file_checksum(f)} for f in index}},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "meta": meta}
        write_json(vdir / MANIFEST, manifest, indent=1)
        # after the manifest: what another attempt (another world size, the old layout) left is no longer needed
        expected = {f.name for r in range(world_size) for f in self.shard_files(version, r, world_size)}
        expected |= {self.skipped_path(version, r, world_size).name for r in range(world_size)}
        for stale in [*vdir.glob("shard-*"), *vdir.glob("skipped-*-of-*.json")]:
            if stale.name not in expected and stale.is_file():
                stale.unlink()
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
        return self.finalize(version, world_size, meta)  # every shard's skip record was written before it

    def shards_to_write(self, version: int, rank: int, world_size: int, shards: int | None = None
                        ) -> tuple[int, list[int]]:
        """An offline pass's plan for one rank: the output is ``shards`` shard files (default: one per rank) dealt
        round-robin to the ranks; returns ``(number of shard files, the indices this rank has still to write)``.
        More shards than ranks give finer resume points: a stopped pass redoes only unwritten shards, and the
        rerun may use a different number of ranks (keep ``shards`` the same). When the version has a manifest
        (a rerun to regenerate a damaged version), a shard whose files differ from their record (size or
        checksum: this rank's shards are read through) is written again."""
        n = shards or world_size
        if n < world_size:
            raise ValueError(f"{self.root}: {n} shards for {world_size} ranks; need at least one shard per rank")
        _, _, manifest = self._read_manifest(version)
        records = {s["file"]: s for s in manifest["shards"]} if manifest and manifest.get("world_size") == n else {}
        todo = []
        for s in range(rank, n, world_size):
            path = self.shard_path(version, s, n)
            damage = self.shard_problem(version, records[path.name], checksums=True) \
                if path.exists() and path.name in records else None
            if damage is not None:
                log.warning("%s: %s: writing it again", *damage)
                todo.append(s)
            elif path.exists():
                log.info("shard %d of %d already done (%s)", s, n, self.version_dir(version))
            else:
                todo.append(s)
        return n, todo

    def copy_version(self, version: int, dest: "ShardStore", dest_version: int | None = None) -> dict:
        """Copy a complete version into another store (shards atomically, then the manifest): e.g. LossPred's
        version 0 as the starting point of a second SylBoost run that keeps its own later versions. The source is
        verified first (sizes and checksums); the copy records the command that copied it, and ``copied_from``. A
        version of the old layout is copied as columns (its values, read and written again)."""
        manifest = self.verify(version, checksums=True)
        target = version if dest_version is None else dest_version
        dest.invalidate(target)
        if manifest.get("layout") == cols.LAYOUT:
            for shard in manifest["shards"]:
                for name in shard["files"]:
                    data = (self.version_dir(version) / name).read_bytes()
                    with atomic_write(dest.version_dir(target) / name, "wb") as f:
                        f.write(data)
        else:
            self._rewrite_legacy(version, manifest, dest, target)
        meta = {k: v for k, v in manifest["meta"].items() if k not in ("command_line", "cwd")}
        meta["copied_from"] = str(self.version_dir(version))
        return dest.finalize(target, manifest["world_size"], meta=meta)

    def convert(self, version: int) -> dict | None:
        """Rewrite a complete version of the old layout (one ``.npz`` per shard) as columns, in place: every
        shard read (checksums verified), its values checked and written again, the index and a new manifest
        written, then the ``.npz`` files removed. Values read back identical. The manifest keeps the writer's
        command line and meta and adds ``converted`` (the old layout and this command). Returns the new manifest,
        or None when the version is already in the column layout. A stop midway leaves the old version
        complete (its manifest and shards are untouched until the new manifest replaces it)."""
        manifest = self.verify(version, checksums=True)
        if manifest.get("layout") == cols.LAYOUT:
            return None
        self._rewrite_legacy(version, manifest, self, version)
        meta = dict(manifest["meta"])
        meta.setdefault("command_line", [])  # the writer's command stays the one to rerun (none recorded: [])
        meta["converted"] = {"from": "npz", "command_line": [str(a) for a in sys.argv], "cwd": os.getcwd(),
                             "created": manifest.get("created")}
        return self.finalize(version, manifest["world_size"], meta=meta)

    def _rewrite_legacy(self, version: int, manifest: Mapping, dest: "ShardStore", target: int) -> None:
        """Each old-layout shard of ``version`` written again as columns into ``dest``'s ``target`` (one shard
        in memory at a time), with its skip record."""
        for r, shard in enumerate(manifest["shards"]):
            ids, offsets, values = self.read_shard(version, shard, manifest)
            path = self.version_dir(version) / shard["file"]
            entries = {utt: self._legacy_value(utt, values[offsets[i]:offsets[i + 1]], f"{path} [utterance {utt}]")
                       for i, utt in enumerate(ids.tolist())}
            record = self.skipped_path(version, r, manifest["world_size"])
            skipped = json.loads(record.read_text()) if record.is_file() else None
            dest.write_shard(target, r, manifest["world_size"], entries, skipped=skipped)

    def _legacy_value(self, utt: str, value: np.ndarray, where: str):
        """An old-layout value in the form :meth:`write_shard` takes (what :meth:`decode` returns)."""
        return self.decode(utt, value, where, None)

    def invalidate(self, version: int) -> None:
        """Remove a version's manifest (making it incomplete) before it is rewritten."""
        (self.version_dir(version) / MANIFEST).unlink(missing_ok=True)

    def remove(self, version: int) -> None:
        shutil.rmtree(self.version_dir(version), ignore_errors=True)

    # ---- reading ------------------------------------------------------------------------------------------
    def read_shard(self, version: int, shard: Mapping, manifest: Mapping | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, offsets, values)`` of one shard record; a file that does not read raises
        :class:`DamagedVersionError` naming it and the zip member that failed."""
        path = self.version_dir(version) / shard["file"]
        try:
            z = np.load(path)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError(f"holds a {type(z).__name__}, not an .npz archive")
        except _READ_ERRORS as e:
            raise DamagedVersionError(self._damaged(version, manifest, path, "the shard file is not a readable .npz "
                                                    f"archive ({type(e).__name__}: {e})")) from e
        with z:
            arrays = []
            for key in ("ids", "offsets", "values"):
                try:
                    arrays.append(z[key])
                except _READ_ERRORS as e:
                    problem = (f"the zip member {key}.npy is missing" if key not in z.files else
                               f"the zip member {key}.npy is unreadable ({type(e).__name__}: {e})")
                    raise DamagedVersionError(self._damaged(version, manifest, path, problem)) from e
        return arrays[0], arrays[1], arrays[2]

    def layout(self, version: int) -> str:
        """``"columns"`` or ``"npz"`` (the old layout) for a complete version."""
        return self.manifest(version).get("layout", "npz")

    def load(self, version: int, context: Any = None) -> Mapping[str, Any]:
        """All utterances of a complete version as a read-only ``{id: value}`` mapping, after checking every
        shard's sizes and checksums (:meth:`verify`); errors name the version folder or the shard file and how to
        regenerate it. A column-layout version is a :class:`~datamodules.store_columns.StoreView` (memory-mapped;
        it iterates shard by shard, as the old layout's dict), checked against ``context`` (durations, sample
        counts: any mapping with ``get``) in one pass here, never later inside a DataLoader worker; an old-layout
        version a dict, every value decoded and checked."""
        manifest = self.verify(version, checksums=True)
        if manifest.get("layout") == cols.LAYOUT:
            view = self.view(version, manifest)
            if context is not None:
                for prefix, ids, offsets, columns in view.shards():
                    where = cols.column_file(self.version_dir(version), prefix, self.columns[0])
                    for i, utt in enumerate(ids):
                        self.check_context(f"{where} [utterance {utt}]", utt, columns, int(offsets[i]),
                                           int(offsets[i + 1]), context)
            return view
        return self._load_npz(version, manifest, context)

    def view(self, version: int, manifest: Mapping | None = None) -> cols.StoreView:
        """A column-layout version as a :class:`~datamodules.store_columns.StoreView`, without the checksum pass
        of :meth:`load` (sizes only, unless ``manifest`` is given: then nothing is checked)."""
        manifest = manifest if manifest is not None else self.verify(version)
        if manifest.get("layout") != cols.LAYOUT:
            raise StoreError(f"{self.version_dir(version)}: {self.kind} version {version} is in the old layout (one "
                             f".npz per shard); convert it with `syllablelm store-convert --store {self.root} "
                             f"--version {version}`")
        prefixes = [cols.shard_prefix(r, manifest["world_size"]) for r in range(manifest["world_size"])]
        return cols.StoreView(self.version_dir(version), prefixes, self.columns, self.from_columns)

    def _load_npz(self, version: int, manifest: Mapping, context: Any) -> dict[str, Any]:
        out: dict[str, np.ndarray] = {}
        for shard in manifest["shards"]:
            path = self.version_dir(version) / shard["file"]
            ids, offsets, values = self.read_shard(version, shard, manifest)
            if len(ids) != shard["num_utterances"] or len(offsets) != len(ids) + 1:
                raise DamagedVersionError(self._damaged(
                    version, manifest, path, f"the shard holds {len(ids)} utterances ({len(offsets)} offsets), "
                    f"the manifest says {shard['num_utterances']}"))
            for i, utt in enumerate(ids.tolist()):
                if utt in out:
                    raise StoreError(f"{path}: utterance {utt!r} appears in more than one shard")
                out[utt] = self.decode(utt, values[offsets[i]:offsets[i + 1]], f"{path} [utterance {utt}]",
                                       context)
        return out
