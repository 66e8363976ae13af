"""`syllablelm pairs`: mini-sets in the layouts lm_eval reads, one speaker per pair, real nonwords and
violations, determinism."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from experiments.pairs import main as pairs_command
from syllablelm.evaluation import pair_sets as L
from syllablelm.synthesis import pair_sentences as S
from syllablelm.synthesis import pairs as P
from syllablelm.synthesis import plan

N = 6  # pairs per set: lexical gets round(6 * 0.34) = 2 oov words


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _gold(root: Path, name: str) -> list[dict]:
    with open(root / name / "dev" / "gold.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def miniset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    assert pairs_command(["--out", str(out), "--num-pairs", str(N), "--seed", "5", "--oov-fraction", "0.34"]) == 0
    return out


def test_layout_reads_back(miniset):
    sets = L.find_sets(miniset)
    assert sorted(sets) == ["lexical", "syntactic", "tsc"]
    assert all(len(pairs) == N for pairs in sets.values())
    lexical = sets["lexical"]
    assert sum(p.in_vocab is False for p in lexical) == 2 and sum(p.in_vocab is True for p in lexical) == N - 2
    assert {p.type for p in sets["syntactic"]} == set(S.SYNTAX_TYPES)  # 6 pairs cycle through all 4 types
    for name in ("lexical", "syntactic"):
        assert all(re.fullmatch(r"[A-Za-z]{11}", row["filename"]) for row in _gold(miniset, name))
    for pairs in sets.values():
        for pair in pairs:
            for path in (pair.real, pair.fake):
                info = sf.info(str(path))
                assert info.samplerate == 16_000 and info.channels == 1 and info.format == "WAV"
                assert info.frames > 0.5 * 16_000  # 0.2 s silence each side plus speech
    spoken = " ".join(r.get("word", "") + " " + r.get("transcription", "")
                      for name in ("lexical", "syntactic", "tsc") for r in _gold(miniset, name))
    assert not P.BLOCKED & set(spoken.lower().split())
    assert not any(P.BLOCKED & {w.lower() for w in S.WORD.findall(s)} for s in S.usable_sentences(24))
    # a duration-only scorer runs end to end on the real files
    res = L.evaluate_sets(miniset, lambda paths: [(-sf.info(str(p)).frames, 1) for p in paths])
    assert {k: v["num_pairs"] for k, v in res.items()} == {"lexical": N, "syntactic": N, "tsc": N}


def test_one_speaker_per_pair_and_held_out_voices(miniset):
    for name in ("lexical", "syntactic", "tsc"):
        rows = _gold(miniset, name)
        voices: dict[str, set] = {}
        for row in rows:
            voices.setdefault(row["id"], set()).add(row["voice"])
        assert len(voices) == N and all(len(v) == 1 for v in voices.values()), voices
        for row in rows:
            variant = row["voice"].split()[0].split("+")[1]
            assert variant in P.HELDOUT_MALE + P.HELDOUT_FEMALE
    training = set(plan.MALE_VARIANTS) | set(plan.FEMALE_VARIANTS)
    assert not (set(P.HELDOUT_MALE + P.HELDOUT_FEMALE) & training)


def test_nonwords_are_not_words(miniset):
    lex = P.lexicon()
    _, known = P._inventory()
    rows = _gold(miniset, "lexical")
    words = {r["id"]: r for r in rows if r["correct"] == "1"}
    for row in rows:
        if row["correct"] == "1":
            assert tuple(row["phones"].split()) == lex[row["word"]]
            assert (int(row["frequency"]) > 0) == (P.vocab_counts()[row["word"]] > 0)
            continue
        phones, real = tuple(row["phones"].split()), tuple(words[row["id"]]["phones"].split())
        assert row["frequency"] == ""
        assert P._key(phones) not in known  # no lexicon word (nor its -s/-ed form) sounds like it
        assert len(phones) == len(real) and phones != real and int(row["length"]) == len(phones)
        # one onset, nucleus or coda differs; the stress pattern is kept
        diff = [i for i, (a, b) in enumerate(zip(phones, real)) if a != b]
        assert diff and diff[-1] - diff[0] < 3
        assert [p[0] in "'," for p in phones] == [p[0] in "'," for p in real]


def test_make_nonword_avoids_real_words_and_is_spoken_as_written():
    _, known = P._inventory()
    lex = P.lexicon()
    # many one-segment changes of "cat" are words (bat, cut, cap, ...): all 30 draws must avoid them
    for word in ("cat", "brick"):
        made = {P.make_nonword(lex[word], np.random.default_rng(s)) for s in range(30)} - {None}
        assert len(made) >= 6
        for fake in made:
            assert len(fake) == len(lex[word]) and P._key(fake) not in known
    spk = plan.Speaker(0, "M", "eval", "en-us+Michael", 160, 50, 50)
    fake = min(made)
    assert P._speak_phonemes(fake, spk) is not None  # eSpeak's phones from [[...]] input are the intended ones


def test_sentence_pairs_are_violations_of_their_type(miniset):
    rows = _gold(miniset, "syntactic")
    by_id: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], {})[row["correct"]] = row
    for pair in by_id.values():
        good, bad = pair["1"]["transcription"], pair["0"]["transcription"]
        assert good != bad and good in plan.load_sentences()
        assert sorted(S.WORD.findall(good.lower())) != sorted(S.WORD.findall(bad.lower())) or \
            pair["1"]["type"] == "word_order"
        assert len(S.WORD.findall(good)) == len(S.WORD.findall(bad))
    stories = _gold(miniset, "tsc")
    for sid in {r["id"] for r in stories}:
        true, false = (re.split(r"(?<=[.!?]) ", next(r["transcription"] for r in stories
                                                      if r["id"] == sid and r["correct"] == c)) for c in "10")
        assert len(true) == len(false) == 3 and true[:2] == false[:2] and true[2] != false[2]
        words = [{w.lower() for w in S.WORD.findall(s) if len(w) >= 5} for s in true + false[2:]]
        assert (words[0] & words[1] & words[2]) - words[3]  # a topic word the true ending has, the false lacks


@pytest.mark.parametrize("kind,text,expected", [
    ("subject_verb_agreement", "They have a dog.", ("They has a dog.", "have_has")),
    ("determiner_noun_agreement", "These books are old.", ("This books are old.", "these_this")),
    ("pronoun_case", "I saw it.", ("Me saw it.", "i_me")),
    ("word_order", "The cat slept.", ("Cat the slept.", "the_swap")),
    ("word_order", "No article here.", None),
])
def test_violate(kind, text, expected):
    assert S.violate(text, kind, np.random.default_rng(0)) == expected


def test_deterministic_for_a_seed(miniset, tmp_path):
    P.make_pairs(tmp_path / "same", num_pairs=N, seed=5, oov_fraction=0.34)
    assert _files(tmp_path / "same") == _files(miniset)
    P.make_pairs(tmp_path / "other", num_pairs=N, seed=6, sets=["syntactic"])
    assert _gold(tmp_path / "other", "syntactic") != _gold(miniset, "syntactic")
    assert not (tmp_path / "other" / "lexical").exists()
    with pytest.raises(FileExistsError, match="other arguments"):
        P.make_pairs(tmp_path / "other", num_pairs=N, seed=7, sets=["syntactic"])


def test_vocab_corpus_frequencies(synth_corpus):
    counts = P.vocab_counts(synth_corpus)
    train = " ".join(p.read_text() for p in (synth_corpus / "train").rglob("*.trans.txt")).lower().split()
    assert counts and all(w in train for w in counts)
    dev_only = {w.lower() for p in (synth_corpus / "dev").rglob("*.trans.txt")
                for line in p.read_text().splitlines() for w in line.split()[1:]} - set(train)
    assert dev_only and all(counts[w] == 0 for w in dev_only)
    with pytest.raises(FileNotFoundError):
        P.vocab_counts(synth_corpus / "alignments")
