"""``syllablelm labels``: k-means frame labels for masked-prediction training and LossPred (a label-store version).

    # first iteration: MFCC k-means (fits 100 clusters on a 1 h sample, then labels everything)
    syllablelm labels --data data/synth/train data/synth/dev --out runs/labels --features mfcc --num-clusters 100
    # the paper's targets: HuBERT-Base layer 9 + its released 500-cluster k-means model
    syllablelm labels --data LibriSpeech/train-clean-100 --out runs/labels --version 1 \
        --features teacher --checkpoint hubert_base_ls960.pt --layer 9 --kmeans hubert_base_ls960_L9_km500.bin

The version's manifest records the label model (features, checkpoint, layer, k-means): LossPred runs it again on
each VAD-trimmed wave (``losspred.labels: trimmed``, as the authors label the trimmed audio), so keep the checkpoint
and k-means files where they were given (relative paths also resolve from this run's working directory).

Sharded like fairseq's label steps: ``--rank/--world-size`` (default: torchrun's RANK/WORLD_SIZE) pick a
contiguous shard of the files; a finished shard is not redone (rerun one shard by giving its rank). Ranks meet
through the filesystem: rank 0 fits k-means first (others wait for ``kmeans.npy``), every rank writes its shard
atomically, and rank 0 writes the manifest once all shards exist.

A file the audio reader refuses (unreadable, no samples, NaN or infinite samples: :class:`AudioError`) is skipped,
not fatal: the manifest drops what its decode check finds, and a file that fails when read for its labels (or for
the k-means sample) is left out of its shard, logged and recorded (:func:`syllablelm.runtime.outcome.record_skip`,
``where="labels"``). Every skipped file is listed with its reason in the version's ``meta["skipped"]``
(each shard keeps its own, :meth:`~datamodules.shard_store.ShardStore.write_shard`, and the manifest gathers
them), and the command line exits with status 4.
"""
from __future__ import annotations

import argparse
import os

from experiments.arguments import DEVICE, MANIFEST_CACHE, add_sharding, command_parser


def parser() -> argparse.ArgumentParser:
    p = command_parser("labels", __doc__)
    p.add_argument("--data", nargs="+", required=True, help="audio folders (LibriSpeech/LibriLight layout)")
    p.add_argument("--out", required=True, help="label store root")
    p.add_argument("--version", type=int, default=0, help="the label-store version to write")
    p.add_argument("--features", choices=["mfcc", "teacher", "logmel"], default="mfcc",
                   help="frame features clustered: MFCCs (the first iteration), a teacher's hidden layer, or 80 "
                        "log mel bands (spectral fine units for speech out, not masked-prediction targets)")
    p.add_argument("--checkpoint", help="teacher: fairseq .pt, HF model dir or this project's .ckpt")
    p.add_argument("--layer", type=int, help="teacher layer (HF convention; the paper: HuBERT-Base 9)")
    p.add_argument("--kmeans", help="existing centroids (.npy or fairseq/joblib k-means model)")
    p.add_argument("--num-clusters", type=int, default=100, help="clusters to fit when --kmeans is not given")
    p.add_argument("--fit-hours", type=float, default=1.0, help="audio sampled for fitting k-means")
    p.add_argument("--train-hours", type=float, help="label only the seeded subset of about this many hours that "
                   "a stage with the same data.train_dirs, data.train_hours and data.seed trains on (with --seed)")
    p.add_argument("--extra-data", nargs="+", help="with --train-hours: folders labelled in full besides the subset "
                   "(a stage's data.predict_extra_dirs, e.g. the validation set)")
    p.add_argument("--verify", choices=["decode", "header"], default="decode",
                   help="manifest check of each file (give the training stage's data.verify with --train-hours)")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="cut longer files at pauses")
    add_sharding(p)
    p.add_argument("--device", help=DEVICE)
    p.add_argument("--seed", type=int, default=0, help="seeds the k-means sample and fit, and --train-hours' subset")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE + " (default $SYLLABLELM_CACHE)")
    p.add_argument("--wait-timeout", type=float, default=6 * 3600.0,
                   help="seconds a rank waits for rank 0's k-means and rank 0 for every shard")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device is None:
        import torch

        args.device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    from experiments.frame_labels import write_labels

    return write_labels(args)
