"""Offline passes over LibriLight-length files in bounded memory: peak RSS against file length, in one run.

LibriLight files run to an hour. The offline passes cut them at pauses into chunks of at most ``chunk_seconds``
and run the encoder and the min-cut DP chunk by chunk, so memory should grow with the waveform only (4 bytes per
sample: 115 MB for 30 minutes), not with attention (quadratic in frames) or the DP (frames x segments). This
script synthesises files of 5, 15 and 30 minutes (eSpeak utterances separated by pauses), runs each pass on each
file in a fresh process, and prints the peak RSS of each, the growth from 5 to 30 minutes, and what one
unchunked forward would need for its attention matrices alone. Each run is repeated with glibc's default heap
and with ``MALLOC_MMAP_THRESHOLD_=1048576`` (large blocks mmap-ed): the default heap's peak creeps up with file
length through fragmentation, the mmap run shows what the code holds.

    python benchmarks/long_file.py                    # tiny SylBoost tokenizer from the shipped teacher, CPU
    python benchmarks/long_file.py --minutes 5 30 60  # other lengths

Passes: ``units`` (the tokenizer: SylBoost features -> SSE min-cut -> units; what LibriLight's unit step runs)
and ``labels`` (MFCC k-means labels, chunked the same way).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# glibc's heap keeps freed chunk-sized blocks and grows with fragmentation over a long file; with large blocks
# mmap-ed (returned to the system when freed) the peak shows what the code itself holds
ALLOCATORS = {"glibc": {}, "mmap1M": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}


def make_long_file(path: Path, minutes: float, corpus: Path) -> float:
    import soundfile as sf

    from datamodules.manifest import list_audio
    from syllablelm.audio.io import read_audio

    waves = [read_audio(p).numpy() for p in list_audio(corpus)]
    pause = np.zeros(8000, dtype=np.float32)  # 0.5 s
    out, total, i = [], 0, 0
    while total < minutes * 60 * 16000:
        out += [waves[i % len(waves)], pause]
        total += len(waves[i % len(waves)]) + len(pause)
        i += 1
    sf.write(path, np.concatenate(out), 16000)
    return total / 16000


def make_tokenizer(work: Path, corpus: Path) -> Path:
    import lightning
    import torch

    from experiments.cli import main as cli
    from lightning_modules.sylboost import SylBoostModule

    model = SylBoostModule(init_from=str(REPO / "experiments/pretrained/teacher.ckpt"), feature_layer=2)
    ckpt = work / "sylboost.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    out = work / "tokenizer.ckpt"
    cli(["quantize", "--checkpoint", str(ckpt), "--data", str(corpus), "--k", "64", "--k-merged", "16", "--hours",
         "0.2", "--out", str(out), "--manifest-cache", str(work / "cache")])
    return out


def child(pass_: str, audio: str, tokenizer: str, work: str) -> None:
    """One pass over one file in this (fresh) process; prints JSON with the peak RSS."""
    start = time.perf_counter()
    if pass_ == "units":
        from syllablelm.units.tokenizer import Tokenizer

        segs, units = Tokenizer.from_pretrained(tokenizer, chunk_seconds=60.0)(audio)
        n = len(units)
    else:
        from experiments.cli import main as cli

        cli(["labels", "--data", str(Path(audio).parent), "--out", str(Path(work) / "labels"), "--num-clusters", "50",
             "--fit-hours", "0.02", "--chunk-seconds", "30", "--manifest-cache", str(Path(work) / "cache")])
        n = -1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "seconds": time.perf_counter() - start, "n": n}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 15, 30])
    p.add_argument("--passes", nargs="+", default=["units", "labels"], choices=["units", "labels"])
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    from syllablelm.synthesis.corpus import synthesize_corpus

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize_corpus(work / "corpus", num_utterances=40, seed=5, speakers=4, progress=False)
        tokenizer = make_tokenizer(work, work / "corpus" / "train")
        rows = []
        for minutes in args.minutes:
            folder = work / f"long_{minutes:g}"
            folder.mkdir()
            seconds = make_long_file(folder / "long.flac", minutes, work / "corpus" / "train")
            for pass_ in args.passes:
                for alloc, extra in ALLOCATORS.items():
                    env = dict(os.environ, PYTHONPATH=str(REPO), **extra,
                               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
                    out = subprocess.run([sys.executable, __file__, "--child", pass_, str(folder / "long.flac"),
                                          str(tokenizer), str(folder)], env=env, capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(out.stderr[-3000:])
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append((pass_, alloc, minutes, seconds, r))
                    print(f"{pass_:7s} {alloc:8s} {seconds / 60:5.1f} min  peak RSS {r['peak_mb']:7.0f} MB  "
                          f"{r['seconds']:6.1f} s  ({seconds / r['seconds']:.0f}x real time)", flush=True)
        for pass_ in args.passes:
            for alloc in ALLOCATORS:
                mine = [r for r in rows if r[:2] == (pass_, alloc)]
                lo, hi = mine[0], mine[-1]
                wave_mb = (hi[3] - lo[3]) * 16000 * 4 / 2**20
                print(f"{pass_} ({alloc}): {lo[2]:g} -> {hi[2]:g} min: peak RSS "
                      f"x{hi[4]['peak_mb'] / lo[4]['peak_mb']:.2f} (+{hi[4]['peak_mb'] - lo[4]['peak_mb']:.0f} MB; "
                      f"the longer waveform alone is +{wave_mb:.0f} MB in float32)")
        frames = int(max(r[3] for r in rows) * 50)
        print(f"one unchunked forward over {frames} frames: {frames**2 * 4 / 2**30:.0f} GiB per attention head "
              "and layer for the score matrix alone")


if __name__ == "__main__":
    main()
