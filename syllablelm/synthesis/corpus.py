"""A LibriSpeech-layout corpus with word/syllable/phone alignments, synthesised offline with eSpeak NG.

    synthesize_corpus("data/synth", hours=1, seed=0)      # or: syllablelm synth --out data/synth --hours 1

Layout (LibriSpeech's, plus alignments)::

    OUT/SPEAKERS.TXT                                   ;-comments, then ID | SEX | SUBSET | MINUTES | NAME
    OUT/synth.json                                     the arguments (a rerun must match them) and totals
    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac    16 kHz mono
    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt     "ID WORDS IN UPPER CASE" lines
    OUT/alignments/<split>/<speaker>/<chapter>/<id>.json  {"words", "syllables", "phones"}: [start, end, label]

Times are seconds (4 decimals); pauses are gaps. Word labels are lower-case ("of the" when eSpeak speaks a fixed
phrase as one word); syllable labels are their eSpeak phoneme names joined by spaces, stress marks kept
("s t 'a n"); phone labels are eSpeak names. Splits have disjoint speakers and disjoint sentences. The plan
(speakers, texts, parameters) is drawn from ``seed`` before anything is synthesised, so the same arguments give
the same bytes, and a rerun skips utterances whose FLAC and JSON already exist.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchaudio

from syllablelm.audio.io import SAMPLE_RATE, audio_info, write_audio
from syllablelm.runtime.fileio import write_json, write_text
from syllablelm.synthesis.espeak import ESpeak, align, words_of
from syllablelm.synthesis.plan import DEFAULT_SPLITS, Speaker, Utterance, load_sentences, plan_corpus

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _resampler(orig_rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's windowed-sinc resampler (what ``torchaudio.functional.resample`` computes), with its kernel
    built once instead of per utterance."""
    return torchaudio.transforms.Resample(orig_rate, SAMPLE_RATE)


def resample_to_16k(wave: torch.Tensor, orig_rate: int) -> torch.Tensor:
    """``torchaudio.functional.resample(wave, orig_rate, 16000)``, faster on a stream of odd lengths.

    The input is zero-padded to a whole second and the output cut back to its exact length (torchaudio pads
    with zeros itself, so the samples agree to float rounding, ~1e-5). With few distinct lengths, the
    convolution's per-shape set-up is reused instead of redone for every utterance.
    """
    n = wave.shape[-1]
    padded = torch.nn.functional.pad(wave, (0, -n % orig_rate))
    return _resampler(orig_rate)(padded)[..., : -(-n * SAMPLE_RATE // orig_rate)]


def synthesize_utterance(utt: Utterance) -> tuple[np.ndarray, dict]:
    """16 kHz float32 audio ``(T,)`` and the alignment-JSON dict of one planned utterance."""
    syn = ESpeak().synth(utt.text, voice=utt.speaker.voice, rate=utt.rate, pitch=utt.speaker.pitch,
                         range_=utt.speaker.range_)
    tiers = align(syn, utt.text, utt.rate).seconds(digits=6)
    wave = torch.from_numpy(syn.audio.astype(np.float32) / 32768.0)
    wave = resample_to_16k(wave, syn.sample_rate).numpy()  # (T,)
    lead, trail = int(round(utt.lead * SAMPLE_RATE)), int(round(utt.trail * SAMPLE_RATE))
    wave = np.concatenate([np.zeros(lead, np.float32), wave, np.zeros(trail, np.float32)])
    duration = len(wave) / SAMPLE_RATE
    shifted = {tier: [[round(min(a + utt.lead, duration), 4), round(min(b + utt.lead, duration), 4), lab]
                      for a, b, lab in rows] for tier, rows in tiers.items()}
    return wave, shifted


def _synthesize_batch(out: Path, batch: list[Utterance]) -> list[float]:
    """Write FLAC + JSON for each utterance of ``batch`` that is missing; returns every utterance's seconds."""
    seconds = []
    for utt in batch:
        flac, js = utt.paths(out)
        if flac.exists() and js.exists():
            seconds.append(audio_info(flac).seconds)
            continue
        wave, tiers = synthesize_utterance(utt)
        write_audio(flac, wave, SAMPLE_RATE)
        write_json(js, tiers)
        seconds.append(len(wave) / SAMPLE_RATE)
    return seconds


def synthesize_corpus(out_dir: str | Path, *, num_utterances: int | None = None, hours: float | None = None,
                      seed: int = 0, speakers: int | None = None,
                      splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS, sentences: str | Path | None = None,
                      workers: int = 1, progress: bool = True, held_out: Sequence[str] = (),
                      held_out_split: str | None = "test", split_speakers: Sequence[int] | None = None) -> dict:
    """Plan and synthesise a corpus under ``out_dir`` (see the module docstring); returns a summary dict
    ``{"out", "seed", "utterances", "hours", "synthesized", "skipped", "wall_seconds", "splits": {name:
    {"utterances", "speakers", "hours"}}}``. ``speakers=None`` picks about one speaker per 25 utterances."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    args = {"num_utterances": num_utterances, "hours": hours, "seed": seed, "speakers": speakers,
            "splits": [[n, float(f)] for n, f in splits], "sentences": None if sentences is None else str(sentences)}
    if held_out or split_speakers is not None:  # recorded only when used: earlier corpora keep their manifest
        args.update(held_out=list(held_out), held_out_split=held_out_split,
                    split_speakers=None if split_speakers is None else list(split_speakers))
    manifest = out / "synth.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("args") != args:
        raise FileExistsError(f"{out} holds a corpus made with other arguments ({manifest}); use another --out")
    pool = load_sentences(sentences) if sentences is not None else None
    spk_list, utts = plan_corpus(num_utterances=num_utterances, hours=hours, seed=seed, speakers=speakers,
                                 splits=splits, sentences=pool, held_out=held_out, held_out_split=held_out_split,
                                 split_speakers=split_speakers)
    if not manifest.exists():  # claim the folder first, so an interrupted run cannot be resumed with other args
        write_json(manifest, {"args": args}, indent=1)
    existing = sum(all(p.exists() for p in u.paths(out)) for u in utts)
    t0 = time.perf_counter()
    batches = [utts[i:i + 16] for i in range(0, len(utts), 16)]
    seconds: list[float] = []
    bar = tqdm(total=len(utts), desc="synth", unit="utt", disable=not progress)
    if workers <= 1:
        for batch in batches:
            seconds += _synthesize_batch(out, batch)
            bar.update(len(batch))
    else:  # spawn: a forked child would share eSpeak's global state and torch's thread pool with its parent
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool_ex:
            for batch, secs in zip(batches, pool_ex.map(_synthesize_batch, [out] * len(batches), batches)):
                seconds += secs
                bar.update(len(batch))
    bar.close()
    wall = time.perf_counter() - t0
    _write_index(out, spk_list, utts, seconds, seed)
    totals = {"utterances": len(utts), "hours": sum(seconds) / 3600, "splits": {}}
    for name, _ in splits:
        idx = [i for i, u in enumerate(utts) if u.split == name]
        totals["splits"][name] = {"utterances": len(idx), "hours": sum(seconds[i] for i in idx) / 3600,
                                  "speakers": sum(s.split == name for s in spk_list)}
    write_json(manifest, {"args": args, **totals}, indent=1)
    # run facts stay out of synth.json, so that the same arguments give the same bytes in any folder and run
    summary = {"out": str(out), "seed": seed, **totals, "synthesized": len(utts) - existing, "skipped": existing,
               "wall_seconds": wall}
    log.info("synthesised %d utterances (%d already there), %.3f h of audio in %.1f s wall -> %s",
             len(utts) - existing, existing, summary["hours"], wall, out)
    return summary


def _write_index(out: Path, speakers: list[Speaker], utts: list[Utterance], seconds: list[float], seed: int):
    """trans.txt per chapter and SPEAKERS.TXT (LibriSpeech formats)."""
    chapters: dict[tuple, list[Utterance]] = {}
    for u in utts:
        chapters.setdefault((u.split, u.speaker.id, u.chapter), []).append(u)
    for (split, spk, chapter), group in chapters.items():
        lines = "".join(f"{u.id} {' '.join(words_of(u.text)).upper()}\n" for u in group)
        write_text(out / split / str(spk) / str(chapter) / f"{spk}-{chapter}.trans.txt", lines)
    minutes: dict[int, float] = {}
    for u, s in zip(utts, seconds):
        minutes[u.speaker.id] = minutes.get(u.speaker.id, 0.0) + s / 60
    rows = [f"; Synthetic speakers made with eSpeak NG by `syllablelm synth` (seed {seed}).\n",
            "; NAME is the eSpeak voice, its rate (words per minute), pitch and pitch range (0-100).\n",
            ";ID  |SEX| SUBSET           |MINUTES| NAME\n"]
    rows += [f"{s.id:<5}| {s.sex} | {s.split:<17}| {minutes.get(s.id, 0.0):5.2f} | {s.name}\n" for s in speakers]
    write_text(out / "SPEAKERS.TXT", "".join(rows))
