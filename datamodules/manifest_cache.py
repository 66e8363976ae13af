"""The scan behind a manifest (:mod:`datamodules.manifest`): the audio files of one root and a verdict for each
(its length, rate and channels, or the problem that makes it unusable), reused from an on-disk cache or checked
now, optionally shared across ranks. :func:`checked_rows` returns them as :class:`Rows`; the manifest keeps the
usable ones.

Files are found by :func:`syllablelm.audio.listing.iter_audio` (the listing of
:func:`~syllablelm.audio.listing.list_audio`, which ``syllablelm tokenize`` uses too): symbolic links to folders
and files are followed, a folder reached twice is searched once, hidden names are skipped. A file is checked by
opening it (``verify="header"``) or by decoding every sample once (``verify="decode"``: unreadable, empty,
truncated, NaN or infinite samples are problems). The length limit is applied by the manifest, so a cached verdict
does not depend on it.

**The cache** (``<cache_dir>/<hash of root and verify mode>.npz``, format :data:`CACHE_FORMAT`) holds one row per
listed file, as columns: the root-relative keys (UTF-8 bytes + offsets, :class:`~syllablelm.runtime.strings.Strings`),
``size``, ``mtime_ns``, ``num_samples``, ``sample_rate``, ``channels`` and ``problem`` (an index into the few
distinct problem texts, also stored as bytes + offsets; -1 for a usable file). A rescan reuses the rows of files
whose ``(size, mtime)`` is unchanged and only opens new or modified ones (a cached "bad" verdict is reported and
recorded again by the manifest, as a fresh one). The cache is written once per scan that opened a file,
atomically. A cache of an older format (the JSON of format 3 and before) is not read: the scan rebuilds it, once,
and removes the old file. The files to open are fed to the thread pool through a sliding window (at most 64 per
thread, and :data:`CHECK_CHUNK`), so the work in flight stays bounded.

**Sharded verification.** Given ``ranks`` (:class:`Ranks`: rank, world size, optionally a barrier), every rank lists
the files and reads the cache, then decodes only its share of the files that need it (every ``world``-th, from its
rank on, of the sorted list) and writes its verdicts as a *part* next to the cache
(``<cache>.part<rank>of<world>.npz``, the cache's format). Rank 0 waits for every part, checks that each covers
exactly the files it expects, merges them and its own into the cache (written once), and removes the parts; every
other rank then reads the merged cache. With a barrier (a Lightning trainer's strategy, or ``torch.distributed``)
the ranks meet after writing their parts and after the merge; without one (separate processes) rank 0 polls for
the parts and the others poll for the merged cache, up to ``wait_timeout`` seconds after their own share is done
plus twice the time it took. The cache folder must therefore be one folder that every rank sees (a shared
filesystem): if it is not, rank 0 does not find the other ranks' parts and stops with an error naming the missing
part, and the other ranks stop with an error naming the cache they waited for, after the timeout (at most a minute
after the barrier when there is one). Every file is decoded once in total, and the merged cache (so the manifest) is
what a single process would have built. :class:`~datamodules.speech.SpeechDataModule` runs this in ``setup`` (every
rank) when a trainer runs more than one process, see its docstring.
"""
from __future__ import annotations

import array
import collections
import dataclasses
import hashlib
import logging
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from tqdm.auto import tqdm

from syllablelm.audio.io import AudioError, audio_info, decoded_length
from syllablelm.audio.listing import iter_audio
from syllablelm.runtime.fileio import write_npz
from syllablelm.runtime.strings import StringIndex, Strings

log = logging.getLogger(__name__)

CACHE_FORMAT = 4  # 4: columns in an .npz (3: the decode check refuses NaN/inf samples, a JSON of rows)
CHECK_CHUNK = 4096  # at most this many files in flight in the thread pool (64 per thread below that)
Verify = Literal["header", "decode"]
NOT_SHARED = ("node-local caches: SpeechDataModule(shared_manifest_cache=False) checks every file on each node "
              "instead")


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYLLABLELM_CACHE", Path.home() / ".cache" / "syllablelm")) / "manifests"


@dataclasses.dataclass(frozen=True)
class Ranks:
    """The processes that build one manifest together (module docstring, "Sharded verification"): this one's
    ``rank`` of ``world``, and a ``barrier`` every rank calls (None: separate processes that wait by polling the
    cache folder, up to ``wait_timeout`` seconds after their own share plus twice the time it took)."""

    rank: int
    world: int
    barrier: Callable[[], None] | None = None
    wait_timeout: float = 600.0
    poll: float = 1.0

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"invalid rank {self.rank} for world size {self.world}")


# ---- the rows and their cache -------------------------------------------------------------------------------
@dataclasses.dataclass
class Rows:
    """Files and their verdicts as columns: what the cache and the parts hold (module docstring). ``keys`` are
    root-relative (the file's name when the root is that file); a row is usable when its ``problem`` is -1, else
    ``problems[problem]`` says why not."""

    keys: Strings
    size: np.ndarray  # int64 bytes
    mtime: np.ndarray  # int64 ns
    num_samples: np.ndarray  # int64
    sample_rate: np.ndarray  # int32
    channels: np.ndarray  # int16
    problem: np.ndarray  # int32 index into problems, -1: usable
    problems: list[str]

    @classmethod
    def unchecked(cls, keys: Strings, size: np.ndarray, mtime: np.ndarray) -> "Rows":
        n = len(keys)
        return cls(keys, size, mtime, np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, np.int16),
                   np.full(n, -1, np.int32), [])

    def take(self, idx: np.ndarray) -> "Rows":
        return Rows(self.keys.take(idx), self.size[idx], self.mtime[idx], self.num_samples[idx],
                    self.sample_rate[idx], self.channels[idx], self.problem[idx], self.problems)

    def fill(self, rows: np.ndarray, other: "Rows", other_rows: np.ndarray) -> None:
        """Copy the verdicts of ``other_rows`` of ``other`` into ``rows``."""
        self.num_samples[rows] = other.num_samples[other_rows]
        self.sample_rate[rows] = other.sample_rate[other_rows]
        self.channels[rows] = other.channels[other_rows]
        codes = other.problem[other_rows]
        mapped = np.full(len(codes), -1, np.int32)
        for code in sorted(set(codes[codes >= 0].tolist())):  # the few bad files' problems
            mapped[codes == code] = self.intern(other.problems[code])
        self.problem[rows] = mapped

    def intern(self, problem: str) -> int:
        try:
            return self.problems.index(problem)
        except ValueError:
            self.problems.append(problem)
            return len(self.problems) - 1

    def save(self, path: Path, root: Path, verify: Verify, **extra) -> None:
        problems = Strings.from_iter(self.problems)
        write_npz(path, format=np.int64(CACHE_FORMAT), root=np.frombuffer(str(root).encode(), np.uint8),
                  verify=np.frombuffer(verify.encode(), np.uint8), keys=self.keys.data,
                  key_offsets=self.keys.offsets, size=self.size, mtime_ns=self.mtime, num_samples=self.num_samples,
                  sample_rate=self.sample_rate, channels=self.channels, problem=self.problem,
                  problems=problems.data, problem_offsets=problems.offsets,
                  **{k: np.asarray(v) for k, v in extra.items()})

    @classmethod
    def load(cls, path: Path) -> tuple["Rows", dict] | None:
        """The rows of a cache or part file and its other members, None when it is absent, of another format or
        damaged (a damaged cache is rebuilt, not trusted)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != CACHE_FORMAT:
                    return None
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        try:
            rows = cls(Strings(arrays["keys"], arrays["key_offsets"]), arrays["size"].astype(np.int64),
                       arrays["mtime_ns"].astype(np.int64), arrays["num_samples"].astype(np.int64),
                       arrays["sample_rate"].astype(np.int32), arrays["channels"].astype(np.int16),
                       arrays["problem"].astype(np.int32),
                       list(Strings(arrays["problems"], arrays["problem_offsets"])))
            n = len(rows.keys)
            if not all(len(a) == n for a in (rows.size, rows.mtime, rows.num_samples, rows.sample_rate,
                                             rows.channels, rows.problem)) or \
                    rows.keys.offsets[-1] != len(rows.keys.data) or (rows.problem >= len(rows.problems)).any():
                return None
        except (KeyError, ValueError, UnicodeDecodeError):
            return None
        return rows, arrays


# ---- the scan -----------------------------------------------------------------------------------------------
def checked_rows(root: Path, verify: Verify, cache_dir, num_workers: int, progress: bool,
                 ranks: Ranks | None = None) -> tuple[Rows, str]:
    """Every audio file under ``root`` (a resolved folder, or one file) with its verdict, from the cache where the
    file is unchanged and checked now where not (this rank's share of them with ``ranks``; module docstring); and
    the prefix that makes a key a path (``""`` when ``root`` is a file: the key is its name, its path ``root``)."""
    listed, size, mtime, prefix = _list(root)
    single = not prefix

    def path_of(i: int) -> str:
        return str(root) if single else prefix + listed[i]

    cache_path = _cache_path(root, verify, cache_dir)
    cached = Rows.load(cache_path)
    cached = None if cached is None else cached[0]
    row = _match(listed, size, mtime, cached)
    rows = Rows.unchecked(listed, size, mtime)
    hit = np.flatnonzero(row >= 0)
    if len(hit):
        rows.fill(hit, cached, row[hit])
    todo = np.flatnonzero(row < 0)
    desc = f"manifest {root.name}"
    if ranks is not None and ranks.world > 1:
        _check_shared(rows, todo, path_of, cache_path, root, verify, num_workers, progress, desc, ranks)
    elif len(todo):
        _check_files(rows, todo, path_of, verify, num_workers, progress, desc)
        _write_cache(rows, cache_path, root, verify)
    return rows, prefix


def _cache_path(root: Path, verify: Verify, cache_dir) -> Path:
    return Path(cache_dir or default_cache_dir()) / (hashlib.sha1(f"{root}|{verify}".encode()).hexdigest()[:16]
                                                     + ".npz")


def _part_path(cache_path: Path, rank: int, world: int) -> Path:
    return cache_path.with_name(f"{cache_path.stem}.part{rank}of{world}.npz")


def _list(root: Path) -> tuple[Strings, np.ndarray, np.ndarray, str]:
    """The audio files under ``root`` as root-relative keys (the file's name when ``root`` is a file), their sizes
    and modification times; and the prefix that makes a key a path."""
    single = root.is_file()
    prefix = str(root) if single else str(root) if str(root).endswith("/") else str(root) + "/"
    sizes, mtimes = array.array("q"), array.array("q")

    def keys():
        for path in iter_audio(root):
            st = os.stat(path)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            yield os.path.basename(path) if single else path[len(prefix):]

    listed = Strings.from_iter(keys())
    return listed, np.frombuffer(sizes, np.int64), np.frombuffer(mtimes, np.int64), "" if single else prefix


def _match(listed: Strings, size: np.ndarray, mtime: np.ndarray, cached: Rows | None) -> np.ndarray:
    """Row of each listed file in the cache when its size and time still match, else -1."""
    if cached is None or not len(cached.keys):
        return np.full(len(listed), -1, np.int64)
    if cached.keys == listed:  # nothing added or removed: the common rescan
        row = np.arange(len(listed), dtype=np.int64)
    else:
        row = StringIndex(cached.keys).find_all(listed)
    found = row >= 0
    ok = np.zeros(len(listed), bool)
    ok[found] = (cached.size[row[found]] == size[found]) & (cached.mtime[row[found]] == mtime[found])
    return np.where(ok, row, -1)


def _write_cache(rows: Rows, cache_path: Path, root: Path, verify: Verify) -> None:
    try:
        rows.save(cache_path, root, verify)
    except OSError as e:  # a read-only cache location must not stop the run
        log.warning("could not write manifest cache %s: %s", cache_path, e)
        return
    legacy = cache_path.with_suffix(".json")  # the format-3 cache of this root, superseded
    try:
        legacy.unlink()
    except OSError:
        pass


# ---- checking files -----------------------------------------------------------------------------------------
def _check_files(rows: Rows, which: np.ndarray, path_of: Callable[[int], str], verify: Verify, num_workers: int,
                 progress: bool, desc: str) -> None:
    """Open the files ``which`` (rows of ``rows``) on a thread pool and fill in their verdicts, in order. At most
    :data:`CHECK_CHUNK` files are in flight (a sliding window: a file is handed over as the oldest one's verdict is
    taken), so the pool's bookkeeping stays bounded whatever the corpus size."""
    if not len(which):
        return
    window = min(CHECK_CHUNK, 64 * max(1, num_workers))
    with ThreadPoolExecutor(max(1, num_workers)) as pool, \
            tqdm(total=len(which), desc=desc, disable=not progress, unit="file") as bar:  # libsndfile frees the GIL
        pending: collections.deque = collections.deque()
        for i in which.tolist():
            pending.append((i, pool.submit(_check, path_of(i), verify)))
            if len(pending) >= window:
                _take_verdict(rows, *pending.popleft())
                bar.update()
        while pending:
            _take_verdict(rows, *pending.popleft())
            bar.update()


def _take_verdict(rows: Rows, i: int, future) -> None:
    info, problem = future.result()
    if problem is None:
        rows.num_samples[i], rows.sample_rate[i], rows.channels[i] = info
    else:
        rows.problem[i] = rows.intern(problem)


def _check(path: str, verify: Verify) -> tuple[tuple[int, int, int] | None, str | None]:
    """Open one file; return ``((num_samples, sample_rate, channels), None)`` or ``(None, problem)``.
    The length limit is applied later, so the cached result does not depend on it."""
    try:
        info = audio_info(path)
        if info.num_samples == 0:
            return None, "empty (no samples)"
        if verify == "decode":
            # a truncated or corrupt stream usually has a valid header; only decoding shows it
            n = decoded_length(path)
            if n != info.num_samples:
                return None, f"truncated or corrupt: header says {info.num_samples} samples, decoded {n}"
        return (info.num_samples, info.sample_rate, info.channels), None
    except AudioError as e:
        return None, e.problem


# ---- sharded verification -----------------------------------------------------------------------------------
def _check_shared(rows: Rows, todo: np.ndarray, path_of, cache_path: Path, root: Path, verify: Verify,
                  num_workers: int, progress: bool, desc: str, ranks: Ranks) -> None:
    """This rank's share of ``todo`` checked and written as a part; rank 0 merges the parts into the cache; every
    rank's ``rows`` then hold every verdict (module docstring). With a barrier every rank calls it twice, whatever
    its own list says (a rank whose view differs then fails with a named error instead of leaving the others
    waiting); an error on one rank is raised after the barriers."""
    rank, world = ranks.rank, ranks.world
    started = time.monotonic()
    error: BaseException | None = None
    mine = todo[rank::world]
    try:
        _check_files(rows, mine, path_of, verify, num_workers, progress, f"{desc} (rank {rank} of {world})")
        if rank and len(todo):  # an empty share too: rank 0 waits for every part
            rows.take(mine).save(_part_path(cache_path, rank, world), root, verify, rank=rank, world=world)
    except Exception as e:  # the others must still reach the barriers; raised below
        error = e
    timeout = ranks.wait_timeout + 2 * (time.monotonic() - started)
    if ranks.barrier is not None:
        ranks.barrier()
        timeout = min(timeout, 60.0)  # after the barrier the parts are written; only a slow filesystem lags
    if rank == 0 and error is None and len(todo):
        try:
            _merge_parts(rows, todo, cache_path, world, ranks.poll, timeout)
            _write_cache(rows, cache_path, root, verify)
            for r in range(1, world):
                _part_path(cache_path, r, world).unlink(missing_ok=True)
        except Exception as e:
            error = e
    if ranks.barrier is not None:
        ranks.barrier()
    if error is not None:
        raise error
    if rank:
        _read_merged(rows, todo, cache_path, ranks.poll, timeout, world)


def _merge_parts(rows: Rows, todo: np.ndarray, cache_path: Path, world: int, poll: float, timeout: float) -> None:
    """Rank 0: wait for the parts of ranks 1 .. world-1 (each must cover exactly the files it expects them to) and
    copy their verdicts into ``rows``."""
    start, pending = time.monotonic(), set(range(1, world))
    why: dict[int, str] = {}
    seen: dict[int, tuple | None] = {}  # each part's (size, mtime) when last read: re-read only when it changes
    while True:
        for r in sorted(pending):
            expect = todo[r::world]
            path = _part_path(cache_path, r, world)
            stamp = _stamp(path)
            if stamp is not None and stamp == seen.get(r):
                continue
            seen[r] = stamp
            loaded = None if stamp is None else Rows.load(path)
            if loaded is None:
                why[r] = "missing" if stamp is None else "unreadable"
                continue
            part = loaded[0]
            if part.keys != rows.keys.take(expect) or not np.array_equal(part.size, rows.size[expect]) or \
                    not np.array_equal(part.mtime, rows.mtime[expect]):
                why[r] = ("it covers other files than rank 0 expects (the ranks list different files or read "
                          "different caches)")
                continue
            rows.fill(expect, part, np.arange(len(expect)))
            pending.discard(r)
        if not pending:
            return
        if time.monotonic() - start > timeout:
            detail = "; ".join(f"{_part_path(cache_path, r, world)}: {why[r]}" for r in sorted(pending))
            raise TimeoutError(f"manifest cache {cache_path}: after {timeout:.0f} s rank 0 still lacks the checks of "
                               f"ranks {sorted(pending)} ({detail}). The manifest cache folder "
                               f"{cache_path.parent} must be one folder all ranks share, and every rank must see "
                               f"the same audio files ({NOT_SHARED})")
        time.sleep(poll)


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, None when it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _read_merged(rows: Rows, todo: np.ndarray, cache_path: Path, poll: float, timeout: float, world: int) -> None:
    """Ranks other than 0: wait until the merged cache holds a verdict for every file this rank listed, then take
    them."""
    if not len(todo):
        return
    start, seen = time.monotonic(), None
    while True:
        stamp = _stamp(cache_path)
        loaded = Rows.load(cache_path) if stamp is not None and stamp != seen else None
        seen = stamp
        if loaded is not None:
            cached = loaded[0]
            row = _match(rows.keys.take(todo), rows.size[todo], rows.mtime[todo], cached)
            if (row >= 0).all():
                rows.fill(todo, cached, row)
                return
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"after {timeout:.0f} s the manifest cache {cache_path} still lacks {len(todo)} files "
                               f"this rank checked or listed (rank 0 merges the {world} ranks' checks into it: see "
                               f"rank 0's log). The cache folder {cache_path.parent} must be one folder all ranks "
                               f"share, and every rank must see the same audio files ({NOT_SHARED})")
        time.sleep(poll)
