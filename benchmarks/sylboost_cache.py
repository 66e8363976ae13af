"""SylBoost training steps with and without the frozen-feature cache (``cache_frozen``), in one run.

    python benchmarks/sylboost_cache.py                                   # the shipped tiny teacher, CPU
    python benchmarks/sylboost_cache.py --checkpoint hubert_base_ls960.pt --layer 10 --device cuda

Both students start from the same weights and see the same padded batches (random audio of 4-8 s, the demo's
batch of 8); the cached run first fills its cache with one untimed pass over the batches, as epoch 1 would.
Prints seconds per step for each, the speed ratio, and the largest loss difference between the two (the cache
must not change results).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lightning_modules.sylboost import SylBoostModule

REPO = Path(__file__).resolve().parents[1]


def batches(n: int, batch: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lengths = rng.integers(4 * 16000, 8 * 16000, batch)
        waves = torch.zeros(batch, int(lengths.max()))
        segments = []
        for b, n_s in enumerate(lengths):
            waves[b, :n_s] = torch.from_numpy(rng.standard_normal(n_s).astype(np.float32)) * 0.1
            cuts = np.arange(0.0, n_s / 16000, 0.2)
            segments.append(np.stack([cuts[:-1], cuts[1:]], 1))
        out.append({"ids": [f"utt{i}-{b}" for b in range(batch)], "waves": waves,
                    "lengths": torch.from_numpy(lengths), "offsets": torch.zeros(batch, dtype=torch.float64),
                    "attention_mask": (torch.arange(waves.shape[1])[None] < torch.from_numpy(lengths)[:, None]).long(),
                    "segments": segments})
    return out


def steps(model: SylBoostModule, data: list[dict], device) -> tuple[float, list[float]]:
    opt = torch.optim.AdamW([p for p in model.student.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in data:
        loss, _ = model._shared_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(data), losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "experiments/pretrained/teacher.ckpt"))
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    data = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
            for b in batches(args.steps, args.batch)]
    results = {}
    for cached in (False, True):
        torch.manual_seed(0)
        model = SylBoostModule(init_from=args.checkpoint, feature_layer=args.layer, cache_frozen=cached).to(device)
        model.train()
        if cached:
            with torch.no_grad():
                for batch in data:  # fill the cache (epoch 1 does this while training)
                    model._cached(batch)
        results[cached] = steps(model, data, device)
    (plain, lp), (fast, lc) = results[False], results[True]
    print(f"{args.steps} steps of {args.batch} utterances (4-8 s, padded) on {device}, {args.checkpoint}")
    print(f"  uncached: {plain:.3f} s/step")
    print(f"  cached:   {fast:.3f} s/step")
    print(f"  speed-up: {plain / fast:.1f}x; largest loss difference {max(abs(a - b) for a, b in zip(lp, lc)):.2e}")


if __name__ == "__main__":
    main()
