"""``syllablelm store-copy``: copy one complete store version (boundaries, labels or units) into another store.

    syllablelm store-copy --store runs/librispeech/boundaries --version 0 --out runs/librispeech/boundaries_5.0hz

The use: a second SylBoost run (another rate or backbone) starts from LossPred's version 0 but keeps its own
later versions. Shards are copied atomically and the manifest is written last, so an interrupted copy is an
incomplete version (never read) and a rerun replaces it.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from datamodules.boundary_store import BoundaryStore
from datamodules.label_store import LabelStore
from datamodules.shard_store import MANIFEST
from datamodules.unit_store import UnitStore

log = logging.getLogger(__name__)
STORES = {cls.kind: cls for cls in (BoundaryStore, LabelStore, UnitStore)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syllablelm store-copy", description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="the source store root (holds iter_K/ folders)")
    p.add_argument("--version", type=int, default=0)
    p.add_argument("--out", required=True, help="the destination store root")
    p.add_argument("--out-version", type=int, help="the version number in the destination (default: the same)")
    args = p.parse_args(argv)
    manifest = Path(args.store) / f"iter_{args.version}" / MANIFEST
    if not manifest.is_file():
        raise SystemExit(f"syllablelm store-copy: {manifest} does not exist (no complete version {args.version})")
    kind = json.loads(manifest.read_text()).get("kind")
    if kind not in STORES:
        raise SystemExit(f"syllablelm store-copy: {manifest}: unknown store kind {kind!r}")
    cls = STORES[kind]
    copied = cls(args.store).copy_version(args.version, cls(args.out), args.out_version)
    log.info("copied %s version %d (%d utterances) to %s", kind, args.version, copied["num_utterances"], args.out)
    return 0
