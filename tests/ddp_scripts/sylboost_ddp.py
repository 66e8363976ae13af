"""2-process CPU DDP run of tiny SylBoost for 2 iterations (launched by tests/test_sylboost.py).

Each rank writes OUT/rank{R}.json: the boundary version its DataModule holds, the store's manifest it reads, a
digest of its boundaries, and the regeneration history.
"""
import argparse
import hashlib
import json
import os
from pathlib import Path

from datamodules.boundary_store import BoundaryStore
from tests import sylboost_helpers as H


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--corpus"), p.add_argument("--root"), p.add_argument("--teacher"), p.add_argument("--cache")
    a = p.parse_args()
    root = Path(a.root)
    dm = H.datamodule(Path(a.corpus), root / "store", a.cache)
    model = H.module(Path(a.teacher))
    trainer = H.trainer(root, devices=2, strategy="ddp")
    trainer.fit(model, dm)
    store = BoundaryStore(root / "store")
    digest = hashlib.sha1(b"".join(dm.boundaries[k].tobytes() for k in sorted(dm.boundaries))).hexdigest()
    regen = [cb for cb in trainer.callbacks if type(cb).__name__ == "BoundaryRegeneration"][0]
    with open(root / f"rank{trainer.global_rank}.json", "w") as f:
        json.dump({"version": dm.version, "manifest": store.manifest(dm.version), "digest": digest,
                   "history": regen.history, "iteration": model.iteration}, f)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
