"""The synthetic corpus's plan: speakers (eSpeak voice and parameters), sentence packing, splits with disjoint
speakers and sentences, all drawn from one seed before anything is synthesised (:mod:`syllablelm.synthesis.corpus`
speaks the plan)."""
from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from syllablelm.synthesis.espeak import words_of

DEFAULT_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.8), ("dev", 0.1), ("test", 0.1))
# Variants whose pause edges agree with the energy detector, without echo, whisper or robot effects; the
# "klatt 6" variants (adam, david, benjamin) pass too but synthesise several times slower.
# "victor" and "sandro" are left out: eSpeak seeds their voice's noise from the wall clock (time()), so their
# samples change from one second to the next and a corpus would not be reproducible (tests/test_synth.py).
MALE_VARIANTS = ("m1", "m3", "m4", "m5", "m6", "m7", "m8", "max", "norbert", "john", "rob", "Alex", "Mike",
                 "edward", "Storm", "Diogo", "Denis", "quincy", "travis", "Andy", "boris", "gustave", "pedro")
FEMALE_VARIANTS = ("f1", "aunty", "grandma", "shelby")
LANGUAGES = ("en-us", "en")
RATE_WPM, PITCH, RANGE = (135, 185), (35, 65), (35, 75)  # inclusive ranges of the per-speaker parameters
RATE_JITTER = 6  # per-utterance rate jitter (+-wpm), clipped to RATE_WPM
SECONDS = (3.0, 15.0)  # utterance length the sentence packing aims for
EDGE_SILENCE = (0.15, 0.35)  # leading/trailing silence (s): real corpora have it, and the detector's floor needs it
UTTS_PER_CHAPTER = 25
# voice variants this project reserves for held-out evaluation (synth --held-out-variants default set): corpora
# that train a shipped model are made without them, so a test split speaking only these is unseen by every model
HELD_OUT_VARIANTS = ("m7", "m8", "Mike", "quincy", "travis", "Andy", "aunty", "shelby")


@dataclasses.dataclass(frozen=True)
class Speaker:
    id: int
    sex: str  # "M" | "F"
    split: str
    voice: str  # eSpeak voice name, e.g. "en-us+m3"
    rate: int  # words per minute
    pitch: int  # 0-100
    range_: int  # 0-100

    @property
    def name(self) -> str:
        return f"{self.voice} rate {self.rate} pitch {self.pitch} range {self.range_}"


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str  # "<speaker>-<chapter>-<nnnn>"
    split: str
    speaker: Speaker
    chapter: int
    text: str
    rate: int
    lead: float  # seconds of silence before and after the speech
    trail: float

    def paths(self, out: Path) -> tuple[Path, Path]:
        """(flac, alignment json) under ``out``."""
        rel = Path(self.split, str(self.speaker.id), str(self.chapter))
        return out / rel / f"{self.id}.flac", out / "alignments" / rel / f"{self.id}.json"


def load_sentences(path: str | Path | None = None) -> list[str]:
    """The shipped sentence list (``synthesis/data/sentences.txt``, see its README) or a text file, one a line."""
    if path is None:
        text = resources.files("syllablelm.synthesis").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if words_of(line)]


def estimate_seconds(text: str, rate: int) -> float:
    """Speech duration eSpeak will produce (fit on 300 utterances, residual sd 0.3 s), without the edges."""
    letters = sum(c.isalpha() for c in text)
    pauses = sum(text.count(c) for c in ",.!?") - 1
    return 0.891 * letters / 5 / rate * 60 + 0.277 * max(pauses, 0) + 0.09


def _largest_remainder(total: int, fractions: Sequence[float], minimum: int = 0) -> list[int]:
    """Integer counts summing to ``total`` proportional to ``fractions``, each at least ``minimum``."""
    f = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    counts = np.maximum(np.floor(f * total).astype(int), minimum)
    order = np.argsort(-(f * total - np.floor(f * total)), kind="stable")
    i = 0
    while counts.sum() < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while counts.sum() > total:  # the minimum overshot: take from the largest
        counts[int(np.argmax(counts))] -= 1
    return counts.tolist()


def plan_corpus(*, num_utterances: int | None = None, hours: float | None = None, seed: int = 0,
                speakers: int | None = None, splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS,
                sentences: Sequence[str] | None = None, held_out: Sequence[str] = (),
                held_out_split: str | None = "test", split_speakers: Sequence[int] | None = None,
                ) -> tuple[list[Speaker], list[Utterance]]:
    """Draw speakers, texts and parameters for every utterance (no synthesis). Exactly one of
    ``num_utterances`` and ``hours`` (estimated from the text, see :func:`estimate_seconds`).

    ``held_out``: eSpeak voice variants (e.g. ``("m7", "grandma")``) that only ``held_out_split`` speaks and no
    other split ever does; ``held_out_split=None``: no split speaks them (a corpus to train a model on, which then
    never hears those voices; :data:`HELD_OUT_VARIANTS` is the set this project reserves for held-out evaluation).
    ``split_speakers``: speakers per split (default: in proportion to the split fractions)."""
    if (num_utterances is None) == (hours is None):
        raise ValueError("give exactly one of num_utterances and hours")
    splits = [(name, float(frac)) for name, frac in splits if float(frac) > 0]
    if not splits or len({n for n, _ in splits}) != len(splits):
        raise ValueError(f"splits must be distinct names with positive fractions, got {splits}")
    rng = np.random.default_rng(seed)
    pool = list(sentences) if sentences is not None else load_sentences()
    if len(pool) < 2 * len(splits):
        raise ValueError(f"{len(pool)} sentences are too few for {len(splits)} splits")
    fractions = [f for _, f in splits]
    if num_utterances is not None:
        per_split = _largest_remainder(int(num_utterances), fractions, minimum=int(num_utterances >= len(splits)))
        n_guess = int(num_utterances)
    else:
        n_guess = int(hours * 3600 / 7.0) + 1  # ~7 s per utterance with its edge silence
    if speakers is None:
        speakers = max(len(splits), min(200, round(n_guess / 25)))
    if speakers < len(splits):
        raise ValueError(f"{speakers} speakers cannot give {len(splits)} splits disjoint speakers")

    # disjoint speakers and sentences: both are partitioned once, in proportion to the split fractions
    spk_ids = sorted(rng.choice(np.arange(100, 10_000), size=speakers, replace=False).tolist())
    chapter_ids = _distinct_ints(rng, 10_000, 400_000)
    spk_counts = _largest_remainder(speakers, fractions, minimum=1) if split_speakers is None else \
        [int(n) for n in split_speakers]
    if len(spk_counts) != len(splits) or sum(spk_counts) != speakers or min(spk_counts) < 1:
        raise ValueError(f"split_speakers must give each of the {len(splits)} splits at least one of the {speakers} "
                         f"speakers, got {list(spk_counts)}")
    unknown = set(held_out) - set(MALE_VARIANTS) - set(FEMALE_VARIANTS)
    if unknown or (held_out and held_out_split is not None and held_out_split not in {n for n, _ in splits}):
        raise ValueError(f"held_out must name voice variants ({sorted(unknown)} are not) and held_out_split a "
                         f"split ({held_out_split!r})")
    order = rng.permutation(len(pool))
    sent_counts = _largest_remainder(len(pool), fractions, minimum=1)
    # variants are dealt from shuffled decks so that speakers share a variant only when the deck runs out; with
    # held-out variants, the held-out split deals from those only and every other split from the rest
    def deck(variants):
        return {sex: [str(v) for _ in range(-(-speakers // max(1, len(d)))) for v in rng.permutation(d)]
                for sex, d in (("M", [v for v in MALE_VARIANTS if v in variants]),
                               ("F", [v for v in FEMALE_VARIANTS if v in variants]))}
    decks = deck(set(MALE_VARIANTS + FEMALE_VARIANTS) - set(held_out))
    held_decks = deck(set(held_out)) if held_out else None
    all_speakers, utterances, s0, p0 = [], [], 0, 0
    for k, (split, frac) in enumerate(splits):
        split_speakers = []
        for spk_id in rng.permutation(spk_ids[s0:s0 + spk_counts[k]]).tolist():
            female = len(all_speakers) % 2 == 1  # alternate, as LibriSpeech balances sexes
            pool_decks = held_decks if held_out and split == held_out_split else decks
            if not pool_decks["F" if female else "M"]:  # only one sex among the variants: use it
                female = not female
            variant = pool_decks["F" if female else "M"].pop()
            spk = Speaker(int(spk_id), "F" if female else "M", split, f"{rng.choice(LANGUAGES)}+{variant}",
                          int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)), int(rng.integers(PITCH[0], PITCH[1] + 1)),
                          int(rng.integers(RANGE[0], RANGE[1] + 1)))
            split_speakers.append(spk)
            all_speakers.append(spk)
        s0 += spk_counts[k]
        texts = [pool[i] for i in order[p0:p0 + sent_counts[k]]]
        p0 += sent_counts[k]
        target = per_split[k] if num_utterances is not None else None
        budget = hours * 3600 * frac / sum(fractions) if hours is not None else None
        utterances += _plan_split(rng, split, split_speakers, texts, target, budget, chapter_ids)
    return sorted(all_speakers, key=lambda s: s.id), utterances


def _distinct_ints(rng: np.random.Generator, low: int, high: int):
    """Endless stream of distinct random integers in ``[low, high)`` (chapter ids)."""
    seen: set[int] = set()
    while len(seen) < high - low:
        x = int(rng.integers(low, high))
        if x not in seen:
            seen.add(x)
            yield x


def _plan_split(rng, split, speakers, texts, count, budget, chapter_ids) -> list[Utterance]:
    """Utterances of one split: 1-3 consecutive sentences of a shuffled cycle over ``texts``, speakers in turn."""
    cursor, perm, planned, seconds = 0, rng.permutation(len(texts)), [], 0.0

    def next_sentence() -> str:
        nonlocal cursor, perm
        if cursor == len(perm):  # the split's sentences are used up: start another shuffled pass
            cursor, perm = 0, rng.permutation(len(texts))
        cursor += 1
        return texts[perm[cursor - 1]]

    while (count is not None and len(planned) < count) or (budget is not None and seconds < budget):
        spk = speakers[len(planned) % len(speakers)]
        rate = int(np.clip(spk.rate + rng.integers(-RATE_JITTER, RATE_JITTER + 1), *RATE_WPM))
        want, parts = int(rng.integers(1, 4)), [next_sentence()]
        while len(parts) < 3:
            candidate = parts + [next_sentence()]
            est = estimate_seconds(" ".join(candidate), rate)
            if est > SECONDS[1] or (len(parts) >= want and estimate_seconds(" ".join(parts), rate) >= SECONDS[0]):
                cursor -= 1  # give the sentence back
                break
            parts = candidate
        lead, trail = (round(float(x), 3) for x in rng.uniform(*EDGE_SILENCE, size=2))
        planned.append((spk, " ".join(parts), rate, lead, trail))
        seconds += estimate_seconds(planned[-1][1], rate) + lead + trail
    # chapters: each speaker's utterances in order, UTTS_PER_CHAPTER to a chapter
    out, counts, chapter = [], {}, {}
    for spk, text, rate, lead, trail in planned:
        n = counts[spk.id] = counts.get(spk.id, -1) + 1
        if n % UTTS_PER_CHAPTER == 0:
            chapter[spk.id] = next(chapter_ids)
        uid = f"{spk.id}-{chapter[spk.id]}-{n % UTTS_PER_CHAPTER:04d}"
        out.append(Utterance(uid, split, spk, chapter[spk.id], text, rate, lead, trail))
    return out
