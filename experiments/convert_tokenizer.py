"""``syllablelm convert-tokenizer``: an older tokenizer file -> a tokenizer checkpoint (``syllablelm.tokenizer/1``).

    syllablelm convert-tokenizer --in runs/old/tokenizer.ckpt --out runs/old/tokenizer.v1.ckpt
    syllablelm convert-tokenizer --in sylboost.ckpt --quantizer sylboost.quantizer.npz --out tokenizer.ckpt

Older tokenizer files are SylBoost checkpoints with the quantizer inside (older ``quantize`` and ``import-sylboost``
outputs), beside them as ``<stem>.quantizer.npz``, or given with ``--quantizer``. The new file gives the same units
(:func:`syllablelm.units.tokenizer.convert_tokenizer`); ``tokenize`` and ``units`` still open an older file, converting
it in memory each time with a warning. The module level imports only the standard library, so ``--help`` answers at
once.
"""
from __future__ import annotations

import argparse
import logging

from experiments.arguments import command_parser

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = command_parser("convert-tokenizer", __doc__)
    p.add_argument("--in", dest="old", required=True, metavar="OLD",
                   help="the older file: a SylBoost .ckpt with its quantizer inside or beside it "
                   "(<stem>.quantizer.npz)")
    p.add_argument("--out", required=True, metavar="NEW", help="the tokenizer checkpoint to write (.ckpt)")
    p.add_argument("--quantizer", metavar="NPZ", help="the quantizer file to use (default: the one inside OLD, else "
                   "the one beside it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from syllablelm.units.tokenizer import convert_tokenizer

    meta = convert_tokenizer(args.old, args.out, quantizer=args.quantizer)
    log.info("converted %s -> %s (%s units)", args.old, args.out, meta["k_merged"])
    return 0
