"""The demo's report, drawn from JSON alone: ``DIR/report.json``, ``DIR/report.md`` and the PNGs in ``DIR/figures``.

It reads three things and computes no score: ``runs/evaluate.json`` (units, the baselines, LM pairs; the
``evaluate`` stage), ``runs/scores.json`` (each stage's boundaries, uniform at LossPred's rate, SylBoost's start,
the checks with their paired bootstraps, the corpus's size and the example figure's data; the same stage, with
``--demo``: :mod:`experiments.demo_scores`) and the stages' markers (timings, :mod:`experiments.stage_state`). So
rebuilding a report takes seconds (``python -m experiments.report --workdir DIR``), needs no model file, and every
number it prints is the one in those files.

A report never drops a section silently: every section it knows it should have (each stage's boundary row, the
baselines, uniform at LossPred's rate, SylBoost's start, each check with its bootstrap, the figures, the units, the
LM pairs) is either there or replaced by a line ``missing: what (why: which file is absent or damaged, which stage
to rerun)``; report.json lists them in ``"missing"`` (and by section in ``"missing_sections"``), and the demo then
exits 1. Timings come from the stages' markers: a stage skipped on a rerun keeps the seconds and memory of the run
that made it; the total is their sum plus this run's own time.

This module gathers the report dict, draws the figures and writes both files; the markdown is rendered from the
dict alone by :func:`experiments.report_markdown.markdown`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.demo_scores import CHECK_LABELS, SCORES, SCORES_FORMAT, Missing, unpack
from experiments.report_markdown import CHANCE, PAIR_NAMES, baseline_label, markdown
from syllablelm.runtime.fileio import write_json, write_text

__all__ = ["build_report", "main"]
EVALUATION = Path("runs/evaluate.json")


def build_report(wd: Path, *, tokenizer: Path, timings: dict | None = None, seconds: float = 0.0, tiny: bool,
                 shipped_teacher: bool, accelerator: str = "cpu", losspred_precision: str | None = None) -> dict:
    """Read ``wd``'s JSON, draw the figures and write ``report.json`` and ``report.md``; returns the report.
    ``timings``: each stage's record as its marker has it (:attr:`experiments.stage_runner.Runner.timings`; None:
    read from ``wd/logs``); ``seconds``: this run's own time outside the stages. Sections whose inputs are absent
    or damaged are listed in ``report["missing"]`` (empty when the report is whole)."""
    wd = Path(wd)
    if timings is None:
        from experiments.stage_state import StageState

        timings = StageState(wd / "logs").timings()
    missing = Missing(wd)
    evaluation = _evaluation(wd, missing)
    scores = _scores(wd, missing)
    relay = lambda section: [missing.add(**m) for m in (scores or {}).get("missing", [])  # noqa: E731
                             if m["section"] == section]
    relay("boundaries")
    baselines = dict((evaluation or {}).get("baselines") or {})
    if evaluation is not None and not baselines:
        missing.add("boundaries", "baselines (uniform, envelope, log-mel min-cut)",
                    "runs/evaluate.json has none; rerun stage evaluate with --baselines")
    baselines.update((scores or {}).get("baselines") or {})
    units = (evaluation or {}).get("tokenizer")
    if evaluation is not None and units is None:
        missing.add("units", "units (clustering, token rates, bitrates)", "runs/evaluate.json has no 'tokenizer' "
                    "scores; rerun stage evaluate")
    lm_pairs = (evaluation or {}).get("lm_pairs")
    if evaluation is not None and not lm_pairs:
        missing.add("lm_pairs", "SpeechLM pair accuracy", "runs/evaluate.json has no 'lm_pairs'; rerun stage "
                    "evaluate with --lm and --pairs")
    relay("checks")
    relay("figures")
    recorded = [t for t in timings.values() if t.get("seconds") is not None]
    peaks = [t["peak_rss_mb"] for t in timings.values() if t.get("peak_rss_mb") is not None]
    report = {
        "tokenizer_checkpoint": str(tokenizer), "tiny": tiny, "accelerator": accelerator,
        "losspred_precision": losspred_precision,
        "teacher": "shipped" if shipped_teacher else "trained here",
        "teacher_detail": ("LossPred: the shipped HuBERT iteration 2 (labels: k-means of the shipped iteration 1's "
                           "layer 2); SylBoost starts from the shipped backbone (iteration 1 distilled on envelope "
                           "segments of the recipe corpus: a syllabic prior)" if shipped_teacher else
                           "one teacher trained here on MFCC k-means labels: LossPred and SylBoost's start"),
        "corpus": (scores or {}).get("corpus"),
        "stages": dict((scores or {}).get("stages") or {}), "baselines": baselines, "units": units,
        "lm_pairs": lm_pairs,
        "baseline_labels": {name: baseline_label(name, res) for name, res in baselines.items()},
        "check_labels": dict(CHECK_LABELS),
        "read": [str(EVALUATION), str(SCORES), "logs/*.done.json"],
        "timings": timings, "own_seconds": round(seconds, 1),
        "total_seconds": round(sum(t["seconds"] for t in recorded) + seconds, 1),
        "timings_unknown": [s for s, t in timings.items() if t.get("seconds") is None],
        "peak_rss_mb": max(peaks) if peaks else None,
        "checks": dict((scores or {}).get("checks") or {}),
        "shift_settings": (scores or {}).get("shift_settings"),
        "significance": dict((scores or {}).get("significance") or {}),
    }
    from experiments.speech_eval import FINE_VARIANTS

    for variant in FINE_VARIANTS:  # written by syllablelm speech-demo (one per fine-unit kind); kept on a rebuild
        speech = wd / variant.runs / "speech_out.json"
        if speech.exists():
            report[variant.key] = json.loads(speech.read_text())
    _figures(report, wd, (scores or {}).get("example"), missing)
    report["missing"], report["missing_sections"] = missing.lines(), missing.by_section()
    report["missing_causes"] = [f"{m['what']} ({m['why']})" for m in missing.items if not m["because"]]
    write_text(wd / "report.md", markdown(report))
    write_json(wd / "report.json", report, indent=1)
    return report


def _read(path: Path) -> tuple[dict | None, str | None]:
    """``(the JSON object, None)`` or ``(None, why not)``, naming the path and the stage that writes it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path} is absent; rerun stage evaluate"
    except (OSError, ValueError) as e:
        return None, f"{path} is damaged ({e}); rerun stage evaluate"
    if not isinstance(data, dict):
        return None, f"{path} is damaged (not a JSON object); rerun stage evaluate"
    return data, None


def _evaluation(wd: Path, missing: Missing) -> dict | None:
    """``runs/evaluate.json`` (units, baselines, LM pairs), or None with every section it holds named missing."""
    evaluation, why = _read(wd / EVALUATION)
    if evaluation is None:
        missing.add("boundaries", "baselines (uniform, envelope, log-mel min-cut)", why)
        missing.add("units", "units (clustering, token rates, bitrates)", why)
        missing.add("lm_pairs", "SpeechLM pair accuracy", why)
    return evaluation


def _scores(wd: Path, missing: Missing) -> dict | None:
    """``runs/scores.json`` (:mod:`experiments.demo_scores`), or None with the sections it holds named missing."""
    scores, why = _read(wd / SCORES)
    if scores is not None:
        absent = [k for k in ("stages", "baselines", "checks", "significance", "missing") if k not in scores]
        if scores.get("format") != SCORES_FORMAT or absent:
            why = (f"{wd / SCORES} is damaged (format {scores.get('format')!r}, expected {SCORES_FORMAT}"
                   f"{', without ' + ', '.join(absent) if absent else ''}); rerun stage evaluate")
            scores = None
    if scores is None:
        missing.add("boundaries", "every score of the stages (each stage's boundaries, uniform at LossPred's rate, "
                    "SylBoost's start)", why)
        missing.add("checks", "the checks and their paired bootstraps", f"need {SCORES}, missing above",
                    because=True)
        missing.add("figures", "figure boundaries.png (spectrogram, boundaries, LossPred matrix)",
                    f"needs {SCORES}, missing above", because=True)
    return scores


# ---------------------------------------------------------------------------------------------- figures
def _figures(report: dict, wd: Path, example: dict | None, missing: Missing) -> None:
    """Draw the figures into ``wd/figures`` from the JSON; each one that cannot be drawn is named missing."""
    import matplotlib

    matplotlib.use("Agg")
    figures = wd / "figures"
    report["figures"] = []
    if example is not None:
        try:
            _example_figure(example, figures / "boundaries.png")
            report["figures"].append("boundaries.png")
        except (KeyError, TypeError, ValueError) as e:
            missing.add("figures", "figure boundaries.png (spectrogram, boundaries, LossPred matrix)",
                        f"{wd / SCORES} has a damaged 'example' ({type(e).__name__}: {e}); rerun stage evaluate")
    tuned = lambda res: res["syllablelm_tuned"]  # noqa: E731
    groups = {name: (tuned(r)["f1"], tuned(r)["r_value"]) for name, r in report["stages"].items()}
    groups.update({report["baseline_labels"][name]: (tuned(r)["f1"], tuned(r)["r_value"])
                   for name, r in report["baselines"].items()})
    if groups:
        _bars(figures / "f1_rvalue.png", groups, "boundaries on the test split (shift tuned on dev)")
        report["figures"].append("f1_rvalue.png")
    else:
        missing.add("figures", "figure f1_rvalue.png", "no boundary row, see above", because=True)
    if report["lm_pairs"]:
        lm = {f"{PAIR_NAMES.get(s, s)} ({m})": (r[m]["all"]["accuracy"],) for s, r in report["lm_pairs"].items()
              for m in ("summed", "normalised")}
        _bars(figures / "lm_pairs.png", lm, "SpeechLM pair accuracy", labels=("accuracy",), chance=CHANCE)
        report["figures"].append("lm_pairs.png")


def _example_figure(example: dict, path: Path) -> None:
    """Spectrogram + reference syllables + final SylBoost boundaries, above the LossPred matrix."""
    import numpy as np

    from syllablelm.evaluation.plots import boundary_figure, save_png

    fig = boundary_figure(unpack(example["wave"]), example["sample_rate"],
                          predicted=np.asarray(example["predicted"], dtype=np.float64).reshape(-1, 2),
                          reference=np.asarray(example["reference"], dtype=np.float64).reshape(-1, 2),
                          reference_labels=example["reference_labels"], matrix=unpack(example["matrix"]),
                          matrix_offset=example["matrix_offset"], title=example["title"])
    save_png(fig, path)


def _bars(path: Path, groups: dict[str, tuple[float, float]], title: str, labels=("F1", "R-value"),
          chance: float | None = None) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from syllablelm.evaluation.plots import save_png

    names = list(groups)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.6))
    for k, label in enumerate(labels):
        ax.bar(x + (k - 0.5) * 0.38, [100 * groups[n][k] for n in names], 0.38, label=label)
    if chance is not None:
        ax.axhline(100 * chance, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Rebuild a demo's report from its JSON (``python -m experiments.report --workdir DIR``): exit 0 when it is
    whole, 1 when it names a missing section."""
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=main.__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--tiny", action="store_true", help="the demo ran with --tiny")
    p.add_argument("--from-scratch", action="store_true", help="the demo ran with --from-scratch")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--losspred-precision", help="the precision LossPred ran in (default: the one its marker "
                   "records)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    wd = args.workdir.resolve()
    if args.losspred_precision is None:
        from experiments.stage_state import StageState

        marker = StageState(wd / "logs").read("losspred")
        given = [a.split("=", 1)[1] for a in (marker.argv if marker else []) if a.startswith("--trainer.precision=")]
        args.losspred_precision = given[-1] if given else None
    report = build_report(wd, tokenizer=wd / "runs" / "tokenizer.ckpt", tiny=args.tiny,
                          shipped_teacher=not args.from_scratch, accelerator=args.accelerator,
                          losspred_precision=args.losspred_precision, seconds=time.perf_counter() - t0)
    print(f"{wd / 'report.md'}" + (f": {len(report['missing'])} section(s) missing" if report["missing"] else ""))
    return 1 if report["missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
