"""Memory of the interleaved LM's data module against corpus size (issue 29): pieces read on demand (the default)
against pieces built at setup (``materialize``), on simulated store pairs.

    python benchmarks/interleaved_scale.py --sizes 2000 20000 --out interleaved_scale.json

Per size N: a unit store and a label store as :mod:`benchmarks.scale` builds them (LibriSpeech-like durations, mean
12.3 s; 6.25 syllables a second, 8,192 syllable units; one of 500 labels per 20 ms frame), written once. Each
(size, mode) then runs in a fresh ``python`` process: ``InterleavedDataModule.setup()`` with the paper run's
pieces (``fine_pool`` 2: 25 Hz fine units, ``max_tokens`` = ``max_size`` = 128, no validation split), then
``--batches`` training batches timed. Memory as :mod:`benchmarks.scale` defines it: *held* is the rise of
``RssAnon + RssShmem`` over its value after the imports, taken after setup with the data module referenced;
*peak* the largest rise during setup (sampled every 10 ms); *trimmed* the rise after
``gc.collect()`` and ``malloc_trim`` (what setup still references, without the allocator's free memory).
The setup pass itself is one interleaving of every utterance in Python (a few ms an utterance): it is the same in
both modes, so sizes stay small here; what is held after it is what grows with the corpus. Reported per
utterance: held bytes divided by N.

With a persistent piece index (``index_cache``): ``cached_build`` is a first start (``prepare_data()`` makes the
pass, in a pool of ``--index-workers`` processes, and writes the index; then ``setup()`` maps it), ``cached`` a
second start of a fresh process on the same cache (``prepare_data()`` finds it, ``setup()`` maps it). For these
modes ``setup_s`` is ``prepare_data()`` plus ``setup()``, what a start costs; run them in that order.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scale_stores import (  # noqa: E402
    PeakSampler,
    anon_shmem_kb,
    build_labels,
    build_units,
    durations,
    release_free_heap,
    utterance_ids,
)

MODES = ("on_demand", "materialize", "cached_build", "cached")


def build(folder: Path, n: int, args) -> None:
    ids, secs = utterance_ids(n), durations(n, args.seed)
    build_units(folder / "units", ids, secs, args.rate, args.shards, args.seed)
    build_labels(folder / "labels", ids, secs, args.shards, args.seed)


def child(folder: Path, mode: str, args) -> dict:
    import torch

    torch.set_num_threads(1)
    from datamodules.interleaved_data import InterleavedDataModule
    gc.collect()
    release_free_heap()
    base = anon_shmem_kb()
    cached = mode.startswith("cached")
    dm = InterleavedDataModule(unit_dir=str(folder / "units"), label_dir=str(folder / "labels"), fine_pool=2,
                               max_tokens=128, max_size=128, batch_size=None, num_workers=0, seed=args.seed,
                               materialize=mode == "materialize", index_cache=str(folder / "index") if cached else None,
                               index_workers=args.index_workers)
    start = time.perf_counter()
    with PeakSampler() as sampler:
        dm.prepare_data()  # nothing without index_cache
        dm.setup("fit")
        setup_s = time.perf_counter() - start
        held = anon_shmem_kb() - base
    gc.collect()
    release_free_heap()
    trimmed = anon_shmem_kb() - base  # what setup still references: malloc's free memory given back
    train = dm.datasets["train"]
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # the first batch starts the iterator
    t = time.perf_counter()
    count = tokens = 0
    for batch in it:
        tokens += int((~batch["padding_mask"]).sum())
        count += 1
        if count == args.batches:
            break
    batch_ms = (time.perf_counter() - t) * 1e3 / max(count, 1)
    return {"mode": mode, "pieces": len(train), "setup_s": setup_s, "held_mb": held / 1024,
            "held_trimmed_mb": trimmed / 1024, "peak_mb": max(sampler.peak_kb - base, held) / 1024,
            "batch_ms": batch_ms,
            "tokens_per_batch": tokens / max(count, 1), "max_piece_tokens": dm.generation_stats["max_piece_tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--rate", type=float, default=6.25)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-workers", type=int, default=1, help="processes of the pass in cached_build")
    p.add_argument("--out", type=Path)
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="interleaved_scale_") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / str(n)
            t = time.perf_counter()
            build(folder, n, args)
            print(f"built {n} utterances in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", str(folder), mode, "--batches", str(args.batches),
                       "--seed", str(args.seed), "--index-workers", str(args.index_workers)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r = {"size": n, **json.loads(out.strip().splitlines()[-1])}
                r["held_bytes_per_utterance"] = r["held_mb"] * 2**20 / n
                r["held_bytes_per_piece"] = r["held_mb"] * 2**20 / max(r["pieces"], 1)
                r["trimmed_bytes_per_utterance"] = r["held_trimmed_mb"] * 2**20 / n
                results.append(r)
                print(json.dumps(r), file=sys.stderr)
    lines = ["| mode | utterances | pieces | setup s | held MB | peak MB | held B / utterance | held B / piece | "
             "trimmed MB | trimmed B / utterance | ms / batch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['size']:,} | {r['pieces']:,} | {r['setup_s']:.1f} | {r['held_mb']:.1f} | "
                     f"{r['peak_mb']:.1f} | {r['held_bytes_per_utterance']:.0f} | {r['held_bytes_per_piece']:.0f} | "
                     f"{r['held_trimmed_mb']:.1f} | {r['trimmed_bytes_per_utterance']:.0f} | {r['batch_ms']:.2f} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
