"""``syllablelm ceiling``: how good can SylBoost's min-cut be, given a backbone and a boundary version?

    syllablelm ceiling --checkpoint runs/demo/runs/teacher/checkpoints/last.ckpt --layer 2 \\
        --boundaries runs/demo/runs/boundaries --version 0 --data data/synth/test --tune-data data/synth/dev \\
        --alignments data/synth/alignments --rate 6.25

Scores (protocol "syllablelm", shift tuned on the dev folders, both protocols in ``--out``), each at every
``--rate``:

- ``stored``: the boundary version itself (e.g. LossPred's, version 0);
- ``features``: the SSE min-cut on the backbone's own features (SylBoost before any training);
- ``imitation``: the min-cut on SylBoost's *targets* built from the stored boundaries (the teacher's features
  mean-pooled over the middle third of each segment) — what a student that reproduced its targets exactly would
  give; SylBoost beats the stored boundaries only by generalising beyond them;
- ``oracle``: the same targets built from the reference syllables — the best any SylBoost target can do at
  this rate with this segmenter.

``--student-version K`` also scores how well SylBoost imitated: boundary version K (e.g. 1, SylBoost's iteration 1)
against the stored version as the reference (protocol "syllablelm", 50 ms, no shift), on ``--data`` and
``--tune-data``. A student that reproduced its targets would score near the imitation row's agreement (1.0 at
best; docs/results.md has the demo's).
"""
from __future__ import annotations

import argparse
import logging

from experiments.arguments import LIMIT, MANIFEST_CACHE, command_parser

log = logging.getLogger(__name__)


def ceiling_scores(encoder, stored: dict, test, dev, rates, where: str = "the boundary version",
                   vad_trim: bool = False, mode: str = "rate") -> dict:
    """``test``/``dev`` are ``(waves, refs, ids)``; ``stored`` maps ids to ``(n, 2)`` seconds (``where`` names it
    in errors); ``vad_trim`` cuts only each utterance's speech span, as SylBoost's ``segmenter.vad_trim``;
    ``mode`` "rate" cuts a fixed count per second, "delta" runs the δ search calibrated to each rate on dev."""
    from syllablelm.audio.frames import seconds_to_frames
    from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig
    from syllablelm.evaluation.scoring import tuned_scores
    from syllablelm.units.quantizer import segment_mean_targets

    def targets(feats, segments):
        return [segment_mean_targets(f, seconds_to_frames(s), len(f)) for f, s in zip(feats, segments)]

    _require(stored, test, dev, where)
    ft, fd = encoder.utterance_features(test[0]), encoder.utterance_features(dev[0])
    st, sd = [stored[i] for i in test[2]], [stored[i] for i in dev[2]]
    out = {"stored": tuned_scores(st, test[1], sd, dev[1])}
    for rate in rates:
        for name, (tt, td) in {"features": (ft, fd), "imitation": (targets(ft, st), targets(fd, sd)),
                               "oracle": (targets(ft, test[1]), targets(fd, dev[1]))}.items():
            seg = Segmenter(SegmenterConfig.at_rate(rate, mode, vad_trim=vad_trim))
            pt, pd = seg.segments_calibrated(tt, test[0], td, dev[0])
            out[f"{name}_{rate:g}hz"] = tuned_scores(pt, test[1], pd, dev[1])
    return out


def _require(stored: dict, test, dev, where: str) -> None:
    missing = [i for i in (*test[2], *dev[2]) if i not in stored]
    if missing:
        raise ValueError(f"{where} has no segments for {len(missing)} utterance(s), e.g. {missing[0]}")


def agreement(student: dict, stored: dict, test, dev, where: str = "the student's version") -> dict:
    """Boundary scores of ``student`` segments with ``stored`` ones as the reference, per split (no shift)."""
    from syllablelm.evaluation.boundary_metrics import boundary_scores

    _require(student, test, dev, where)
    return {name: boundary_scores([student[i] for i in split[2]], [stored[i] for i in split[2]], protocol="syllablelm")
            for name, split in (("data", test), ("tune_data", dev))}


def parser() -> argparse.ArgumentParser:
    p = command_parser("ceiling", __doc__)
    p.add_argument("--checkpoint", required=True, help="the SylBoost backbone (teacher .ckpt, fairseq .pt, HF dir)")
    p.add_argument("--layer", type=int, required=True, help="feature layer (HF numbering)")
    p.add_argument("--boundaries", required=True, help="boundary store root")
    p.add_argument("--version", type=int, default=0, help="the boundary version the student imitates")
    p.add_argument("--data", nargs="+", required=True, help="scored folders (with alignments)")
    p.add_argument("--tune-data", nargs="+", required=True, help="folders the shift is tuned on")
    p.add_argument("--alignments", required=True, help="alignment JSON folder (searched recursively)")
    p.add_argument("--rate", type=float, nargs="+", default=[6.25], help="boundary rates to cut at (Hz)")
    p.add_argument("--vad-trim", action="store_true", help="cut only the VAD speech span (segmenter.vad_trim)")
    p.add_argument("--mode", choices=("rate", "delta"), default="delta",
                   help="delta (the authors'): the δ rate search, δ calibrated to each --rate on --tune-data; "
                   "rate: a fixed round(rate x seconds) segments per utterance")
    p.add_argument("--student-version", type=int,
                   help="also score this boundary version (SylBoost's) against --version: how well it imitated")
    p.add_argument("--limit", type=int, help=LIMIT)
    p.add_argument("--out", help="write every score as JSON here (they are printed either way)")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from datamodules.aligned import load_split
    from datamodules.boundary_store import BoundaryStore
    from syllablelm.checkpoints import load_encoder
    from syllablelm.runtime.fileio import write_json

    encoder = load_encoder(args.checkpoint, layer=args.layer).eval()
    stored = BoundaryStore(args.boundaries).load(args.version)
    test = load_split(args.data, args.alignments, args.limit, args.manifest_cache)
    dev = load_split(args.tune_data, args.alignments, args.limit, args.manifest_cache)
    report = ceiling_scores(encoder, stored, test, dev, args.rate,
                            where=f"boundary version {args.version} of {args.boundaries}", vad_trim=args.vad_trim,
                            mode=args.mode)
    if args.student_version is not None:
        store = BoundaryStore(args.boundaries)
        report[f"agreement_v{args.student_version}"] = agreement(
            store.load(args.student_version), stored, test, dev,
            where=f"boundary version {args.student_version} of {args.boundaries}")
    for name, res in report.items():
        if name.startswith("agreement"):
            print(f"{name} with version {args.version}: " + ", ".join(
                f"{split} P {100 * r['precision']:.1f} R {100 * r['recall']:.1f} F1 {100 * r['f1']:.1f}"
                for split, r in res.items()))
            continue
        t = res["syllablelm_tuned"]
        print(f"{name:<22} P {100 * t['precision']:5.1f}  R {100 * t['recall']:5.1f}  F1 {100 * t['f1']:5.1f}  "
              f"R-value {100 * t['r_value']:5.1f}  (shift {1000 * t['shift']:+.0f} ms)")
    if args.out:
        write_json(args.out, report, indent=1)
    return 0
