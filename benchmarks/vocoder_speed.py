"""Real-time factor of both unit vocoders on the CPU, in one run (issue 29, item 7).

    OMP_NUM_THREADS=1 python benchmarks/vocoder_speed.py --threads 1
    python benchmarks/vocoder_speed.py --seconds 10 --istft experiments/pretrained/vocoder.ckpt

Real-time factor = wall seconds of synthesis / seconds of audio produced (below 1: faster than real time). Both
generators synthesise the same fine-unit runs (random ids, durations 1-4 frames) of ``--seconds`` of audio from
the deduplicated units and their durations (the duration predictor is timed separately: it is negligible):

- ``code HiFi-GAN``: textless-lib's generator at paper size (HiFi-GAN V1: initial channel 512, kernels [3, 7, 11],
  dilations [1, 3, 5]; upsampling [5, 4, 4, 2, 2] = x320 for 50 Hz units, or [5, 4, 4, 4, 2] = x640 for 25 Hz with
  ``--rate 25``; kernels 2u or 2u+1 so that k - u is even); random weights (the weights do not change the cost);
- ``iSTFT``: the shipped CPU vocoder (``--istft``, default ``experiments/pretrained/vocoder.ckpt``; random weights
  of the tiny config when that file is missing).

The median of ``--repeats`` timed runs after one warm-up is reported, with the model's parameter count.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from syllablelm.checkpoints.vocoders import load_unit_vocoder
from syllablelm.models.code_hifigan import CodeHiFiGAN
from syllablelm.models.istft_vocoder import ISTFTVocoder


def paper_hifigan_config(rate: int) -> dict:
    """HiFi-GAN V1-sized code generator config (textless-lib keys) for 50 or 25 Hz units and 500 units."""
    ups = [5, 4, 4, 2, 2] if rate == 50 else [5, 4, 4, 4, 2]
    return {"resblock": "1", "upsample_rates": ups, "upsample_kernel_sizes": [11 if u == 5 else 2 * u for u in ups],
            "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5]] * 3, "num_embeddings": 500, "embedding_dim": 128,
            "model_in_dim": 128, "dur_predictor_params": {"encoder_embed_dim": 128, "var_pred_hidden_dim": 128,
                                                          "var_pred_kernel_size": 3, "var_pred_dropout": 0.5},
            "sampling_rate": 16000}


def rtf(model, seconds: float, repeats: int, seed: int = 0) -> tuple[float, float, float]:
    """(median synthesis RTF, duration-prediction RTF, audio seconds) for ``seconds`` of random runs."""
    g = torch.Generator().manual_seed(seed)
    frames = int(seconds * model.sample_rate / model.hop)
    durations = torch.randint(1, 5, (frames,), generator=g)
    durations = durations[: int(torch.searchsorted(durations.cumsum(0), torch.tensor(frames))) + 1]
    units = torch.randint(0, model.num_units, (durations.numel(),), generator=g)
    audio_s = float(durations.sum()) * model.hop / model.sample_rate
    model.synthesize(units, durations)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.synthesize(units, durations)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.predict_durations(units)
    dur_t = time.perf_counter() - t
    return statistics.median(times) / audio_s, dur_t / audio_s, audio_s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="audio seconds per synthesis")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--rate", type=int, choices=[50, 25], default=25, help="unit rate of the paper-size HiFi-GAN")
    p.add_argument("--istft", default="experiments/pretrained/vocoder.ckpt", help="the iSTFT vocoder checkpoint")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {f"code HiFi-GAN (V1 size, {args.rate} Hz, random)": CodeHiFiGAN(paper_hifigan_config(args.rate))}
    if Path(args.istft).is_file():
        models[f"iSTFT ({args.istft})"] = load_unit_vocoder(args.istft)
    else:
        models["iSTFT (tiny config, random)"] = ISTFTVocoder()
    print(f"CPU, {torch.get_num_threads()} thread(s), {args.seconds:g} s of audio, median of {args.repeats}")
    print(f"{'vocoder':48s} {'params':>8s} {'hop':>5s} {'RTF':>8s} {'x real time':>12s} {'dur. pred. RTF':>15s}")
    for name, m in models.items():
        m.eval()
        n = sum(x.numel() for x in m.parameters())
        r, d, _ = rtf(m, args.seconds, args.repeats)
        print(f"{name:48s} {n / 1e6:7.2f}M {m.hop:5d} {r:8.4f} {1 / r:12.1f} {d:15.5f}")


if __name__ == "__main__":
    main()
