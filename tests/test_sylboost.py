"""SylBoost: distillation step, boundary regeneration across iterations, DDP exactness, resume, CLI."""
import json
import os
import shutil
import subprocess
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from datamodules.boundary_store import BoundaryStore
from lightning_modules.sylboost import SylBoostModule
from tests import sylboost_helpers as H
from tests.conftest import REPO
from tests.test_datamodule_ddp import free_port


def test_targets_loss_and_reinit(sylboost_setup):
    corpus, tmp, teacher, cache, _ = sylboost_setup
    model = H.module(teacher)
    dm = H.datamodule(corpus, tmp / "store", cache)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss, n = model._shared_step(batch)
    assert loss > 0 and n > 0
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())  # frozen teacher
    assert all(p.grad is None for p in model.student.model.feature_extractor.parameters())  # frozen CNN
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.01)
    model.start_iteration(1)
    for a, b in zip(model.student.state_dict().values(), model.teacher.state_dict().values()):
        assert torch.equal(a, b)  # re-initialised from the start checkpoint
    # the checkpoint rebuilds the network from its hyper-parameters alone
    rebuilt = SylBoostModule(**{k: v for k, v in model.hparams.items() if not k.startswith("_")})
    rebuilt.load_state_dict(model.state_dict())
    segs = [rebuilt.extract_boundaries(batch), model.extract_boundaries(batch)]
    assert all(np.array_equal(a, b) for a, b in zip(*segs))


def test_the_frozen_feature_cache_changes_no_loss_gradient_or_boundary(sylboost_setup):
    corpus, tmp, teacher, cache, _ = sylboost_setup
    dm = H.datamodule(corpus, tmp / "store", cache)
    dm.hparams.crop_seconds = 30.0  # whole files: a padded batch
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(set(batch["lengths"].tolist())) > 1
    plain, cached = H.module(teacher), H.module(teacher)
    cached.hparams.cache_frozen = True
    results = []
    for model in (plain, cached, cached):  # the second cached pass reads the cache
        model.zero_grad()
        loss, n = model._shared_step(batch)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.student.named_parameters() if p.grad is not None}
        results.append((float(loss), n, grads, model.extract_boundaries(batch)))
    assert len(cached._target_cache) == len(batch["ids"]) == len(cached._frontend_cache)
    # a cache filled under inference mode (regeneration, validation; e.g. right after a resume) still trains
    fresh = H.module(teacher)
    fresh.hparams.cache_frozen = True
    with torch.inference_mode():
        fresh.extract_boundaries(batch)
    loss, _ = fresh._shared_step(batch)
    loss.backward()
    assert float(loss) == pytest.approx(results[0][0], rel=1e-5)
    # a cache filled under bf16 autocast (precision bf16-mixed) serves the fp32 regeneration outside it
    mixed = H.module(teacher)
    mixed.hparams.cache_frozen = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed._shared_step(batch)
    assert {v.dtype for v in (*mixed._frontend_cache.values(), *mixed._target_cache.values())} == {torch.float32}
    assert len(mixed.extract_boundaries(batch)) == len(batch["ids"])
    (l0, n0, g0, s0), *rest = results
    for loss, n, grads, segs in rest:
        assert n == n0 and loss == pytest.approx(l0, rel=1e-5)
        assert grads.keys() == g0.keys() and len(g0) > 0
        for k in g0:
            torch.testing.assert_close(grads[k], g0[k], atol=1e-5, rtol=1e-4)
        assert all(np.array_equal(a, b) for a, b in zip(segs, s0))
    with pytest.raises(ValueError, match="freeze_cnn"):
        SylBoostModule(init_from=str(teacher), feature_layer=1, freeze_cnn=False, cache_frozen=True)
    random_crops = H.datamodule(corpus, tmp / "store", cache)
    random_crops.hparams.crop_mode = "random"
    model = SylBoostModule(init_from=str(teacher), feature_layer=1, epochs_per_iteration=1, cache_frozen=True)
    with pytest.raises(ValueError, match="crop_mode"):
        H.trainer(tmp / "random").fit(model, random_crops)


def test_two_iterations_write_versions_and_metrics(sylboost_setup):
    corpus, tmp, teacher, cache, ids = sylboost_setup
    dm = H.datamodule(corpus, tmp / "store", cache)
    model = H.module(teacher)
    trainer = H.trainer(tmp)
    trainer.fit(model, dm)
    store = BoundaryStore(tmp / "store")
    assert store.versions() == [0, 1, 2] and dm.version == 2
    for v in (1, 2):
        meta = store.manifest(v)["meta"]
        assert meta["stage"] == "SylBoostModule" and meta["version"] == v
        assert 5.5 < meta["rate_hz"] < 7.0  # fixed 6.25 Hz, rounding per utterance
        assert set(meta["metrics"]) == {"train", "val"} and 0 < meta["metrics"]["val"]["f1"] <= 1
    assert set(store.load(2)) == set(ids)
    # the final version is what the final weights give, utterance by utterance
    final = H.offline_boundaries(model, corpus, cache)
    assert all(np.array_equal(store.load(2)[u], final[u]) for u in ids)


class Recorder(pl.Callback):
    """Another callback: what it can read of the regeneration metrics at the start of each epoch."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        rate = trainer.callback_metrics.get("regen/rate_hz")
        self.seen.append(None if rate is None else float(rate))


def test_regeneration_metrics_reach_callback_metrics_monitors_and_the_logger(sylboost_setup):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    corpus, tmp, teacher, cache, _ = sylboost_setup
    recorder = Recorder()
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp / "best", monitor="regen/val_f1", mode="max",
                                        save_on_train_epoch_end=True, filename="{epoch}")
    trainer = H.trainer(tmp, callbacks=[recorder, best], logger=TensorBoardLogger(tmp, name="tb", version=""))
    trainer.fit(H.module(teacher), H.datamodule(corpus, tmp / "store", cache))
    meta = {v: BoundaryStore(tmp / "store").manifest(v)["meta"] for v in (1, 2)}
    approx = {v: pytest.approx(m["rate_hz"], rel=1e-5) for v, m in meta.items()}
    assert recorder.seen == [None, approx[1]]  # version 1's rate, in the next iteration's first epoch
    assert float(trainer.callback_metrics["regen/rate_hz"]) == approx[2]
    assert float(trainer.callback_metrics["regen/val_f1"]) == pytest.approx(meta[2]["metrics"]["val"]["f1"], rel=1e-5)
    assert float(trainer.callback_metrics["regen/train_r_value"]) == pytest.approx(
        meta[2]["metrics"]["train"]["r_value"], rel=1e-5)
    # a monitoring callback sees them (it raises on a missing key once validation has run)
    assert float(best.best_model_score) == pytest.approx(max(m["metrics"]["val"]["f1"] for m in meta.values()),
                                                         rel=1e-5)
    events = EventAccumulator(str(tmp / "tb")).Reload()
    assert [e.value for e in events.Scalars("regen/rate_hz")] == [approx[1], approx[2]]


def test_a_file_in_two_splits_is_regenerated_once(sylboost_setup):
    """Validation on (part of) the training folder: each utterance stored once, both splits still scored."""
    from datamodules.speech import SpeechDataModule

    corpus, tmp, teacher, cache, ids = sylboost_setup
    dm = SpeechDataModule(train_dirs=[str(corpus / "train"), str(corpus / "dev")], val_dirs=[str(corpus / "dev")],
                          alignment_dir=str(corpus / "alignments"), boundary_dir=str(tmp / "store"),
                          boundary_version=0, require_boundaries=True, batch_size=4, crop_seconds=3.0,
                          num_workers=0, manifest_cache=cache)
    model = H.module(teacher)
    H.trainer(tmp).fit(model, dm)
    store = BoundaryStore(tmp / "store")
    assert sorted(store.load(1)) == sorted(store.load(2)) == sorted(ids)  # load checks: no utterance twice
    meta = store.manifest(1)["meta"]
    assert set(meta["metrics"]) == {"train", "val"}
    final = H.offline_boundaries(model, corpus, cache)
    assert all(np.array_equal(store.load(2)[u], final[u]) for u in ids)


class Crash(pl.Callback):
    """Stops the run at a chosen hook of epoch 0 (a node failure, a preemption)."""

    def __init__(self, hook):
        self.hook = hook

    def on_train_epoch_end(self, trainer, pl_module):
        if self.hook == "before_regeneration" and trainer.current_epoch == 0:
            raise KeyboardInterrupt

    def on_train_epoch_start(self, trainer, pl_module):
        if self.hook == "after_regeneration" and trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["before_regeneration", "after_regeneration"])
def test_resume_neither_repeats_nor_skips_an_iteration(sylboost_setup, hook):
    corpus, tmp, teacher, cache, ids = sylboost_setup
    ref_store = tmp / "reference"
    (ref_store / "iter_0").mkdir(parents=True)
    for f in (tmp / "store" / "iter_0").iterdir():
        (ref_store / "iter_0" / f.name).write_bytes(f.read_bytes())
    pl.seed_everything(0)
    uninterrupted = H.module(teacher)
    H.trainer(tmp / "a").fit(uninterrupted, H.datamodule(corpus, ref_store, cache))

    pl.seed_everything(0)
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into a graceful stop + exit
        try:
            H.trainer(tmp / "b", callbacks=[Crash(hook)]).fit(H.module(teacher),
                                                              H.datamodule(corpus, tmp / "store", cache))
        except KeyboardInterrupt:
            raise SystemExit from None
        else:
            raise SystemExit  # Lightning may swallow the interrupt: the run stopped either way
    store = BoundaryStore(tmp / "store")
    assert store.versions() == ([0] if hook == "before_regeneration" else [0, 1])
    resumed_model = H.module(teacher)
    trainer = H.trainer(tmp / "b")
    trainer.fit(resumed_model, H.datamodule(corpus, tmp / "store", cache), ckpt_path=str(tmp / "b/ckpt/last.ckpt"))
    regen = [cb for cb in trainer.callbacks if type(cb).__name__ == "BoundaryRegeneration"][0]
    assert regen.done == 2 and [h["version"] for h in regen.history] == [1, 2]
    assert store.versions() == [0, 1, 2]
    reference = BoundaryStore(ref_store)
    for v in (1, 2):
        got, want = store.load(v), reference.load(v)
        assert set(got) == set(want) == set(ids)
        assert all(np.allclose(got[u], want[u]) for u in ids), f"version {v} differs from the uninterrupted run"


def crashed_fit(trainer, model, dm) -> None:
    """A fit a callback interrupts (a node failure, a preemption)."""
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into a graceful stop + exit
        try:
            trainer.fit(model, dm)
        except KeyboardInterrupt:
            raise SystemExit from None
        else:
            raise SystemExit  # Lightning may swallow the interrupt: the run stopped either way


class SaveAndCrash(pl.Callback):
    """Saves a checkpoint and stops the run: at the end of epoch 0 (iteration 0) or of epoch 1 (the last), before
    BoundaryRegeneration's hook made the next version (callbacks run in list order), or after epoch 1's first batch."""

    def __init__(self, path, point):
        self.path, self.point = path, point

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.point == "mid_epoch" and trainer.current_epoch == 1 and batch_idx == 0:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if (self.point, trainer.current_epoch) in (("end_of_iteration", 0), ("end_of_training", 1)):
            self._stop(trainer)

    def _stop(self, trainer):
        trainer.save_checkpoint(self.path)
        raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("point", ["end_of_iteration", "mid_epoch", "end_of_training"])
def test_resume_from_a_checkpoint_saved_anywhere_makes_each_version_once(sylboost_setup, point):
    """Lightning resumes these differently: from the end of epoch 0 it starts at epoch 1 without re-running epoch
    0's end (version 1 is made at train start); mid-epoch it finishes epoch 1; from the end of the last epoch it
    has no epoch left to train (the final version is written at fit end)."""
    corpus, tmp, teacher, cache, ids = sylboost_setup
    ref_store = tmp / "reference"
    shutil.copytree(tmp / "store", ref_store)  # version 0 only
    pl.seed_everything(0)
    H.trainer(tmp / "ref").fit(H.module(teacher), H.datamodule(corpus, ref_store, cache))

    pl.seed_everything(0)
    crash = SaveAndCrash(tmp / "crash.ckpt", point)
    crashed_fit(H.trainer(tmp / "a", callbacks=[crash]), H.module(teacher), H.datamodule(corpus, tmp / "store", cache))
    store = BoundaryStore(tmp / "store")
    assert store.versions() == ([0] if point == "end_of_iteration" else [0, 1])
    written = {f: f.stat().st_mtime_ns for f in (tmp / "store").rglob("*") if f.is_file()}
    model = H.module(teacher)
    trainer = H.trainer(tmp / "b")
    trainer.fit(model, H.datamodule(corpus, tmp / "store", cache), ckpt_path=str(crash.path))
    regen = [cb for cb in trainer.callbacks if type(cb).__name__ == "BoundaryRegeneration"][0]
    assert regen.done == 2 and [h["version"] for h in regen.history] == [1, 2]
    assert store.versions() == [0, 1, 2]
    assert all(f.stat().st_mtime_ns == t for f, t in written.items())  # nothing written before is written again
    final = H.offline_boundaries(model, corpus, cache)  # the final version is the final weights' boundaries
    assert all(np.array_equal(store.load(2)[u], final[u]) for u in ids)
    # versions made from the same weights as in the uninterrupted run are the same (the first epoch after a resume
    # sees its batches in another order: Lightning makes that loader before it sets the sampler's epoch)
    for v in (1, 2) if point == "end_of_training" else (1,):
        got, want = store.load(v), BoundaryStore(ref_store).load(v)
        assert all(np.allclose(got[u], want[u]) for u in ids), f"version {v} differs from the uninterrupted run"


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_regeneration(sylboost_setup):
    corpus, tmp, teacher, cache, ids = sylboost_setup
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    subprocess.run([sys.executable, str(REPO / "tests/ddp_scripts/sylboost_ddp.py"), "--corpus", str(corpus),
                    "--root", str(tmp), "--teacher", str(teacher), "--cache", cache],
                   check=True, env=env, cwd=tmp, timeout=600)
    r0, r1 = (json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["version"] == r1["version"] == 2 and r0["manifest"] == r1["manifest"]
    assert r0["digest"] == r1["digest"] and r0["history"] == r1["history"]
    assert r0["manifest"]["world_size"] == 2 and r0["manifest"]["num_utterances"] == len(ids)
    store = BoundaryStore(tmp / "store")
    final = store.load(2)  # loading refuses an utterance that appears in two shards
    assert sorted(final) == ids
    model = SylBoostModule.load_from_checkpoint(tmp / "ckpt/last.ckpt")
    offline = H.offline_boundaries(model, corpus, cache)
    assert all(np.array_equal(final[u], offline[u]) for u in ids)


def test_cli_fast_dev_run(sylboost_setup):
    from experiments.cli import main

    corpus, tmp, teacher, cache, _ = sylboost_setup
    cfg = yaml.safe_load((REPO / "experiments/configs/tiny/sylboost.yaml").read_text())
    text = yaml.safe_dump(cfg).replace("data/synth", str(corpus)).replace("runs/tiny", str(tmp / "runs"))
    text = text.replace(str(tmp / "runs/teacher/checkpoints/last.ckpt"), str(teacher))
    text = text.replace(str(tmp / "runs/boundaries"), str(tmp / "store"))
    (tmp / "sylboost.yaml").write_text(text)
    main(["fit", "--config", str(tmp / "sylboost.yaml"), "--trainer.fast_dev_run", "true",
          "--model.init_args.feature_layer", "1", "--data.manifest_cache", cache, "--data.num_workers", "0"])
    assert (tmp / "store" / "iter_0").is_dir()


def test_export_encoder_writes_the_student_as_a_model_folder(tmp_path):
    import lightning

    from experiments.cli import main
    from experiments.export import export_encoder
    from syllablelm.checkpoints import load_encoder

    m = SylBoostModule(init_from=str(H.save_teacher(tmp_path / "t.ckpt")), feature_layer=1)
    with torch.no_grad():  # a trained student differs from its teacher
        for p in m.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = tmp_path / "sylboost.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    out = export_encoder(ckpt, tmp_path / "backbone")
    wave = torch.randn(1, 8000)
    enc = load_encoder(out, layer=1).eval()
    m.eval()
    with torch.no_grad():
        got, want, teacher = enc(wave)[0], m.student(wave)[0], m.teacher(wave)[0]
    assert enc.normalize_waveform == m.student.normalize_waveform
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, teacher, atol=1e-3)
    assert main(["export-encoder", "--checkpoint", str(ckpt), "--out", str(out)]) == 0  # replaces the folder
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".backbone")) == []
    with pytest.raises(SystemExit, match="no such SylBoost checkpoint"):
        main(["export-encoder", "--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(out)])
