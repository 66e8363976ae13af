"""``syllablelm baselines``: the feature-free segmenters of REFERENCE.md scored on a corpus with alignments.

    syllablelm baselines --data data/synth/test --tune-data data/synth/dev \
        --alignments data/synth/alignments --rate 6.25 --out runs/baselines.json

Uniform (4.5 Hz and ``--rate``), envelope minima (its cut-off and prominence tuned on ``--tune-data`` by
R-value) and the log-mel SSE min-cut at ``--rate``. Every score is reported for both protocols at shift 0 and
with the shift tuned on ``--tune-data`` (the protocol's grid, by R-value) and applied to ``--data``.
"""
from __future__ import annotations

import argparse
import logging

from tqdm.auto import tqdm

from datamodules.manifest import build_manifest
from syllablelm.alignments import index_alignments, load_alignment
from syllablelm.audio import SAMPLE_RATE, read_audio, speech_regions
from syllablelm.baselines import envelope_segments, mincut_segments, tune_envelope, uniform_segments
from syllablelm.fileio import write_json
from syllablelm.metrics import boundary_scores, tune_shift

log = logging.getLogger(__name__)
PROTOCOLS = ("syllablelm", "sdhubert")


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


def score(pred_test, ref_test, pred_dev, ref_dev) -> dict:
    """Both protocols at shift 0 and at the shift tuned on dev."""
    out = {}
    for protocol in PROTOCOLS:
        shift, _ = tune_shift(pred_dev, ref_dev, protocol=protocol)
        out[protocol] = boundary_scores(pred_test, ref_test, protocol=protocol)
        out[f"{protocol}_tuned"] = {**boundary_scores(pred_test, ref_test, protocol=protocol, shift=shift),
                                    "shift": shift}
    return out


def run_baselines(test, dev, rate_hz: float = 6.25, *, per: str = "speech") -> dict:
    """``test``/``dev`` are ``(waves, refs)``; returns ``{name: scores}`` (see :func:`score`).

    Uniform and the log-mel min-cut cut inside speech regions at ``rate_hz`` per second of speech
    (``per="speech"``, REFERENCE.md), or (``per="file"``) at the per-speech-second rate that gives ``rate_hz``
    segments per second of audio on each split: as many segments as a system whose achieved rate is
    ``rate_hz`` (what ``evaluate`` compares against). ``params.rate_hz`` is the per-speech rate used on test."""
    b = _Baselines(test, dev)
    b.add("uniform_4.5hz", lambda w, r, _: _uniform(w, r, 4.5), {"rate_hz": 4.5})
    if per == "file" or abs(rate_hz - 4.5) > 1e-9:
        b.add_at_rate("uniform", _uniform, rate_hz, per)
    params, _ = tune_envelope(b.dev[0], SAMPLE_RATE, b.dev[1])
    b.add("envelope", lambda w, r, _: envelope_segments(w, SAMPLE_RATE, regions=r, **params), params)
    b.add_at_rate("mincut_logmel", lambda w, r, q: mincut_segments(w, SAMPLE_RATE, rate_hz=q, regions=r), rate_hz, per)
    return b.results


def _uniform(wave, regions, rate_hz: float):
    return uniform_segments(wave, SAMPLE_RATE, rate_hz=rate_hz, regions=regions)


def uniform_baseline(test, dev, rate_hz: float, *, per: str = "file") -> tuple[str, dict]:
    """``(name, scores)`` of uniform segments at ``rate_hz`` (``per`` as in :func:`run_baselines`): e.g. at
    LossPred's achieved rate, so that LossPred is compared with as many uniform segments as it places."""
    b = _Baselines(test, dev)
    return b.add_at_rate("uniform", _uniform, rate_hz, per), b.results


class _Baselines:
    """Scores segmenters ``fn(wave, speech regions, per-speech rate)`` on test, with the shift tuned on dev."""

    def __init__(self, test, dev):
        self.test, self.dev = test, dev
        self.regions = tuple([speech_regions(w, SAMPLE_RATE) for w in split[0]] for split in (test, dev))
        self.results: dict[str, dict] = {}

    def rates(self, rate_hz: float, per: str) -> tuple[tuple[float, float], dict]:
        """Per-speech rates for (test, dev) and the ``params`` that record them."""
        if per not in ("speech", "file"):
            raise ValueError(f"per must be 'speech' or 'file', got {per!r}")
        if per == "speech":
            return (rate_hz, rate_hz), {"rate_hz": rate_hz}

        def speech_rate(waves, regions) -> float:
            speech = sum(float((r[:, 1] - r[:, 0]).sum()) for r in regions if len(r))
            return rate_hz * (sum(len(w) for w in waves) / SAMPLE_RATE) / max(speech, 1e-9)

        rates = tuple(speech_rate(split[0], regions) for split, regions in zip((self.test, self.dev), self.regions))
        return rates, {"rate_hz": rates[0], "per": per, "matched_hz": rate_hz}

    def add(self, name: str, fn, params=None, rates=(None, None)) -> str:
        (wt, rt), (wd, rd) = self.test[:2], self.dev[:2]
        pt = [fn(w, r, rates[0]) for w, r in zip(wt, self.regions[0])]
        pd = [fn(w, r, rates[1]) for w, r in zip(wd, self.regions[1])]
        seconds = sum(len(w) for w in wt) / SAMPLE_RATE
        self.results[name] = {**score(pt, rt, pd, rd), "rate_hz": sum(len(p) for p in pt) / seconds}
        if params is not None:
            self.results[name]["params"] = params
        return name

    def add_at_rate(self, prefix: str, fn, rate_hz: float, per: str) -> str:
        """``{prefix}_{rate}hz``: ``fn`` at ``rate_hz`` per second of speech or matched per second of audio."""
        rates, params = self.rates(rate_hz, per)
        return self.add(f"{prefix}_{rate_hz:g}hz", fn, params, rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syllablelm baselines", description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="evaluation audio folders (e.g. the test split)")
    p.add_argument("--tune-data", nargs="+", required=True, help="folders for tuning shifts and envelope (dev)")
    p.add_argument("--alignments", required=True, help="alignment JSON folder (searched recursively)")
    p.add_argument("--rate", type=float, default=6.25, help="the project's rate for uniform and min-cut (Hz)")
    p.add_argument("--limit", type=int, help="at most this many utterances per split")
    p.add_argument("--out", help="write the scores as JSON here")
    p.add_argument("--manifest-cache")
    args = p.parse_args(argv)
    wt, rt, _ = load_split(args.data, args.alignments, args.limit, args.manifest_cache)
    wd, rd, _ = load_split(args.tune_data, args.alignments, args.limit, args.manifest_cache)
    results = run_baselines((wt, rt), (wd, rd), args.rate)
    for name, res in results.items():
        s, t = res["syllablelm"], res["syllablelm_tuned"]
        print(f"{name:<22} rate {res['rate_hz']:5.2f} Hz   F1 {100 * s['f1']:5.1f}  R {100 * s['r_value']:5.1f}"
              f"   (shift {1000 * t['shift']:+.0f} ms: F1 {100 * t['f1']:5.1f}  R {100 * t['r_value']:5.1f})")
    if args.out:
        write_json(args.out, results, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
