"""Every value of two demo ``report.json`` files, path by path: the check that a refactor left the numbers alone.

    python benchmarks/compare_reports.py BEFORE/report.json AFTER/report.json

Prints how many leaves are equal, each value that differs (timings, peak memory and paths are listed apart: they
differ between any two runs), the leaves only one side has, and ends with ``scores: all equal`` or the list of
differing scores (exit status 1 then).
"""
from __future__ import annotations

import json
import sys

# leaves that describe the run rather than score it: wall times, memory, attempts, dates, paths
RUN_KEYS = ("seconds", "peak_mb", "peak_rss", "attempt", "finished", "started", "tokenizer_checkpoint", "workdir",
            "when", "host", "python", "threads")


def leaves(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, (*path, str(k)))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, (*path, str(i)))
    else:
        yield "/".join(path), x


def about_the_run(path: str) -> bool:
    return any(key in part for part in path.split("/") for key in RUN_KEYS)


def main() -> int:
    before = dict(leaves(json.load(open(sys.argv[1]))))
    after = dict(leaves(json.load(open(sys.argv[2]))))
    common = [k for k in before if k in after]
    differ = [k for k in common if before[k] != after[k]]
    print(f"before: {len(before)} leaves, after: {len(after)}, in both: {len(common)}, equal: "
          f"{len(common) - len(differ)}")
    for k in differ:
        print(f"  {'(run) ' if about_the_run(k) else ''}{k}: {before[k]!r} -> {after[k]!r}")
    only_before = [k for k in before if k not in after]
    print(f"only before: {len(only_before)}", *[f"\n  {k}" for k in only_before[:40]])
    print("only after (top-level keys):", sorted({k.split('/')[0] for k in after if k not in before}))
    scores = [k for k in differ + only_before if not about_the_run(k)]
    print("scores: all equal" if not scores else f"scores that differ or vanished: {scores}")
    return 1 if scores else 0


if __name__ == "__main__":
    raise SystemExit(main())
