"""`syllablelm synth`: layout, determinism, resumption, plan invariants, and alignments checked against audio."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from experiments.synth import main as synth_command
from syllablelm.audio.io import frame_levels_db, speech_regions
from syllablelm.synthesis import corpus, plan
from syllablelm.synthesis.espeak import PHONEME_SEP, STOPS, ESpeak, Phone, Synthesis, Word, align

TIERS = ("words", "syllables", "phones")


def _utterances(root: Path) -> list[tuple[Path, Path]]:
    """(flac, alignment json) pairs of a corpus folder."""
    flacs = sorted(p for p in root.glob("*/*/*/*.flac") if p.parts[-4] != "alignments")
    return [(f, root / "alignments" / f.relative_to(root).with_suffix(".json")) for f in flacs]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# the session corpus (conftest: 36 utterances, seed 3, 6 speakers)
# ---------------------------------------------------------------------------------------------------------
def test_layout_transcripts_and_speakers(synth_corpus):
    root = synth_corpus
    pairs = _utterances(root)
    assert len(pairs) == 36
    speakers_by_split: dict[str, set[str]] = {}
    for flac, js in pairs:
        split, spk, chapter = flac.parts[-4:-1]
        assert re.fullmatch(rf"{spk}-{chapter}-\d{{4}}", flac.stem) and spk.isdigit() and chapter.isdigit()
        speakers_by_split.setdefault(split, set()).add(spk)
        assert js.exists(), js
        info = sf.info(str(flac))
        assert info.samplerate == 16_000 and info.channels == 1 and info.format == "FLAC"
    assert set(speakers_by_split) == {"train", "dev", "test"}
    splits = list(speakers_by_split.values())
    assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1:]), speakers_by_split

    # trans.txt: one line per utterance of the chapter, upper case, words as in the alignment
    listed = {}
    for trans in root.glob("*/*/*/*.trans.txt"):
        spk, chapter = trans.parts[-3:-1]
        assert trans.name == f"{spk}-{chapter}.trans.txt"
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            assert text == text.upper() and re.fullmatch(r"[A-Z' ]+", text)
            assert (trans.parent / f"{uid}.flac").exists()
            listed[uid] = text
    assert sorted(listed) == sorted(f.stem for f, _ in pairs)
    for flac, js in pairs:
        words = " ".join(w[2] for w in json.loads(js.read_text())["words"]).upper().split()
        assert words == listed[flac.stem].split(), flac.stem

    # SPEAKERS.TXT: ';' header, then ID | SEX | SUBSET | MINUTES | NAME
    lines = (root / "SPEAKERS.TXT").read_text().splitlines()
    assert lines[0].startswith(";") and "ID" in lines[[ln.startswith(";") for ln in lines].index(False) - 1]
    rows = [[c.strip() for c in ln.split("|")] for ln in lines if not ln.startswith(";")]
    assert len(rows) == 6 and all(len(r) == 5 for r in rows)
    total = sum(sf.info(str(f)).duration for f, _ in pairs) / 60
    assert sum(float(r[3]) for r in rows) == pytest.approx(total, abs=0.01 * len(rows))
    for spk, sex, subset, _, name in rows:
        assert sex in ("M", "F") and spk in speakers_by_split[subset]
        voice = name.split()[0]
        assert re.fullmatch(r"en(-us)?\+\w+", voice) and voice.split("+")[1] not in (
            "m2", "f2", "f3", "f4", "f5", "robert", "belinda", "Annie", "Andrea", "linda")


def test_alignment_json_is_well_formed(synth_corpus):
    merged_phrases = 0
    for flac, js in _utterances(synth_corpus):
        tiers = json.loads(js.read_text())
        assert set(tiers) == set(TIERS)
        duration = sf.info(str(flac)).duration
        for tier in TIERS:
            t = np.array([[a, b] for a, b, _ in tiers[tier]], dtype=np.float64).reshape(-1, 2)
            assert len(t) and (t[:, 1] > t[:, 0]).all(), (js, tier)
            assert (t[1:, 0] >= t[:-1, 1] - 1e-9).all(), (js, tier)  # sorted, non-overlapping
            assert t[0, 0] >= 0 and t[-1, 1] <= duration + 1e-4, (js, tier)
        # syllables tile each word exactly; phones tile each syllable, and the label is their names
        syl, phones = tiers["syllables"], tiers["phones"]
        for ws, we, word in tiers["words"]:
            inside = [s for s in syl if ws - 1e-6 <= s[0] and s[1] <= we + 1e-6]
            assert inside and inside[0][0] == ws and inside[-1][1] == we, (js, word)
            assert all(a[1] == b[0] for a, b in zip(inside, inside[1:])), (js, word)
            merged_phrases += " " in word
        assert sum(len([s for s in syl if ws - 1e-6 <= s[0] and s[1] <= we + 1e-6])
                   for ws, we, _ in tiers["words"]) == len(syl)
        for ss, se, label in syl:
            inside = [p for p in phones if ss - 1e-6 <= p[0] and p[1] <= se + 1e-6]
            assert " ".join(p[2] for p in inside) == label and inside[0][0] == ss and inside[-1][1] == se
    assert merged_phrases > 0  # fixed phrases ("of the") kept as one word interval


def test_pauses_in_alignment_match_the_audio(synth_corpus):
    """For every word gap >= 100 ms, the energy detector finds both pause edges within 30 ms."""
    hits, gaps = 0, 0
    for flac, js in _utterances(synth_corpus):
        wave, sr = sf.read(str(flac), dtype="float32")
        regions = speech_regions(wave, sr)
        words = json.loads(js.read_text())["words"]
        for (_, end, _), (start, _, _) in zip(words, words[1:]):
            if start - end >= 0.1:
                gaps += 1
                hits += (np.abs(regions[:, 1] - end).min() <= 0.03) and (np.abs(regions[:, 0] - start).min() <= 0.03)
        # the speech before the first and after the last word is silence (the edge padding)
        assert regions[0, 0] >= words[0][0] - 0.03 and regions[-1, 1] <= words[-1][1] + 0.03
    assert gaps >= 30, gaps  # sentence and comma pauses
    assert hits / gaps >= 0.95, (hits, gaps)


def test_stop_closures_belong_to_the_stop(synth_corpus):
    """Correction (1): without it, ~3/4 of the phones before a stop end in the stop's closure silence."""
    quiet, total = 0, 0
    for flac, js in _utterances(synth_corpus):
        wave, sr = sf.read(str(flac), dtype="float32")
        levels = frame_levels_db(wave, sr, hop_s=0.001, win_s=0.005)
        loud = np.percentile(levels, 99)
        phones = json.loads(js.read_text())["phones"]
        for (s0, e0, _), (s1, _, label) in zip(phones, phones[1:]):
            if s1 == e0 and label.lstrip("',") in STOPS and e0 - s0 > 0.03:
                total += 1
                quiet += levels[int(round(e0 / 0.001)) - 8] < loud - 45  # 5 ms window ending 3 ms before
    assert total > 100 and quiet / total < 0.05, (quiet, total)


# ---------------------------------------------------------------------------------------------------------
# determinism, resumption, CLI
# ---------------------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(num_utterances=6, seed=11, speakers=3)
    summary = corpus.synthesize_corpus(a, progress=False, **kw)
    assert summary["utterances"] == 6 and summary["synthesized"] == 6 and summary["skipped"] == 0
    assert synth_command(["--out", str(b), "--num-utterances", "6", "--seed", "11", "--speakers", "3",
                        "--no-progress"]) == 0
    files = _files(a)
    assert len(files) == 6 * 2 + 3 + 2 and files == _files(b)  # flac+json, trans per chapter, SPEAKERS, synth

    flac, js = _utterances(a)[0]
    js.unlink()
    again = corpus.synthesize_corpus(a, progress=False, **kw)
    assert again["synthesized"] == 1 and again["skipped"] == 5
    assert _files(a) == files
    with pytest.raises(FileExistsError):
        corpus.synthesize_corpus(a, progress=False, num_utterances=6, seed=12, speakers=3)
    other = corpus.synthesize_corpus(tmp_path / "c", progress=False, num_utterances=6, seed=12, speakers=3)
    assert other["utterances"] == 6 and _files(tmp_path / "c") != files


# ---------------------------------------------------------------------------------------------------------
# the plan (no synthesis)
# ---------------------------------------------------------------------------------------------------------
def test_every_voice_in_the_pools_gives_the_same_samples_a_second_later():
    """Some eSpeak voices seed their noise from the wall clock (time()); none of those may be in the pools, or
    the same seed would not give the same corpus. Synthesise with every variant, cross a second boundary, redo."""
    import hashlib
    import time

    engine = ESpeak()

    from syllablelm.synthesis.pairs import HELDOUT_FEMALE, HELDOUT_MALE

    voices = [f"en+{v}" for v in plan.MALE_VARIANTS + plan.FEMALE_VARIANTS]
    voices += [f"en-us+{v}" for v in HELDOUT_MALE + HELDOUT_FEMALE]  # the pair sets' voices

    def digests():
        return {v: hashlib.md5(engine.synth("a quick test", voice=v, rate=150).audio.tobytes()).digest()
                for v in voices}

    first = digests()
    time.sleep(1.05 - time.time() % 1.0)  # into the next second
    assert digests() == first


def test_plan_splits_are_disjoint_and_parameters_in_range():
    speakers, utts = plan.plan_corpus(num_utterances=400, seed=0, speakers=20)
    assert [sum(u.split == s for u in utts) for s in ("train", "dev", "test")] == [320, 40, 40]
    sentences: dict[str, set[str]] = {}
    spk_split: dict[int, str] = {}
    for u in utts:
        sentences.setdefault(u.split, set()).update(re.split(r"(?<=[.!?]) ", u.text))
        assert spk_split.setdefault(u.speaker.id, u.split) == u.split  # a speaker lives in one split
        assert plan.RATE_WPM[0] <= u.rate <= plan.RATE_WPM[1]
    assert all(not (sentences[x] & sentences[y]) for x, y in (("train", "dev"), ("train", "test"), ("dev", "test")))
    assert len(speakers) == 20 and len({s.id for s in speakers}) == 20 and {s.sex for s in speakers} == {"M", "F"}
    for s in speakers:
        assert 135 <= s.rate <= 185 and 35 <= s.pitch <= 65 and 35 <= s.range_ <= 75
    seconds = np.array([plan.estimate_seconds(u.text, u.rate) for u in utts])
    assert ((seconds >= 2.5) & (seconds <= 15.5)).mean() > 0.95, np.percentile(seconds, [0, 5, 50, 95, 100])
    assert len({u.id for u in utts}) == len(utts)
    again = plan.plan_corpus(num_utterances=400, seed=0, speakers=20)
    assert again == (speakers, utts)
    assert plan.plan_corpus(num_utterances=400, seed=1, speakers=20)[1] != utts


def test_plan_by_hours():
    _, utts = plan.plan_corpus(hours=0.5, seed=0)
    est = sum(plan.estimate_seconds(u.text, u.rate) + u.lead + u.trail for u in utts) / 3600
    assert 0.5 <= est < 0.52
    with pytest.raises(ValueError):
        plan.plan_corpus(hours=0.5, num_utterances=3)
    with pytest.raises(ValueError):
        plan.plan_corpus(num_utterances=10, speakers=2)  # three splits need three speakers


# ---------------------------------------------------------------------------------------------------------
# the three timing corrections, on hand-made events
# ---------------------------------------------------------------------------------------------------------
def _synthesis(audio_len: int, words, phones) -> Synthesis:
    audio = (np.random.default_rng(0).standard_normal(audio_len) * 3000).astype(np.int16)
    return Synthesis(audio, 22050, [Word(*w) for w in words], [Phone(*p) for p in phones])


def test_stop_closure_moves_to_the_stop():
    syn = _synthesis(8000, [(0, 0, 2)], [(0, "'a"), (4000, "t"), (5000, "@"), (8000, "_:")])
    syn.audio[3000:4000] = 0  # the closure silence eSpeak reports inside the vowel
    a = align(syn, "at.", rate=160)
    (s0, e0, _), (s1, e1, _), (s2, e2, _) = a.phones
    assert s0 == 0 and abs(e0 - 3000) <= 22 and s1 == e0 and e1 == s2 == 5000 and e2 == 8000  # 1 ms frames
    assert a.words == [(0, 8000, "at")] and [s[2] for s in a.syllables] == ["'a", "t @"]


@pytest.mark.parametrize("rate", [135, 185])
def test_vowel_after_nasal_starts_earlier(rate):
    syn = _synthesis(6000, [(0, 0, 2)], [(0, "m"), (2000, "'a"), (6000, "_")])
    a = align(syn, "ma", rate=rate)
    shift = round(0.020 * 160 / rate * 22050)
    assert [p[:2] for p in a.phones] == [(0, 2000 - shift), (2000 - shift, 6000)]


def test_fixed_phrase_is_one_word_and_bad_positions_are_repaired():
    # "out of the house": eSpeak gives "out of" one event; "such as": a second event pointing into "such"
    text = "Out of the house, such as this."
    words = [(0, 0, 3), (3000, 7, 3), (5000, 11, 5), (9000, 18, 4), (11000, 19, 4), (12000, 26, 4)]
    phones = [(0, "aU"), (1000, "t"), (2000, "@"), (2500, "v"), (3000, "D"), (4000, "@"), (5000, "h"),
              (6000, "aU"), (7000, "s"), (8000, "_:"), (9000, "s"), (10000, "V"), (10500, "tS"), (11000, "a"),
              (11500, "z"), (12000, "D"), (12500, "I"), (13000, "s")]
    a = align(_synthesis(14000, words, phones), text, rate=160)
    assert [w[2] for w in a.words] == ["out of", "the", "house", "such", "as", "this"]
    assert a.words[0][:2] == (0, 3000) and a.words[2][1] == 8000  # the pause is a gap
    assert [s[2] for s in a.syllables][:2] == ["aU", "t @ v"]  # maximal onset across the merged phrase


def test_phoneme_input_and_text_to_phonemes():
    eng = ESpeak()
    assert eng.text_to_phonemes("cat", voice="en-us") == [("k", "'a", "t")]  # one str: its clauses
    cat, hello = eng.text_to_phonemes(["cat", "Hello. World"], voice="en-us")  # a list: clauses per text
    assert cat == [("k", "'a", "t")] and len(hello) == 2
    args = {"voice": "en-us+m3", "rate": 160, "pitch": 40, "range_": 60}
    syn = eng.synth(f"[[{PHONEME_SEP.join(cat[0])}]]", **args, phonemes=True)
    assert [p.name for p in syn.phones if not p.name.startswith("_")] == ["k", "'a", "t"]
    eng.synth("Something else first.", **args)
    assert np.array_equal(eng.synth("[[k|'a|t]]", **args, phonemes=True).audio, syn.audio)  # history-free
    assert len(eng.synth("[[k|'a|t]]", **args).phones) > 6  # without the flag the brackets are text
    with pytest.raises(ValueError, match="voice"):
        eng.text_to_phonemes(["cat"], voice="no-such-voice")


def test_shipped_text_has_no_blocked_words():
    import re

    from syllablelm.synthesis.pairs import BLOCKED

    text = (Path(__file__).resolve().parents[1] / "syllablelm/synthesis/data/sentences.txt").read_text()
    assert not BLOCKED & {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def test_held_out_voices_are_spoken_by_the_test_split_only():
    """Reserved variants: only the test split speaks them; a training corpus made with --exclude-held-out never
    does; without them the plan is exactly the earlier one (the demo's corpus does not change)."""
    held = set(plan.HELD_OUT_VARIANTS)
    speakers, _ = plan.plan_corpus(num_utterances=400, seed=3, speakers=32, held_out=plan.HELD_OUT_VARIANTS,
                                   split_speakers=[20, 4, 8])
    variant = lambda s: s.voice.split("+")[1]  # noqa: E731
    test = [s for s in speakers if s.split == "test"]
    assert len(test) == 8 and {variant(s) for s in test} <= held and len({variant(s) for s in test}) >= 6
    assert not any(variant(s) in held for s in speakers if s.split != "test")
    training, _ = plan.plan_corpus(num_utterances=400, seed=3, speakers=32, held_out=plan.HELD_OUT_VARIANTS,
                                   held_out_split=None)
    assert not any(variant(s) in held for s in training)
    assert plan.plan_corpus(num_utterances=400, seed=0, speakers=20, held_out=()) == \
        plan.plan_corpus(num_utterances=400, seed=0, speakers=20)
    with pytest.raises(ValueError, match="voice variants"):
        plan.plan_corpus(num_utterances=40, seed=0, speakers=6, held_out=["nobody"])
    with pytest.raises(ValueError, match="split_speakers"):
        plan.plan_corpus(num_utterances=40, seed=0, speakers=6, split_speakers=[6, 0, 0])
