"""Continuation tokens/s (issue 29, item 7): fine units per second that the interleaved vocoder LM generates from
syllable units, with the KV cache and without it (the whole context recomputed every step), measured side by side.

    python benchmarks/continuation_speed.py                      # the tiny config's decoder on the CPU
    python benchmarks/continuation_speed.py --size paper --device cuda --dtype bfloat16

A randomly initialised decoder (weights do not change the cost) of the tiny config's shape
(experiments/configs/tiny/interleaved_lm.yaml: 3 layers x 128, 100 fine + 64 syllable units) or the paper's
(12 x 768, the authors' 10243-row layout: 1024 fine slots + 8192 syllable units), generates the fine units of
``--syllables`` random syllable units (:func:`syllablelm.models.interleaved_generation.generate_fine`, temperature
0.7, top-k 20, stretches capped at ``--stretch-cap`` fine units, the context at ``--context`` tokens). Random weights
rarely predict the stop, so most stretches run to the cap: every run draws the same tokens (same seed; the cached
path equals the recomputation), so both paths time the same work. The two paths alternate over ``--repeats`` rounds
(a change in machine load hits both); the median is reported as fine tokens/s (fine units generated / wall seconds)
and the ratio. ``--json`` writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.models.interleaved_generation import generate_fine
from syllablelm.units.interleave import InterleavedVocab

SIZES = {  # (vocabulary, decoder)
    "tiny": (InterleavedVocab(100, 64), dict(vocab_size=166, block_size=512, n_layer=3, n_head=4, n_embd=128)),
    "paper": (InterleavedVocab(1024, 8192), dict(vocab_size=10243, block_size=3000, n_layer=12, n_head=12,
                                                 n_embd=768)),
}


def timed(model, vocab, syllables, use_cache: bool, args) -> tuple[float, int]:
    """Wall seconds and fine units of one generation."""
    device = model.lm_head.weight.device
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate_fine(model, syllables, vocab, temperature=0.7, top_k=20, generator=generator,
                        use_cache=use_cache, stretch_cap=args.stretch_cap, tail_cap=args.stretch_cap,
                        max_context=args.context)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, int((out.tokens < vocab.fine).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--syllables", type=int, default=20)
    p.add_argument("--stretch-cap", type=int, default=8)
    p.add_argument("--context", type=int, default=256, help="tokens the decoder reads at most (sliding by blocks)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab, shape = SIZES[args.size]
    model = GPT(GPTConfig(**shape, dropout=0.0)).to(args.device, getattr(torch, args.dtype)).eval()
    syllables = torch.randint(0, vocab.syllable, (args.syllables,), generator=torch.Generator().manual_seed(1))
    timed(model, vocab, syllables[:2].numpy(), True, args)  # warm-up
    seconds: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, int] = {}
    for _ in range(args.repeats):
        for cache in (True, False):
            s, n = timed(model, vocab, syllables.numpy(), cache, args)
            seconds[cache].append(s)
            tokens[cache] = n
    rate = {c: tokens[c] / statistics.median(seconds[c]) for c in seconds}
    result = {"size": args.size, "device": args.device, "dtype": args.dtype, "threads": args.threads,
              "syllables": args.syllables, "fine_tokens": tokens[True], "same_tokens": tokens[True] == tokens[False],
              "kv_cache_tokens_per_s": rate[True], "no_cache_tokens_per_s": rate[False],
              "cache_speedup": rate[True] / rate[False]}
    print(f"{args.size} decoder on {args.device} ({args.dtype}, {args.threads} thread(s)): {tokens[True]} fine units "
          f"for {args.syllables} syllables, median of {args.repeats}")
    print(f"  KV cache   {rate[True]:8.1f} fine tokens/s")
    print(f"  no cache   {rate[False]:8.1f} fine tokens/s")
    print(f"  ratio      {result['cache_speedup']:8.2f} x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
