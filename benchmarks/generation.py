"""Per-token generation time of the SpeechLM decoder for each decode mode, measured side by side in one run.

    python benchmarks/generation.py --device cuda --size base       # bf16; eager vs static vs cuda_graph
    python benchmarks/generation.py --device cpu --size tiny --modes eager static

Batch-1 sampling (temperature 1, KV cache) of ``--tokens`` tokens from a BOS prompt with a randomly initialised
decoder (weights do not change the cost), the modes alternating over ``--repeats`` rounds so that a change in
machine load hits all of them; the median per-token time is reported with tokens/s and the speed-up over
``eager`` (today's path). On a GPU the floor is what one token must read at the device's memory bandwidth
(``--bandwidth`` bytes/s; H100 3.35e12, H200 4.8e12 by default): every weight once, plus the filled KV cache
(half of it on average over the run), and the printed ratio is per-token time / that floor. ``--json`` writes
the numbers (benchmarks/gpu_check.sh collects them into its table).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from syllablelm.models.generation import DECODE_MODES
from syllablelm.models.gpt import GPT, GPTConfig

BANDWIDTH = {"h200": 4.8e12, "h100": 3.35e12}  # bytes/s, HBM


def timed(model: GPT, tokens: int, mode: str, device: torch.device, seed: int, batch: int = 1) -> float:
    """Wall seconds of sampling ``tokens`` tokens (temperature 1, KV cache) for ``batch`` BOS prompts."""
    prompt = torch.full((batch, 1), model.bos, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, tokens, temperature=1.0, generator=generator, decode=mode)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape == (batch, tokens + 1)
    return time.perf_counter() - start


def floor_seconds(model: GPT, tokens: int, bandwidth: float) -> float:
    """Per-token time to read every weight and the (on average half-filled) KV cache once."""
    c, size = model.config, model.lm_head.weight.element_size()
    weights = model.num_parameters() * size
    cache = 2 * c.n_layer * c.n_embd * (tokens + 1) / 2 * size  # k and v, every layer, half the positions
    return (weights + cache) / bandwidth


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--tokens", type=int, default=750, help="750 = 120 s of speech at 6.25 Hz")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--modes", nargs="+", choices=DECODE_MODES, help="default: every mode the device runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bandwidth", type=float, help="memory bandwidth, bytes/s (default: by GPU name)")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    modes = args.modes or [m for m in DECODE_MODES if device.type == "cuda" or m != "cuda_graph"]
    config = getattr(GPTConfig, args.size)(vocab_size=args.vocab, block_size=max(3000, args.tokens + 1))
    torch.manual_seed(0)
    model = GPT(config).to(device=device, dtype=dtype).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bandwidth = args.bandwidth or next((v for k, v in BANDWIDTH.items() if k in name.lower()), None)
    for mode in modes:  # warm-up: kernels, allocator, graph capture, compilation
        timed(model, 16, mode, device, seed=0)
    walls = {m: [] for m in modes}
    for k in range(args.repeats):
        for m in modes:
            walls[m].append(timed(model, args.tokens, m, device, seed=k))
    per_token = {m: statistics.median(w) / args.tokens for m, w in walls.items()}
    floor = floor_seconds(model, args.tokens, bandwidth) if bandwidth else None
    print(f"{args.size} decoder, {model.num_parameters() / 1e6:.1f}M parameters, {name}, {dtype}, batch 1, "
          f"{args.tokens} tokens, median of {args.repeats}")
    print(f"{'mode':<11} {'ms/token':>9} {'tokens/s':>9} {'vs eager':>9} {'vs floor':>9}")
    rows = []
    for m in modes:
        t = per_token[m]
        row = {"mode": m, "ms_per_token": 1e3 * t, "tokens_per_s": 1 / t,
               "speedup_vs_eager": per_token["eager"] / t if "eager" in per_token else None,
               "x_floor": t / floor if floor else None}
        rows.append(row)
        vs_eager = f"{row['speedup_vs_eager']:.2f}x" if row["speedup_vs_eager"] else "—"
        vs_floor = f"{row['x_floor']:.2f}x" if floor else "—"
        print(f"{m:<11} {row['ms_per_token']:>9.3f} {row['tokens_per_s']:>9.1f} {vs_eager:>9} {vs_floor:>9}")
    result = {"device": name, "dtype": str(dtype), "size": args.size, "tokens": args.tokens,
              "floor_ms_per_token": 1e3 * floor if floor else None, "modes": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
