"""``syllablelm baselines``: the feature-free segmenters of docs/algorithms.md scored on a corpus with alignments.

    syllablelm baselines --data data/synth/test --tune-data data/synth/dev \
        --alignments data/synth/alignments --rate 6.25 --out runs/baselines.json

Uniform (4.5 Hz and ``--rate``), envelope minima (its cut-off and prominence tuned on ``--tune-data`` by
R-value) and the log-mel SSE min-cut at ``--rate``. Every score is reported for both protocols at shift 0 and
with the shift tuned on ``--tune-data`` (the protocol's grid, by R-value) and applied to ``--data``.
"""
from __future__ import annotations

import argparse
import logging

from experiments.arguments import LIMIT, MANIFEST_CACHE, command_parser

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = command_parser("baselines", __doc__)
    p.add_argument("--data", nargs="+", required=True, help="evaluation audio folders (e.g. the test split)")
    p.add_argument("--tune-data", nargs="+", required=True, help="folders for tuning shifts and envelope (dev)")
    p.add_argument("--alignments", required=True, help="alignment JSON folder (searched recursively)")
    p.add_argument("--rate", type=float, default=6.25, help="the project's rate for uniform and min-cut (Hz)")
    p.add_argument("--limit", type=int, help=LIMIT)
    p.add_argument("--out", help="write the scores as JSON here (they are printed either way)")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from datamodules.aligned import load_split
    from syllablelm.evaluation.scoring import run_baselines
    from syllablelm.runtime.fileio import write_json

    wt, rt, _ = load_split(args.data, args.alignments, args.limit, args.manifest_cache)
    wd, rd, _ = load_split(args.tune_data, args.alignments, args.limit, args.manifest_cache)
    results = run_baselines((wt, rt), (wd, rd), args.rate)
    for name, res in results.items():
        s, t = res["syllablelm"], res["syllablelm_tuned"]
        print(f"{name:<22} rate {res['rate_hz']:5.2f} Hz   F1 {100 * s['f1']:5.1f}  R {100 * s['r_value']:5.1f}"
              f"   (shift {1000 * t['shift']:+.0f} ms: F1 {100 * t['f1']:5.1f}  R {100 * t['r_value']:5.1f})")
    if args.out:
        write_json(args.out, results, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
