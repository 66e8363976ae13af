"""Every stage a few steps on CUDA in bf16, with paper-sized networks, printing each stage's throughput.

For a lent GPU (one short prepared run): synthesises a small eSpeak corpus, then runs the real CLI stages with
HuBERT-Base-shaped networks (random weights) and the SpeechLM base decoder:

    teacher fit (masked prediction) -> LossPred predict -> SylBoost fit (+ regeneration) -> quantize -> units
    -> SpeechLM fit -> generation

    python benchmarks/gpu_smoke.py                          # CUDA, bf16, base sizes (101 s on one H100)
    python benchmarks/gpu_smoke.py --device cpu --size tiny --steps 3   # the same path on a CPU (what CI checks)

Printed per stage: steps (or utterances) per second and seconds of audio (or tokens) per second, measured after
two warm-up steps, and the peak GPU memory. Numbers are throughput of random networks on tiny data: they show
that every stage runs on the device in bf16 and how fast, not what a full run will score.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


class Throughput(pl.Callback):
    """Per-batch wall time after ``warmup`` batches (CUDA-synchronised), items counted by ``count(batch)``."""

    def __init__(self, name: str, count, warmup: int = 2, peak_flops: float | None = None):
        self.name, self.count, self.warmup, self.peak_flops = name, count, warmup, peak_flops
        self.times, self.items, self.flops, self._t = [], [], [], 0.0
        self.results: dict = {}

    def _start(self, *_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def _end(self, trainer, module, outputs, batch, *_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)
        self.items.append(self.count(batch))
        self.flops.append(getattr(module, "flops_per_batch", None))  # syllablelm.models.flops, set by the step

    on_train_batch_start = on_predict_batch_start = _start
    on_train_batch_end = on_predict_batch_end = _end

    def report(self, unit: str) -> dict:
        t, n = self.times[self.warmup:] or self.times, self.items[self.warmup:] or self.items
        mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        r = {"stage": self.name, "batches": len(self.times), "batches_per_s": len(t) / sum(t),
             f"{unit}_per_s": sum(n) / sum(t), "peak_gpu_gib": mem}
        f = self.flops[self.warmup:] or self.flops
        if f and all(x is not None for x in f) and self.peak_flops:
            r["mfu"] = sum(f) / sum(t) / self.peak_flops
        print(f"{self.name:10s} {r['batches_per_s']:7.2f} batches/s  {r[f'{unit}_per_s']:10.1f} {unit}/s  "
              f"MFU {100 * r.get('mfu', float('nan')):.1f} %  peak GPU memory {mem:.1f} GiB", flush=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return r


def _audio_seconds(batch) -> float:
    return float(batch["lengths"].sum()) / 16000


def _config(name: str, work: Path, edit) -> str:
    text = (REPO / "experiments/configs/tiny" / name).read_text()
    cfg = yaml.safe_load(text.replace("data/synth", str(work / "data")).replace("runs/tiny", str(work / "runs")))
    edit(cfg)
    path = work / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _trainer(cfg: dict, args, **extra) -> None:
    t = cfg["trainer"]
    t.update(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, logger=False,
             enable_progress_bar=False, precision=args.precision, **extra)
    keep = ("ModelCheckpoint", "BoundaryRegeneration", "BoundaryWriter")
    t["callbacks"] = [c for c in t.get("callbacks", []) if c["class_path"].endswith(keep)]
    cfg["data"]["init_args"]["num_workers"] = 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--size", default="base", choices=["base", "tiny"])
    p.add_argument("--steps", type=int, default=20, help="training steps per fit stage")
    p.add_argument("--utterances", type=int, default=48)
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 peak per device (H100/H200)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for the CPU path)")
    args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from datamodules.manifest import list_audio
    from experiments.cli import lightning_cli, run_command
    from syllablelm.audio.io import audio_info
    from syllablelm.models import flops
    from syllablelm.models.gpt import GPT, GPTConfig
    from syllablelm.models.hubert import TeacherConfig
    from syllablelm.synthesis.corpus import synthesize_corpus
    from syllablelm.units.tokenizer import Tokenizer

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["SYLLABLELM_CACHE"] = str(work / "cache")
        synthesize_corpus(work / "data", num_utterances=args.utterances, seed=0, speakers=6, progress=False)
        splits = [str(work / "data" / s) for s in ("train", "dev", "test")]
        run_command("labels", ["--data", *splits, "--out", str(work / "runs/labels"), "--num-clusters", "100",
                               "--fit-hours", "0.05", "--device", args.device])
        net = TeacherConfig.base(num_labels=100) if args.size == "base" else TeacherConfig.tiny()
        layer = net.num_hidden_layers - 2 if args.size == "base" else net.num_hidden_layers

        tp = Throughput("teacher", _audio_seconds, peak_flops=args.peak_flops)
        cfg = _config("teacher.yaml", work, lambda c: (
            _trainer(c, args, max_steps=args.steps, limit_val_batches=0),
            c["model"]["init_args"].update(network=dataclasses.asdict(net)),
            c["data"]["init_args"].update(predict_dirs=[splits[1]])))
        lightning_cli(["fit", "--config", cfg], trainer_defaults={"callbacks": [tp]})
        results.append(tp.report("audio_s"))
        ckpt = str(work / "runs/teacher/checkpoints/last.ckpt")

        tp = Throughput("losspred", lambda b: len(b["ids"]), warmup=1, peak_flops=args.peak_flops)
        lightning_cli(["predict", "--config", cfg, "--ckpt_path", ckpt], trainer_defaults={"callbacks": [tp]})
        results.append(tp.report("utterances"))

        tp = Throughput("sylboost", _audio_seconds, peak_flops=args.peak_flops)
        cfg = _config("sylboost.yaml", work, lambda c: (
            _trainer(c, args, max_epochs=1, limit_train_batches=args.steps, limit_val_batches=0),
            c["model"]["init_args"].update(init_from=ckpt, feature_layer=layer, iterations=1,
                                           epochs_per_iteration=1),
            c["data"]["init_args"].update(train_dirs=[splits[1]], val_dirs=None, test_dirs=None)))  # LossPred: dev
        lightning_cli(["fit", "--config", cfg], trainer_defaults={"callbacks": [tp]})
        results.append(tp.report("audio_s"))

        tok_path = work / "runs/tokenizer.ckpt"
        run_command("quantize", ["--checkpoint", str(work / "runs/sylboost/checkpoints/last.ckpt"), "--data",
                                 splits[1], "--k", "64", "--k-merged", "32", "--hours", "1", "--out", str(tok_path),
                                 "--device", args.device])
        tok = Tokenizer.from_pretrained(tok_path, device=args.device)
        files = list_audio(splits[0])
        tok.batch(files[:2])  # warm-up
        start = time.perf_counter()
        tok.batch(files)
        seconds = time.perf_counter() - start
        audio = sum(audio_info(f).seconds for f in files)
        print(f"{'units':10s} {audio / seconds:10.1f} audio_s/s (tokenizer: features + min-cut + units, batch "
              "of all files)", flush=True)
        results.append({"stage": "units", "audio_s_per_s": audio / seconds})

        gpt = GPTConfig.base(vocab_size=8192) if args.size == "base" else GPTConfig.tiny(vocab_size=8192)
        model = GPT(gpt).to(args.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        context = min(1024, gpt.block_size)
        x = torch.randint(0, 8192, (8, context + 1), device=args.device)
        tp = Throughput("speechlm", lambda b: b, peak_flops=args.peak_flops)
        lm_step = SimpleNamespace(flops_per_batch=flops.training(flops.gpt_forward(8, context, gpt)))
        for _ in range(args.steps):
            tp._start()
            with torch.autocast(args.device, dtype=dtype, enabled=args.device == "cuda"):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tp._end(None, lm_step, None, 8 * context)
        results.append(tp.report("tokens"))
        model.eval()
        with torch.autocast(args.device, dtype=dtype, enabled=args.device == "cuda"):
            prompt = torch.full((1, 1), model.bos, dtype=torch.long, device=args.device)
            model.generate(prompt, 16, temperature=1.0, use_cache=True, decode="eager")
            start = time.perf_counter()  # the eager path under autocast; benchmarks/generation.py compares modes
            model.generate(prompt, min(750, gpt.block_size - 1), temperature=1.0, use_cache=True, decode="eager")
            if args.device == "cuda":
                torch.cuda.synchronize()
        rate = min(750, gpt.block_size - 1) / (time.perf_counter() - start)
        print(f"{'generate':10s} {rate:10.1f} tokens/s (750 tokens = 120 s of speech at 6.25 Hz, KV cache)")
        results.append({"stage": "generate", "tokens_per_s": rate})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
