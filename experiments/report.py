"""The demo's report: every stage's boundaries beside the baselines, units, LM pairs, timings; JSON, Markdown, PNGs.

Boundary scores are on the held-out test split, protocol "syllablelm" (and "sdhubert"), with the shift tuned on
dev (docs/algorithms.md, "Evaluation"): LossPred = boundary version 0, SylBoost after iteration k = version k.

A report never drops a section silently: every section it knows it should have (each stage's boundary row, the
baselines, uniform at LossPred's rate, SylBoost's start, each check with its bootstrap, the figures, the units, the
LM pairs) is either there or replaced by a line ``missing: what (why: which file is absent or damaged, which stage
to rerun)``; report.json lists them in ``"missing"`` (and by section in ``"missing_sections"``), and the demo then
exits 1. Timings come from the stages' markers (:mod:`experiments.stage_state`): a stage skipped on a rerun keeps
the seconds and memory of the run that made it; the total is their sum plus this run's own time.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.aligned import aligned_entries, load_split  # noqa: E402
from datamodules.boundary_store import BoundaryStore  # noqa: E402
from datamodules.label_store import LabelStore  # noqa: E402
from syllablelm.audio.io import SAMPLE_RATE, read_audio  # noqa: E402
from syllablelm.evaluation.plots import boundary_figure, save_png  # noqa: E402
from syllablelm.evaluation.scoring import tuned_scores, uniform_baseline  # noqa: E402
from syllablelm.runtime.fileio import write_json, write_text  # noqa: E402

STAGES = {0: "LossPred", 1: "SylBoost iteration 1", 2: "SylBoost iteration 2"}
MADE_BY = {0: "losspred", 1: "sylboost", 2: "sylboost"}  # the demo stage that writes each boundary version
# what reading a damaged or absent input can raise (store errors are ValueErrors naming the file; torch.load of a
# truncated checkpoint raises RuntimeError or an unpickling error)
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)
CKPT_ERRORS = (*READ_ERRORS, RuntimeError)


class Missing:
    """The sections a report lacks, each ``what (why)``, by section (``boundaries``, ``checks``, ``figures``,
    ``units``, ``lm_pairs``). ``because`` marks one that is missing only because another is (the demo's one-line
    message names the causes first)."""

    def __init__(self, wd: Path):
        self.wd, self.items = wd, []

    def add(self, section: str, what: str, why: str, because: bool = False) -> None:
        why = why.replace(f"{self.wd}/", "")  # paths relative to the workdir
        self.items.append({"section": section, "what": what, "why": why, "because": because})

    def lines(self) -> list[str]:
        return [f"{m['what']} ({m['why']})" for m in self.items]

    def by_section(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in self.items:
            out.setdefault(m["section"], []).append(f"{m['what']} ({m['why']})")
        return out


def _split(wd: Path, split: str, cache: Path):
    entries, alignments, _ = aligned_entries([wd / "data/synth" / split], wd / "data/synth/alignments", cache=cache)
    return entries, {e.id: a["syllables"] for e, a in zip(entries, alignments)}


def stage_scores(wd: Path, cache: Path, missing: Missing | None = None) -> dict:
    """Each stage's boundary scores (:data:`STAGES`); a version that is not whole is left out, and named in
    ``missing`` with why."""
    store = BoundaryStore(wd / "runs/boundaries")
    (test, ref_t), (dev, ref_d) = _split(wd, "test", cache), _split(wd, "dev", cache)
    out = {}
    for version, name in STAGES.items():
        try:  # load verifies sizes and checksums first: a damaged version is a store error naming the file
            segs = store.load(version)
        except READ_ERRORS as e:
            if missing is not None:
                missing.add("boundaries", f"{name} boundaries", f"{e}; rerun stage {MADE_BY[version]}")
            continue
        t = [e for e in test if e.id in segs]
        d = [e for e in dev if e.id in segs]
        res = tuned_scores([segs[e.id] for e in t], [ref_t[e.id][0] for e in t],
                    [segs[e.id] for e in d], [ref_d[e.id][0] for e in d])
        res["rate_hz"] = sum(len(segs[e.id]) for e in t) / max(1e-9, sum(e.seconds for e in t))
        res["num_utterances"] = len(t)
        out[name] = res
    return out


# (name, system a, system b): "a beats b", each a check of the report with its paired bootstrap
CHECKS = (("sylboost_beats_losspred", "SylBoost iteration 2", "LossPred"),
          ("losspred_beats_uniform", "LossPred", "uniform at LossPred's rate"),
          ("sylboost_beats_its_start", "SylBoost iteration 1", "SylBoost's start, untrained"),
          ("iteration_2_vs_iteration_1", "SylBoost iteration 2", "SylBoost iteration 1"))


def significance(wd: Path, cache: Path, stages: dict, baselines: dict, test_split, start_segments=None) -> dict:
    """Paired bootstrap of each check's difference (:data:`CHECKS`), resampling the test voices and the utterances
    within them (:mod:`syllablelm.evaluation.significance`): boundary versions from the store, uniform at LossPred's
    rate
    recomputed on the same audio (``test_split`` as :func:`~datamodules.aligned.load_split` gives it, the rate
    stored beside its scores), SylBoost's start from ``start_segments`` (id -> segments). Each system at its own
    dev-tuned shift."""
    from syllablelm.audio.io import speech_regions
    from syllablelm.boundaries.baselines import uniform_segments
    from syllablelm.evaluation.significance import paired_bootstrap, voice_of

    store = BoundaryStore(wd / "runs/boundaries")
    test, refs = _split(wd, "test", cache)
    systems = {name: (store.load(v), stages[name]) for v, name in STAGES.items() if name in stages}
    uniform = _losspred_uniform_name(baselines)
    if uniform is not None and "LossPred" in systems:
        rate, audio = baselines[uniform]["params"]["rate_hz"], dict(zip(test_split[2], test_split[0]))
        flat = {u: uniform_segments(w, SAMPLE_RATE, rate_hz=rate, regions=speech_regions(w, SAMPLE_RATE))
                for u, w in audio.items()}
        systems["uniform at LossPred's rate"] = (flat, baselines[uniform])
    if start_segments is not None and SYLBOOST_START in baselines:
        systems[SYLBOOST_START] = (start_segments, baselines[SYLBOOST_START])
    out = {}
    for name, a, b in CHECKS:
        if a in systems and b in systems:
            (sa, ra), (sb, rb) = systems[a], systems[b]
            t = [e for e in test if e.id in sa and e.id in sb]
            out[name] = paired_bootstrap([sa[e.id] for e in t], [sb[e.id] for e in t], [refs[e.id][0] for e in t],
                                         shift_a=ra["syllablelm_tuned"]["shift"],
                                         shift_b=rb["syllablelm_tuned"]["shift"],
                                         groups=[voice_of(e.id) for e in t])
    return out


def _example_figure(wd: Path, teacher_ckpt: Path, store: BoundaryStore, cache: Path, path: Path) -> None:
    """Spectrogram + reference syllables + final SylBoost boundaries, above the LossPred matrix."""
    from lightning_modules.teacher import TeacherModule

    test, refs = _split(wd, "test", cache)
    entry = min(test, key=lambda e: abs(e.seconds - 6.0))  # a readable length
    wave = read_audio(entry.path)
    labels = LabelStore(wd / "runs/labels").load(LabelStore(wd / "runs/labels").latest_version())[entry.id]
    teacher = TeacherModule.load_from_checkpoint(teacher_ckpt, map_location="cpu").eval()
    batch = {"ids": [entry.id], "waves": wave[None], "lengths": torch.tensor([len(wave)]),
             "offsets": torch.zeros(1, dtype=torch.float64), "labels": torch.from_numpy(labels.astype(np.int64))[None]}
    with torch.no_grad():
        out = teacher.losspred(batch, keep_matrices=1)
    matrix, trim = out["matrices"][0]
    final = store.load(max(v for v in STAGES if store.is_complete(v)))[entry.id]
    fig = boundary_figure(wave.numpy(), SAMPLE_RATE, predicted=final, reference=refs[entry.id][0],
                          reference_labels=refs[entry.id][1], matrix=matrix, matrix_offset=trim,
                          title=f"{entry.id}: SylBoost boundaries (white) vs reference syllables (cyan)")
    save_png(fig, path)


def _bars(path: Path, groups: dict[str, tuple[float, float]], title: str, labels=("F1", "R-value"),
          chance: float | None = None) -> None:
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


def losspred_uniform(splits, losspred: dict) -> tuple[str, dict]:
    """Uniform segments at LossPred's achieved rate on test (as many segments per second of audio), scored like
    every baseline; LossPred is checked against this one (``evaluate``'s uniform matches the tokenizer).
    ``splits``: test and dev as :func:`~datamodules.aligned.load_split` gives them."""

    name, results = uniform_baseline(*splits, losspred["rate_hz"], per="file")
    results[name]["params"]["matches"] = "LossPred"
    return name, results[name]


SYLBOOST_START = "SylBoost's start, untrained"


def sylboost_start(checkpoint: Path, splits) -> tuple[dict, dict]:
    """A SylBoost ``checkpoint``'s starting features (its frozen teacher: what every iteration starts from), cut by
    SylBoost's segmenter (same layer, mode and target rate; a δ calibrated to that rate is calibrated here on the
    start's dev features), with no SylBoost training: what the training adds over its backbone. Returns its scores
    and its test segments (utterance id -> segments)."""
    from lightning_modules.sylboost import SylBoostModule

    module = SylBoostModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    segmenter = module.boundary_segmenter()
    encoder = module.teacher.eval()
    (test_waves, test_refs, _), (dev_waves, dev_refs, _) = splits
    pred_test, pred_dev = segmenter.segments_calibrated(encoder.utterance_features(test_waves), test_waves,
                                                        encoder.utterance_features(dev_waves), dev_waves)
    res = tuned_scores(pred_test, test_refs, pred_dev, dev_refs)
    res["rate_hz"] = sum(map(len, pred_test)) / max(1e-9, sum(len(w) / SAMPLE_RATE for w in test_waves))
    c = segmenter.config
    res["params"] = {"mode": c.mode, "rate_hz": c.rate_hz, "calibrate_to_hz": c.calibrate_to_hz,
                     "delta": segmenter.delta, "vad_trim": c.vad_trim, "layer": module.hparams.feature_layer}
    return res, dict(zip(splits[0][2], pred_test))


def _losspred_uniform_name(baselines: dict) -> str | None:
    """The uniform baseline LossPred is checked against: the one at its rate, else the project's rate."""
    names = [k for k, v in baselines.items() if k.startswith("uniform") and not k.endswith("4.5hz") and "params" in v]
    return next((k for k in names if baselines[k]["params"].get("matches") == "LossPred"), names[0] if names else None)


def build_report(wd: Path, *, teacher_ckpt: Path, tokenizer: Path, timings: dict, seconds: float, tiny: bool,
                 shipped_teacher: bool, accelerator: str = "cpu", losspred_precision: str | None = None) -> dict:
    """Score everything in ``wd``, draw the figures and write ``report.json`` and ``report.md``; returns the report.
    ``timings``: each stage's record as its marker has it (:attr:`experiments.stage_runner.Runner.timings`);
    ``seconds``: this run's own time outside the stages. Sections whose inputs are absent or damaged are listed in
    ``report["missing"]`` (empty when the report is whole)."""
    cache = wd / "cache"
    missing = Missing(wd)
    evaluation = _evaluation(wd, missing)
    try:
        splits = [load_split([str(wd / "data/synth" / s)], str(wd / "data/synth/alignments"), cache=str(cache))
                  for s in ("test", "dev")]
        stages = stage_scores(wd, cache, missing)
    except READ_ERRORS as e:
        splits, stages = None, {}
        missing.add("boundaries", "every score on the test split (each stage's boundaries, SylBoost's start, the "
                    "checks, the figures)", f"the corpus in data/synth cannot be read: {e}; rerun stage synth")
    baselines = dict((evaluation or {}).get("baselines") or {})
    if evaluation is not None and not baselines:
        missing.add("boundaries", "baselines (uniform, envelope, log-mel min-cut)",
                    "runs/evaluate.json has none; rerun stage evaluate with --baselines")
    if splits is not None and "LossPred" in stages:
        name, res = losspred_uniform(splits, stages["LossPred"])
        baselines[name if name not in baselines else f"{name}_losspred"] = res
    elif splits is not None:
        missing.add("boundaries", UNIFORM_AT_LOSSPRED, "needs LossPred's boundaries, missing above", because=True)
    start_segments = None
    sylboost_ckpt = wd / "runs/sylboost/checkpoints/last.ckpt"
    if splits is not None:
        if not sylboost_ckpt.is_file():
            missing.add("boundaries", SYLBOOST_START, f"{sylboost_ckpt} is absent; rerun stage sylboost")
        else:
            try:
                baselines[SYLBOOST_START], start_segments = sylboost_start(sylboost_ckpt, splits)
            except CKPT_ERRORS as e:
                missing.add("boundaries", SYLBOOST_START, f"{sylboost_ckpt} cannot be read: {e}; rerun stage sylboost")
    units = (evaluation or {}).get("tokenizer")
    if evaluation is not None and units is None:
        missing.add("units", "units (clustering, token rates, bitrates)", "runs/evaluate.json has no 'tokenizer' "
                    "scores; rerun stage evaluate")
    lm_pairs = (evaluation or {}).get("lm_pairs")
    if evaluation is not None and not lm_pairs:
        missing.add("lm_pairs", "SpeechLM pair accuracy", "runs/evaluate.json has no 'lm_pairs'; rerun stage "
                    "evaluate with --lm and --pairs")
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
        "stages": stages, "baselines": baselines, "units": units, "lm_pairs": lm_pairs,
        "timings": timings, "own_seconds": round(seconds, 1),
        "total_seconds": round(sum(t["seconds"] for t in recorded) + seconds, 1),
        "timings_unknown": [s for s, t in timings.items() if t.get("seconds") is None],
        "peak_rss_mb": max(peaks) if peaks else None,
    }
    _checks(report, wd, cache, splits, start_segments, missing)
    _figures(report, wd, teacher_ckpt, cache, splits, missing)
    report["missing"], report["missing_sections"] = missing.lines(), missing.by_section()
    report["missing_causes"] = [f"{m['what']} ({m['why']})" for m in missing.items if not m["because"]]
    write_text(wd / "report.md", markdown(report))
    write_json(wd / "report.json", report, indent=1)
    return report


UNIFORM_AT_LOSSPRED = "uniform at LossPred's rate"


def _evaluation(wd: Path, missing: Missing) -> dict | None:
    """``runs/evaluate.json`` (units, baselines, LM pairs), or None with every section it holds named missing."""
    path = wd / "runs/evaluate.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        why = f"{path} is absent; rerun stage evaluate"
    except (OSError, ValueError) as e:
        why = f"{path} is damaged ({e}); rerun stage evaluate"
    missing.add("boundaries", "baselines (uniform, envelope, log-mel min-cut)", why)
    missing.add("units", "units (clustering, token rates, bitrates)", why)
    missing.add("lm_pairs", "SpeechLM pair accuracy", why)
    return None


def _checks(report: dict, wd: Path, cache: Path, splits, start_segments, missing: Missing) -> None:
    """Each check of :data:`CHECKS` ("a beats b", on the tuned test scores) and its paired bootstrap, or a missing
    line naming the system it lacks."""
    stages, baselines = report["stages"], report["baselines"]
    tuned = lambda res: res["syllablelm_tuned"]  # noqa: E731
    uniform = _losspred_uniform_name(baselines)
    rows = {**stages, **({UNIFORM_AT_LOSSPRED: baselines[uniform]} if uniform else {}),
            **({SYLBOOST_START: baselines[SYLBOOST_START]} if SYLBOOST_START in baselines else {})}
    checks = {}
    for name, a, b in CHECKS:
        absent = [x for x in (a, b) if x not in rows]
        if absent:
            missing.add("checks", f"check '{name.replace('_', ' ')}' and its bootstrap",
                        f"needs {' and '.join(absent)}, missing above", because=True)
            continue
        checks[name] = {m: tuned(rows[a])[m] > tuned(rows[b])[m] for m in ("f1", "r_value")}
    report["checks"] = checks
    report["significance"] = {}
    if checks:
        try:
            sig = significance(wd, cache, stages, baselines, splits[0], start_segments)
        except READ_ERRORS as e:
            missing.add("checks", "the paired bootstraps", f"{e}; rerun the stage that wrote it")
            return
        report["significance"] = {k: v for k, v in sig.items() if k in checks}


def _figures(report: dict, wd: Path, teacher_ckpt: Path, cache: Path, splits, missing: Missing) -> None:
    """Draw the figures into ``wd/figures``; each one that cannot be drawn is named missing with why."""
    figures, store = wd / "figures", BoundaryStore(wd / "runs/boundaries")
    report["figures"] = []
    labels = LabelStore(wd / "runs/labels")
    why = None
    if splits is None:
        why = "the corpus cannot be read, see above"
    elif not report["stages"]:
        why = "no boundary version is whole, see above"
    elif not teacher_ckpt.is_file():
        why = f"{teacher_ckpt} is absent; rerun the demo (it copies the shipped teacher there) or stage teacher"
    if why is None:
        try:
            if labels.latest_version() is None:
                why = f"{labels.root} has no complete version; rerun stage labels"
            else:
                _example_figure(wd, teacher_ckpt, store, cache, figures / "boundaries.png")
                report["figures"].append("boundaries.png")
        except CKPT_ERRORS as e:
            why = f"{e}; rerun the stage that wrote it"
    if why is not None:
        missing.add("figures", "figure boundaries.png (spectrogram, boundaries, LossPred matrix)", why,
                    because=why.endswith("see above"))
    tuned = lambda res: res["syllablelm_tuned"]  # noqa: E731
    groups = {name: (tuned(r)["f1"], tuned(r)["r_value"]) for name, r in {**report["stages"],
                                                                         **report["baselines"]}.items()}
    if groups:
        _bars(figures / "f1_rvalue.png", groups, "boundaries on the test split (shift tuned on dev)")
        report["figures"].append("f1_rvalue.png")
    else:
        missing.add("figures", "figure f1_rvalue.png", "no boundary row, see above", because=True)
    if report["lm_pairs"]:
        lm = {f"{s} ({m})": (r[m]["all"]["accuracy"],) for s, r in report["lm_pairs"].items()
              for m in ("summed", "normalised")}
        _bars(figures / "lm_pairs.png", lm, "SpeechLM pair accuracy", labels=("accuracy",), chance=0.5)
        report["figures"].append("lm_pairs.png")


def _significance_lines(sig: dict) -> list[str]:
    """One bullet per check: the difference, its bootstrap interval and how often the first is not better."""
    if not sig:
        return []
    first = next(iter(sig.values()))
    lines = [f"How much of each difference the test split supports: paired bootstrap over its "
             f"{first.get('n_groups') or 'its'} voices and the {first['n_utterances']} utterances within them "
             f"({first['n_resamples']} resamples, {100 * first['level']:.0f} % intervals, points of F1 / "
             "R-value; with few voices the intervals are wide):", ""]
    for name, res in sig.items():
        parts = [f"{m.replace('_', '-')} {100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}], "
                 f"not better in {100 * v['p_not_better']:.0f} % of resamples"
                 for m, v in res.items() if isinstance(v, dict)]
        lines.append(f"- {name.replace('_', ' ')}: " + "; ".join(parts))
    return [*lines, ""]


def _start_lines(r: dict) -> list[str]:
    """What SylBoost's training adds over the features it starts from (the untrained-start row)."""
    start, sb = r["baselines"].get(SYLBOOST_START), r["stages"].get("SylBoost iteration 2")
    if start is None or sb is None:
        return []
    d = {m: 100 * (sb["syllablelm_tuned"][m] - start["syllablelm_tuned"][m]) for m in ("f1", "r_value")}
    return [f"`{SYLBOOST_START}` is SylBoost's backbone (the checkpoint every iteration starts from) cut the same "
            f"way with no SylBoost training; iteration 2 minus it: F1 {d['f1']:+.1f}, R-value {d['r_value']:+.1f}.",
            ""]


def _missing_lines(r: dict, section: str) -> list[str]:
    """The ``missing: what (why)`` lines of one section (with a blank line after), or none."""
    items = r.get("missing_sections", {}).get(section, [])
    return [*(f"- missing: {m}" for m in items), ""] if items else []


def _header_timing(r: dict) -> str:
    """``total X s (...)``, from the stages' markers plus this run's own time; peak memory over the stages."""
    unknown = r.get("timings_unknown") or []
    total = f"total {r['total_seconds']:.0f} s" + (f" plus {', '.join(unknown)} (not recorded)" if unknown else "")
    own = r.get("own_seconds")
    total += f" (each stage as recorded when it ran, plus {own:.0f} s of this run's own)" if own is not None else ""
    peak = r.get("peak_rss_mb")
    return f"{total}, peak memory {'unknown' if peak is None else f'{peak:.0f} MB'}"


def markdown(r: dict) -> str:
    rows = ["| segmenter | rate (Hz) | P | R | F1 | R-value | shift (ms) |", "|---|---|---|---|---|---|---|"]
    for name, res in {**r["stages"], **r["baselines"]}.items():
        t = res["syllablelm_tuned"]
        rows.append(f"| {name} | {res['rate_hz']:.2f} | {100 * t['precision']:.1f} | {100 * t['recall']:.1f} | "
                    f"{100 * t['f1']:.1f} | {100 * t['r_value']:.1f} | {1000 * t['shift']:+.0f} |")
    missing = r.get("missing") or []
    figures = r.get("figures", ["f1_rvalue.png", "boundaries.png", "lm_pairs.png"])
    lines = [
        "# SyllableLM demo report", "",
        *([f"**Incomplete report: {len(missing)} section(s) missing**, each marked `missing:` where it belongs:", "",
           *(f"- {m}" for m in missing), ""] if missing else []),
        f"Teacher: {r['teacher']} ({r.get('teacher_detail', '')}); {'tiny run' if r['tiny'] else 'full demo'}; "
        f"on {r.get('accelerator', 'cpu').upper()}; {_header_timing(r)}. "
        f"Tokenizer checkpoint: `{r['tokenizer_checkpoint']}`.", "",
        "Synthetic eSpeak speech is far easier than LibriSpeech (the envelope baseline shows it): compare rows, "
        "do not quote absolute numbers.", "",
        "## Boundaries (held-out test split, protocol \"syllablelm\", 50 ms, shift tuned on dev)", "", *rows, "",
        *_missing_lines(r, "boundaries"),
        "Each check compares at a matched rate: LossPred with uniform at LossPred's rate "
        f"(`{_losspred_uniform_name(r['baselines'])}`), SylBoost with `evaluate`'s uniform and log-mel min-cut at "
        "the tokenizer's rate. LossPred's inference precision: "
        f"{r.get('losspred_precision') or '32-true'}.", "", *_start_lines(r),
        "Checks (higher on the test split): " + "; ".join(
            f"{name.replace('_', ' ')}: " + ", ".join(f"{m.replace('_', '-')} {'yes' if ok else 'no'}"
                                                      for m, ok in res.items())
            for name, res in r.get("checks", {}).items()), "", *_missing_lines(r, "checks"),
        *_significance_lines(r.get("significance", {})),
        *(["![F1 and R-value](figures/f1_rvalue.png)", ""] if "f1_rvalue.png" in figures else []),
        *(["![boundaries over a spectrogram and the LossPred matrix](figures/boundaries.png)", ""]
          if "boundaries.png" in figures else []),
        *_missing_lines(r, "figures"),
        "## Units", "",
    ]
    if r.get("units"):
        c, k = r["units"]["clustering"], r["units"]["tokens"]
        lines += [
            f"Clustering (protocol \"{c.get('protocol', 'overlap')}\": Hungarian IoU matching): "
            f"CPur {100 * c['cpur']:.1f} %, SPur {100 * c['spur']:.1f} %, SNMI {100 * c['snmi']:.1f} %; "
            f"token rate {k['token_rate']:.2f} /s with one unit per segment (variant `authors_lm`, the authors' LM "
            f"input), {k['dedup_token_rate']:.2f} /s deduplicated after the merge (variant `dedup`); "
            f"{k['dedup_nominal_bps']:.0f} bps nominal, {k['dedup_entropy_bps']:.0f} bps entropy (after dedup).", ""]
    lines += _missing_lines(r, "units")
    lines += ["## SpeechLM pair accuracy (chance 50 %)", ""]
    if r.get("lm_pairs"):
        lines += ["| set | pairs | summed | length-normalised |", "|---|---|---|---|"]
        lines += [f"| {s} | {v['num_pairs']} | {100 * v['summed']['all']['accuracy']:.1f} | "
                  f"{100 * v['normalised']['all']['accuracy']:.1f} |" for s, v in r["lm_pairs"].items()]
        lines += ["", "![LM pairs](figures/lm_pairs.png)", ""]
    lines += _missing_lines(r, "lm_pairs")
    lines += ["## Stages", "", "Times and memory as recorded when each stage ran (a stage skipped by a rerun keeps "
              "the record of the run that made it).", "",
              "| stage | seconds | peak RSS (MB) | attempt | this run |", "|---|---|---|---|---|"]
    for stage, t in r["timings"].items():
        seconds = t.get("seconds", "not recorded")
        peak = t.get("peak_rss_mb", "")
        if t.get("peak_rss_scope") == "process":
            peak = f"{peak} (process)"
        lines.append(f"| {stage} | {seconds} | {peak} | {t.get('attempt', '')} | "
                     f"{'skipped (finished before)' if t.get('skipped') else 'ran'} |")
    return "\n".join(lines) + "\n"
