"""The speech demo's evaluation (issue 29, items 5 and 6): what the units keep, judged by ear-proxies.

Every utterance of the held-out evaluation set (voices no model here heard) is turned into speech five ways and
transcribed by the phone judge (a CTC phone recognizer trained on the synthetic corpus's phone alignments, training
voices only: ``syllablelm.evaluation.phone_judge``):

- ``original``: the audio itself (the judge's floor);
- ``fine``: ``resynthesize --from fine``: the true fine units with their true durations (the vocoder's ceiling);
- ``syllable``: the demo's syllable units -> the interleaved LM -> the vocoder (the whole loop);
- ``uniform``: uniform segments at the same unit rate, quantized and resynthesized the same way (their own
  tokenizer and interleaved LM): does the syllable segmentation help?
- ``other``: another utterance's syllable units through the same loop (scored against this utterance's phones:
  the floor for nonsense). Utterance ``i`` borrows those of utterance ``(i + n/2) mod n`` in name order, which with
  6 utterances per voice in name order is another voice's.

Phone error rate = edit distance / reference phones, summed over utterances; intervals from a paired voice-level
bootstrap (voices resampled with replacement, every condition on the same draw; ``syllablelm.significance``).
``fine`` also gets STOI (pystoi, 16 kHz, against the original trimmed to the same length) and a log-mel distance
(``syllablelm.audio.spectrogram.log_mel_distance``: mean absolute difference of HiFi-GAN's log-mel spectra, 80
Slaney bands of the magnitude STFT, ``n_fft`` 1024, hop 256, 0-8 kHz, natural log, floor 1e-5; the vocoder's mel
loss, so the number is on the scale it trained on).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from experiments.speech_out import Sampling, SpeechModels, continue_speech, resynthesize, syllable_units
from syllablelm.audio.spectrogram import N_MELS, log_mel, log_mel_distance
from syllablelm.runtime.fileio import write_json, write_text

CONDITIONS = ("original", "fine", "syllable", "uniform", "other")
EXAMPLES, CONTINUATIONS, PROMPT_SECONDS, CONTINUE_SECONDS = 3, 2, 3.0, 3.0


@dataclasses.dataclass(frozen=True)
class FineVariant:
    """Where a speech-demo run on one kind of fine units writes, so the two kinds never share a stage, a WAV or a
    report section: the teacher's layer-2 units (the CPU path the issue specifies) under ``runs/speech``, ``speech/``,
    ``figures/speech_out.png`` and report key ``speech_out``; the log-mel units (the spectral CPU option) under the
    same names suffixed ``_logmel``."""
    features: str

    @property
    def suffix(self) -> str:
        return "" if self.features == "teacher" else f"_{self.features}"

    @property
    def runs(self) -> Path:  # stages and speech_out.json, under the workdir
        return Path("runs") / f"speech{self.suffix}"

    @property
    def wavs(self) -> Path:  # WAVs, under the workdir
        return Path(f"speech{self.suffix}")

    @property
    def figure(self) -> str:
        return f"speech_out{self.suffix}.png"

    @property
    def key(self) -> str:  # report.json
        return f"speech_out{self.suffix}"

    @property
    def title(self) -> str:
        return "Speech out" if self.features == "teacher" else f"Speech out ({FINE_LABELS[self.features]})"


FINE_LABELS = {"teacher": "the teacher's layer-2 fine units", "logmel": "log-mel fine units"}
FINE_VARIANTS = tuple(FineVariant(f) for f in FINE_LABELS)


def stoi(reference: np.ndarray, degraded: np.ndarray) -> float:
    from pystoi import stoi as pystoi_stoi

    n = min(len(reference), len(degraded))
    return float(pystoi_stoi(reference[:n].astype(np.float64), degraded[:n].astype(np.float64), 16000,
                             extended=False))


def prompt_cut(alignment: dict, seconds: float) -> float:
    """Where a prompt of about ``seconds`` ends: the end of the last word that ends by ``seconds`` + 0.5 s (the
    first word's end when none does)."""
    ends = [float(w[1]) for w in alignment["words"]]
    inside = [e for e in ends if e <= seconds + 0.5]
    return inside[-1] if inside else ends[0]


def first_of_each_voice(names: list[str]) -> list[str]:
    """The first utterance (in name order) of each voice, voices in name order."""
    from syllablelm.evaluation.significance import voice_of

    seen: dict[str, str] = {}
    for n in sorted(names):
        seen.setdefault(voice_of(n), n)
    return list(seen.values())


def evaluate_speech(wd: Path, *, evaluation: Path, tokenizer: Path, uniform_tokenizer: Path, ilms: dict,
                    speechlm: Path, vocoder: Path, judge: Path, seed: int, uniform_frames: int, unit_rate: float,
                    tiny: bool, variant: FineVariant = FineVariant("teacher"), fine_kmeans: Path | None = None
                    ) -> dict:
    """The table, the examples and the continuations (module docstring) with ``variant``'s fine units (k-means
    ``fine_kmeans``, default the shipped one); writes WAVs under ``wd/<variant.wavs>``, the figure under
    ``wd/figures`` and the result to ``wd/<variant.runs>/speech_out.json``; returns the result."""
    from tqdm.auto import tqdm

    from syllablelm.audio.io import read_audio, write_audio
    from syllablelm.evaluation.phone_judge import load_judge, phone_errors
    from syllablelm.evaluation.significance import voice_of
    from syllablelm.units.tokenizer import Tokenizer

    torch.manual_seed(seed)
    judge_model = load_judge(judge)
    fine = {"fine_features": variant.features, "fine_kmeans": fine_kmeans}
    syl = SpeechModels.load(tokenizer=str(tokenizer), interleaved=str(ilms["syllable"]), speechlm=str(speechlm),
                            vocoder=vocoder, **fine)
    uni = dataclasses.replace(syl, tokenizer=Tokenizer.from_pretrained(uniform_tokenizer),
                              interleaved=SpeechModels.load(interleaved=str(ilms["uniform"]), vocoder=vocoder,
                                                            **fine).interleaved)
    files = sorted(evaluation.rglob("*.flac"), key=lambda p: p.stem)
    align_root = evaluation.parent / "alignments" / evaluation.name
    aligns = {p.stem: p for p in align_root.rglob("*.json")}
    names = [f.stem for f in files]
    waves = {f.stem: read_audio(f) for f in files}
    syllables = {n: syllable_units(syl, waves[n])[1] for n in names}
    sampling = Sampling()
    out_dir = wd / variant.wavs
    chosen = first_of_each_voice(names)  # the examples and the prompts: one utterance per voice
    audios: dict[str, list] = {c: [] for c in CONDITIONS}
    refs: list[list[str]] = []
    stoi_values, mel_values, examples = [], [], []
    for i, name in enumerate(tqdm(names, desc="speech out", unit="utt")):
        wave = waves[name]
        ref = judge_model.phones_of_alignment(aligns[name])
        other = names[(i + len(names) // 2) % len(names)]
        audio = {"original": wave.numpy()}
        audio["fine"], _ = resynthesize(syl, wave, source="fine", seed=seed, name=name)
        audio["syllable"], _ = resynthesize(syl, wave, seed=seed, name=name, sampling=sampling)
        audio["uniform"], _ = resynthesize(uni, wave, seed=seed, name=name, sampling=sampling)
        audio["other"], _ = resynthesize(syl, wave, seed=seed, name=name, sampling=sampling,
                                         syllables=syllables[other])
        refs.append(ref)
        for cond in CONDITIONS:
            audios[cond].append(torch.as_tensor(audio[cond], dtype=torch.float32))
        stoi_values.append(stoi(audio["original"], audio["fine"]))
        mel_values.append(log_mel_distance(audio["original"], audio["fine"]))
        if name in chosen[:EXAMPLES]:
            for cond in ("original", "fine", "syllable"):
                write_audio(out_dir / f"{name}.{cond}.wav", np.clip(audio[cond], -1, 1), 16000)
            examples.append(name)
    rows: dict[str, dict[str, list]] = {c: {"errors": [], "phones": []} for c in CONDITIONS}
    for cond in CONDITIONS:
        for hyp, ref in zip(judge_model.transcribe_batch(audios[cond]), refs):
            errors, n = phone_errors(hyp, ref)
            rows[cond]["errors"].append(int(errors))
            rows[cond]["phones"].append(int(n))
    del audios
    voices = [voice_of(n) for n in names]
    table = per_table(rows, voices, seed)
    continuations = []
    for name in chosen[-CONTINUATIONS:]:  # other voices than the examples' when there are enough
        align = json.loads(aligns[name].read_text())
        cut = prompt_cut(align, PROMPT_SECONDS)
        prompt = waves[name][:int(round(cut * 16000))]
        audio, record = continue_speech(syl, prompt, CONTINUE_SECONDS, seed=seed, name=name, sampling=sampling)
        write_audio(out_dir / f"{name}.continuation.wav", np.clip(audio, -1, 1), 16000)
        continuations.append({"utterance": name, "prompt_seconds": round(cut, 3), "wav": f"{variant.wavs}/{name}."
                              "continuation.wav", "prompt_units": record["prompt_units"],
                              "continuation_units": record["continuation_units"],
                              "seconds": round(len(audio) / 16000, 2)})
    figure = spectrogram_figure(wd, out_dir, examples[:1], continuations, variant.figure)
    result = {
        "utterances": len(names), "voices": len(set(voices)), "evaluation_set": str(evaluation.relative_to(wd)),
        "uniform_frames": uniform_frames, "unit_rate_hz": round(unit_rate, 3), "tiny": tiny, "seed": seed,
        "fine_features": variant.features, "fine_units": syl.fine.num_units,
        "per": table, "fine": {"stoi": round(float(np.mean(stoi_values)), 4),
                               "log_mel_distance": round(float(np.mean(mel_values)), 4)},
        "examples": [{"utterance": n, **{c: f"{variant.wavs}/{n}.{c}.wav" for c in ("original", "fine", "syllable")}}
                     for n in examples],
        "continuations": continuations, "figure": figure,
        "models": {"vocoder": str(vocoder), "judge": str(judge), "interleaved": {k: str(v) for k, v in ilms.items()},
                   "fine_kmeans": str(fine_kmeans or "shipped")},
    }
    write_json(wd / variant.runs / "speech_out.json", result, indent=1)
    return result


def per_table(rows: dict, voices: list[str], seed: int) -> dict:
    """Each condition's PER with its voice-level interval, and the paired differences the issue asks about."""
    from syllablelm.evaluation.significance import paired_ratio_bootstrap

    def pair(a: str, b: str) -> dict:
        return paired_ratio_bootstrap(rows[a]["errors"], rows[a]["phones"], rows[b]["errors"], rows[b]["phones"],
                                      groups=voices, seed=seed)

    out = {"conditions": {}}
    for cond in CONDITIONS:
        res = pair(cond, cond)["a"]
        out["conditions"][cond] = {"per": res["value"], "ci95": [res["low"], res["high"]],
                                   "errors": int(sum(rows[cond]["errors"])), "phones": int(sum(rows[cond]["phones"]))}
    out["differences"] = {
        "other - syllable": pair("other", "syllable"),  # gate: lower bound above 0
        "uniform - syllable": pair("uniform", "syllable"),  # a finding: reported, not tuned
        "fine - original": pair("fine", "original"),  # gate: <= 15 points
    }
    return out


def spectrogram_figure(wd: Path, out_dir: Path, examples: list[str], continuations: list[dict],
                       name: str = "speech_out.png") -> str:
    """One figure: log-mel spectrograms (``syllablelm.audio.spectrogram.log_mel``) of an example (original / from
    fine units / from syllable units) and of the continuations (prompt | generated, the cut marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    panels = [(f"{n}: {c}", out_dir / f"{n}.{c}.wav", None) for n in examples for c in ("original", "fine", "syllable")]
    panels += [(f"{c['utterance']}: continuation", wd / c["wav"], c["prompt_seconds"]) for c in continuations]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.8 * len(panels)), squeeze=False)
    for ax, (title, path, cut) in zip(axes[:, 0], panels):
        wave, _ = sf.read(path, dtype="float32")
        spec = log_mel(wave).numpy()  # (mel bins, frames)
        ax.imshow(spec, origin="lower", aspect="auto", extent=(0, len(wave) / 16000, 0, N_MELS), cmap="magma")
        if cut is not None:
            ax.axvline(cut, color="cyan", lw=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    path = wd / "figures" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    from syllablelm.runtime.fileio import atomic_write

    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return f"figures/{name}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_lines(s: dict | None) -> list[str]:
    """The report's "Speech out" section (empty when the speech demo has not run)."""
    if not s:
        return []
    c = s["per"]["conditions"]
    labels = {"original": "original audio (the judge's floor)", "fine": "from fine units, true durations (ceiling)",
              "syllable": "from syllable units (the whole loop)",
              "uniform": f"from uniform segments ({s['uniform_frames']} frames), same rate and quantization",
              "other": "another utterance's syllable units (nonsense floor)"}
    variant = FineVariant(s.get("fine_features", "teacher"))
    lines = [f"## {variant.title}", "",
             f"Fine units: {FINE_LABELS[variant.features]}"
             + (f" ({s['fine_units']} units, 50 Hz). " if s.get("fine_units") else ". ") +
             f"{s['utterances']} utterances by {s['voices']} held-out voices (reserved eSpeak variants that no model "
             "here heard, reading sentences the judge never trained on), transcribed by the shipped CTC phone judge. "
             "Phone error rate (%), 95 % interval from a voice-level bootstrap:", "",
             "| condition | PER | 95 % interval | errors / phones |", "|---|---|---|---|"]
    for cond, label in labels.items():
        lo, hi = c[cond]["ci95"]
        lines.append(f"| {label} | {_pct(c[cond]['per'])} | {_pct(lo)}-{_pct(hi)} | "
                     f"{c[cond]['errors']} / {c[cond]['phones']} |")
    lines += ["", "Paired differences (points of PER, same voice draws; the judge's floor moves with the voices, "
              "the paired differences much less):", ""]
    for key, d in s["per"]["differences"].items():
        d = d["difference"]
        lines.append(f"- {key}: {_pct(d['value'])} ({_pct(d['low'])} to {_pct(d['high'])})")
    fine = s["fine"]
    lines += ["", f"From fine units: STOI {fine['stoi']:.3f}, log-mel distance {fine['log_mel_distance']:.3f} "
              "(against the original; HiFi-GAN's log-mel L1, the vocoder's mel loss: 80 Slaney bands, n_fft 1024, "
              "hop 256, 0-8 kHz, natural log, floor 1e-5).", "",
              "Listen: " + "; ".join(f"{e['utterance']}: [original]({e['original']}), [fine]({e['fine']}), "
                                     f"[syllable]({e['syllable']})" for e in s["examples"]),
              "", "Continuations (prompt, 0.1 s pause, then the generated speech, in whatever voice its fine units "
              "carry): " + "; ".join(f"[{c['utterance']}]({c['wav']}) ({c['prompt_seconds']} s prompt, "
                                     f"{len(c['continuation_units'])} new units)" for c in s["continuations"]),
              "", f"![speech out]({s['figure']})", ""]
    return lines


def update_report(wd: Path, result: dict) -> None:
    """Put the result into the demo's report.json (its variant's key: ``speech_out``, ``speech_out_logmel``) and
    rewrite report.md from it."""
    from experiments.report_markdown import markdown

    report = json.loads((wd / "report.json").read_text())
    report[FineVariant(result.get("fine_features", "teacher")).key] = result
    write_text(wd / "report.md", markdown(report))
    write_json(wd / "report.json", report, indent=1)
