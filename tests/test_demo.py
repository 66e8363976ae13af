"""`syllablelm demo --tiny`: the whole pipeline end to end (a functional test, not a timed one)."""
import json

import numpy as np
import pytest
import soundfile as sf

from experiments.demo import losspred_precision
from syllablelm import Tokenizer


@pytest.mark.slow
def test_tiny_demo_writes_a_report_and_a_working_tokenizer(tiny_demo, tmp_path):
    report = json.loads((tiny_demo / "report.json").read_text())
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
    from experiments.demo_scores import SYLBOOST_START
    from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig
    from syllablelm.checkpoints import load_encoder
    from syllablelm.evaluation.scoring import tuned_scores

    start = report["baselines"][SYLBOOST_START]
    wd = tiny_demo
    splits = [load_split([str(wd / "data/synth" / s)], str(wd / "data/synth/alignments")) for s in ("test", "dev")]
    backbone = load_encoder(SHIPPED / "backbone", layer=start["params"]["layer"]).eval()
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
    md = (tiny_demo / "report.md").read_text()
    assert "SylBoost iteration 2 beats LossPred: F1 " in md and "paired bootstrap over its" in md
    assert "SylBoost iteration 1 beats its start: F1 " in md and "sylboost beats its start" not in md
    for figure in ("f1_rvalue.png", "boundaries.png", "lm_pairs.png"):
        assert f"figures/{figure}" in md and (tiny_demo / "figures" / figure).stat().st_size > 1000
    # the checkpoint named in the report tokenizes a file it has never seen, at another sample rate
    t = np.arange(3 * 22050) / 22050
    wave = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * 0.3
    sf.write(tmp_path / "new.wav", wave, 22050)
    tok = Tokenizer.from_pretrained(report["tokenizer_checkpoint"])
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
    marker = tmp_path / "logs" / "help.done.json"
    assert run.timings["help"]["seconds"] > 0 and marker.exists()
    run.run("help", ["synth", "--help"], done=out)
    assert run.timings["help"].get("seconds") is not None  # the first run's record: the rerun was skipped
    run2 = Runner(tmp_path)
    run2.run("help", ["synth", "--help"], done=out)
    assert run2.timings["help"] == {**json_timing(marker), "skipped": True}  # the original timing, read back
    marker.unlink()
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_text("x")
    run2.run("help", ["synth", "--help"], done=out, resume=ckpt)
    assert json.loads(marker.read_text())["argv"][-2:] == ["--ckpt_path", str(ckpt)]
    with pytest.raises(RuntimeError, match="stage bad failed \\(exit 2\\): syllablelm synth: error: .*; log: "):
        run2.run("bad", ["synth", "--no-such-option"])
    assert not (tmp_path / "logs" / "bad.done.json").exists()


def json_timing(marker) -> dict:
    m = json.loads(marker.read_text())
    return {k: m[k] for k in ("seconds", "peak_rss_mb", "attempt", "finished", "peak_rss_scope")}


def _fake_demo_workdir(wd):
    """A demo workdir as a rerun finds it after boundary version 2 lost a shard (issue 25, item 4): a 2-voice test
    and dev split with alignments, boundary versions 0 and 1, version 2's manifest without its shard, an
    evaluation with a baseline, units and LM pairs; no teacher or SylBoost checkpoint."""
    import soundfile as sf

    from datamodules.aligned import load_split
    from datamodules.boundary_store import BoundaryStore
    from syllablelm.evaluation.scoring import uniform_baseline
    from tests.conftest import burst_wave

    rng = np.random.default_rng(0)
    refs = {}
    for split, speakers in (("test", (1, 2)), ("dev", (3, 4))):
        for spk in speakers:
            for n in range(3):
                uid = f"{spk}-100-{n:04d}"
                wave, regions = burst_wave(rng, 2.0)
                (wd / "data/synth" / split / str(spk) / "100").mkdir(parents=True, exist_ok=True)
                sf.write(wd / "data/synth" / split / str(spk) / "100" / f"{uid}.flac", wave, 16000)
                rows = [[a, b, "s"] for a, b in regions]
                (wd / "data/synth/alignments").mkdir(parents=True, exist_ok=True)
                (wd / "data/synth/alignments" / f"{uid}.json").write_text(json.dumps(
                    {"words": rows, "syllables": rows, "phones": rows}))
                refs[uid] = np.array(regions)
    store = BoundaryStore(wd / "runs/boundaries")
    for version in (0, 1, 2):
        store.write_shard(version, 0, 1, {u: r + 0.01 * version for u, r in refs.items()})
        store.finalize(version, 1)
    store.shard_path(2, 0, 1).unlink()
    splits = [load_split([str(wd / "data/synth" / s)], str(wd / "data/synth/alignments")) for s in ("test", "dev")]
    _, baselines = uniform_baseline(*splits, 4.5, per="file")
    (wd / "runs/evaluate.json").write_text(json.dumps({
        "baselines": baselines,
        "tokenizer": {"clustering": {"cpur": 0.5, "spur": 0.5, "snmi": 0.5},
                      "tokens": {"token_rate": 5.0, "dedup_token_rate": 4.0, "dedup_nominal_bps": 20.0,
                                 "dedup_entropy_bps": 18.0}},
        "lm_pairs": {"lexical": {"num_pairs": 6, "summed": {"all": {"accuracy": 0.5}},
                                 "normalised": {"all": {"accuracy": 0.6}}}}}))


def test_a_report_names_every_missing_section_and_keeps_recorded_timings(tmp_path):
    """Never a silently shorter report: the lost iteration-2 version, SylBoost's start and the figure that need
    absent files each get a ``missing:`` line saying why and which stage to rerun, the checks that need them too;
    the header's timings are the stages' recorded ones plus this run's own."""
    from experiments.demo_scores import write_demo_scores
    from experiments.report import build_report

    wd = tmp_path / "demo"
    _fake_demo_workdir(wd)
    # the evaluate stage's part (it scores in-process with its own baselines), then the report from the JSON
    write_demo_scores(wd, json.loads((wd / "runs/evaluate.json").read_text())["baselines"])
    timings = {"losspred": {"seconds": 10.0, "peak_rss_mb": 300.0, "attempt": 1, "skipped": True},
               "sylboost": {"seconds": 20.0, "peak_rss_mb": 500.0, "attempt": 2}}
    report = build_report(wd, tokenizer=wd / "runs/tokenizer.ckpt", timings=timings, seconds=5.0, tiny=True,
                          shipped_teacher=True)
    assert json.loads((wd / "report.json").read_text())["missing"] == report["missing"]
    assert report["total_seconds"] == 35.0 and report["peak_rss_mb"] == 500.0
    assert set(report["stages"]) == {"LossPred", "SylBoost iteration 1"}
    whats = [m.split(" (")[0] for m in report["missing"]]
    assert whats == ["SylBoost iteration 2 boundaries", "SylBoost's start, untrained",
                     "check 'SylBoost iteration 2 beats LossPred' and its bootstrap",
                     "check 'SylBoost iteration 1 beats its start' and its bootstrap",
                     "check 'SylBoost iteration 2 beats iteration 1' and its bootstrap",
                     "figure boundaries.png"]
    it2 = report["missing"][0]
    assert "runs/boundaries/iter_2" in it2 and "shard-00000-of-00001.offsets.npy" in it2
    assert "rerun stage sylboost" in it2
    assert "runs/sylboost/checkpoints/last.ckpt is absent; rerun stage sylboost" in report["missing"][1]
    assert report["missing_causes"] == [report["missing"][i] for i in (0, 1, 5)]
    assert set(report["checks"]) == set(report["significance"]) == {"losspred_beats_uniform"}
    md = (wd / "report.md").read_text()
    assert "Incomplete report: 6 section(s) missing" in md and "total 35 s" in md and "peak memory 500 MB" in md
    for line in report["missing"]:
        assert f"- missing: {line}" in md
    assert "| SylBoost iteration 1 |" in md and "| lexical | 6 | 50.0 | 60.0 |" in md
    assert "| losspred | 10.0 | 300.0 | 1 | skipped (finished before) |" in md
    assert "figures/f1_rvalue.png" in md and "figures/boundaries.png" not in md
    # the evaluation lost too: its three sections are named, not dropped
    (wd / "runs/evaluate.json").unlink()
    report = build_report(wd, tokenizer=wd / "runs/tokenizer.ckpt", timings={}, seconds=1.0, tiny=True,
                          shipped_teacher=True)
    gone = [m for m in report["missing"] if "runs/evaluate.json is absent; rerun stage evaluate" in m]
    assert [m.split(" (")[0] for m in gone] == ["baselines", "units", "SpeechLM pair accuracy"]
    assert report["peak_rss_mb"] is None and "peak memory unknown" in (wd / "report.md").read_text()


def test_the_demo_exits_1_with_one_line_when_a_stage_fails_or_the_report_misses_a_section(tmp_path, monkeypatch,
                                                                                         capsys):
    import experiments.demo as demo
    import experiments.report as report
    from experiments.stage_runner import StageFailed

    def failing(run, *args):
        raise StageFailed("stage sylboost failed (exit 1): RuntimeError: boom; log: L")

    monkeypatch.setattr(demo, "run_stages", failing)
    assert demo.main(["--workdir", str(tmp_path), "--tiny"]) == 1
    assert capsys.readouterr().err == "syllablelm demo: stage sylboost failed (exit 1): RuntimeError: boom; log: L\n"
    monkeypatch.setattr(demo, "run_stages", lambda run, *args: (tmp_path / "t.ckpt", tmp_path / "tok.ckpt"))
    monkeypatch.setattr(report, "build_report", lambda wd, **kw: {
        "missing": ["SylBoost iteration 2 boundaries (x)", "check (needs it)"],
        "missing_causes": ["SylBoost iteration 2 boundaries (x)"], "total_seconds": 1.0})
    assert demo.main(["--workdir", str(tmp_path), "--tiny"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"syllablelm demo: the report misses 2 section(s): SylBoost iteration 2 boundaries (x) (and 1 "
                   f"that need them); see {tmp_path / 'report.md'}"]
