"""The demo's report is drawn from JSON alone (``runs/evaluate.json``, ``runs/scores.json``, the stages' markers):
built in a folder holding only those files, it says what they say, number for number."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

JSON_FILES = ("runs/evaluate.json", "runs/scores.json", "logs/*.done.json")
SCORED = ("stages", "baselines", "units", "lm_pairs", "checks", "significance", "missing", "corpus")


def copy_json(src: Path, dst: Path) -> Path:
    """Only the JSON files a report reads, from ``src`` into an empty ``dst``; no audio, store or model file."""
    for pattern in JSON_FILES:
        for path in src.glob(pattern):
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dst / path.relative_to(src))
    assert not [p for p in dst.rglob("*") if p.suffix in (".ckpt", ".npz", ".flac", ".wav", ".pt")]
    return dst


def _row(label: str, res: dict) -> str:
    """A boundary table's row: the dev-tuned setting, then the paper setting (n/a when the JSON predates it)."""
    t, p = res["syllablelm_tuned"], res.get("syllablelm_paper")
    assert t["tuning"] == "dev" and (p is None or p["tuning"] == "scored_first50")
    paper = f"{100 * p['f1']:.1f} | {100 * p['r_value']:.1f} | {1000 * p['shift']:+.0f}" if p else "n/a | n/a | n/a"
    return (f"| {label} | {res['rate_hz']:.2f} | {100 * t['precision']:.1f} | {100 * t['recall']:.1f} | "
            f"{100 * t['f1']:.1f} | {100 * t['r_value']:.1f} | {1000 * t['shift']:+.0f} | {paper} |")


def assert_report_is_the_json(wd: Path) -> tuple[dict, str]:
    """Every number of ``wd/report.json`` and ``report.md`` is the one in ``wd``'s evaluate.json and scores.json."""
    from experiments.demo_scores import CHECK_LABELS
    from experiments.report_markdown import baseline_label

    report = json.loads((wd / "report.json").read_text())
    md = (wd / "report.md").read_text()
    evaluation = json.loads((wd / "runs/evaluate.json").read_text())
    scores = json.loads((wd / "runs/scores.json").read_text())
    assert report["stages"] == scores["stages"] and report["corpus"] == scores["corpus"]
    assert report["baselines"] == {**evaluation["baselines"], **scores["baselines"]}
    assert list(report["baselines"]) == [*evaluation["baselines"], *scores["baselines"]]
    assert report["checks"] == scores["checks"] and report["significance"] == scores["significance"]
    assert report["units"] == evaluation.get("tokenizer") and report["lm_pairs"] == evaluation.get("lm_pairs")
    # which shift setting each number uses: in scores.json and report.json, and in the note above the tables
    assert report["shift_settings"] == scores["shift_settings"]
    assert set(scores["shift_settings"]) == {"syllablelm_tuned", "sdhubert_tuned", "syllablelm_paper"}
    assert "first 50 utterances of the scored split" in scores["shift_settings"]["syllablelm_paper"]
    assert "dev split" in scores["shift_settings"]["syllablelm_tuned"]
    assert ("**P, R, F1, R-value, shift**: tuned on the dev split" in md and "setting `dev`, key `syllablelm_tuned`"
            in md and "setting `scored_first50`, key `syllablelm_paper`" in md)
    for name, res in report["stages"].items():
        assert _row(name, res) in md
    for name, res in report["baselines"].items():
        label = baseline_label(name, res)
        assert report["baseline_labels"][name] == label and _row(label, res) in md
        assert not label.startswith(("uniform_", "mincut_logmel_"))  # readable, never the JSON key
    for name, ok in report["checks"].items():
        words = ", ".join(f"{'F1' if m == 'f1' else 'R-value'} {'yes' if v else 'no'}" for m, v in ok.items())
        assert f"{CHECK_LABELS[name]}: {words}" in md
    for name, sig in report["significance"].items():
        parts = [f"{label} {100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}], not better "
                 f"in {100 * v['p_not_better']:.0f} % of resamples"
                 for label, v in (("F1", sig["f1"]), ("R-value", sig["r_value"]))]
        assert f"- {CHECK_LABELS[name]}: {'; '.join(parts)}\n" in md
    for name, res in (report["lm_pairs"] or {}).items():
        cells = [f"{100 * res[k]['all']['accuracy']:.1f}" + (" (below chance)" if res[k]["all"]["accuracy"] < 0.5
                                                              else "") for k in ("summed", "normalised")]
        assert f"| {name} | {res['num_pairs']} | {cells[0]} | {cells[1]} |" in md
    if report["units"]:
        c, k = report["units"]["clustering"], report["units"]["tokens"]
        assert (f"CPur {100 * c['cpur']:.1f} %, SPur {100 * c['spur']:.1f} %, SNMI {100 * c['snmi']:.1f} %; token "
                f"rate {k['token_rate']:.2f} /s") in md
    for line in report["missing"]:
        assert f"- missing: {line}" in md
    # the first five lines say what ran and what it shows
    summary = md.split("\n\n")[1].splitlines()
    assert [line.split("**")[1] for line in summary] == ["What ran", "Boundaries", "Checks", "Units",
                                                         "SpeechLM pairs"]
    return report, md


def test_a_report_is_rebuilt_from_json_alone(tmp_path):
    """The fake demo workdir of tests/test_demo.py (boundary version 2 lost, no SylBoost or teacher checkpoint):
    its scores are computed once; a folder with only the JSON then gives the same report, its missing lines with
    their reasons included, and the timings the markers recorded."""
    from experiments.demo_scores import write_demo_scores
    from experiments.report import build_report, main
    from experiments.stage_state import StageState
    from tests.test_demo import _fake_demo_workdir

    wd = tmp_path / "demo"
    _fake_demo_workdir(wd)
    state = StageState(wd / "logs")
    state.finish(state.begin("evaluate", ["evaluate"]), ["evaluate"], outputs=[], seconds=12.0, peak_rss_mb=100.0)
    write_demo_scores(wd, json.loads((wd / "runs/evaluate.json").read_text())["baselines"])
    full = build_report(wd, tokenizer=wd / "runs/tokenizer.ckpt", tiny=True, shipped_teacher=True)
    only = copy_json(wd, tmp_path / "only_json")
    report = build_report(only, tokenizer=wd / "runs/tokenizer.ckpt", tiny=True, shipped_teacher=True)
    assert {k: report[k] for k in SCORED} == {k: full[k] for k in SCORED}
    assert report["timings"]["evaluate"]["seconds"] == 12.0 and report["peak_rss_mb"] == 100.0
    assert [m.split(" (")[0] for m in report["missing"]] == [
        "SylBoost iteration 2 boundaries", "SylBoost's start, untrained",
        "check 'SylBoost iteration 2 beats LossPred' and its bootstrap",
        "check 'SylBoost iteration 1 beats its start' and its bootstrap",
        "check 'SylBoost iteration 2 beats iteration 1' and its bootstrap", "figure boundaries.png"]
    assert_report_is_the_json(only)
    # a pair set below chance is flagged, in its table and in the summary
    evaluation = json.loads((only / "runs/evaluate.json").read_text())
    evaluation["lm_pairs"]["syntactic"] = {"num_pairs": 6, "summed": {"all": {"accuracy": 2 / 6}},
                                           "normalised": {"all": {"accuracy": 0.5}}}
    (only / "runs/evaluate.json").write_text(json.dumps(evaluation))
    assert main(["--workdir", str(only), "--tiny"]) == 1  # the standalone rebuild: its sections are missing
    _, md = assert_report_is_the_json(only)
    assert "| syntactic | 6 | 33.3 (below chance) | 50.0 |" in md and "syntactic 33.3 % (below chance)" in md
    assert "Below chance: syntactic (summed)" in md
    n_test = {res["num_utterances"] for res in report["stages"].values()}
    assert len(n_test) == 1 and n_test.pop() < 50
    assert f"(here all {report['stages']['LossPred']['num_utterances']} test utterances, so the shift" in md
    assert "`n/a`" not in md
    # baselines scored before the paper setting existed: n/a in its columns, and the note says why
    for res in evaluation["baselines"].values():
        del res["syllablelm_paper"]
    (only / "runs/evaluate.json").write_text(json.dumps(evaluation))
    main(["--workdir", str(only), "--tiny"])
    _, md = assert_report_is_the_json(only)
    assert "| n/a | n/a | n/a |" in md and "`n/a`: scored before the paper setting existed" in md
    assert "real word vs a nonword (sWUGGY-like)" in md and "grammatical sentence vs one with a violation" in md


def test_absent_or_damaged_scores_are_named_with_the_stage_to_rerun(tmp_path):
    from experiments.report import build_report
    from tests.test_demo import _fake_demo_workdir

    wd = tmp_path / "demo"
    _fake_demo_workdir(wd)
    only = copy_json(wd, tmp_path / "only_json")
    for content in (None, "{not json", json.dumps({"format": 0})):
        if content is not None:
            (only / "runs/scores.json").write_text(content)
        report = build_report(only, tokenizer=only / "runs/tokenizer.ckpt", timings={}, tiny=True,
                              shipped_teacher=True)
        cause = report["missing_causes"]
        assert len(cause) == 1 and cause[0].startswith("every score of the stages"), cause
        assert "runs/scores.json is " + ("absent" if content is None else "damaged") in cause[0]
        assert cause[0].endswith("rerun stage evaluate)")
        assert report["stages"] == {} and report["checks"] == {} and "uniform_4.5hz" in report["baselines"]
        assert {"boundaries", "checks", "figures"} <= set(report["missing_sections"])
        assert "figures/f1_rvalue.png" in (only / "report.md").read_text()  # evaluate's baselines still drawn


@pytest.mark.slow
def test_the_tiny_demo_report_is_rebuilt_from_its_json_alone(tiny_demo, tmp_path):
    """The session's tiny demo: its JSON files alone rebuild the same report (whole, figures included), every
    number equal to the JSON's."""
    from experiments.report import build_report

    original = json.loads((tiny_demo / "report.json").read_text())
    only = copy_json(tiny_demo, tmp_path / "only_json")
    report = build_report(only, tokenizer=Path(original["tokenizer_checkpoint"]), tiny=True,
                          shipped_teacher=True, losspred_precision=original["losspred_precision"])
    assert report["missing"] == [] and set(report["figures"]) == {"f1_rvalue.png", "boundaries.png",
                                                                  "lm_pairs.png"}
    for figure in report["figures"]:
        assert (only / "figures" / figure).stat().st_size > 1000
    assert {k: report[k] for k in SCORED} == {k: original[k] for k in SCORED}
    assert {s: t["seconds"] for s, t in report["timings"].items()} == {
        s: t["seconds"] for s, t in original["timings"].items()}
    assert_report_is_the_json(only)
    assert_report_is_the_json(tiny_demo)
