"""How much phone information candidate fine units keep, before any vocoder (issue 29's diagnosis).

For each candidate (a feature: a teacher layer or MFCCs; k-means sizes), k-means is fitted on training utterances,
every unit gets the mean log-mel frame (80 bins, 20 ms hop) of its training frames, and a dev utterance is rendered
context-free: its units' mean frames -> linear magnitude (least squares) -> Griffin-Lim (16 iterations). The shipped
phone judge transcribes the result; the printed PER is what a vocoder that saw no context could reach from those
units. Dev split only (never the held-out voices).

    python benchmarks/fine_unit_oracle.py --data DEMO/data/synth --train 120 --dev 12
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.cluster import MiniBatchKMeans

from syllablelm.audio.io import read_audio
from syllablelm.evaluation.phone_judge import load_judge, phone_errors
from syllablelm.units.frame_labels import HiddenFeatures, mfcc_features

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "pretrained"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="a synth corpus (train/, dev/, alignments/)")
    p.add_argument("--train", type=int, default=120, help="training utterances for k-means and the unit means")
    p.add_argument("--dev", type=int, default=12, help="dev utterances scored")
    p.add_argument("--sizes", default="100,500", help="k-means sizes")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = sorted((args.data / "train").rglob("*.flac"))[:args.train]
    dev = sorted((args.data / "dev").rglob("*.flac"))[:args.dev]
    aligns = {a.stem: a for a in (args.data / "alignments").rglob("*.json")}
    judge = load_judge(SHIPPED / "judge.ckpt")
    spec = torchaudio.transforms.Spectrogram(n_fft=1280, hop_length=320, win_length=640, power=1)
    mel = torchaudio.transforms.MelScale(n_mels=80, sample_rate=16000, n_stft=641)
    inv = torchaudio.transforms.InverseMelScale(n_stft=641, n_mels=80, sample_rate=16000)
    gl = torchaudio.transforms.GriffinLim(n_fft=1280, hop_length=320, win_length=640, power=1, n_iter=16)
    waves = {f: read_audio(f) for f in train + dev}
    features = {"teacher.ckpt layer 2 (shipped fine units)": HiddenFeatures(SHIPPED / "teacher.ckpt", 2),
                "teacher.ckpt layer 1": HiddenFeatures(SHIPPED / "teacher.ckpt", 1),
                "teacher_iter2.ckpt layer 2": HiddenFeatures(SHIPPED / "teacher_iter2.ckpt", 2),
                "MFCC (39)": mfcc_features}

    def logmel(w, n):
        m = torch.log(mel(spec(w)).clamp_min(1e-5)).T
        return m[:n] if m.shape[0] >= n else torch.cat([m, m[-1:].expand(n - m.shape[0], -1)])

    print(f"{'features':<40}{'k':>6}{'oracle PER':>12}")
    for name, fn in features.items():
        x_train = [fn(waves[f]).numpy() for f in train]
        all_x = np.concatenate(x_train)
        mu, sd = all_x.mean(0), all_x.std(0) + 1e-5
        all_m = torch.cat([logmel(waves[f], len(x)) for f, x in zip(train, x_train)]).numpy()
        for k in (int(v) for v in args.sizes.split(",")):
            km = MiniBatchKMeans(k, random_state=0, n_init=3, batch_size=4096).fit((all_x - mu) / sd)
            lab = km.labels_
            means = np.stack([all_m[lab == u].mean(0) if (lab == u).any() else all_m.mean(0) for u in range(k)])
            errors = total = 0
            for f in dev:
                units = km.predict((fn(waves[f]).numpy() - mu) / sd)
                audio = gl(inv(torch.as_tensor(means[units]).T.exp()).clamp_min(0))
                ref = judge.phones_of_alignment(aligns[f.stem])
                errors += phone_errors(judge.transcribe(audio), ref)[0]
                total += len(ref)
            print(f"{name:<40}{k:>6}{100 * errors / total:>11.1f}%", flush=True)


if __name__ == "__main__":
    main()
