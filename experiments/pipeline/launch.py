"""Who is this process in a multi-node job (torchrun, SLURM, or one process per node with ``NODE_RANK``), the
pipeline's process group and barriers, and the check that the run's outputs are on a filesystem every node
shares. Used by :mod:`experiments.pipeline.runner`."""
from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


class PipelineError(RuntimeError):
    """A problem with the pipeline's config, paths or cluster setup (the message names the stage and file)."""


@dataclass
class Launch:
    """This process's place in the job, read through Lightning's cluster environments."""

    kind: str  # "single", "torchrun", "slurm" or "node_rank"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    num_nodes: int = 1
    devices: int = 1  # processes per node

    def trainer_args(self) -> list[str]:
        """Every Lightning stage runs on exactly the processes that were launched."""
        if self.kind == "single":
            return []
        return [f"--trainer.num_nodes={self.num_nodes}", f"--trainer.devices={self.devices}"]


def detect_launch(nodes: int | None = None, devices: int | None = None) -> Launch:
    from lightning.fabric.plugins.environments import (
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if TorchElasticEnvironment.detect():
        env = TorchElasticEnvironment()
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return Launch("torchrun", env.global_rank(), env.world_size(), env.local_rank(),
                      env.world_size() // per_node, per_node)
    if SLURMEnvironment.detect():  # srun tasks (not an interactive job named bash/interactive)
        env = SLURMEnvironment()
        n_nodes = int(os.environ.get("SLURM_NNODES", "1"))
        env.main_address, env.main_port  # noqa: B018 — exports MASTER_ADDR/MASTER_PORT as Lightning will use them
        return Launch("slurm", env.global_rank(), env.world_size(), env.local_rank(), n_nodes,
                      env.world_size() // n_nodes)
    if "NODE_RANK" in os.environ and (nodes or 1) > 1:
        per_node = devices or 1
        if per_node != 1:
            raise PipelineError("with NODE_RANK, start one pipeline process per node and --devices 1; for several "
                                "devices per node launch with torchrun or srun")
        node = int(os.environ["NODE_RANK"])
        if not 0 <= node < nodes:
            raise PipelineError(f"NODE_RANK={node} is not in [0, {nodes})")
        return Launch("node_rank", node, nodes, 0, nodes, 1)
    return Launch("single")


def init_distributed(launch: Launch) -> None:
    """One process group for the whole pipeline (Lightning's DDP reuses an initialised one); stage barriers get
    a gloo group of their own with a long timeout, because rank 0 may run a single-rank stage for hours."""
    import torch
    import torch.distributed as dist

    if launch.world_size == 1 or dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        raise PipelineError("MASTER_PORT is not set: every process of the job must use the same port")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size)
    global _BARRIER_GROUP
    _BARRIER_GROUP = dist.new_group(backend="gloo", timeout=timedelta(days=2))


def shutdown_distributed() -> None:
    """After the last stage, on every rank: a barrier, then the process group :func:`init_distributed` made is
    destroyed. Left to interpreter exit, gloo's threads may be torn down while a peer still talks to them
    ("terminate called without an active exception", exit -6)."""
    import torch.distributed as dist

    global _BARRIER_GROUP
    if _BARRIER_GROUP is None or not dist.is_initialized():
        return
    barrier()
    dist.destroy_process_group()
    _BARRIER_GROUP = None


_BARRIER_GROUP = None


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier(group=_BARRIER_GROUP)


def gather(obj) -> list:
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_BARRIER_GROUP)
    return out


# -------------------------------------------------------------------------------- shared filesystem check
def check_shared(dirs: list[Path], launch: Launch, visible=None) -> None:
    """Rank 0 writes a token file into each directory; every rank must read it back. Raises naming the
    directories and hosts that cannot see rank 0's files (boundaries and units must be on a shared filesystem).
    ``visible(path, token)`` is the reader (tests swap it)."""
    if launch.world_size == 1:
        return
    visible = visible or (lambda p, token: p.is_file() and p.read_text() == token)
    token = gather(uuid.uuid4().hex if launch.rank == 0 else None)[0]
    probes = [d / f".syllablelm-shared-{token}" for d in dirs]
    if launch.rank == 0:
        for probe in probes:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(token)
    barrier()
    time.sleep(0.2)  # let attribute caches of network filesystems catch up
    missing = [str(p.parent) for p in probes if not visible(p, token)]
    report = gather((launch.rank, socket.gethostname(), missing))
    barrier()
    if launch.rank == 0:
        for probe in probes:
            probe.unlink(missing_ok=True)
    bad = [(r, host, m) for r, host, m in report if m]
    if bad:
        lines = [f"  rank {r} on {host}: {', '.join(m)}" for r, host, m in bad]
        raise PipelineError("these directories are not on a filesystem every node shares (rank 0 on "
                            f"{report[0][1]} wrote a file there that other ranks cannot read):\n" + "\n".join(lines)
                            + "\nput the run's outputs (state_dir, stores, checkpoints) on a shared filesystem")
