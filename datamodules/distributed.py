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
    version even when their views of a shared filesystem lag. When rank 0 cannot resolve it (no complete version,
    or a damaged one newer than the newest complete: :meth:`~datamodules.shard_store.ShardStore.latest_version`),
    its error is broadcast and raised on every rank, instead of leaving the others waiting."""
    if version != "latest":
        return int(version)
    answer = None
    if rank_world(trainer)[0] == 0:
        try:
            answer = store.resolve("latest")
        except Exception as e:  # every error must reach the ranks that wait for the answer
            answer = e
    answer = broadcast(answer, trainer)
    if isinstance(answer, BaseException):
        raise answer
    return int(answer)
