"""``syllablelm sylboost-gain``: what SylBoost's own iterations add, on held-out voices, as a function of its data
and of the backbone it starts from.

    syllablelm sylboost-gain --data runs/study/corpus --boundaries runs/study/losspred --layer 2 \\
        --backbone weak=runs/study/teacher_epoch10.ckpt strong=runs/study/teacher.ckpt --hours 0.5 1 2 \\
        --epochs 4 --out runs/study/gain

For every backbone and every ``--hours``, one SylBoost run (the tiny config: 2 iterations of ``--epochs``,
regeneration after each) starts from that backbone and from LossPred's boundaries (``--boundaries``, version 0,
covering train, dev and test; copied so that each run keeps its own later versions), on a seeded subset of about
that many hours of the training split (``data.train_hours``). Every system is scored on the test split (protocol
"syllablelm", 50 ms, each at the shift tuned on dev): LossPred; SylBoost's start (the backbone's own features cut
by the same segmenter, layer and target rate); iterations 1 and 2; uniform segments at LossPred's rate. Each
comparison gets a paired bootstrap that resamples voices, then utterances within them
(:mod:`syllablelm.evaluation.significance`): the difference, its 95 % interval, how often the first is not better.
Writes ``OUT/gain.json``, ``OUT/gain.md`` and ``OUT/gain.png``; finished runs are skipped on a rerun (their markers
and logs are in ``OUT/logs``; their training time is the one recorded when they ran).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from experiments.arguments import SEED, command_parser

log = logging.getLogger(__name__)
CHECKS = (("iteration 1", "LossPred"), ("iteration 1", "start"), ("iteration 2", "iteration 1"),
          ("iteration 2", "LossPred"), ("LossPred", "uniform at LossPred's rate"))


def sylboost_config(args, name: str, backbone: str, hours: float, store: Path) -> Path:
    from experiments.stage_runner import place_run, regenerate_test_too, write_config

    data, root = args.data.resolve(), args.out.resolve() / "runs" / name

    def edit(c):
        c["trainer"].update(max_epochs=2 * args.epochs, enable_progress_bar=True,
                            check_val_every_n_epoch=args.epochs)
        place_run(c, root)
        seg = {"rate_hz": args.rate} if args.mode == "rate" else {"calibrate_to_hz": args.rate}
        c["model"]["init_args"].update(init_from=str(Path(backbone).resolve()), feature_layer=args.layer,
                                       epochs_per_iteration=args.epochs,
                                       segmenter={**seg, "min_len": 3, "max_len": 50, "vad_trim": args.vad_trim})
        c["data"]["init_args"].update(
            train_dirs=[str(data / "train")], val_dirs=[str(data / "dev")], test_dirs=[str(data / "test")],
            alignment_dir=str(data / "alignments"), boundary_dir=str(store), train_hours=hours, seed=args.seed,
            manifest_cache=str(args.out.resolve() / "cache"))
        regenerate_test_too(c)
    return write_config("sylboost.yaml", args.out.resolve() / "configs" / f"{name}.yaml", args.out.resolve(), edit)


def start_segments(checkpoint: Path, splits) -> tuple[list, list]:
    """The backbone a SylBoost checkpoint started from (its frozen teacher), cut by that run's segmenter."""
    from lightning_modules.sylboost import SylBoostModule

    module = SylBoostModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    encoder = module.teacher.eval()
    (test_waves, _, _), (dev_waves, _, _) = splits
    return module.boundary_segmenter().segments_calibrated(encoder.utterance_features(test_waves), test_waves,
                                                           encoder.utterance_features(dev_waves), dev_waves)


def score_run(systems: dict, splits, n_resamples: int) -> dict:
    """``systems``: name -> (test segments, dev segments). Scores, rates and the paired two-level bootstraps of
    :data:`CHECKS`."""
    from syllablelm.audio.io import SAMPLE_RATE
    from syllablelm.evaluation.scoring import tuned_scores
    from syllablelm.evaluation.significance import paired_bootstrap, voice_of

    (test_waves, test_refs, test_ids), (_, dev_refs, _) = splits
    seconds = sum(len(w) for w in test_waves) / SAMPLE_RATE
    scores = {}
    for name, (pt, pd) in systems.items():
        res = tuned_scores(pt, test_refs, pd, dev_refs)["syllablelm_tuned"]
        scores[name] = {**res, "rate_hz": sum(map(len, pt)) / seconds}
    voices = [voice_of(u) for u in test_ids]
    checks = {}
    for a, b in CHECKS:
        if a in systems and b in systems:
            checks[f"{a} - {b}"] = paired_bootstrap(
                systems[a][0], systems[b][0], test_refs, shift_a=scores[a]["shift"], shift_b=scores[b]["shift"],
                groups=voices, n_resamples=n_resamples)
    return {"scores": scores, "checks": checks, "test_voices": len(set(voices)), "test_utterances": len(voices)}


def uniform_at(rate_hz: float, splits) -> tuple[list, list]:
    """Uniform segments on each split, as many as a system whose achieved rate is ``rate_hz`` places."""
    from syllablelm.audio.io import SAMPLE_RATE
    from syllablelm.boundaries.baselines import uniform_at_audio_rate

    test, dev = (uniform_at_audio_rate(waves, SAMPLE_RATE, rate_hz) for waves, _, _ in splits)
    return test, dev


def stored(store, version: int, splits) -> tuple[list, list] | None:
    if not store.is_complete(version):
        return None
    segs = store.load(version)
    return tuple([segs[u] for u in ids] for _, _, ids in splits)


def markdown(result: dict) -> str:
    lines = ["# SylBoost's gain over its start and over LossPred", "",
             f"Test split: {result['test_voices']} held-out voices, {result['test_utterances']} utterances; protocol "
             "\"syllablelm\", 50 ms, shift tuned on dev; F1 / R-value (rate Hz). Intervals: paired bootstrap over "
             "voices and the utterances within them, 95 %.", "",
             "| backbone | hours | LossPred | start | iteration 1 | iteration 2 | uniform at LossPred's rate |",
             "|---|---|---|---|---|---|---|"]
    cell = lambda s: f"{100 * s['f1']:.1f} / {100 * s['r_value']:.1f} ({s['rate_hz']:.2f})"  # noqa: E731
    for run in result["runs"]:
        sc = run["scores"]
        lines.append(f"| {run['backbone']} | {run['hours']:g} | " + " | ".join(
            cell(sc[k]) if k in sc else "—" for k in ("LossPred", "start", "iteration 1", "iteration 2",
                                                      "uniform at LossPred's rate")) + " |")
    lines += ["", "| backbone | hours | check | F1 difference [95 %] | R-value difference [95 %] |",
              "|---|---|---|---|---|"]
    for run in result["runs"]:
        for name, c in run["checks"].items():
            f, r = c["f1"], c["r_value"]
            lines.append(f"| {run['backbone']} | {run['hours']:g} | {name} | {100 * f['difference']:+.1f} "
                         f"[{100 * f['low']:+.1f}, {100 * f['high']:+.1f}] | {100 * r['difference']:+.1f} "
                         f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] |")
    return "\n".join(lines + ["", "![gain](gain.png)", ""])


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from syllablelm.evaluation.plots import save_png

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, check in zip(axes, ("iteration 1 - start", "iteration 1 - LossPred")):
        for backbone in dict.fromkeys(r["backbone"] for r in result["runs"]):
            runs = [r for r in result["runs"] if r["backbone"] == backbone and check in r["checks"]]
            hours = [r["hours"] for r in runs]
            diff = [100 * r["checks"][check]["f1"]["difference"] for r in runs]
            err = [[100 * (r["checks"][check]["f1"]["difference"] - r["checks"][check]["f1"]["low"]) for r in runs],
                   [100 * (r["checks"][check]["f1"]["high"] - r["checks"][check]["f1"]["difference"]) for r in runs]]
            ax.errorbar(hours, diff, yerr=err, marker="o", capsize=3, label=backbone)
        ax.axhline(0, color="gray", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("SylBoost training data (hours)")
        ax.set_title(f"F1: {check}", fontsize=10)
    axes[0].set_ylabel("points (95 % interval)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def parser() -> argparse.ArgumentParser:
    p = command_parser("sylboost-gain", __doc__)
    p.add_argument("--data", required=True, type=Path, help="a corpus folder: train/, dev/, test/, alignments/")
    p.add_argument("--boundaries", required=True, type=Path, help="LossPred's boundary store (version 0)")
    p.add_argument("--backbone", nargs="+", required=True, help="NAME=CHECKPOINT, one per backbone")
    p.add_argument("--layer", type=int, required=True, help="feature layer (HF numbering)")
    p.add_argument("--hours", type=float, nargs="+", default=[0.5], help="SylBoost training data sizes")
    p.add_argument("--epochs", type=int, default=4, help="epochs per SylBoost iteration (2 iterations)")
    p.add_argument("--rate", type=float, default=6.25, help="segments per second (mode rate) or δ's target rate")
    p.add_argument("--mode", choices=("rate", "delta"), default="rate",
                   help="rate: a fixed round(rate x seconds) segments per utterance; delta: the authors' δ search, "
                        "δ calibrated to --rate")
    p.add_argument("--vad-trim", action=argparse.BooleanOptionalAction, default=True,
                   help="cut only each utterance's VAD speech span (segmenter.vad_trim)")
    p.add_argument("--resamples", type=int, default=2000, help="paired-bootstrap resamples per comparison")
    p.add_argument("--seed", type=int, default=0, help=SEED + " (SylBoost runs and bootstraps)")
    p.add_argument("--out", required=True, type=Path, help="the folder for gain.md, gain.json, gain.png and the runs")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    backbones = dict(item.split("=", 1) for item in args.backbone)
    if any(not Path(v).exists() for v in backbones.values()):
        raise SystemExit(f"syllablelm sylboost-gain: missing backbone(s): {backbones}")

    from datamodules.aligned import load_split
    from datamodules.boundary_store import BoundaryStore
    from experiments.stage_runner import Runner
    from syllablelm.audio.io import SAMPLE_RATE
    from syllablelm.runtime.fileio import write_json, write_text

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out, total=2 * len(backbones) * len(args.hours))
    cache = str(out / "cache")
    splits = [load_split([str(args.data / s)], str(args.data / "alignments"), cache=cache) for s in ("test", "dev")]
    losspred = stored(BoundaryStore(args.boundaries), 0, splits)
    if losspred is None:
        raise SystemExit(f"syllablelm sylboost-gain: {args.boundaries} has no complete version 0 (LossPred's)")
    results = []
    for name, backbone in backbones.items():
        for hours in args.hours:
            tag = f"{name}_{hours:g}h"
            store = out / "stores" / tag
            run.run(f"copy_{tag}", ["store-copy", "--store", str(args.boundaries.resolve()), "--version", "0",
                                    "--out", str(store)], done=store / "iter_0" / "manifest.json")
            cfg = sylboost_config(args, tag, backbone, hours, store)
            last = out / "runs" / tag / "checkpoints" / "last.ckpt"
            run.run(f"sylboost_{tag}", ["fit", "--config", str(cfg)], done=[store / "iter_1", store / "iter_2", last],
                    resume=last)
            boundaries = BoundaryStore(store)
            systems = {"LossPred": losspred,
                       "start": start_segments(out / "runs" / tag / "checkpoints" / "last.ckpt", splits),
                       "iteration 1": stored(boundaries, 1, splits), "iteration 2": stored(boundaries, 2, splits)}
            lp_rate = sum(map(len, losspred[0])) / (sum(len(w) for w in splits[0][0]) / SAMPLE_RATE)
            systems["uniform at LossPred's rate"] = uniform_at(lp_rate, splits)
            res = score_run({k: v for k, v in systems.items() if v is not None}, splits, args.resamples)
            res.update(backbone=name, checkpoint=str(backbone), hours=hours,
                       train_seconds=run.timings.get(f"sylboost_{tag}", {}).get("seconds"))
            results.append(res)
            log.info("%s: %s", tag, {k: round(100 * v["f1"], 1) for k, v in res["scores"].items()})
    result = {"runs": results, "test_voices": results[0]["test_voices"],
              "test_utterances": results[0]["test_utterances"], "args": {k: str(v) for k, v in vars(args).items()}}
    write_json(out / "gain.json", result, indent=1)
    write_text(out / "gain.md", markdown(result))
    figure(result, out / "gain.png")
    print(f"{out / 'gain.md'}")
    return 0
