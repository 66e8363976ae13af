"""Speed of `syllablelm synth`: audio seconds per wall second on one core (target >= 300x real time).

    python benchmarks/synth.py                 # 0.1 h, best of 3 runs, into temporary folders
    python benchmarks/synth.py --hours 0.2 --repeats 1

Torch is held to one thread so the ratio is per core. The best of ``--repeats`` runs is the figure to quote
(other processes on a shared machine only ever slow a run down); every run is printed.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from syllablelm.synthesis.corpus import synthesize_corpus
from syllablelm.synthesis.espeak import ESpeak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    ESpeak()  # library start-up is a one-off cost, not a per-hour one
    ratios = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = synthesize_corpus(tmp, hours=args.hours, seed=args.seed, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        audio = summary["hours"] * 3600
        ratios.append(audio / wall)
        print(f"run {i}: {summary['utterances']} utterances, {audio:.1f} s of audio in {wall:.2f} s wall "
              f"({cpu:.2f} s CPU) -> {audio / wall:.0f}x real time")
    print(f"synth: best {max(ratios):.0f}x real time on one core (target >= 300x)")


if __name__ == "__main__":
    main()
