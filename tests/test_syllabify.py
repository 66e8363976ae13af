"""Maximal-onset syllabification over eSpeak phoneme names and ARPAbet."""
from __future__ import annotations

import numpy as np
import pytest

from syllablelm.audio.syllabify import (
    ARPABET_VOWELS,
    ESPEAK_CONSONANTS,
    is_vowel,
    strip_stress,
    syllabify,
    syllable_spans,
)

# (word, eSpeak en-us phones as eSpeak NG 1.52 reports them, ARPAbet (CMUdict), expected syllables as text)
CASES = [
    ("understanding", ",V n d 3 s t 'a n d I N", "AH2 N D ER0 S T AE1 N D IH0 NG", "un.der.stan.ding"),
    ("table", "t 'eI b @L", "T EY1 B AH0 L", "ta.ble"),
    ("extra", "'E k s t r @", "EH1 K S T R AH0", "ex.tra"),
    ("instruments", "'I n s t r @ m @ n t s", "IH1 N S T R AH0 M AH0 N T S", "in.stru.ments"),
    ("children", "tS 'I l d r @ n", "CH IH1 L D R AH0 N", "chil.dren"),
]
# the phones of each expected syllable, by position: same splits in both alphabets
SPLITS = {
    "understanding": [2, 2, 4, 3],  # V n | d 3 | s t 'a n | d I N
    "table": [2, 2],  # t 'eI | b @L  (ARPAbet: T EY1 | B AH0 L)
    "extra": [3, 3],  # 'E k s | t r @
    "instruments": [2, 4, 5],  # 'I n | s t r @ | m @ n t s
    "children": [3, 4],  # tS 'I l | d r @ n
}


@pytest.mark.parametrize("word,espeak,arpabet,expected", CASES, ids=[c[0] for c in CASES])
def test_textbook_words(word, espeak, arpabet, expected):
    for phones, alphabet in ((espeak.split(), "espeak"), (arpabet.split(), "arpabet")):
        syllables = syllabify(phones, alphabet)
        sizes = [len(s) for s in syllables]
        if word == "table" and alphabet == "arpabet":
            assert sizes == [2, 3], syllables  # ARPAbet spells the syllabic l as AH0 L
        else:
            assert sizes == SPLITS[word], (alphabet, syllables)
        assert [p for s in syllables for p in s] == phones  # nothing lost, reordered or relabelled
        assert len(syllables) == expected.count(".") + 1


def test_stress_marks_are_kept_and_ignored():
    assert strip_stress("'oU") == "oU" and strip_stress(",V") == "V" and strip_stress("AH0") == "AH"
    assert strip_stress("@2") == "@2" and strip_stress("02") == "02"  # eSpeak names that end in a digit
    assert is_vowel("'oU") and is_vowel("AH1", "arpabet") and not is_vowel("D", "espeak")
    # the same letters mean different things: eSpeak V is a vowel, ARPAbet V a consonant
    assert is_vowel("V", "espeak") and not is_vowel("V", "arpabet")
    stressed = syllabify(["t", "'eI", "b", "@L"])
    unstressed = syllabify(["t", "eI", "b", "@L"])
    assert [len(s) for s in stressed] == [len(s) for s in unstressed]
    assert stressed[0][1] == "'eI"


def test_onset_rules():
    assert [len(s) for s in syllabify("s I N 3".split())] == [3, 1]  # NG never starts a syllable: sing.er
    assert syllabify("h 'a p i".split()) == [["h", "'a"], ["p", "i"]]
    assert syllabify("AH0 B S T R AE1 K T".split(), "arpabet") == [["AH0", "B", "S"], ["T", "R", "AE1", "K", "T"]]
    assert syllabify("m 'I s t @".split()) == [["m", "'I"], ["s", "t", "@"]]  # s+stop onset after a vowel
    assert syllabify("h m".split()) == [["h", "m"]]  # no nucleus: one syllable
    assert syllabify([]) == []
    with pytest.raises(ValueError):
        syllabify(["a"], alphabet="ipa")


@pytest.mark.parametrize("alphabet", ["espeak", "arpabet"])
def test_random_words_are_partitioned(alphabet):
    rng = np.random.default_rng(0)
    if alphabet == "espeak":
        vowels, consonants = ["a", "'E", "@", "i:", "aI", "@L"], sorted(ESPEAK_CONSONANTS)
    else:
        vowels, consonants = [v + d for v in sorted(ARPABET_VOWELS) for d in "012"], "P B T D K S Z M N L R W Y".split()
    for _ in range(300):
        phones = [str(rng.choice(vowels if rng.random() < 0.4 else consonants)) for _ in range(rng.integers(1, 10))]
        spans = syllable_spans(phones, alphabet)
        assert [phones[a:b] for a, b in spans] == syllabify(phones, alphabet)
        assert spans[0][0] == 0 and spans[-1][1] == len(phones)
        assert all(b1 == a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
        nuclei = sum(is_vowel(p, alphabet) for p in phones)
        assert len(spans) == max(nuclei, 1)  # one syllable per nucleus
        for a, b in spans:  # and each syllable holds exactly one nucleus (when there is any)
            assert nuclei == 0 or sum(is_vowel(p, alphabet) for p in phones[a:b]) == 1


def test_pure_maximal_onset_rule():
    from syllablelm.audio.syllabify import syllabify

    extra = ["EH1", "K", "S", "T", "R", "AH0"]
    assert syllabify(extra, "arpabet", rule="maximal") == [["EH1", "K"], ["S", "T", "R", "AH0"]]
    assert syllabify(extra, "arpabet") == [["EH1", "K", "S"], ["T", "R", "AH0"]]  # the default keeps s in the coda
    assert syllabify(["IH0", "N", "S", "T", "R", "AH0"], "arpabet", rule="maximal") == [["IH0", "N"],
                                                                                       ["S", "T", "R", "AH0"]]
    with pytest.raises(ValueError, match="rule must be one of"):
        syllabify(extra, "arpabet", rule="sonority")
