"""The demo's own scores, computed once by its ``evaluate`` stage (``syllablelm evaluate ... --demo WORKDIR``) and
written to ``WORKDIR/runs/scores.json``; the report (:mod:`experiments.report`) only reads them.

Boundary scores are on the held-out test split, protocol "syllablelm" (and "sdhubert"), with the shift tuned on
dev (``syllablelm_tuned``, the headline) and, beside it, with the shift tuned as the authors' notebook does: on the
first 50 test utterances in manifest order, which for the demo's 25 is all of them (``syllablelm_paper``; each
entry's ``tuning`` and ``shift_settings`` say which; docs/algorithms.md, "Evaluation"). LossPred = boundary version
0, SylBoost after iteration k = version k. Beside them: uniform segments at LossPred's achieved rate, SylBoost's
untrained start (its backbone cut by its segmenter), each check of :data:`CHECKS` ("a beats b" on the dev-tuned
test scores) with its paired bootstrap, the
corpus's size (from ``data/synth/synth.json``) and the data of the example figure (one test utterance's audio, its
reference syllables, the final SylBoost boundaries and LossPred's matrix), so that ``report.md`` and its figures can
be rebuilt from JSON alone.

``scores.json``::

    {"format": 1, "corpus": {...} | null, "shift_settings": {KEY: how its shift was chosen},
     "stages": {NAME: scores}, "baselines": {NAME: scores},
     "checks": {CHECK: {"f1": bool, "r_value": bool}}, "significance": {CHECK: bootstrap},
     "missing": [{"section", "what", "why", "because"}], "example": {...} | null}

``baselines`` holds only what this module adds (uniform at LossPred's rate, SylBoost's start); ``evaluate.json``
has the others. A section that cannot be scored is not dropped: it is listed in ``missing`` with why (which file
is absent or damaged, which stage to rerun), and the report says ``missing: what (why)`` where it belongs.

This module imports nothing heavy at the top: the report takes its names and :class:`Missing` from here.
"""
from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

SCORES = Path("runs/scores.json")  # relative to the workdir
SCORES_FORMAT = 1
# the demo's layout (experiments/demo.py writes these)
BOUNDARIES, LABELS = Path("runs/boundaries"), Path("runs/labels")
SYLBOOST_CKPT = Path("runs/sylboost/checkpoints/last.ckpt")
TEACHER_CKPT = Path("runs/teacher/checkpoints/last.ckpt")  # LossPred's teacher (the shipped one is copied here)
CORPUS = Path("data/synth")

STAGES = {0: "LossPred", 1: "SylBoost iteration 1", 2: "SylBoost iteration 2"}
MADE_BY = {0: "losspred", 1: "sylboost", 2: "sylboost"}  # the demo stage that writes each boundary version
SYLBOOST_START = "SylBoost's start, untrained"
UNIFORM_AT_LOSSPRED = "uniform at LossPred's rate"
# (key, system a, system b, what the report calls it): "a beats b", each a check with its paired bootstrap
CHECKS = (("sylboost_beats_losspred", "SylBoost iteration 2", "LossPred", "SylBoost iteration 2 beats LossPred"),
          ("losspred_beats_uniform", "LossPred", UNIFORM_AT_LOSSPRED, "LossPred beats uniform at its rate"),
          ("sylboost_beats_its_start", "SylBoost iteration 1", SYLBOOST_START,
           "SylBoost iteration 1 beats its start"),
          ("iteration_2_vs_iteration_1", "SylBoost iteration 2", "SylBoost iteration 1",
           "SylBoost iteration 2 beats iteration 1"))
CHECK_LABELS = {key: label for key, _, _, label in CHECKS}
# what reading a damaged or absent input can raise (store errors are ValueErrors naming the file; torch.load of a
# truncated checkpoint raises RuntimeError or an unpickling error)
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)
CKPT_ERRORS = (*READ_ERRORS, RuntimeError)
EVERY_SCORE = ("every score on the test split (each stage's boundaries, SylBoost's start, the checks, the "
               "figures)")


class Missing:
    """The sections a report lacks, each ``what (why)``, by section (``boundaries``, ``checks``, ``figures``,
    ``units``, ``lm_pairs``). ``because`` marks one that is missing only because another is (the demo's one-line
    message names the causes first). Paths in ``why`` are made relative to the workdir ``wd``."""

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


def losspred_uniform_name(baselines: dict) -> str | None:
    """The uniform baseline LossPred is checked against: the one at its rate, else the project's rate."""
    names = [k for k, v in baselines.items() if k.startswith("uniform") and not k.endswith("4.5hz") and "params" in v]
    return next((k for k in names if baselines[k]["params"].get("matches") == "LossPred"), names[0] if names else None)


# ---------------------------------------------------------------------------------------------- scoring
def _split(wd: Path, split: str, cache: Path):
    from datamodules.aligned import aligned_entries

    entries, alignments, _ = aligned_entries([wd / CORPUS / split], wd / CORPUS / "alignments", cache=cache)
    return entries, {e.id: a["syllables"] for e, a in zip(entries, alignments)}


def stage_scores(wd: Path, cache: Path, missing: Missing) -> tuple[dict, dict]:
    """Each stage's boundary scores (:data:`STAGES`) and its segments (name -> utterance id -> segments); a version
    that is not whole is left out, and named in ``missing`` with why."""
    from datamodules.boundary_store import BoundaryStore
    from syllablelm.evaluation.scoring import tuned_scores

    store = BoundaryStore(wd / BOUNDARIES)
    (test, ref_t), (dev, ref_d) = _split(wd, "test", cache), _split(wd, "dev", cache)
    out, segments = {}, {}
    for version, name in STAGES.items():
        try:  # load verifies sizes and checksums first: a damaged version is a store error naming the file
            segs = store.load(version)
        except READ_ERRORS as e:
            missing.add("boundaries", f"{name} boundaries", f"{e}; rerun stage {MADE_BY[version]}")
            continue
        t = [e for e in test if e.id in segs]
        d = [e for e in dev if e.id in segs]
        res = tuned_scores([segs[e.id] for e in t], [ref_t[e.id][0] for e in t],
                           [segs[e.id] for e in d], [ref_d[e.id][0] for e in d])
        res["rate_hz"] = sum(len(segs[e.id]) for e in t) / max(1e-9, sum(e.seconds for e in t))
        res["num_utterances"] = len(t)
        out[name], segments[name] = res, segs
    return out, segments


def losspred_uniform(splits, losspred: dict) -> tuple[str, dict]:
    """Uniform segments at LossPred's achieved rate on test (as many segments per second of audio), scored like
    every baseline; LossPred is checked against this one (``evaluate``'s uniform matches the tokenizer).
    ``splits``: test and dev as :func:`~datamodules.aligned.load_split` gives them."""
    from syllablelm.evaluation.scoring import uniform_baseline

    name, results = uniform_baseline(*splits, losspred["rate_hz"], per="file")
    results[name]["params"]["matches"] = "LossPred"
    return name, results[name]


def sylboost_start(checkpoint: Path, splits) -> tuple[dict, dict]:
    """A SylBoost ``checkpoint``'s starting features (its frozen teacher: what every iteration starts from), cut by
    SylBoost's segmenter (same layer, mode and target rate; a δ calibrated to that rate is calibrated here on the
    start's dev features), with no SylBoost training: what the training adds over its backbone. Returns its scores
    and its test segments (utterance id -> segments)."""
    from lightning_modules.sylboost import SylBoostModule
    from syllablelm.audio.io import SAMPLE_RATE
    from syllablelm.evaluation.scoring import tuned_scores

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


def significance(test, refs, stages: dict, segments: dict, baselines: dict, test_split,
                 start_segments=None) -> dict:
    """Paired bootstrap of each check's difference (:data:`CHECKS`), resampling the test voices and the utterances
    within them (:mod:`syllablelm.evaluation.significance`): each stage's boundaries (``segments``), uniform at
    LossPred's rate recomputed on the same audio (``test_split`` as :func:`~datamodules.aligned.load_split` gives
    it, the rate stored beside its scores), SylBoost's start from ``start_segments`` (id -> segments). Each system
    at its own dev-tuned shift; ``test``/``refs``: the test entries and their references (:func:`_split`)."""
    from syllablelm.audio.io import SAMPLE_RATE, speech_regions
    from syllablelm.boundaries.baselines import uniform_segments
    from syllablelm.evaluation.significance import paired_bootstrap, voice_of

    systems = {name: (segments[name], stages[name]) for name in STAGES.values() if name in stages}
    uniform = losspred_uniform_name(baselines)
    if uniform is not None and "LossPred" in systems:
        rate, audio = baselines[uniform]["params"]["rate_hz"], dict(zip(test_split[2], test_split[0]))
        flat = {u: uniform_segments(w, SAMPLE_RATE, rate_hz=rate, regions=speech_regions(w, SAMPLE_RATE))
                for u, w in audio.items()}
        systems[UNIFORM_AT_LOSSPRED] = (flat, baselines[uniform])
    if start_segments is not None and SYLBOOST_START in baselines:
        systems[SYLBOOST_START] = (start_segments, baselines[SYLBOOST_START])
    out = {}
    for name, a, b, _ in CHECKS:
        if a in systems and b in systems:
            (sa, ra), (sb, rb) = systems[a], systems[b]
            t = [e for e in test if e.id in sa and e.id in sb]
            out[name] = paired_bootstrap([sa[e.id] for e in t], [sb[e.id] for e in t], [refs[e.id][0] for e in t],
                                         shift_a=ra["syllablelm_tuned"]["shift"],
                                         shift_b=rb["syllablelm_tuned"]["shift"],
                                         groups=[voice_of(e.id) for e in t])
    return out


def _checks(scores: dict, wd: Path, cache: Path, merged: dict, splits, segments: dict, start_segments,
            missing: Missing) -> None:
    """Each check of :data:`CHECKS` ("a beats b", on the dev-tuned test scores) and its paired bootstrap into
    ``scores``, or a missing line naming the system it lacks. ``merged``: every baseline (``evaluate``'s too)."""
    stages = scores["stages"]
    tuned = lambda res: res["syllablelm_tuned"]  # noqa: E731
    uniform = losspred_uniform_name(merged)
    rows = {**stages, **({UNIFORM_AT_LOSSPRED: merged[uniform]} if uniform else {}),
            **({SYLBOOST_START: merged[SYLBOOST_START]} if SYLBOOST_START in merged else {})}
    checks = {}
    for name, a, b, label in CHECKS:
        absent = [x for x in (a, b) if x not in rows]
        if absent:
            missing.add("checks", f"check '{label}' and its bootstrap", f"needs {' and '.join(absent)}, missing above",
                        because=True)
            continue
        checks[name] = {m: tuned(rows[a])[m] > tuned(rows[b])[m] for m in ("f1", "r_value")}
    scores["checks"], scores["significance"] = checks, {}
    if checks:
        try:
            test, refs = _split(wd, "test", cache)
            sig = significance(test, refs, stages, segments, merged, splits[0], start_segments)
        except READ_ERRORS as e:
            missing.add("checks", "the paired bootstraps", f"{e}; rerun the stage that wrote it")
            return
        scores["significance"] = {k: v for k, v in sig.items() if k in checks}


def pack(array) -> dict:
    """A numeric array as JSON: dtype, shape and its bytes in base64 (exact, and a third of a decimal list)."""
    import numpy as np

    a = np.ascontiguousarray(array)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def unpack(packed: dict):
    """The array :func:`pack` wrote."""
    import numpy as np

    data = np.frombuffer(base64.b64decode(packed["base64"]), dtype=np.dtype(packed["dtype"]))
    return data.reshape(packed["shape"])


def example_figure(wd: Path, cache: Path, stages: dict, corpus_readable: bool, missing: Missing) -> dict | None:
    """What the report's ``boundaries.png`` draws: a readable-length test utterance's audio, its reference
    syllables, the final SylBoost boundaries and the LossPred matrix of the teacher; or None, named missing."""
    teacher_ckpt = wd / TEACHER_CKPT
    why = None
    if not corpus_readable:
        why = "the corpus cannot be read, see above"
    elif not stages:
        why = "no boundary version is whole, see above"
    elif not teacher_ckpt.is_file():
        why = f"{teacher_ckpt} is absent; rerun the demo (it copies the shipped teacher there) or stage teacher"
    if why is None:
        from datamodules.label_store import LabelStore

        labels = LabelStore(wd / LABELS)
        try:
            if labels.latest_version() is None:
                why = f"{labels.root} has no complete version; rerun stage labels"
            else:
                return _example(wd, cache, teacher_ckpt, labels)
        except CKPT_ERRORS as e:
            why = f"{e}; rerun the stage that wrote it"
    missing.add("figures", "figure boundaries.png (spectrogram, boundaries, LossPred matrix)", why,
                because=why.endswith("see above"))
    return None


def _example(wd: Path, cache: Path, teacher_ckpt: Path, labels) -> dict:
    import numpy as np
    import torch

    from datamodules.boundary_store import BoundaryStore
    from lightning_modules.teacher import TeacherModule
    from syllablelm.audio.io import SAMPLE_RATE, read_audio

    store = BoundaryStore(wd / BOUNDARIES)
    test, refs = _split(wd, "test", cache)
    entry = min(test, key=lambda e: abs(e.seconds - 6.0))  # a readable length
    wave = read_audio(entry.path)
    frame_labels = labels.load(labels.latest_version())[entry.id]
    teacher = TeacherModule.load_from_checkpoint(teacher_ckpt, map_location="cpu").eval()
    teacher.use_label_store(str(labels.root), labels.latest_version())  # LossPred labels the trimmed wave (default)
    batch = {"ids": [entry.id], "waves": wave[None], "lengths": torch.tensor([len(wave)]),
             "offsets": torch.zeros(1, dtype=torch.float64),
             "labels": torch.from_numpy(frame_labels.astype(np.int64))[None]}
    with torch.no_grad():
        out = teacher.losspred(batch, keep_matrices=1)
    matrix, trim = out["matrices"][0]
    matrix = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    final = store.load(max(v for v in STAGES if store.is_complete(v)))[entry.id]
    return {"utterance": entry.id, "sample_rate": SAMPLE_RATE, "wave": pack(wave.numpy()),
            "predicted": np.asarray(final).tolist(), "reference": np.asarray(refs[entry.id][0]).tolist(),
            "reference_labels": list(refs[entry.id][1]), "matrix": pack(matrix), "matrix_offset": float(trim),
            "title": f"{entry.id}: SylBoost boundaries (white) vs reference syllables (cyan)"}


def corpus_summary(wd: Path) -> dict | None:
    """The synthesised corpus's size as ``synth`` recorded it (utterances, hours, per split with speakers), or
    None when ``data/synth/synth.json`` cannot be read."""
    try:
        synth = json.loads((wd / CORPUS / "synth.json").read_text())
        return {"utterances": synth["utterances"], "hours": synth["hours"], "splits": synth["splits"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shift_settings() -> dict[str, str]:
    """How the shift of each tuned key of a scores entry was chosen, for the readers of ``scores.json``."""
    from syllablelm.evaluation.scoring import SHIFT_SETTINGS

    return {"syllablelm_tuned": SHIFT_SETTINGS["dev"], "sdhubert_tuned": SHIFT_SETTINGS["dev"],
            "syllablelm_paper": SHIFT_SETTINGS["scored_first50"]}


def demo_scores(wd: Path, baselines: dict | None = None) -> dict:
    """Every score of the demo workdir ``wd`` (module docstring); ``baselines``: ``evaluate``'s (the uniform
    LossPred is checked against takes another name if one of them has its name)."""
    from datamodules.aligned import load_split

    wd = Path(wd)
    cache = wd / "cache"
    missing = Missing(wd)
    baselines = dict(baselines or {})
    scores: dict = {"format": SCORES_FORMAT, "corpus": corpus_summary(wd), "shift_settings": shift_settings()}
    segments: dict = {}
    try:
        splits = [load_split([str(wd / CORPUS / s)], str(wd / CORPUS / "alignments"), cache=str(cache))
                  for s in ("test", "dev")]
        stages, segments = stage_scores(wd, cache, missing)
    except READ_ERRORS as e:
        splits, stages = None, {}
        missing.add("boundaries", EVERY_SCORE, f"the corpus in data/synth cannot be read: {e}; rerun stage synth")
    added: dict = {}
    if splits is not None and "LossPred" in stages:
        name, res = losspred_uniform(splits, stages["LossPred"])
        added[name if name not in baselines else f"{name}_losspred"] = res
    elif splits is not None:
        missing.add("boundaries", UNIFORM_AT_LOSSPRED, "needs LossPred's boundaries, missing above", because=True)
    start_segments = None
    sylboost_ckpt = wd / SYLBOOST_CKPT
    if splits is not None:
        if not sylboost_ckpt.is_file():
            missing.add("boundaries", SYLBOOST_START, f"{sylboost_ckpt} is absent; rerun stage sylboost")
        else:
            try:
                added[SYLBOOST_START], start_segments = sylboost_start(sylboost_ckpt, splits)
            except CKPT_ERRORS as e:
                missing.add("boundaries", SYLBOOST_START, f"{sylboost_ckpt} cannot be read: {e}; rerun stage sylboost")
    scores.update(stages=stages, baselines=added)
    _checks(scores, wd, cache, {**baselines, **added}, splits, segments, start_segments, missing)
    example = example_figure(wd, cache, stages, splits is not None, missing)
    scores["missing"] = missing.items
    scores["example"] = example  # last: the bulky part
    return scores


def write_demo_scores(wd: Path, baselines: dict | None = None) -> dict:
    """:func:`demo_scores` written to ``wd/runs/scores.json``; returns them."""
    from syllablelm.runtime.fileio import write_json

    scores = demo_scores(wd, baselines)
    write_json(Path(wd) / SCORES, scores, indent=1)
    return scores
