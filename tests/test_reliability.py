"""Reliability: a batch with no readable file is a logged, zero-loss skip that keeps DDP ranks in step; the
callbacks and modules use no private Trainer or loop state."""
import ast
import json
import os
import signal
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch

from datamodules.dataset import collate, is_empty
from lightning_modules.teacher import TeacherModule
from syllablelm.models.hubert import TeacherConfig
from tests import sylboost_helpers as H
from tests.conftest import REPO, make_librispeech
from tests.test_datamodule_ddp import free_port
from tests.test_teacher import fake_batch


def tiny_teacher() -> TeacherModule:
    torch.manual_seed(0)
    return TeacherModule(network=TeacherConfig.tiny(num_labels=20, num_hidden_layers=1),
                         optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))


def assert_zero_step(module: pl.LightningModule, batch) -> None:
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss) == 0.0 and loss.requires_grad
    loss.backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:  # every trainable parameter takes part (DDP's all-reduce needs each), with zeros
        assert p.grad is not None and not p.grad.any(), name
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)


@pytest.mark.parametrize("stage", ["teacher", "sylboost"])
def test_an_empty_batch_is_a_zero_loss_on_every_trainable_parameter(stage, tmp_path):
    module = tiny_teacher() if stage == "teacher" else H.module(H.save_teacher(tmp_path / "teacher.ckpt"))
    module.train()
    empty = collate([], ["/data/broken.flac"])
    assert is_empty(empty) and is_empty(None) and empty["unreadable"] == ["/data/broken.flac"]
    for batch in (None, empty):
        assert_zero_step(module, batch)


def test_a_batch_without_a_readable_file_is_empty_and_names_the_file(tmp_path):
    make_librispeech(tmp_path / "corpus/train", speakers=1, utts=3)
    cache = str(tmp_path / "cache")
    H.write_v0(tmp_path / "corpus", tmp_path / "store", cache, splits=("train",))
    dm = H.one_file_batches(tmp_path / "corpus", tmp_path / "store", cache)
    dm.setup("fit")  # the manifest (and its cache) lists every file as readable
    paths = [e.path for e in dm.manifest("train").entries]
    broken = H.break_file(paths[1])
    dm = H.one_file_batches(tmp_path / "corpus", tmp_path / "store", cache)
    dm.setup("fit")  # a rescan from the cache: same size and mtime, so the broken file is still listed
    ds = dm.dataset("train")
    assert [e.path for e in ds.entries] == paths
    batch = ds[(0, [1])]
    assert is_empty(batch) and batch["unreadable"] == [str(broken)] and batch["waves"].shape[0] == 0
    mixed = ds[(0, [0, 1, 2])]  # the readable files stay
    assert len(mixed["ids"]) == 2 and mixed["unreadable"] == [str(broken)]
    assert ds[(0, [0])]["unreadable"] == []


def test_a_fit_counts_a_skipped_batch_and_keeps_training(tmp_path):
    """Through Lightning's loop (which would skip a ``None`` without a backward): the empty batch runs a step."""
    batches = [fake_batch(seed=0), collate([], ["/data/broken.flac"]), fake_batch(seed=1)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    module = tiny_teacher()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 3  # the skipped batch is a (zero-gradient) step like the others
    assert float(trainer.callback_metrics["train/skipped_batches"]) == 1.0
    assert all(torch.isfinite(p).all() for p in module.parameters())


def run_two_ranks(script: str, args: list[str], cwd, timeout: float) -> None:
    """Run a 2-process DDP script; a rank that hangs fails the test after ``timeout`` s (both ranks are killed:
    they share the process group started here)."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/ddp_scripts" / script), *args], env=env, cwd=cwd,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{script} did not finish in {timeout} s: a rank hangs")
    assert rc == 0


@pytest.mark.slow
def test_two_process_ddp_survives_a_batch_with_no_readable_file(tmp_path):
    """6 files, one per batch, 3 steps per rank; one file breaks after the manifest was cached, so one rank's batch
    is empty while the other's is not. Without the zero-loss step that rank skips its backward and the other waits
    in the gradient all-reduce forever."""
    corpus, store, cache = tmp_path / "corpus", tmp_path / "store", str(tmp_path / "cache")
    make_librispeech(corpus / "train", speakers=2, utts=3)
    H.write_v0(corpus, store, cache, splits=("train",))
    teacher = H.save_teacher(tmp_path / "teacher.ckpt")
    dm = H.one_file_batches(corpus, store, cache)
    dm.setup("fit")  # cache the manifest with every file readable, then break one
    H.break_file(dm.manifest("train").entries[2].path)
    run_two_ranks("unreadable_batch.py", ["--corpus", str(corpus), "--store", str(store), "--teacher", str(teacher),
                                          "--cache", cache, "--out", str(tmp_path)], cwd=tmp_path, timeout=240)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 3
    assert r0["skipped"] == r1["skipped"] == 1.0  # summed over ranks: the one broken file
    assert r0["student"] == r1["student"] != r0["teacher"]  # trained, and identical on both ranks


FORBIDDEN = {"fit_loop", "epoch_loop", "batch_progress", "_trainer"}


@pytest.mark.parametrize("path", ["callbacks/boundary_regeneration.py",
                                  *sorted(str(p.relative_to(REPO)) for p in (REPO / "lightning_modules").glob("*.py"))])
def test_no_private_trainer_or_loop_state(path):
    """The regeneration schedule and the modules go through public Trainer / Strategy / Callback API only."""
    tree = ast.parse((REPO / path).read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and node.value in FORBIDDEN}  # getattr(trainer, "fit_loop")
    assert not used & FORBIDDEN
