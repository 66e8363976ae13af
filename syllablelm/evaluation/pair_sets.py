"""Pairwise spoken-LM evaluation: sWUGGY (lexical), sBLIMP (syntactic) and topic StoryCloze (tSC).

    from syllablelm.evaluation.pair_sets import evaluate_sets
    results = evaluate_sets("data/sLM21", score_fn)   # score_fn(paths) -> [(sum_logprob, num_tokens), ...]
    results["lexical"]["normalised"]["in_vocab"]["accuracy"]

Layouts read (``<split>`` is ``dev`` unless told; ``root`` may also be the folder that holds ``gold.csv``)::

    root/lexical/<split>/<filename>.wav + gold.csv     id,filename,voice,frequency,word,correct (+ phones,length)
    root/syntactic/<split>/<filename>.wav + gold.csv   id,filename,voice,type,subtype,correct (+ transcription)
    root/tsc/<split>/<filename>.wav + gold.csv         id,filename,voice,correct (+ transcription)
    root/tsc/<split>/<id>_correct.wav, <id>_incorrect.wav      (tSC without gold.csv: pairs from the names)

The lexical and syntactic files are those of the ZeroSpeech 2021 sLM21 release, as its evaluation code reads
them (github zerospeech/zerospeech2021, zerospeech/benchmarks): ``filename`` has no extension, ``correct`` is 1
for the word / grammatical sentence and 0 for the other; a word and its nonword share ``id`` and ``voice``.
``frequency`` is the word's count in LibriSpeech, 0 (or the text ``oov``) for out-of-vocabulary words; the
"in-vocab" subset keeps pairs whose word row has a frequency >= 1 (nonword rows may leave it empty). Only
``id, filename, correct`` (+ ``type`` for syntactic) are required; ``voice`` (used for pairing) may be absent.
Rows pair on (id, voice) [(type, subtype, id, voice) for syntactic]; when those keys do not pair the rows one to
one, the k-th correct row pairs with the k-th incorrect row, which is what the ZR2021 evaluation itself does.

Scores: a pair counts 1 if the real item scores higher, 0 if lower, 0.5 on an exact tie; an item's score is the
summed log-likelihood, or that divided by its number of scored tokens ("normalised"). As in ZR2021, the pairs of
one item (the same id in several voices) are averaged first and the accuracy is the mean over items. Every
unique file is scored once, whichever sets and normalisations use it.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

SETS = ("lexical", "syntactic", "tsc")
CHANCE = 0.5  # exact chance level of every pairwise task here (one real and one fake item per pair)
ScoreFn = Callable[[list[Path]], Sequence[tuple[float, int]]]  # paths -> [(sum_logprob, num_tokens)]


@dataclasses.dataclass(frozen=True)
class Pair:
    id: str  # the item; pairs of one item (several voices) are averaged before the mean over items
    real: Path  # the word / grammatical sentence / story with its true ending
    fake: Path  # the nonword / ungrammatical sentence / story with a random ending
    voice: str = ""
    in_vocab: bool | None = None  # lexical: the word occurs in the LM's training text; None = unknown
    type: str = ""  # syntactic phenomenon ("" for lexical and tSC)
    subtype: str = ""

    @property
    def item(self) -> tuple[str, str, str]:
        return self.type, self.subtype, self.id


class GoldError(ValueError):
    """A gold file that cannot be read; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")


# ----------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------
def _folder(root: str | Path, name: str, split: str) -> Path:
    """The folder holding ``gold.csv`` (or tSC's named wavs): ``root`` itself, else ``root/name/split``."""
    root = Path(root)
    if (root / "gold.csv").is_file() or (name == "tsc" and any(root.glob("*_correct.wav"))):
        return root
    folder = root / name / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no {name} set: neither {root / 'gold.csv'} nor {folder} exists")
    return folder


def _read_gold(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: gold file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise GoldError(path, f"missing column(s) {missing}; the header is {header}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    for i, row in enumerate(rows):
        if row["correct"] not in ("0", "1", "True", "False", "true", "false"):
            raise GoldError(path, f"row {i + 2}: correct must be 1 or 0, got {row['correct']!r}")
        row["correct"] = "1" if row["correct"] in ("1", "True", "true") else "0"
    return rows


def _audio(folder: Path, filename: str) -> Path:
    """ZR2021 lists file names without extension; a name that carries one is used as it is."""
    path = folder / filename
    return path if path.suffix.lower() in (".wav", ".flac") else folder / f"{filename}.wav"


def _pair_rows(rows: list[dict], key: Callable[[dict], tuple], path: Path) -> list[tuple[dict, dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    if all(sorted(r["correct"] for r in g) == ["0", "1"] for g in groups.values()):
        return [tuple(sorted(g, key=lambda r: r["correct"], reverse=True)) for g in groups.values()]
    real = [r for r in rows if r["correct"] == "1"]
    fake = [r for r in rows if r["correct"] == "0"]
    if len(real) != len(fake):
        raise GoldError(path, f"{len(real)} correct and {len(fake)} incorrect rows cannot be paired")
    return list(zip(real, fake))  # ZR2021's own rule: the k-th correct row with the k-th incorrect row


def _frequency_in_vocab(value: str | None, path: Path) -> bool | None:
    if value is None or value == "" or value.lower() in ("nan", "na"):
        return None
    if value.lower() == "oov":
        return False
    try:
        return float(value) >= 1
    except ValueError:
        raise GoldError(path, f"frequency must be a count or 'oov', got {value!r}") from None


def _check_files(pairs: list[Pair], gold: Path) -> list[Pair]:
    missing = [str(p) for pair in pairs for p in (pair.real, pair.fake) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{gold}: {len(missing)} listed audio file(s) missing, e.g. {missing[:3]}")
    return pairs


def read_lexical(root: str | Path, split: str = "dev") -> list[Pair]:
    """sWUGGY pairs (word, nonword) from ``lexical/<split>/gold.csv``."""
    folder = _folder(root, "lexical", split)
    gold = folder / "gold.csv"
    rows = _read_gold(gold, ("id", "filename", "correct"))
    pairs = [Pair(w["id"], _audio(folder, w["filename"]), _audio(folder, n["filename"]), w.get("voice", ""),
                  _frequency_in_vocab(w.get("frequency"), gold))
             for w, n in _pair_rows(rows, lambda r: (r["id"], r.get("voice", "")), gold)]
    return _check_files(pairs, gold)


def read_syntactic(root: str | Path, split: str = "dev") -> list[Pair]:
    """sBLIMP pairs (grammatical, ungrammatical) from ``syntactic/<split>/gold.csv``."""
    folder = _folder(root, "syntactic", split)
    gold = folder / "gold.csv"
    rows = _read_gold(gold, ("id", "filename", "type", "correct"))
    key = lambda r: (r["type"], r.get("subtype", ""), r["id"], r.get("voice", ""))  # noqa: E731
    pairs = [Pair(s["id"], _audio(folder, s["filename"]), _audio(folder, n["filename"]), s.get("voice", ""),
                  None, s["type"], s.get("subtype", "")) for s, n in _pair_rows(rows, key, gold)]
    return _check_files(pairs, gold)


def read_story_cloze(root: str | Path, split: str = "dev") -> list[Pair]:
    """tSC pairs (story with its true ending, with a random ending): ``gold.csv`` if present, else the
    ``<id>_correct.wav`` / ``<id>_incorrect.wav`` names."""
    folder = _folder(root, "tsc", split)
    gold = folder / "gold.csv"
    if gold.is_file():
        rows = _read_gold(gold, ("id", "filename", "correct"))
        pairs = [Pair(c["id"], _audio(folder, c["filename"]), _audio(folder, i["filename"]), c.get("voice", ""))
                 for c, i in _pair_rows(rows, lambda r: (r["id"], r.get("voice", "")), gold)]
        return _check_files(pairs, gold)
    real = {p.name[: -len("_correct.wav")]: p for p in folder.glob("*_correct.wav")}
    fake = {p.name[: -len("_incorrect.wav")]: p for p in folder.glob("*_incorrect.wav")}
    if not real or set(real) != set(fake):
        raise FileNotFoundError(f"{folder}: no gold.csv, and the *_correct.wav / *_incorrect.wav files do not pair "
                                f"({len(real)} correct, {len(fake)} incorrect, unpaired "
                                f"{sorted(set(real) ^ set(fake))[:3]})")
    return [Pair(i, real[i], fake[i]) for i in sorted(real)]


READERS = {"lexical": read_lexical, "syntactic": read_syntactic, "tsc": read_story_cloze}


# ----------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------
def pair_outcomes(scores_real, scores_fake) -> np.ndarray:
    """1.0 where the real item scores higher, 0.0 where lower, 0.5 on an exact tie. ``(N,)``"""
    real, fake = np.asarray(scores_real, np.float64), np.asarray(scores_fake, np.float64)
    if real.shape != fake.shape:
        raise ValueError(f"{real.shape} real scores vs {fake.shape} fake scores")
    if np.isnan(real).any() or np.isnan(fake).any():
        raise ValueError("NaN scores cannot be compared")
    return (real > fake) + 0.5 * (real == fake)


def pair_accuracy(scores_real, scores_fake) -> float:
    """Mean of :func:`pair_outcomes` (nan for no pairs).

    >>> pair_accuracy([-1.0, -2.0, -3.0, -4.0], [-2.0, -1.0, -3.0, -5.0])
    0.625
    """
    out = pair_outcomes(scores_real, scores_fake)
    return float(out.mean()) if len(out) else math.nan


def score_files(paths: Iterable[str | Path], score_fn: ScoreFn, *,
                batch_size: int | None = None) -> dict[Path, tuple[float, int]]:
    """``{path: (sum_logprob, num_tokens)}`` for the unique ``paths``, in sorted batches of ``batch_size``."""
    unique = sorted({Path(p) for p in paths})
    step = batch_size or max(len(unique), 1)
    out: dict[Path, tuple[float, int]] = {}
    for i in range(0, len(unique), step):
        batch = unique[i:i + step]
        result = list(score_fn(batch))
        if len(result) != len(batch):
            raise ValueError(f"score_fn returned {len(result)} scores for {len(batch)} files")
        out.update({p: (float(s), int(n)) for p, (s, n) in zip(batch, result)})
    return out


def _value(path: Path, score: tuple[float, int], normalise: bool) -> float:
    total, n = score
    if not normalise:
        return total
    if n < 1:
        raise ValueError(f"{path}: {n} scored tokens, so no length-normalised score")
    return total / n


def _summary(pairs: Sequence[Pair], outcomes: np.ndarray) -> dict:
    """Accuracy as ZR2021 computes it: outcomes averaged within each item, then over items."""
    items: dict[tuple, list[float]] = {}
    for pair, o in zip(pairs, outcomes):
        items.setdefault(pair.item, []).append(float(o))
    means = [sum(v) / len(v) for v in items.values()]
    return {"accuracy": sum(means) / len(means) if means else math.nan, "num_pairs": len(pairs),
            "num_items": len(items)}


def evaluate_pairs(pairs: Sequence[Pair], score_fn: ScoreFn | None = None, *, normalise: bool,
                   scores: Mapping[Path, tuple[float, int]] | None = None, batch_size: int | None = None) -> dict:
    """Accuracy of ``pairs`` with summed (``normalise=False``) or per-token log-likelihoods:
    ``{"all": {"accuracy", "num_pairs", "num_items"}, "chance": 0.5, "normalise": bool}``, plus
    ``"in_vocab"`` (pairs whose word is in-vocab) when any pair knows it and ``"by_type": {type: ...}`` when any
    pair has a type. ``scores`` (from :func:`score_files`) replaces calling ``score_fn``."""
    if scores is None:
        if score_fn is None:
            raise ValueError("give score_fn or scores")
        scores = score_files([p for pair in pairs for p in (pair.real, pair.fake)], score_fn, batch_size=batch_size)
    real = [_value(p.real, scores[Path(p.real)], normalise) for p in pairs]
    fake = [_value(p.fake, scores[Path(p.fake)], normalise) for p in pairs]
    outcomes = pair_outcomes(real, fake)
    result = {"all": _summary(pairs, outcomes), "chance": CHANCE, "normalise": normalise}
    if any(p.in_vocab is not None for p in pairs):
        keep = [i for i, p in enumerate(pairs) if p.in_vocab]
        result["in_vocab"] = _summary([pairs[i] for i in keep], outcomes[keep])
    types = sorted({p.type for p in pairs if p.type})
    if types:
        result["by_type"] = {t: _summary([p for p in pairs if p.type == t],
                                         outcomes[[i for i, p in enumerate(pairs) if p.type == t]])
                             for t in types}
    return result


def find_sets(root: str | Path, split: str = "dev") -> dict[str, list[Pair]]:
    """The pairs of each set (lexical, syntactic, tsc) present under ``root/<set>/<split>``."""
    root = Path(root)
    return {name: READERS[name](root, split) for name in SETS if (root / name / split).is_dir()}


def evaluate_sets(root: str | Path, score_fn: ScoreFn, *, split: str = "dev",
                  batch_size: int | None = None) -> dict:
    """Evaluate every set found under ``root`` (see :func:`find_sets`):
    ``{set: {"num_pairs", "summed": evaluate_pairs(...), "normalised": evaluate_pairs(...)}}``. All unique
    files of all sets go through ``score_fn`` once, in batches of ``batch_size`` (default: one call)."""
    sets = find_sets(root, split)
    if not sets:
        raise FileNotFoundError(f"{root}: none of {'/'.join(SETS)}/{split} exists")
    scores = score_files([p for pairs in sets.values() for pair in pairs for p in (pair.real, pair.fake)],
                         score_fn, batch_size=batch_size)
    return {name: {"num_pairs": len(pairs),
                   "summed": evaluate_pairs(pairs, normalise=False, scores=scores),
                   "normalised": evaluate_pairs(pairs, normalise=True, scores=scores)}
            for name, pairs in sets.items()}
