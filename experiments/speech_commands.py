"""``syllablelm resynthesize`` and ``syllablelm continue``: units back to speech (issue 29).

    syllablelm resynthesize --tokenizer runs/tokenizer.ckpt --interleaved-lm runs/interleaved/last.ckpt \\
        --input some/folder --output-dir resynth/
    syllablelm resynthesize --from fine --input some/folder --output-dir ceiling/
    syllablelm continue --prompt prompt.wav --seconds 3 --tokenizer runs/tokenizer.ckpt \\
        --speechlm runs/speechlm/last.ckpt --interleaved-lm runs/interleaved/last.ckpt --output-dir cont/

resynthesize: audio -> syllable units -> fine units (the interleaved vocoder LM, syllables given) -> audio.
``--from fine`` vocodes the true fine units with their true durations instead (the vocoder's ceiling, time-aligned
with the input; no tokenizer or interleaved LM needed). continue: prompt -> syllable units -> the SpeechLM's
continuation -> fine units (the interleaved LM continuing the prompt's own syllables and true fine units;
``--no-prompt-context``: from an empty context) -> audio; each output WAV is the prompt's audio, a 0.1 s pause, then
the generated speech (the shipped CPU vocoder has no speaker input: it speaks in the voice the fine units carry;
TWIST's vocoder in LJ's).

Both write ``OUTPUT_DIR/<name>.wav`` (16 kHz, the input file's name; a name met twice gets ``-2``, ``-3``) and
``OUTPUT_DIR/units.jsonl``: one line per file with every unit stream (syllable units and segments, the true fine units
and durations, the generated fine units and predicted durations, the continuation's units). Fine units default to
the CPU path's (the shipped teacher's layer-2 k-means, 50 Hz), which the shipped vocoder reads
(``experiments/pretrained/vocoder.ckpt``); ``--fine-features logmel`` takes the shipped log-mel k-means (1000
units, 50 Hz: spectral units, GSLM's LogMel baseline, not SSL units) and the vocoder trained on them
(``vocoder_logmel.ckpt``; the interleaved LM must be trained on the same units);
``--fine-checkpoint/--fine-layer/--fine-kmeans`` choose another encoder
(its frame rate follows its CNN: 25 Hz for mHuBERT-25Hz) and ``--vocoder`` another vocoder (a textless-lib code
HiFi-GAN checkpoint file with its JSON config beside it, or this suite's).

Inputs and bad input as ``syllablelm tokenize``: folders are searched recursively, ``--file-list`` holds one path a
line; no audio found: exit status 2; a file the audio reader refuses is skipped, named with its reason, and the
command exits with status 4 after the others; when none could be used, nothing is written and it exits with 1.
Every file is written atomically (complete or absent). ``--seed`` fixes the LMs' draws per file (the same file and
seed give the same bytes, whatever else is in the run).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from experiments.arguments import DEVICE, SEED, command_parser
from experiments.tokenize_audio import find_audio, read_file_list

log = logging.getLogger(__name__)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    if prog == "continue":
        p.add_argument("--prompt", nargs="+", default=[], metavar="PATH",
                       help="prompt audio files or folders (folders searched recursively)")
        p.add_argument("--seconds", type=float, default=3.0, help="length of the continuation (s; default 3)")
        p.add_argument("--speechlm", required=True, help="a SpeechLM checkpoint (syllablelm fit ... speechlm)")
        p.add_argument("--no-prompt-context", dest="prompt_context", action="store_false",
                       help="generate the continuation's fine units from an empty context (default: the interleaved "
                            "LM continues the prompt's own syllables and true fine units)")
    else:
        p.add_argument("--input", nargs="+", default=[], metavar="PATH",
                       help="audio files or folders (folders searched recursively, symbolic links followed)")
        p.add_argument("--from", dest="source", choices=("syllables", "fine"), default="syllables",
                       help="syllables: the whole loop (default); fine: the true fine units and durations (the "
                            "vocoder's ceiling)")
    p.add_argument("--file-list", metavar="PATH", help="a text file of audio paths, one a line")
    p.add_argument("--output-dir", required=True, help="folder for the WAVs and units.jsonl (created)")
    p.add_argument("--tokenizer", help="a tokenizer checkpoint (syllablelm quantize)")
    p.add_argument("--interleaved-lm", help="an interleaved vocoder LM checkpoint")
    p.add_argument("--fine-features", choices=("teacher", "logmel"), default="teacher",
                   help="fine units: a teacher layer's k-means (default: the shipped teacher.ckpt layer 2, "
                        "kmeans_layer2.npy, vocoder.ckpt) or 80-band log-mel k-means (spectral, not SSL units: the "
                        "shipped kmeans_logmel.npy and vocoder_logmel.ckpt)")
    p.add_argument("--vocoder", help="a unit vocoder (default: the shipped one of --fine-features)")
    p.add_argument("--fine-checkpoint", help="teacher fine units' encoder (default: the shipped teacher.ckpt)")
    p.add_argument("--fine-layer", type=int, help="its layer (default 2)")
    p.add_argument("--fine-kmeans", help="the fine units' k-means centroids (default: the shipped one of "
                                         "--fine-features)")
    p.add_argument("--temperature", type=float, default=1.0, help="the LMs' sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely units (0: all)")
    p.add_argument("--seed", type=int, default=0, help=SEED)
    p.add_argument("--device", help=DEVICE)
    return p


def resynthesize_parser() -> argparse.ArgumentParser:
    return _parser("resynthesize")


def continue_speech_parser() -> argparse.ArgumentParser:
    return _parser("continue")


def _inputs(p: argparse.ArgumentParser, roots: list[str], file_list: str | None, flag: str) -> list[Path] | int:
    if not roots and not file_list:
        p.error(f"give audio with {flag} PATH [PATH ...] and/or --file-list PATH")
    missing = [x for x in roots if not os.path.exists(x)]
    if missing:
        print(f"{p.prog}: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        listed = read_file_list(file_list) if file_list else []
    except (OSError, UnicodeDecodeError) as e:
        print(f"{p.prog}: cannot read the file list {file_list} ({getattr(e, 'strerror', None) or e})",
              file=sys.stderr)
        return 2
    files = find_audio(roots, listed)
    if not files:
        from syllablelm.audio.io import AUDIO_EXTENSIONS

        print(f"{p.prog}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under: {', '.join(roots)}"
              + (f"; file list {file_list}" if file_list else ""), file=sys.stderr)
        return 2
    return files


def output_names(files: list[Path]) -> list[str]:
    """``<stem>.wav`` per file; a stem met again gets ``-2``, ``-3``, ... (in input order)."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        n = seen[f.stem] = seen.get(f.stem, 0) + 1
        out.append(f"{f.stem}.wav" if n == 1 else f"{f.stem}-{n}.wav")
    return out


def _models(args, *, tokenizer: bool, interleaved: bool, speechlm: bool):
    from experiments import speech_out as so

    kw = {"fine_features": args.fine_features}
    for key, value in (("vocoder", args.vocoder), ("fine_checkpoint", args.fine_checkpoint),
                       ("fine_layer", args.fine_layer), ("fine_kmeans", args.fine_kmeans)):
        if value is not None:
            kw[key] = value
    return so.SpeechModels.load(tokenizer=args.tokenizer if tokenizer else None,
                                interleaved=args.interleaved_lm if interleaved else None,
                                speechlm=getattr(args, "speechlm", None) if speechlm else None,
                                device=args.device or "cpu", **kw)


def run_files(files: list[Path], out_dir: str, work, what: str) -> int:
    """``work(path, name) -> (audio, record)`` for each file; WAVs and units.jsonl written atomically; a file the
    audio reader refuses is skipped and recorded; returns 0 (1 when none could be used, nothing written)."""
    import numpy as np
    from tqdm.auto import tqdm

    from syllablelm.audio.io import AudioError, read_audio, write_audio
    from syllablelm.runtime.fileio import write_text
    from syllablelm.runtime.outcome import record_skip

    out = Path(out_dir)
    lines, written = [], 0
    for path, name in tqdm(list(zip(files, output_names(files))), desc=what, unit="file"):
        try:
            wave = read_audio(path)
            audio, record = work(wave, Path(name).stem)
        except AudioError as e:
            record_skip(str(path), e.problem, what)
            continue
        except Exception as e:  # not the audio: a failure of the run, but say which file it was on
            raise RuntimeError(f"{path}: {what} failed ({type(e).__name__}: {e})") from e
        out.mkdir(parents=True, exist_ok=True)
        write_audio(out / name, np.clip(audio, -1.0, 1.0), 16000)
        lines.append(json.dumps({"path": str(path), "output": name, **record}))
        written += 1
    if not written:
        print(f"syllablelm {what}: none of the {len(files)} audio files could be read (each named above with its "
              "reason); nothing written", file=sys.stderr)
        return 1
    write_text(out / "units.jsonl", "\n".join(lines) + "\n")
    log.info("%s: %d of %d files into %s", what, written, len(files), out)
    return 0


def _sampling(args):
    from experiments.speech_out import Sampling

    return Sampling(temperature=args.temperature, top_k=args.top_k or None)


def resynthesize(argv: list[str] | None = None) -> int:
    p = resynthesize_parser()
    args = p.parse_args(argv)
    if args.source == "syllables" and not (args.tokenizer and args.interleaved_lm):
        p.error("--from syllables needs --tokenizer and --interleaved-lm (or use --from fine)")
    files = _inputs(p, args.input, args.file_list, "--input")
    if isinstance(files, int):
        return files
    from experiments import speech_out as so

    models = _models(args, tokenizer=args.source == "syllables", interleaved=args.source == "syllables",
                     speechlm=False)
    sampling = _sampling(args)
    return run_files(files, args.output_dir, lambda wave, name: so.resynthesize(
        models, wave, source=args.source, seed=args.seed, name=name, sampling=sampling), "resynthesize")


def continue_speech(argv: list[str] | None = None) -> int:
    p = continue_speech_parser()
    args = p.parse_args(argv)
    if not (args.tokenizer and args.interleaved_lm):
        p.error("continue needs --tokenizer, --speechlm and --interleaved-lm")
    if not args.seconds > 0:
        p.error(f"--seconds must be positive, got {args.seconds}")
    files = _inputs(p, args.prompt, args.file_list, "--prompt")
    if isinstance(files, int):
        return files
    from experiments import speech_out as so

    models = _models(args, tokenizer=True, interleaved=True, speechlm=True)
    sampling = _sampling(args)
    return run_files(files, args.output_dir, lambda wave, name: so.continue_speech(
        models, wave, args.seconds, seed=args.seed, name=name, sampling=sampling,
        prompt_context=args.prompt_context), "continue")
