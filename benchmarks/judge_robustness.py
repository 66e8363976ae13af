"""Is the phone judge thrown by phase or smoothing artefacts? (issue 29's diagnosis)

Scores original utterances of a split and three degraded copies that keep the spectral envelope: Griffin-Lim from
the true magnitude (8 iterations), Griffin-Lim from an 80-bin mel magnitude, and the true magnitude with random phase.
If the judge reads these nearly as well as the originals, a vocoder's phase and timbre are not what it penalises.

    python benchmarks/judge_robustness.py --split DEMO/data/synth/dev --utterances 12
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchaudio

from syllablelm.audio.io import read_audio
from syllablelm.evaluation.phone_judge import load_judge, phone_errors

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "pretrained"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", required=True, type=Path, help="a synth split folder (its alignments beside it)")
    p.add_argument("--utterances", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    judge = load_judge(SHIPPED / "judge.ckpt")
    files = sorted(args.split.rglob("*.flac"))[:args.utterances]
    aligns = {a.stem: a for a in (args.split.parent / "alignments" / args.split.name).rglob("*.json")}
    spec = torchaudio.transforms.Spectrogram(n_fft=640, hop_length=160, power=1)
    gl = torchaudio.transforms.GriffinLim(n_fft=640, hop_length=160, power=1, n_iter=8)
    mel = torchaudio.transforms.MelScale(n_mels=80, sample_rate=16000, n_stft=321)
    inv = torchaudio.transforms.InverseMelScale(n_stft=321, n_mels=80, sample_rate=16000)
    errors = dict.fromkeys(("original", "Griffin-Lim", "mel + Griffin-Lim", "random phase"), 0)
    total = 0
    for f in files:
        wave = read_audio(f)
        mag = spec(wave)
        phase = torch.rand(mag.shape) * 2 * torch.pi
        versions = [wave, gl(mag), gl(inv(mel(mag)).clamp_min(0)),
                    torch.istft(torch.polar(mag, phase), n_fft=640, hop_length=160, window=torch.hann_window(640))]
        ref = judge.phones_of_alignment(aligns[f.stem])
        for key, hyp in zip(errors, judge.transcribe_batch(versions)):
            errors[key] += phone_errors(hyp, ref)[0]
        total += len(ref)
    for key, e in errors.items():
        print(f"{key:<20}{100 * e / total:6.1f} % PER")


if __name__ == "__main__":
    main()
