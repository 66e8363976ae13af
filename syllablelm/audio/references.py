"""LibriSpeech syllable references as the field distributes them, read into this project's alignment contract.

    refs = read_references("librispeech_syllable_test.json")          # format detected from the content
    refs = read_references("mfa_out/", "textgrid")                    # a folder of MFA TextGrids
    write_references(refs, "data/refs")                               # one alignment JSON per utterance

Every reader returns ``{utterance id: {"syllables": [[start, end, label], ...], ...}}`` in seconds
(docs/architecture.md, "Data contracts"); the id is the audio file's stem (``1089-134686-0000``). Pauses are gaps:
segments labelled as silence (:data:`SILENCE`) and zero-length segments are dropped, and utterances left without
syllables are skipped; all of these are counted and logged. Malformed input raises
:class:`~syllablelm.audio.alignments.SegmentError` naming the file and the entry (or line). Formats, with where their
structure was established:

- ``"sdhubert"`` (SD-HuBERT's ``files/librispeech_syllable_{val,test}.json``; read by ``utils/syllable.py`` and
  ``evaluate_purity.py`` of github.com/cheoljun95/sdhubert): one JSON object ``{key: {"file_name":
  "test-clean/1089/134686/1089-134686-0000.flac", "syllables": [{"start": s, "end": e, "label": l}, ...]}}``,
  times in **seconds** (possibly as strings: the evaluator applies ``float``), labels ARPAbet phones with stress
  digits (the evaluator strips ``0-3``). The JSON files themselves are not in that repository, so the label's
  inner spelling is kept verbatim; a missing ``label`` reads as ``""`` (clustering is then skipped).
- ``"peng"`` (Peng et al.'s alignment JSONs, github.com/jasonppy/syllable-discovery, ``get_word_ali`` in
  ``save_seg_feats_mincut.py`` / ``unit_analysis_mwm.py``; the same parser is in the SyllableLM notebook): a list
  of items, or ``{"data": [...]}``; each item names its audio by ``item["caption"]["wav"]`` (SpokenCOCO) or
  ``item["wav"]`` (LibriSpeech) and carries ``"syllable_alignment"`` (and ``"text_alignment"`` for words,
  ``"phone_alignment"`` for phones): whitespace-separated tokens ``start__label__end`` in seconds. As in the
  original parser, tokens that do not split into exactly three ``__`` parts are skipped (counted here); a token
  whose times are not numbers is an error. Items without a ``syllable_alignment`` are skipped.
- ``"textgrid"``: Montreal Forced Aligner TextGrids (Praat long or short text format, UTF-8 or UTF-16), one per
  utterance, a file or a folder searched recursively. The tiers whose names end in ``words`` and ``phones`` are
  used; phones must be ARPAbet (MFA's ``english_us_arpa``; IPA models are rejected with a clear error). Each
  word's phones (by midpoint) are syllabified by :func:`syllablelm.audio.syllabify.syllabify`: maximal onset over
  legal English onsets (ek.stra; ``onset_rule="s_coda"`` keeps /s/ after an obstruent in the coda, ex.tra, as the
  synthetic corpus does); syllables never cross word boundaries; labels
  are the syllable's phones joined by spaces, stress digits kept (the metrics strip them).
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

from syllablelm.audio.alignments import SegmentError, check_segments
from syllablelm.audio.syllabify import ARPABET_VOWELS, strip_stress, syllable_spans
from syllablelm.runtime.fileio import write_json

log = logging.getLogger(__name__)

FORMATS = ("sdhubert", "peng", "textgrid")
SILENCE = frozenset({"", "sil", "sp", "spn", "<eps>", "<sil>", "<blank>", "<unk>"})
ARPABET_CONSONANTS = frozenset("P B T D K G CH JH F V TH DH S Z SH ZH HH M N NG L R W Y".split())
_LIBRISPEECH_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def read_references(path: str | os.PathLike, fmt: str = "auto", *, onset_rule: str = "maximal"
                    ) -> dict[str, dict]:
    """Read one reference file (or, for ``"textgrid"``, a folder) into ``{utt_id: alignment dict}``.
    ``onset_rule`` is how TextGrid words are syllabified (:func:`~syllablelm.audio.syllabify.syllabify`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such reference file or folder")
    fmt = detect_format(path) if fmt in (None, "auto") else fmt
    readers = {"sdhubert": _read_sdhubert, "peng": _read_peng,
               "textgrid": lambda p, skipped: _read_textgrids(p, skipped, onset_rule)}
    if fmt not in readers:
        raise ValueError(f"unknown reference format {fmt!r}; expected one of {FORMATS} or 'auto'")
    refs, skipped = {}, Counter()
    for uid, tiers, where in readers[fmt](path, skipped):
        if uid in refs:
            raise SegmentError(f"{where}: utterance {uid!r} appears twice")
        ali = _clean(tiers, where, skipped)
        if ali is not None:
            refs[uid] = ali
    detail = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"
    log.info("%s (%s): %d utterances; skipped: %s", path, fmt, len(refs), detail)
    return refs


def detect_format(path: Path) -> str:
    """``"textgrid"`` for a folder or a ``.TextGrid`` file; for JSON, ``"peng"`` when the root is a list or has
    a ``"data"`` list, ``"sdhubert"`` when it maps keys to objects with ``"syllables"``; else an error."""
    if path.is_dir() or path.suffix.lower() == ".textgrid":
        return "textgrid"
    raw = _load_json(path)
    if isinstance(raw, list) or (isinstance(raw, dict) and isinstance(raw.get("data"), list)):
        return "peng"
    if isinstance(raw, dict) and raw and all(isinstance(v, dict) and "syllables" in v for v in raw.values()):
        return "sdhubert"
    raise SegmentError(f"{path}: cannot tell the reference format from its content; pass fmt explicitly")


def alignment_path(out: str | os.PathLike, uid: str) -> Path:
    """Where :func:`write_references` puts ``uid``: ``OUT/<speaker>/<chapter>/<id>.json`` for LibriSpeech ids,
    ``OUT/<id>.json`` otherwise (``syllablelm.audio.alignments.index_alignments`` finds both by stem)."""
    if not uid or uid.startswith(".") or "/" in uid or os.sep in uid:
        raise ValueError(f"unsafe utterance id for a file name: {uid!r}")
    m = _LIBRISPEECH_ID.match(uid)
    return Path(out, m.group(1), m.group(2), f"{uid}.json") if m else Path(out, f"{uid}.json")


def write_references(refs: dict[str, dict], out: str | os.PathLike) -> list[Path]:
    """Write each utterance's alignment JSON atomically; returns the paths written."""
    paths = []
    for uid, ali in refs.items():
        paths.append(alignment_path(out, uid))
        write_json(paths[-1], ali)
    return paths


# ---------------------------------------------------------------------------------------------------- shared

def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SegmentError(f"{path}: unreadable JSON ({e})") from e


def _utt_id(name) -> str:
    return Path(str(name).replace("\\", "/")).stem


def _clean(tiers: dict[str, list], where: str, skipped: Counter) -> dict | None:
    """Drop silence-labelled and zero-length segments, sort, check the contract; None if no syllables are left."""
    out = {}
    for tier, rows in tiers.items():
        kept = []
        for start, end, label in rows:
            if label is not None and label.strip().lower() in SILENCE:
                skipped["silence segments"] += 1
            elif end == start:
                skipped["zero-length segments"] += 1
            else:
                kept.append([round(start, 6), round(end, 6), "" if label is None else label])
        kept.sort(key=lambda r: (r[0], r[1]))
        check_segments([r[:2] for r in kept], where=f"{where} [{tier}]")
        out[tier] = kept
    if not out.get("syllables"):
        skipped["utterances without syllables"] += 1
        return None
    return out


# ------------------------------------------------------------------------------------------------- SD-HuBERT

def _read_sdhubert(path: Path, skipped: Counter):
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise SegmentError(f"{path}: expected a JSON object {{key: {{'file_name', 'syllables'}}}} (SD-HuBERT)")
    for key, entry in raw.items():
        where = f"{path} [entry {key!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("syllables"), list):
            raise SegmentError(f"{where}: expected an object with a 'syllables' list")
        rows = []
        for i, seg in enumerate(entry["syllables"]):
            try:
                label = seg.get("label")
                rows.append((float(seg["start"]), float(seg["end"]), None if label is None else str(label)))
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                raise SegmentError(f"{where}: syllable {i} needs numeric 'start' and 'end' seconds, got {seg!r}") from e
        yield _utt_id(entry.get("file_name") or key), {"syllables": rows}, where


# ------------------------------------------------------------------------------------------------ Peng et al.

_PENG_TIERS = {"syllables": "syllable_alignment", "words": "text_alignment", "phones": "phone_alignment"}


def parse_peng(raw: str, where: str, skipped: Counter | None = None) -> list[tuple[float, float, str]]:
    """Parse ``'start1__label1__end1 start2__label2__end2 ...'`` (seconds) into ``(start, end, label)``."""
    rows = []
    for j, token in enumerate(raw.split()):
        parts = token.split("__")
        if len(parts) != 3:  # the original parser skips these silently
            if skipped is not None:
                skipped["tokens without three '__' parts"] += 1
            continue
        try:
            rows.append((float(parts[0]), float(parts[2]), parts[1]))
        except ValueError as e:
            raise SegmentError(f"{where}: token {j} {token!r} is not 'start__label__end' in seconds") from e
    return rows


def _read_peng(path: Path, skipped: Counter):
    raw = _load_json(path)
    items = raw.get("data") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise SegmentError(f"{path}: expected a JSON list of items or {{'data': [...]}} (Peng et al.)")
    for i, item in enumerate(items):
        where = f"{path} [item {i}]"
        if not isinstance(item, dict):
            raise SegmentError(f"{where}: expected an object, got {type(item).__name__}")
        caption = item.get("caption")
        wav = caption.get("wav") if isinstance(caption, dict) else item.get("wav")
        if not wav:
            raise SegmentError(f"{where}: no 'wav' (or 'caption': {{'wav'}}) naming the audio file")
        if not isinstance(item.get("syllable_alignment"), str):
            skipped["items without syllable_alignment"] += 1
            continue
        where = f"{where} ({wav})"
        tiers = {tier: parse_peng(item[key], f"{where} {key}", skipped)
                 for tier, key in _PENG_TIERS.items() if isinstance(item.get(key), str)}
        yield _utt_id(wav), tiers, where


# -------------------------------------------------------------------------------------------------- TextGrid

# a quoted string ("" escapes a quote) | a ! comment | an [index] | a flag | a number; anything else is a key
_TG_TOKEN = re.compile(r'"((?:[^"]|"")*)"|(!)[^\n]*|\[[^\]\n]*\]|<exists>|<absent>'
                       r'|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?')


def _decode(data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def parse_textgrid(text: str, where: str = "TextGrid") -> dict[str, list[tuple[float, float, str]]]:
    """Interval tiers of a Praat TextGrid (long or short text format): ``{tier name: [(xmin, xmax, text)]}``.
    Point tiers are skipped. Keys (``xmin =``), indices (``[3]``) and ``!`` comments are ignored, as Praat does."""
    lines = [m.start() for m in re.finditer("\n", text)]
    tokens = []  # (value, line number)
    for m in _TG_TOKEN.finditer(text):
        if m.group(2) or m.group(0).startswith("["):
            continue
        value = m.group(1).replace('""', '"') if m.group(1) is not None else m.group(0)
        tokens.append((value, bisect.bisect_left(lines, m.start()) + 1))
    pos = 0

    def take(kind: str):
        nonlocal pos
        if pos >= len(tokens):
            raise SegmentError(f"{where}: TextGrid ends early (expected {kind})")
        value, line = tokens[pos]
        pos += 1
        if kind == "number":
            try:
                return float(value)
            except ValueError:
                raise SegmentError(f"{where}: line {line}: expected a number, got {value!r}") from None
        return value

    if take("header") != "ooTextFile" or take("header") != "TextGrid":
        raise SegmentError(f"{where}: not a Praat text TextGrid (expected 'ooTextFile' 'TextGrid' first)")
    take("number"), take("number")
    tiers = {}
    if take("<exists>") != "<exists>":
        return tiers
    for _ in range(int(take("number"))):
        line = tokens[pos][1] if pos < len(tokens) else len(lines) + 1
        kind, name = take("tier class"), take("tier name")
        take("number"), take("number")
        n = int(take("number"))
        if kind == "IntervalTier":
            tiers[name] = [(take("number"), take("number"), take("text")) for _ in range(n)]
        elif kind == "TextTier":
            for _ in range(n):
                take("number"), take("text")
        else:
            raise SegmentError(f"{where}: line {line}: unknown tier class {kind!r}")
    return tiers


def _tier(tiers: dict, suffix: str, where: str) -> list:
    names = [n for n in tiers if n.strip().lower().endswith(suffix)]
    if len(names) != 1:
        raise SegmentError(f"{where}: expected one interval tier named '*{suffix}', found {sorted(tiers)}")
    return tiers[names[0]]


def textgrid_alignment(tiers: dict, where: str, onset_rule: str = "maximal") -> dict[str, list]:
    """MFA ``words`` + ``phones`` tiers -> contract tiers, syllables by maximal onset inside each word
    (``onset_rule="s_coda"``: the synthetic corpus's variant, /s/ after an obstruent stays in the coda)."""
    words = sorted((a, b, t.strip()) for a, b, t in _tier(tiers, "words", where) if t.strip().lower() not in SILENCE)
    phones = sorted((a, b, t.strip().upper()) for a, b, t in _tier(tiers, "phones", where)
                    if t.strip().lower() not in SILENCE)
    for a, b, p in phones:
        if strip_stress(p) not in ARPABET_VOWELS | ARPABET_CONSONANTS:
            raise SegmentError(f"{where}: phone {p!r} at {a:.3f}-{b:.3f} s is not ARPAbet; only ARPAbet "
                               "alignments (MFA english_us_arpa) can be syllabified here")
    mids = [(a + b) / 2 for a, b, _ in phones]
    syllables, used = [], 0
    for ws, we, _ in words:
        lo, hi = bisect.bisect_left(mids, ws), bisect.bisect_right(mids, we)
        ph = phones[lo:hi]
        used += len(ph)
        for s, e in syllable_spans([p[2] for p in ph], "arpabet", onset_rule):
            syllables.append((ph[s][0], ph[e - 1][1], " ".join(p[2] for p in ph[s:e])))
    if used != len(phones):
        raise SegmentError(f"{where}: {len(phones) - used} speech phones lie outside every word interval")
    return {"words": words, "syllables": syllables, "phones": phones}


def _read_textgrids(path: Path, skipped: Counter, onset_rule: str = "maximal"):
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() == ".textgrid")
    if not files:
        raise SegmentError(f"{path}: no .TextGrid files found")
    for file in files:
        try:
            text = _decode(file.read_bytes())
        except (OSError, UnicodeError) as e:
            raise SegmentError(f"{file}: unreadable TextGrid ({e})") from e
        yield file.stem, textgrid_alignment(parse_textgrid(text, str(file)), str(file), onset_rule), str(file)
