"""What a stage left behind: its marker, its attempt logs, its timings, and the one rule that says whether a rerun
may skip it. Shared by the demo's subprocess runner (:mod:`experiments.stage_runner`) and the pipeline
(:mod:`experiments.pipeline.runner`); both keep their state in one folder (the demo: ``WORKDIR/logs``, the
pipeline: its ``state_dir``)::

    STATE/NAME.done.json          the marker: written atomically once the stage exited 0 and its outputs are whole
    STATE/NAME.attempt-K.log      attempt K's log (K = 1, 2, ...); never overwritten, a rerun opens K + 1
    STATE/NAME.log                a symlink to the latest attempt's log (``tail -f`` follows a running stage)

**The marker** is JSON (``"format": 1``): ``stage``, ``argv`` (the ``syllablelm`` arguments it ran with),
``exit_status`` (0, or 4: done with skipped inputs), ``seconds`` (wall time), ``peak_rss_mb`` with
``peak_rss_scope`` (``"stage"``: the stage's own process, as the demo measures it; ``"process"``: the high-water
mark of the pipeline's process, which runs every stage in-process), ``attempt`` (which attempt finished),
``finished`` (local time), ``log`` and ``outputs``: the outputs it checked, each ``{"path": P}`` (a file or folder)
or ``{"store": ROOT, "version": K}`` (a store version), plus whatever the runner adds (the pipeline:
``world_size``). Markers of earlier versions are still read, so existing workdirs resume: the pipeline's
``NAME.done.json`` without ``format`` (``stage``, ``argv``, ``world_size``, ``seconds``, ``finished``) and the
demo's ``logs/NAME.done`` (one line: the arguments; no timings). A new marker replaces an old-format one.

**The skip rule** (:meth:`StageState.check`): a stage is skipped when its marker exists *and* every output it
declares is whole now: a store version (``ROOT/iter_K``, or a ``ROOT/iter_K/manifest.json`` path) is whole when the
store verifies it (complete, every shard's bytes matching the sizes and checksums its manifest recorded); a file
when it exists, is not empty and, for ``.json``, parses; a folder when it exists. Without a marker, a stage is
skipped only when all it declares are store versions and they are whole: a version gets its manifest only once every
shard is written, so it is a finished output (of another pipeline that shares it, or of a stage that crashed between
its end and its marker). Other outputs never prove that a stage finished: a ``fit`` writes ``last.ckpt`` after its
first epoch, and SylBoost writes its last boundary version before its final checkpoint. So a stage with such an
output that crashed after exiting 0 but before its marker was written (``SYLLABLELM_FAULT=stage.finished:NAME``
tests exactly this) runs again on the rerun even though its outputs exist; every stage resumes (a ``fit`` from its
``last.ckpt``, ``labels``/``units`` shard by shard, LossPred from its partial files, a store version already
complete is reused), so that costs little. A stage whose marker exists but whose outputs are no longer whole (a
deleted or damaged shard) runs again too; the runner says why. Starting an attempt removes the stage's marker, so an
interrupted rerun is never mistaken for the earlier finished run. Stages downstream of a rerun are not invalidated:
the demo's stages are deterministic given ``--seed``, and the pipeline's are configured by hand.

**Timings** are read back from the markers (:meth:`StageState.timings`), so a rerun that skips finished stages
reports the seconds and memory they took when they ran.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from syllablelm.runtime.faults import fault_point
from syllablelm.runtime.fileio import write_json
from syllablelm.runtime.outcome import EXIT_OK, EXIT_SKIPPED

MARKER_FORMAT = 1
MARKER_SUFFIX = ".done.json"
LEGACY_SUFFIX = ".done"  # the demo's old marker: one line, the stage's arguments
_VERSION_DIR = re.compile(r"^iter_(\d+)$")


# ---------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class FileOutput:
    """A file or folder a stage makes. Whole when it exists; a file must not be empty and a ``.json`` must parse
    (an evaluation written before a crash of the disk, say, is caught here rather than in the report)."""

    path: Path

    def problem(self) -> str | None:
        """None when whole, else why not (naming the path)."""
        p = Path(self.path)
        if not p.exists():
            return f"{p} is absent"
        if p.is_file():
            if p.stat().st_size == 0:
                return f"{p} is empty"
            if p.suffix == ".json":
                try:
                    json.loads(p.read_text())
                except (OSError, ValueError) as e:
                    return f"{p} is damaged ({e})"
        return None

    def to_json(self) -> dict:
        return {"path": str(self.path)}


@dataclass(frozen=True)
class StoreVersion:
    """Version ``version`` of the shard store at ``root`` (:mod:`datamodules.shard_store`); ``kind`` (``"boundary"``,
    ``"labels"``, ``"units"``; else read from the version's manifest) picks the store class, whose messages say
    which command writes that kind."""

    root: Path
    version: int
    kind: str | None = None

    def problem(self) -> str | None:
        """None when the version is complete and every shard's bytes match the checksums its manifest recorded
        (the store's ``verify(version, checksums=True)``: a skipped stage must not leave a bit-flipped output for
        the next stage to trip on; reading a store through costs about a second per GB), else the store's
        one-line message: which file is absent or damaged, and how to regenerate it."""
        from datamodules.shard_store import StoreError

        try:
            self._store().verify(self.version, checksums=True)
        except StoreError as e:
            return str(e)
        return None

    def _store(self):
        from datamodules.store_kinds import open_store  # imported on demand: this module stays light

        return open_store(self.root, self.kind, self.version)

    def to_json(self) -> dict:
        return {"store": str(self.root), "version": int(self.version), **({"kind": self.kind} if self.kind else {})}


Output = FileOutput | StoreVersion


def as_output(item: Output | str | os.PathLike) -> Output:
    """``item`` as an output: a path ``ROOT/iter_K/manifest.json`` (or ``ROOT/iter_K``) is store version K of
    ROOT, any other path a file or folder."""
    if isinstance(item, (FileOutput, StoreVersion)):
        return item
    path = Path(item)
    folder = path.parent if path.name == "manifest.json" else path
    match = _VERSION_DIR.match(folder.name)
    if match and (path.name == "manifest.json" or not path.suffix):
        return StoreVersion(folder.parent, int(match.group(1)))
    return FileOutput(path)


def outputs_of(done) -> list[Output]:
    """The outputs a runner was given: None, one output or path, or a list of them."""
    if done is None:
        return []
    if isinstance(done, (list, tuple)):
        return [as_output(d) for d in done]
    return [as_output(done)]


def outputs_problem(outputs: list[Output]) -> str | None:
    """Why the outputs are not whole (every problem, ``; ``-joined), or None when they are."""
    problems = [p for p in (o.problem() for o in outputs) if p]
    return "; ".join(problems) or None


# ---------------------------------------------------------------------------------------------- markers
@dataclass
class Marker:
    """A finished stage's record (see the module docstring for the fields)."""

    stage: str
    path: Path
    argv: list[str] = field(default_factory=list)
    exit_status: int = 0
    seconds: float | None = None
    peak_rss_mb: float | None = None
    attempt: int | None = None
    finished: str | None = None
    outputs: list[dict] = field(default_factory=list)
    legacy: bool = False  # read from an old format
    extra: dict = field(default_factory=dict)

    def timing(self) -> dict:
        """The timing record reports use: seconds and peak memory when recorded, attempt, finish time."""
        out = {k: v for k, v in (("seconds", self.seconds), ("peak_rss_mb", self.peak_rss_mb),
                                 ("attempt", self.attempt), ("finished", self.finished)) if v is not None}
        if "peak_rss_scope" in self.extra:
            out["peak_rss_scope"] = self.extra["peak_rss_scope"]
        if self.seconds is None:
            out["unknown"] = f"{self.path.name} predates timings"
        return out


@dataclass(frozen=True)
class Decision:
    """Whether a stage may be skipped, and why (or why not)."""

    skip: bool
    reason: str
    marker: Marker | None = None


@dataclass(frozen=True)
class Attempt:
    stage: str
    number: int
    log: Path
    started: float  # time.perf_counter() at the start


class StageState:
    """Markers, attempt logs and timings of the stages whose state lives in ``directory``."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    # ---- paths --------------------------------------------------------------------------------------------
    def marker_path(self, name: str) -> Path:
        return self.dir / f"{name}{MARKER_SUFFIX}"

    def legacy_marker_path(self, name: str) -> Path:
        return self.dir / f"{name}{LEGACY_SUFFIX}"

    def latest_log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def attempt_log(self, name: str, number: int) -> Path:
        return self.dir / f"{name}.attempt-{number}.log"

    def attempts(self, name: str) -> list[int]:
        """The attempt numbers whose logs exist, ascending."""
        pattern = re.compile(rf"^{re.escape(name)}\.attempt-(\d+)\.log$")
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for m in (pattern.match(p.name) for p in self.dir.iterdir()) if m)

    # ---- reading ------------------------------------------------------------------------------------------
    def read(self, name: str) -> Marker | None:
        """The stage's marker in the current or an old format, or None when it has none (a marker that does not
        parse counts as none: the stage runs again)."""
        path = self.marker_path(name)
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            if not isinstance(raw, dict):
                return None
            known = {"format", "stage", "argv", "exit_status", "seconds", "peak_rss_mb", "attempt", "finished",
                     "outputs"}
            return Marker(stage=raw.get("stage", name), path=path, argv=list(raw.get("argv", [])),
                          exit_status=int(raw.get("exit_status", 0)), seconds=raw.get("seconds"),
                          peak_rss_mb=raw.get("peak_rss_mb"), attempt=raw.get("attempt"),
                          finished=raw.get("finished"), outputs=list(raw.get("outputs", [])),
                          legacy="format" not in raw, extra={k: v for k, v in raw.items() if k not in known})
        legacy = self.legacy_marker_path(name)
        if legacy.is_file():
            with contextlib.suppress(OSError):
                return Marker(stage=name, path=legacy, argv=legacy.read_text().split(), legacy=True,
                              finished=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(legacy.stat().st_mtime)))
        return None

    def check(self, name: str, outputs: list[Output]) -> Decision:
        """The skip rule (module docstring): the marker exists and every declared output is whole, or, without a
        marker, every declared output is a whole store version."""
        marker = self.read(name)
        if marker is None:
            if outputs and all(isinstance(o, StoreVersion) for o in outputs) and outputs_problem(outputs) is None:
                # a store version gets its manifest only once every shard is written, so whole versions are a
                # finished stage even without a marker (written by another pipeline sharing them, or a crash
                # between the stage's end and its marker); a file such as last.ckpt proves nothing of the kind
                return Decision(True, "its outputs are complete store versions")
            earlier = self.attempts(name)
            why = f"attempt {earlier[-1]} left no marker" if earlier else "not run yet"
            return Decision(False, why)
        if marker.exit_status not in (EXIT_OK, EXIT_SKIPPED):  # never written by this module: a foreign marker
            return Decision(False, f"its marker {marker.path} records exit status {marker.exit_status}")
        problem = outputs_problem(outputs)
        if problem:
            return Decision(False, f"finished before, but {problem}", marker)
        return Decision(True, "finished before", marker)

    def timings(self) -> dict[str, dict]:
        """Every stage's recorded timing (:meth:`Marker.timing`), by stage name, in finishing order."""
        if not self.dir.is_dir():
            return {}
        names = {p.name[: -len(MARKER_SUFFIX)] for p in self.dir.glob(f"*{MARKER_SUFFIX}")}
        names |= {p.name[: -len(LEGACY_SUFFIX)] for p in self.dir.glob(f"*{LEGACY_SUFFIX}")}
        markers = [m for m in map(self.read, names) if m is not None]
        markers.sort(key=lambda m: (m.finished or "", m.stage))
        return {m.stage: m.timing() for m in markers}

    # ---- writing ------------------------------------------------------------------------------------------
    def begin(self, name: str, argv: list[str], header: str | None = None) -> Attempt:
        """Start the next attempt: remove the stage's marker (this attempt replaces the finished run), open
        ``NAME.attempt-K.log`` with a header and point ``NAME.log`` at it. A ``NAME.log`` that is a regular file
        (written before attempts were kept) is kept as an attempt of its own first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in (self.marker_path(name), self.legacy_marker_path(name)):
            path.unlink(missing_ok=True)
        latest = self.latest_log(name)
        if latest.is_file() and not latest.is_symlink():
            previous = self.attempts(name)
            latest.rename(self.attempt_log(name, (previous[-1] if previous else 0) + 1))
        previous = self.attempts(name)
        number = (previous[-1] if previous else 0) + 1
        log = self.attempt_log(name, number)
        lines = [f"# stage {name}, attempt {number}, started {time.strftime('%Y-%m-%d %H:%M:%S')}",
                 f"# syllablelm {' '.join(argv)}"]
        log.write_text("\n".join(lines + ([f"# {header}"] if header else [])) + "\n")
        tmp = latest.with_name(f".{latest.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            tmp.symlink_to(log.name)
            os.replace(tmp, latest)
        except OSError:  # a filesystem without symlinks: NAME.log is copied at the end instead
            tmp.unlink(missing_ok=True)
        return Attempt(name, number, log, time.perf_counter())

    def finish(self, attempt: Attempt, argv: list[str], *, outputs: list[Output], seconds: float,
               peak_rss_mb: float | None, peak_rss_scope: str = "stage", exit_status: int = EXIT_OK,
               **extra) -> Marker:
        """Write the marker of an attempt that exited 0 (or 4: done, some inputs skipped) with whole outputs. The
        ``stage.finished`` fault point comes first, so a test can crash between a stage's exit and its marker."""
        fault_point("stage.finished", attempt.stage)
        record = {"format": MARKER_FORMAT, "stage": attempt.stage, "argv": list(argv), "exit_status": exit_status,
                  "seconds": round(seconds, 1), "peak_rss_mb": None if peak_rss_mb is None else round(peak_rss_mb, 1),
                  "peak_rss_scope": peak_rss_scope, "attempt": attempt.number,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "log": str(attempt.log),
                  "outputs": [o.to_json() for o in outputs], **extra}
        path = self.marker_path(attempt.stage)
        write_json(path, record, indent=1)
        self.legacy_marker_path(attempt.stage).unlink(missing_ok=True)
        latest = self.latest_log(attempt.stage)
        if not latest.is_symlink():  # no symlinks here: a copy of the latest attempt's log
            with contextlib.suppress(OSError):
                latest.write_bytes(attempt.log.read_bytes())
        return self.read(attempt.stage)


# ---------------------------------------------------------------------------------------------- log lines
def last_line(path: Path, width: int = 110, skip_header: bool = True) -> str | None:
    """The last non-empty line of a log (tqdm's carriage-return updates count as lines), shortened to ``width``;
    None when there is none. Only the file's last 8 KB are read."""
    lines = tail_lines(path, skip_header=skip_header)
    return shorten(lines[-1], width) if lines else None


def tail_lines(path: Path, size: int = 8192, skip_header: bool = True) -> list[str]:
    """The non-empty lines in the last ``size`` bytes of ``path`` (a missing file has none)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [s.strip() for s in re.split(r"[\r\n]+", text)]
    return [s for s in lines if s and not (skip_header and s.startswith("# "))]


def error_line(path: Path, width: int = 240) -> str | None:
    """The child's own one-line error from its log: the last line that says ``error`` (the CLI prints
    ``syllablelm CMD: error: ...``, a traceback ends in ``SomeError: ...``), else the last line."""
    lines = [s for s in tail_lines(path, size=16384) if not s.startswith("(run again with --debug")]
    for line in reversed(lines):
        if re.search(r"error|exception|killed|traceback", line, re.IGNORECASE):
            return shorten(line, width)
    return shorten(lines[-1], width) if lines else None


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
