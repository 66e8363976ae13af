"""Exact resume: a fit crashed at a named point (syllablelm.runtime.faults) and restarted from its last checkpoint
ends with
the same weights and the same boundary versions as a fit that never stopped, bit for bit (docs/architecture.md,
"Reliability"). Dropout and random crops are on, so a replay that drew other random numbers or served other
batches could not match; DataLoader workers differ between the runs, so where a batch is made cannot matter."""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from callbacks.boundary_regeneration import BoundaryRegeneration
from callbacks.exact_resume import ExactResume
from datamodules.boundary_store import BoundaryStore
from datamodules.samplers import TrainBatchSampler
from datamodules.speech import SpeechDataModule
from datamodules.unit_data import UnitsDataModule
from lightning_modules.speechlm import SpeechLMModule
from lightning_modules.sylboost import SylBoostModule
from lightning_modules.teacher import TeacherModule
from syllablelm.models.gpt import GPTConfig
from syllablelm.models.hubert import TeacherConfig
from syllablelm.runtime import faults
from tests import sylboost_helpers as H
from tests.test_speechlm import V, write_store


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    yield
    faults.reset()


def crash_at(monkeypatch, point: str) -> None:
    monkeypatch.setenv(faults.ENV, point)
    faults.reset()


def test_a_fault_point_fires_on_its_count_only(monkeypatch):
    crash_at(monkeypatch, "train_batch_end:X@2,other")
    faults.fault_point("train_batch_end", "Y")  # another detail: not this point
    faults.fault_point("train_batch_end", "X")  # first hit: not yet
    with pytest.raises(faults.InjectedFault, match="train_batch_end:X"):
        faults.fault_point("train_batch_end", "X")
    faults.fault_point("train_batch_end", "X")  # fires once
    with pytest.raises(faults.InjectedFault, match="other"):
        faults.fault_point("other")
    assert set(faults.fault_points()) >= {"train_batch_end", "regeneration.written", "predict_batch_end"}


def test_the_sampler_resumes_inside_an_epoch_and_past_its_end():
    seconds = np.random.default_rng(0).uniform(1, 5, size=30)
    s = TrainBatchSampler(seconds, batch_size=4, seed=3)
    s.set_epoch(2)
    epoch2 = list(s)
    s.set_epoch(3)
    epoch3 = list(s)
    r = TrainBatchSampler(seconds, batch_size=4, seed=3)
    r.resume(2, 5)
    assert r.next_epoch == 2 and list(r) == epoch2[5:]
    assert list(r) == epoch2  # once: the next iterator serves the whole epoch set_epoch names
    r.resume(2, len(epoch2))  # the epoch was over: the next one from its start
    assert r.next_epoch == 3 and list(r) == epoch3


# ---- SylBoost ----------------------------------------------------------------------------------------------
def teacher_with_dropout(path) -> str:
    torch.manual_seed(0)
    module = TeacherModule(network=TeacherConfig.tiny(num_hidden_layers=1, hidden_size=64, num_attention_heads=2,
                                                      intermediate_size=128, num_labels=10, final_dim=16,
                                                      hidden_dropout=0.1, attention_dropout=0.1))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


def sylboost_fit(corpus, root, teacher, cache, store, *, workers=0, step_checkpoints=False, resume=False):
    pl.seed_everything(0)
    model = SylBoostModule(init_from=teacher, feature_layer=1, iterations=2, epochs_per_iteration=1,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), segmenter={"rate_hz": 6.25})
    dm = SpeechDataModule(train_dirs=[str(corpus / "train")], val_dirs=[str(corpus / "dev")],
                          alignment_dir=str(corpus / "alignments"), boundary_dir=str(store), boundary_version=0,
                          require_boundaries=True, batch_size=4, crop_seconds=2.0, crop_mode="random",
                          num_workers=workers, manifest_cache=cache)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, enable_version_counter=False,
                                        save_on_train_epoch_end=False,
                                        every_n_train_steps=1 if step_checkpoints else None)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=1,
                         callbacks=[ExactResume(), BoundaryRegeneration(), ckpt])
    last = root / "ckpt" / "last.ckpt"
    trainer.fit(model, dm, ckpt_path=str(last) if resume and last.exists() else None)
    return model, trainer


@pytest.fixture(scope="module")
def sylboost_reference(synth_corpus, tmp_path_factory):
    """One uninterrupted fit (no workers): its final student and its boundary versions 1 and 2."""
    root = tmp_path_factory.mktemp("resume_ref")
    cache = str(root / "cache")
    teacher = teacher_with_dropout(root / "teacher.ckpt")
    H.write_v0(synth_corpus, root / "v0", cache)
    import shutil

    shutil.copytree(root / "v0", root / "store")
    model, trainer = sylboost_fit(synth_corpus, root, teacher, cache, root / "store")
    assert trainer.global_step >= 8  # several batches per epoch: a crash can land inside one
    store = BoundaryStore(root / "store")
    return {"teacher": teacher, "cache": cache, "v0": root / "v0", "student": model.student.state_dict(),
            "versions": {v: store.load(v) for v in (1, 2)}, "steps": trainer.global_step}


@pytest.mark.slow
@pytest.mark.parametrize("point, step_checkpoints, workers, expect_versions", [
    ("train_batch_end:SylBoostModule@2", False, 0, [0]),  # before the first checkpoint: starts again
    ("train_batch_end:SylBoostModule@-1", True, 0, [0, 1]),  # mid iteration 2, a checkpoint every step
    ("train_batch_end:SylBoostModule@-1", False, 2, [0, 1]),  # mid iteration 2, from iteration 1's end; workers
    ("regeneration.written@1", False, 0, [0, 1]),  # between iterations: version 1 on disk, in no checkpoint
])
def test_a_crashed_sylboost_resumes_to_the_same_weights_and_boundaries(
        synth_corpus, tmp_path, sylboost_reference, monkeypatch, point, step_checkpoints, workers, expect_versions):
    ref = sylboost_reference
    if "@-1" in point:  # the second batch of epoch 1 (iteration 2)
        point = point.replace("@-1", f"@{ref['steps'] // 2 + 2}")
    import shutil

    shutil.copytree(ref["v0"], tmp_path / "store")
    crash_at(monkeypatch, point)
    with pytest.raises(faults.InjectedFault):
        sylboost_fit(synth_corpus, tmp_path, ref["teacher"], ref["cache"], tmp_path / "store", workers=workers,
                     step_checkpoints=step_checkpoints)
    store = BoundaryStore(tmp_path / "store")
    assert store.versions() == expect_versions
    monkeypatch.delenv(faults.ENV)
    model, trainer = sylboost_fit(synth_corpus, tmp_path, ref["teacher"], ref["cache"], tmp_path / "store",
                                  workers=workers, step_checkpoints=step_checkpoints, resume=True)
    assert trainer.global_step == ref["steps"]
    got = model.student.state_dict()
    assert all(torch.equal(got[k], ref["student"][k]) for k in got), "the resumed student differs"
    for v in (1, 2):
        stored = store.load(v)
        assert stored.keys() == ref["versions"][v].keys()
        assert all(np.array_equal(stored[u], ref["versions"][v][u]) for u in stored), f"version {v} differs"


def test_the_batches_carry_the_boundary_version_in_use_not_the_one_their_worker_saw(sylboost_setup):
    """A batch made (in a worker) before a regeneration reaches the model with the new version's segments."""
    corpus, tmp, _, cache, ids = sylboost_setup
    store = BoundaryStore(tmp / "store")
    store.write_shard(1, 0, 1, {u: np.array([[0.0, 0.25]]) for u in ids})
    store.finalize(1, 1)
    dm = H.datamodule(corpus, tmp / "store", cache)
    dm.setup("fit")
    batch = dm.dataset("train")[(0, [0, 1], 0)]  # built under version 0
    old = [s.copy() for s in batch["segments"]]
    dm.set_boundary_version(1)
    dm.on_before_batch_transfer(batch, 0)
    assert all(not np.array_equal(a, b) for a, b in zip(old, batch["segments"]))
    assert all(np.array_equal(s, [[0.0, 0.25]]) for s in batch["segments"])


# ---- SpeechLM ----------------------------------------------------------------------------------------------
def speechlm_fit(root, units, *, step_checkpoints, resume=False, workers=0):
    pl.seed_everything(0)
    dm = UnitsDataModule(unit_dir=str(units), val_fraction=0.2, context_length=8, batch_size=2, pack=False,
                         num_workers=workers)
    model = SpeechLMModule(network=GPTConfig.tiny(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                                  dropout=0.2), warmup=2, hold=4, decay=8)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, enable_version_counter=False,
                                        every_n_train_steps=1 if step_checkpoints else None)
    trainer = pl.Trainer(max_steps=14, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, check_val_every_n_epoch=1,
                         callbacks=[ExactResume(), ckpt])
    last = root / "ckpt" / "last.ckpt"
    trainer.fit(model, dm, ckpt_path=str(last) if resume and last.exists() else None)
    return model, trainer


@pytest.mark.parametrize("step_checkpoints", [True, False])
def test_a_crashed_speechlm_fit_resumes_to_the_same_weights(tmp_path, monkeypatch, step_checkpoints):
    write_store(tmp_path / "units", [9, 4, 12, 6, 3, 7, 11, 5, 8, 10, 6, 4, 9, 7, 5])  # 12 train utterances
    ref, ref_trainer = speechlm_fit(tmp_path / "ref", tmp_path / "units", step_checkpoints=False)
    crash_at(monkeypatch, "train_batch_end:SpeechLMModule@9")  # inside the second epoch (6 batches each)
    with pytest.raises(faults.InjectedFault):
        speechlm_fit(tmp_path / "run", tmp_path / "units", step_checkpoints=step_checkpoints)
    monkeypatch.delenv(faults.ENV)
    model, trainer = speechlm_fit(tmp_path / "run", tmp_path / "units", step_checkpoints=step_checkpoints,
                                  resume=True, workers=2)
    assert trainer.global_step == ref_trainer.global_step == 14
    want = ref.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items()), "the resumed SpeechLM differs"
