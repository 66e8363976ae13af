"""eSpeak NG 1.52 through ctypes (the library and data that the ``espeakng-loader`` wheel bundles).

    from syllablelm.synthesis.espeak import ESpeak, align
    syn = ESpeak().synth("The team is a unit.", voice="en-us+m3", rate=160, pitch=50, range_=50)
    syn.audio, syn.sample_rate, syn.words, syn.phones    # int16 (T,) at 22050 Hz; raw events
    align(syn, "The team is a unit.", rate=160).seconds()  # {"words", "syllables", "phones"} in seconds
    ESpeak().synth("[[k|'a|t]]", voice="en-us", rate=160, phonemes=True)  # phoneme input, "|"-separated
    ESpeak().text_to_phonemes(["cat", "dog"], voice="en-us")  # [[("k", "'a", "t")], [("d", "'0", "g")]]

Timing comes from the event ``sample`` field (an exact sample index); ``audio_position`` is truncated to
milliseconds and drifts, so it is never used. The library is process-global state (one voice, one callback),
so :func:`ESpeak` returns one shared, lock-protected engine per process, and every synthesis starts from a
freshly loaded library so that its samples do not depend on what was synthesised before (so does every
:meth:`~_Engine.text_to_phonemes` call).
"""
from __future__ import annotations

import _ctypes
import bisect
import ctypes
import dataclasses
import re
import threading
from collections.abc import Sequence

import numpy as np

from syllablelm.audio.syllabify import is_vowel, syllable_spans

# enums from speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
ESPEAK_PHONEMES = 0x100  # espeak_Synth flag: text inside [[...]] is phoneme mnemonics
PHONEME_SEP = "|"  # phoneme separator in TextToPhonemes output and in [[...]] input ("t|S" is not "tS")
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_SENTENCE, EVENT_END, EVENT_PHONEME = 0, 1, 2, 5, 7
RATE, PITCH, RANGE = 1, 3, 4  # espeak_PARAMETER
Clauses = list[tuple[str, ...]]  # text_to_phonemes: one tuple of phoneme mnemonics per clause


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character index into the UTF-8 text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms, truncated: not used
        ("sample", ctypes.c_int),  # sample index from the start of this espeak_Synth call
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class Word:
    sample: int  # start sample at the engine's rate
    text_position: int  # 0-based character offset into the synthesised text
    length: int  # characters


@dataclasses.dataclass(frozen=True)
class Phone:
    sample: int
    name: str  # eSpeak phoneme mnemonic, stress prefix kept (e.g. "'oU", "_:" for a pause)


@dataclasses.dataclass
class Synthesis:
    audio: np.ndarray  # (T,) int16
    sample_rate: int
    words: list[Word]
    phones: list[Phone]  # in time order; each ends where the next starts (the last at len(audio))


class _Engine:
    """The process-wide library handle; use :func:`ESpeak` to get it."""

    def __init__(self, lib_path: str | None = None, data_path: str | None = None):
        import espeakng_loader

        self._lib_path = lib_path or espeakng_loader.get_library_path()
        self._data = (data_path or espeakng_loader.get_data_path()).encode()
        self._lib: ctypes.CDLL | None = None
        self._chunks: list[np.ndarray] = []
        self._words: list[Word] = []
        self._phones: list[Phone] = []
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: the C side holds a raw pointer
        self.lock = threading.RLock()
        self.sample_rate = self._load()

    def _load(self) -> int:
        """(Re)load the library with fresh static state and initialise it; returns its sample rate.

        eSpeak keeps state across calls that no API resets (the pitch-flutter phase, the roughness cycle
        counter, the AGC), so the same text would sound slightly different depending on what was spoken
        before. Unloading and reloading the library (~1 ms) makes every synthesis independent of history:
        the same arguments give the same samples in any order, in any process (unless something else in the
        process also holds libespeak-ng open, which keeps it from being unloaded).
        """
        if self._lib is not None:
            self._lib.espeak_Terminate()
            # POSIX dlclose; elsewhere the library stays loaded and only Terminate/Initialize reset it
            getattr(_ctypes, "dlclose", lambda handle: None)(self._lib._handle)
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        # 1000 ms callback buffers: fewer Python callbacks than the 60 ms default; phoneme events must be asked for
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 1000, self._data,
                                     INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}); data path {self._data.decode()}")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return int(rate)

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while True:
            ev = events[i]
            if ev.type == EVENT_LIST_TERMINATED:
                break
            if ev.type == EVENT_WORD:
                self._words.append(Word(ev.sample, ev.text_position - 1, ev.length))
            elif ev.type == EVENT_PHONEME:
                self._phones.append(Phone(ev.sample, ev.id.string.decode("utf-8", "replace")))
            i += 1
        return 0  # 0 = continue synthesis

    def _reload(self, voice: str) -> ctypes.CDLL:
        """Reload the library (see :meth:`_load`) and select ``voice``; the caller holds :attr:`lock`."""
        self._load()
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak rejected voice {voice!r}")
        return self._lib

    def synth(self, text: str, *, voice: str, rate: int, pitch: int = 50, range_: int = 50,
              phonemes: bool = False) -> Synthesis:
        """Synthesise ``text`` with ``voice`` (e.g. ``"en-us+m3"``), ``rate`` (words per minute), base ``pitch``
        and pitch ``range_`` (0-100); deterministic (see :meth:`_load`). With ``phonemes``, text inside
        ``[[...]]`` is eSpeak phoneme mnemonics separated by :data:`PHONEME_SEP` (``"[[k|'a|t]]"``; the
        espeakPHONEMES flag). Raises ``ValueError`` for a voice or parameter eSpeak rejects."""
        with self.lock:
            self._reload(voice)
            for key, value in ((RATE, rate), (PITCH, pitch), (RANGE, range_)):
                if self._lib.espeak_SetParameter(key, int(value), 0) != 0:
                    raise ValueError(f"eSpeak rejected parameter {key}={value}")
            self._chunks, self._words, self._phones = [], [], []
            raw = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(raw)
            flags = CHARS_UTF8 | (ESPEAK_PHONEMES if phonemes else 0)
            status = self._lib.espeak_Synth(buf, len(raw), 0, POS_CHARACTER, 0, flags, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for {text[:60]!r}")
            self._lib.espeak_Synchronize()
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return Synthesis(audio, self.sample_rate, self._words, self._phones)

    def text_to_phonemes(self, texts: str | Sequence[str], *, voice: str) -> Clauses | list[Clauses]:
        """eSpeak's phonemes of ``texts`` in ``voice``'s dictionary (``espeak_TextToPhonemes``): per text, one
        tuple of phoneme mnemonics (stress marks kept) per clause eSpeak splits it into; for a single ``str``,
        just that text's list of clauses. The output is split at :data:`PHONEME_SEP` only, so a space between
        words stays inside a piece (``"such as"`` -> ``"tS _"``). One library reload per call (as :meth:`synth`)."""
        single = isinstance(texts, str)
        out = []
        with self.lock:
            lib = self._reload(voice)
            for text in [texts] if single else texts:
                raw = text.encode()  # kept alive while eSpeak advances the pointer through it
                ptr, clauses = ctypes.c_char_p(raw), []
                while ptr.value:
                    chunk = lib.espeak_TextToPhonemes(ctypes.byref(ptr), CHARS_UTF8, ord(PHONEME_SEP) << 8)
                    clauses.append(tuple(p for p in chunk.decode().split(PHONEME_SEP) if p))
                out.append(clauses)
        return out[0] if single else out


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def ESpeak() -> _Engine:  # noqa: N802 - reads like a constructor; the engine is one per process
    """The process-wide eSpeak engine (initialised on first use; thread-safe)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


# ----------------------------------------------------------------------------------------------------------
# Events -> intervals, with the three timing corrections (docs/algorithms.md, "Synthetic speech")
# ----------------------------------------------------------------------------------------------------------
STOPS = frozenset("p b t d k g tS dZ t# t2 d# t[ d[ ? c J q".split())
NASALS_LIQUIDS = frozenset("m n N l l/ r r- r/ R w j ;".split())  # eSpeak's nasal and liquid classes
VOWEL_LAG_S = 0.020  # a vowel after a nasal/liquid is reported this late at REFERENCE_WPM
REFERENCE_WPM = 160
CLOSURE_DB = -45.0  # a closure is quieter than this, relative to the utterance's loudest millisecond
WORD_RE = re.compile(r"[A-Za-z0-9']+")  # a transcript word: what LibriSpeech's trans.txt keeps


def words_of(text: str) -> list[str]:
    """The words of ``text`` as the transcripts spell them (punctuation dropped, case kept)."""
    return WORD_RE.findall(text)


@dataclasses.dataclass
class Alignment:
    """Intervals in samples at ``sample_rate``; pauses are gaps. Labels are eSpeak phoneme names."""
    sample_rate: int
    num_samples: int
    words: list[tuple[int, int, str]]
    syllables: list[tuple[int, int, str]]
    phones: list[tuple[int, int, str]]

    def seconds(self, digits: int = 4) -> dict[str, list[list]]:
        """The alignment-JSON dict (seconds, rounded)."""
        sr = self.sample_rate
        return {tier: [[round(a / sr, digits), round(b / sr, digits), lab] for a, b, lab in getattr(self, tier)]
                for tier in ("words", "syllables", "phones")}


def _closure_start(levels: np.ndarray, lo: int, hi: int, hop: int, threshold_db: float) -> int:
    """Start of the quiet run that ends at sample ``hi`` (the stop's release) inside ``[lo, hi)``, from the
    per-millisecond ``levels`` (dB, frame ``k`` = samples ``[k*hop, (k+1)*hop)``); ``hi`` if none."""
    first, last = -(-lo // hop), hi // hop  # whole frames inside [lo, hi)
    if last - first < 3:
        return hi
    quiet = levels[first:last] < threshold_db
    # the release may leak into the last 2 ms before the reported event: let the run end up to 2 ms early
    end = len(quiet)
    while end > len(quiet) - 2 and not quiet[end - 1]:
        end -= 1
    start = end
    while start > 0 and quiet[start - 1]:
        start -= 1
    if end - start < 3:  # under 3 ms of quiet is not a closure
        return hi
    return max((first + start) * hop, lo + (hi - lo) // 4)  # leave the previous phone a quarter at least


def align(syn: Synthesis, text: str, rate: int) -> Alignment:
    """Words, maximal-onset syllables and phones of one synthesis, with the three corrections applied:
    (1) a stop's closure silence, reported inside the preceding phone, is moved to the stop; (2) a vowel after
    a nasal or liquid starts ``VOWEL_LAG_S`` earlier (scaled by ``REFERENCE_WPM / rate``); (3) a fixed phrase
    that eSpeak speaks as one word event ("of the") stays one word interval labelled with all its words."""
    audio, sr, n_audio = syn.audio, syn.sample_rate, len(syn.audio)
    events = sorted(syn.phones, key=lambda p: p.sample)
    # (start, end, name); pauses ("_", "_:", "_!") become gaps
    raw = [[p.sample, q.sample if q is not None else n_audio, p.name]
           for p, q in zip(events, events[1:] + [None])]
    phones: list[list] = []
    for start, end, name in raw:
        if name.startswith("_"):
            continue
        if end <= start:
            # a zero-length phone (a word-final dark l folded into its vowel): it takes the vowel's last third
            if phones and phones[-1][1] == start and phones[-1][1] - phones[-1][0] >= 3:
                cut = phones[-1][1] - (phones[-1][1] - phones[-1][0]) // 3
                phones[-1][1] = cut
                phones.append([cut, start, name])
            continue
        phones.append([start, min(end, n_audio), name])
    hop = max(1, sr // 1000)  # 1 ms frames for the closure search
    n = len(audio) // hop
    energy = np.square(audio[: n * hop].astype(np.float32)).reshape(n, hop).mean(1)  # (n,)
    levels = 10 * np.log10(energy + 1.0)  # dB re one int16 step
    threshold = (float(np.percentile(levels, 99)) if n else 0.0) + CLOSURE_DB
    lag = int(round(VOWEL_LAG_S * REFERENCE_WPM / max(rate, 1) * sr))
    for prev, cur in zip(phones, phones[1:]):
        if prev[1] != cur[0]:
            continue  # a pause between them: nothing to move
        base_prev, base_cur = prev[2].lstrip("',"), cur[2].lstrip("',")
        if base_cur in STOPS:  # (1)
            cut = _closure_start(levels, prev[0], cur[0], hop, threshold)
        elif base_prev in NASALS_LIQUIDS and is_vowel(cur[2]):  # (2)
            cut = max(cur[0] - lag, prev[0] + (prev[1] - prev[0]) // 2)
        else:
            continue
        prev[1] = cur[0] = cut
    # (3) words: a phone belongs to the last word event at or before its start
    word_samples = [w.sample for w in syn.words]
    labels = _word_labels(syn.words, text)
    groups: dict[int, list[list]] = {}
    for ph in phones:
        groups.setdefault(max(0, bisect.bisect_right(word_samples, ph[0]) - 1), []).append(ph)
    words, syllables = [], []
    for k in sorted(groups):
        ph = groups[k]
        if k >= len(labels) or not labels[k]:
            continue  # phones with no word to name (cannot happen with eSpeak's events; be safe)
        words.append((ph[0][0], ph[-1][1], labels[k]))
        for a, b in syllable_spans([p[2] for p in ph]):
            syllables.append((ph[a][0], ph[b - 1][1], " ".join(p[2] for p in ph[a:b])))
    return Alignment(sr, n_audio, words, syllables, [tuple(p) for p in phones])


def _word_labels(words: list[Word], text: str) -> list[str]:
    """The text each word event speaks: its token up to the next event's token (so a fixed phrase with one
    event gets all its words). eSpeak sometimes gives a multi-word entry ("such as") a second event whose
    text position points back into the first word; such an event takes the next token instead."""
    tokens = [(m.start(), m.end(), m.group().lower()) for m in WORD_RE.finditer(text)]
    starts = [t[1] for t in tokens]
    index, prev = [], -1
    for w in words:
        i = bisect.bisect_right(starts, w.text_position)  # first token ending after the position
        i = max(i, prev + 1)
        index.append(i)
        prev = i
    if index:
        index[0] = 0  # anything before the first event is spoken with it
    bounds = index + [len(tokens)]
    return [" ".join(t[2] for t in tokens[a:b]) for a, b in zip(bounds, bounds[1:])]
