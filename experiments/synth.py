"""``syllablelm synth``: a LibriSpeech-layout corpus with alignments, synthesised with eSpeak NG.

    syllablelm synth --out data/synth --hours 1 --seed 0
    syllablelm synth --out /tmp/synth --num-utterances 10

The layout, the plan and the alignment files: :mod:`syllablelm.synthesis.corpus`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from experiments.arguments import SEED, command_parser
from syllablelm.synthesis.plan import DEFAULT_SPLITS, HELD_OUT_VARIANTS


def _parse_splits(text: str) -> list[tuple[str, float]]:
    try:
        return [(name.strip(), float(frac)) for name, frac in (item.split("=") for item in text.split(",") if item)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected name=fraction,... (e.g. train=0.8,dev=0.1,test=0.1): {e}") from e


def parser() -> argparse.ArgumentParser:
    p = command_parser("synth", __doc__)
    p.add_argument("--out", required=True, type=Path, help="output folder (created; reruns resume)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--num-utterances", type=int, help="number of utterances over all splits")
    size.add_argument("--hours", type=float, help="hours of audio over all splits (planned from the text)")
    p.add_argument("--seed", type=int, default=0, help=SEED + " (the plan: speakers, texts, voices)")
    p.add_argument("--speakers", type=int, default=None, help="number of speakers (default: ~1 per 25 utterances)")
    p.add_argument("--splits", type=_parse_splits, default=list(DEFAULT_SPLITS),
                   help="split names and fractions, default train=0.8,dev=0.1,test=0.1")
    p.add_argument("--sentences", type=Path, default=None, help="text file, one sentence a line (default: shipped)")
    p.add_argument("--workers", type=int, default=1, help="processes (each synthesises on one core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--held-out-variants", nargs="?", const=",".join(HELD_OUT_VARIANTS), default="",
                   help="comma-separated eSpeak variants that only the test split speaks (no value: the project's "
                        f"reserved set, {','.join(HELD_OUT_VARIANTS)}); a corpus for training a model should pass "
                        "--exclude-held-out instead")
    p.add_argument("--exclude-held-out", action="store_true",
                   help="no split speaks the reserved held-out variants (corpora that train shipped models)")
    p.add_argument("--split-speakers", type=lambda t: [int(x) for x in t.split(",")],
                   help="speakers per split, comma-separated in split order (default: by the split fractions)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``syllablelm synth``: the command-line entry point."""
    p = parser()
    a = p.parse_args(argv)
    from syllablelm.synthesis.corpus import synthesize_corpus

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    held_out = [v for v in a.held_out_variants.split(",") if v]
    if a.exclude_held_out and held_out:
        raise SystemExit("syllablelm synth: give --held-out-variants or --exclude-held-out, not both")
    summary = synthesize_corpus(a.out, num_utterances=a.num_utterances, hours=a.hours, seed=a.seed,
                                speakers=a.speakers, splits=a.splits, sentences=a.sentences, workers=a.workers,
                                progress=not a.no_progress, held_out=list(HELD_OUT_VARIANTS) if a.exclude_held_out
                                else held_out, held_out_split=None if a.exclude_held_out else "test",
                                split_speakers=a.split_speakers)
    splits = ", ".join(f"{k} {v['utterances']} utt / {v['speakers']} spk / {v['hours']:.3f} h"
                       for k, v in summary["splits"].items())
    print(f"{summary['out']}: {summary['utterances']} utterances, {summary['hours']:.3f} h ({splits}); "
          f"{summary['synthesized']} synthesised, {summary['skipped']} kept, {summary['wall_seconds']:.1f} s")
    return 0
