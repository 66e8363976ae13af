"""callbacks.throughput.StageThroughput: throughput, audio seconds / tokens per second and MFU against an explicit
peak, from each training step's FLOP count (syllablelm.models.flops)."""
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from callbacks.throughput import StageThroughput
from lightning_modules.speechlm import SpeechLMModule
from syllablelm.models.gpt import GPTConfig
from tests import sylboost_helpers as H
from tests.test_speechlm import V, write_store


class Memory(Logger):
    """Keeps every logged metric (name -> [(step, value)])."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, list] = {}

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_lm_tokens_per_second_and_mfu(tmp_path):
    from datamodules.unit_data import UnitsDataModule

    write_store(tmp_path / "units", [9, 12, 7, 11, 8, 10, 9, 12, 7, 11])
    dm = UnitsDataModule(unit_dir=str(tmp_path / "units"), val_fraction=0.2, context_length=16, batch_size=2,
                         num_workers=0)
    model = SpeechLMModule(network=GPTConfig.tiny(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32),
                           warmup=2, hold=2, decay=4)
    logger = Memory()
    peak = 1e9
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, max_steps=8, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         log_every_n_steps=1,
                         callbacks=[StageThroughput(peak_flops=peak, measured_flops=peak / 2, window_size=3)])
    trainer.fit(model, dm)
    m = logger.metrics
    flops_rate = m["train/device/flops_per_sec"][-1][1]
    assert m["train/device/mfu"][-1][1] == pytest.approx(flops_rate / peak)
    assert m["train/device/mfu_measured"][-1][1] == pytest.approx(2 * flops_rate / peak)
    assert m["train/tokens_per_sec"][-1][1] == pytest.approx(m["train/device/items_per_sec"][-1][1])
    assert model.flops_per_batch is None or model.flops_per_batch > 0


def test_sylboost_audio_seconds_and_flops(sylboost_setup):
    corpus, tmp, teacher, cache, _ = sylboost_setup
    dm = H.datamodule(corpus, tmp / "store", cache)
    model = H.module(teacher)
    logger = Memory()
    trainer = H.trainer(tmp, callbacks=[StageThroughput(peak_flops=1e10, window_size=2)], logger=logger,
                        log_every_n_steps=1)
    trainer.fit(model, dm)
    m = logger.metrics
    assert m["train/audio_seconds_per_sec"][-1][1] > 0 and m["train/device/mfu"][-1][1] > 0
    # the step's count: student 3x (its CNN frozen: 1x), the frozen teacher's forward 1x
    from syllablelm.models import flops

    spec = model.student.spec()
    body = flops.hubert_forward(48000, spec["config"], layers=spec["layer"], cnn=False)
    full = flops.hubert_forward(48000, spec["config"], layers=spec["layer"])
    assert model.training_flops(48000, 4) == 4 * (3 * body + (full - body) + full)
    assert torch.isfinite(torch.tensor(m["train/device/flops_per_sec"][-1][1]))
