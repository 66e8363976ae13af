"""``experiments.pipeline.launch``: who a pipeline process is (torchrun, SLURM, NODE_RANK) and the check that the
run's outputs are on a filesystem every node shares."""
from __future__ import annotations

import os

import pytest

from experiments.pipeline import launch as L


def test_launch_torchrun(clean_env):
    for k, v in dict(TORCHELASTIC_RUN_ID="job", RANK=11, WORLD_SIZE=16, LOCAL_RANK=3, LOCAL_WORLD_SIZE=8,
                     GROUP_RANK=1).items():
        clean_env.setenv(k, str(v))
    launch = L.detect_launch()
    assert (launch.kind, launch.rank, launch.world_size, launch.local_rank, launch.num_nodes, launch.devices) == (
        "torchrun", 11, 16, 3, 2, 8)
    assert launch.trainer_args() == ["--trainer.num_nodes=2", "--trainer.devices=8"]


def test_launch_slurm_sets_the_main_address(clean_env):
    for k, v in dict(SLURM_NTASKS=16, SLURM_NTASKS_PER_NODE=8, SLURM_PROCID=9, SLURM_LOCALID=1, SLURM_NODEID=1,
                     SLURM_NNODES=2, SLURM_JOB_NAME="syllablelm", SLURM_NODELIST="gpu[07-08]",
                     SLURM_JOB_ID=4242).items():
        clean_env.setenv(k, str(v))
    launch = L.detect_launch()
    assert (launch.kind, launch.rank, launch.world_size, launch.local_rank, launch.num_nodes, launch.devices) == (
        "slurm", 9, 16, 1, 2, 8)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"].isdigit()


def test_launch_node_rank_and_single(clean_env):
    assert L.detect_launch().kind == "single" and L.detect_launch().trainer_args() == []
    clean_env.setenv("NODE_RANK", "1")
    launch = L.detect_launch(nodes=2)
    assert (launch.kind, launch.rank, launch.world_size, launch.num_nodes, launch.devices) == ("node_rank", 1, 2, 2, 1)
    with pytest.raises(L.PipelineError, match="torchrun or srun"):
        L.detect_launch(nodes=2, devices=4)
    clean_env.setenv("NODE_RANK", "2")
    with pytest.raises(L.PipelineError, match="NODE_RANK=2"):
        L.detect_launch(nodes=2)


# ------------------------------------------------------------------------------------------ shared filesystem
def test_shared_check_names_directories_other_nodes_cannot_see(tmp_path, monkeypatch):
    """Rank 0's view of a 2-rank job, with rank 1 on another host that cannot read one directory."""
    dirs = [tmp_path / "boundaries", tmp_path / "units"]
    exchanged = []

    def fake_gather(obj):
        exchanged.append(obj)
        if len(exchanged) == 1:  # the token rank 0 chose
            return [obj, None]
        rank1_missing = [str(dirs[1])]  # rank 1 reads the boundary dir but not the unit dir
        return [obj, (1, "node-b", rank1_missing)]

    monkeypatch.setattr(L, "gather", fake_gather)
    monkeypatch.setattr(L, "barrier", lambda: None)
    launch = L.Launch("node_rank", rank=0, world_size=2, num_nodes=2)
    with pytest.raises(L.PipelineError) as e:
        L.check_shared(dirs, launch)
    msg = str(e.value)
    assert "rank 1 on node-b" in msg and str(dirs[1]) in msg and str(dirs[0]) not in msg.split("node-b")[1]
    assert all(d.is_dir() and not list(d.iterdir()) for d in dirs)  # created, and the probes cleaned up
    exchanged.clear()
    monkeypatch.setattr(L, "gather", lambda obj: [obj, (1, "node-b", [])] if exchanged.append(obj) or
                        len(exchanged) > 1 else [obj, None])
    L.check_shared(dirs, launch)  # every rank sees everything: no error
