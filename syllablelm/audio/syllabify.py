"""Maximal-onset syllabification of one word's phones, over eSpeak NG phoneme names or ARPAbet.

    >>> syllabify(["'V", "n", "d", "3", "s", "t", "'a", "n", "d", "I", "N"])
    [["'V", 'n'], ['d', '3'], ['s', 't', "'a", 'n'], ['d', 'I', 'N']]
    >>> syllabify(["EH1", "K", "S", "T", "R", "AH0"], alphabet="arpabet")
    [['EH1', 'K', 'S'], ['T', 'R', 'AH0']]

Each intervocalic consonant cluster gives the next syllable the longest suffix that is a legal English onset
(``LEGAL_ONSETS``), with one refinement: an /s/ right after an obstruent stays in the coda (/ks/, /ps/,
/ts/ behave like one coda), so "extra" is ex.tra while "instruments" is in.stru.ments. Stress marks
(eSpeak ``'``/``,`` prefixes, ARPAbet 0/1/2 suffixes) are ignored for classification and kept in the output.
The two alphabets share letters with different meanings (eSpeak ``D`` is /ð/, ARPAbet ``D`` is /d/), so the
caller names the alphabet.
"""
from __future__ import annotations

from typing import Sequence

# eSpeak NG English vowel names (phontab tables base1/en/en-us, type "vowel"), plus syllabic consonants.
ESPEAK_VOWELS = frozenset(
    "@ @- @2 @5 @L @# 3 3: a a# a2 a#2 aa A: A@ A# A~ aI aI@ aI3 aU aU@ e e: e# e@ E E# E2 eI i i: i@ i@3 "
    "I I# I2 I2# IR o o: o@ oU oU# O O: O@ O2 O~ OI 0 0# 02 u u: U U@ V VR m- n- N- l-".split()
)
# eSpeak consonant names -> ARPAbet class used by the onset table; variants map to their base consonant.
ESPEAK_CONSONANTS = {
    "p": "P", "b": "B", "t": "T", "t#": "T", "t2": "T", "t[": "T", "d": "D", "d#": "D", "d[": "D", "k": "K",
    "g": "G", "f": "F", "v": "V", "v#": "V", "T": "TH", "D": "DH", "s": "S", "z": "Z", "z#": "Z", "z/2": "Z",
    "S": "SH", "Z": "ZH", "h": "HH", "m": "M", "n": "N", "N": "NG", "l": "L", "l/": "L", "l#": "L",
    "l/2": "L", "r": "R", "r-": "R", "r/": "R", "R": "R", "w": "W", "w#": "W", "j": "Y", ";": "Y",
    "tS": "CH", "dZ": "JH", "x": "K", "?": "Q",
}
ARPABET_VOWELS = frozenset("AA AE AH AO AW AX AXR AY EH ER EY IH IX IY OW OY UH UW UX".split())
STOPS = frozenset("P B T D K G CH JH Q".split())
OBSTRUENTS = STOPS | frozenset("F V TH DH S Z SH ZH HH".split())

_SINGLE = "P B T D K G F V TH DH S Z SH ZH HH M N L R W Y CH JH Q".split()  # every consonant but NG
_CLUSTERS = (
    "P R|P L|P Y|B R|B L|B Y|T R|T W|T Y|D R|D W|D Y|K R|K L|K W|K Y|G R|G L|G W|G Y|F R|F L|F Y|V Y|"
    "TH R|TH W|SH R|S L|S W|S P|S T|S K|S M|S N|S F|HH Y|HH W|M Y|"
    "S P R|S P L|S P Y|S T R|S T Y|S K R|S K W|S K L|S K Y"
)
LEGAL_ONSETS = frozenset([(c,) for c in _SINGLE] + [tuple(o.split()) for o in _CLUSTERS.split("|")])


def strip_stress(phone: str) -> str:
    """Drop eSpeak stress prefixes (``'``, ``,``, ``=``) and ARPAbet stress digits (``AH1`` -> ``AH``)."""
    base = phone.lstrip("',=%")
    if len(base) > 1 and base[-1] in "012" and base[:-1].isalpha() and base[:-1].isupper():
        base = base[:-1]  # ARPAbet digit; eSpeak names such as "@2", "02", "t2" are not all-uppercase letters
    return base


def is_vowel(phone: str, alphabet: str = "espeak") -> bool:
    """True for a syllable nucleus (vowels and syllabic consonants such as eSpeak ``@L``, ``n-``)."""
    base = strip_stress(phone)
    if alphabet == "arpabet":
        return base in ARPABET_VOWELS
    if alphabet != "espeak":
        raise ValueError(f"alphabet must be 'espeak' or 'arpabet', got {alphabet!r}")
    # unknown eSpeak names: eSpeak vowel mnemonics start with one of these characters, consonants never do
    return base in ESPEAK_VOWELS or (base not in ESPEAK_CONSONANTS and base[:1] in "aeiouAEIOUV@30")


def consonant_class(phone: str, alphabet: str = "espeak") -> str:
    """ARPAbet-style class of a consonant (used for onset legality); unknown names map to themselves."""
    base = strip_stress(phone)
    return base if alphabet == "arpabet" else ESPEAK_CONSONANTS.get(base, base)


ONSET_RULES = ("s_coda", "maximal")


def _onset_length(cluster: list[str], rule: str = "s_coda") -> int:
    """How many phones at the end of an intervocalic ``cluster`` (ARPAbet classes) start the next syllable."""
    n = len(cluster)
    for k in range(min(n, 3), 0, -1):
        if tuple(cluster[n - k:]) in LEGAL_ONSETS:
            # /s/ after an obstruent stays in the coda with it: ex.tra (not ek.stra), but in.stru.ments
            if (rule == "s_coda" and k > 1 and cluster[n - k] == "S" and n - k > 0
                    and cluster[n - k - 1] in OBSTRUENTS):
                k -= 1
            return k
    return 0  # e.g. a lone NG: all consonants stay in the coda


def syllabify(phones: Sequence[str], alphabet: str = "espeak", rule: str = "s_coda") -> list[list[str]]:
    """Split one word's phones into syllables (lists of the input names, in order, covering all phones).

    A word without a nucleus is returned as a single syllable; consonants before the first nucleus join the
    first syllable and those after the last nucleus join the last one. ``rule="maximal"`` is pure maximal onset
    (ek.stra); the default ``"s_coda"`` keeps /s/ after an obstruent in the coda (ex.tra).
    """
    if rule not in ONSET_RULES:
        raise ValueError(f"rule must be one of {ONSET_RULES}, got {rule!r}")
    phones = list(phones)
    nuclei = [i for i, p in enumerate(phones) if is_vowel(p, alphabet)]
    if len(nuclei) <= 1:
        return [phones] if phones else []
    starts = [0]
    for a, b in zip(nuclei, nuclei[1:]):
        cluster = [consonant_class(p, alphabet) for p in phones[a + 1:b]]
        starts.append(b - _onset_length(cluster, rule))
    return [phones[s:e] for s, e in zip(starts, starts[1:] + [len(phones)])]


def syllable_spans(phones: Sequence[str], alphabet: str = "espeak", rule: str = "s_coda") -> list[tuple[int, int]]:
    """``[start, stop)`` phone-index spans of :func:`syllabify`'s syllables."""
    spans, i = [], 0
    for syl in syllabify(phones, alphabet, rule):
        spans.append((i, i + len(syl)))
        i += len(syl)
    return spans
