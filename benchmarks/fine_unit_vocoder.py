"""Would other fine units resynthesize better? One vocoder recipe, two unit sets, the judge on other voices.

``benchmarks/fine_unit_probe.py`` says how much phone information candidate fine units carry; this script checks
what that means after a vocoder. For one candidate it trains the CPU iSTFT vocoder (:mod:`syllablelm.models.
istft_vocoder`, the shipped recipe's optimizer and schedule: AdamW 1e-3, betas 0.8 / 0.99, weight decay 0.01, 200
warm-up steps then cosine to 0.1x, batches of 8 random 0.96 s crops; no duration predictor, ``--from fine`` uses the
true durations) on a training corpus's frame-level units for ``--steps`` steps, then vocodes dev utterances from their
true units (time-aligned) and prints the phone judge's PER of the originals and of the resynthesis. Candidates:
``shipped`` (the CPU path: ``teacher.ckpt`` layer 2, ``kmeans_layer2.npy``, 100 units) and ``logmel`` (80-bin log-mel
frames, 25 ms / 20 ms, k-means with ``--k`` units fitted on the training corpus: spectral codes, not SSL units).
Run each candidate in its own process with the same ``--steps`` to compare them at one budget.

    python benchmarks/fine_unit_vocoder.py --train TRAIN --dev DEV --candidate shipped --steps 2000
    python benchmarks/fine_unit_vocoder.py --train TRAIN --dev DEV --candidate logmel --k 1000 --steps 2000
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.cluster import MiniBatchKMeans

from syllablelm.audio.io import read_audio
from syllablelm.evaluation.phone_judge import load_judge, phone_errors, phones_of_alignment
from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig, VocoderLosses
from syllablelm.units.frame_labels import FrameLabeler

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "pretrained"
HOP, CROP, BATCH = 320, 48, 8


def unit_function(candidate: str, train_waves: list[torch.Tensor], k: int):
    """A wave -> frame-level unit ids ``(T,)`` (``T * 320 <= len(wave)``), and the number of units."""
    if candidate == "shipped":  # the labeler the shipped fine units come from (syllablelm.units.fine)
        labeler = FrameLabeler.build("teacher", SHIPPED / "kmeans_layer2.npy", checkpoint=SHIPPED / "teacher.ckpt",
                                     layer=2)
        return labeler, labeler.num_labels
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=HOP, n_mels=80, center=False)

    def logmel(w):
        return torch.log(mel(w).clamp_min(1e-5)).T  # (T, 80), T = (S - 400) // 320 + 1

    x = torch.cat([logmel(w) for w in train_waves]).numpy()
    mu, sd = x.mean(0), x.std(0) + 1e-5
    km = MiniBatchKMeans(k, random_state=0, n_init=3, batch_size=4096).fit((x - mu) / sd)
    return (lambda w: torch.as_tensor(km.predict((logmel(w).numpy() - mu) / sd))), k


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, type=Path, help="a synth corpus of training voices")
    p.add_argument("--dev", required=True, type=Path, help="a synth corpus of other, non-reserved voices")
    p.add_argument("--candidate", choices=("shipped", "logmel"), required=True)
    p.add_argument("--k", type=int, default=1000, help="k-means size of the logmel candidate")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--dev-every", type=int, default=4, help="score every n-th dev utterance")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.time()
    train_files = sorted(args.train.rglob("*.flac"))
    dev_files = sorted(args.dev.rglob("*.flac"))[::args.dev_every]
    train_waves = [read_audio(f) for f in train_files]
    units_of, num_units = unit_function(args.candidate, train_waves, args.k)
    train = []
    for w in train_waves:
        u = units_of(w)
        train.append((u, w[:len(u) * HOP]))
    print(f"{args.candidate}: {num_units} units, {len(train)} training utterances ({time.time() - t0:.0f} s)",
          flush=True)
    model = ISTFTVocoder(ISTFTVocoderConfig(num_units=num_units))
    losses = VocoderLosses(dur_weight=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.01)

    def lr_factor(step: int) -> float:
        if step < 200:
            return (step + 1) / 200
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 200) / max(1, args.steps - 200)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    for step in range(args.steps):
        frames, waves = [], []
        for j in rng.integers(0, len(train), BATCH):
            u, w = train[j]
            s = int(rng.integers(0, max(1, len(u) - CROP + 1)))
            frames.append(u[s:s + CROP])
            waves.append(w[s * HOP:(s + CROP) * HOP])
        n = min(len(f) for f in frames)
        fake = model.frames_to_wave(torch.stack([f[:n] for f in frames]))
        out = losses(fake, torch.stack([w[:n * HOP] for w in waves]))
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0:
            print(f"  step {step + 1}: mel {float(out['mel'].detach()):.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    judge = load_judge(SHIPPED / "judge.ckpt")
    aligns = {a.stem: a for a in (args.dev / "alignments").rglob("*.json")}
    err_o = err_f = total = 0
    with torch.no_grad():
        for f in dev_files:
            w = read_audio(f)
            u = units_of(w)
            ref = phones_of_alignment(aligns[f.stem])
            err_o += phone_errors(judge.transcribe(w), ref)[0]
            err_f += phone_errors(judge.transcribe(model.frames_to_wave(u[None])[0]), ref)[0]
            total += len(ref)
    print(f"{args.candidate} (k {num_units}, {args.steps} steps): dev PER original {100 * err_o / total:.1f} %, "
          f"from fine units {100 * err_f / total:.1f} % ({len(dev_files)} utterances, {total} phones; "
          f"{time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
