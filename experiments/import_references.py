"""``syllablelm references``: convert LibriSpeech syllable references into an alignment folder.

SD-HuBERT JSON, Peng et al. alignment JSON or MFA TextGrids become one alignment JSON per utterance:

    syllablelm references --format sdhubert --input files/librispeech_syllable_test.json --out data/ls_refs
    syllablelm references --format sdhubert --input files/librispeech_syllable_val.json --out data/ls_refs
    syllablelm evaluate --checkpoint runs/ls/tokenizer.ckpt --data LibriSpeech/test-clean \
        --tune-data LibriSpeech/dev-clean --alignments data/ls_refs --out runs/ls/eval.json

Formats and their sources: :mod:`syllablelm.audio.references`. Files land at ``OUT/<speaker>/<chapter>/<id>.json``
(``OUT/<id>.json`` for non-LibriSpeech ids), each written atomically; ``--format auto`` detects the format from
the input. Several inputs (dev and test) may share one ``--out``; an utterance already there is overwritten.
"""
from __future__ import annotations

import argparse
import logging

from experiments.arguments import command_parser
from syllablelm.audio.references import FORMATS, read_references, write_references

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = command_parser("references", __doc__)
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS, help="the input's format")
    p.add_argument("--input", required=True, help="a reference JSON file, a TextGrid, or a folder of TextGrids")
    p.add_argument("--out", required=True, help="alignment folder to write (the --alignments of evaluate)")
    p.add_argument("--onset-rule", default="maximal", choices=("maximal", "s_coda"),
                   help="TextGrids: pure maximal onset (ek.stra), or /s/ after an obstruent kept in the coda (ex.tra)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    refs = read_references(args.input, args.format, onset_rule=args.onset_rule)
    if not refs:
        p.error(f"{args.input}: no utterance with syllables found")
    paths = write_references(refs, args.out)
    log.info("wrote %d alignment files under %s", len(paths), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
