"""Random state that a resumed run can reproduce (docs/architecture.md, "Reliability").

Training draws random numbers in the main process (dropout, masks) and in DataLoader workers. A run killed and
resumed replays identically only if each of these streams restarts where it was. The rule of this suite: every
training epoch starts from a state that is a function of ``(seed, epoch)`` alone (:func:`seed_all` with
:func:`derive`), and a checkpoint saved inside an epoch carries the exact states (:func:`rng_states`), restored
before the next batch (:func:`set_rng_states`). Worker processes are seeded from ``(seed, epoch, worker)``, and
the datasets draw their own randomness from ``(seed, epoch, item)``, so where a worker serves a batch never
changes it.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def derive(*keys: int) -> int:
    """A 63-bit seed from integer keys (``seed, epoch, ...``): independent streams for different keys."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_states() -> dict:
    """The states :func:`seed_all` sets, as tensors and plain Python values (a checkpoint loads them with
    ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore :func:`rng_states` (a CUDA state is restored where CUDA runs)."""
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader of the suite: Python's and numpy's generators in a worker follow
    torch's seed there, which the loader derived from ``(seed, epoch)`` plus the worker's id."""
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
