"""Audio I/O (soundfile), resampling (torchaudio), and the energy detector every stage shares.

Times returned here are seconds in the file's own time. Frames (50 Hz) belong to the algorithms, not here. Finding
audio files (:func:`list_audio`, :func:`iter_audio`, :data:`AUDIO_EXTENSIONS`) is :mod:`syllablelm.audio.listing`;
those names are importable from here too.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from syllablelm.audio.frames import FRAME_SECONDS, SAMPLE_RATE
from syllablelm.audio.listing import AUDIO_EXTENSIONS, iter_audio, list_audio  # noqa: F401 (re-exported: imported from here)


class AudioError(RuntimeError):
    """A file that cannot be used as speech; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    num_samples: int  # at the file's own rate
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information without decoding the audio; raises :class:`AudioError` when unreadable."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError depending on the damage
        raise AudioError(path, f"unreadable audio ({e})") from e
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(path, "header reports no channels or no sample rate")
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def read_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Read ``[offset, offset + duration)`` seconds as a mono float32 tensor ``(T,)`` at ``sample_rate``.

    Multi-channel audio is averaged to mono; other rates are resampled with torchaudio's windowed sinc.
    Only the requested region is decoded, so long LibriLight chapters can be read chunk by chunk.

    Every command reads audio here, so this is where audio that cannot be used as speech is refused, once:
    :class:`AudioError` (naming the file) for an unreadable file, for a file or region that yields no samples
    (a 0-sample WAV, an offset past the end) and for NaN or infinite samples (how many, and where the first one
    is in seconds of the file; float WAV/FLAC can hold them, and one would turn every feature into NaN). The
    finiteness check is one float64 sum over the samples already in memory (exact: a sum of float32 values
    cannot overflow float64); only a file that fails it is looked at sample by sample.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            sr, total = f.samplerate, f.frames
            start = int(round(offset * sr))
            if start:
                f.seek(min(start, total))
            frames = -1 if duration is None else int(round(duration * sr))
            data = f.read(frames, dtype="float32", always_2d=True)  # (T, C)
    except Exception as e:
        raise AudioError(path, f"unreadable audio ({e})") from e
    if len(data) == 0:
        if total == 0:
            raise AudioError(path, "empty (no samples)")
        end = "the end" if duration is None else f"{offset + duration:.3f} s"
        raise AudioError(path, f"no samples from {offset:.3f} s to {end} (the file has {total / sr:.3f} s)")
    check_finite(path, data, sr, start=min(start, total))
    wave = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])
    if sr != sample_rate:
        wave = AF.resample(wave, sr, sample_rate)
    return wave.contiguous()


def check_finite(path: str | os.PathLike, data: np.ndarray, sample_rate: int, *, start: int = 0) -> None:
    """Raise :class:`AudioError` when ``data`` (``(T, C)`` samples that begin ``start`` samples into the file)
    holds NaN or infinite samples; one pass (a float64 sum) when it does not."""
    if _all_finite(data):
        return
    nan, inf = _non_finite(data)
    first = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
    raise AudioError(path, non_finite_problem(nan, inf, (start + first) / sample_rate))


def _all_finite(data: np.ndarray) -> bool:
    """One pass, no copy: the float64 sum of float32 samples is finite exactly when every sample is."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is the NaN we test for, not news
        return bool(np.isfinite(data.sum(dtype=np.float64)))


def _non_finite(data: np.ndarray) -> tuple[int, int]:
    """(NaN samples, infinite samples) of a block (every channel counted)."""
    return int(np.isnan(data).sum()), int(np.isinf(data).sum())


def non_finite_problem(nan: int, inf: int, first_seconds: float) -> str:
    """The problem of audio with NaN or infinite samples, as :class:`AudioError` states it."""
    counts = " and ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n)
    return f"non-finite audio: {counts} sample(s), the first at {first_seconds:.3f} s"


def decoded_length(path: str | os.PathLike, block_seconds: float = 30.0) -> int:
    """Samples (per channel) a full decode yields, decoding block by block so memory stays one block whatever
    the file's length; a truncated stream decodes to fewer samples than its header says.

    Raises :class:`AudioError` for what :func:`read_audio` would refuse: an unreadable stream, no samples at all,
    NaN or infinite samples (checked block by block as decoded, with the same one-sum test; the error counts
    them over the whole file and says where the first one is). The manifest's decode verification calls it, so a
    file :func:`read_audio` cannot use never enters a manifest."""
    first, nan, inf = None, 0, 0
    try:
        with sf.SoundFile(str(path)) as f:
            sr, total = f.samplerate, f.frames
            block, n = max(1, int(block_seconds * sr)), 0
            while len(data := f.read(block, dtype="float32", always_2d=True)):
                if not _all_finite(data):
                    a, b = _non_finite(data)
                    nan, inf = nan + a, inf + b
                    if first is None:
                        first = n + int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
                n += len(data)
    except Exception as e:
        raise AudioError(path, f"unreadable audio ({e})") from e
    if n == 0:
        raise AudioError(path, "empty (no samples)" if total == 0 else
                         f"no samples decoded (the header says {total})")
    if first is not None:
        raise AudioError(path, non_finite_problem(nan, inf, first / sr))
    return n


def write_audio(path: str | os.PathLike, wave: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write mono audio atomically; the format follows the extension (FLAC 16-bit for ``.flac``)."""
    from syllablelm.runtime.fileio import atomic_write

    path = Path(path)
    data = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_write(path, "wb") as f:
        sf.write(f, data, sample_rate, format=fmt, subtype="PCM_16")


# ----------------------------------------------------------------------------------------------------------
# Energy detector
# ----------------------------------------------------------------------------------------------------------
def frame_levels_db(wave: np.ndarray | torch.Tensor, sample_rate: int, *, hop_s: float = 0.005,
                    win_s: float = 0.02) -> np.ndarray:
    """Mean-square level in dB of windows of ``win_s`` every ``hop_s`` seconds; frame ``k`` covers samples
    ``[k*hop, k*hop + win)``. Memory is O(T / hop): squares are summed per hop block, then per window."""
    x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    hop = max(1, int(round(hop_s * sample_rate)))
    per_win = max(1, int(round(win_s / hop_s)))
    n_blocks = len(x) // hop
    if n_blocks < per_win:
        return np.zeros(0)
    rows = x[: n_blocks * hop].reshape(n_blocks, hop)
    blocks = np.empty(n_blocks)
    step = max(1, 2**20 // hop)  # float64 squares of ~1M samples at a time: an hour of audio stays cheap
    for i in range(0, n_blocks, step):
        blocks[i:i + step] = np.square(rows[i:i + step].astype(np.float64)).sum(1)
    window = np.convolve(blocks, np.ones(per_win), mode="valid") / (per_win * hop)
    return 10.0 * np.log10(window + 1e-10)


def speech_regions(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    rel_db: float = 35.0,
    min_silence: float = 0.08,
    min_speech: float = 0.04,
    hop_s: float = 0.005,
    win_s: float = 0.02,
) -> np.ndarray:
    """Speech regions as an ``(n, 2)`` array of ``[start, end]`` seconds (sorted, non-overlapping).

    Threshold: ``rel_db`` below the loud (99th-percentile) level, but never closer than a quarter of the
    dynamic range to the noise floor (10th percentile) so stationary noise is not called speech. Silences
    shorter than ``min_silence`` (stop closures) are bridged; speech shorter than ``min_speech`` is dropped.
    Edges sit at window centres, so they are accurate to about half a window.
    """
    levels = frame_levels_db(wave, sample_rate, hop_s=hop_s, win_s=win_s)
    if len(levels) == 0:
        return np.zeros((0, 2))
    loud, floor = np.percentile(levels, 99), np.percentile(levels, 10)
    threshold = max(loud - rel_db, floor + 0.25 * (loud - floor))
    active = levels > threshold
    runs = _runs(active)
    # bridge short silences between speech runs, then drop short speech runs
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and (s - merged[-1][1]) * hop_s < min_silence:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    centre = win_s / 2
    out = [(s * hop_s + centre, (e - 1) * hop_s + centre) for s, e in merged if (e - s) * hop_s >= min_speech]
    duration = len(wave) / sample_rate
    return np.clip(np.asarray(out, dtype=np.float64).reshape(-1, 2), 0.0, duration)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index pairs of the True runs of a boolean vector."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def speech_span(wave: np.ndarray | torch.Tensor, sample_rate: int, *, pad: float = 0.05,
                **kwargs) -> tuple[float, float]:
    """``(start, end)`` seconds from the first speech onset to the last offset, padded; the whole file when
    nothing is detected (a silent file is the caller's problem, not a crash)."""
    duration = len(wave) / sample_rate
    regions = speech_regions(wave, sample_rate, **kwargs)
    if len(regions) == 0:
        return 0.0, duration
    return max(0.0, float(regions[0, 0]) - pad), min(duration, float(regions[-1, 1]) + pad)


def speech_frame_span(wave: np.ndarray | torch.Tensor, sample_rate: int, n_frames: int, *,
                      regions: np.ndarray | None = None, frame_seconds: float = FRAME_SECONDS) -> tuple[int, int]:
    """``(first, end)`` frames of the 20 ms grid from the first speech onset to the last offset: ``first`` rounds
    down and ``end`` up, so the span covers every detected speech sample; ``(0, n_frames)`` when nothing is
    detected. ``regions`` (seconds) skips the VAD. LossPred trims to this span, and SylBoost's segmenter does
    with ``vad_trim``."""
    regions = speech_regions(wave, sample_rate) if regions is None else np.asarray(regions).reshape(-1, 2)
    if len(regions) == 0 or n_frames < 1:
        return 0, max(0, n_frames)
    first = min(n_frames - 1, int(np.floor(regions[0, 0] / frame_seconds)))
    end = min(n_frames, int(np.ceil(regions[-1, 1] / frame_seconds)))
    return first, max(first + 1, end)


def pause_chunks(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    max_seconds: float = 30.0,
    regions: np.ndarray | None = None,
    **kwargs,
) -> list[tuple[float, float]]:
    """Cut a long recording into contiguous chunks of at most ``max_seconds``, at energy-detected pauses
    (or at the pauses between given speech ``regions``, e.g. LibriLight's voice activity).

    Chunks cover the whole file (``[0, duration)``) and meet in the middle of pauses. A speech stretch longer
    than ``max_seconds`` with no pause is cut at its quietest 5 ms in the last quarter of the allowed span.
    Cuts lie on the 20 ms frame grid, so frame-level data of the whole file (labels) slices directly.
    """
    duration = len(wave) / sample_rate
    if regions is None and duration > max_seconds:
        regions = speech_regions(wave, sample_rate, **kwargs)
    levels = None

    def quietest(lo_s: float, hi_s: float) -> float:
        nonlocal levels
        if levels is None:
            levels = frame_levels_db(wave, sample_rate, hop_s=0.005, win_s=0.02)
        lo, hi = int(lo_s / 0.005), int(hi_s / 0.005) - 4
        return (lo + int(np.argmin(levels[lo:hi]))) * 0.005 + 0.01 if hi > lo else hi_s

    return chunk_at_pauses(duration, regions, max_seconds=max_seconds, quietest=quietest)


def chunk_at_pauses(duration: float, regions: np.ndarray | None, *, max_seconds: float,
                    quietest=None) -> list[tuple[float, float]] | None:
    """The chunk plan of :func:`pause_chunks` from speech ``regions`` alone. ``quietest(lo, hi)`` picks a cut in a
    stretch without pauses; without it such a stretch makes this return ``None`` (the caller then reads the
    audio and calls :func:`pause_chunks`)."""
    if duration <= max_seconds:
        return [(0.0, duration)]
    regions = np.asarray(regions, dtype=np.float64).reshape(-1, 2)
    cuts = [(a + b) / 2 for a, b in zip(regions[:-1, 1], regions[1:, 0])]  # pause midpoints
    chunks, start, i = [], 0.0, 0
    while duration - start > max_seconds:
        limit = start + max_seconds
        while i < len(cuts) and cuts[i] <= start:
            i += 1
        best = None
        while i < len(cuts) and cuts[i] <= limit:
            best = cuts[i]
            i += 1
        if best is None or best - start < 0.25 * max_seconds:
            if quietest is None:
                return None
            best = quietest(start + 0.75 * max_seconds, limit)
        best = max(start + FRAME_SECONDS, np.floor(best / FRAME_SECONDS) * FRAME_SECONDS)  # on the frame grid
        chunks.append((start, best))
        start = best
    chunks.append((start, duration))
    return chunks
