"""The scaling study of docs/results.md: SylBoost's gain over its start and over LossPred, by SylBoost data and by
backbone pretraining compute, on held-out voices. Self-supervision only: no boundaries, envelopes or alignments
train any model here (alignments only score).

    python -m experiments.recipes.sylboost_scaling --workdir runs/study          # CPU: about two hours

1. ``synth``: a corpus whose test split speaks only the reserved held-out voice variants (8 voices; train and dev
   never do, and neither did any corpus that trained a model here);
2. ``labels``: MFCC k-means (100) of every utterance;
3. two HuBERT backbones (the tiny config, 2 layers x 128) trained by masked prediction on those labels for
   ``--weak-epochs`` and ``--strong-epochs``: two pretraining compute budgets;
4. LossPred with the strong backbone as its teacher (its own labels), on train, dev and test (boundary version 0);
5. ``syllablelm sylboost-gain`` from both backbones at each ``--hours`` (layer 2, fixed 6.25 segments per
   second of speech span, 2 iterations x ``--epochs``).

Every stage is a ``syllablelm`` process, skipped on a rerun once it finished (its marker in ``WORKDIR/logs``) with its
output whole, so an interrupted study resumes; progress goes to stdout.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def teacher_config(workdir: Path, name: str, epochs: int) -> Path:
    from experiments.stage_runner import place_run, write_config

    def edit(c):
        c["trainer"].update(max_epochs=epochs, enable_progress_bar=True)
        place_run(c, workdir / "runs" / name)
        c["data"]["init_args"].update(manifest_cache=str(workdir / "cache"))
    return write_config("teacher.yaml", workdir / "configs" / f"{name}.yaml", workdir, edit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--utterances", type=int, default=1500)
    p.add_argument("--weak-epochs", type=int, default=10)
    p.add_argument("--strong-epochs", type=int, default=40)
    p.add_argument("--hours", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--epochs", type=int, default=4, help="SylBoost epochs per iteration")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from experiments.stage_runner import Runner

    wd = args.workdir.resolve()
    wd.mkdir(parents=True, exist_ok=True)
    run = Runner(wd, total=6)
    data, runs = wd / "data" / "synth", wd / "runs"
    splits = [str(data / s) for s in ("train", "dev", "test")]
    run.run("synth", ["synth", "--out", str(data), "--num-utterances", str(args.utterances), "--speakers", "48",
                      "--split-speakers", "36,4,8", "--held-out-variants", "--seed", str(args.seed), "--workers", "2",
                      "--no-progress"], done=data / "synth.json")
    run.run("labels", ["labels", "--data", *splits, "--out", str(runs / "labels"), "--num-clusters", "100",
                       "--fit-hours", "0.5", "--manifest-cache", str(wd / "cache")],
            done=runs / "labels" / "iter_0" / "manifest.json")
    backbones = {}
    for name, epochs in (("weak", args.weak_epochs), ("strong", args.strong_epochs)):
        cfg = teacher_config(wd, f"teacher_{name}", epochs)
        ckpt = runs / f"teacher_{name}" / "checkpoints" / "last.ckpt"
        run.run(f"teacher_{name}", ["fit", "--config", str(cfg)], done=ckpt, resume=ckpt)
        backbones[name] = ckpt
    run.run("losspred", ["predict", "--config", str(wd / "configs" / "teacher_strong.yaml"), "--ckpt_path",
                         str(backbones["strong"])], done=runs / "boundaries" / "iter_0" / "manifest.json")
    run.run("gain", ["sylboost-gain", "--data", str(data), "--boundaries", str(runs / "boundaries"), "--layer", "2",
                     "--backbone", *(f"{k}={v}" for k, v in backbones.items()), "--hours", *map(str, args.hours),
                     "--epochs", str(args.epochs), "--out", str(wd / "gain")], done=wd / "gain" / "gain.json")
    log.info("timings: %s", run.timings)
    print(wd / "gain" / "gain.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
