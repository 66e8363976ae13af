"""``syllablelm speech-demo --workdir DIR``: speech out on a finished ``syllablelm demo`` workdir (issue 29, item 6).

Runs after the demo (its budget unchanged), on the demo's own models, and adds a "Speech out" section to its
report.md / report.json. Stages, each resumable like the demo's (skipped on a rerun when its outputs are whole):

1. ``speech_synth``: the evaluation set: utterances spoken ONLY by the project's reserved held-out eSpeak variants
   (``syllablelm synth --held-out-variants``), voices no model here ever heard — not the demo's models, not the
   shipped vocoder, not the judge (both trained on corpora made with ``--exclude-held-out``) — reading sentences the
   judge never trained on (its reserved quarter of the sentence list), so its PER cannot come from memory;
2. ``speech_fine``: the fine units of the demo's train and dev audio (the shipped teacher's layer-2 k-means: the
   label store the demo's ``labels`` stage wrote when it used the shipped teacher, else written here; with
   ``--fine-features logmel`` the shipped log-mel k-means, always written here);
3. ``speech_uniform_quantize`` / ``speech_uniform_units``: the comparison "uniform segments at the same rate",
   quantized the same way: ``quantize --fixed-frames F`` on the demo's SylBoost student with the demo's k-means and
   Ward sizes, F = the frame count closest to the demo's syllable unit rate (``50 / rate``), then ``units``;
4. ``speech_ilm_syllable`` / ``speech_ilm_uniform``: an interleaved vocoder LM on each unit store (tiny config);
5. ``speech_evaluate`` (in this process): the phone error rate table with voice-level intervals, STOI and log-mel
   distance of ``--from fine``, WAVs of three utterances (original / from fine units / from syllable units), two
   continuations, a spectrogram figure; written to ``runs/speech/speech_out.json`` and the report.

Same seed, same bytes: every draw is seeded (:mod:`experiments.speech_out`).

``--fine-features logmel`` runs the same stages on the spectral fine units (GSLM's LogMel units: k-means of 80-band
log-mel frames, not self-supervised) with the vocoder trained on them, under names of their own (``runs/
speech_logmel``, ``speech_logmel/``, report section "Speech out (log-mel fine units)"), so both runs can sit in one
workdir and report side by side (their fine-unit and interleaved-LM stages carry the suffix ``_logmel``; the uniform
tokenizer and units are shared).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments.arguments import SEED, WORKDIR, command_parser
from experiments.stage_runner import REPO, Runner, StageFailed, place_run, write_config
from experiments.stage_state import StoreVersion, duration
from syllablelm.runtime.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE

SHIPPED = REPO / "experiments" / "pretrained"
STAGES = ("speech_synth", "speech_fine", "speech_uniform_quantize", "speech_uniform_units", "speech_ilm_syllable",
          "speech_ilm_uniform", "speech_evaluate")
# the 8 held-out voices x 6 utterances (the voice-level bootstrap resamples the 8 voices)
EVAL_UTTERANCES, EVAL_SPEAKERS, TINY_UTTERANCES, TINY_SPEAKERS = 48, 8, 4, 2
ILM_STEPS, TINY_ILM_STEPS = 300, 10


def parser() -> argparse.ArgumentParser:
    p = command_parser("speech-demo", __doc__)
    p.add_argument("--workdir", required=True, type=Path, help=WORKDIR + " (a finished syllablelm demo's)")
    p.add_argument("--tiny", action="store_true", help="a minimal run that checks every step (the demo's --tiny)")
    p.add_argument("--seed", type=int, default=0, help=SEED)
    p.add_argument("--fine-features", choices=("teacher", "logmel"), default="teacher",
                   help="fine units: the shipped teacher's layer-2 k-means (default; the issue's CPU path) or the "
                        "shipped log-mel k-means (spectral units, not SSL; their own stages and report section)")
    p.add_argument("--vocoder", type=Path, help="the unit vocoder (default: the shipped one of --fine-features)")
    p.add_argument("--judge", type=Path, default=SHIPPED / "judge.ckpt", help="the phone recognizer that judges")
    return p


def shipped_fine_labels(label_root: Path) -> bool:
    """Whether the demo's label store holds the shipped teacher's layer-2 k-means labels (the fine units). An
    absent store (no folder, or no complete version) is False: the speech demo writes the fine units itself. A store
    that is there but cannot be read (a damaged manifest or shard, a manifest whose label model is unreadable)
    raises :class:`~datamodules.shard_store.StoreError` naming ``label_root`` and the problem, rather than silently
    computing the fine units again beside a broken store."""
    from datamodules.label_store import LabelStore
    from datamodules.shard_store import AbsentVersionError, StoreError

    store = LabelStore(label_root)
    try:
        meta = store.manifest(store.resolve("latest")).get("meta", {})
    except AbsentVersionError:
        return False
    except StoreError as e:
        raise StoreError(f"{label_root}: the demo's label store cannot be read: {e}") from e
    try:
        return (meta.get("features") == "teacher" and int(meta.get("layer") or -1) == 2
                and Path(str(meta.get("checkpoint"))).name == "teacher.ckpt"
                and Path(str(meta.get("kmeans"))).name == "kmeans_layer2.npy")
    except (AttributeError, TypeError, ValueError) as e:  # "meta" not a mapping, "layer" not a number
        raise StoreError(f"{label_root}: the demo's label store cannot be read: its manifest's label model "
                         f"({meta!r}) is not readable ({e})") from e


def unit_rate(unit_root: Path) -> float:
    """Syllable units per second of the demo's unit store (all utterances it holds)."""
    from datamodules.unit_store import UnitStore

    store = UnitStore(unit_root)
    loaded = store.load(store.resolve("latest"))
    units = seconds = 0.0
    for segments, ids in loaded.values():
        units += len(ids)
        seconds += float(segments[-1, 1] - segments[0, 0]) if len(ids) else 0.0
    return units / max(seconds, 1e-9)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    wd = args.workdir.resolve()
    runs, data = wd / "runs", wd / "data" / "synth"
    tokenizer, lm = runs / "tokenizer.ckpt", runs / "speechlm" / "checkpoints" / "last.ckpt"
    sylboost = runs / "sylboost" / "checkpoints" / "last.ckpt"
    need = [p for p in (tokenizer, lm, sylboost, runs / "units", data / "train", wd / "report.json") if not p.exists()]
    if need:
        print(f"syllablelm speech-demo: {wd} is not a finished demo workdir (missing: "
              f"{', '.join(str(p.relative_to(wd)) for p in need)}); run syllablelm demo --workdir {wd} first",
              file=sys.stderr)
        return EXIT_USAGE
    from experiments.speech_eval import FineVariant
    from experiments.speech_out import SHIPPED_FINE

    variant = FineVariant(args.fine_features)
    fine_kmeans, shipped_vocoder = SHIPPED_FINE[args.fine_features]
    args.vocoder = args.vocoder or shipped_vocoder
    for path, what in ((args.vocoder, "--vocoder"), (args.judge, "--judge"), (fine_kmeans, "the fine k-means")):
        if not path.exists():
            print(f"syllablelm speech-demo: {what} {path} does not exist", file=sys.stderr)
            return EXIT_USAGE
    t0 = time.perf_counter()
    run = Runner(wd, total=len(STAGES))
    speech = wd / variant.runs
    cache = ["--manifest-cache", str(wd / "cache")]
    splits = [str(data / "train"), str(data / "dev")]
    evaluation = wd / "data" / "speech_test"
    n, k = (TINY_UTTERANCES, TINY_SPEAKERS) if args.tiny else (EVAL_UTTERANCES, EVAL_SPEAKERS)
    sentences = wd / "data" / "speech_test_sentences.txt"
    if not sentences.exists():  # the sentences the judge never trained on (syllablelm.evaluation.phone_judge)
        from syllablelm.evaluation.phone_judge import judge_sentences
        from syllablelm.runtime.fileio import write_text
        from syllablelm.synthesis.plan import load_sentences

        write_text(sentences, "\n".join(judge_sentences(load_sentences())[1]) + "\n")
    try:
        run.run("speech_synth", ["synth", "--out", str(evaluation), "--num-utterances", str(n), "--speakers",
                                 str(k), "--splits", "test=1", "--held-out-variants", "--sentences", str(sentences),
                                 "--seed", str(1000 + args.seed), "--no-progress"], done=evaluation / "synth.json")
        if variant.features == "teacher" and shipped_fine_labels(runs / "labels"):
            fine = runs / "labels"
            run.index += 1
            run.say(f"[{run.index}/{run.total}] speech_fine: the demo's label store holds them ({fine})")
        else:
            fine = speech / "fine"
            model = (["--features", "teacher", "--checkpoint", str(SHIPPED / "teacher.ckpt"), "--layer", "2"]
                     if variant.features == "teacher" else ["--features", variant.features])
            run.run(f"speech_fine{variant.suffix}", ["labels", "--data", *splits, "--out", str(fine), *model,
                                                     "--kmeans", str(fine_kmeans), *cache],
                    done=StoreVersion(fine, 0, "labels"))
        from experiments.demo import FULL, TINY

        size = TINY if args.tiny else FULL  # the demo's k-means and Ward sizes
        rate = unit_rate(runs / "units")
        frames = max(1, round(50.0 / rate))
        shared = wd / FineVariant("teacher").runs  # the uniform tokenizer and units serve both kinds of fine units
        uniform_tok = shared / "uniform_tokenizer.ckpt"
        run.run("speech_uniform_quantize", [
            "quantize", "--checkpoint", str(sylboost), "--data", splits[0], "--k", str(size.kmeans),
            "--k-merged", str(size.units), "--hours", "1", "--fixed-frames", str(frames), "--out",
            str(uniform_tok), *cache], done=uniform_tok)
        uniform_units = shared / "uniform_units"
        run.run("speech_uniform_units", ["units", "--checkpoint", str(uniform_tok), "--data", *splits, "--out",
                                         str(uniform_units), *cache, "--precision", "fp32"],
                done=StoreVersion(uniform_units, 0, "units"))
        ilms = {}
        from syllablelm.checkpoints.kmeans import load_kmeans_centroids

        fine_vocab = int(load_kmeans_centroids(fine_kmeans).shape[0])
        for name, units in (("syllable", runs / "units"), ("uniform", uniform_units)):
            root = speech / f"ilm_{name}"
            cfg = write_config("interleaved_lm.yaml", wd / "configs" / f"interleaved_lm_{name}{variant.suffix}.yaml",
                               wd,
                               lambda c, units=units, root=root: ilm_config(c, units, fine, root, size.units,
                                                                             fine_vocab, args))
            ckpt = root / "checkpoints" / "last.ckpt"
            run.run(f"speech_ilm_{name}{variant.suffix}", ["fit", "--config", str(cfg)], done=ckpt, resume=ckpt)
            ilms[name] = ckpt
    except StageFailed as e:
        print(f"syllablelm speech-demo: {e}", file=sys.stderr)
        return EXIT_FAILED
    run.index += 1
    run.say(f"[{run.index}/{run.total}] speech_evaluate: resynthesis, judge, continuations")
    from experiments.speech_eval import evaluate_speech, update_report

    t1 = time.perf_counter()
    result = evaluate_speech(wd, evaluation=evaluation / "test", tokenizer=tokenizer, uniform_tokenizer=uniform_tok,
                             ilms=ilms, speechlm=lm, vocoder=args.vocoder, judge=args.judge, seed=args.seed,
                             uniform_frames=frames, unit_rate=rate, tiny=args.tiny, variant=variant,
                             fine_kmeans=fine_kmeans)
    result["seconds"] = {"evaluate": round(time.perf_counter() - t1, 1),
                         "stages": round(sum(t.get("seconds", 0.0) for t in run.timings.values()
                                             if not t.get("skipped")), 1),
                         "total": round(time.perf_counter() - t0, 1)}
    update_report(wd, result)
    print(f"speech out: {wd / 'report.md'} (section '{variant.title}'; this invocation "
          f"{duration(time.perf_counter() - t0)})")
    return EXIT_OK


def ilm_config(cfg: dict, units: Path, fine: Path, root: Path, syllable_vocab: int, fine_vocab: int, args) -> None:
    """The tiny interleaved-LM config pointed at this workdir's unit and fine-unit stores (the demo's unit
    vocabulary; ``fine_vocab`` fine units), writing under ``root``; its schedule scaled to the step budget."""
    steps = TINY_ILM_STEPS if args.tiny else ILM_STEPS
    cfg["seed_everything"] = args.seed
    cfg["trainer"].update(max_steps=steps, enable_progress_bar=True, accelerator="cpu")
    if args.tiny:  # a few steps: validate (and log its audio) every epoch
        cfg["trainer"]["check_val_every_n_epoch"] = 1
    model = cfg["model"]["init_args"]
    model.update(syllable_vocab=syllable_vocab, warmup=steps // 10, hold=steps * 4 // 10,
                 decay=steps - steps // 10 - steps * 4 // 10)
    model["fine_vocab"] = fine_vocab
    model["network"]["vocab_size"] = fine_vocab + syllable_vocab + 2
    model["vocoder"] = str(args.vocoder)  # validation logs generated speech to TensorBoard
    cfg["data"]["init_args"].update(unit_dir=str(units), label_dir=str(fine))
    place_run(cfg, root)
