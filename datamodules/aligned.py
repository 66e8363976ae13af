"""Utterances with reference alignments: the corpus side of every scoring command (evaluate, ceiling, baselines,
the demo's report, store-reference)."""
from __future__ import annotations

from tqdm.auto import tqdm

from syllablelm.audio.alignments import index_alignments, load_alignment
from syllablelm.audio.io import read_audio

from .manifest import build_manifest


def aligned_entries(folders, alignment_dir, limit: int | None = None, cache=None):
    """``(entries, alignments, unaligned)``: the manifest entries of ``folders`` that have an alignment (the first
    ``limit``), each one's alignment (``{tier: (times, labels)}``, checked against the file's duration), and the
    entries without one."""
    index = index_alignments(alignment_dir)
    entries = build_manifest(folders, cache_dir=cache, progress=False).entries
    aligned = [e for e in entries if e.id in index]
    aligned = aligned[:limit] if limit else aligned
    return (aligned, [load_alignment(index[e.id], duration=e.seconds) for e in aligned],
            [e for e in entries if e.id not in index])


def read_waves(entries) -> list:
    """The 16 kHz audio of manifest entries, as numpy arrays."""
    return [read_audio(e.path).numpy() for e in tqdm(entries, desc="audio", disable=len(entries) < 50)]


def load_split(folders: list[str], alignment_dir: str, limit: int | None = None, cache: str | None = None):
    """(waves, reference syllables, ids) of every utterance with an alignment."""
    entries, alignments, _ = aligned_entries(folders, alignment_dir, limit, cache)
    return read_waves(entries), [a["syllables"][0] for a in alignments], [e.id for e in entries]
