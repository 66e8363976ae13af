"""2-process CPU DDP: one epoch of tiny SylBoost, one file per batch, over a corpus one of whose files broke after
its manifest was cached (launched by tests/test_reliability.py).

Each rank writes OUT/rank{R}.json: digests of its student's and teacher's weights, its optimizer steps and the
skipped-batch count it sees (summed over ranks).
"""
import argparse
import hashlib
import json
import os
from pathlib import Path

import lightning.pytorch as pl

from tests import sylboost_helpers as H


def digest(module) -> str:
    return hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in module.parameters())).hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--corpus"), p.add_argument("--store"), p.add_argument("--teacher"), p.add_argument("--cache")
    p.add_argument("--out")
    a = p.parse_args()
    dm = H.one_file_batches(Path(a.corpus), Path(a.store), a.cache)
    model = H.module(Path(a.teacher))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=a.out)
    trainer.fit(model, dm)
    with open(Path(a.out) / f"rank{trainer.global_rank}.json", "w") as f:
        json.dump({"student": digest(model.student), "teacher": digest(model.teacher), "steps": trainer.global_step,
                   "skipped": float(trainer.callback_metrics["train/skipped_batches"])}, f)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
