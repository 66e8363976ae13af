"""``syllablelm import-sylboost``: the authors' released SylBoost model -> a tokenizer checkpoint.

    syllablelm import-sylboost --model SylBoost_625Hz.pth --kmeans SylBoost_625Hz_kmeans.npy \
        --agglom SylBoost_625Hz_agglom.npy --rate 6.25Hz --out runs/released/tokenizer_625.ckpt
    syllablelm tokenize --checkpoint runs/released/tokenizer_625.ckpt --input some/folder --output units.jsonl

The output is a tokenizer checkpoint like ``quantize``'s (format ``syllablelm.tokenizer/1``); a SylBoost run can
start from it (``init_from``). Details (layer, segmenter, quantizer, trusted-file caveat):
``syllablelm/units/released.py``.

``--precision`` is recorded in the checkpoint as the precision ``tokenize`` and ``units`` run the encoder in when
their own ``--precision`` is not given: ``auto`` (the default) is fp16 on CUDA, as the authors' extractor runs
the model, and fp32 on the CPU, decided where the tokenizer runs. The weights are stored as the release stores
them (fp16) whatever is recorded.
"""
from __future__ import annotations

import argparse

from experiments.arguments import command_parser
from experiments.unit_commands import PRECISION, PRECISIONS

# syllablelm.units.released.RELEASED_SYLBOOST's rates (importing it would import torch before --help; a test keeps
# the two equal)
RATES = ("8.33Hz", "6.25Hz", "5.0Hz")


def parser() -> argparse.ArgumentParser:
    p = command_parser("import-sylboost", __doc__)
    p.add_argument("--model", required=True, help="SylBoost_{833,625,500}Hz.pth (trusted file: see released.py)")
    p.add_argument("--kmeans", required=True, help="the model's *_kmeans.npy (K, 768) centroids")
    p.add_argument("--agglom", required=True, help="the model's *_agglom.npy (K,) k-means id -> unit id")
    p.add_argument("--rate", required=True, help=f"which released model (its δ preset): {', '.join(RATES)}")
    p.add_argument("--out", required=True, help="the tokenizer checkpoint to write (.ckpt)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="recorded in the checkpoint: the "
                   "precision tokenize and units run the encoder in when not told otherwise (" + PRECISION + "); "
                   "the weights keep the release's fp16 either way")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from syllablelm.units.released import import_released_sylboost

    import_released_sylboost(args.model, args.kmeans, args.agglom, args.rate, args.out, precision=args.precision)
    return 0
