"""Training-step throughput of the teacher, SylBoost and the SpeechLM, today's settings against the opt-in
speed-ups, side by side in one process (issue 21, item 3):

    today     the configs as they ship: AdamW (for-each), eager layers, bf16 autocast on CUDA (fp32 on a CPU)
    fused     + ``AdamW(fused=True)`` (one kernel for the whole update)
    compiled  + ``compile_layers: true`` (each transformer layer through ``torch.compile``)

Each stage's real ``training_step`` runs on random inputs of a fixed shape (random weights; no corpus, no
Trainer, no data loading: data loading is measured by the Lightning runs of ``gpu_smoke.py``), so the numbers
isolate the model step. Printed per stage and variant: audio seconds (or tokens) per second, MFU against
``--peak-flops`` (from ``syllablelm.models.flops``, the formulas in docs/algorithms.md), speed-up over ``today``, peak
GPU memory.

    python benchmarks/train_speed.py --json OUT.json                  # CUDA, base sizes
    python benchmarks/train_speed.py --device cpu --size tiny --steps 3 --variants today fused   # what CI runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = {"today": {}, "fused": {"fused": True}, "compiled": {"fused": True, "compile_layers": True}}
SAMPLE_RATE = 16000


def speech_batch(batch: int, seconds: float, num_labels: int, device: str, seed: int = 0) -> dict:
    """A batch as ``datamodules.speech`` makes it: random waves, LossPred-like segments every 0.16 s, labels."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    frames = n // 320
    edges = np.arange(0.0, seconds + 1e-9, 0.16)
    segments = np.stack([edges[:-1], edges[1:]], axis=1)
    return {"ids": [f"utt{i}" for i in range(batch)], "offsets": torch.zeros(batch),
            "waves": (0.1 * torch.randn(batch, n, generator=g)).to(device),
            "attention_mask": torch.ones(batch, n, dtype=torch.long, device=device),
            "lengths": torch.full((batch,), n, device=device),
            "labels": torch.randint(0, num_labels, (batch, frames), generator=g).to(device),
            "segments": [segments] * batch}


def build(stage: str, size: str, variant: dict, work: Path):
    """(module, label or vocabulary count, throughput unit) of one stage with one variant's settings."""
    from lightning_modules.speechlm import SpeechLMModule
    from lightning_modules.sylboost import SylBoostModule
    from lightning_modules.teacher import TeacherModule
    from syllablelm.models.gpt import GPTConfig
    from syllablelm.models.hubert import HubertTeacher, TeacherConfig

    compile_layers = variant.get("compile_layers", False)
    net = TeacherConfig.base(num_labels=500) if size == "base" else TeacherConfig.tiny()
    if stage == "teacher":
        return TeacherModule(network=net, compile_layers=compile_layers), net.num_labels, "audio_s"
    if stage == "sylboost":
        hf = work / f"hubert_{size}"
        if not hf.exists():
            HubertTeacher(net).encoder.save_pretrained(hf)
        layer = net.num_hidden_layers - 2 if size == "base" else net.num_hidden_layers
        return SylBoostModule(init_from=str(hf), feature_layer=layer, compile_layers=compile_layers), \
            net.num_labels, "audio_s"
    gpt = GPTConfig.base(vocab_size=8192) if size == "base" else GPTConfig.tiny(vocab_size=8192)
    return SpeechLMModule(network=gpt, compile_layers=compile_layers), gpt.vocab_size, "tokens"


def measure(stage: str, name: str, args, work: Path) -> dict:
    from lightning.fabric.utilities.seed import seed_everything

    seed_everything(0, verbose=False)
    variant = VARIANTS[name]
    module, vocab, unit = build(stage, args.size, variant, work)
    module = module.to(args.device).train()
    if stage == "sylboost":
        module.teacher.eval()
    if unit == "tokens":
        context = min(args.context, module.config.block_size)
        ids = torch.randint(0, vocab, (args.lm_batch, context + 1), generator=torch.Generator().manual_seed(0))
        ids = ids.to(args.device)
        batch, items = {"input": ids[:, :-1], "target": ids[:, 1:]}, args.lm_batch * context
    else:
        batch = speech_batch(args.batch, args.seconds, vocab, args.device)
        items = args.batch * args.seconds
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=variant.get("fused", False) or None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else nullcontext()
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, flops_sum = [], 0
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = module.training_step(batch, step)
        if step == 0:
            first_loss = float(loss.detach())  # before any update
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:  # the first steps compile and allocate
            times.append(time.perf_counter() - start)
            flops_sum += getattr(module, "flops_per_batch", None) or 0
    seconds = sum(times)
    row = {"stage": stage, "variant": name, f"{unit}_per_s": items * len(times) / seconds,
           "step_ms": 1000 * seconds / len(times), "first_loss": first_loss, "loss": float(loss.detach()),
           "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    if flops_sum and args.peak_flops:
        row["mfu"] = flops_sum / seconds / args.peak_flops
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--size", default="base", choices=["base", "tiny"])
    p.add_argument("--stages", nargs="+", default=["teacher", "sylboost", "speechlm"],
                   choices=["teacher", "sylboost", "speechlm"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=10, help="timed steps per stage and variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="utterances per speech batch")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance")
    p.add_argument("--lm-batch", type=int, default=16)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 peak per device (H100/H200)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu)")
    if args.device == "cpu":
        args.peak_flops = None  # no meaningful CPU peak: throughput only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            base = None
            for name in args.variants:
                row = measure(stage, name, args, Path(tmp))
                unit = next(k for k in row if k.endswith("_per_s"))
                base = row[unit] if name == "today" else base
                row["speedup_vs_today"] = row[unit] / base if base else None
                rows.append(row)
                mfu = f"{100 * row['mfu']:.1f} %" if "mfu" in row else "—"
                speed = f"{row['speedup_vs_today']:.2f}x" if row["speedup_vs_today"] else "—"
                mem = f"{row['peak_gpu_gib']:.1f} GiB" if row["peak_gpu_gib"] is not None else "—"
                print(f"{stage:9s} {name:9s} {row[unit]:12,.1f} {unit[:-6]}/s  {row['step_ms']:8.1f} ms/step  "
                      f"MFU {mfu:>7s}  {speed:>6s} vs today  peak {mem}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
