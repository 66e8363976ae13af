"""Memory and time of the data path against corpus size: simulated corpora and stores, each component measured in
a fresh process, a fitted growth and the extrapolation to LibriSpeech and LibriLight (issue 28).

    python benchmarks/scale.py --sizes 1000 10000 50000 --out scale.json
    python benchmarks/scale.py --sizes 281241 --components units_store --out units.json
    python benchmarks/scale.py --smoke --out smoke.json          # two small sizes, every component, 2 at a time
                                                                 # (the test's run)

What is built, per size N (with the stores' own writers, so the on-disk format is the real one):

- ``N`` utterance ids in LibriSpeech's form (``<speaker>-<chapter>-<utt>``) with LibriSpeech-like durations (mean
  12.3 s: 960 h over 281,241 utterances; normal with sd 3.5 s, clipped to 1-35 s);
- a unit store (``UnitStore.write_shard`` + ``finalize``): ``--rate`` segments per second (default 6.25 Hz) tiling
  each utterance, one unit id in ``0 .. 8191`` per segment (meta: vocab_size 8192, variant authors_lm);
- a boundary store of the same segments and a label store of one int32 label in ``0 .. 499`` per 20 ms frame;
- ``--shards`` shards per store version, each a contiguous run of the sorted ids (as the writers deal a manifest);
- ``N`` tiny WAV files (``--audio-seconds``, default 0.1 s of low noise, 16 kHz int16, written with soundfile) in
  LibriSpeech's folder layout, with a boundary and a label store fitted to them (one segment, the frames of 0.1 s):
  what the manifest components and the SpeechDataModule read. Disk: about 4 KB per file.

The components (``--components``; each with the stage whose data it is):

==================  ====================================================================  ====================
units_store         ``UnitStore.load()`` + every utterance read once                       SpeechLM data
units_datamodule    ``UnitsDataModule.setup()`` + ``train_dataloader()`` + one epoch          SpeechLM data
                    (packed windows, the tiny configs' batches)
units_datamodule_   the same with the paper configs' one-utterance rows (``collate: authors``,  SpeechLM data
authors             20,000 units a batch)                                                     (paper batches)
boundary_store      ``BoundaryStore.load()`` + every utterance read once                   SylBoost
label_store         ``LabelStore.load()`` + every utterance read once                      teacher / LossPred
speech_datamodule   ``SpeechDataModule`` with boundaries and labels: setup + one epoch     every audio stage
manifest_cold       ``build_manifest(verify="decode")`` into an empty cache                 every stage
manifest_rescan     ``build_manifest`` again with that cache (no file opened)              every stage
==================  ====================================================================  ====================

Each (component, size) runs in a fresh ``python`` process, so imports and memory do not leak between
measurements. Memory, as issue 28 defines it: *held* is the rise of ``RssAnon + RssShmem`` (``/proc/self/status``)
over its value after the imports, taken after every utterance has been read once (the loaded data still
referenced); *peak* is the largest such rise, sampled every 10 ms by a thread; *worker private* is
``Private_Dirty`` of a DataLoader worker (``/proc/<pid>/smaps_rollup``, the largest over the workers) after one
epoch, i.e. after the last batch arrived and before the workers are shut down (also reported after the first
batch). The store components first time one-utterance reads in the same fresh process, before anything is loaded
(1,000 random ids, or as many as ``--read-budget`` seconds allow: today's format has no per-utterance read, so a
read opens the shard files in turn and reads the whole ``values`` member of the one that holds the id; the count is
reported); the process's memory baseline is taken again after them.

Fit: for every component and metric, least squares of the metric against N (``a + b N``: ``b`` is the cost per
utterance) and of ``log metric`` against ``log N`` (the exponent: 1 is linear, 2 quadratic), and ``a + b N`` at
LibriSpeech (281,241 utterances, 960 h) and LibriLight (~55k h, taken as 16.1 M entries: its hours cut into
LibriSpeech-length utterances of 12.3 s, so the extrapolation is linear in hours as the simulated entries are;
LibriLight's own files are whole chapters, fewer entries but as many units and labels).

The store-specific code sits in small functions (``read_one_*``, ``measure_*``, ``build_*``): when the stores become
memory-mapped columns, adapt those and rerun for the "after" numbers. Numbers depend on the machine and its load:
compare runs made on one machine.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COMPONENTS = ("units_store", "units_datamodule", "units_datamodule_authors", "boundary_store", "label_store",
              "speech_datamodule", "manifest_cold", "manifest_rescan")
STAGE = {"units_store": "SpeechLM data", "units_datamodule": "SpeechLM data",
         "units_datamodule_authors": "SpeechLM data (paper batches)", "boundary_store": "SylBoost",
         "label_store": "teacher / LossPred", "speech_datamodule": "every audio stage",
         "manifest_cold": "every stage", "manifest_rescan": "every stage"}
STORE_COMPONENTS = ("units_store", "boundary_store", "label_store")
MEAN_SECONDS = 960 * 3600 / 281_241  # LibriSpeech's mean utterance: 12.29 s
TARGETS = {"LibriSpeech": {"entries": 281_241, "hours": 960},
           "LibriLight": {"entries": round(55_000 * 3600 / MEAN_SECONDS), "hours": 55_000}}
VOCAB, NUM_LABELS, SAMPLE_RATE = 8192, 500, 16_000
METRICS = ("time_s", "held_mb", "peak_mb", "worker_private_mb", "read_one_ms_mean")
SMOKE_SIZES = (1000, 3000)


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


def measure(component: str, folder: Path, args) -> dict:
    """The child process: imports, one-utterance reads (stores), then the component under the peak sampler."""
    if component in STORES:
        open_store(component, folder)  # imports
    elif component.startswith("units_datamodule"):
        import datamodules.unit_data  # noqa: F401
    elif component == "speech_datamodule":
        import datamodules.speech  # noqa: F401
    else:
        import datamodules.manifest  # noqa: F401
        if component == "manifest_cold":
            shutil.rmtree(folder / "cache_cold", ignore_errors=True)
    gc.collect()
    release_free_heap()
    result = {"component": component, "stage": STAGE[component], "baseline_mb": anon_shmem_kb() / 1024}
    if component in STORES:
        result.update(read_one_times(component, folder, args.reads, args.read_budget, args.seed))
        gc.collect()
        release_free_heap()  # else the load reuses what the reads left in malloc's free lists and looks smaller
    base = anon_shmem_kb()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        if component in STORES:
            extra, keep = measure_store(component, folder, args)
        elif component in ("units_datamodule", "units_datamodule_authors"):
            extra, keep = measure_units_datamodule(folder, args, authors=component.endswith("_authors"))
        elif component == "speech_datamodule":
            extra, keep = measure_speech_datamodule(folder, args)
        else:
            extra, keep = measure_manifest(folder, args, cold=component == "manifest_cold")
        elapsed = time.perf_counter() - start
        held = anon_shmem_kb() - base
    result.update(extra)
    peak = max(sampler.peak_kb - base, held)  # the held reading is one more sample
    result.update({"time_s": elapsed, "held_mb": held / 1024, "peak_mb": peak / 1024})
    del keep
    return result


# ---- fit and extrapolation ----------------------------------------------------------------------------------
def fit(sizes, values) -> dict | None:
    """``a + b N`` by least squares and the exponent of a log-log least-squares fit; the line at each target."""
    pts = [(n, v) for n, v in zip(sizes, values) if v is not None]
    if len(pts) < 2 or len({n for n, _ in pts}) < 2:
        return None
    n, v = np.array(pts, dtype=np.float64).T
    b, a = np.polyfit(n, v, 1)
    pos = v > 0
    exponent = float(np.polyfit(np.log(n[pos]), np.log(v[pos]), 1)[0]) if len(set(n[pos])) >= 2 else None
    return {"intercept": float(a), "slope": float(b), "exponent": exponent,
            "at": {name: float(a + b * t["entries"]) for name, t in TARGETS.items()}}


def fits(results: list[dict]) -> dict:
    out = {}
    for component in dict.fromkeys(r["component"] for r in results):
        rows = [r for r in results if r["component"] == component]
        out[component] = {"stage": STAGE[component]}
        for metric in METRICS:
            f = fit([r["size"] for r in rows], [r.get(metric) for r in rows])
            if f is not None:
                out[component][metric] = f
    return out


# ---- issue 28's targets ---------------------------------------------------------------------------------------
def verdicts(r: dict) -> list[str]:
    """Issue 28's must-show limits that apply to one result, each ``name limit: ok|OVER``: held and peak memory of
    the stores and the UnitsDataModule <= 64 MB + 32 B per utterance; one-utterance reads <= 5 ms (mean and p95);
    SpeechDataModule worker private memory <= 64 MB; manifest peak <= 0.5 KB per file."""
    n, out = r["size"], []

    def check(name, value, limit, unit):
        if value is not None:
            out.append(f"{name} <= {limit:,.1f} {unit}: {'ok' if value <= limit else 'OVER'}")
    if r["component"] in STORE_COMPONENTS or r["component"].startswith("units_datamodule"):
        limit = 64 + 32 * n / 2 ** 20
        check("held", r.get("held_mb"), limit, "MB")
        check("peak", r.get("peak_mb"), limit, "MB")
    if r["component"] in STORE_COMPONENTS:
        check("read mean", r.get("read_one_ms_mean"), 5.0, "ms")
        check("read p95", r.get("read_one_ms_p95"), 5.0, "ms")
    if r["component"] == "speech_datamodule":
        check("worker private", r.get("worker_private_mb"), 64.0, "MB")
    if r["component"].startswith("manifest_"):
        check("peak", r.get("peak_mb"), 0.5 * n / 1024, "MB")
    return out


# ---- output ---------------------------------------------------------------------------------------------------
def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if abs(v) < 1e5 else f"{v:,.0f}"


def table(results: list[dict], fitted: dict) -> str:
    lines = ["| component | stage | utterances | shards | time s | held MB | peak MB | worker private MB (first "
             "batch) | one read ms mean / p95 (n) | issue 28 targets |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        worker = "-" if r.get("worker_private_mb") is None else \
            f"{fmt(r['worker_private_mb'])} ({fmt(r.get('worker_private_first_mb'))})"
        read = "-" if r.get("read_one_ms_mean") is None else \
            f"{fmt(r['read_one_ms_mean'], 2)} / {fmt(r['read_one_ms_p95'], 2)} ({r['read_one_n']})"
        lines.append(f"| {r['component']} | {r['stage']} | {r['size']:,} | {r.get('shards', '-')} | "
                     f"{fmt(r['time_s'], 2)} | {fmt(r['held_mb'])} | {fmt(r['peak_mb'])} | {worker} | {read} | "
                     f"{'; '.join(verdicts(r)) or '-'} |")
    ls, ll = TARGETS["LibriSpeech"], TARGETS["LibriLight"]
    lines += ["", f"Fitted growth (least squares, a + b N; exponent of the log-log fit) and the line at LibriSpeech "
              f"({ls['entries']:,} utterances, {ls['hours']} h) and LibriLight ({ll['entries']:,} entries: "
              f"{ll['hours']:,} h in utterances of {MEAN_SECONDS:.1f} s):", "",
              "| component | stage | metric | per utterance | exponent | LibriSpeech | LibriLight |",
              "|---|---|---|---:|---:|---:|---:|"]
    per = {"time_s": (1e6, "us"), "held_mb": (1024 * 1024, "B"), "peak_mb": (1024 * 1024, "B"),
           "worker_private_mb": (1024 * 1024, "B"), "read_one_ms_mean": (1e3, "us")}
    unit = {"time_s": "s", "held_mb": "MB", "peak_mb": "MB", "worker_private_mb": "MB", "read_one_ms_mean": "ms"}
    for component, f in fitted.items():
        for metric in METRICS:
            if metric not in f:
                continue
            m = f[metric]
            scale, u = per[metric]
            exp = "-" if m["exponent"] is None else f"{m['exponent']:.2f}"
            lines.append(f"| {component} | {f['stage']} | {metric} | {fmt(m['slope'] * scale, 2)} {u} | {exp} | "
                         f"{fmt(m['at']['LibriSpeech'])} {unit[metric]} | {fmt(m['at']['LibriLight'])} "
                         f"{unit[metric]} |")
    return "\n".join(lines)


def run_child(component: str, folder: Path, n: int, args) -> dict:
    """Measure one component in a fresh process (``--measure``); its result with the shard count and wall time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", component, "--folder", str(folder),
           "--size", str(n), "--workers", str(args.workers), "--reads", str(args.reads),
           "--read-budget", str(args.read_budget), "--seed", str(args.seed)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{component} at {n} utterances failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    result.update(shards=args.shards, process_wall_s=wall)
    return result


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="utterance counts (default 1k, 10k)")
    p.add_argument("--shards", type=int, default=1, help="shard files per store version")
    p.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    p.add_argument("--out", type=Path, help="write every result, the fits and the setup here (JSON)")
    p.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}, 2 shards, short reads (the test)")
    p.add_argument("--rate", type=float, default=6.25, help="segments (units, boundaries) per second of audio")
    p.add_argument("--audio-seconds", type=float, default=0.1, help="length of each simulated audio file")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the two DataModules")
    p.add_argument("--reads", type=int, default=1000, help="one-utterance reads per store (random ids)")
    p.add_argument("--read-budget", type=float, default=30.0, help="stop the reads after this many seconds")
    p.add_argument("--workdir", type=Path, help="where corpora and stores go (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="components measured at once (memory is per process; times "
                   "are only comparable with 1, the default)")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: COMPONENT
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.measure:  # a fresh process measuring one component
        result = measure(args.measure, args.folder, args)
        result["size"] = args.size
        print("RESULT " + json.dumps(result))
        return 0

    if args.smoke:
        args.sizes, args.shards, args.reads, args.read_budget, args.jobs = list(SMOKE_SIZES), 2, 200, 2.0, 2
    from tqdm.auto import tqdm
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results, builds = [], []
    try:
        bar = tqdm(total=len(args.sizes) * len(args.components), desc="scale", unit="run")
        for n in args.sizes:
            folder = work / f"n{n}-s{args.shards}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            bar.set_postfix_str(f"building {n:,}")
            builds.append(build(folder, n, args, args.components))
            bar.set_postfix_str(f"measuring {n:,}")
            with ThreadPoolExecutor(args.jobs) as pool:  # one fresh process per component, --jobs at a time
                k = len(args.components)
                for result in pool.map(run_child, args.components, [folder] * k, [n] * k, [args] * k):
                    results.append(result)
                    bar.update()
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        bar.close()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    fitted = fits(results)
    print(table(results, fitted))
    if args.out:
        setup = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("measure", "folder", "size", "out")}
        doc = {"setup": setup, "targets": TARGETS, "mean_utterance_seconds": MEAN_SECONDS, "builds": builds,
               "results": results, "fits": fitted}
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
