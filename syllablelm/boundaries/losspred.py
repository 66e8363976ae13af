"""LossPred (SyllableLM stage 1): masked-prediction losses of a sliding 51-frame span -> matrix C -> similarity.

For every span position ``mid`` in ``[-25, T+24]`` the span ``[mid-25, mid+26)`` is masked and the teacher's
per-frame losses on the masked frames are read off. Row ``mid-26`` (the visible frame just left of the span)
receives the losses of the span's left 25 frames; row ``mid+26`` (just right) those of its right 26 frames. Every
entry of ``C`` comes from exactly one span, so ``C[r, c]`` is "how hard is frame c to predict when the context
stops at frame r". ``S = exp(-C)`` in the band ``|r - c| <= 25`` feeds the normalized-cut DP.

Spans ``gap`` frames apart share one forward (150 in the official run: every utterance longer than ``gap`` costs
150 forwards whatever its length). That is an approximation — attention sees the other masked spans — so the exact
path, one span per forward (``T + 50`` forwards), is available with ``exact=True``. As in the authors' notebook
(``fast_get_hubert_losses``: ``if gap_size >= T: gap_size = None``) an utterance of ``T <= gap`` frames always takes
the exact path (``exact_when_fits=True``, default); ``exact_when_fits=False`` keeps the strict ``gap`` packing, which
for ``gap - 50 < T <= gap`` still puts two spans (``mid`` and ``mid + gap``) into some forwards.

The segment count follows the authors' float arithmetic by default (``num_segments(rule="authors")``:
``int(T / 50 / 0.16)`` at 6.25 Hz, one fewer than ``T // 8`` for a few T such as 232); ``rule="floor"`` is the exact
``floor(T * rate / 50)``.

:func:`loss_matrices` sees the teacher only as a callable ``run(rows (N,), span_mask (N, T)) -> losses (N, T)``
that runs the transformer on utterances ``rows`` of its batch with ``span_mask`` replaced by the mask embedding.
:func:`losspred_segments` is the whole pass on a :class:`~syllablelm.models.hubert.HubertTeacher` (VAD trim, frame
labels of the trim, CNN once per utterance, packed mask patterns, matrices, normalized cut, silent starts dropped),
framework-free: ``TeacherModule``'s test/predict steps only wrap it (devices, precision, batches, writing results).

The frame labels the losses are scored against are, by default, those of the VAD-trimmed wave: ``labeler`` (the
label model, e.g. :class:`~syllablelm.units.frame_labels.FrameLabeler`) runs on exactly the samples the teacher
sees, as the authors' notebook labels the trimmed audio with HuBERT-Base layer 9 + k-means (``labels="trimmed"``).
A hidden layer's features depend on their context (attention over the whole input, GroupNorm statistics over time
in HuBERT-Base's first conv), so labels of the trim differ from the whole file's labels sliced to the trim at some
frames; ``labels="whole_file"`` slices given per-wave labels (a label store's) instead.

    results = losspred_segments(teacher, waves, labeler=labeler, options=LossPredOptions(), offsets=offsets)
    results[b].segments                              # (n_b, 2) seconds in file time
    flops = losspred_flops(teacher, [r.frames for r in results], LossPredOptions())
    # the stored whole-file labels sliced to each trim instead
    losspred_segments(teacher, waves, labels, options=LossPredOptions(labels="whole_file"))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch

from syllablelm.audio.frames import HOP, frames_to_seconds, num_frames, samples_for_frames
from syllablelm.audio.io import SAMPLE_RATE, speech_frame_span, speech_regions
from syllablelm.boundaries.mincut import ncut_mincut
from syllablelm.models import flops

if TYPE_CHECKING:
    from syllablelm.models.hubert import HubertTeacher

HALF = 25  # span = [mid - 25, mid + 26): 51 frames
SPAN = 2 * HALF + 1
GAP = 150
FLOOR = -100.0  # log-similarity outside the band and on the diagonal: S = exp(-100)

RunLosses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# the label model: a 1-D 16 kHz wave -> its (num_frames(len(wave)),) long frame labels
FrameLabels = Callable[[torch.Tensor], torch.Tensor]


def span_positions(T: int) -> np.ndarray:
    """All span centres ``mid`` in ``[-25, T + 24]`` (``T + 50`` of them)."""
    return np.arange(-HALF, T + HALF)


def mask_groups(T: int, *, gap: int = GAP, exact: bool = False, exact_when_fits: bool = True) -> list[np.ndarray]:
    """Span centres masked together in one forward: one per forward when ``exact`` (or, with
    ``exact_when_fits``, when ``gap >= T`` as in the authors' code), else centres ``gap`` apart
    (``min(gap, T + 50)`` forwards). ``gap`` must exceed the span (51) so spans never touch."""
    mids = span_positions(T)
    if exact or (exact_when_fits and gap >= T):
        return [mids[i:i + 1] for i in range(len(mids))]
    if gap <= SPAN:
        raise ValueError(f"gap must be larger than the span ({SPAN} frames), got {gap}")
    return [mids[g::gap] for g in range(min(gap, len(mids)))]


def group_span_mask(T: int, mids: Sequence[int]) -> torch.Tensor:
    """``(T,)`` bool mask of the union of the spans centred at ``mids``."""
    mask = torch.zeros(T, dtype=torch.bool)
    for m in mids:
        mask[max(0, m - HALF):max(0, min(T, m + HALF + 1))] = True
    return mask


def scatter_group(C: torch.Tensor, losses: torch.Tensor, mids: Sequence[int]) -> None:
    """Write one forward's per-frame ``losses (T,)`` into ``C (T, T)`` for each span in ``mids``."""
    T = C.shape[0]
    for m in mids:
        left_row, right_row = m - HALF - 1, m + HALF + 1
        if 0 <= left_row < T:  # left 25 frames of the span: c in [r+1, r+25]
            lo, hi = left_row + 1, min(T, left_row + HALF + 1)
            C[left_row, lo:hi] = losses[lo:hi]
        if 0 <= right_row < T:  # right 26 frames: c in [r-26, r-1]
            lo, hi = max(0, right_row - HALF - 1), right_row
            C[right_row, lo:hi] = losses[lo:hi]


def loss_matrices(
    run: RunLosses,
    lengths: Sequence[int],  # frames per utterance of the batch (padded to max(lengths) inside ``run``)
    *,
    gap: int = GAP,
    exact: bool = False,
    exact_when_fits: bool = True,
    forward_batch: int = 32,
) -> list[torch.Tensor]:
    """LossPred matrices ``C`` (each ``(T_b, T_b)`` float32, NaN where no span writes) for a batch of
    utterances. Mask patterns of all utterances are packed into forwards of ``forward_batch`` rows; each row is
    one utterance (padded to the batch) with one group of spans masked."""
    T_max = max(int(t) for t in lengths)
    mats = [torch.full((int(t), int(t)), float("nan")) for t in lengths]
    jobs = [(b, mids) for b in range(len(lengths))
            for mids in mask_groups(int(lengths[b]), gap=gap, exact=exact, exact_when_fits=exact_when_fits)]
    frame_mask = torch.arange(T_max)[None, :] < torch.as_tensor([int(t) for t in lengths])[:, None]  # (B, T)
    for start in range(0, len(jobs), forward_batch):
        chunk = jobs[start:start + forward_batch]
        rows = torch.tensor([b for b, _ in chunk])
        span = torch.stack([group_span_mask(T_max, mids) for _, mids in chunk]) & frame_mask[rows]  # (N, T)
        losses = run(rows, span).float().cpu()  # (N, T)
        for (b, mids), row in zip(chunk, losses):
            scatter_group(mats[b], row[: int(lengths[b])], mids)
    return mats


def similarity(C: torch.Tensor, band: int = HALF) -> torch.Tensor:
    """``S = exp(-C)`` inside ``|r - c| <= band``; ``exp(-100)`` on the diagonal, outside the band and where
    no loss was written."""
    T = C.shape[0]
    idx = torch.arange(T)
    dist = (idx[:, None] - idx[None, :]).abs()
    inside = (dist <= band) & (dist > 0) & ~torch.isnan(C)
    return torch.exp(-torch.where(inside, C.double(), torch.full_like(C, -FLOOR, dtype=torch.float64)))


COUNT_RULES = ("authors", "floor")


def num_segments(T: int, rate_hz: float = 6.25, frame_hz: float = 50.0, rule: str = "authors") -> int:
    """Segments for ``T`` frames at ``rate_hz``, at least one.

    ``rule="authors"`` (default): the authors' ``int(T / frame_hz / (1 / rate_hz))`` in float arithmetic
    (``int(T / 50 / 0.16)`` at 6.25 Hz; their DP takes that + 1 boundaries); rounding makes it one fewer than
    ``T // 8`` for some T (232, 376, 456, ...). ``rule="floor"``: the exact ``floor(T * rate_hz / frame_hz)``."""
    if rule == "authors":
        n = int(T / frame_hz / (1 / rate_hz))
    elif rule == "floor":
        n = int(np.floor(T * rate_hz / frame_hz + 1e-9))
    else:
        raise ValueError(f"rule must be one of {COUNT_RULES}, got {rule!r}")
    return max(1, n)


# ---------------------------------------------------------------- the whole pass on a teacher
WAVEFORM_INPUTS = ("raw", "pretrained")
LABEL_SOURCES = ("trimmed", "whole_file")


@dataclass
class LossPredOptions:
    """LossPred settings that decide the result (precision and devices are the caller's). Defaults = the authors'
    notebook (``fast_get_hubert_losses`` / ``process_loss_multiple``); each alternative is a named option."""

    gap: int = GAP  # spans this far apart share a forward (official); ignored with exact
    exact: bool = False  # one span per forward (T + 50 forwards per utterance)
    # authors: T <= gap frames -> one span per forward; False: strict gap packing (two spans in some forwards
    # for gap - 50 < T <= gap)
    exact_when_fits: bool = True
    forward_batch: int = 32  # mask patterns per transformer forward
    rate_hz: float = 6.25  # segments per second of VAD-trimmed speech
    # "authors": int(T / 50 / (1 / rate_hz)) in floats (one fewer than T // 8 for T = 232, 376, ...);
    # "floor": floor(T * rate_hz / 50)
    count_rule: Literal["authors", "floor"] = "authors"
    # "all": softmax over every row of the label table (fairseq imports: the 4 special rows too; authors, fairseq);
    # "labels": over the num_labels real labels only. Identical when the teacher's label_offset is 0.
    softmax_rows: Literal["all", "labels"] = "all"
    # "raw": the teacher's front end sees the unnormalised waveform (authors, whatever the checkpoint's
    # task.normalize); "pretrained": normalised iff the teacher's TeacherConfig.normalize_waveform (its training)
    waveform: Literal["raw", "pretrained"] = "raw"
    max_len: int = 49  # longest segment in frames (inclusive)
    vad: bool = True  # trim to the speech region and drop segments starting in silence
    # "trimmed": the label model labels the VAD-trimmed wave itself (authors: their notebook labels the trimmed
    # audio); "whole_file": the wave's given labels (computed on the whole file) sliced to the trim
    labels: Literal["trimmed", "whole_file"] = "trimmed"

    def __post_init__(self) -> None:
        from syllablelm.models.hubert import SOFTMAX_ROWS  # (transformers) only when settings are made

        for name, allowed in (("count_rule", COUNT_RULES), ("softmax_rows", SOFTMAX_ROWS),
                              ("waveform", WAVEFORM_INPUTS), ("labels", LABEL_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{type(self).__name__}.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")

    @property
    def normalize(self) -> bool | None:
        """``frontend(normalize=...)``: False for ``waveform="raw"``, None (= as the teacher's config says) for
        ``"pretrained"``."""
        return None if self.waveform == "pretrained" else False


class LossPredMatrices(NamedTuple):
    """:func:`losspred_matrices` of a batch: matrices ``C`` (``(T_b, T_b)`` float32, NaN where no span writes),
    frames ``T_b`` per utterance, and ``(first frame, speech regions in seconds)`` of each utterance's trim."""

    matrices: list[torch.Tensor]
    lengths: list[int]
    trims: list[tuple[int, np.ndarray]]


@dataclass
class LossPredResult:
    """One utterance's LossPred output."""

    segments: np.ndarray  # (n, 2) float64 seconds in file time (the wave's offset added)
    first: int  # first frame of the VAD trim in the wave (0 without VAD)
    frames: int  # T: frames LossPred ran on (the trimmed span, cut to the labelled frames): label i = frame first + i
    regions: np.ndarray  # (r, 2) speech regions in seconds of the wave (the whole wave without VAD / speech)
    similarity: torch.Tensor | None = None  # (T, T) float32 S, for the first ``keep_similarity`` utterances

    @property
    def trim_seconds(self) -> float:
        """Where the trimmed span (row/column 0 of ``similarity``) starts, in seconds of the wave."""
        return float(frames_to_seconds(self.first))


def speech_trim(wave: torch.Tensor, vad: bool = True) -> tuple[int, int, np.ndarray]:
    """``(first frame, end frame, speech regions (s))`` of a 1-D 16 kHz wave: the energy-VAD span on the 20 ms grid;
    the whole wave (one region) without ``vad`` or when no speech is detected."""
    n_frames = num_frames(len(wave))
    if not vad:
        return 0, n_frames, np.array([[0.0, len(wave) / SAMPLE_RATE]])
    regions = speech_regions(wave.float().cpu().numpy(), SAMPLE_RATE)
    if len(regions) == 0:
        return 0, n_frames, np.array([[0.0, len(wave) / SAMPLE_RATE]])
    first, last = speech_frame_span(wave, SAMPLE_RATE, n_frames, regions=regions)
    return first, last, regions


def trim_labels(trimmed: torch.Tensor, first: int, last: int, wave_labels: torch.Tensor | None,
                labeler: FrameLabels | None, source: str = "trimmed") -> torch.Tensor:
    """Frame labels of the trim ``[first, last)`` (frames of the wave; ``trimmed`` its samples, starting at sample
    ``320 * first``): label ``i`` belongs to frame ``first + i`` of the wave.

    ``source="trimmed"``: ``labeler(trimmed)``, in float32 whatever the caller's autocast (as the label store's
    labels), exactly one label per frame of the trim. ``"whole_file"``: ``wave_labels[first:last]`` (the wave's own
    labels, -100 = none)."""
    if source == "whole_file":
        return wave_labels[first:last]
    with torch.autocast(device_type=trimmed.device.type, enabled=False):
        lab = torch.as_tensor(labeler(trimmed)).long()
    if lab.shape != (last - first,):
        raise ValueError(f"the label model gave labels of shape {tuple(lab.shape)} for a trimmed wave of "
                         f"{len(trimmed)} samples ({last - first} frames): it must label every 20 ms frame once")
    return lab


def _check_label_inputs(n: int, labels, labeler, source: str) -> None:
    if source == "trimmed" and labeler is None:
        raise ValueError("LossPredOptions.labels='trimmed' labels each VAD-trimmed wave with the label model: give "
                         "labeler= (e.g. syllablelm.units.frame_labels.FrameLabeler, the label store's model), or "
                         "set labels='whole_file' and give each wave's labels")
    if source == "whole_file" and (labels is None or len(labels) != n):
        raise ValueError(f"LossPredOptions.labels='whole_file' slices each wave's labels: give labels for all {n} "
                         f"waves (got {'none' if labels is None else len(labels)})")


def frame_losses(teacher: "HubertTeacher", hidden: torch.Tensor, labels: torch.Tensor,
                 softmax_rows: str = "all") -> torch.Tensor:  # (N, T)
    """Per-frame cross-entropy of ``labels`` (N, T) given transformer output ``hidden``, the softmax over the
    label-table rows ``softmax_rows`` names (:attr:`LossPredOptions.softmax_rows`)."""
    logits = teacher.logits(hidden, rows=softmax_rows)
    return teacher.frame_losses(logits, labels, teacher.column_offset(softmax_rows))


@torch.no_grad()
def losspred_matrices(teacher: "HubertTeacher", waves: Sequence[torch.Tensor],
                      labels: Sequence[torch.Tensor] | None = None, *, labeler: FrameLabels | None = None,
                      options: LossPredOptions | None = None) -> LossPredMatrices:
    """LossPred matrices ``C`` of a batch of utterances (steps 1-4 of :func:`losspred_segments`).

    ``waves``: 1-D 16 kHz waves (unpadded, on the teacher's device). The labels of each trim (:func:`trim_labels`):
    with ``options.labels == "trimmed"`` (default) ``labeler`` labels the trimmed wave; with ``"whole_file"``
    ``labels`` holds each wave's frame labels on the 20 ms grid (long, -100 = none; a padded batch row is fine:
    only labelled frames of the trim are used). The front end runs once per utterance, unpadded (Base's GroupNorm
    spans time, so padding would change it); the transformer runs on mask patterns of all utterances packed
    together."""
    opt = options or LossPredOptions()
    if not len(waves):
        return LossPredMatrices([], [], [])
    _check_label_inputs(len(waves), labels, labeler, opt.labels)
    device = next(teacher.parameters()).device
    feats, labs, lengths, trims = [], [], [], []
    for b, wave in enumerate(waves):
        first, last, regions = speech_trim(wave, opt.vad)
        trimmed = wave[first * HOP:first * HOP + samples_for_frames(last - first)]
        f, _ = teacher.frontend(trimmed[None], normalize=opt.normalize)
        lab = trim_labels(trimmed, first, last, None if labels is None else labels[b], labeler, opt.labels)
        T = min(f.shape[1], int((lab >= 0).sum()))
        feats.append(f[0, :T])
        labs.append(lab[:T])
        lengths.append(T)
        trims.append((first, regions))
    T_max = max(lengths)
    F = torch.zeros(len(feats), T_max, feats[0].shape[-1], device=device, dtype=feats[0].dtype)
    L = torch.full((len(feats), T_max), -100, dtype=torch.long, device=device)
    for b, (f, lab) in enumerate(zip(feats, labs)):
        F[b, : len(f)], L[b, : len(lab)] = f, lab
    frame_mask = torch.arange(T_max, device=device)[None] < torch.tensor(lengths, device=device)[:, None]

    def run(rows, span):  # (N,), (N, T) -> per-frame losses (N, T)
        rows, span = rows.to(device), span.to(device)
        return frame_losses(teacher, teacher.transformer(F[rows], frame_mask[rows], span), L[rows], opt.softmax_rows)

    mats = loss_matrices(run, lengths, gap=opt.gap, exact=opt.exact, exact_when_fits=opt.exact_when_fits,
                         forward_batch=opt.forward_batch)
    return LossPredMatrices(mats, lengths, trims)


def losspred_cut(C: torch.Tensor, first: int, regions: np.ndarray, *, options: LossPredOptions | None = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """Normalized-cut segments of one matrix ``C`` in seconds of the wave (+ the similarity matrix ``S``, float64):
    K = the count rule's segments, at least ``ceil(T / max_len)``; with ``vad``, segments whose first frame (its
    centre) lies outside every speech region are dropped. ``first``: the trim's first frame in the wave."""
    opt = options or LossPredOptions()
    T = C.shape[0]
    S = similarity(C)
    if T < 2:
        return np.zeros((0, 2)), S
    k = min(T, max(num_segments(T, opt.rate_hz, rule=opt.count_rule), -(-T // opt.max_len)))
    bounds = ncut_mincut(S, k, min_len=1, max_len=opt.max_len).numpy()
    starts, ends = frames_to_seconds(first + bounds[:-1]), frames_to_seconds(first + bounds[1:])
    if opt.vad:  # drop segments whose first frame (its centre) is outside every speech region
        centre = starts[:, None] + 0.01
        keep = ((centre >= regions[None, :, 0]) & (centre < regions[None, :, 1])).any(1)
        starts, ends = starts[keep], ends[keep]
    return np.stack([starts, ends], 1), S


@torch.no_grad()
def losspred_segments(teacher: "HubertTeacher", waves: Sequence[torch.Tensor],
                      labels: Sequence[torch.Tensor] | None = None, *, labeler: FrameLabels | None = None,
                      options: LossPredOptions | None = None, offsets: Sequence[float] | None = None,
                      keep_similarity: int = 0) -> list[LossPredResult]:
    """LossPred boundaries of a batch of utterances, one :class:`LossPredResult` each. Runs under the caller's
    device and autocast; the teacher should be in eval mode. Per utterance, in order:

    1. trim: the energy-VAD speech span on the 20 ms grid (:func:`speech_trim`; the whole wave without ``vad``);
    2. labels of the trim (:func:`trim_labels`): ``labeler`` on the trimmed wave (``labels="trimmed"``, the
       authors') or the wave's ``labels`` sliced (``"whole_file"``); label ``i`` belongs to frame ``first + i``;
    3. front end: the teacher's CNN once on the trimmed wave (raw or normalised: ``waveform``), cut to
       ``T = min(frames, labelled frames of the trim)``;
    4. losses: the utterances padded into one batch, their mask patterns (:func:`mask_groups`: ``gap`` packing or
       ``exact``) packed ``forward_batch`` at a time into transformer forwards; per-frame cross-entropy of the
       labels (softmax over ``softmax_rows``) scattered into ``C`` (:func:`loss_matrices`);
    5. cut: ``S = exp(-C)`` in the band, normalized-cut DP with ``K`` segments of at most ``max_len`` frames
       (:func:`losspred_cut`);
    6. segments starting in VAD silence dropped (``vad``); seconds of the wave + ``offsets[b]`` (file time).

    ``waves`` (1-D, unpadded), ``labels`` and ``labeler`` as :func:`losspred_matrices`; ``keep_similarity``: return
    ``S`` (float32) of the first that many utterances. The FLOPs are :func:`losspred_flops` of the results'
    frames."""
    opt = options or LossPredOptions()
    offsets = [0.0] * len(waves) if offsets is None else [float(o) for o in offsets]
    mats, lengths, trims = losspred_matrices(teacher, waves, labels, labeler=labeler, options=opt)
    results = []
    for b, (C, T, (first, regions)) in enumerate(zip(mats, lengths, trims)):
        segs, S = losspred_cut(C, first, regions, options=opt)
        results.append(LossPredResult(segs + offsets[b], first, T, regions, S.float() if b < keep_similarity else None))
    return results


def losspred_flops(teacher: "HubertTeacher", lengths: Sequence[int], options: LossPredOptions | None = None) -> int:
    """Model FLOPs of one :func:`losspred_segments` call on utterances of ``lengths`` frames
    (:mod:`syllablelm.models.flops`): the front end once per utterance, the transformer and head once per mask
    pattern over the padded length. The label model's one forward per trimmed wave (``labels="trimmed"``) is not
    the teacher's and is not counted."""
    opt = options or LossPredOptions()
    if not len(lengths):
        return 0
    c = teacher.config
    T_max = max(lengths)
    forwards = sum(len(mask_groups(T, gap=opt.gap, exact=opt.exact, exact_when_fits=opt.exact_when_fits))
                   for T in lengths)
    rows = teacher.column_offset(opt.softmax_rows) + c.num_labels
    front = sum(flops.hubert_forward(samples_for_frames(T), c, layers=0) for T in lengths)
    per_forward = flops.transformer(T_max, c.hidden_size, c.num_hidden_layers, c.intermediate_size) + \
        2 * T_max * c.hidden_size * c.final_dim + 2 * T_max * c.final_dim * rows
    return front + forwards * per_forward
