"""``syllablelm pairs``: sWUGGY / sBLIMP / topic-StoryCloze mini-sets spoken by eSpeak NG (ZeroSpeech layout).

    syllablelm pairs --out data/pairs --num-pairs 50 --seed 0

How each set is made and the layout written: :mod:`syllablelm.synthesis.pairs`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.arguments import SEED, command_parser
from syllablelm.synthesis.pair_sentences import SETS


def parser() -> argparse.ArgumentParser:
    p = command_parser("pairs", __doc__)
    p.add_argument("--out", required=True, type=Path, help="output folder (a rerun must use the same arguments)")
    p.add_argument("--num-pairs", type=int, default=50, help="pairs per set")
    p.add_argument("--seed", type=int, default=0, help=SEED + " (words, sentences, voices, file names)")
    p.add_argument("--sets", default=",".join(SETS), help="comma list of lexical,syntactic,tsc")
    p.add_argument("--voices", default=None, help="comma list of eSpeak voices (default: held-out en-us variants)")
    p.add_argument("--oov-fraction", type=float, default=0.2, help="fraction of lexical pairs with an oov word")
    p.add_argument("--vocab-corpus", type=Path, default=None,
                   help="a `syllablelm synth` corpus: word frequencies from its train transcripts")
    p.add_argument("--split", default="dev", help="subfolder name under each set")
    return p


def main(argv: list[str] | None = None) -> int:
    """``syllablelm pairs``: the command-line entry point."""
    a = parser().parse_args(argv)
    from syllablelm.synthesis.pairs import make_pairs

    summary = make_pairs(a.out, num_pairs=a.num_pairs, seed=a.seed, sets=[s for s in a.sets.split(",") if s],
                         voices=a.voices.split(",") if a.voices else None, oov_fraction=a.oov_fraction,
                         vocab_corpus=a.vocab_corpus, split=a.split)
    counts = ", ".join(f"{k} {v}" for k, v in summary["pairs"].items())
    print(f"{summary['out']}: {counts} pairs in {summary['wall_seconds']:.1f} s")
    return 0
