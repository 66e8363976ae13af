"""Fault injection at named points, for the tests that prove a run survives a crash (docs/architecture.md,
"Reliability").

A point is a call ``fault_point("name")`` placed where a crash is worth testing (inside LossPred's predict, between
SylBoost iterations, after a shard is written, ...). It does nothing unless the environment variable
``SYLLABLELM_FAULT`` names it::

    SYLLABLELM_FAULT=train_batch_end:SylBoostModule@3        raise InjectedFault the 3rd time the point is reached
    SYLLABLELM_FAULT=regeneration.written@1:kill             SIGKILL this process there (nothing is cleaned up)
    SYLLABLELM_FAULT=a@2,b                                   several points, each counted on its own

``name@N`` fires on the N-th time the point is reached in this process (default 1); ``:kill`` sends SIGKILL to the
process itself instead of raising, which is what a node failure or ``kill -9`` does: no ``finally`` block, no
atexit handler and no temporary-file clean-up runs. ``fault_points()`` lists every point the code defines (a test
keeps the list and the calls equal).
"""
from __future__ import annotations

import os
import signal

ENV = "SYLLABLELM_FAULT"

# every point placed in the code, with where it is; tests/test_faults.py checks that each is called somewhere
POINTS = {
    "predict_batch_end": "a prediction batch's outputs were handed to the writers (LossPred's predict, SylBoost's)",
    "train_batch_end": "after a training batch's optimizer step, before any checkpoint of that step",
    "regeneration.written": "SylBoost: a boundary version is complete on disk, before a checkpoint records it",
    "shard.written": "an offline pass (labels, units) wrote one shard file, before the next",
    "stage.finished": "a stage of the demo or the pipeline exited 0, before its marker is written",
}

_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """The crash a ``SYLLABLELM_FAULT`` point raises."""


def _plan() -> dict[str, tuple[int, bool]]:
    """``{point: (count, kill)}`` from ``SYLLABLELM_FAULT`` (items ``name[@N][:kill]``, comma-separated)."""
    plan = {}
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        kill = item.endswith(":kill")
        item = item[: -len(":kill")] if kill else item
        name, _, count = item.partition("@")
        plan[name] = (int(count) if count else 1, kill)
    return plan


def fault_point(name: str, detail: str | None = None) -> None:
    """Crash here if ``SYLLABLELM_FAULT`` names this point (``name`` or ``name:detail``) and its count is
    reached; otherwise do nothing (one environment lookup)."""
    if ENV not in os.environ:
        return
    plan = _plan()
    for key in (f"{name}:{detail}", name) if detail else (name,):
        if key in plan:
            _hits[key] = _hits.get(key, 0) + 1
            count, kill = plan[key]
            if _hits[key] == count:
                if kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise InjectedFault(f"injected fault at {key} (hit {count}; {ENV}={os.environ[ENV]})")
            return


def fault_points() -> dict[str, str]:
    return dict(POINTS)


def reset() -> None:
    """Forget how often each point was reached (tests that run several crashing fits in one process)."""
    _hits.clear()
