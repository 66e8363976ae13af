"""2-process CPU DDP run of the shared DataModule (launched by tests/test_datamodule_ddp.py).

Trains one epoch (training shards), then predicts (the unrepeated offline pass). Each rank writes what it saw
to OUT/rank{R}.json. Rank 1 is given a stale view of the boundary store so that only rank 0's broadcast of
"latest" can make both ranks read the same version.
"""
import argparse
import hashlib
import json
import os

import lightning.pytorch as pl
import torch

from datamodules.boundary_store import BoundaryStore
from datamodules.speech import SpeechDataModule


class Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_ids, self.predict_ids = [], []

    def training_step(self, batch, _):
        self.train_ids += batch["ids"]
        return (self.w * batch["waves"].mean()).sum() + self.w.pow(2).sum()

    def predict_step(self, batch, _):
        self.predict_ids += batch["ids"]
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data"), p.add_argument("--store"), p.add_argument("--out"), p.add_argument("--cache")
    a = p.parse_args()
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank == 1:  # a lagging filesystem view on rank 1
        BoundaryStore.latest_version = lambda self: 0
    dm = SpeechDataModule(train_dirs=[a.data], boundary_dir=a.store, boundary_version="latest", batch_size=2,
                          num_workers=0, manifest_cache=a.cache)
    model = Probe()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    trainer.predict(model, dm, return_predictions=False)
    digest = hashlib.sha1(b"".join(dm.boundaries[k].tobytes() for k in sorted(dm.boundaries))).hexdigest()
    with open(os.path.join(a.out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"version": dm.version, "digest": digest, "train": model.train_ids,
                   "predict": model.predict_ids}, f)


if __name__ == "__main__":
    main()
