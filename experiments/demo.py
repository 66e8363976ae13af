"""``syllablelm demo --workdir DIR``: the whole pipeline on a corpus it synthesises, on a laptop CPU.

    syllablelm demo --workdir runs/demo              # about 8 minutes on 2 cores (docs/results.md)
    syllablelm demo --workdir runs/demo_tiny --tiny  # about 2 minutes: checks that every stage runs (CI)

synth -> labels -> teacher (the shipped tiny teachers, or ``--from-scratch``) -> LossPred -> SylBoost (2 iterations,
from the shipped backbone: ``experiments/pretrained/README.md`` says why and how it was made) -> quantize -> units
-> SpeechLM -> evaluation (boundaries of every stage and the baselines on the held-out test split with the shift
tuned on dev, the checks with their paired bootstraps, clustering, bitrates, LM pair accuracy: ``runs/evaluate.json``
and ``runs/scores.json``) -> ``DIR/report.json`` and ``DIR/report.md`` with figures, drawn from those JSON files and
the stages' markers alone (:mod:`experiments.report`).
Every stage runs as its own ``syllablelm`` process (its wall time and peak memory are measured and kept in its
marker, ``DIR/logs/STAGE.done.json``; each attempt's log is ``DIR/logs/STAGE.attempt-K.log``) and is skipped on a
rerun once it finished with its outputs whole (:mod:`experiments.stage_state`), so an interrupted demo resumes and its
report keeps the original timings. Progress goes to stdout (``[k/N] stage: running``, a line every 15 s with the
elapsed time and the stage's latest log line, ``done in X s`` or ``skipped``). SIGTERM or Ctrl-C stops the running
stage, waits for it and exits (143 / 130). Exit status: 0 with a whole report; 1 when a stage failed (one line:
the stage, its exit status, its last error line and its log) or the report misses a section (each named in the
report, as ``missing: what (why)``, and in one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.arguments import SEED, WORKDIR, command_parser
from experiments.demo_scores import SCORES
from experiments.stage_runner import REPO, Runner, StageFailed, regenerate_test_too, write_config
from experiments.stage_state import FileOutput, StoreVersion, duration
from syllablelm.runtime.outcome import EXIT_FAILED, EXIT_OK

log = logging.getLogger(__name__)
SHIPPED = REPO / "experiments" / "pretrained"  # the tiny models this project trained (see its README)
# teacher.ckpt: HuBERT iteration 1 (MFCC k-means labels), the label model of
# teacher_iter2.ckpt: iteration 2 (k-means of teacher.ckpt's layer 2, kmeans_layer2.npy), LossPred's teacher;
# backbone/: teacher.ckpt distilled on envelope segments of the recipe corpus, SylBoost's starting point
SHIPPED_FILES = ("teacher.ckpt", "kmeans_layer2.npy", "teacher_iter2.ckpt", "backbone")


@dataclass(frozen=True)
class Size:
    utterances: int
    speakers: int
    teacher_epochs: int  # --from-scratch only
    sylboost_epochs: int  # per iteration
    kmeans: int
    units: int
    lm_steps: int
    pairs: int


# 20 speakers: 16 train voices, 2 dev and 2 test voices (12 gave one voice per held-out split); 4 SylBoost epochs
# per iteration score as 8 did (docs/results.md, "Tiny-config choices").
FULL = Size(utterances=250, speakers=20, teacher_epochs=30, sylboost_epochs=4, kmeans=256, units=64, lm_steps=300,
            pairs=40)
TINY = Size(utterances=24, speakers=6, teacher_epochs=2, sylboost_epochs=1, kmeans=32, units=16, lm_steps=20,
            pairs=6)


def parser() -> argparse.ArgumentParser:
    p = command_parser("demo", __doc__)
    p.add_argument("--workdir", required=True, type=Path, help=WORKDIR)
    p.add_argument("--tiny", action="store_true",
                   help="a minimal corpus and schedule that checks every stage runs (what CI runs; its numbers mean "
                        "nothing)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train one teacher here (MFCC k-means labels) for LossPred and SylBoost instead of the shipped "
                        "models (iteration 2 on iteration 1's layer-2 k-means, LossPred's teacher; the backbone, "
                        "SylBoost's start)")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu",
                   help="where every stage runs (gpu: one CUDA device; the report's timings are then GPU timings)")
    p.add_argument("--losspred-precision", choices=["auto", "32-true", "bf16-mixed", "16-mixed"], default="auto",
                   help="LossPred's inference precision (the official teacher runs in fp16); auto: bf16-mixed on a "
                        "GPU or a CPU with native bf16 (AMX / AVX512-BF16), else 32-true")
    p.add_argument("--seed", type=int, default=0, help=SEED + ": the corpus (byte for byte), the weights, the report")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    precision = losspred_precision(args.losspred_precision, args.accelerator)
    wd = args.workdir.resolve()
    wd.mkdir(parents=True, exist_ok=True)
    size = TINY if args.tiny else FULL
    missing = [f for f in SHIPPED_FILES if not (SHIPPED / f).exists()]
    if missing and not args.from_scratch:  # never a silently different demo (e.g. an install without them)
        raise SystemExit(f"syllablelm demo: shipped models missing from {SHIPPED}: {', '.join(missing)} "
                         "(reinstall, or run with --from-scratch to train a teacher here)")
    shipped = not args.from_scratch
    t0 = time.perf_counter()
    run = Runner(wd, total=len(STAGES) - shipped)  # the shipped teachers are copied, not trained
    try:
        teacher_ckpt, tokenizer = run_stages(run, wd, size, args, precision, shipped)
    except StageFailed as e:
        print(f"syllablelm demo: {e}", file=sys.stderr)
        return EXIT_FAILED

    from experiments.report import build_report

    print(f"report: writing {wd / 'report.md'}", flush=True)
    report = build_report(wd, tokenizer=tokenizer, timings=run.timings,
                          seconds=time.perf_counter() - t0 - run.ran_seconds, tiny=args.tiny,
                          shipped_teacher=shipped, accelerator=args.accelerator, losspred_precision=precision)
    if report["missing"]:  # one line: what is missing and why, the sections that need it counted
        causes = report.get("missing_causes") or report["missing"]
        more = len(report["missing"]) - len(causes)
        print(f"syllablelm demo: the report misses {len(report['missing'])} section(s): {'; '.join(causes)}"
              f"{f' (and {more} that need them)' if more else ''}; see {wd / 'report.md'}", file=sys.stderr)
        return EXIT_FAILED
    stages = report["total_seconds"] - (report.get("own_seconds") or 0.0)
    print(f"report: {wd / 'report.md'} (the stages took {duration(stages)} when they ran; this invocation "
          f"{duration(time.perf_counter() - t0)}, the report included)")
    return EXIT_OK


# every stage the demo runs, in order (``teacher`` only with --from-scratch)
STAGES = ("synth", "labels", "teacher", "losspred", "sylboost", "quantize", "units", "speechlm", "pairs", "evaluate")


def run_stages(run: Runner, wd: Path, size: Size, args, precision: str, shipped: bool) -> tuple[Path, Path]:
    """Run (or skip) every stage; returns the teacher checkpoint LossPred used and the tokenizer checkpoint."""
    started = time.time()  # what this invocation writes is newer
    data, runs = wd / "data" / "synth", wd / "runs"
    splits = [str(data / s) for s in ("train", "dev", "test")]
    cache = ["--manifest-cache", str(wd / "cache")]
    device = ["--device", "cuda" if args.accelerator == "gpu" else "cpu"]  # the offline (non-Lightning) stages

    run.run("synth", ["synth", "--out", str(data), "--num-utterances", str(size.utterances), "--speakers",
                      str(size.speakers), "--seed", str(args.seed), "--no-progress"], done=data / "synth.json")
    teacher_ckpt = runs / "teacher" / "checkpoints" / "last.ckpt"
    labels = ["labels", "--data", *splits, "--out", str(runs / "labels"), *cache, *device]
    if shipped:  # the paper's arrangement: LossPred's teacher predicts k-means labels of another model's layer
        labels += ["--features", "teacher", "--checkpoint", str(SHIPPED / "teacher.ckpt"), "--layer", "2",
                   "--kmeans", str(SHIPPED / "kmeans_layer2.npy")]
    else:
        labels += ["--num-clusters", "100", "--fit-hours", "0.3"]
    run.run("labels", labels, done=StoreVersion(runs / "labels", 0, "labels"))
    # progress bars on: they go to each stage's log, whose last line the runner shows as the stage's progress
    teacher_cfg = write_config("teacher.yaml", wd / "configs" / "teacher.yaml", wd, lambda c: (
        c["trainer"].update(max_epochs=size.teacher_epochs, enable_progress_bar=True, accelerator=args.accelerator),
        c["data"]["init_args"].update(test_dirs=[splits[2]], predict_dirs=splits, manifest_cache=str(wd / "cache"))))
    if shipped:
        teacher_ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHIPPED / "teacher_iter2.ckpt", teacher_ckpt)
    else:
        run.run("teacher", ["fit", "--config", str(teacher_cfg)], done=teacher_ckpt, resume=teacher_ckpt)
    boundaries = runs / "boundaries"
    run.run("losspred", ["predict", "--config", str(teacher_cfg), "--ckpt_path", str(teacher_ckpt),
                         f"--trainer.precision={precision}"], done=StoreVersion(boundaries, 0, "boundary"))
    sylboost_cfg = write_config("sylboost.yaml", wd / "configs" / "sylboost.yaml", wd, lambda c: (
        c["trainer"].update(max_epochs=2 * size.sylboost_epochs, enable_progress_bar=True,
                            check_val_every_n_epoch=max(1, size.sylboost_epochs // 2), accelerator=args.accelerator),
        c["model"]["init_args"].update(epochs_per_iteration=size.sylboost_epochs,
                                       init_from=str(SHIPPED / "backbone" if shipped else teacher_ckpt)),
        c["data"]["init_args"].update(manifest_cache=str(wd / "cache")),
        regenerate_test_too(c)))
    sylboost_ckpt = runs / "sylboost" / "checkpoints" / "last.ckpt"
    run.run("sylboost", ["fit", "--config", str(sylboost_cfg)], resume=sylboost_ckpt,
            done=[StoreVersion(boundaries, 1, "boundary"), StoreVersion(boundaries, 2, "boundary"), sylboost_ckpt])
    tokenizer = runs / "tokenizer.ckpt"
    run.run("quantize", ["quantize", "--checkpoint", str(sylboost_ckpt), "--data", splits[0], "--k",
                         str(size.kmeans), "--k-merged", str(size.units), "--hours", "1", "--out", str(tokenizer),
                         *cache, *device], done=tokenizer)
    run.run("units", ["units", "--checkpoint", str(tokenizer), "--data", *splits[:2], "--out", str(runs / "units"),
                      *cache, *device, "--precision", "fp32"],  # as quantize and evaluate, on a GPU too
            done=StoreVersion(runs / "units", 0, "units"))
    lm_cfg = write_config("speechlm.yaml", wd / "configs" / "speechlm.yaml", wd, lambda c: (
        c["trainer"].update(max_steps=size.lm_steps, enable_progress_bar=True, check_val_every_n_epoch=1,
                            accelerator=args.accelerator),
        c["model"]["init_args"]["network"].update(vocab_size=size.units),
        c["model"]["init_args"].update(warmup=size.lm_steps // 10, hold=size.lm_steps * 4 // 10,
                                       decay=size.lm_steps // 2)))
    lm = runs / "speechlm" / "checkpoints" / "last.ckpt"
    run.run("speechlm", ["fit", "--config", str(lm_cfg)], done=lm, resume=lm)
    run.run("pairs", ["pairs", "--out", str(wd / "data" / "pairs"), "--num-pairs", str(size.pairs), "--seed",
                      str(args.seed), "--vocab-corpus", str(data)], done=wd / "data" / "pairs" / "pairs.json")
    # evaluate also writes the demo's own scores (runs/scores.json: each stage's boundaries, SylBoost's start, the
    # checks and their bootstraps, the example figure's data), which the report only reads
    run.run("evaluate", ["evaluate", "--checkpoint", str(tokenizer), "--data", splits[2], "--tune-data", splits[1],
                         "--alignments", str(data / "alignments"), "--baselines", "--lm", str(lm), "--pairs",
                         str(wd / "data" / "pairs"), "--out", str(runs / "evaluate.json"), "--demo", str(wd),
                         *cache, *device],
            done=[runs / "evaluate.json", DemoScores(wd / SCORES, started)])
    return teacher_ckpt, tokenizer


@dataclass(frozen=True)
class DemoScores(FileOutput):
    """``runs/scores.json`` as an output of the evaluate stage. One written before this invocation (``started``,
    ``time.time()``) is whole only when it parses and names no missing section (what was missing then may be
    there now: evaluate runs again); one written since only has to parse (a section it names missing goes to the
    report, which says why). Like every stage, it is not made again because a stage before it ran again (the
    demo's stages are deterministic: :mod:`experiments.stage_state`)."""

    started: float = 0.0

    def problem(self) -> str | None:
        problem = super().problem()
        if problem is not None or Path(self.path).stat().st_mtime >= self.started:
            return problem
        missing = json.loads(Path(self.path).read_text()).get("missing")
        return f"{self.path} names {len(missing)} missing section(s)" if missing else None


def native_bf16(accelerator: str) -> bool:
    """Whether bf16 matmuls run natively: a CUDA GPU that supports them, or a CPU with AMX or AVX512-BF16
    (elsewhere CPU bf16 is emulated and slower than float32)."""
    import torch

    if accelerator == "gpu":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # private torch helpers, hence the getattr: a torch without them gets float32
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)


def losspred_precision(choice: str, accelerator: str) -> str:
    """The Lightning precision LossPred's ``predict`` runs in (``auto``: bf16-mixed where :func:`native_bf16`)."""
    if choice != "auto":
        return choice
    return "bf16-mixed" if native_bf16(accelerator) else "32-true"
