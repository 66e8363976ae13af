"""Real speech: tokenizers against classical segmenters on a forced-aligned real-speech dev set (docs/results.md).

    python -m experiments.recipes.realdev --data ../shared/data/realdev \
        --tokenizer demo=runs/demo/runs/tokenizer.ckpt --envelope-from runs/demo/runs/evaluate.json \
        [--findsylls-python /path/to/venv/bin/python] --out realdev.json

``--data`` is a folder in LibriSpeech layout (``audio/<speaker>/<chapter>/<id>.flac``) with per-utterance alignment
JSON files under ``alignments/`` whose tiers hold ``[label, start, end]`` entries (realdev's layout). Scored, each
at its own rate, protocol "syllablelm", 50 ms, no shift (there is no dev split to tune one on): every tokenizer
(its segments as ``syllablelm tokenize`` gives them), the envelope-minima baseline with the parameters a demo's
``evaluate.json`` tuned on synthetic dev (never re-tuned here), uniform segments in speech regions at each
tokenizer's achieved rate, and, given a Python with the ``findsylls`` package, its peak detection on the SBS
envelope (its best classical method). Nothing here tunes anything on these files.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

FINDSYLLS = """
import json, sys
from findsylls import segment_audio
out = {}
for path in sys.argv[1:]:
    syl, _, _ = segment_audio(path, method="peakdetect", segmentation_kwargs={"envelope_method": "sbs"},
                              return_envelope=False)
    out[path] = [[float(s), float(e)] for s, _, e in syl]
print(json.dumps(out))
"""


def read_references(data: Path) -> dict[str, tuple[Path, list]]:
    """``id -> (audio path, syllable segments)`` from ``[label, start, end]`` alignment entries."""
    out = {}
    for ali in sorted((data / "alignments").rglob("*.json")):
        entry = json.loads(ali.read_text())
        uid = entry.get("utt_id", ali.stem)
        audio = next((data / "audio").rglob(f"{uid}.flac"), None)
        if audio is None:
            raise FileNotFoundError(f"{ali}: no audio {uid}.flac under {data / 'audio'}")
        out[uid] = (audio, [[float(s), float(e)] for _, s, e in entry["syllables"]])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--tokenizer", nargs="+", default=[], help="NAME=CHECKPOINT")
    p.add_argument("--envelope-from", type=Path, help="an evaluate.json whose envelope baseline gives the parameters")
    p.add_argument("--cutoff-hz", type=float, default=None)
    p.add_argument("--prominence", type=float, default=None)
    p.add_argument("--findsylls-python", help="a Python interpreter with findsylls installed")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import numpy as np

    from syllablelm.audio.io import SAMPLE_RATE, read_audio, speech_regions
    from syllablelm.boundaries.baselines import envelope_segments, uniform_at_audio_rate
    from syllablelm.evaluation.boundary_metrics import boundary_scores
    from syllablelm.runtime.fileio import write_json
    from syllablelm.units.tokenizer import Tokenizer

    refs = read_references(args.data)
    ids = sorted(refs)
    waves = [read_audio(refs[u][0]).numpy() for u in ids]
    ref = [np.asarray(refs[u][1]) for u in ids]
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    regions = [speech_regions(w, SAMPLE_RATE) for w in waves]
    systems: dict[str, list] = {}
    for item in args.tokenizer:
        name, ckpt = item.split("=", 1)
        tok = Tokenizer.from_pretrained(ckpt)
        systems[f"tokenizer {name}"] = [s for s, _ in tok.batch([str(refs[u][0]) for u in ids])]
    params = {"cutoff_hz": args.cutoff_hz, "prominence": args.prominence}
    if args.envelope_from is not None:
        params = json.loads(args.envelope_from.read_text())["baselines"]["envelope"]["params"]
    if params["cutoff_hz"] is not None:
        systems["envelope minima"] = [envelope_segments(w, SAMPLE_RATE, regions=r, **params)
                                      for w, r in zip(waves, regions)]
    for name in [n for n in systems if n.startswith("tokenizer")]:
        rate = sum(map(len, systems[name])) / seconds  # as many segments per second of audio as the tokenizer
        systems[f"uniform at {name}'s rate"] = uniform_at_audio_rate(waves, SAMPLE_RATE, rate, regions)
    if args.findsylls_python:
        found = json.loads(subprocess.run([args.findsylls_python, "-c", FINDSYLLS, *[str(refs[u][0]) for u in ids]],
                                          check=True, capture_output=True, text=True).stdout)
        systems["findsylls (SBS peaks)"] = [np.asarray(found[str(refs[u][0])]).reshape(-1, 2) for u in ids]
    rows = {}
    for name, pred in systems.items():
        s = boundary_scores(pred, ref, protocol="syllablelm")
        rows[name] = {"f1": s["f1"], "r_value": s["r_value"], "precision": s["precision"], "recall": s["recall"],
                      "rate_hz": sum(map(len, pred)) / seconds}
        print(f"{name:<32} {rows[name]['rate_hz']:5.2f} Hz  F1 {100 * s['f1']:5.1f}  R-value {100 * s['r_value']:5.1f}")
    result = {"data": str(args.data), "utterances": len(ids), "seconds": seconds, "envelope_params": params,
              "protocol": "syllablelm, 50 ms, shift 0", "systems": rows}
    if args.out:
        write_json(args.out, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
