"""Running ``syllablelm`` stages as subprocesses from a command (the demo, ``sylboost-gain``, the recipes): each stage
in its own process, with a log per attempt, its wall time and peak memory in its marker, skipped on a rerun when it
finished before and its outputs are whole (:mod:`experiments.stage_state` has the marker format and the skip rule);
tiny configs rewritten to a working folder.

Progress goes to stdout, one line per event::

    [5/9] sylboost: running (log: DIR/logs/sylboost.attempt-1.log)
    [5/9] sylboost: 15 s elapsed; INFO callbacks.boundary_regeneration: boundary version 1 ...
    [5/9] sylboost: 30 s elapsed                      (the log's last line is shown when it changed)
    [5/9] sylboost: done in 61 s (peak 812 MB)
    [1/9] synth: skipped (finished before, 12 s)

Signals: while a stage runs, SIGTERM and SIGINT sent to this process are forwarded to the stage (a ``syllablelm``
process: Lightning stops gracefully on SIGTERM), and the runner waits for it to exit, writes no marker, prints one
line and exits with 128 + the signal's number (143, 130); a second signal kills the stage (SIGKILL). The stage runs
in its own process group (a terminal's Ctrl-C reaches it once, through the runner) and, on Linux, receives SIGTERM
if the runner dies without forwarding (SIGKILL, an OOM kill), so it is never left running alone.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import yaml

from experiments.stage_state import Output, StageState, duration, error_line, last_line, outputs_of
from syllablelm.runtime.fileio import write_text
from syllablelm.runtime.outcome import EXIT_OK, EXIT_SKIPPED

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs" / "tiny"
FORWARDED = (signal.SIGTERM, signal.SIGINT)


class StageFailed(RuntimeError):
    """A stage exited non-zero, or exited 0 without whole outputs; the message is one line."""


class StageInterrupted(SystemExit):
    """This process received SIGTERM/SIGINT while a stage ran; the stage was stopped and waited for. The exit
    status is 128 + the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message


def _parent_death_signal():
    """A ``preexec_fn`` that puts the child in its own process group and (Linux) asks the kernel to send it
    SIGTERM when the runner dies. ``prctl`` is looked up here, in the parent, so the child only calls it."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None

    def setup():
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup


class Runner:
    """Runs each stage as a ``syllablelm`` subprocess (``command`` + its arguments; tests give another command)
    and keeps its state in ``WORKDIR/logs``. ``timings`` holds each stage's record as its marker has it (a
    skipped stage's original seconds and memory, with ``skipped: True``); ``ran_seconds`` the stage time of this
    run. Progress lines go to ``out`` (None: none), every ``progress_every`` seconds while a stage runs; ``total``
    is the number of stages the caller will run (the ``[k/N]`` of the lines)."""

    def __init__(self, workdir: Path, *, total: int | None = None, out: TextIO | None = sys.stdout,
                 progress_every: float = 15.0, command: list[str] | None = None):
        self.workdir = Path(workdir)
        self.state = StageState(self.workdir / "logs")
        self.timings: dict[str, dict] = {}
        self.ran_seconds = 0.0
        self.total, self.index, self.out, self.progress_every = total, 0, out, progress_every
        self.command = list(command) if command is not None else [sys.executable, "-m", "experiments.cli"]
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", SYLLABLELM_CACHE=str(self.workdir / "cache"),
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    def run(self, name: str, args: list[str], done: Output | Path | list | None = None,
            resume: Path | None = None) -> dict:
        """Run ``syllablelm ARGS`` unless it finished before (the skip rule of :mod:`experiments.stage_state`:
        its marker exists and its ``done`` outputs, a path, a store version or a list, are whole). A stage
        interrupted after writing ``resume`` (a ``fit``'s ``last.ckpt``) continues from it (``--ckpt_path``);
        a stage that finished but whose outputs were lost since runs again from the start (``resume`` is then
        the finished run's checkpoint, from which a ``fit`` would redo nothing: it is renamed to
        ``NAME.superseded``). Returns the stage's timing record."""
        self.index += 1
        tag = f"[{self.index}/{self.total}] {name}" if self.total else f"[{self.index}] {name}"
        outputs = outputs_of(done)
        decision = self.state.check(name, outputs)
        if decision.skip:
            timing = {**decision.marker.timing(), "skipped": True}
            self.timings[name] = timing
            took = f", {duration(timing['seconds'])}" if "seconds" in timing else ""
            self.say(f"{tag}: skipped (finished before{took})")
            return timing
        if decision.marker is not None:  # finished, but its outputs are gone or damaged: from the start
            self.say(f"{tag}: {decision.reason}: running it again from the start")
            if resume is not None and resume.exists():
                resume.replace(resume.with_name(f"{resume.name}.superseded"))
        elif resume is not None and resume.exists():
            args = [*args, "--ckpt_path", str(resume)]
        attempt = self.state.begin(name, args)
        log.debug("%s: %s", name, " ".join([*self.command, *args]))
        again = f" again ({decision.reason})" if decision.marker is None and attempt.number > 1 else ""
        self.say(f"{tag}: running{again} (log: {attempt.log})")
        status, usage = self._wait(name, tag, args, attempt.log)
        seconds = time.perf_counter() - attempt.started
        self.ran_seconds += seconds
        if status not in (EXIT_OK, EXIT_SKIPPED):  # 4: done, some inputs skipped (named in the stage's log)
            what = f"exit {status}" if status > 0 else f"killed by {_signal_name(-status)}"
            raise StageFailed(f"stage {name} failed ({what}): {error_line(attempt.log) or 'no output'}; "
                              f"log: {attempt.log}")
        problem = "; ".join(p for p in (o.problem() for o in outputs) if p)
        if problem:
            raise StageFailed(f"stage {name} exited 0 but its output is not whole: {problem}; log: {attempt.log}")
        peak = usage.ru_maxrss / 1024  # KiB on Linux
        marker = self.state.finish(attempt, args, outputs=outputs, seconds=seconds, peak_rss_mb=peak,
                                   exit_status=status)
        self.timings[name] = marker.timing()
        skipped = f"; it skipped some inputs, named in {attempt.log}" if status == EXIT_SKIPPED else ""
        self.say(f"{tag}: done in {duration(seconds)} (peak {peak:.0f} MB){skipped}")
        return self.timings[name]

    def _wait(self, name: str, tag: str, args: list[str], logfile: Path):
        """Start the stage, forward SIGTERM/SIGINT to it, print progress, and reap it: ``(exit status, rusage)``
        (a negative status: killed by that signal). Raises :class:`StageInterrupted` after a forwarded signal."""
        received: list[int] = []
        with open(logfile, "a") as out:
            proc = subprocess.Popen([*self.command, *args], cwd=self.workdir, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=_parent_death_signal())

        def forward(signum, frame):  # only signals here: the loop below prints
            received.append(signum)
            _signal(proc.pid, signum if len(received) == 1 else signal.SIGKILL)

        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, forward) for s in FORWARDED} if main else {}
        pid = 0
        try:
            start = last = time.perf_counter()
            told, shown = 0, None
            while True:
                told = self._tell(tag, proc.pid, received, told)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.1)
                now = time.perf_counter()
                if self.progress_every and now - last >= self.progress_every and not received:
                    last = now
                    line = last_line(logfile)  # shown when it is new: a stage that logs nothing still ticks
                    self.say(f"{tag}: {duration(now - start)} elapsed" + (f"; {line}" if line and line != shown
                                                                           else ""))
                    shown = line
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if not pid:  # this loop failed (never the stage): stop the stage rather than leave it running alone
                _signal(proc.pid, signal.SIGTERM)
                proc.wait()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if received:
            self._tell(tag, proc.pid, received, told)
            signum, code = received[0], proc.returncode
            ended = f"exited with status {code}" if code >= 0 else f"was killed by {_signal_name(-code)}"
            message = (f"syllablelm: stopped by {_signal_name(signum)} during stage {name} (the stage {ended}; no "
                       f"marker was written: rerun the same command to resume); log: {logfile}")
            print(message, file=sys.stderr, flush=True)
            raise StageInterrupted(signum, message)
        return proc.returncode, usage


    def _tell(self, tag: str, pid: int, received: list[int], told: int) -> int:
        """Say what the signal handler did (it only records and forwards); returns how many signals are told."""
        for k in range(told, min(len(received), 2)):
            self.say(f"{tag}: received {_signal_name(received[0])}: stopping the stage (pid {pid}) and waiting for "
                     "it to exit" if k == 0 else f"{tag}: a second signal: killing the stage (pid {pid})")
        return len(received)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it exited meanwhile
        pass


def write_config(src: str, dst: Path, workdir: Path, edit) -> Path:
    """A tiny config with the workdir's paths, edited by ``edit(cfg)``. One pass over the config's own text, so a
    workdir whose path contains ``runs/tiny`` or ``data/synth`` is never rewritten again."""
    new = {"data/synth": str(workdir / "data/synth"), "runs/tiny": str(workdir / "runs")}
    text = re.sub("|".join(map(re.escape, new)), lambda m: new[m.group(0)], (CONFIGS / src).read_text())
    cfg = yaml.safe_load(text)
    edit(cfg)
    write_text(dst, yaml.safe_dump(cfg, sort_keys=False))
    return dst


def place_run(cfg: dict, root: Path) -> None:
    """Put a Lightning config's outputs under ``root``: its root dir, its checkpoints in ``root/checkpoints`` and
    its TensorBoard run ``root.name`` under ``root.parent``."""
    cfg["trainer"]["default_root_dir"] = str(root)
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(root.parent), name=root.name)
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(root / "checkpoints")


def regenerate_test_too(cfg: dict) -> None:
    """Reports score every stage on the held-out test split, so SylBoost writes test boundaries too."""
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("BoundaryRegeneration"):
            cb["init_args"] = {"splits": ["train", "val", "test"]}
