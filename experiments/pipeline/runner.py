"""``syllablelm pipeline --config experiments/configs/librispeech/pipeline.yaml``: every stage of the paper, in order.

    syllablelm pipeline --config experiments/configs/librispeech/pipeline.yaml --dry-run   # check, train nothing
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m experiments.cli pipeline --config experiments/configs/librispeech/pipeline.yaml
    sbatch experiments/slurm/pipeline.sbatch                                                # SLURM, auto-requeue

One process per device runs the whole pipeline: launch it with ``torchrun`` or ``srun`` (or by hand, one process
per node with ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and ``--nodes``). The pipeline opens the process group
once; every Lightning stage (``fit``/``predict``/...) runs in the same processes through LightningCLI and joins
that group, and the offline commands (``labels``, ``units``) get this process's ``--rank/--world-size``.
Commands marked ``ranks: zero`` (``quantize``) run on global rank 0 while the others wait. All ranks meet at a
barrier after every stage.

A stage is skipped when it finished before and its output is whole: its marker ``STATE_DIR/<stage>.done.json``
exists and its ``complete`` path, if it names one, is whole (a store version's ``iter_K/manifest.json``: complete,
its shards matching their recorded sizes and checksums; another file: present, not empty), or, without a marker,
when that path is a whole store version; :mod:`experiments.stage_state` has the marker format, the rule and why
other outputs alone are not enough. Each attempt's log (this rank 0's project logs) is
``STATE_DIR/<stage>.attempt-K.log``; markers of older runs (``seconds``/``argv``/``world_size`` only) still count.
A stage is resumed when it is partial: ``fit`` from the newest of the stage's
``last.ckpt`` and Lightning's SLURM ``hpc_ckpt_*.ckpt``; ``labels``/``units`` keep the shards already written;
LossPred's ``predict`` reuses the partial files its ``BoundaryWriter`` flushed; ``quantize`` the pooled-feature
parts it saved (outputs are written atomically, so a stopped run leaves nothing half-written). On SLURM,
Lightning requeues a job that receives ``SIGUSR1`` during a Lightning stage (it saves an
``hpc_ckpt`` first); during an offline stage the pipeline requeues it itself. The rerun picks up where it stopped.

Before anything runs, every rank checks that the stores' directories (labels, boundaries, units, checkpoints) are
one shared filesystem. ``--dry-run`` validates the config: every Lightning config parses against the classes it
names, every input path exists (or is made by an earlier stage) in the right format (audio folders, fairseq
``.pt``, HF model folders, Lightning ``.ckpt``, k-means files), and the stages agree with each other.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from experiments.arguments import command_parser
from experiments.pipeline.launch import (
    Launch,
    PipelineError,
    barrier,
    check_shared,
    detect_launch,
    gather,
    init_distributed,
    shutdown_distributed,
)
from experiments.pipeline.stage_configs import fit_resume_checkpoint, flag_values
from experiments.stage_state import Output, StageState, as_output, outputs_problem
from syllablelm.runtime.outcome import EXIT_REQUEUED

log = logging.getLogger(__name__)

LIGHTNING = ("fit", "validate", "test", "predict")
OFFLINE_SHARDED = ("labels", "units")  # commands that take --rank/--world-size
OFFLINE = (*OFFLINE_SHARDED, "quantize", "evaluate", "baselines", "synth", "pairs", "tokenize", "store-copy",
           "references", "import-sylboost")
REQUEUED = EXIT_REQUEUED  # exit status of a process that asked SLURM to requeue the job (syllablelm.runtime.outcome)


# ---------------------------------------------------------------------------------------------- the config
@dataclass
class Stage:
    name: str
    command: str
    config: str | None = None  # a LightningCLI config (Lightning commands)
    args: list[str] = field(default_factory=list)  # more command-line arguments
    complete: str | None = None  # a file whose existence means "done"
    ranks: str = "all"  # "all" or "zero"
    enabled: bool = True

    @property
    def lightning(self) -> bool:
        return self.command in LIGHTNING


@dataclass
class Pipeline:
    stages: list[Stage]
    state_dir: Path
    source: Path
    lightning_args: list[str] = field(default_factory=list)  # added to every Lightning stage

    @property
    def state(self) -> StageState:
        return StageState(self.state_dir)

    def marker(self, stage: Stage) -> Path:
        return self.state.marker_path(stage.name)

    def outputs(self, stage: Stage) -> list[Output]:
        return [as_output(stage.complete)] if stage.complete else []

    def is_complete(self, stage: Stage) -> bool:
        """The skip rule (:meth:`experiments.stage_state.StageState.check`): a marker and whole outputs."""
        return self.state.check(stage.name, self.outputs(stage)).skip


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot read the pipeline config: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise PipelineError(f"{path}: a pipeline config needs a non-empty 'stages' list")
    unknown = set(raw) - {"stages", "state_dir", "lightning_args"}
    if unknown:
        raise PipelineError(f"{path}: unknown top-level keys {sorted(unknown)}")
    stages, names = [], set()
    for i, item in enumerate(raw["stages"]):
        where = f"{path}: stage {i + 1}"
        if not isinstance(item, dict):
            raise PipelineError(f"{where}: must be a mapping")
        try:
            stage = Stage(**item)
        except TypeError as e:
            raise PipelineError(f"{where}: {e}") from e
        where = f"{path}: stage {stage.name!r}"
        if stage.name in names:
            raise PipelineError(f"{where}: the name is used twice")
        names.add(stage.name)
        if stage.command not in LIGHTNING + OFFLINE:
            raise PipelineError(f"{where}: unknown command {stage.command!r} (one of {', '.join(LIGHTNING + OFFLINE)})")
        if stage.lightning and not stage.config:
            raise PipelineError(f"{where}: a Lightning stage ({stage.command}) needs a 'config'")
        if not stage.lightning and stage.config:
            raise PipelineError(f"{where}: 'config' is for Lightning stages; give {stage.command}'s options in 'args'")
        if stage.ranks not in ("all", "zero"):
            raise PipelineError(f"{where}: ranks must be 'all' or 'zero', got {stage.ranks!r}")
        stage.args = [str(a) for a in stage.args]
        missing = [c for c in ([stage.config] if stage.lightning else []) + flag_values(stage.args, "--config")
                   if not Path(c).is_file()]
        if missing:
            raise PipelineError(f"{where}: config {missing[0]} does not exist (relative paths are read from the "
                                f"working directory {Path.cwd()}: run from the repository root, or link its "
                                "experiments/ there)")
        stages.append(stage)
    return Pipeline(stages=stages, state_dir=Path(raw.get("state_dir", "runs/pipeline")), source=path,
                    lightning_args=[str(a) for a in raw.get("lightning_args", [])])


# -------------------------------------------------------------------------------------------- running
def stage_argv(stage: Stage, pipe: Pipeline, launch: Launch, extra: list[str]) -> list[str]:
    if stage.lightning:
        argv = [stage.command, "--config", stage.config, *stage.args, *pipe.lightning_args, *launch.trainer_args(),
                *extra]
        if stage.command == "fit":
            ckpt = fit_resume_checkpoint(stage)
            if ckpt is not None:
                argv += ["--ckpt_path", str(ckpt)]
        return argv
    argv = [stage.command, *stage.args]
    if stage.command in OFFLINE_SHARDED:
        argv += ["--rank", str(launch.rank), "--world-size", str(launch.world_size)]
    if stage.command in (*OFFLINE_SHARDED, "quantize") and "--device" not in argv:
        import torch

        argv += ["--device", f"cuda:{launch.local_rank}" if torch.cuda.is_available() else "cpu"]
    return argv


def _requeue_on_sigusr1(launch: Launch) -> None:
    """SLURM's warning signal during an offline stage: rank 0 requeues the job, every rank stops cleanly
    (outputs are written atomically; the rerun resumes). Lightning installs its own handler during its stages."""
    if launch.kind != "slurm" or not hasattr(signal, "SIGUSR1"):
        return

    def handler(signum, frame):
        if launch.rank == 0:
            job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
            job += f"_{os.environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in os.environ else ""
            log.warning("SIGUSR1: requeueing SLURM job %s", job)
            subprocess.run(["scontrol", "requeue", job], check=False)
        raise SystemExit(REQUEUED)

    signal.signal(signal.SIGUSR1, handler)


def run_stage(stage: Stage, argv: list[str], launch: Launch) -> None:
    from experiments.cli import lightning_cli, run_command

    if stage.lightning:
        saved = sys.argv
        sys.argv = [saved[0], *argv]  # what LightningCLI records as this run's command line
        try:
            lightning_cli(argv)
        finally:
            sys.argv = saved
        return
    if stage.ranks == "zero" and launch.rank != 0:
        return
    status = run_command(argv[0], argv[1:])
    if status not in (0, None):
        raise PipelineError(f"stage {stage.name!r}: `syllablelm {' '.join(argv)}` exited with status {status}")


def _not_made(stage: Stage, pipe: Pipeline, decision) -> str | None:
    """Rank 0, after a stage ran: None when its output is whole, else the error every rank stops with."""
    problem = outputs_problem(pipe.outputs(stage))
    if problem is None:
        return None
    hint = ""
    if stage.command == "fit" and decision is not None and decision.marker is not None:
        hint = (" (it had finished before, so it resumed from its final checkpoint and redid nothing: move that "
                "checkpoint aside to train the stage again)")
    return (f"stage {stage.name!r} finished but its output is not whole: {problem}{hint}; check the stage's "
            "'complete' path against its output")


@contextlib.contextmanager
def _logging_to(path: Path | None):
    """Copy the project's log records (and Lightning's) into ``path`` while a stage runs (nothing when None)."""
    if path is None:
        yield
        return
    from experiments.cli import PROJECT_LOGGERS

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in (*PROJECT_LOGGERS, "lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    except BaseException as e:
        log.error("stage stopped: %s: %s", type(e).__name__, e)
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def select(stages: list[Stage], only: list[str] | None, start: str | None) -> list[Stage]:
    names = [s.name for s in stages]
    for n in (only or []) + ([start] if start else []):
        if n not in names:
            raise PipelineError(f"no stage {n!r}; stages: {', '.join(names)}")
    chosen = [s for s in stages if s.enabled or (only and s.name in only)]
    if start:
        chosen = [s for s in chosen if names.index(s.name) >= names.index(start)]
    if only:
        chosen = [s for s in chosen if s.name in only]
    return chosen


def parser() -> argparse.ArgumentParser:
    p = command_parser("pipeline", __doc__)
    p.add_argument("--config", required=True, help="a pipeline config (experiments/configs/*/pipeline.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate configs, paths and formats; train nothing")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages (disabled ones included)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage (earlier ones are assumed done)")
    p.add_argument("--nodes", type=int, help="nodes, when processes are started by hand with NODE_RANK")
    p.add_argument("--devices", type=int, help="processes per node with NODE_RANK (1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a LightningCLI override for every Lightning stage, e.g. --set trainer.accelerator=cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except PipelineError as e:
        log.error("%s", e)
        print(f"syllablelm pipeline: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from experiments.pipeline.checks import shared_dirs, validate  # reads audio headers: torch

    pipe = load_pipeline(args.config)
    stages = select(pipe.stages, args.only, args.start)
    extra = [f"--{kv}" for kv in args.sets]
    launch = detect_launch(args.nodes, args.devices)
    init_distributed(launch)
    # the same checks start every run: rank 0 looks, every rank stops on a problem
    problems = gather(validate(pipe, stages, extra, launch, dry_run=args.dry_run) if launch.rank == 0 else None)[0]
    if problems:
        raise PipelineError(f"{len(problems)} problem(s):\n" + "\n".join(f"  - {m}" for m in problems))
    check_shared(shared_dirs(pipe, stages), launch)
    if args.dry_run:
        if launch.rank == 0:
            print(f"dry run: no problems found in {len(stages)} stage(s) of {pipe.source}")
        shutdown_distributed()
        return 0
    _requeue_on_sigusr1(launch)
    state = pipe.state
    for stage in stages:
        decision = state.check(stage.name, pipe.outputs(stage)) if launch.rank == 0 else None
        done = gather(decision.skip if decision is not None else None)[0]  # rank 0's view decides
        if done:
            log.info("stage %s: complete, skipped", stage.name)
            continue
        argv = stage_argv(stage, pipe, launch, extra)
        if decision is not None and decision.marker is not None:
            log.warning("stage %s: %s: running it again", stage.name, decision.reason)
        log.info("stage %s: syllablelm %s", stage.name, " ".join(argv))
        attempt = state.begin(stage.name, argv, header=f"{launch.world_size} process(es); rank 0's project logs "
                              "follow, the rest is in the job's output") if launch.rank == 0 else None
        with _logging_to(attempt.log if attempt else None):
            run_stage(stage, argv, launch)
        barrier()
        problem = gather(_not_made(stage, pipe, decision) if launch.rank == 0 else None)[0]
        if problem:  # every rank stops, not only rank 0
            raise PipelineError(problem)
        if attempt is not None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            state.finish(attempt, argv, outputs=pipe.outputs(stage), seconds=time.perf_counter() - attempt.started,
                         peak_rss_mb=peak, peak_rss_scope="process", world_size=launch.world_size)
        barrier()
    if launch.rank == 0:
        print(json.dumps({s.name: "done" for s in stages}))
    shutdown_distributed()
    return 0
