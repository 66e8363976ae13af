"""`syllablelm demo --tiny`: the whole pipeline end to end (a functional test, not a timed one)."""
import json

import numpy as np
import pytest
import soundfile as sf

from experiments.cli import main
from experiments.demo import losspred_precision
from syllablelm import Tokenizer


@pytest.mark.slow
def test_tiny_demo_writes_a_report_and_a_working_tokenizer(tmp_path):
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--tiny"]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["accelerator"] == "cpu" and report["teacher"] == "shipped"
    for stage in ("LossPred", "SylBoost iteration 1", "SylBoost iteration 2"):
        scores = report["stages"][stage]
        assert scores["num_utterances"] > 0 and 0 <= scores["syllablelm_tuned"]["f1"] <= 1
        assert "sdhubert_tuned" in scores and scores["rate_hz"] > 0
    assert {"uniform_4.5hz", "envelope"} <= set(report["baselines"])
    assert report["losspred_precision"] == losspred_precision("auto", "cpu")
    sb, lp = (report["stages"][s]["syllablelm_tuned"] for s in ("SylBoost iteration 2", "LossPred"))
    assert report["checks"]["sylboost_beats_losspred"] == {m: sb[m] > lp[m] for m in ("f1", "r_value")}
    # LossPred is checked against uniform at its own rate; the paired bootstraps reproduce the table's
    # differences (uniform recomputed from its stored rate)
    uniform = next(v for v in report["baselines"].values() if v.get("params", {}).get("matches") == "LossPred")
    assert uniform["rate_hz"] == pytest.approx(report["stages"]["LossPred"]["rate_hz"], rel=0.2)
    assert report["checks"]["losspred_beats_uniform"] == {
        m: lp[m] > uniform["syllablelm_tuned"][m] for m in ("f1", "r_value")}
    it1 = report["stages"]["SylBoost iteration 1"]["syllablelm_tuned"]
    start_scores = report["baselines"]["SylBoost's start, untrained"]["syllablelm_tuned"]
    assert report["checks"]["sylboost_beats_its_start"] == {m: it1[m] > start_scores[m] for m in ("f1", "r_value")}
    for (name, a, b) in (("sylboost_beats_losspred", sb, lp),
                         ("losspred_beats_uniform", lp, uniform["syllablelm_tuned"]),
                         ("sylboost_beats_its_start", it1, start_scores), ("iteration_2_vs_iteration_1", sb, it1)):
        for m in ("f1", "r_value"):
            sig = report["significance"][name][m]
            assert sig["difference"] == pytest.approx(a[m] - b[m], abs=1e-9)
            assert sig["low"] <= sig["difference"] <= sig["high"] and 0 <= sig["p_not_better"] <= 1
        assert report["significance"][name]["n_groups"] >= 1  # voices resampled, then utterances within them
    # SylBoost's untrained start is the shipped backbone, cut as SylBoost cuts: the same scores from the folder
    from datamodules.aligned import load_split
    from experiments.demo import SHIPPED
    from experiments.report import SYLBOOST_START
    from syllablelm.evaluation import tuned_scores
    from syllablelm.nn.encoder import SpeechEncoder
    from syllablelm.segmenter import Segmenter, SegmenterConfig

    start = report["baselines"][SYLBOOST_START]
    wd = tmp_path / "demo"
    splits = [load_split([str(wd / "data/synth" / s)], str(wd / "data/synth/alignments")) for s in ("test", "dev")]
    backbone = SpeechEncoder.load(SHIPPED / "backbone", layer=start["params"]["layer"]).eval()
    seg = Segmenter(SegmenterConfig.at_rate(start["params"]["rate_hz"], "rate", vad_trim=True))
    pred = [seg.segments(backbone.utterance_features(w), w) for w, _, _ in splits]
    again = tuned_scores(pred[0], splits[0][1], pred[1], splits[1][1])["syllablelm_tuned"]
    assert again == pytest.approx(start["syllablelm_tuned"])
    assert f"`{SYLBOOST_START}` is SylBoost's backbone" in (wd / "report.md").read_text()
    assert {"cpur", "spur", "snmi"} <= set(report["units"]["clustering"])
    assert {"token_rate", "dedup_token_rate", "nominal_bps", "dedup_entropy_bps"} <= set(report["units"]["tokens"])
    assert set(report["lm_pairs"]) == {"lexical", "syntactic", "tsc"}
    for stage in ("synth", "labels", "losspred", "sylboost", "quantize", "units", "speechlm", "evaluate"):
        assert report["timings"][stage]["seconds"] > 0 and report["timings"][stage]["peak_rss_mb"] > 0
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "sylboost beats losspred: f1 " in md and "paired bootstrap over its" in md
    for figure in ("f1_rvalue.png", "boundaries.png", "lm_pairs.png"):
        assert f"figures/{figure}" in md and (tmp_path / "demo" / "figures" / figure).stat().st_size > 1000
    # the checkpoint named in the report tokenizes a file it has never seen, at another sample rate
    t = np.arange(3 * 22050) / 22050
    wave = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * 0.3
    sf.write(tmp_path / "new.wav", wave, 22050)
    tok = Tokenizer.from_checkpoint(report["tokenizer_checkpoint"])
    segments, units = tok(str(tmp_path / "new.wav"))
    assert len(units) == len(segments) > 0 and segments[-1, 1] <= 3.0 + 1e-6
    assert 0 <= units.min() and units.max() < tok.vocab_size


def test_losspred_precision_is_bf16_only_where_it_runs_natively(monkeypatch):
    import experiments.demo as demo

    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(demo, "native_bf16", lambda accelerator, native=native: native)
        assert demo.losspred_precision("auto", "cpu") == expected
        assert demo.losspred_precision("32-true", "cpu") == "32-true"  # an explicit choice is kept
    monkeypatch.undo()
    assert isinstance(demo.native_bf16("cpu"), bool)
    import torch
    assert demo.native_bf16("gpu") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_write_config_rewrites_each_path_once(tmp_path):
    """A workdir whose own path holds ``runs/tiny`` or ``data/synth`` (e.g. ``runs/tiny_fs``) stays as given."""
    import yaml

    from experiments.stage_runner import write_config

    wd = tmp_path / "runs" / "tiny_fs" / "data" / "synth"
    cfg = yaml.safe_load(write_config("teacher.yaml", wd / "teacher.yaml", wd, lambda c: None).read_text())
    assert cfg["data"]["init_args"]["train_dirs"] == [str(wd / "data/synth/train")]
    assert cfg["data"]["init_args"]["label_dir"] == str(wd / "runs/labels")
    assert cfg["trainer"]["default_root_dir"] == str(wd / "runs/teacher")


def test_stage_runner_skips_finished_stages_and_resumes_interrupted_fits(tmp_path):
    """A stage counts as finished only once it exited 0 (its marker), not because its output exists (a fit
    writes last.ckpt after its first epoch); an interrupted fit continues from its checkpoint."""
    from experiments.stage_runner import Runner

    run = Runner(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("partial")  # what an interrupted stage leaves
    run.run("help", ["synth", "--help"], done=out)
    assert run.timings["help"]["seconds"] > 0 and (tmp_path / "logs" / "help.done").exists()
    run.run("help", ["synth", "--help"], done=out)
    assert run.timings["help"].get("seconds") is not None  # the first run's record: the rerun was skipped
    run2 = Runner(tmp_path)
    run2.run("help", ["synth", "--help"], done=out)
    assert run2.timings["help"] == {"skipped": True}
    (tmp_path / "logs" / "help.done").unlink()
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_text("x")
    run2.run("help", ["synth", "--help"], done=out, resume=ckpt)
    assert (tmp_path / "logs" / "help.done").read_text().split()[-2:] == ["--ckpt_path", str(ckpt)]
    with pytest.raises(RuntimeError, match="stage bad failed"):
        run2.run("bad", ["synth", "--no-such-option"])
    assert not (tmp_path / "logs" / "bad.done").exists()
