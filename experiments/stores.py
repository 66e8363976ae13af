"""Store commands.

``syllablelm store-copy``: copy one complete store version (boundaries, labels or units) into another store.

    syllablelm store-copy --store runs/librispeech/boundaries --version 0 --out runs/librispeech/boundaries_5.0hz

The use: a second SylBoost run (another rate or backbone) starts from LossPred's version 0 but keeps its own
later versions. Shards are copied atomically and the manifest is written last, so an interrupted copy is an
incomplete version (never read) and a rerun replaces it. The source must be complete and whole (sizes and
checksums are verified first); otherwise the store's own error says what is wrong and how to regenerate it.

``syllablelm store-convert``: rewrite store versions of the old layout (one ``.npz`` per shard, written before issue 28)
as memory-mapped columns, in place, value-identical (``datamodules.shard_store``, ``ShardStore.convert``).

    syllablelm store-convert --store runs/librispeech/units            # every old-layout version of the root
    syllablelm store-convert --store runs/librispeech/boundaries --version 0 2

Old versions read without it (into memory, as before); converting makes them memory-mapped. A root may mix both
layouts; versions already in columns are left alone. Each version's new manifest replaces the old one only after
its columns and index are written, so a stopped conversion leaves every version readable; rerun it to finish.

``syllablelm store-reference``: the reference segmentation (syllables by default) of every aligned utterance as
a boundary version, optionally with label noise of a known kind (boundaries dropped, jittered, inserted).

    syllablelm store-reference --data data/synth/train data/synth/dev data/synth/test \
        --alignments data/synth/alignments --out runs/reference_boundaries [--drop 0.3 --insert 0.35 --jitter-ms 30]

SylBoost trained from it (``data.boundary_dir``) measures what a backbone can learn at all (the reference) and
whether it denoises (the noisy reference: a student that generalises beyond its labels scores above them).

``syllablelm store-envelope``: the envelope-minima baseline's segmentation (docs/algorithms.md; no alignments needed)
of every utterance as a boundary version: unsupervised syllable-like labels. Its two parameters are given, or
tuned by R-value on ``--tune-data`` (with alignments) as the baselines report does.

    syllablelm store-envelope --data data/synth/train --out runs/envelope_boundaries \
        --tune-data data/synth/dev --alignments data/synth/alignments

The shipped SylBoost backbone (``experiments/pretrained/README.md``) was distilled from such labels.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np

from experiments.arguments import MANIFEST_CACHE, SEED, command_parser

log = logging.getLogger(__name__)
def parser() -> argparse.ArgumentParser:
    p = command_parser("store-copy", "copy one version of a boundary, label or unit store into another store root "
                       "(for example LossPred's boundaries as the start of a second SylBoost run)")
    p.add_argument("--store", required=True, help="the source store root (holds iter_K/ folders)")
    p.add_argument("--version", type=int, default=0, help="the version to copy")
    p.add_argument("--out", required=True, help="the destination store root")
    p.add_argument("--out-version", type=int, help="the version number in the destination (default: the same)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from datamodules.shard_store import MANIFEST, ShardStore, StoreError
    from datamodules.store_kinds import STORE_CLASSES

    source = ShardStore(args.store)
    kind = source.manifest(args.version, check_shards=False).get("kind")  # absent / incomplete: the store's error
    if kind not in STORE_CLASSES:
        raise StoreError(f"{source.version_dir(args.version) / MANIFEST}: unknown store kind {kind!r} (expected one "
                         f"of {', '.join(sorted(STORE_CLASSES))})")
    cls = STORE_CLASSES[kind]
    copied = cls(args.store).copy_version(args.version, cls(args.out), args.out_version)
    log.info("copied %s version %d (%d utterances) to %s", kind, args.version, copied["num_utterances"], args.out)
    return 0


def convert_parser() -> argparse.ArgumentParser:
    p = command_parser("store-convert", "rewrite old-layout store versions (one .npz per shard) as memory-mapped "
                       "columns, in place and value-identical")
    p.add_argument("--store", required=True, help="the store root (holds iter_K/ folders)")
    p.add_argument("--version", type=int, nargs="*", help="the versions to convert (default: every complete one)")
    return p


def convert(argv: list[str] | None = None) -> int:
    args = convert_parser().parse_args(argv)
    from datamodules.shard_store import ShardStore
    from datamodules.store_kinds import open_store

    root = ShardStore(args.store)
    versions = args.version if args.version else root.versions()
    if not versions:
        log.warning("%s: no complete version to convert (%s)", args.store, root.inventory())
    for v in versions:
        store = open_store(args.store, version=v)
        done = store.convert(v)
        if done is None:
            log.info("%s: %s version %d is already in columns", args.store, store.kind, v)
        else:
            log.info("%s: %s version %d (%d utterances) converted to columns", args.store, store.kind, v,
                     done["num_utterances"])
    return 0


def touching_runs(segments: np.ndarray, tol: float = 1e-6) -> list[np.ndarray]:
    """Split sorted ``(n, 2)`` segments into runs of touching segments (a gap, e.g. a pause, ends a run)."""
    if len(segments) == 0:
        return []
    breaks = np.flatnonzero(segments[1:, 0] - segments[:-1, 1] > tol) + 1
    return np.split(segments, breaks)


def noisy_segments(segments, rng: np.random.Generator, *, drop: float = 0.0, insert: float = 0.0,
                   jitter: float = 0.0, min_seconds: float = 0.02) -> np.ndarray:
    """Reference segments with label noise, inside each run of touching segments (gaps stay gaps, run edges
    stay put): every inner boundary is dropped with probability ``drop`` and the rest moved by N(0, ``jitter``)
    seconds; then Binomial(inner boundaries, ``insert``) boundaries are added uniformly in the run. Boundaries
    closer than ``min_seconds`` (one frame) to a kept one are merged."""
    for name, value in (("drop", drop), ("insert", insert)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0 seconds, got {jitter}")
    out = []
    for run in touching_runs(np.asarray(segments, dtype=np.float64).reshape(-1, 2)):
        start, end, inner = run[0, 0], run[-1, 1], run[1:, 0]
        kept = inner[rng.random(len(inner)) >= drop]
        kept = kept + rng.normal(0.0, jitter, len(kept)) if jitter else kept
        added = rng.uniform(start, end, rng.binomial(len(inner), insert))
        cuts = np.sort(np.concatenate([kept, added]))
        cuts = cuts[(cuts > start + min_seconds) & (cuts < end - min_seconds)]
        bounds = [start]
        for c in cuts:
            if c - bounds[-1] >= min_seconds:
                bounds.append(float(c))
        if end - bounds[-1] < min_seconds:
            bounds.pop()
        bounds.append(end)
        out.append(np.stack([bounds[:-1], bounds[1:]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2))


def reference_parser() -> argparse.ArgumentParser:
    from syllablelm.audio.alignments import TIERS

    p = command_parser("store-reference", "the reference segmentation (optionally noisy) as a boundary version: "
                       "SylBoost trained on it shows its upper bound")
    p.add_argument("--data", nargs="+", required=True, help="audio folders; every utterance needs an alignment")
    p.add_argument("--alignments", required=True, help="alignment JSON folder (searched recursively)")
    p.add_argument("--out", required=True, help="the boundary store root")
    p.add_argument("--version", type=int, default=0, help="the boundary version to write (replaced if present)")
    p.add_argument("--tier", choices=TIERS, default="syllables", help="which alignment tier becomes the segments")
    p.add_argument("--drop", type=float, default=0.0, help="probability of dropping each inner boundary")
    p.add_argument("--insert", type=float, default=0.0,
                   help="random boundaries added per inner reference boundary (a probability each)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="std. dev. of the shift of each kept boundary")
    p.add_argument("--seed", type=int, default=0, help=SEED + " (the noise)")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    return p


def reference(argv: list[str] | None = None) -> int:
    """``syllablelm store-reference``: see the module docstring."""
    args = reference_parser().parse_args(argv)
    from datamodules.aligned import aligned_entries

    entries, alignments, missing = aligned_entries(args.data, args.alignments, cache=args.manifest_cache)
    if missing:
        raise SystemExit(f"syllablelm store-reference: {len(missing)} file(s) have no alignment in "
                         f"{args.alignments}, e.g. {missing[0].path}")
    rng = np.random.default_rng(args.seed)
    noise = dict(drop=args.drop, insert=args.insert, jitter=args.jitter_ms / 1000.0)
    segments = {}
    for e, tiers in zip(entries, alignments):
        if args.tier not in tiers:
            raise SystemExit(f"syllablelm store-reference: the alignment of {e.path} has no {args.tier!r} tier")
        segments[e.id] = noisy_segments(tiers[args.tier][0], rng, **noise) if any(noise.values()) \
            else tiers[args.tier][0]
    _write_version(args.out, args.version, segments, {"stage": "reference", "tier": args.tier, "seed": args.seed,
                                                      **noise}, what=f"the {args.tier}")
    return 0


def _write_version(out: str, version: int, segments: dict, meta: dict, what: str) -> None:
    """``segments`` as boundary version ``version`` of the store at ``out`` (replacing it), in one shard."""
    from datamodules.boundary_store import BoundaryStore

    store = BoundaryStore(out)
    store.invalidate(version)
    store.write_shard(version, 0, 1, segments)
    store.finalize(version, 1, meta=meta)
    log.info("boundary version %d: %s of %d utterances in %s", version, what, len(segments),
             store.version_dir(version))


def envelope_parser() -> argparse.ArgumentParser:
    p = command_parser("store-envelope", "the envelope-minima segmentation as a boundary version (labels "
                       "without any model)")
    p.add_argument("--data", nargs="+", required=True, help="audio folders")
    p.add_argument("--out", required=True, help="the boundary store root")
    p.add_argument("--version", type=int, default=0, help="the boundary version to write (replaced if present)")
    p.add_argument("--cutoff-hz", type=float, help="the envelope's low-pass cut-off (with --prominence)")
    p.add_argument("--prominence", type=float, help="minimum prominence, a fraction of the region's maximum")
    p.add_argument("--tune-data", nargs="+", help="tune both on these folders instead (needs --alignments)")
    p.add_argument("--alignments", help="alignment JSON folder for --tune-data")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    return p


def envelope(argv: list[str] | None = None) -> int:
    """``syllablelm store-envelope``: see the module docstring."""
    args = envelope_parser().parse_args(argv)
    from tqdm import tqdm

    from datamodules.aligned import load_split
    from datamodules.manifest import build_manifest
    from syllablelm.audio.io import SAMPLE_RATE, read_audio
    from syllablelm.boundaries.baselines import envelope_segments
    from syllablelm.evaluation.scoring import tune_envelope

    if args.tune_data:
        if not args.alignments:
            raise SystemExit("syllablelm store-envelope: --tune-data needs --alignments")
        waves, refs, _ = load_split(args.tune_data, args.alignments, cache=args.manifest_cache)
        if not waves:
            raise SystemExit(f"syllablelm store-envelope: no aligned utterance in {args.tune_data}")
        params, scores = tune_envelope(waves, SAMPLE_RATE, refs)
        log.info("envelope tuned on %d utterances: %s (F1 %.3f, R-value %.3f)", len(waves), params,
                 scores["f1"], scores["r_value"])
    elif args.cutoff_hz is not None and args.prominence is not None:
        params = {"cutoff_hz": args.cutoff_hz, "prominence": args.prominence}
    else:
        raise SystemExit("syllablelm store-envelope: give --cutoff-hz and --prominence, or --tune-data")
    entries = build_manifest(args.data, cache_dir=args.manifest_cache, progress=False).entries
    segments = {e.id: envelope_segments(read_audio(e.path).numpy(), SAMPLE_RATE, **params)
                for e in tqdm(entries, desc="envelope", disable=len(entries) < 50)}
    _write_version(args.out, args.version, segments, {"stage": "envelope", **params}, what="envelope segments")
    return 0
