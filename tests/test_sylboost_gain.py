"""``syllablelm sylboost-gain``: SylBoost's iterations against their start, LossPred and uniform, per data size."""
import json

import numpy as np
import pytest

from experiments.cli import main
from experiments.sylboost_gain import CHECKS
from syllablelm.evaluation.significance import voice_of
from tests import sylboost_helpers as H


def test_gain_runs_scores_every_system_and_resumes(synth_corpus, tmp_path):
    teacher = H.save_teacher(tmp_path / "teacher.ckpt")
    H.write_v0(synth_corpus, tmp_path / "losspred", str(tmp_path / "cache"), splits=("train", "dev", "test"))
    out = tmp_path / "gain"
    args = ["sylboost-gain", "--data", str(synth_corpus), "--boundaries", str(tmp_path / "losspred"), "--layer", "1",
            "--backbone", f"tiny={teacher}", "--hours", "0.02", "--epochs", "1", "--resamples", "50",
            "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "gain.json").read_text())
    (run,) = result["runs"]
    assert set(run["scores"]) == {"LossPred", "start", "iteration 1", "iteration 2", "uniform at LossPred's rate"}
    assert set(run["checks"]) == {f"{a} - {b}" for a, b in CHECKS}
    for name, check in run["checks"].items():
        a, b = name.split(" - ")
        for m in ("f1", "r_value"):  # the bootstrap's difference is the scores' difference, inside its interval
            assert check[m]["difference"] == pytest.approx(run["scores"][a][m] - run["scores"][b][m], abs=1e-9)
            assert check[m]["low"] <= check[m]["difference"] <= check[m]["high"]
    # the start is cut at SylBoost's rate: a fixed 6.25 segments per second of speech span, as the iterations
    assert run["scores"]["start"]["rate_hz"] == pytest.approx(run["scores"]["iteration 1"]["rate_hz"], abs=0.2)
    assert run["test_voices"] == len({voice_of(p.name) for p in (synth_corpus / "test").rglob("*.flac")})
    assert "| tiny | 0.02 |" in (out / "gain.md").read_text() and (out / "gain.png").stat().st_size > 1000
    # a rerun skips the finished SylBoost run and gives the same scores
    assert main(args) == 0
    again = json.loads((out / "gain.json").read_text())["runs"][0]
    assert again["scores"] == run["scores"] and again["train_seconds"] == run["train_seconds"]
    assert np.isfinite(run["scores"]["iteration 2"]["f1"])
