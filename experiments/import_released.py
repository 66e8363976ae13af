"""``syllablelm import-sylboost``: the authors' released SylBoost model -> a tokenizer checkpoint.

    syllablelm import-sylboost --model SylBoost_625Hz.pth --kmeans SylBoost_625Hz_kmeans.npy \
        --agglom SylBoost_625Hz_agglom.npy --rate 6.25Hz --out runs/released/tokenizer_625.ckpt
    syllablelm tokenize --checkpoint runs/released/tokenizer_625.ckpt --input some/folder --output units.jsonl

Details (layer, segmenter, quantizer, trusted-file caveat): ``syllablelm/units/released.py``.
"""
from __future__ import annotations

import argparse

from syllablelm.units.released import RELEASED_SYLBOOST, import_released_sylboost


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syllablelm import-sylboost", description="import a released SylBoost model "
                                "(.pth + _kmeans.npy + _agglom.npy) as a tokenizer checkpoint")
    p.add_argument("--model", required=True, help="SylBoost_{833,625,500}Hz.pth (trusted file: see released.py)")
    p.add_argument("--kmeans", required=True, help="the model's *_kmeans.npy (K, 768) centroids")
    p.add_argument("--agglom", required=True, help="the model's *_agglom.npy (K,) k-means id -> unit id")
    p.add_argument("--rate", required=True, help=f"which released model (its δ preset): {', '.join(RELEASED_SYLBOOST)}")
    p.add_argument("--out", required=True, help="the tokenizer checkpoint to write (.ckpt)")
    args = p.parse_args(argv)
    import_released_sylboost(args.model, args.kmeans, args.agglom, args.rate, args.out)
    return 0
