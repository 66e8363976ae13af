"""The demo's report as markdown (``DIR/report.md``), rendered from the report dict alone.

:func:`markdown` reads only the dict that :func:`experiments.report.build_report` writes to ``report.json`` (or a
report.json read back, as ``syllablelm speech-demo`` does when it adds its sections): it opens no file and computes
no score. Its sections follow the report's: a five-line summary, the boundary tables with the note on the two shift
settings, the checks and their paired bootstraps, the figures, the units, the SpeechLM pairs, the speech-out
sections (:func:`experiments.speech_eval.markdown_lines`) and the stages' timings; a section the dict names missing
reads ``missing: what (why)`` where it belongs.
"""
from __future__ import annotations

from experiments.demo_scores import CHECK_LABELS, STAGES, SYLBOOST_START, losspred_uniform_name
from experiments.stage_state import duration

__all__ = ["markdown", "baseline_label", "PAIR_NAMES", "CHANCE"]
# what each LM pair set asks (experiments/pairs.py makes them; evaluate scores them)
PAIR_SETS = {"lexical": "a real word vs a nonword (sWUGGY-like)",
             "syntactic": "a grammatical sentence vs one with a violation (sBLIMP-like)",
             "tsc": "the right story ending vs a random one"}
PAIR_NAMES = {"lexical": "lexical", "syntactic": "syntactic", "tsc": "tSC"}
CHANCE = 0.5


def baseline_label(name: str, res: dict) -> str:
    """A baseline's name for readers: ``uniform, 5.85 Hz (LossPred's rate)`` for ``uniform_5.85215hz``."""
    params = res.get("params") or {}
    kind = ("uniform" if name.startswith("uniform") else "log-mel min-cut" if name.startswith("mincut_logmel")
            else None)
    if kind is not None and params.get("per") == "file" and params.get("matched_hz") is not None:
        whose = "LossPred's rate" if params.get("matches") == "LossPred" else "the tokenizer's rate"
        return f"{kind}, {params['matched_hz']:.2f} Hz ({whose})"
    if kind is not None and params.get("rate_hz") is not None:
        return f"{kind}, {params['rate_hz']:g} segments per second of speech"
    if name == "envelope":
        return "envelope minima (tuned on dev)"
    return name


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _f1_r(res: dict) -> str:
    t = res["syllablelm_tuned"]
    return f"{_pct(t['f1'])} / {_pct(t['r_value'])}"


def _accuracy(acc: float, unit: str = "") -> str:
    """A pair accuracy in points, flagged when below chance."""
    return _pct(acc) + unit + (" (below chance)" if acc < CHANCE else "")


def _summary(r: dict) -> list[str]:
    """Five lines: what ran (corpus, stages, where, how long) and what it shows (the headline rows)."""
    corpus = r.get("corpus")
    if corpus:
        splits = corpus.get("splits") or {}
        voices = sum(s.get("speakers", 0) for s in splits.values())
        parts = ", ".join(f"{name} {s['utterances']}" for name, s in splits.items())
        size = (f"{corpus['utterances']} synthetic eSpeak utterances ({60 * corpus['hours']:.0f} min, {voices} "
                f"voices; {parts})")
    else:
        size = "a corpus of unknown size (runs/scores.json has none)"
    stages = list(r["timings"])
    total = duration(r["total_seconds"]) + (" plus unrecorded stages" if r.get("timings_unknown") else "")
    line1 = (f"- **What ran**: the {'tiny' if r['tiny'] else 'full'} demo on {size}; {len(stages)} "
             f"stage{'s' if len(stages) != 1 else ''} "
             f"({', '.join(stages)}) on {r.get('accelerator', 'cpu').upper()}, teacher {r['teacher']}; total "
             f"{total}.")
    rows = [(name, r["stages"][name]) for name in STAGES.values() if name in r["stages"]]
    uniform = losspred_uniform_name(r["baselines"])
    if uniform is not None:
        rows.append((r["baseline_labels"][uniform], r["baselines"][uniform]))
    others = {k: v for k, v in r["baselines"].items() if k not in (uniform, SYLBOOST_START)}
    if others:
        best = max(others, key=lambda k: others[k]["syllablelm_tuned"]["f1"])
        rows.append((f"best other baseline, {r['baseline_labels'][best]}", others[best]))
    line2 = ("- **Boundaries** (held-out test split, F1 / R-value, shift tuned on dev; the authors' setting in the "
             "tables below): "
             + ("; ".join(f"{name}: {_f1_r(res)}" for name, res in rows) if rows else "missing (see below)") + ".")
    checks = r.get("checks") or {}
    line3 = ("- **Checks** (higher on the test split, F1 and R-value, shift tuned on dev): " + (
        "; ".join(f"{CHECK_LABELS.get(k, k)}: {_yes_no(v)}" for k, v in checks.items()) if checks
        else "missing (see below)") + ".")
    units = r.get("units")
    if units:
        c, k = units["clustering"], units["tokens"]
        line4 = ("- **Units**: " + (f"SNMI {_pct(c['snmi'])} %, CPur {_pct(c['cpur'])} %; " if c else "")
                 + f"{k['dedup_token_rate']:.2f} tokens/s deduplicated, {k['dedup_entropy_bps']:.0f} bps entropy.")
    else:
        line4 = "- **Units**: missing (see below)."
    lm = r.get("lm_pairs") or {}
    line5 = ("- **SpeechLM pairs** (summed log-probability, chance 50 %): " + (
        ", ".join(f"{PAIR_NAMES.get(s, s)} {_accuracy(v['summed']['all']['accuracy'], ' %')}" for s, v in lm.items())
        if lm else "missing (see below)") + ".")
    return [line1, line2, line3, line4, line5, ""]


def _yes_no(res: dict) -> str:
    return ", ".join(f"{'F1' if m == 'f1' else 'R-value'} {'yes' if ok else 'no'}" for m, ok in res.items())


def _significance_lines(sig: dict) -> list[str]:
    """One bullet per check: the difference, its bootstrap interval and how often the first is not better."""
    if not sig:
        return []
    first = next(iter(sig.values()))
    lines = [f"How much of each difference the test split supports: paired bootstrap over its "
             f"{first.get('n_groups') or 'its'} voices and the {first['n_utterances']} utterances within them "
             f"({first['n_resamples']} resamples, {100 * first['level']:.0f} % intervals, points of F1 / "
             "R-value, each system at its dev-tuned shift; with few voices the intervals are wide):", ""]
    for name, res in sig.items():
        parts = [f"{'F1' if m == 'f1' else 'R-value'} {100 * v['difference']:+.1f} [{100 * v['low']:+.1f}, "
                 f"{100 * v['high']:+.1f}], not better in {100 * v['p_not_better']:.0f} % of resamples"
                 for m, v in res.items() if isinstance(v, dict)]
        lines.append(f"- {CHECK_LABELS.get(name, name)}: " + "; ".join(parts))
    return [*lines, ""]


def _start_lines(r: dict) -> list[str]:
    """What SylBoost's training adds over the features it starts from (the untrained-start row)."""
    start, sb = r["baselines"].get(SYLBOOST_START), r["stages"].get("SylBoost iteration 2")
    if start is None or sb is None:
        return []
    d = {m: 100 * (sb["syllablelm_tuned"][m] - start["syllablelm_tuned"][m]) for m in ("f1", "r_value")}
    return [f"`{SYLBOOST_START}` is SylBoost's backbone (the checkpoint every iteration starts from) cut the same "
            f"way with no SylBoost training; iteration 2 minus it (shift tuned on dev): F1 {d['f1']:+.1f}, R-value "
            f"{d['r_value']:+.1f} "
            "(the check below compares iteration 1 with it).", ""]


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


PAPER_ABSENT = "n/a"  # a row scored before the paper setting existed (an older runs/evaluate.json)


def _table(rows: dict, labels: dict | None = None) -> list[str]:
    """One row per segmenter: P, R, F1, R-value and shift of the dev-tuned setting (``syllablelm_tuned``), then
    F1, R-value and shift of the paper setting (``syllablelm_paper``), or n/a where the JSON has none."""
    out = ["| segmenter | rate (Hz) | P | R | F1 | R-value | shift (ms) | paper F1 | paper R-value | paper shift "
           "(ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in rows.items():
        t, p = res["syllablelm_tuned"], res.get("syllablelm_paper")
        paper = (f"{100 * p['f1']:.1f} | {100 * p['r_value']:.1f} | {1000 * p['shift']:+.0f}" if p
                 else " | ".join([PAPER_ABSENT] * 3))
        out.append(f"| {(labels or {}).get(name, name)} | {res['rate_hz']:.2f} | {100 * t['precision']:.1f} | "
                   f"{100 * t['recall']:.1f} | {100 * t['f1']:.1f} | {100 * t['r_value']:.1f} | "
                   f"{1000 * t['shift']:+.0f} | {paper} |")
    return out


def _settings_note(r: dict) -> list[str]:
    """What the two settings of the boundary tables are, with how many test utterances the paper one tuned on."""
    from syllablelm.evaluation.boundary_metrics import PAPER_TUNE_UTTERANCES

    rows = [*r["stages"].values(), *r["baselines"].values()]
    tuned_on = sorted({res["syllablelm_paper"]["tune_utterances"] for res in rows if "syllablelm_paper" in res})
    scored = sorted({res["num_utterances"] for res in r["stages"].values() if "num_utterances" in res})
    if tuned_on and (max(tuned_on) < PAPER_TUNE_UTTERANCES or tuned_on == scored):  # it tuned on every one
        here = (f"here all {' or '.join(map(str, tuned_on))} test utterances, so the shift is chosen on exactly "
                "the utterances it scores")
    elif tuned_on:
        here = f"here the first {PAPER_TUNE_UTTERANCES}"
    else:
        here = "no row has it"
    absent = [name for name, res in {**r["stages"], **r["baselines"]}.items() if "syllablelm_paper" not in res]
    lines = ["Two settings of the shift, both chosen by R-value over -60..+30 ms (ties to the most negative shift): "
             "**P, R, F1, R-value, shift**: tuned on the dev split and applied to the test split (setting `dev`, "
             "key `syllablelm_tuned`), the headline of this report. **paper F1, paper R-value, paper shift**: the "
             "authors' notebook setting, tuned on the first 50 utterances of the test split itself in manifest "
             f"order ({here}) and then scored on the whole split, those utterances included (setting "
             "`scored_first50`, key `syllablelm_paper`); it is partly an oracle, not a held-out result."]
    if absent:
        lines[0] += (f" `{PAPER_ABSENT}`: scored before the paper setting existed (runs/evaluate.json); rerun stage "
                     "evaluate.")
    return [*lines, ""]


def markdown(r: dict) -> str:
    missing = r.get("missing") or []
    figures = r.get("figures", ["f1_rvalue.png", "boundaries.png", "lm_pairs.png"])
    labels = r.get("baseline_labels") or {name: baseline_label(name, res) for name, res in r["baselines"].items()}
    uniform = losspred_uniform_name(r["baselines"])
    lines = [
        "# SyllableLM demo report", "",
        *_summary({**r, "baseline_labels": labels}),
        *([f"**Incomplete report: {len(missing)} section(s) missing**, each marked `missing:` where it belongs:", "",
           *(f"- {m}" for m in missing), ""] if missing else []),
        f"Teacher: {r['teacher']} ({r.get('teacher_detail', '')}); {'tiny run' if r['tiny'] else 'full demo'}; "
        f"on {r.get('accelerator', 'cpu').upper()}; {_header_timing(r)}. "
        f"Tokenizer checkpoint: `{r['tokenizer_checkpoint']}`.", "",
        "Synthetic eSpeak speech is far easier than LibriSpeech (the envelope baseline shows it): compare rows, "
        "do not quote absolute numbers.", "",
        "## Boundaries (held-out test split, protocol \"syllablelm\", 50 ms)", "",
        *_settings_note(r),
        *_table(r["stages"]), "",
        "### Baselines (the same split, protocol and both settings)", "",
        *(_table(r["baselines"], labels) if r["baselines"] else []), "",
        *_missing_lines(r, "boundaries"),
        "Each check compares at a matched rate: LossPred with uniform segments at its own rate "
        f"(`{labels.get(uniform, 'missing') if uniform else 'missing'}`), SylBoost with `evaluate`'s uniform and "
        "log-mel min-cut at the tokenizer's rate. LossPred's inference precision: "
        f"{r.get('losspred_precision') or '32-true'}.", "", *_start_lines(r),
        "Checks (higher on the test split, shift tuned on dev): " + "; ".join(
            f"{CHECK_LABELS.get(name, name)}: {_yes_no(res)}" for name, res in r.get("checks", {}).items()), "",
        *_missing_lines(r, "checks"),
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
        lines += ["Each set's accuracy is the share of its pairs in which the SpeechLM gives the right item the higher "
                  "log-probability: " + "; ".join(f"{PAIR_NAMES.get(s, s)}, {PAIR_SETS[s]}" for s in r["lm_pairs"]
                                                  if s in PAIR_SETS)
                  + ". Chance is 50 %; summed = total log-probability, length-normalised = per unit.", "",
                  "| set | pairs | summed | length-normalised |", "|---|---|---|---|"]
        lines += [f"| {s} | {v['num_pairs']} | {_accuracy(v['summed']['all']['accuracy'])} | "
                  f"{_accuracy(v['normalised']['all']['accuracy'])} |" for s, v in r["lm_pairs"].items()]
        below = [f"{PAIR_NAMES.get(s, s)} ({m})" for s, v in r["lm_pairs"].items()
                 for m, key in (("summed", "summed"), ("length-normalised", "normalised"))
                 if v[key]["all"]["accuracy"] < CHANCE]
        if below:
            lines += ["", f"Below chance: {', '.join(below)}: the SpeechLM prefers the wrong item of more pairs than "
                      "the right one; with this few pairs a set moves by several points per pair, so read it as no "
                      "better than chance rather than as a result."]
        lines += ["", "![LM pairs](figures/lm_pairs.png)", ""]
    lines += _missing_lines(r, "lm_pairs")
    from experiments.speech_eval import FINE_VARIANTS, markdown_lines

    for variant in FINE_VARIANTS:  # syllablelm speech-demo's sections (issue 29), one per fine-unit kind run
        if r.get(variant.key):
            lines += markdown_lines(r[variant.key])
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
