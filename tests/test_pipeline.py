"""``syllablelm pipeline``: config loading, stage selection, launch detection, the shared-filesystem check,
resume points, SLURM requeue, ``--dry-run`` on a LibriSpeech-layout workspace with real-format checkpoints, and
the first stages run as 2 simulated nodes (2 processes, NODE_RANK) on the CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamodules.boundary_store import BoundaryStore
from datamodules.label_store import LabelStore
from experiments.pipeline import launch as L
from experiments.pipeline import runner as pl
from tests.conftest import LAUNCH_VARS, REPO
from tests.test_datamodule_ddp import free_port
from tests.workspace import make_paper_workspace

PAPER = REPO / "experiments/configs/librispeech/pipeline.yaml"


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ config + selection
def test_paper_pipeline_config_loads_with_every_stage():
    pipe = pl.load_pipeline(PAPER)
    assert [s.name for s in pipe.stages] == ["labels", "losspred", "sylboost", "quantize", "units", "units_dev",
                                             "speechlm"]
    assert [s.command for s in pipe.stages if s.lightning] == ["predict", "fit", "fit"]
    assert all((REPO / s.config).is_file() for s in pipe.stages if s.lightning)
    assert next(s for s in pipe.stages if s.name == "quantize").ranks == "zero"


@pytest.mark.parametrize("name", ["pipeline.yaml", "pipeline_data2vec2.yaml"])
def test_paper_pipelines_write_the_authors_lm_units(name):
    """The SpeechLM's train and dev units are the authors' LM variant (one merged unit per segment, no dedup
    after the Ward merge), and the stage arguments parse with the units command's own parser."""
    from experiments.unit_commands import units_parser

    stages = [s for s in pl.load_pipeline(PAPER.with_name(name)).stages if s.command == "units"]
    assert [s.name for s in stages] == ["units", "units_dev"]
    for stage in stages:
        args = units_parser().parse_args(stage.args)
        assert args.variant == "authors_lm" and not args.no_dedup


@pytest.mark.parametrize("stages, message", [
    ([{"name": "a", "command": "train"}], "unknown command 'train'"),
    ([{"name": "a", "command": "fit"}], "needs a 'config'"),
    ([{"name": "a", "command": "fit", "config": "missing.yaml"}], "config missing.yaml does not exist"),
    ([{"name": "a", "command": "labels", "config": "x.yaml"}], "'config' is for Lightning stages"),
    ([{"name": "a", "command": "units"}, {"name": "a", "command": "units"}], "used twice"),
    ([{"name": "a", "command": "units", "ranks": "some"}], "ranks must be"),
    ([{"name": "a", "command": "units", "typo": 1}], "typo"),
    ([], "non-empty 'stages'"),
])
def test_bad_pipeline_configs_name_the_file_and_stage(tmp_path, stages, message):
    path = _write(tmp_path / "p.yaml", {"stages": stages})
    with pytest.raises(pl.PipelineError, match=message) as e:
        pl.load_pipeline(path)
    assert str(path) in str(e.value)


def test_stage_selection():
    stages = [pl.Stage("a", "units"), pl.Stage("b", "units", enabled=False), pl.Stage("c", "fit", config="x")]
    assert [s.name for s in pl.select(stages, None, None)] == ["a", "c"]
    assert [s.name for s in pl.select(stages, None, "c")] == ["c"]
    assert [s.name for s in pl.select(stages, ["b"], None)] == ["b"]  # --only runs a disabled stage
    with pytest.raises(pl.PipelineError, match="no stage 'z'"):
        pl.select(stages, ["z"], None)


# ------------------------------------------------------------------------------------------ resume + requeue
def test_fit_resumes_from_the_newest_checkpoint(tmp_path):
    cfg = {"trainer": {"default_root_dir": str(tmp_path / "root"), "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(tmp_path / "ck")}}]}}
    stage = pl.Stage("s", "fit", config=str(_write(tmp_path / "c.yaml", cfg)))
    assert pl.fit_resume_checkpoint(stage) is None
    (tmp_path / "ck").mkdir()
    (tmp_path / "root").mkdir()
    last, hpc = tmp_path / "ck/last.ckpt", tmp_path / "root/hpc_ckpt_3.ckpt"
    last.write_bytes(b"x")
    assert pl.fit_resume_checkpoint(stage) == last
    hpc.write_bytes(b"x")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert pl.fit_resume_checkpoint(stage) == hpc  # SLURM saved after the last epoch-end checkpoint
    pipe = pl.Pipeline(stages=[stage], state_dir=tmp_path / "state", source=tmp_path / "p.yaml")
    argv = pl.stage_argv(stage, pipe, L.Launch("single"), ["--trainer.max_epochs=1"])
    assert argv[-2:] == ["--ckpt_path", str(hpc)] and "--trainer.max_epochs=1" in argv


def test_offline_stages_get_this_processes_rank():
    pipe = pl.Pipeline(stages=[], state_dir=Path("s"), source=Path("p"))
    launch = L.Launch("torchrun", rank=5, world_size=8, local_rank=1, num_nodes=1, devices=8)
    argv = pl.stage_argv(pl.Stage("u", "units", args=["--out", "x"]), pipe, launch, [])
    assert argv[:3] == ["units", "--out", "x"] and argv[3:7] == ["--rank", "5", "--world-size", "8"]
    argv = pl.stage_argv(pl.Stage("q", "quantize", args=["--device", "cpu"]), pipe, launch, [])
    assert "--rank" not in argv and argv.count("--device") == 1


def test_sigusr1_during_an_offline_stage_requeues_the_slurm_job(clean_env, monkeypatch):
    calls = []
    monkeypatch.setattr(pl.subprocess, "run", lambda cmd, check: calls.append(cmd))
    clean_env.setenv("SLURM_JOB_ID", "777")
    old = signal.getsignal(signal.SIGUSR1)
    try:
        pl._requeue_on_sigusr1(L.Launch("slurm", rank=0, world_size=2))
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)
        assert e.value.code == pl.REQUEUED and calls == [["scontrol", "requeue", "777"]]
    finally:
        signal.signal(signal.SIGUSR1, old)


# ------------------------------------------------------------------------------------------ dry run
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_paper_workspace(tmp_path_factory.mktemp("paper"))  # with experiments/ linked in


def test_dry_run_on_a_librispeech_layout_workspace(workspace, monkeypatch, capsys, caplog):
    monkeypatch.chdir(workspace)
    caplog.set_level("INFO", logger="experiments")
    assert pl.main(["--config", str(PAPER), "--dry-run"]) == 0
    assert "no problems found in 7 stage(s)" in capsys.readouterr().out
    log = caplog.text
    assert "hubert_large_ll60k.pt (fairseq-hubert, layers=4, hidden=32, labels=500)" in log
    assert "hubert_base_ls960_L9_km500.bin ((500, 32))" in log
    assert "LibriLight/small (LibriLight layout, 16000 Hz)" in log
    assert "LibriSpeech/dev-clean (LibriSpeech layout, 16000 Hz)" in log
    assert "runs/librispeech/tokenizer.ckpt (made by stage quantize)" in log
    assert log.count("units: segments of at most 35 frames") == 2  # LibriLight and the LM's dev units
    assert "asks for 8 devices" in log  # a note in a dry run ...
    assert not (workspace / "runs").exists() or not list((workspace / "runs").rglob("*.npz"))  # nothing trained


def test_dry_run_of_the_data2vec2_pipeline(workspace, monkeypatch, capsys, caplog):
    monkeypatch.chdir(workspace)
    caplog.set_level("INFO", logger="experiments")
    assert pl.main(["--config", str(PAPER.with_name("pipeline_data2vec2.yaml")), "--dry-run"]) == 0
    assert "no problems found in 8 stage(s)" in capsys.readouterr().out
    assert "data2vec2_base_libri.pt (fairseq-data2vec2, layers=12, hidden=32)" in caplog.text
    assert "runs/librispeech/boundaries (made by stage losspred)" in caplog.text  # store-copy's source
    assert "runs/librispeech/boundaries_data2vec2 (made by stage seed_boundaries)" in caplog.text
    assert caplog.text.count("units: segments of at most 35 frames") == 2


def test_dry_run_finds_every_problem_at_once(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    cfg = yaml.safe_load(PAPER.read_text())
    st = {s["name"]: s for s in cfg["stages"]}
    labels = st["labels"]["args"]
    labels[labels.index("--layer") + 1] = 13  # the base checkpoint has 12 layers
    labels[labels.index("--kmeans") + 1] = "checkpoints/missing_km500.bin"
    st["sylboost"]["args"] = ["--data.init_args.boundary_dir=runs/elsewhere", "--data.init_args.train_hours=50"]
    q = st["quantize"]["args"]
    q[q.index("--k-merged") + 1] = 100  # the LM's vocabulary is 8192
    st["units"]["args"][st["units"]["args"].index("--data") + 1] = "LibriLight/tiny"
    (workspace / "checkpoints/broken.pt").write_bytes(b"not a checkpoint")
    ud = st["units_dev"]["args"]
    ud[ud.index("--checkpoint") + 1] = "checkpoints/broken.pt"
    path = _write(workspace / "broken.yaml", cfg)
    assert pl.main(["--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for expected in ["--layer 13 but the checkpoint has 12 layers",
                     "checkpoints/missing_km500.bin does not exist",
                     "data.boundary_dir runs/elsewhere is not where stage losspred writes boundaries",
                     "data.train_hours 100.0 vs 50.0",
                     "network.vocab_size 8192 but stage quantize makes 100 units",
                     "LibriLight/tiny does not exist",
                     "broken.pt: not a readable fairseq checkpoint"]:
        assert expected in err, expected
    # a typo in a Lightning option (checked on its own: a config that does not parse hides its cross-checks)
    cfg = yaml.safe_load(PAPER.read_text())
    cfg["stages"][1]["args"] = ["--model.init_args.losspred.gapp=3"]
    assert pl.main(["--config", str(_write(workspace / "typo.yaml", cfg)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "losspred.yaml does not parse" in err and "gapp" in err
    # a real (not dry) single-process run of a multi-GPU config refuses before training anything
    assert pl.main(["--config", str(PAPER), "--only", "sylboost"]) == 2
    assert "asks for 8 devices" in capsys.readouterr().err


def test_more_shards_than_ranks_resume_shard_by_shard(workspace, monkeypatch, caplog):
    """labels/units with --shards: files dealt to ranks round-robin; a rerun (any rank count) redoes only the
    shard files that are missing."""
    from experiments.cli import run_command

    monkeypatch.chdir(workspace)
    caplog.set_level("INFO", logger="datamodules")
    args = ["--data", "LibriSpeech/dev-clean", "--features", "teacher", "--checkpoint",
            "checkpoints/hubert_base_ls960.pt", "--layer", "9",
            "--kmeans", "checkpoints/hubert_base_ls960_L9_km500.bin",
            "--out", "sharded", "--shards", "3", "--device", "cpu"]
    store = LabelStore(workspace / "sharded")
    assert run_command("labels", [*args, "--rank", "1", "--world-size", "2"]) == 0  # rank 1: shard 1 only
    assert [p.name for p in store.version_dir(0).glob("shard-*.offsets.npy")] == ["shard-00001-of-00003.offsets.npy"]
    assert run_command("labels", [*args, "--rank", "0", "--world-size", "2"]) == 0  # shards 0, 2 + manifest
    full = store.load(0)
    assert len(full) == 6
    (store.version_dir(0) / "manifest.json").unlink()
    (store.version_dir(0) / "shard-00002-of-00003.offsets.npy").unlink()
    caplog.clear()
    assert run_command("labels", [*args, "--rank", "0", "--world-size", "1"]) == 0
    assert "shard 0 of 3 already done" in caplog.text and "shard 1 of 3 already done" in caplog.text
    assert "shard 2 of 3 already done" not in caplog.text
    again = store.load(0)
    assert sorted(again) == sorted(full) and all(np.array_equal(again[k], full[k]) for k in full)
    with pytest.raises(ValueError, match="at least one shard per rank"):
        store.shards_to_write(0, 0, 4, 3)


# ------------------------------------------------------------------------------------------ 2 simulated nodes
def _two_nodes(workspace: Path, args: list[str], port: int, config: Path = PAPER) -> list[str]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    for k in LAUNCH_VARS[:6]:
        env.pop(k, None)
    cmd = [sys.executable, "-m", "experiments.cli", "pipeline", "--config", str(config), "--nodes", "2",
           "--set", "trainer.accelerator=cpu", "--set", "trainer.precision=32-true",
           "--set", "data.init_args.num_workers=0", *args]
    procs = [subprocess.Popen(cmd, cwd=workspace, env=dict(env, NODE_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"node {r}:\n{log[-4000:]}"
    return logs


@pytest.mark.slow
def test_first_stages_as_two_simulated_nodes_then_skip_and_resume(workspace):
    runs = workspace / "runs"
    logs = _two_nodes(workspace, ["--only", "labels", "losspred"], free_port())
    # the 100 h subset of this tiny corpus is all of train-960; dev-clean comes in as LossPred's extra folder
    train = sorted(p.stem for d in ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean")
                   for p in (workspace / "LibriSpeech" / d).rglob("*.flac"))
    labels = LabelStore(runs / "librispeech/labels")
    assert len(list(labels.version_dir(0).glob("shard-*-of-00064.offsets.npy"))) == 64  # --shards 64, dealt to 2 ranks
    assert sorted(labels.load(0)) == train
    bounds = BoundaryStore(runs / "librispeech/boundaries")
    assert len(list(bounds.version_dir(0).glob("shard-*-of-00002.offsets.npy"))) == 2
    segs = bounds.load(0)
    assert sorted(segs) == train and sum(len(s) for s in segs.values()) > len(train)
    for s in segs.values():  # sorted, non-overlapping segments (a random teacher may leave a file empty)
        assert np.all(s[:, 1] > s[:, 0]) and np.all(s[1:, 0] >= s[:-1, 1] - 1e-9)
    # the 2-node labels equal a 1-process run of the same command
    from experiments.cli import run_command

    stage = pl.load_pipeline(PAPER).stages[0]
    args = [a if a != "runs/librispeech/labels" else str(workspace / "single") for a in stage.args]
    cwd = os.getcwd()
    try:
        os.chdir(workspace)
        assert run_command("labels", [*args, "--device", "cpu", "--rank", "0", "--world-size", "1"]) == 0
    finally:
        os.chdir(cwd)
    single, double = LabelStore(workspace / "single").load(0), labels.load(0)
    assert all(np.array_equal(single[k], double[k]) for k in train)
    assert "--rank 1 --world-size 2" in logs[1] and "--trainer.num_nodes=2 --trainer.devices=1" in logs[0]
    for stage in ("labels", "losspred"):
        assert json.loads((runs / f"pipeline/{stage}.done.json").read_text())["world_size"] == 2

    # a rerun skips both; a partial labels stage (rank 1's shard and the manifest lost) redoes only that shard
    (labels.version_dir(0) / "manifest.json").unlink()
    next(labels.version_dir(0).glob("shard-00003-*.offsets.npy")).unlink()  # one of rank 1's
    before = bounds.manifest(0)
    logs = _two_nodes(workspace, ["--only", "labels", "losspred"], free_port())
    assert "stage losspred: complete, skipped" in logs[0] and "stage labels: complete, skipped" not in logs[0]
    assert "shard 0 of 64 already done" in logs[0] and "shard 1 of 64 already done" in logs[1]
    assert "labels rank 1 shard 3" in logs[1] and "labels rank 0 shard" not in logs[0]
    assert sorted(labels.load(0)) == train and bounds.manifest(0) == before


@pytest.mark.slow
def test_the_whole_paper_pipeline_as_two_simulated_nodes(workspace, tmp_path):
    """Every stage of pipeline.yaml, in order, in 2 processes (NODE_RANK 0/1) that share one process group across
    several LightningCLI runs and offline commands, on the LibriSpeech/LibriLight-layout workspace with tiny
    networks: the chain fits together under DDP (a collective called on rank 0 only would hang or fail here)."""
    cfg = yaml.safe_load(PAPER.read_text())
    st = {s["name"]: s for s in cfg["stages"]}
    cfg["state_dir"] = "runs/pipeline_whole"
    st["sylboost"]["args"] = ["--model.init_args.feature_layer=2", "--model.init_args.epochs_per_iteration=1",
                              "--trainer.max_epochs=2", "--data.init_args.batch_size=2"]
    q = st["quantize"]["args"]
    q[q.index("--k") + 1], q[q.index("--k-merged") + 1], q[q.index("--hours") + 1] = 16, 8, 1
    st["units"]["args"][st["units"]["args"].index("--shards") + 1] = 4
    st["speechlm"]["args"] = [
        "--model.init_args.network.vocab_size=8", "--model.init_args.network.n_layer=1",
        "--model.init_args.network.n_embd=32", "--model.init_args.network.n_head=2", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", "--data.init_args.context_length=8", "--data.init_args.batch_size=2",
        "--model.init_args.warmup=1", "--model.init_args.hold=1", "--model.init_args.decay=1"]
    path = _write(workspace / "whole.yaml", cfg)
    logs = _two_nodes(workspace, [], free_port(), config=path)
    assert '"speechlm": "done"' in logs[0]
    runs = workspace / "runs"
    bounds = BoundaryStore(runs / "librispeech/boundaries")
    assert bounds.is_complete(2)  # LossPred + 2 SylBoost iterations
    dev = {p.stem for p in (workspace / "LibriSpeech/dev-clean").rglob("*.flac")}
    assert dev <= set(bounds.load(0))  # LossPred's predict_extra_dirs: SylBoost validates on dev-clean
    from datamodules.unit_store import UnitStore
    from syllablelm.units.tokenizer import Tokenizer

    units = UnitStore(runs / "librilight/units")
    assert len(list(units.version_dir(0).glob("shard-*-of-00004.offsets.npy"))) == 4 and len(units.load(0)) == 3
    assert Tokenizer.from_pretrained(runs / "librispeech/tokenizer.ckpt").vocab_size == 8
    for stage in ("quantize", "units", "units_dev", "speechlm"):
        assert (runs / f"pipeline_whole/{stage}.done.json").is_file()
    assert (runs / "librilight/speechlm_base/checkpoints/last.ckpt").is_file()


# ------------------------------------------------------------------------------------------ markers (stage_state)
def test_pipeline_markers_share_the_stage_state_format_and_old_ones_still_count(tmp_path, monkeypatch, clean_env):
    """One stage (a store copy) run in this process: its marker is the shared format, its attempt log holds this
    rank's project logs, a rerun skips it, a lost shard reruns it, and after a crash between its exit and its marker
    (``SYLLABLELM_FAULT=stage.finished:copy``) its whole store version counts as done; a marker of the old format
    still counts."""
    from syllablelm.runtime.faults import InjectedFault

    monkeypatch.chdir(tmp_path)
    source = BoundaryStore(tmp_path / "source")
    source.write_shard(0, 0, 1, {"a": [[0.0, 0.5]], "b": [[0.1, 0.4]]})
    source.finalize(0, 1)
    cfg = {"state_dir": "state", "stages": [{"name": "copy", "command": "store-copy", "complete":
                                             "copied/iter_0/manifest.json", "args": ["--store", "source", "--out",
                                                                                      "copied"]}]}
    path = _write(tmp_path / "p.yaml", cfg)
    assert pl.main(["--config", str(path)]) == 0
    pipe = pl.load_pipeline(path)
    marker = json.loads(pipe.marker(pipe.stages[0]).read_text())
    assert marker["format"] == 1 and marker["stage"] == "copy" and marker["world_size"] == 1
    assert marker["peak_rss_scope"] == "process" and marker["attempt"] == 1 and marker["seconds"] >= 0
    assert marker["outputs"] == [{"store": "copied", "version": 0}]
    assert "syllablelm store-copy --store source" in (tmp_path / "state/copy.attempt-1.log").read_text()
    assert pipe.is_complete(pipe.stages[0])
    assert pl.main(["--config", str(path)]) == 0  # skipped: no new attempt
    assert not (tmp_path / "state/copy.attempt-2.log").exists()
    BoundaryStore(tmp_path / "copied").shard_path(0, 0, 1).unlink()
    assert not pipe.is_complete(pipe.stages[0])
    assert pl.main(["--config", str(path)]) == 0 and json.loads(pipe.marker(pipe.stages[0]).read_text())["attempt"] == 2
    pipe.marker(pipe.stages[0]).unlink()
    assert pipe.is_complete(pipe.stages[0])  # its only output is a whole store version: finished, marker or not
    clean_env.setenv("SYLLABLELM_FAULT", "stage.finished:copy")
    BoundaryStore(tmp_path / "copied").shard_path(0, 0, 1).unlink()
    with pytest.raises(InjectedFault):  # ran again, and crashed between its end and its marker
        pl.main(["--config", str(path)])
    clean_env.delenv("SYLLABLELM_FAULT")
    assert not pipe.marker(pipe.stages[0]).exists() and BoundaryStore(tmp_path / "copied").is_complete(0)
    assert pipe.is_complete(pipe.stages[0])  # so the rerun skips it
    # a marker written before the shared format (stage, argv, world_size, seconds, finished) still counts
    pipe.marker(pipe.stages[0]).write_text(json.dumps({"stage": "copy", "argv": ["store-copy"], "world_size": 2,
                                                       "seconds": 3.5, "finished": "2025-01-01T00:00:00"}))
    assert pipe.is_complete(pipe.stages[0]) and pipe.state.timings()["copy"]["seconds"] == 3.5
