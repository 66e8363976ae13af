"""``syllablelm evaluate``: a tokenizer's boundaries, clustering and bitrates on sets with syllable alignments.

    syllablelm evaluate --checkpoint runs/tiny/tokenizer.ckpt --data data/synth/test --tune-data data/synth/dev \
        --alignments data/synth/alignments --baselines --out runs/tiny/eval.json

- boundaries: P/R/F1/OS/R-value for both protocols at shift 0 and with the shift tuned on ``--tune-data``;
- clustering: CPur/SPur/SNMI of the units (before dedup: one unit per segment) against the syllables;
- tokens: token rate, nominal and entropy bitrate, before and after dedup;
- ``--baselines``: uniform / envelope (tuned on ``--tune-data``) / log-mel min-cut on the same data;
- ``--lm`` + ``--pairs``: sWUGGY / sBLIMP / tSC-style pair accuracy of a SpeechLM on a ZeroSpeech-layout folder;
- ``--demo WORKDIR``: the demo's own scores of a ``syllablelm demo`` work directory (each stage's boundary version,
  uniform at LossPred's rate, SylBoost's untrained start, the checks with their paired bootstraps, the example
  figure's data) into ``WORKDIR/runs/scores.json`` (:mod:`experiments.demo_scores`); its report only reads them.

LibriSpeech dev/test: convert the field's syllable references first (``syllablelm references --format
sdhubert|peng|textgrid --input ... --out REFS``, once per split into the same REFS) and pass ``--alignments REFS``
with ``--data LibriSpeech/test-clean --tune-data LibriSpeech/dev-clean``. References without syllable labels
still give boundary and token scores; clustering is then skipped (logged, ``"clustering": null``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from experiments.arguments import LIMIT, MANIFEST_CACHE, command_parser

log = logging.getLogger(__name__)


def evaluate_tokenizer(tok, test, dev, *, batch_size: int = 8) -> dict:
    """``test``/``dev``: ``(waves, refs, labels)``; returns boundary / clustering / token scores."""
    from syllablelm.audio.io import SAMPLE_RATE
    from syllablelm.evaluation.cluster_metrics import cluster_scores
    from syllablelm.evaluation.scoring import tuned_scores
    from syllablelm.evaluation.token_metrics import token_stats

    def run(waves):
        out = []
        for s in range(0, len(waves), batch_size):
            out += tok.batch(waves[s:s + batch_size], SAMPLE_RATE, deduplicate=False)
        return out

    test_out, dev_out = run(test[0]), run(dev[0])
    pred_t, units_t = [s for s, _ in test_out], [u for _, u in test_out]
    pred_d = [s for s, _ in dev_out]
    durations = [len(w) / SAMPLE_RATE for w in test[0]]
    unlabelled = sum(not label.strip() for labels in test[2] for label in labels)
    labelled = unlabelled < sum(len(labels) for labels in test[2])
    if not labelled:
        log.info("clustering skipped: the reference syllables carry no labels")
    elif unlabelled:
        log.warning("%d reference syllables have no label; they count as one syllable type in clustering",
                    unlabelled)
    return {
        "boundaries": tuned_scores(pred_t, test[1], pred_d, dev[1]),
        "clustering": cluster_scores(pred_t, units_t, test[1], test[2]) if labelled else None,
        "tokens": token_stats(units_t, durations, vocab_size=tok.vocab_size),
        "segments_hz": sum(len(p) for p in pred_t) / sum(durations),
        "num_utterances": len(pred_t),
    }


def parser() -> argparse.ArgumentParser:
    p = command_parser("evaluate", __doc__)
    p.add_argument("--checkpoint", help="a tokenizer checkpoint (syllablelm quantize): what --data and --lm score")
    p.add_argument("--data", nargs="+", help="evaluation folders with alignments (e.g. test)")
    p.add_argument("--tune-data", nargs="+", help="folders the shifts are tuned on (dev)")
    p.add_argument("--alignments", help="alignment JSON folder (syllables tier)")
    p.add_argument("--baselines", action="store_true", help="also score the feature-free baselines")
    p.add_argument("--lm", help="a SpeechLM checkpoint: score --pairs with it")
    p.add_argument("--pairs", help="a folder in the ZeroSpeech 2021 layout (lexical/, syntactic/, tsc/)")
    p.add_argument("--split", default="dev", help="the pair sets' split folder")
    p.add_argument("--no-dedup", action="store_true", help="score undeduplicated units (frame-unit baselines)")
    p.add_argument("--limit", type=int, help=LIMIT)
    p.add_argument("--device", default="cpu", help="where the tokenizer and the LM run: cpu, cuda or cuda:N")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--manifest-cache", help=MANIFEST_CACHE)
    p.add_argument("--demo", metavar="WORKDIR", help="also score a demo work directory's stages, checks and "
                   "bootstraps into WORKDIR/runs/scores.json (what its report shows); alone, with WORKDIR/runs/"
                   "evaluate.json's baselines")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)

    if bool(args.data) != bool(args.alignments) or bool(args.data) != bool(args.tune_data):
        p.error("--data, --tune-data and --alignments go together")
    tokenizer = bool(args.data) or bool(args.lm and args.pairs)
    if not tokenizer and not args.demo:
        p.error("nothing to evaluate: give --data/--tune-data/--alignments and/or --lm with --pairs, or --demo")
    if tokenizer and not args.checkpoint:
        p.error("the following arguments are required: --checkpoint (to score --data or --lm)")
    if not tokenizer:  # the demo's scores only
        return _demo_only(args.demo)
    from syllablelm.evaluation.scoring import run_baselines
    from syllablelm.runtime.fileio import write_json
    from syllablelm.units.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.checkpoint, device=args.device)
    report = {}
    if args.data:
        test = _with_labels(args.data, args.alignments, args.limit, args.manifest_cache)
        dev = _with_labels(args.tune_data, args.alignments, args.limit, args.manifest_cache)
        report["tokenizer"] = evaluate_tokenizer(tok, test, dev)
        if args.baselines:
            report["baselines"] = run_baselines(test[:2], dev[:2], rate_hz=report["tokenizer"]["segments_hz"],
                                                per="file")  # as many segments per second of audio
    if args.lm and args.pairs:
        from syllablelm.evaluation.lm_scoring import score_pairs

        report["lm_pairs"] = score_pairs(args.lm, tok, args.pairs, device=args.device, split=args.split,
                                         deduplicate=not args.no_dedup)
    _print(report)
    if args.out:
        write_json(args.out, report, indent=1)
    if args.demo:
        from experiments.demo_scores import SCORES, write_demo_scores

        scores = write_demo_scores(Path(args.demo), report.get("baselines"))
        _print_demo(scores, Path(args.demo) / SCORES)
    return 0


def _demo_only(workdir: str) -> int:
    """``--demo`` alone: the demo's scores, with the baselines its ``evaluate.json`` holds (their names decide the
    name of uniform at LossPred's rate)."""
    import json

    from experiments.demo_scores import SCORES, write_demo_scores

    try:
        baselines = json.loads((Path(workdir) / "runs/evaluate.json").read_text()).get("baselines")
    except (OSError, ValueError) as e:
        log.warning("%s/runs/evaluate.json cannot be read (%s): scoring without its baselines", workdir, e)
        baselines = None
    _print_demo(write_demo_scores(Path(workdir), baselines), Path(workdir) / SCORES)
    return 0


def _with_labels(folders, alignments, limit, cache):
    from datamodules.aligned import aligned_entries, read_waves

    entries, aligned, _ = aligned_entries(folders, alignments, limit, cache)
    return read_waves(entries), [a["syllables"][0] for a in aligned], [a["syllables"][1] for a in aligned]


def _print(report: dict) -> None:
    if "lm_pairs" in report:
        for name, res in report["lm_pairs"].items():
            print(f"LM {name:<10} {res['num_pairs']} pairs: summed {100 * res['summed']['all']['accuracy']:.1f} %, "
                  f"length-normalised {100 * res['normalised']['all']['accuracy']:.1f} % (chance 50 %)")
    if "tokenizer" not in report:
        return
    t = report["tokenizer"]
    for protocol in ("syllablelm", "sdhubert"):
        s, u = t["boundaries"][protocol], t["boundaries"][f"{protocol}_tuned"]
        print(f"{protocol:<10} F1 {100 * s['f1']:5.1f} R {100 * s['r_value']:5.1f} | tuned shift "
              f"{1000 * u['shift']:+.0f} ms: P {100 * u['precision']:5.1f} R {100 * u['recall']:5.1f} "
              f"F1 {100 * u['f1']:5.1f} R-value {100 * u['r_value']:5.1f}")
    c, k = t["clustering"], t["tokens"]
    clustering = (f"clustering (protocol {c.get('protocol', 'overlap')}) CPur {100 * c['cpur']:.1f} "
                  f"SPur {100 * c['spur']:.1f} SNMI {100 * c['snmi']:.1f}"
                  if c else "clustering skipped (unlabelled references)")
    print(f"{clustering} | "
          f"{k['token_rate']:.2f} tokens/s (authors_lm: one unit per segment), {k['dedup_token_rate']:.2f} (dedup), "
          f"{k['dedup_nominal_bps']:.0f} nominal / {k['dedup_entropy_bps']:.0f} entropy bps after dedup")
    for name, res in report.get("baselines", {}).items():
        u = res["syllablelm_tuned"]
        print(f"baseline {name:<20} F1 {100 * u['f1']:5.1f} R-value {100 * u['r_value']:5.1f} "
              f"({res['rate_hz']:.2f} Hz)")


def _print_demo(scores: dict, path: Path) -> None:
    for name, res in {**scores["stages"], **scores["baselines"]}.items():
        u = res["syllablelm_tuned"]
        print(f"demo {name:<28} F1 {100 * u['f1']:5.1f} R-value {100 * u['r_value']:5.1f} ({res['rate_hz']:.2f} Hz)")
    for m in scores["missing"]:
        print(f"demo missing: {m['what']} ({m['why']})")
    print(f"demo scores: {path}")
