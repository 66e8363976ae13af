"""``syllablelm tokenize``: audio files, folders and file lists -> JSON lines of syllable units.

    syllablelm tokenize --checkpoint runs/tiny/tokenizer.ckpt --input some/folder other/file.flac --output units.jsonl
    syllablelm tokenize --checkpoint runs/tiny/tokenizer.ckpt --file-list files.txt --output units.jsonl

Folders are searched recursively by :func:`syllablelm.audio.io.list_audio`, the listing the training manifests use:
symbolic links to folders and files are followed, a folder reached twice (a link to an ancestor) is searched once,
hidden names are skipped. A file list holds one audio path per line (``#`` comments and blank lines ignored;
relative paths are relative to the list's folder). The same file reached twice is tokenized once, under the
first path it was found by. Finding no audio at all is an error (exit status 2, the searched inputs named).

A file that cannot be used — unreadable, 0 bytes, truncated, no samples, NaN or infinite samples
(:func:`syllablelm.audio.io.read_audio` refuses it with :class:`~syllablelm.audio.io.AudioError`) — is skipped: its path
and the reason are logged and recorded (:func:`syllablelm.runtime.outcome.record_skip`), the other files are tokenized,
and the command line ends with a summary line and exit status 4. The output is written atomically (it appears
complete, or not at all); when no file at all could be tokenized no output is written and the command fails
(exit status 1).

Run settings: ``--precision`` (the encoder's: default what the tokenizer file records, else fp16 on CUDA as the
authors' extractor and fp32 on the CPU), ``--chunk-seconds`` (files longer than this are cut at pauses; 0 = each
file whole, one min-cut over it, as the authors' extractor — memory in its help) and ``--max-segment-frames``
(the min-cut's longest segment; default the tokenizer's).

The module level imports only the standard library, so ``syllablelm tokenize --help`` answers at once; torch and
the tokenizer are imported once the arguments are parsed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from experiments.arguments import DEVICE, UNIT_VARIANTS, command_parser
from experiments.unit_commands import add_run_options, add_variant, check_run_options, chosen_variant, run_options

log = logging.getLogger(__name__)

VARIANTS = UNIT_VARIANTS  # syllablelm.units.quantizer.UNIT_VARIANTS, without importing torch before --help
DEFAULT_VARIANT = "dedup"


def parser() -> argparse.ArgumentParser:
    p = command_parser("tokenize", __doc__)
    p.add_argument("--checkpoint", required=True, help="a tokenizer checkpoint (syllablelm quantize)")
    p.add_argument("--input", nargs="+", default=[], metavar="PATH",
                   help="audio files or folders (folders searched recursively, symbolic links followed)")
    p.add_argument("--file-list", metavar="PATH", help="a text file of audio paths, one a line ('#' comments and "
                   "blank lines ignored; relative paths are relative to the list's folder)")
    p.add_argument("--output", required=True, help="JSON lines: {path, segments: [[start_s, end_s]], units}")
    p.add_argument("--device", help=DEVICE)
    add_variant(p, DEFAULT_VARIANT)
    add_run_options(p)
    return p


def read_file_list(path: str | os.PathLike) -> list[Path]:
    """The paths of a file list: one a line, ``#`` comment lines and blank lines ignored, relative paths relative
    to the list's folder."""
    path = Path(path)
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(path.parent / Path(line).expanduser())  # an absolute line stays absolute
    return out


def find_audio(inputs: list[str | os.PathLike], listed: list[Path] | None = None) -> list[Path]:
    """The audio of ``inputs`` (files or folders, in the order given, each folder's files sorted), then the file
    list's ``listed`` paths (a listed folder is searched too, a listed file taken as it is: a missing one is
    reported as unreadable when it is tokenized). A file reached twice is kept once, under its first path.
    Raises ``FileNotFoundError`` for a missing input."""
    from syllablelm.audio.io import list_audio

    files, seen = [], set()

    def add(found: list[Path]) -> None:
        for path in found:
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                files.append(path)

    for root in inputs:
        add(list_audio(root))
    for path in listed or []:
        add(list_audio(path) if path.is_dir() else [path])
    return files


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.input and not args.file_list:
        p.error("give audio with --input PATH [PATH ...] and/or --file-list PATH")
    variant = chosen_variant(p, args, DEFAULT_VARIANT)
    check_run_options(p, args)
    missing = [x for x in args.input if not os.path.exists(x)]
    if missing:
        print(f"{p.prog}: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        listed = read_file_list(args.file_list) if args.file_list else []
    except (OSError, UnicodeDecodeError) as e:
        print(f"{p.prog}: cannot read the file list {args.file_list} ({getattr(e, 'strerror', None) or e})",
              file=sys.stderr)
        return 2

    from syllablelm.audio.io import AUDIO_EXTENSIONS

    files = find_audio(args.input, listed)
    if not files:
        searched = ", ".join(args.input)
        if args.file_list:
            searched += ("; " if searched else "") + f"file list {args.file_list}"
        print(f"{p.prog}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under: {searched}", file=sys.stderr)
        return 2
    return tokenize_files(files, args.checkpoint, args.output, variant, args.device, **run_options(args))


def tokenize_files(files: list[Path], checkpoint: str, output: str, variant: str, device: str | None, *,
                   precision: str | None = None, chunk_seconds: float | None = 60.0,
                   max_segment_frames: int | None = None) -> int:
    """Tokenize ``files`` into the JSON lines file ``output``, written atomically (module docstring): a file the
    audio reader refuses is skipped and recorded (``where="tokenize"``); returns 0 when at least one file was
    tokenized (the command line makes it 4 when any was skipped), 1 — with no output written — when none was.
    Any other error stops the run, names the file and leaves no output (an earlier ``output`` stays as it was).
    ``precision`` (None: the file's record, else auto), ``chunk_seconds`` (None: whole files) and
    ``max_segment_frames``: :meth:`Tokenizer.from_pretrained`'s."""
    import contextlib
    import json

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from syllablelm.audio.io import AudioError
    from syllablelm.runtime.fileio import atomic_write
    from syllablelm.runtime.outcome import record_skip
    from syllablelm.units.quantizer import deduplicates
    from syllablelm.units.tokenizer import Tokenizer

    deduplicate = deduplicates(variant)
    if not device:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    tok = Tokenizer.from_pretrained(checkpoint, device=device, precision=precision, chunk_seconds=chunk_seconds,
                                    max_segment_frames=max_segment_frames)
    log.info("tokenizer %s on %s: %s", checkpoint, device, tok.describe_run())
    skipped, written = 0, 0
    with contextlib.ExitStack() as stack:  # the output is opened at the first result: none, no file
        f = None
        for path in tqdm(files, desc="tokenize", unit="file"):
            try:
                segments, ids = tok(str(path), deduplicate=deduplicate)
            except AudioError as e:
                record_skip(str(path), e.problem, "tokenize")
                skipped += 1
                continue
            except Exception as e:  # not the audio: a failure of the run, but say which file it was on
                raise RuntimeError(f"{path}: tokenizing failed ({type(e).__name__}: {e})") from e
            if f is None:  # nothing half-written: the file appears when complete (renamed as the stack closes)
                f = stack.enter_context(atomic_write(output, "w"))
            f.write(json.dumps({"path": str(path), "segments": np.round(segments, 4).tolist(),
                                "units": ids.tolist()}) + "\n")
            written += 1
    if not written:
        print(f"syllablelm tokenize: none of the {len(files)} audio files could be read ({skipped} skipped, each "
              f"named above with its reason); no output written", file=sys.stderr)
        return 1
    log.info("tokenized %d of %d files into %s (%d skipped)", written, len(files), output, skipped)
    return 0
