"""The demo's report: every stage's boundaries beside the baselines, units, LM pairs, timings; JSON, Markdown, PNGs.

Boundary scores are on the held-out test split, protocol "syllablelm" (and "sdhubert"), with the shift tuned on
dev (docs/algorithms.md, "Evaluation"): LossPred = boundary version 0, SylBoost after iteration k = version k.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.aligned import aligned_entries, load_split  # noqa: E402
from datamodules.boundary_store import BoundaryStore  # noqa: E402
from datamodules.label_store import LabelStore  # noqa: E402
from syllablelm.audio import SAMPLE_RATE, read_audio  # noqa: E402
from syllablelm.evaluation import tuned_scores, uniform_baseline  # noqa: E402
from syllablelm.fileio import write_text  # noqa: E402
from syllablelm.plots import boundary_figure, save_png  # noqa: E402

STAGES = {0: "LossPred", 1: "SylBoost iteration 1", 2: "SylBoost iteration 2"}


def _split(wd: Path, split: str, cache: Path):
    entries, alignments, _ = aligned_entries([wd / "data/synth" / split], wd / "data/synth/alignments", cache=cache)
    return entries, {e.id: a["syllables"] for e, a in zip(entries, alignments)}


def stage_scores(wd: Path, cache: Path) -> dict:
    store = BoundaryStore(wd / "runs/boundaries")
    (test, ref_t), (dev, ref_d) = _split(wd, "test", cache), _split(wd, "dev", cache)
    out = {}
    for version, name in STAGES.items():
        if not store.is_complete(version):
            continue
        segs = store.load(version)
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
    within them (:mod:`syllablelm.significance`): boundary versions from the store, uniform at LossPred's rate
    recomputed on the same audio (``test_split`` as :func:`~datamodules.aligned.load_split` gives it, the rate
    stored beside its scores), SylBoost's start from ``start_segments`` (id -> segments). Each system at its own
    dev-tuned shift."""
    from syllablelm.audio import speech_regions
    from syllablelm.baselines import uniform_segments
    from syllablelm.significance import paired_bootstrap, voice_of

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
    cache = wd / "cache"
    evaluation = json.loads((wd / "runs/evaluate.json").read_text())
    stages = stage_scores(wd, cache)
    baselines = dict(evaluation.get("baselines", {}))
    splits = [load_split([str(wd / "data/synth" / s)], str(wd / "data/synth/alignments"), cache=str(cache))
              for s in ("test", "dev")]
    if baselines and "LossPred" in stages:
        name, res = losspred_uniform(splits, stages["LossPred"])
        baselines[name if name not in baselines else f"{name}_losspred"] = res
    sylboost_ckpt = wd / "runs/sylboost/checkpoints/last.ckpt"
    start_segments = None
    if sylboost_ckpt.exists():
        baselines[SYLBOOST_START], start_segments = sylboost_start(sylboost_ckpt, splits)
    report = {
        "tokenizer_checkpoint": str(tokenizer), "tiny": tiny, "accelerator": accelerator,
        "losspred_precision": losspred_precision,
        "teacher": "shipped" if shipped_teacher else "trained here",
        "teacher_detail": ("LossPred: the shipped HuBERT iteration 2 (labels: k-means of the shipped iteration 1's "
                           "layer 2); SylBoost starts from the shipped backbone (iteration 1 distilled on envelope "
                           "segments of the recipe corpus: a syllabic prior)" if shipped_teacher else
                           "one teacher trained here on MFCC k-means labels: LossPred and SylBoost's start"),
        "stages": stages, "baselines": baselines,
        "units": evaluation["tokenizer"], "lm_pairs": evaluation.get("lm_pairs"),
        "timings": timings, "total_seconds": round(seconds, 1),
        "peak_rss_mb": max((t.get("peak_rss_mb", 0) for t in timings.values()), default=0),
    }
    tuned = lambda res: res["syllablelm_tuned"]  # noqa: E731
    if "LossPred" in stages and "SylBoost iteration 2" in stages:
        uniform = baselines.get(_losspred_uniform_name(baselines))
        sb, lp = tuned(stages["SylBoost iteration 2"]), tuned(stages["LossPred"])
        beats = lambda a, b: {m: b is not None and a[m] > b[m] for m in ("f1", "r_value")}  # noqa: E731
        start = baselines.get(SYLBOOST_START)
        report["checks"] = {"sylboost_beats_losspred": beats(sb, lp),
                            "losspred_beats_uniform": beats(lp, None if uniform is None else tuned(uniform))}
        if start is not None and "SylBoost iteration 1" in stages:
            report["checks"]["sylboost_beats_its_start"] = beats(tuned(stages["SylBoost iteration 1"]), tuned(start))
        report["significance"] = significance(wd, cache, stages, baselines, splits[0], start_segments)
    figures = wd / "figures"
    store = BoundaryStore(wd / "runs/boundaries")
    _example_figure(wd, teacher_ckpt, store, cache, figures / "boundaries.png")
    groups = {name: (tuned(r)["f1"], tuned(r)["r_value"]) for name, r in {**stages, **baselines}.items()}
    _bars(figures / "f1_rvalue.png", groups, "boundaries on the test split (shift tuned on dev)")
    if report["lm_pairs"]:
        lm = {f"{s} ({m})": (r[m]["all"]["accuracy"],) for s, r in report["lm_pairs"].items()
              for m in ("summed", "normalised")}
        _bars(figures / "lm_pairs.png", lm, "SpeechLM pair accuracy", labels=("accuracy",), chance=0.5)
    write_text(wd / "report.md", markdown(report))
    return report


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


def markdown(r: dict) -> str:
    rows = ["| segmenter | rate (Hz) | P | R | F1 | R-value | shift (ms) |", "|---|---|---|---|---|---|---|"]
    for name, res in {**r["stages"], **r["baselines"]}.items():
        t = res["syllablelm_tuned"]
        rows.append(f"| {name} | {res['rate_hz']:.2f} | {100 * t['precision']:.1f} | {100 * t['recall']:.1f} | "
                    f"{100 * t['f1']:.1f} | {100 * t['r_value']:.1f} | {1000 * t['shift']:+.0f} |")
    u = r["units"]
    c, k = u["clustering"], u["tokens"]
    lines = [
        "# SyllableLM demo report", "",
        f"Teacher: {r['teacher']} ({r.get('teacher_detail', '')}); {'tiny run' if r['tiny'] else 'full demo'}; "
        f"on {r.get('accelerator', 'cpu').upper()}; "
        f"total {r['total_seconds']:.0f} s, "
        f"peak memory {r['peak_rss_mb']:.0f} MB. Tokenizer checkpoint: `{r['tokenizer_checkpoint']}`.", "",
        "Synthetic eSpeak speech is far easier than LibriSpeech (the envelope baseline shows it): compare rows, "
        "do not quote absolute numbers.", "",
        "## Boundaries (held-out test split, protocol \"syllablelm\", 50 ms, shift tuned on dev)", "", *rows, "",
        "Each check compares at a matched rate: LossPred with uniform at LossPred's rate "
        f"(`{_losspred_uniform_name(r['baselines'])}`), SylBoost with `evaluate`'s uniform and log-mel min-cut at "
        "the tokenizer's rate. LossPred's inference precision: "
        f"{r.get('losspred_precision') or '32-true'}.", "", *_start_lines(r),
        "Checks (higher on the test split): " + "; ".join(
            f"{name.replace('_', ' ')}: " + ", ".join(f"{m.replace('_', '-')} {'yes' if ok else 'no'}"
                                                      for m, ok in res.items())
            for name, res in r.get("checks", {}).items()), "", *_significance_lines(r.get("significance", {})),
        "![F1 and R-value](figures/f1_rvalue.png)", "",
        "![boundaries over a spectrogram and the LossPred matrix](figures/boundaries.png)", "",
        "## Units", "",
        f"Clustering (protocol \"{c.get('protocol', 'overlap')}\": Hungarian IoU matching): "
        f"CPur {100 * c['cpur']:.1f} %, SPur {100 * c['spur']:.1f} %, SNMI {100 * c['snmi']:.1f} %; "
        f"token rate {k['token_rate']:.2f} /s with one unit per segment (variant `authors_lm`, the authors' LM "
        f"input), {k['dedup_token_rate']:.2f} /s deduplicated after the merge (variant `dedup`); "
        f"{k['dedup_nominal_bps']:.0f} bps nominal, {k['dedup_entropy_bps']:.0f} bps entropy (after dedup).", "",
    ]
    if r.get("lm_pairs"):
        lines += ["## SpeechLM pair accuracy (chance 50 %)", "", "| set | pairs | summed | length-normalised |",
                  "|---|---|---|---|"]
        lines += [f"| {s} | {v['num_pairs']} | {100 * v['summed']['all']['accuracy']:.1f} | "
                  f"{100 * v['normalised']['all']['accuracy']:.1f} |" for s, v in r["lm_pairs"].items()]
        lines += ["", "![LM pairs](figures/lm_pairs.png)", ""]
    lines += ["## Stages", "", "| stage | seconds | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {s} | {t.get('seconds', 'skipped')} | {t.get('peak_rss_mb', '')} |" for s, t in r["timings"].items()]
    return "\n".join(lines) + "\n"
