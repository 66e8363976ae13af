"""The intelligibility judge: a small CTC phone recognizer that scores the phone error rate (PER) of speech.

Speech-out evaluation (issue 29) asks how much of an utterance survives the trip through units and a vocoder. A
general ASR (pocketsphinx, en-us) cannot read eSpeak audio at all, so this module holds a recognizer trained on the
synthetic corpus's own phone alignments, on training voices only (``syllablelm synth --exclude-held-out``): scored
on held-out voices it measures intelligibility rather than memorised voices. It is an evaluation tool, apart from
the self-supervised pipeline: nothing in the tokenizer or the SpeechLM reads it.

Pieces (each a plain function or module, so tests check them one by one):

- **Inventory.** The eSpeak phone names of the corpus's ``phones`` tier with the stress marks ``'`` and ``,``
  removed (``'oU`` -> ``oU``; other symbols such as ``I#``, ``@2``, ``;`` stay). :data:`PHONES` is the inventory
  the shipped judge was trained with; CTC's blank is index 0, phone ``i`` is ``PHONES[i - 1]``.
- **Features.** 80-bin log-mel at 16 kHz (25 ms window, 10 ms hop, 512-point FFT), normalised per utterance and
  per bin to zero mean and unit variance, so the vocoder's output level and a constant spectral tilt do not matter.
- **Network.** Two 1-D convolutions (the second with stride 2: 100 Hz -> 50 Hz), a bidirectional LSTM and a linear
  layer to blank + phones (:class:`PhoneRecognizer`, ~1.7 M parameters).
- **Decoding.** Greedy CTC: the best class per frame, repeats collapsed, blanks dropped (:func:`greedy_decode`).
- **Scoring.** :func:`phone_errors` is the Levenshtein distance between the hypothesis and the reference phones
  (``torchaudio.functional.edit_distance``) and the reference length; a set's PER is the sum of the distances over
  the sum of the reference lengths (:func:`phone_error_rate`), the ratio the voice-level bootstrap of
  :func:`syllablelm.evaluation.significance.paired_ratio_bootstrap` resamples.

The judge file (:func:`save_judge` / :func:`load_judge`) is a plain ``torch.save`` dict: the format tag, the phone
inventory, the feature settings, the network's hyper-parameters and its weights in float16 (the shipped file stays
under 4 MB; they are cast back to float32 on load), readable with ``weights_only=True`` and without Lightning.

    judge = load_judge("experiments/pretrained/judge.ckpt")
    hyp = judge.transcribe(read_audio("utt.flac"))               # ['D', 'e@', 'k', ...]
    ref = judge.phones_of_alignment("alignments/test/.../utt.json")
    errors, length = phone_errors(hyp, ref)
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.functional as AF
from torch import nn

from syllablelm.audio.alignments import SegmentError, load_alignment
from syllablelm.audio.io import read_audio
from syllablelm.runtime.fileio import atomic_write

FORMAT = "syllablelm-phone-judge"
FORMAT_VERSION = 1
BLANK = 0
STRESS_MARKS = ("'", ",")
PAUSE_LABELS = ("sil", "sp", "")  # the alignment contract allows pauses labelled ``sil``; they are not phones
# the 67 stress-stripped eSpeak phone names that 1800 utterances of the synthesiser's English voices use (seed 11,
# every sentence of its list available), sorted; the shipped judge's output layer follows this order
PHONES: tuple[str, ...] = (
    "0", "3", "3:", ";", "?", "@", "@-", "@2", "@L", "A:", "A@", "D", "E", "I", "I#", "I2", "N", "O2", "O:", "O@",
    "OI", "S", "T", "U", "U@", "V", "Z", "a", "a#", "aI", "aI3", "aI@", "aU", "aa", "b", "d", "dZ", "e@", "eI", "f",
    "g", "h", "i", "i:", "i@", "i@3", "j", "k", "l", "m", "n", "n-", "o@", "oU", "p", "r", "r-", "s", "t", "t#",
    "t2", "tS", "u:", "v", "w", "x", "z",
)


def strip_stress(label: str) -> str:
    """An eSpeak phone name without its stress marks (``'oU`` -> ``oU``, ``,E`` -> ``E``)."""
    for mark in STRESS_MARKS:
        label = label.replace(mark, "")
    return label


def phones_of_alignment(alignment: str | os.PathLike | Mapping) -> list[str]:
    """The reference phones of one utterance, stress-stripped, pauses dropped: from an alignment JSON path, from
    its parsed JSON (``{"phones": [[start, end, label], ...]}``) or from
    :func:`syllablelm.audio.alignments.load_alignment`'s ``{tier: (times, labels)}``. A missing or empty
    ``phones`` tier is a :class:`SegmentError` naming the file."""
    where = "alignment"
    if isinstance(alignment, (str, os.PathLike)):
        where = str(alignment)
        if not Path(alignment).is_file():
            raise SegmentError(f"{where}: no such alignment file")
        alignment = load_alignment(alignment)
    if not isinstance(alignment, Mapping) or "phones" not in alignment:
        raise SegmentError(f"{where}: no 'phones' tier (the judge needs phone alignments)")
    tier = alignment["phones"]
    if isinstance(tier, tuple) and len(tier) == 2 and not isinstance(tier[1], (int, float)):
        labels = list(tier[1])  # load_alignment's (times, labels)
    else:
        try:
            labels = [str(row[2]) for row in tier]
        except (TypeError, IndexError) as e:
            raise SegmentError(f"{where}: tier 'phones' must be a list of [start, end, label] ({e})") from e
    phones = [strip_stress(p) for p in labels]
    phones = [p for p in phones if p not in PAUSE_LABELS]
    if not phones:
        raise SegmentError(f"{where}: the 'phones' tier holds no phones")
    return phones


def phone_ids(phones: Sequence[str], inventory: Sequence[str] = PHONES, *, where: str = "phones") -> list[int]:
    """Class ids (1-based: 0 is CTC's blank) of stress-stripped phones; an unknown phone is a ValueError naming
    ``where`` and the phone."""
    index = {p: i + 1 for i, p in enumerate(inventory)}
    unknown = sorted({p for p in phones if p not in index})
    if unknown:
        raise ValueError(f"{where}: phones outside the judge's inventory: {unknown}")
    return [index[p] for p in phones]


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """Log-mel settings (16 kHz; 25 ms window, 10 ms hop)."""

    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    floor: float = 1e-6  # added to the mel power before the log


class LogMel(nn.Module):
    """``(B, T)`` waves -> ``(B, frames, n_mels)`` log-mel power (not normalised: :func:`normalize_features`).
    ``frames = T // hop + 1`` (centred frames)."""

    def __init__(self, settings: FeatureSettings = FeatureSettings()):
        super().__init__()
        self.settings = settings
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=settings.sample_rate, n_fft=settings.n_fft, win_length=settings.win_length,
            hop_length=settings.hop_length, n_mels=settings.n_mels, power=2.0)

    def num_frames(self, num_samples: torch.Tensor | int):
        return num_samples // self.settings.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave.float()) + self.settings.floor).transpose(-1, -2)


def normalize_features(feats: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance, per-bin mean/variance normalisation of ``(B, T, F)`` features over each utterance's first
    ``lengths[b]`` frames; padding frames come out as 0."""
    mask = (torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]).unsqueeze(-1).float()
    count = mask.sum(1, keepdim=True).clamp_min(1.0)
    mean = (feats * mask).sum(1, keepdim=True) / count
    var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / count
    return (feats - mean) / torch.sqrt(var + eps) * mask


@dataclasses.dataclass(frozen=True)
class JudgeNetwork:
    """Hyper-parameters of :class:`PhoneRecognizer` (saved with the judge)."""

    n_mels: int = 80
    n_classes: int = len(PHONES) + 1  # blank + phones
    conv_channels: int = 192
    hidden: int = 192
    layers: int = 2
    dropout: float = 0.15


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each ``(B, T, D)`` sequence within its first ``lengths[b]`` frames; padding stays at the end (so
    applying it twice gives ``x`` back on the valid frames)."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class PhoneRecognizer(nn.Module):
    """Normalised log-mel ``(B, T, n_mels)`` at 100 Hz -> CTC logits ``(B, ceil(T / 2), n_classes)`` at 50 Hz.

    The recurrent part is a bidirectional LSTM built from two unidirectional ones per layer, the backward one run
    on each sequence reversed within its own length (:func:`reverse_padded`): padding then only ever follows the
    valid frames in both directions, so a padded batch gives each utterance exactly what it gets alone, while
    torch's fused (oneDNN) CPU kernels stay usable (packed sequences would be ~4x slower on one CPU thread)."""

    def __init__(self, config: JudgeNetwork = JudgeNetwork()):
        super().__init__()
        self.config = config
        c, h = config.conv_channels, config.hidden
        self.conv1 = nn.Conv1d(config.n_mels, c, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c, c, kernel_size=3, stride=2, padding=1)
        self.forward_rnn = nn.ModuleList(nn.LSTM(c if i == 0 else 2 * h, h, batch_first=True)
                                         for i in range(config.layers))
        self.backward_rnn = nn.ModuleList(nn.LSTM(c if i == 0 else 2 * h, h, batch_first=True)
                                          for i in range(config.layers))
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(2 * h, config.n_classes)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """Frames after the stride-2 convolution (kernel 3, padding 1): ``ceil(T / 2)``."""
        return (lengths + 1) // 2

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_lengths = self.output_lengths(lengths).to(feats.device)
        lengths = lengths.to(feats.device)
        valid = (torch.arange(feats.shape[1], device=feats.device)[None, None, :] < lengths[:, None, None])
        # padding is zeroed before each convolution, as a lone utterance's zero padding would be
        x = F.gelu(self.conv1((feats.transpose(1, 2) * valid)))
        x = F.gelu(self.conv2(x * valid)).transpose(1, 2)
        x = x * (torch.arange(x.shape[1], device=x.device)[None, :] < out_lengths[:, None]).unsqueeze(-1)
        for fwd, bwd in zip(self.forward_rnn, self.backward_rnn):
            y_f, _ = fwd(x)
            y_b, _ = bwd(reverse_padded(x, out_lengths))
            x = self.drop(torch.cat([y_f, reverse_padded(y_b, out_lengths)], -1))
        return self.out(x), out_lengths


def greedy_decode(logits: torch.Tensor, length: int | None = None, blank: int = BLANK) -> list[int]:
    """Greedy CTC decoding of one utterance's ``(T, C)`` logits (or log-probabilities): the best class per frame
    over the first ``length`` frames, runs of the same class collapsed to one, blanks dropped."""
    best = logits[:length].argmax(-1).tolist() if length is not None else logits.argmax(-1).tolist()
    out, previous = [], None
    for k in best:
        if k != previous and k != blank:
            out.append(int(k))
        previous = k
    return out


def phone_errors(hyp: Sequence[str], ref: Sequence[str]) -> tuple[int, int]:
    """``(edit distance, len(ref))``: substitutions + deletions + insertions that turn ``ref`` into ``hyp``."""
    return int(AF.edit_distance(list(ref), list(hyp))), len(ref)


def phone_error_rate(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> float:
    """PER of ``(hyp, ref)`` pairs: the summed edit distances over the summed reference lengths."""
    errors = lengths = 0
    for hyp, ref in pairs:
        e, n = phone_errors(hyp, ref)
        errors, lengths = errors + e, lengths + n
    if lengths == 0:
        raise ValueError("phone error rate of no reference phones")
    return errors / lengths


class PhoneJudge:
    """A trained recognizer with its inventory and feature settings: waves in, phone names out."""

    def __init__(self, model: PhoneRecognizer, phones: Sequence[str] = PHONES,
                 features: FeatureSettings = FeatureSettings()):
        if model.config.n_classes != len(phones) + 1:
            raise ValueError(f"the network has {model.config.n_classes} classes, the inventory {len(phones)} phones "
                             "+ blank")
        self.model = model.eval()
        self.phones = tuple(phones)
        self.features = features
        self.logmel = LogMel(features)

    phones_of_alignment = staticmethod(phones_of_alignment)

    @torch.no_grad()
    def transcribe_batch(self, waves: Sequence[torch.Tensor], batch_size: int = 16) -> list[list[str]]:
        """Phone names of each 16 kHz mono wave (1-D tensors), batched by length for speed."""
        waves = [torch.as_tensor(w, dtype=torch.float32) for w in waves]
        for i, w in enumerate(waves):
            if w.ndim != 1 or w.numel() < self.features.win_length:
                raise ValueError(f"wave {i}: expected a 1-D wave of at least {self.features.win_length} samples "
                                 f"at {self.features.sample_rate} Hz, got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all():
                raise ValueError(f"wave {i}: non-finite samples")
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out: list[list[str]] = [[] for _ in waves]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            n = torch.tensor([len(waves[i]) for i in idx])
            batch = nn.utils.rnn.pad_sequence([waves[i] for i in idx], batch_first=True)
            lengths = self.logmel.num_frames(n)
            feats = normalize_features(self.logmel(batch), lengths)
            logits, out_lengths = self.model(feats, lengths)
            for row, i in enumerate(idx):
                out[i] = [self.phones[k - 1] for k in greedy_decode(logits[row], int(out_lengths[row]))]
        return out

    def transcribe(self, wave: torch.Tensor) -> list[str]:
        """Phone names of one 16 kHz mono wave."""
        return self.transcribe_batch([wave])[0]


def score_utterances(judge: PhoneJudge, items: Sequence[tuple[str, str | os.PathLike, str | os.PathLike]],
                     batch_size: int = 16) -> list[dict]:
    """Transcribe ``(utterance id, audio path, alignment path)`` items and score each against its alignment's
    phones: ``[{"id", "errors", "length", "hyp", "ref"}, ...]`` in the order given (PER of the set:
    ``sum(errors) / sum(length)``). Audio is read at the judge's rate; an unreadable file raises naming it."""
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        refs = [phones_of_alignment(j) for _, _, j in chunk]
        hyps = judge.transcribe_batch([read_audio(a, judge.features.sample_rate) for _, a, _ in chunk], batch_size)
        for (uid, _, _), hyp, ref in zip(chunk, hyps, refs):
            errors, length = phone_errors(hyp, ref)
            out.append({"id": uid, "errors": errors, "length": length, "hyp": hyp, "ref": ref})
    return out


RESERVED_EVERY = 4  # every 4th sentence of the synthesiser's list is kept out of the judge's training corpus


def judge_sentences(sentences: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(training, reserved)`` sentences of a sentence list (the synthesiser's:
    ``syllablelm.synthesis.plan.load_sentences()``, passed in because evaluation and synthesis are independent
    layers): every :data:`RESERVED_EVERY`-th one (0-based index divisible by it) is reserved for evaluation sets,
    the rest may train the judge (minus any sentence that also occurs among the reserved). A corpus synthesised from
    the reserved ones is new text to the judge as well as new voices, so its PER cannot come from remembered
    sentences (the synthesiser draws its texts from one list of ~4800 sentences; two corpora made with different
    seeds share most of them)."""
    pool = list(sentences)
    reserved = [t for i, t in enumerate(pool) if i % RESERVED_EVERY == 0]
    held = set(reserved)
    return [t for i, t in enumerate(pool) if i % RESERVED_EVERY and t not in held], reserved


def save_judge(path: str | os.PathLike, model: PhoneRecognizer, phones: Sequence[str] = PHONES,
               features: FeatureSettings = FeatureSettings(), recipe: Mapping | None = None) -> None:
    """Write the judge file atomically: weights in float16, inventory, feature and network settings, and
    ``recipe`` (plain data: how it was trained and measured)."""
    state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "phones": list(phones),
               "features": dataclasses.asdict(features), "network": dataclasses.asdict(model.config),
               "state_dict": state, "recipe": dict(recipe or {})}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_judge(path: str | os.PathLike, map_location: str = "cpu") -> PhoneJudge:
    """Read a judge file written by :func:`save_judge` (no Lightning, ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such judge file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: unreadable judge file ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a phone judge file (format tag {FORMAT!r} missing)")
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: judge format version {payload.get('version')}, this code reads {FORMAT_VERSION}")
    model = PhoneRecognizer(JudgeNetwork(**payload["network"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    return PhoneJudge(model, payload["phones"], FeatureSettings(**payload["features"]))
