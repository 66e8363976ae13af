r"""Stage 3 commands: ``syllablelm quantize`` trains the unit quantizer, ``syllablelm units`` writes unit shards.

    syllablelm quantize --checkpoint runs/tiny/sylboost/checkpoints/last.ckpt --data data/synth/train \
        --k 512 --k-merged 128 --out runs/tiny/tokenizer.ckpt
    syllablelm units --checkpoint runs/tiny/tokenizer.ckpt --data data/synth/train --out runs/tiny/units

``quantize`` pools SylBoost features inside SylBoost segments (drop-edge-frames pooling, per-vector
standardisation) on a seeded sample of the training set, fits k-means (K) and the Ward reduction (K'), and writes
the lean *tokenizer checkpoint* (:func:`syllablelm.units.tokenizer.save_tokenizer`: the student up to its feature layer,
the segmenter, the quantizer and metadata), the one file ``tokenize`` needs.
``units`` shards by ``--rank/--world-size`` like the label step (contiguous file shards, atomic shard files,
rank 0 writes the manifest once every shard exists). ``units --variant`` picks the unit variant the store holds
and records it in the manifest (:mod:`datamodules.unit_store`): ``dedup`` (default) or ``authors_lm``, what the
authors' SpeechLM trained on (the paper pipeline configs ask for it).

``units`` (and ``tokenize``) take the tokenizer's run settings: ``--max-segment-frames`` (the min-cut's longest
segment; the paper pipelines pass 35 for LibriLight, the authors' extractor setting, where the LibriSpeech SylBoost
segmenter the tokenizer inherits says 50), ``--precision`` (the encoder's; default: what the tokenizer file
records, else fp16 on CUDA as the authors, fp32 on the CPU) and ``--chunk-seconds`` (0: whole files, one min-cut
each, as the authors' extractor; memory in its help).

Both skip a file the audio reader refuses (unreadable, no samples, NaN or infinite samples) instead of failing:
the manifest drops what its decode check finds, and a file that fails when read is logged and recorded
(``where="quantize"`` / ``"units"``); the command line then exits with status 4. ``units`` lists every file it
left out, with its reason, in the version's ``meta["skipped"]`` (``{path: reason}``, gathered from every shard by
the store).
"""
from __future__ import annotations

import argparse

from experiments.arguments import DEVICE, MANIFEST_CACHE, SEED, UNIT_VARIANTS, add_sharding, command_parser


def quantize_parser() -> argparse.ArgumentParser:
    p = command_parser("quantize", __doc__)
    p.add_argument("--checkpoint", required=True, help="a SylBoost checkpoint (or a tokenizer checkpoint)")
    p.add_argument("--data", nargs="+", required=True, help="training audio folders")
    p.add_argument("--out", required=True, help="the tokenizer checkpoint to write (.ckpt): the student encoder, "
                   "segmenter and quantizer only")
    p.add_argument("--k", type=int, default=24576, help="k-means clusters (paper: 24576)")
    p.add_argument("--k-merged", type=int, default=8192, help="units after Ward merging (paper: 2048..16384; "
                   "0 = no merging)")
    p.add_argument("--hours", type=float, default=100.0, help="hours of audio sampled (seeded) for fitting")
    p.add_argument("--fixed-frames", type=int, help="baseline frame units: cut every N frames instead of the "
                   "SylBoost min-cut (2 = 25 Hz units) and pool whole segments")
    p.add_argument("--backend", default="auto", choices=["auto", "sklearn", "faiss"],
                   help="k-means implementation: auto = faiss when installed (pip install -e '.[faiss]'), "
                        "else scikit-learn")
    p.add_argument("--device", help=DEVICE)
    p.add_argument("--seed", type=int, default=0, help=SEED + " (the sample and k-means)")
    p.add_argument("--save-every", type=int, default=500, help="files per saved part of the pooled features "
                   "(OUT.pooled/): a stopped run resumes after the last part; removed once OUT is written")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    return p


def quantize(argv: list[str] | None = None) -> int:
    args = quantize_parser().parse_args(argv)
    from experiments.unit_work import fit_quantizer

    return fit_quantizer(args)


def add_variant(p: argparse.ArgumentParser, default: str) -> None:
    """``--variant`` / ``--no-dedup``, as ``units`` and ``tokenize`` take them."""
    p.add_argument("--variant", choices=list(UNIT_VARIANTS), help="after k-means and the Ward merge: "
                   "'authors_lm' keeps one merged unit per min-cut segment (what the authors' SpeechLM trained "
                   "on: their data loader maps k-means ids through the Ward table and does not deduplicate "
                   "again), 'dedup' collapses runs of equal units (their extraction script's output). "
                   f"Default: {default}")
    p.add_argument("--no-dedup", action="store_true", help="the same as --variant authors_lm (kept for older "
                   "commands; frame-unit baselines)")


def chosen_variant(p: argparse.ArgumentParser, args, default: str) -> str:
    if args.no_dedup and args.variant not in (None, "authors_lm"):
        p.error(f"--no-dedup contradicts --variant {args.variant}")
    return args.variant or ("authors_lm" if args.no_dedup else default)


# syllablelm.checkpoints.tokenizer_file.PRECISIONS (importing it would import torch before --help; a test keeps the
# two equal)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PRECISION = ("the precision the encoder runs in: its weights and input cast to it, as the authors' extractor casts "
             "its model with .half(); the min-cut and the quantizer read the features as floats either way. auto: "
             "fp16 on CUDA (the authors'), fp32 on the CPU (fp16 works on the CPU, slowly; bf16 too)")
CHUNK_SECONDS = ("files longer than this are cut at pauses into pieces of at most this length, tokenized, and "
                 "joined; 0 = whole files: one encoder pass and one min-cut over all of a file's frames, as the "
                 "authors' extractor does with what it is given. Whole files cost memory growing with the square "
                 "of the length: the data2vec 2.0 encoder's attention holds (12, T, T) float32 tensors (T = 50 "
                 "frames a second): three at once at the peak, 144 bytes x T^2 (fp16: 168), measured: 1.2 GiB at 60 "
                 "s, 30 GiB at 5 min, 4.2 TiB at 1 h; the min-cut's backpointers take 0.2 x T^2 bytes (6 GiB at 1 "
                 "h). Use it for files of a few minutes at most")
MAX_SEGMENT = ("the min-cut's longest segment in 50 Hz frames, inclusive (the authors' extract_units.py 's': 50 "
               "for LibriSpeech, 35 for LibriLight); default: the tokenizer's segmenter (max_len)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--precision``, ``--chunk-seconds``, ``--max-segment-frames``: how ``units`` and ``tokenize`` run the
    tokenizer (none changes the file)."""
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION + ". Default: the precision the tokenizer "
                   "file records (import-sylboost --precision), else auto")
    p.add_argument("--chunk-seconds", type=float, default=60.0, help=CHUNK_SECONDS)
    p.add_argument("--max-segment-frames", type=int, metavar="FRAMES", help=MAX_SEGMENT)


def check_run_options(p: argparse.ArgumentParser, args) -> None:
    """A usage error (exit status 2) for a negative ``--chunk-seconds`` or a ``--max-segment-frames`` below 1."""
    if args.chunk_seconds < 0:
        p.error(f"--chunk-seconds must be positive, or 0 for whole files; got {args.chunk_seconds}")
    if args.max_segment_frames is not None and args.max_segment_frames < 1:
        p.error(f"--max-segment-frames must be a positive number of frames, got {args.max_segment_frames}")


def run_options(args) -> dict:
    """:meth:`Tokenizer.from_pretrained` keyword arguments of the parsed run options."""
    return {"precision": args.precision, "chunk_seconds": args.chunk_seconds or None,
            "max_segment_frames": args.max_segment_frames}


def units_parser() -> argparse.ArgumentParser:
    p = command_parser("units", __doc__)
    p.add_argument("--checkpoint", required=True, help="a tokenizer checkpoint (syllablelm quantize)")
    p.add_argument("--data", nargs="+", required=True, help="audio folders to tokenize")
    p.add_argument("--out", required=True, help="unit store root")
    p.add_argument("--version", type=int, default=0, help="the unit-store version to write")
    add_sharding(p, " (LibriLight: thousands)")
    p.add_argument("--batch-size", type=int, default=8, help="files tokenized together")
    add_variant(p, "dedup")
    p.add_argument("--device", help=DEVICE)
    add_run_options(p)
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    p.add_argument("--wait-timeout", type=float, default=6 * 3600.0,
                   help="seconds rank 0 waits for every shard before writing the manifest")
    return p


def units(argv: list[str] | None = None) -> int:
    p = units_parser()
    args = p.parse_args(argv)
    variant = chosen_variant(p, args, "dedup")
    check_run_options(p, args)
    from experiments.unit_work import write_units

    return write_units(args, variant)
