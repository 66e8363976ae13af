"""The dense bf16 matmul rate this device reaches (the "measured" peak MFU is also reported against).

    python benchmarks/matmul_peak.py --json OUT.json       # CUDA: 8192^3 bf16 matmuls; CPU: smaller, float32
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def measure(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):  # warm-up: kernel selection, clocks
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, help="matrix side (default 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = args.size or (8192 if device.type == "cuda" else 1024)
    rate = measure(n, dtype, device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}: {rate / 1e12:.1f} TFLOP/s ({dtype}, {n}^3 matmuls)")
    result = {"device": name, "dtype": str(dtype), "flops_per_s": rate}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
