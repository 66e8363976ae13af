"""The store-specific half of ``benchmarks/scale.py`` (issue 28): the memory probes, the simulated corpus and its
stores (``build_*``, written with the stores' own writers) and the per-component reads and measurements
(``read_one_*``, ``measure_*``) that run in the measuring child process. When the stores' format changes, these are
the functions to adapt; ``benchmarks/interleaved_scale.py`` reuses the probes and the store builders.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

MEAN_SECONDS = 960 * 3600 / 281_241  # LibriSpeech's mean utterance: 12.29 s
VOCAB, NUM_LABELS, SAMPLE_RATE = 8192, 500, 16_000


# ---- memory probes ------------------------------------------------------------------------------------------
def anon_shmem_kb() -> int:
    """``RssAnon + RssShmem`` of this process in kB (``/proc/self/status``)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssShmem"):
                fields[key] = int(rest.split()[0])
    return fields.get("RssAnon", 0) + fields.get("RssShmem", 0)


def private_dirty_kb(pid: int) -> int | None:
    """``Private_Dirty`` of process ``pid`` in kB (``/proc/<pid>/smaps_rollup``), None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_heap() -> None:
    """Give malloc's free memory back to the system (glibc ``malloc_trim``; nothing elsewhere)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakSampler:
    """A thread sampling :func:`anon_shmem_kb` every ``interval`` seconds; ``peak_kb`` is the largest value seen."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak_kb = interval, anon_shmem_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, anon_shmem_kb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, anon_shmem_kb())



# ---- the simulated corpus -----------------------------------------------------------------------------------
def utterance_ids(n: int) -> list[str]:
    """LibriSpeech-form ids, sorted as strings are (the stores sort them): speaker, chapter, utterance."""
    return sorted(f"{100 + i // 10_000}-{100 + (i // 100) % 100}-{i % 100:04d}" for i in range(n))


def durations(n: int, seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng([seed, 1]).normal(MEAN_SECONDS, 3.5, n), 1.0, 35.0)


def tiling(duration: float, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``round(duration * rate)`` (at least 1) segments tiling ``[0, duration]``: evenly spaced cut points, each
    moved at random by up to 0.4 of the spacing (so segments differ in length and none is empty)."""
    n = max(1, int(round(duration * rate)))
    step = duration / n
    inner = step * (np.arange(1, n) + rng.uniform(-0.4, 0.4, n - 1))
    edges = np.concatenate([[0.0], inner, [duration]])
    return np.stack([edges[:-1], edges[1:]], 1)


def write_versions(store, shards: int, ids, secs, make, meta: dict | None = None, desc: str = "") -> None:
    """Version 0 of ``store``, the sorted ids cut into ``shards`` contiguous runs (shard ``s`` holds
    ``shard_range(N, s, shards)``, as the offline writers deal a sorted manifest); each shard's values are made just
    before it is written (``make(ids, seconds, rng)`` -> ``{id: value}``, one generator per shard), so a
    million-utterance store never sits in this process whole."""
    from tqdm.auto import tqdm

    from syllablelm.runtime.fileio import shard_range
    for s in tqdm(range(shards), desc=f"{desc} shards", unit="shard", leave=False, disable=shards < 8):
        rng = np.random.default_rng([sum(map(ord, desc)), s])
        lo, hi = shard_range(len(ids), s, shards)
        store.write_shard(0, s, shards, make(ids[lo:hi], secs[lo:hi], rng))
    store.finalize(0, shards, meta=meta)


def build_units(root: Path, ids, secs, rate: float, shards: int, seed: int) -> None:
    from datamodules.unit_store import UnitStore

    def make(part, seconds, rng):
        out = {}
        for utt, d in zip(part, seconds):
            seg = tiling(float(d), rate, rng)
            out[utt] = (seg, rng.integers(0, VOCAB, len(seg)))
        return out
    write_versions(UnitStore(root), shards, ids, secs, make, {"vocab_size": VOCAB, "variant": "authors_lm"}, "units")


def build_boundaries(root: Path, ids, secs, rate: float, shards: int, seed: int) -> None:
    from datamodules.boundary_store import BoundaryStore
    write_versions(BoundaryStore(root), shards, ids, secs,
                   lambda part, seconds, rng: {u: tiling(float(d), rate, rng) for u, d in zip(part, seconds)},
                   desc="boundaries")


def build_labels(root: Path, ids, secs, shards: int, seed: int) -> None:
    from datamodules.label_store import LabelStore
    from syllablelm.audio.frames import num_frames
    write_versions(LabelStore(root), shards, ids, secs,
                   lambda part, seconds, rng: {
                       u: rng.integers(0, NUM_LABELS, num_frames(int(round(d * SAMPLE_RATE))), dtype=np.int32)
                       for u, d in zip(part, seconds)}, {"num_labels": NUM_LABELS}, "labels")


def audio_path(corpus: Path, utt: str) -> Path:
    speaker, chapter, _ = utt.split("-")
    return corpus / speaker / chapter / f"{utt}.wav"


def build_audio(corpus: Path, ids, seconds: float, seed: int) -> None:
    """One tiny int16 WAV per id, in LibriSpeech's ``speaker/chapter/id`` folders: one file's bytes (low noise,
    written by soundfile) copied to every path, which is much faster than encoding each."""
    import io

    import soundfile as sf
    from tqdm.auto import tqdm
    buf = io.BytesIO()
    wave = np.random.default_rng([seed, 5]).integers(-300, 300, int(round(seconds * SAMPLE_RATE)), dtype=np.int16)
    sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    made = set()
    for utt in tqdm(ids, desc="audio files", unit="file", leave=False):
        path = audio_path(corpus, utt)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(data)


def build(folder: Path, n: int, args, components) -> dict:
    """Everything the chosen components read at size ``n`` under ``folder``; returns what was built and how long it
    took (not a measurement: this process holds whatever the writers left)."""
    from datamodules.boundary_store import BoundaryStore
    from datamodules.label_store import LabelStore
    from datamodules.manifest import build_manifest
    from syllablelm.audio.frames import num_frames
    start, info = time.perf_counter(), {"size": n, "shards": args.shards}
    ids = utterance_ids(n)
    secs = durations(n, args.seed)
    (folder / "ids.txt").write_text("\n".join(ids) + "\n")
    if {"units_store", "units_datamodule", "units_datamodule_authors"} & set(components):
        build_units(folder / "units", ids, secs, args.rate, args.shards, args.seed)
    if "boundary_store" in components:
        build_boundaries(folder / "boundaries", ids, secs, args.rate, args.shards, args.seed)
    if "label_store" in components:
        build_labels(folder / "labels", ids, secs, args.shards, args.seed)
    if {"speech_datamodule", "manifest_cold", "manifest_rescan"} & set(components):
        build_audio(folder / "corpus", ids, args.audio_seconds, args.seed)
        if "speech_datamodule" in components:
            frames = num_frames(int(round(args.audio_seconds * SAMPLE_RATE)))
            write_versions(BoundaryStore(folder / "audio_boundaries"), args.shards, ids, secs,
                           lambda part, _, rng: {u: np.array([[0.0, args.audio_seconds]]) for u in part},
                           desc="audio boundaries")
            write_versions(LabelStore(folder / "audio_labels"), args.shards, ids, secs,
                           lambda part, _, rng: {u: np.zeros(frames, dtype=np.int32) for u in part},
                           {"num_labels": NUM_LABELS}, "audio labels")
        if {"speech_datamodule", "manifest_rescan"} & set(components):  # the cache both read (neither writes it)
            build_manifest(folder / "corpus", verify="decode", min_seconds=0.01, cache_dir=folder / "cache_rescan",
                           num_workers=2, progress=False)
    info["audio_hours"] = float(secs.sum() / 3600)
    info["build_s"] = time.perf_counter() - start
    return info


# ---- per-component measurements (each runs in a fresh process) ----------------------------------------------
STORES = {"units_store": ("datamodules.unit_store", "UnitStore", "units"),
          "boundary_store": ("datamodules.boundary_store", "BoundaryStore", "boundaries"),
          "label_store": ("datamodules.label_store", "LabelStore", "labels")}


def open_store(component: str, folder: Path):
    import importlib
    module, cls, sub = STORES[component]
    return getattr(importlib.import_module(module), cls)(folder / sub)


def read_one_npz(store, version: int, manifest: dict, utt: str):
    """One utterance's value from a store of the old layout (one ``.npz`` per shard, no id index): each shard's
    ``ids`` member is read until one holds ``utt`` (ids are sorted within a shard), then that shard's ``offsets``
    and whole ``values`` members. (Column-layout stores read through their id index: ``view[utt]``.)"""
    for shard in manifest["shards"]:
        with np.load(store.version_dir(version) / shard["file"]) as z:
            ids = z["ids"]
            i = int(np.searchsorted(ids, utt))
            if i < len(ids) and ids[i] == utt:
                offsets = z["offsets"]
                return store.decode(utt, z["values"][offsets[i]:offsets[i + 1]], utt, None)
    raise KeyError(utt)


def read_one_times(component: str, folder: Path, count: int, budget: float, seed: int) -> dict:
    """Seconds of one-utterance reads of ``count`` random ids (fewer when ``budget`` seconds run out, at least 3)."""
    store = open_store(component, folder)
    ids = (folder / "ids.txt").read_text().split()
    pick = np.random.default_rng([seed, 6]).choice(len(ids), min(count, len(ids)), replace=False)
    t = time.perf_counter()
    manifest = store.verify(0)
    columns = manifest.get("layout") == "columns"
    view = store.view(0, manifest) if columns else None  # the id index mapped; no shard opened yet
    opened = time.perf_counter() - t
    times, start = [], time.perf_counter()
    for k in pick:
        t = time.perf_counter()
        if columns:
            view[ids[k]]
        else:
            read_one_npz(store, 0, manifest, ids[k])
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    ms = np.array(times) * 1e3
    return {"read_one_ms_mean": float(ms.mean()), "read_one_ms_p95": float(np.percentile(ms, 95)),
            "read_one_ms_max": float(ms.max()), "read_one_n": len(ms), "open_ms": opened * 1e3,
            "layout": manifest.get("layout", "npz")}


def touch(value) -> int:
    """Read one loaded value through (a tuple of arrays or an array); returns its element count."""
    if isinstance(value, tuple):
        return sum(touch(v) for v in value)
    arr = np.asarray(value)
    arr.sum()
    return int(arr.size)


def measure_store(component: str, folder: Path, args) -> tuple[dict, object]:
    """``load()`` of version 0 and every utterance read once; returns the result and what must stay referenced."""
    store = open_store(component, folder)
    loaded = store.load(0)
    elements = sum(touch(v) for v in loaded.values())
    return {"utterances": len(loaded), "elements": elements}, loaded


def run_epoch(loader) -> dict:
    """One epoch of ``loader``; worker private memory after its first and its last batch (workers still alive)."""
    it = iter(loader)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    n = len(loader)
    first = last = None
    for k in range(n):
        batch = next(it)
        for key in ("input", "waves"):
            if key in batch:
                batch[key].sum()
        if k == 0:
            first = [private_dirty_kb(p) for p in pids]
    last = [private_dirty_kb(p) for p in pids]
    for _ in it:  # ends the iterator (and the workers)
        pass
    out = {"batches": n, "workers": len(pids)}
    if pids and all(v is not None for v in last):
        out["worker_private_mb"] = max(last) / 1024
        out["worker_private_first_mb"] = max(v for v in first if v is not None) / 1024
    return out


def measure_units_datamodule(folder: Path, args, authors: bool = False) -> tuple[dict, object]:
    """Packed windows of 1,024 tokens, 16 a batch (the tiny configs' layout); ``authors``: the paper configs'
    one utterance per row, with a token budget of 20,000 units a batch (the Fidelity row's one-GPU alternative; 160
    on 2 GPUs makes ~2-row batches, the same data path but 100 times the batches)."""
    from datamodules.unit_data import UnitsDataModule
    layout = (dict(pack=False, collate="authors", max_tokens=20_000, batch_size=None, context_length=161) if authors
              else dict(context_length=1024, batch_size=16))
    dm = UnitsDataModule(unit_dir=str(folder / "units"), version=0, num_workers=args.workers, **layout)
    t = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t
    out = {"setup_s": setup_s, **run_epoch(dm.train_dataloader())}
    return out, dm


def measure_speech_datamodule(folder: Path, args) -> tuple[dict, object]:
    from datamodules.speech import SpeechDataModule
    dm = SpeechDataModule(train_dirs=[str(folder / "corpus")], boundary_dir=str(folder / "audio_boundaries"),
                          boundary_version=0, label_dir=str(folder / "audio_labels"), label_version=0,
                          min_seconds=0.01, verify="decode", manifest_cache=str(folder / "cache_rescan"),
                          batch_size=64, num_workers=args.workers)
    t = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t
    out = {"setup_s": setup_s, "entries": len(dm.manifest("train")), **run_epoch(dm.train_dataloader())}
    return out, dm


def measure_manifest(folder: Path, args, cold: bool) -> tuple[dict, object]:
    from datamodules.manifest import build_manifest
    cache = folder / ("cache_cold" if cold else "cache_rescan")
    m = build_manifest(folder / "corpus", verify="decode", min_seconds=0.01, cache_dir=cache, num_workers=2,
                       progress=False)
    seconds = sum(e.seconds for e in m.entries)  # every entry read once
    return {"entries": len(m), "audio_seconds": seconds}, m
