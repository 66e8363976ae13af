"""Fine units at 50 Hz or pooled to 25 Hz (issue 29, item 1): what the CPU path keeps at each rate.

Reads a label store (the ``labels`` stage's whole-file 50 Hz k-means labels: the CPU path's fine units) and the
synthetic corpus's phone alignments of one split, and prints per rate: fine tokens per second after deduplication
(what the interleaved LM must predict), phones with no frame centre inside them (lost by the grid), and the phone
purity of the units (each unit labelled with its most frequent phone; the fraction of frames whose phone that is).

    python benchmarks/fine_rate.py --labels RUNS/labels --alignments DATA/alignments/train
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

from datamodules.label_store import LabelStore
from syllablelm.units.fine import pool_labels, runs


def frame_phones(phones, n: int, hop_s: float) -> np.ndarray:
    """The phone (index into ``phones``) under each frame centre, -1 in pauses."""
    centres = (np.arange(n) + 0.5) * hop_s
    out = np.full(n, -1)
    for k, (a, b, _) in enumerate(phones):
        out[(centres >= a) & (centres < b)] = k
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", required=True, help="label store root")
    p.add_argument("--alignments", required=True, help="alignment folder of the split to measure (training split)")
    args = p.parse_args(argv)
    store = LabelStore(args.labels)
    labels = store.load(store.resolve("latest"))
    files = {f.stem: f for f in Path(args.alignments).rglob("*.json")}
    rows = []
    for factor, name in ((1, "50 Hz"), (2, "25 Hz (majority of 2)")):
        tokens = seconds = lost = total = 0
        pairs = collections.Counter()
        for utt, path in sorted(files.items()):
            if utt not in labels:
                continue
            lab = pool_labels(np.asarray(labels[utt]), factor)
            hop_s = 0.02 * factor
            phones = json.loads(path.read_text())["phones"]
            fp = frame_phones(phones, lab.size, hop_s)
            tokens += runs(lab)[0].size
            seconds += lab.size * hop_s
            total += len(phones)
            lost += len(phones) - np.unique(fp[fp >= 0]).size
            names = [phones[k][2].lstrip("',") if k >= 0 else "" for k in fp]
            pairs.update(zip(lab.tolist(), names))
        best = collections.defaultdict(int)
        for (unit, _), count in pairs.items():
            best[unit] = max(best[unit], count)
        purity = sum(best.values()) / max(1, sum(pairs.values()))
        rows.append((name, tokens / seconds, lost / max(1, total), purity))
    print(f"{'rate':<24}{'fine tokens/s':>14}{'phones lost':>13}{'phone purity':>14}")
    for name, tps, lost, purity in rows:
        print(f"{name:<24}{tps:>14.1f}{100 * lost:>12.1f}%{100 * purity:>13.1f}%")


if __name__ == "__main__":
    main()
