"""Rank helpers every DataModule shares: who am I, tell everyone, and which store version do we all read.

They work with a Lightning trainer attached (its strategy), inside a bare ``torch.distributed`` job (offline
passes), and in a single process.
"""
from __future__ import annotations

import torch


def rank_world(trainer=None) -> tuple[int, int]:
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast(obj, trainer=None):
    """Rank 0's ``obj`` on every rank."""
    if trainer is not None:
        return trainer.strategy.broadcast(obj, src=0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def resolve_version(store, version, trainer=None) -> int:
    """A store version number; ``"latest"`` is resolved on rank 0 and broadcast, so every rank reads the same
    version even when their views of a shared filesystem lag."""
    if version != "latest":
        return int(version)
    latest = store.latest_version() if rank_world(trainer)[0] == 0 else None
    latest = broadcast(latest, trainer)
    if latest is None:
        raise FileNotFoundError(f"{store.root}: no complete {store.kind} version to read")
    return int(latest)
