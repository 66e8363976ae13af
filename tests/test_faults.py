"""Faults injected into a finished tiny demo (docs/architecture.md, "Reliability"): a copy of the session's demo
work directory is damaged or crashed at named points (``SYLLABLELM_FAULT``, :mod:`syllablelm.runtime.faults`) and the
same
command is run again; it must end with exactly the numbers of the run that never failed, and the stages it did not
need to redo keep their recorded timings. The store, bad-audio and exact-resume tests at the unit level are in
tests/test_store_faults.py, tests/test_bad_audio.py and tests/test_exact_resume.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.cli import main
from syllablelm.runtime import faults

# what a report computes (timings, paths and this run's own seconds differ between runs by design)
SCORED = ("stages", "baselines", "units", "lm_pairs", "checks", "significance", "missing")
LATER_STAGES = ("losspred", "sylboost", "quantize", "units", "speechlm", "evaluate")


def copy_demo(tiny_demo: Path, tmp_path: Path) -> Path:
    wd = tmp_path / "demo"
    shutil.copytree(tiny_demo, wd, symlinks=True)
    return wd


def forget(wd: Path, stages=LATER_STAGES) -> None:
    """Remove the outputs and markers of LossPred and everything after it (the demo then runs them again)."""
    for path in ("runs/boundaries", "runs/sylboost", "runs/units", "runs/speechlm", "figures"):
        shutil.rmtree(wd / path, ignore_errors=True)
    for path in ("runs/tokenizer.ckpt", "runs/evaluate.json", "report.json", "report.md"):
        (wd / path).unlink(missing_ok=True)
    for stage in stages:
        for marker in (wd / "logs").glob(f"{stage}.done*"):
            marker.unlink()


def scored(wd: Path) -> dict:
    report = json.loads((wd / "report.json").read_text())
    return {k: report.get(k) for k in SCORED}


def demo(wd: Path, monkeypatch, fault: str | None = None) -> int:
    if fault:
        monkeypatch.setenv(faults.ENV, fault)
    else:
        monkeypatch.delenv(faults.ENV, raising=False)
    return main(["demo", "--workdir", str(wd), "--tiny"])


@pytest.mark.slow
def test_crashes_inside_each_stage_resume_to_the_uninterrupted_report(tiny_demo, tmp_path, monkeypatch, capsys):
    """The issue's kill points, one after another on one work directory: inside LossPred's predict, inside a
    SylBoost epoch, between iterations 1 and 2 (version 1 on disk, in no checkpoint), inside the SpeechLM fit (a
    SIGKILL there: nothing is cleaned up)."""
    import torch

    wd = copy_demo(tiny_demo, tmp_path)
    forget(wd)
    logs_before = len(list((wd / "logs").glob("sylboost.attempt-*.log")))  # the copied run's own
    ckpt = torch.load(tiny_demo / "runs/sylboost/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    per_epoch = ckpt["global_step"] // (ckpt["epoch"] + 1)  # SylBoost's batches per epoch
    for stage, fault in (("losspred", "predict_batch_end:TeacherModule@2"),
                         ("sylboost", "regeneration.written@1"),  # no checkpoint after it: the next run reuses it
                         ("sylboost", f"train_batch_end:SylBoostModule@{per_epoch + 1}"),  # iteration 2, resumed
                         ("speechlm", "train_batch_end:SpeechLMModule@7:kill")):
        assert demo(wd, monkeypatch, fault) == 1, f"{fault} did not stop the demo"
        err = capsys.readouterr().err
        assert f"stage {stage} failed" in err and len(err.strip().splitlines()) == 1, err
        assert not (wd / "logs" / f"{stage}.done.json").exists()
    assert demo(wd, monkeypatch) == 0
    assert scored(wd) == scored(tiny_demo)
    timings = json.loads((wd / "report.json").read_text())["timings"]
    original = json.loads((tiny_demo / "report.json").read_text())["timings"]
    for stage in ("synth", "labels", "pairs"):  # never redone: their recorded timings, not a rerun's
        assert timings[stage]["seconds"] == original[stage]["seconds"]
    # SylBoost ran three times here (crashed twice): every attempt's log is kept
    assert len(list((wd / "logs").glob("sylboost.attempt-*.log"))) == logs_before + 3


@pytest.mark.slow
def test_damaged_stores_are_made_again_and_the_report_is_unchanged(tiny_demo, tmp_path, monkeypatch):
    """A truncated unit shard, a bit-flipped boundary shard (version 1) and a deleted boundary shard under an intact
    manifest (version 2): the rerun names each, runs the stages that wrote them again, and ends with the same
    numbers; the other stages are skipped with their recorded timings."""
    wd = copy_demo(tiny_demo, tmp_path)
    unit = next((wd / "runs/units/iter_0").glob("shard-*.units.npy"))
    unit.write_bytes(unit.read_bytes()[: unit.stat().st_size // 2])
    v1 = next((wd / "runs/boundaries/iter_1").glob("shard-*.values.npy"))
    data = bytearray(v1.read_bytes())
    data[len(data) // 2] ^= 0x10
    v1.write_bytes(bytes(data))
    for shard in (wd / "runs/boundaries/iter_2").glob("shard-*.offsets.npy"):
        shard.unlink()
    assert demo(wd, monkeypatch) == 0
    assert scored(wd) == scored(tiny_demo)
    report = json.loads((wd / "report.json").read_text())
    original = json.loads((tiny_demo / "report.json").read_text())["timings"]
    for stage, timing in report["timings"].items():
        if stage in ("sylboost", "units"):
            assert timing.get("attempt", 2) >= 2  # made again
        else:
            assert timing["seconds"] == original[stage]["seconds"], stage


def test_the_fault_table_script_parses():
    """benchmarks/fault_table.sh (the by-hand fault table of docs/results.md) is at least valid bash."""
    import subprocess

    from tests.conftest import REPO

    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks/fault_table.sh")]).returncode == 0
