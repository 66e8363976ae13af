"""How a command ends: its exit status, and the inputs it skipped on the way (docs/architecture.md, "Reliability").

Exit statuses of every ``syllablelm`` command (the README lists them):

====  =====================================================================================================
0     done; nothing was skipped
1     failed: one line on stderr says what and where (``--debug`` shows the traceback); nothing half-written
2     a usage error: bad arguments, a missing input, no audio found
3     the pipeline asked SLURM to requeue the job (it resumes where it stopped)
4     done, but some inputs were skipped (each named in the log with its reason; a summary line at the end)
====  =====================================================================================================

A bad input that a command can leave out (an unreadable, empty or non-finite audio file) is *skipped*: the
command logs the path and the reason, records it here, and goes on. :func:`skipped` is the process-wide list;
the command line turns a non-empty list into the summary line and status 4.
"""
from __future__ import annotations

import dataclasses
import logging
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REQUEUED = 3
EXIT_SKIPPED = 4

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Skip:
    path: str
    reason: str
    where: str  # what skipped it: "tokenize", "units", "manifest", "training batch", ...


_skipped: dict[tuple[str, str], Skip] = {}


def record_skip(path: str, reason: str, where: str, *, warn: bool = True) -> None:
    """Note that ``path`` was left out by ``where`` because of ``reason`` (logged once per path and place)."""
    key = (str(path), where)
    if key in _skipped:
        return
    _skipped[key] = Skip(str(path), reason, where)
    if warn:
        log.warning("skipped %s (%s): %s", path, where, reason)


def skipped() -> list[Skip]:
    """Every input skipped in this process so far, in the order met."""
    return list(_skipped.values())


def reset_skips() -> None:
    _skipped.clear()


def summary() -> str | None:
    """One line naming how many inputs were skipped and by what, or None when none was."""
    if not _skipped:
        return None
    by: dict[str, int] = {}
    for s in _skipped.values():
        by[s.where] = by.get(s.where, 0) + 1
    parts = ", ".join(f"{n} by {w}" for w, n in by.items())
    files = len({s.path for s in _skipped.values()})
    return f"skipped {files} input file(s) ({parts}); each is named above with its reason"


def finish(status: int | None) -> int:
    """The exit status of a command that returned ``status``: 4 instead of 0 when something was skipped (the
    summary line goes to stderr)."""
    status = EXIT_OK if status is None else int(status)
    line = summary()
    if line is not None:
        print(f"syllablelm: {line}", file=sys.stderr)
        if status == EXIT_OK:
            return EXIT_SKIPPED
    return status
