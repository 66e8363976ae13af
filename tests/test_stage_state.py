"""Stage state shared by the demo's subprocess runner and the pipeline: markers, the skip rule, attempt logs,
timings read back, signal forwarding, progress lines, the ``stage.finished`` fault point. Every stage here is a
tiny ``python -c`` child (the runner's ``command``), never a real ``syllablelm`` stage."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.stage_runner import Runner, StageFailed
from experiments.stage_state import FileOutput, StageState, StoreVersion, as_output, duration, error_line
from syllablelm.runtime.faults import InjectedFault

REPO = Path(__file__).resolve().parents[1]
# writes its first argument's file after printing a few progress lines
WRITER = ("import sys, time\nfor i in range(3):\n    print(f'step {i} of 3', flush=True)\n    time.sleep(0.2)\n"
          "open(sys.argv[1], 'w').write('made')\n")


def runner(wd: Path, code: str = WRITER, **kwargs) -> Runner:
    kwargs.setdefault("out", io.StringIO())
    return Runner(wd, command=[sys.executable, "-c", code], **kwargs)


def test_marker_timings_and_attempt_logs_survive_a_rerun(tmp_path):
    out = tmp_path / "out.txt"
    first = runner(tmp_path, total=1, progress_every=0.15)
    record = first.run("make", [str(out)], done=out)
    marker = json.loads((tmp_path / "logs" / "make.done.json").read_text())
    assert marker["format"] == 1 and marker["stage"] == "make" and marker["argv"] == [str(out)]
    assert marker["exit_status"] == 0 and marker["attempt"] == 1 and marker["seconds"] > 0.5
    assert marker["peak_rss_mb"] > 1 and marker["peak_rss_scope"] == "stage" and marker["finished"]
    assert marker["outputs"] == [{"path": str(out)}]
    assert record == first.timings["make"] and record["seconds"] == marker["seconds"]
    printed = first.out.getvalue().splitlines()
    assert printed[0] == f"[1/1] make: running (log: {tmp_path / 'logs' / 'make.attempt-1.log'})"
    assert any("elapsed; step " in line for line in printed[1:-1])  # the child's latest log line
    assert printed[-1].startswith("[1/1] make: done in ")
    log = tmp_path / "logs" / "make.log"
    assert log.is_symlink() and "step 2 of 3" in log.read_text()

    # a new runner (a rerun of the command) skips it and reports the original timing
    again = runner(tmp_path, total=1)
    assert again.run("make", [str(out)], done=out) == {**record, "skipped": True}
    assert again.out.getvalue() == f"[1/1] make: skipped (finished before, {duration(marker['seconds'])})\n"
    assert StageState(tmp_path / "logs").timings()["make"]["seconds"] == marker["seconds"]

    # the output lost: the stage runs again, as attempt 2, and attempt 1's log is kept
    out.unlink()
    third = runner(tmp_path)
    third.run("make", [str(out)], done=out)
    assert "finished before, but" in third.out.getvalue() and "is absent" in third.out.getvalue()
    assert json.loads((tmp_path / "logs" / "make.done.json").read_text())["attempt"] == 2
    assert (tmp_path / "logs" / "make.attempt-1.log").is_file() and os.readlink(log) == "make.attempt-2.log"


def test_a_failing_stage_is_one_line_with_the_childs_error_and_its_log(tmp_path):
    code = ("import sys\nprint('working')\nprint('syllablelm units: error: shard 3 is damaged', file=sys.stderr)\n"
            "print('  (run again with --debug for the traceback)', file=sys.stderr)\nsys.exit(1)\n")
    with pytest.raises(StageFailed) as e:
        runner(tmp_path, code).run("units", [])
    log = tmp_path / "logs" / "units.attempt-1.log"
    assert str(e.value) == f"stage units failed (exit 1): syllablelm units: error: shard 3 is damaged; log: {log}"
    assert not (tmp_path / "logs" / "units.done.json").exists()
    # exit 0 without the declared output is a failure too, never a marker
    with pytest.raises(StageFailed, match=r"stage quiet exited 0 but its output is not whole: .*nothing is absent"):
        runner(tmp_path, "pass").run("quiet", [], done=tmp_path / "nothing")
    assert not (tmp_path / "logs" / "quiet.done.json").exists()
    assert error_line(tmp_path / "logs" / "no-such.log") is None


def test_store_outputs_use_the_stores_completeness(tmp_path):
    from datamodules.boundary_store import BoundaryStore

    store = BoundaryStore(tmp_path / "boundaries")
    store.write_shard(2, 0, 1, {"a": [[0.0, 0.5]]})
    store.finalize(2, 1)
    assert as_output(store.version_dir(2) / "manifest.json") == StoreVersion(store.root, 2)
    assert as_output(store.version_dir(2)) == StoreVersion(store.root, 2)
    assert as_output(tmp_path / "last.ckpt") == FileOutput(tmp_path / "last.ckpt")
    state = StageState(tmp_path / "logs")
    attempt = state.begin("sylboost", ["fit"])
    state.finish(attempt, ["fit"], outputs=[StoreVersion(store.root, 2, "boundary")], seconds=3.0, peak_rss_mb=10)
    assert state.check("sylboost", [StoreVersion(store.root, 2, "boundary")]).skip
    store.shard_path(2, 0, 1).unlink()  # the case: a shard lost under an existing manifest
    decision = state.check("sylboost", [StoreVersion(store.root, 2, "boundary")])
    assert not decision.skip and decision.marker is not None and "iter_2" in decision.reason
    assert decision.reason.startswith("finished before, but ")
    bad = tmp_path / "evaluate.json"
    bad.write_text("{not json")
    assert "is damaged" in FileOutput(bad).problem() and "is empty" in FileOutput(_empty(tmp_path)).problem()


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    return tmp_path / "empty.ckpt"


def test_old_markers_and_logs_still_count(tmp_path):
    """Workdirs made before this format resume: the demo's ``logs/NAME.done`` (its arguments) and the pipeline's
    ``NAME.done.json`` without ``format``; an old ``NAME.log`` is kept as an attempt."""
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out.txt"
    out.write_text("made")
    (logs / "make.done").write_text(f"{out}\n")
    (logs / "make.log").write_text("the old run's log\n")
    (logs / "predict.done.json").write_text(json.dumps({"stage": "predict", "argv": ["predict"], "world_size": 2,
                                                        "seconds": 12.5, "finished": "2025-01-01T00:00:00"}))
    state = StageState(logs)
    old = state.read("make")
    assert old.legacy and old.argv == [str(out)] and old.seconds is None
    assert state.check("make", [FileOutput(out)]).skip and state.check("predict", []).skip
    assert state.read("predict").extra == {"world_size": 2}
    timings = state.timings()
    assert timings["predict"]["seconds"] == 12.5 and "predates timings" in timings["make"]["unknown"]
    run = runner(tmp_path)
    assert run.run("make", [str(out)], done=out)["skipped"] is True
    assert run.out.getvalue() == "[1] make: skipped (finished before)\n"
    # running it again keeps the old log as attempt 1 and replaces the old marker with the new format
    out.unlink()
    run.run("make", [str(out)], done=out)
    assert (logs / "make.attempt-1.log").read_text() == "the old run's log\n"
    assert not (logs / "make.done").exists() and state.read("make").attempt == 2 and not state.read("make").legacy


def test_a_crash_between_exit_and_marker_runs_the_stage_again(tmp_path, monkeypatch):
    """SYLLABLELM_FAULT=stage.finished:NAME: the stage exited 0 and its output exists, but no marker was written;
    the rerun runs it again (outputs alone never prove a stage finished)."""
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SYLLABLELM_FAULT", "stage.finished:crashy")
    with pytest.raises(InjectedFault):
        runner(tmp_path).run("crashy", [str(out)], done=out)
    assert out.read_text() == "made" and not (tmp_path / "logs" / "crashy.done.json").exists()
    monkeypatch.delenv("SYLLABLELM_FAULT")
    out.write_text("stale")
    rerun = runner(tmp_path, total=1)
    record = rerun.run("crashy", [str(out)], done=out)
    assert "skipped" not in record and record["attempt"] == 2 and out.read_text() == "made"
    assert "running again (attempt 1 left no marker)" in rerun.out.getvalue()


def test_resume_only_an_unfinished_stage(tmp_path):
    """A stage without a marker continues from its checkpoint; one that finished but lost its outputs starts
    again (its checkpoint is the finished run's, from which a fit would redo nothing): the checkpoint is set
    aside."""
    code = "import sys, pathlib\npathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]) or 'fresh')\n"
    out, ckpt = tmp_path / "out.txt", tmp_path / "last.ckpt"
    ckpt.write_text("epoch 1")
    run = runner(tmp_path, code)
    run.run("fit", [str(out)], done=out, resume=ckpt)
    assert out.read_text() == f"--ckpt_path {ckpt}"
    out.unlink()
    run.run("fit", [str(out)], done=out, resume=ckpt)
    assert out.read_text() == "fresh" and not ckpt.exists()
    assert (tmp_path / "last.ckpt.superseded").read_text() == "epoch 1"


RUNNER = """
import sys
from pathlib import Path
from experiments.stage_runner import Runner
Runner(Path(sys.argv[1]), command=[sys.executable, "-c", sys.argv[2]]).run("slow", [sys.argv[3]])
"""
SLOW_CHILD = """
import os, signal, sys, time
out = sys.argv[1]
def stop(signum, frame):
    time.sleep(0.5)  # a graceful stop takes a while; Lightning then exits 0
    open(out, "a").write(f"stopped by {signum}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
open(out, "w").write(f"{os.getpid()}\\n")
time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_runner_stops_its_stage_and_waits_for_it(tmp_path, signum):
    child_out = tmp_path / "child.txt"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path), SLOW_CHILD, str(child_out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.time() + 30
    while not (child_out.exists() and child_out.read_text().endswith("\n")) and time.time() < deadline:
        time.sleep(0.05)
    pid = int(child_out.read_text().split()[0])
    time.sleep(0.3)  # the runner's handlers are in place once the child runs
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stderr
    # the child got the signal and the runner waited for its graceful stop before exiting
    assert child_out.read_text().splitlines()[-1] == f"stopped by {int(signum)}"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    line = [s for s in stderr.splitlines() if s.strip()]
    assert len(line) == 1 and line[0].startswith(f"syllablelm: stopped by {name} during stage slow (")
    assert f"received {name}: stopping the stage (pid {pid})" in stdout
    assert not (tmp_path / "logs" / "slow.done.json").exists()  # its exit 0 after the signal is no finish


def test_durations_read_well():
    assert [duration(s) for s in (3.24, 42.4, 185, 3720)] == ["3.2 s", "42 s", "3 min 05 s", "1 h 02 min"]
