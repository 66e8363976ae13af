"""LossPred: the 150-gap path against the exact one-span-per-forward path, in one run.

Prints forwards per utterance, utterances per second of each path, the speed ratio, and how far apart their
boundaries are (F1 / R-value of the gap path scored against the exact path, 20 ms tolerance, both protocols).

    python benchmarks/losspred.py                                   # random tiny teacher, fresh eSpeak utterances
    python benchmarks/losspred.py --checkpoint runs/tiny/teacher/checkpoints/last.ckpt --utterances 16
    python benchmarks/losspred.py --size base --device cuda         # HuBERT-Base shapes (random weights) on a GPU
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from lightning_modules.teacher import LossPredConfig, TeacherModule
from syllablelm.audio.io import read_audio
from syllablelm.evaluation.boundary_metrics import boundary_scores
from syllablelm.models.hubert import TeacherConfig
from syllablelm.synthesis.corpus import synthesize_corpus
from syllablelm.units.clustering import kmeans
from syllablelm.units.frame_labels import FrameLabeler, mfcc_features


def make_batch(paths: list[str], num_labels: int, seed: int) -> tuple[dict, FrameLabeler]:
    """The batch (whole-file labels) and its label model (LossPred labels each VAD-trimmed wave with it)."""
    waves = [read_audio(p) for p in paths]
    feats = [mfcc_features(w) for w in waves]
    frame_labeler = FrameLabeler(mfcc_features, kmeans(torch.cat(feats).numpy(), num_labels, seed=seed))
    labeler = frame_labeler.kmeans
    S = max(len(w) for w in waves)
    F = (S - 400) // 320 + 1
    batch = {"ids": [str(i) for i in range(len(waves))], "waves": torch.zeros(len(waves), S),
             "lengths": torch.tensor([len(w) for w in waves]), "offsets": torch.zeros(len(waves), dtype=torch.float64),
             "labels": torch.full((len(waves), F), -100, dtype=torch.long)}
    for b, (w, f) in enumerate(zip(waves, feats)):
        batch["waves"][b, : len(w)] = w
        batch["labels"][b, : len(f)] = labeler(f)
    return batch, frame_labeler


def run(module: TeacherModule, batch: dict, exact: bool, forward_batch: int) -> tuple[list, float]:
    module.losspred_config = LossPredConfig(**{**module.losspred_config.__dict__, "exact": exact,
                                               "forward_batch": forward_batch})
    start = time.perf_counter()
    with torch.inference_mode():
        out = module.losspred({k: v.to(module.device) if torch.is_tensor(v) and k != "offsets" else v
                               for k, v in batch.items()})
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    return out["segments"], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a TeacherModule checkpoint (default: random weights)")
    p.add_argument("--size", choices=["tiny", "base"], default="tiny")
    p.add_argument("--utterances", type=int, default=6)
    p.add_argument("--forward-batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    if args.checkpoint:
        module = TeacherModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    else:
        net = getattr(TeacherConfig, args.size)(num_labels=100)
        module = TeacherModule(network=net)
    module = module.eval().to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_corpus(tmp, num_utterances=max(3, args.utterances), seed=args.seed, progress=False,
                          splits=(("train", 1.0),))
        from datamodules.manifest import list_audio

        paths = [str(p) for p in list_audio(f"{tmp}/train")][: args.utterances]
        batch, module.labeler = make_batch(paths, module.teacher.config.num_labels, args.seed)
    seconds = float(batch["lengths"].sum()) / 16000
    frames = [int(n) // 320 for n in batch["lengths"]]
    gap_segs, gap_t = run(module, batch, exact=False, forward_batch=args.forward_batch)
    exact_segs, exact_t = run(module, batch, exact=True, forward_batch=args.forward_batch)
    n = len(frames)
    print(f"teacher: {'checkpoint ' + args.checkpoint if args.checkpoint else 'random ' + args.size}, "
          f"device {args.device}, {n} utterances, {seconds:.1f} s of audio, forward batch {args.forward_batch}")
    from syllablelm.boundaries.losspred import mask_groups

    print(f"forwards per utterance: gap path {np.mean([len(mask_groups(T)) for T in frames]):.0f} "
          f"(one span per forward when T <= 150, as the authors), "
          f"exact path {np.mean([T + 50 for T in frames]):.0f} (before VAD trimming)")
    print(f"gap path:   {gap_t:7.2f} s  {n / gap_t:7.2f} utt/s  {seconds / gap_t:7.1f}x real time")
    print(f"exact path: {exact_t:7.2f} s  {n / exact_t:7.2f} utt/s  {seconds / exact_t:7.1f}x real time")
    print(f"speed ratio gap/exact: {exact_t / gap_t:.2f}x")
    for protocol in ("syllablelm", "sdhubert"):
        s = boundary_scores(gap_segs, exact_segs, tolerance=0.02, protocol=protocol)
        print(f"gap vs exact boundaries ({protocol}, 20 ms): F1 {100 * s['f1']:.1f}  R-value {100 * s['r_value']:.1f}")


if __name__ == "__main__":
    main()
