"""The sentence side of the LM pair sets: grammatical violations (sBLIMP-style) and two-ending stories
(tSC-style) made from the shipped sentence pool. Text only; :mod:`syllablelm.synthesis.pairs` speaks them."""
from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Sequence

import numpy as np

from syllablelm.synthesis.plan import load_sentences

SETS = ("lexical", "syntactic", "tsc")  # the pair sets, in the order they are made

# slurs and vulgar words are never spoken, nor a sentence with one (a few shipped sentences have one)
BLOCKED = frozenset("nigger negro spic jap whore coon shit piss bastard retard queer".split())

WORD = re.compile(r"[A-Za-z']+")
SWAPS = {  # each swap breaks agreement or case wherever it applies ("was"->"were" is not: "if he were")
    "subject_verb_agreement": {"is": "are", "are": "is", "has": "have", "have": "has", "does": "do", "do": "does"},
    "determiner_noun_agreement": {"this": "these", "these": "this", "that": "those", "those": "that"},
    "pronoun_case": {"i": "me", "me": "I", "he": "him", "him": "he", "we": "us", "us": "we", "they": "them",
                     "them": "they", "she": "her"},
}
SYNTAX_TYPES = (*SWAPS, "word_order")
ARTICLES = ("a", "an", "the")
STOPWORDS = frozenset("""which their there would about other these those could should being after where every
before under through while again against never always something nothing because without within""".split())


def usable_sentences(max_words: int) -> list[str]:
    """Shipped sentences of 5 to ``max_words`` words, none blocked."""
    return [s for s in load_sentences() if 5 <= len(w := WORD.findall(s)) <= max_words
            and not BLOCKED & {x.lower() for x in w}]


def violate(text: str, kind: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """(ungrammatical text, subtype) from one randomly chosen trigger of ``kind`` in ``text``, or None."""
    words = list(WORD.finditer(text))
    if kind == "word_order":  # an article followed, after a single space, by another word
        hits = [m for m, n in itertools.pairwise(words) if m.group().lower() in ARTICLES and n.start() == m.end() + 1]
    else:
        hits = [m for m in words if m.group().lower() in SWAPS[kind]]
    if not hits:
        return None
    m = hits[int(rng.integers(len(hits)))]
    word = m.group()
    if kind == "word_order":
        nxt = WORD.match(text, m.end() + 1)
        first = nxt.group()[0].upper() + nxt.group()[1:] if m.start() == 0 else nxt.group()
        return f"{text[:m.start()]}{first} {word.lower()}{text[nxt.end():]}", f"{word.lower()}_swap"
    new = SWAPS[kind][word.lower()]
    if word[0].isupper() and new != "I":
        new = new[0].upper() + new[1:]
    return text[: m.start()] + new + text[m.end():], f"{word.lower()}_{new.lower()}"


def stories(pool: Sequence[str], n: int, rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """Up to ``n`` (topic, context, true ending, false ending): 2+1 sentences sharing a content word (the topic);
    the false ending lacks it and is within 2 words of the true ending's length. No sentence is used twice."""
    lengths = [len(WORD.findall(s)) for s in pool]
    by_word: dict[str, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(pool):
        for w in sorted({w.lower() for w in WORD.findall(s)}):
            if len(w) >= 5 and w not in STOPWORDS:
                by_word[w].append(i)
    topics = [w for w in sorted(by_word) if 3 <= len(by_word[w]) <= 40]  # frequent words are not topics
    used, out = set(), []
    for w in (topics[i] for i in rng.permutation(len(topics))):
        free = [i for i in by_word[w] if i not in used]
        if len(free) < 3:
            continue
        a, b, c = (free[i] for i in rng.choice(len(free), 3, replace=False))
        has = set(by_word[w])
        others = [i for i in range(len(pool)) if i not in used and i not in has and abs(lengths[i] - lengths[c]) <= 2]
        if others:
            d = others[int(rng.integers(len(others)))]
            used.update((a, b, c, d))
            out.append((w, f"{pool[a]} {pool[b]}", pool[c], pool[d]))
        if len(out) == n:
            break
    return out
