"""Generation speed of one decoder on 6.25 Hz syllable units vs 25 Hz units, in one run.

    python benchmarks/lm_speed.py --size tiny --threads 1     # CPU (one thread: a shared CPU oversubscribed by
                                                              # torch's default threads runs 100x slower)
    python benchmarks/lm_speed.py --device cuda               # base (12 x 768, ~90M), bf16 on CUDA

The paper claims 4x faster inference at equal parameters. The same randomly initialised decoder (weights do
not change the cost) generates 10, 30 and 120 s of speech as 6.25 Hz units (62 / 188 / 750 tokens) and as 25 Hz
units (250 / 750 / 3000 tokens), sampling at temperature 1 with the KV cache, from a BOS prompt, never stopping
early. Printed: wall time, seconds of speech per wall second, and their ratio. Token counts differ by 4x; the
rest of the ratio is attention over longer caches. The decoder gets 3001 position slots (3000 + BOS) so the
120 s / 25 Hz case fits; the paper's model has 3000.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from generation import timed  # benchmarks/generation.py (this script's folder is on the path)

from syllablelm.models.gpt import GPT, GPTConfig

RATES = (6.25, 25.0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    p.add_argument("--vocab", type=int, default=8192, help="unit vocabulary (both rates use the same model)")
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0, 120.0])
    p.add_argument("--batch", type=int, default=1, help="sequences generated in parallel")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (the median is reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--decode", default="auto", help="GPT.generate's decode mode (auto: cuda_graph on CUDA)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    longest = max(round(s * r) for s in args.seconds for r in RATES)
    config = getattr(GPTConfig, args.size)(vocab_size=args.vocab, block_size=longest + 1, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config).to(device=device, dtype=dtype).eval()
    print(f"{args.size}: {config.n_layer} layers x {config.n_embd}, {config.n_head} heads, vocab {args.vocab}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters; {device} {dtype}; batch {args.batch}; "
          f"median of {args.repeats}; torch threads {torch.get_num_threads()}")
    timed(model, 32, args.decode, device, seed=0, batch=args.batch)  # warm-up: kernels, allocator, thread pools

    header = f"{'speech':>8} | " + " | ".join(f"{r:>5} Hz: tokens     wall   speech s/s" for r in RATES) + " | ratio"
    print(header)
    print("-" * len(header))
    for seconds in args.seconds:
        tokens = [round(seconds * rate) for rate in RATES]
        walls: list[list[float]] = [[] for _ in RATES]
        for k in range(args.repeats):  # the two rates alternate, so a change in machine load hits both
            for i, n in enumerate(tokens):
                walls[i].append(timed(model, n, args.decode, device, seed=k, batch=args.batch))
        speed = [seconds * args.batch / statistics.median(w) for w in walls]
        cells = [f"{'':>9}{n:>6} {statistics.median(w):>7.2f}s {v:>11.1f}" for n, w, v in zip(tokens, walls, speed)]
        print(f"{seconds:>7.0f}s | " + " | ".join(cells) + f" | {speed[0] / speed[1]:>4.2f}x", flush=True)

if __name__ == "__main__":
    main()
