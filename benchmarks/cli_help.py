"""Seconds per ``syllablelm <command> --help`` (a fresh interpreter each, as a user runs it), every plain command.

    python benchmarks/cli_help.py            # prints one line per command and the slowest

The target (issue 26): every plain command answers in well under a second on 2 cores; LightningCLI's
fit/validate/test/predict import their classes and are not timed here.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from experiments.cli import COMMANDS

    bare = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
    print(f"{'python -c pass':<18} {min(bare):5.2f} s (interpreter start, the floor)")
    times = {}
    for name in COMMANDS:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "experiments.cli", name, "--help"], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t0)
        times[name] = min(runs)
        print(f"{name:<18} {times[name]:5.2f} s")
    slowest = max(times, key=times.get)
    print(f"slowest: {slowest} {times[slowest]:.2f} s (best of 3 runs each)")


if __name__ == "__main__":
    main()
