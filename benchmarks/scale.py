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

The store-specific code sits in small functions (``read_one_*``, ``measure_*``, ``build_*``, in
``benchmarks/scale_stores.py``): when the stores become memory-mapped columns, adapt those and rerun for the "after"
numbers. Numbers depend on the machine and its load: compare runs made on one machine.
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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scale_stores import (  # noqa: E402  (after the path set-up: the script runs from anywhere)
    MEAN_SECONDS,
    STORES,
    PeakSampler,
    anon_shmem_kb,
    build,
    measure_manifest,
    measure_speech_datamodule,
    measure_store,
    measure_units_datamodule,
    open_store,
    read_one_times,
    release_free_heap,
)

COMPONENTS = ("units_store", "units_datamodule", "units_datamodule_authors", "boundary_store", "label_store",
              "speech_datamodule", "manifest_cold", "manifest_rescan")
STAGE = {"units_store": "SpeechLM data", "units_datamodule": "SpeechLM data",
         "units_datamodule_authors": "SpeechLM data (paper batches)", "boundary_store": "SylBoost",
         "label_store": "teacher / LossPred", "speech_datamodule": "every audio stage",
         "manifest_cold": "every stage", "manifest_rescan": "every stage"}
STORE_COMPONENTS = ("units_store", "boundary_store", "label_store")
TARGETS = {"LibriSpeech": {"entries": 281_241, "hours": 960},
           "LibriLight": {"entries": round(55_000 * 3600 / MEAN_SECONDS), "hours": 55_000}}
METRICS = ("time_s", "held_mb", "peak_mb", "worker_private_mb", "read_one_ms_mean")
SMOKE_SIZES = (1000, 3000)


# ---- the measuring child process ----------------------------------------------------------------------------
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
