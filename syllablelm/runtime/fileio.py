"""Atomic file writes and small shard helpers shared by every offline step.

Every file this project writes goes through :func:`atomic_write`: the bytes land in a temporary file in the
same directory and are renamed over the target only when complete, so a crash never leaves a half-written
output that a later run could mistake for a finished one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    The rename is atomic on POSIX filesystems (same directory, same filesystem). On error the temporary file
    is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs are shared (other nodes, other users)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Write ``obj`` as JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write an uncompressed ``.npz`` atomically (``np.savez`` would append ``.npz`` to a temp name)."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one ``.npy`` file (C order, no pickles) atomically."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, unrepeated ``[start, stop)`` slice of ``n`` items for ``rank`` of ``world_size``.

    The first ``n % world_size`` ranks get one extra item; every item belongs to exactly one rank, so exact
    metrics and offline passes never see a duplicate (unlike ``DistributedSampler``, which pads by repeating).

    >>> [shard_range(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def weights_fingerprint(module) -> str:
    """Identifies a module's weights cheaply (shape, sum and sum of squares of every tensor): resumed work is
    reused only when it was made with the same weights. Equal on every rank."""
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            t = t.detach().double()
            h.update(f"{name}{tuple(t.shape)}{float(t.sum()):.10e}{float((t * t).sum()):.10e}".encode())
    return h.hexdigest()
