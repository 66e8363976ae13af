"""How much phone information candidate fine units carry *with context*: a phone probe on the units.

``benchmarks/fine_unit_oracle.py`` renders every unit by its mean frame with no context (a floor for a vocoder);
this script asks the other question: given the frame-level unit sequence (true durations), how well can a small
convolutional network with +-0.66 s of context recover the phones? It trains one probe per candidate (an
embedding of the unit ids, or a linear map of continuous features for the reference rows; five dilated
convolutions; a phone or pause per 20 ms frame, cross-entropy on the alignments' frame labels) on a training
corpus and prints, on a dev corpus of other (non-reserved) voices, its frame accuracy and the PER of its frame
predictions collapsed into runs (pauses dropped). A unit set whose probe cannot read the phones cannot be
resynthesized intelligibly by a vocoder of similar context; the continuous rows (log-mel, the teacher layer
itself) show what the probe reads before quantization.

    syllablelm synth --out TRAIN --num-utterances 600 --speakers 30 --splits train=1.0 --exclude-held-out --seed 7
    syllablelm synth --out DEV --num-utterances 96 --speakers 8 --splits dev=1.0 --exclude-held-out --seed 23
    python benchmarks/fine_unit_probe.py --train TRAIN --dev DEV
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.cluster import MiniBatchKMeans
from torch import nn
from torch.nn import functional as F

from syllablelm.audio.io import read_audio
from syllablelm.checkpoints import KMeansLabeler
from syllablelm.evaluation.phone_judge import PAUSE_LABELS, PHONES, phone_errors, phones_of_alignment, strip_stress
from syllablelm.units.fine import FineUnitEncoder
from syllablelm.units.frame_labels import HiddenFeatures, mfcc_features

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "pretrained"


class TeacherInputs:
    """What the shipped teacher's transformer reads, per 20 ms frame: ``layer0`` = HF ``hidden_states[0]`` (the
    projected CNN features after the positional convolution, 128 dims), ``cnn`` = the CNN's output (64 channels).
    :class:`HiddenFeatures` starts at layer 1 (the suite's feature layers), so these are read here."""

    def __init__(self, which: str):
        from syllablelm.checkpoints import load_encoder

        self.encoder, self.which = load_encoder(SHIPPED / "teacher.ckpt", layer=1).eval(), which

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        model, x = self.encoder.model, wave[None].float()
        if self.which == "cnn":
            return model.feature_extractor(x)[0].T
        return model(x, output_hidden_states=True).hidden_states[0][0]


def frame_phones(alignment: Path, num_frames: int) -> np.ndarray:
    """The phone id (into the judge's inventory, +1; 0 = pause) at each 20 ms frame's centre (10 ms in)."""
    rows = json.loads(alignment.read_text())["phones"]
    centres = np.arange(num_frames) * 0.02 + 0.01
    out = np.zeros(num_frames, np.int64)
    for start, end, label in rows:
        phone = strip_stress(str(label))
        if phone in PAUSE_LABELS:
            continue
        out[(centres >= float(start)) & (centres < float(end))] = PHONES.index(phone) + 1
    return out


def corpus(root: Path, split: str | None, limit: int | None) -> list[tuple[Path, Path]]:
    """``(audio, alignment)`` pairs of a synth corpus (all its splits, or ``split``)."""
    aligns = {a.stem: a for a in (root / "alignments").rglob("*.json")}
    files = sorted((root / split if split else root).rglob("*.flac"))[:limit]
    return [(f, aligns[f.stem]) for f in files]


class Probe(nn.Module):
    """Unit ids (an embedding) or continuous features (a linear map) -> five dilated convolutions (kernel 5,
    dilations 1, 2, 4, 8, 1: +-0.66 s of context) with GELU and residuals -> a phone (or pause) per frame."""

    def __init__(self, num_units: int | None, in_dim: int | None, dim: int = 192):
        super().__init__()
        self.embed = nn.Embedding(num_units, dim) if num_units else nn.Linear(in_dim, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 5, padding=2 * d, dilation=d) for d in (1, 2, 4, 8, 1))
        self.norms = nn.ModuleList(nn.GroupNorm(1, dim) for _ in self.convs)
        self.out = nn.Conv1d(dim, len(PHONES) + 1, 1)

    def forward(self, x):  # (B, T) ids or (B, T, D) -> (B, classes, T)
        h = self.embed(x).transpose(1, 2)
        for conv, norm in zip(self.convs, self.norms):
            h = h + F.gelu(norm(conv(h)))
        return self.out(h)


def crops(xs, ys, batch, frames, rng):
    """Random ``frames``-long crops (whole utterances when shorter, padded with label -100)."""
    idx = rng.integers(0, len(xs), batch)
    xb, yb = [], []
    for j in idx:
        n = len(ys[j])
        s = int(rng.integers(0, max(1, n - frames + 1)))
        x, y = torch.as_tensor(xs[j][s:s + frames]), torch.as_tensor(ys[j][s:s + frames])
        pad = frames - len(y)
        xb.append(F.pad(x, (0, 0, 0, pad) if x.dim() == 2 else (0, pad)))
        yb.append(F.pad(y, (0, pad), value=-100))
    return torch.stack(xb), torch.stack(yb)


def collapse(frame_ids: np.ndarray) -> list[str]:
    """Frame predictions -> a phone sequence: runs merged, pauses dropped."""
    keep = np.r_[True, frame_ids[1:] != frame_ids[:-1]]
    return [PHONES[i - 1] for i in frame_ids[keep] if i > 0]


def probe(train_x, train_y, dev_x, dev_refs, num_units, steps, seed=0) -> tuple[float, float]:
    """Train a :class:`Probe`; ``(frame accuracy %, PER % of the collapsed frame predictions)`` on dev."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Probe(num_units, None if num_units else train_x[0].shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        x, y = crops(train_x, train_y, 16, 200, rng)
        loss = F.cross_entropy(model(x), y, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    right = frames = errors = total = 0
    with torch.no_grad():
        for x, (y, ref) in zip(dev_x, dev_refs):
            pred = model(torch.as_tensor(x)[None])[0].argmax(0).numpy()
            right += int((pred == y).sum())
            frames += len(y)
            errors += phone_errors(collapse(pred), ref)[0]
            total += len(ref)
    return 100.0 * right / frames, 100.0 * errors / total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, type=Path, help="a synth corpus of training voices")
    p.add_argument("--dev", required=True, type=Path, help="a synth corpus of other, non-reserved voices")
    p.add_argument("--train-split", default=None, help="one split of --train (default: all)")
    p.add_argument("--dev-split", default=None, help="one split of --dev (default: all)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--dev-limit", type=int, default=None)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--sizes", default="100,500", help="k-means sizes fitted here")
    p.add_argument("--candidates", default="logmel,layer2,layer2-shipped,layer2-k,layer1-k,mfcc-k",
                   help="comma list: logmel, layer1, layer2, layer0 (the transformer's input), cnn (the CNN's "
                        "output) (continuous), layer2-shipped (kmeans_layer2.npy), logmel-shipped "
                        "(kmeans_logmel.npy on the suite's log-mel frames), layer1-k / layer2-k / mfcc-k / logmel-k "
                        "(k-means of --sizes fitted on the training corpus)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = corpus(args.train, args.train_split, args.train_limit)
    dev = corpus(args.dev, args.dev_split, args.dev_limit)
    waves = {f: read_audio(f) for f, _ in train + dev}
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=320, n_mels=80)
    features = {"logmel": lambda w: torch.log(mel(w).clamp_min(1e-5)).T, "mfcc": mfcc_features,
                "layer1": HiddenFeatures(SHIPPED / "teacher.ckpt", 1),
                "layer2": HiddenFeatures(SHIPPED / "teacher.ckpt", 2),
                "layer0": TeacherInputs("layer0"), "cnn": TeacherInputs("cnn")}
    cache: dict[str, tuple[list, list]] = {}

    def feats(name):
        if name not in cache:
            fn = features[name]
            cache[name] = ([fn(waves[f]).numpy() for f, _ in train], [fn(waves[f]).numpy() for f, _ in dev])
        return cache[name]

    refs = [phones_of_alignment(a) for _, a in dev]
    print(f"train {len(train)} utterances, dev {len(dev)}; {args.steps} probe steps each", flush=True)
    print(f"{'candidate':<38}{'k':>6}{'frame acc':>11}{'PER':>8}{'s':>6}", flush=True)
    for cand in args.candidates.split(","):
        if cand in ("logmel", "layer1", "layer2", "layer0", "cnn", "mfcc"):
            tx, dx = feats(cand)
            mu, sd = np.concatenate(tx).mean(0), np.concatenate(tx).std(0) + 1e-5
            rows = [(cand + " (continuous)", "-", [((x - mu) / sd).astype(np.float32) for x in tx],
                     [((x - mu) / sd).astype(np.float32) for x in dx], None)]
        elif cand == "logmel-shipped":
            enc = FineUnitEncoder.build(SHIPPED / "kmeans_logmel.npy", features="logmel")  # the option's labeler
            tl, dl = ([enc.labels(waves[f]) for f, _ in part] for part in (train, dev))
            rows = [("logmel kmeans_logmel.npy (shipped)", enc.num_units, tl, dl, enc.num_units)]
        elif cand == "layer2-shipped":
            km = KMeansLabeler.from_file(SHIPPED / "kmeans_layer2.npy")  # the shipped fine units' labeler
            tx, dx = feats("layer2")
            tl, dl = ([km(torch.as_tensor(x)).numpy() for x in xs] for xs in (tx, dx))
            k = int(km.centroids.shape[0])
            rows = [("layer2 kmeans_layer2.npy (shipped)", k, tl, dl, k)]
        else:
            base = cand[:-2]
            tx, dx = feats(base)
            all_x = np.concatenate(tx)
            mu, sd = all_x.mean(0), all_x.std(0) + 1e-5
            rows = []
            for k in (int(v) for v in args.sizes.split(",")):
                km = MiniBatchKMeans(k, random_state=0, n_init=3, batch_size=4096).fit((all_x - mu) / sd)
                rows.append((f"{base} k-means (fitted here)", k, [km.predict((x - mu) / sd) for x in tx],
                             [km.predict((x - mu) / sd) for x in dx], k))
        for name, k, rx, rd, nu in rows:
            t1 = time.time()
            ty = [frame_phones(a, len(x)) for (_, a), x in zip(train, rx)]
            dy = [(frame_phones(a, len(x)), ref) for (_, a), x, ref in zip(dev, rd, refs)]
            acc, per = probe(rx, ty, rd, dy, nu, args.steps)
            print(f"{name:<38}{k!s:>6}{acc:>10.1f}%{per:>7.1f}%{time.time() - t1:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
