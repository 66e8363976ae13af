"""Offline sWUGGY / sBLIMP / topic-StoryCloze mini-sets spoken by eSpeak NG, in the layouts ``lm_eval`` reads.

    make_pairs("data/pairs", num_pairs=50, seed=0)     # or: syllablelm pairs --out data/pairs --num-pairs 50

Layout (16 kHz mono PCM-16 WAV; as in ZeroSpeech 2021, ``filename`` has no extension and is random letters)::

    OUT/lexical/dev/<filename>.wav + gold.csv     id,filename,voice,frequency,word,phones,length,correct
    OUT/syntactic/dev/<filename>.wav + gold.csv   id,filename,voice,type,subtype,correct,transcription
    OUT/tsc/dev/<id>_correct.wav, <id>_incorrect.wav + gold.csv   id,filename,voice,correct,transcription
    OUT/pairs.json                                the arguments and the number of pairs per set

A pair's two items share one speaker (``voice``: eSpeak voice, rate, pitch, range) and 0.2 s of edge silence.
Default voices: ``en-us`` variants that ``syllablelm synth`` never uses, so no training speaker speaks here.

* lexical: a real word vs a nonword with one onset, nucleus or coda (maximal-onset syllables) replaced by one of
  the same length attested at that position in the lexicon (Wuggy-like: same length and stress), rejected if
  it sounds like a lexicon word or its regular -s/-ed form. Both are spoken from eSpeak phonemes (``[[...]]``)
  and must come out as the intended phones. Lexicon: the shipped sentences' words + ``data/words.txt``
  (WordNet). ``frequency``: the word's count in the LM's training text (shipped sentences, or the train
  transcripts of ``--vocab-corpus``); ``--oov-fraction`` of the words have count 0 (oov, not "in-vocab").
* syntactic: a shipped sentence vs a rule-made violation, the types in turn: subject_verb_agreement (is/are,
  has/have, does/do), determiner_noun_agreement (this/these, that/those), pronoun_case (I/me, he/him, we/us,
  they/them, she->her), word_order (an article swapped with the next word).
* tsc: two shipped sentences sharing a content word (the topic), ended by a third one with that word (true)
  or by a random sentence without it, within 2 words of the true ending's length (false).
"""
from __future__ import annotations

import collections
import contextlib
import csv
import functools
import io
import json
import re
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from syllablelm.audio.io import SAMPLE_RATE, write_audio
from syllablelm.audio.syllabify import consonant_class, is_vowel, strip_stress, syllabify
from syllablelm.runtime.fileio import write_json, write_text
from syllablelm.synthesis import espeak as E
from syllablelm.synthesis.corpus import resample_to_16k, synthesize_utterance
from syllablelm.synthesis.pair_sentences import BLOCKED, SETS, SYNTAX_TYPES, stories, usable_sentences, violate
from syllablelm.synthesis.plan import PITCH, RANGE, RATE_WPM, Speaker, Utterance, load_sentences

HELDOUT_MALE = ("Michael", "Gene", "michel", "Hugo", "Jacky", "Mario")  # no echo/whisper/robot; not in plan.py
HELDOUT_FEMALE = ("steph", "steph2")
LANGUAGE = "en-us"  # the dictionary giving the real words' phonemes must be the voices' own
EDGE_S = 0.2
COLUMNS = {"lexical": ("id", "filename", "voice", "frequency", "word", "phones", "length", "correct"),
           "syntactic": ("id", "filename", "voice", "type", "subtype", "correct", "transcription"),
           "tsc": ("id", "filename", "voice", "correct", "transcription")}


@functools.cache
def _norm(phone: str) -> str:
    """Compare sounds, not spellings: stress dropped, consonant allophones (t, t#, t2) merged."""
    return strip_stress(phone) if is_vowel(phone) else consonant_class(phone)


def _key(phones: Sequence[str]) -> tuple[str, ...]:
    return tuple(_norm(p) for p in phones)


# --- Lexicon and nonwords
def text_to_phonemes(words: Sequence[str], language: str = LANGUAGE) -> dict[str, tuple[str, ...] | None]:
    """eSpeak's phonemes of each word (mnemonics, stress marks on vowels); None unless it is one plain word."""
    words = list(words)
    return {w: c[0] if len(c) == 1 and c[0] and all(re.fullmatch(r"[',]?[^\s_',|]+", p) for p in c[0]) else None
            for w, c in zip(words, E.ESpeak().text_to_phonemes(words, voice=language))}


@functools.lru_cache(maxsize=1)
def lexicon() -> dict[str, tuple[str, ...]]:
    """Phonemes of every lexicon word: the shipped sentences' words plus ``data/words.txt``."""
    words = {w.lower() for s in load_sentences() for w in E.words_of(s)}
    words |= set(resources.files("syllablelm.synthesis").joinpath("data/words.txt").read_text().split())
    return {w: p for w, p in text_to_phonemes(sorted(words)).items() if p}


def vocab_counts(corpus: str | Path | None = None) -> collections.Counter:
    """Word counts of the LM's training text: the shipped sentences, or a corpus's train transcripts."""
    if corpus is None:
        return collections.Counter(w.lower() for s in load_sentences() for w in E.words_of(s))
    counts = collections.Counter()
    for trans in sorted(Path(corpus, "train").rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            counts.update(w.lower() for w in line.split()[1:])
    if not counts:
        raise FileNotFoundError(f"no train/**/*.trans.txt under {corpus}")
    return counts


def _inflections(key: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Regular -s and -ed forms, so that "cat" cannot yield the nonword "cats" (keys are _norm names)."""
    last, voiceless = key[-1], ("P", "T", "K", "F", "TH")
    forms = [key + (v, "Z") for v in ("I", "I#", "@")] if last in ("S", "Z", "SH", "ZH", "CH", "JH") else \
        [key + (("S",) if last in voiceless else ("Z",))]
    forms += [key + (v, "D") for v in ("I", "I#", "@")] if last in ("T", "D") else \
        [key + (("T",) if last in voiceless + ("S", "SH", "CH") else ("D",))]
    return forms


def _segments(phones: Sequence[str]) -> list[list[list[str]]]:
    """Maximal-onset syllables split into [onset, nucleus, coda] phone lists."""
    out = []
    for syl in syllabify(phones):
        v = next((i for i, p in enumerate(syl) if is_vowel(p)), None)
        out.append([syl, [], []] if v is None else [syl[:v], [syl[v]], syl[v + 1:]])
    return out


def _slot(kind: int, k: int, segs: list) -> tuple:
    """Position class of segment ``kind`` (0 onset, 1 nucleus, 2 coda) of syllable ``k``: word-initial onsets,
    word-final codas and word-final open vowels have phonotactics of their own."""
    last = k == len(segs) - 1
    edge = (kind == 0 and k == 0) or (kind == 2 and last) or (kind == 1 and last and not segs[k][2])
    return kind, edge, len(segs[k][kind])


@functools.lru_cache(maxsize=1)
def _inventory() -> tuple[dict[tuple, list[tuple[str, ...]]], frozenset]:
    """Segments attested at least twice per position class; the sounds of all lexicon words and inflections."""
    counts: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    known = set()
    for phones in lexicon().values():
        key = _key(phones)
        known.update([key, *_inflections(key)])
        segs = _segments(phones)
        for k, syl in enumerate(segs):
            for kind in (0, 1, 2):
                if syl[kind]:
                    counts[_slot(kind, k, segs)][tuple(strip_stress(p) for p in syl[kind])] += 1
    return {slot: sorted(s for s, n in c.items() if n >= 2) for slot, c in counts.items()}, frozenset(known)


def make_nonword(phones: Sequence[str], rng: np.random.Generator, tries: int = 30) -> tuple[str, ...] | None:
    """Replace one onset, nucleus or coda of ``phones`` with an attested one of the same position class and
    length; None if no candidate in ``tries`` sounds unlike every lexicon word."""
    inventory, known = _inventory()
    segs = _segments(phones)
    slots = [(k, kind) for k in range(len(segs)) for kind in (0, 1, 2) if segs[k][kind]]
    for _ in range(tries):
        k, kind = slots[int(rng.integers(len(slots)))]
        old = segs[k][kind]
        options = [s for s in inventory.get(_slot(kind, k, segs), []) if s != tuple(strip_stress(p) for p in old)]
        if not options:
            continue
        new = list(options[int(rng.integers(len(options)))])
        if kind == 1:  # the vowel keeps its stress mark, so the stress pattern is the word's
            new[0] = old[0][: len(old[0]) - len(strip_stress(old[0]))] + new[0]
        cand = [p for j, syl in enumerate(segs) for i, seg in enumerate(syl)
                for p in (new if (j, i) == (k, kind) else seg)]
        if _key(cand) not in known:
            return tuple(cand)
    return None


# --- Rendering and the command
def _speak_phonemes(phones: Sequence[str], spk: Speaker) -> np.ndarray | None:
    """16 kHz audio ``(T,)`` with edge silence, or None when eSpeak's phones (from its phoneme input
    ``[[a|b|c]]``) are not the intended ones."""
    syn = E.ESpeak().synth(f"[[{E.PHONEME_SEP.join(phones)}]]", voice=spk.voice, rate=spk.rate, pitch=spk.pitch,
                           range_=spk.range_, phonemes=True)
    if _key([p.name for p in syn.phones if not p.name.startswith("_")]) != _key(phones):
        return None
    wave = resample_to_16k(torch.from_numpy(syn.audio.astype(np.float32) / 32768.0), syn.sample_rate).numpy()
    return np.pad(wave, int(EDGE_S * SAMPLE_RATE))


def _speak_text(text: str, spk: Speaker) -> np.ndarray:
    return synthesize_utterance(Utterance(str(spk.id), "eval", spk, 0, text, spk.rate, EDGE_S, EDGE_S))[0]


def _speaker(rng: np.random.Generator, k: int, voices: Sequence[str]) -> Speaker:
    voice = voices[int(rng.integers(len(voices)))]
    return Speaker(k, "F" if voice.split("+")[-1] in HELDOUT_FEMALE else "M", "eval", voice,
                   int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)), int(rng.integers(PITCH[0], PITCH[1] + 1)),
                   int(rng.integers(RANGE[0], RANGE[1] + 1)))


def _name(rng: np.random.Generator, seen: set) -> str:
    """A new random 11-letter file name: as in ZR2021, the name tells nothing about the item."""
    letters = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    while (name := "".join(rng.choice(letters, 11))) in seen:
        pass
    seen.add(name)
    return name


def _lexical(rng, n: int, voices, oov_fraction: float, counts) -> Iterator[tuple]:
    """Yields (real item, fake item) per pair; an item is (its gold.csv fields, its wave)."""
    lex = lexicon()
    ok = [w for w in sorted(lex) if re.fullmatch(r"[a-z]{4,12}", w) and 3 <= len(lex[w]) <= 10 and w not in BLOCKED]
    decks = [[w for w in ok if counts[w] > 0], [w for w in ok if counts[w] == 0]]  # in-vocab, oov
    decks = [[d[i] for i in rng.permutation(len(d))] for d in decks]
    n_oov, made = round(n * oov_fraction), set()
    for k in range(n):
        deck = decks[int(k < n_oov)]
        while True:
            if not deck:
                raise RuntimeError(f"ran out of {'oov' if k < n_oov else 'in-vocab'} words after {k} pairs")
            word = deck.pop()
            fake = make_nonword(lex[word], rng)
            if fake is None or fake in made:
                continue
            spk = _speaker(rng, k, voices)
            waves = [_speak_phonemes(lex[word], spk), _speak_phonemes(fake, spk)]
            if all(w is not None for w in waves):
                break
        made.add(fake)
        items = ((counts[word], word, lex[word], waves[0]), ("", "".join(fake), fake, waves[1]))
        yield tuple(({"id": k + 1, "voice": spk.name, "frequency": freq, "word": w, "phones": " ".join(ph),
                      "length": len(ph)}, wave) for freq, w, ph, wave in items)


def _syntactic(rng, n: int, voices) -> Iterator[tuple]:
    pool = usable_sentences(14)
    order, cursor, used = rng.permutation(len(pool)).tolist(), dict.fromkeys(SYNTAX_TYPES, 0), set()
    for k in range(n):
        kind = SYNTAX_TYPES[k % len(SYNTAX_TYPES)]
        while True:  # this type's next unused sentence (in its own pass over the shuffled pool) with a trigger
            if cursor[kind] == len(order):
                raise RuntimeError(f"no more sentences for {kind} after {k} pairs")
            i, cursor[kind] = order[cursor[kind]], cursor[kind] + 1
            if i not in used and (bad := violate(pool[i], kind, rng)) is not None:
                break
        used.add(i)
        spk = _speaker(rng, k, voices)
        base = {"id": k + 1, "voice": spk.name, "type": kind, "subtype": bad[1]}
        yield (({**base, "transcription": pool[i]}, _speak_text(pool[i], spk)),
               ({**base, "transcription": bad[0]}, _speak_text(bad[0], spk)))


def _tsc(rng, n: int, voices) -> Iterator[tuple]:
    made = stories(usable_sentences(12), n, rng)
    if len(made) < n:
        raise RuntimeError(f"only {len(made)} stories could be made, {n} asked for")
    for k, (_, context, true_end, false_end) in enumerate(made):
        spk, texts = _speaker(rng, k, voices), (f"{context} {true_end}", f"{context} {false_end}")
        base = {"id": f"{k + 1:04d}", "voice": spk.name}
        yield tuple(({**base, "transcription": t}, _speak_text(t, spk)) for t in texts)


def make_pairs(out_dir: str | Path, *, num_pairs: int = 50, seed: int = 0, sets: Sequence[str] = SETS,
               voices: Sequence[str] | None = None, oov_fraction: float = 0.2,
               vocab_corpus: str | Path | None = None, split: str = "dev") -> dict:
    """Write the mini-sets (module docstring) under ``out_dir``; returns ``{"out", "pairs": {set: n},
    "wall_seconds"}``. Each set has its own generator, seeded by (seed, set index): sets are independent."""
    out, t0 = Path(out_dir), time.perf_counter()
    voices = list(voices) if voices else [f"{LANGUAGE}+{v}" for v in HELDOUT_MALE + HELDOUT_FEMALE]
    if set(sets) - set(SETS) or num_pairs < 1 or not 0 <= oov_fraction <= 1:
        raise ValueError(f"bad arguments: sets {list(sets)}, num_pairs {num_pairs}, oov_fraction {oov_fraction}")
    args = {"num_pairs": num_pairs, "seed": seed, "sets": list(sets), "voices": voices, "oov_fraction": oov_fraction,
            "vocab_corpus": None if vocab_corpus is None else str(vocab_corpus), "split": split}
    manifest = out / "pairs.json"  # other arguments would leave stale files beside the new gold.csv
    if manifest.exists() and json.loads(manifest.read_text()).get("args") != args:
        raise FileExistsError(f"{out} holds pairs made with other arguments ({manifest}); use another --out")
    made, threads = {}, torch.get_num_threads()
    # one thread: the resampler's small convolutions run far slower with 2 threads on a busy 2-core machine
    with contextlib.ExitStack() as stack:
        torch.set_num_threads(1)
        stack.callback(torch.set_num_threads, threads)
        for name in (s for s in SETS if s in sets):
            rng, folder = np.random.default_rng([seed, SETS.index(name)]), out / name / split
            if name == "lexical":
                made_pairs = _lexical(rng, num_pairs, voices, oov_fraction, vocab_counts(vocab_corpus))
            else:
                made_pairs = (_syntactic if name == "syntactic" else _tsc)(rng, num_pairs, voices)
            rows, seen, count = [], set(), 0
            for items in made_pairs:  # written as made: a large set never sits in memory
                count += 1
                for correct, (fields, wave) in zip((1, 0), items):
                    stem = (f"{fields['id']}_{'correct' if correct else 'incorrect'}" if name == "tsc"
                            else _name(rng, seen))
                    write_audio(folder / f"{stem}.wav", wave, SAMPLE_RATE)
                    rows.append({**fields, "filename": stem, "correct": correct})
            buf = io.StringIO()
            writer = csv.DictWriter(buf, COLUMNS[name], lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: r["filename"]))  # row order leaks neither pair nor label
            write_text(folder / "gold.csv", buf.getvalue())
            made[name] = count
    write_json(manifest, {"args": args, "pairs": made}, indent=1)
    return {"out": str(out), "pairs": made, "wall_seconds": time.perf_counter() - t0}
