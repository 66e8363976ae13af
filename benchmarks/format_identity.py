"""Byte-identity of ``import-sylboost`` and ``tokenize`` across two checkouts (the check a refactor must pass).

    python benchmarks/format_identity.py release DIR             # a fake release in the authors' formats (seeded)
    python benchmarks/format_identity.py run CHECKOUT DIR OUT [--tokenizer CKPT] AUDIO...

``release`` writes ``SylBoost_625Hz.pth`` (``{"model_seg": {"model." + fairseq data2vec 2.0 key: fp16}}`` with
random weights at the released shapes), ``SylBoost_625Hz_kmeans.npy`` (64, 768) and ``SylBoost_625Hz_agglom.npy``
(64,) onto 16 units, all from seed 0. ``run`` puts CHECKOUT first on PYTHONPATH (so an older commit, checked out with
``git worktree add``, runs in this environment), imports the release at each of the three presets, tokenizes AUDIO
with each imported checkpoint (and with ``--tokenizer``, for example a demo's quantized tokenizer), and prints the
SHA-256 of every file it wrote. Run it for the commit before and after a change and ``diff`` the two printouts.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = ("8.33Hz", "6.25Hz", "5.0Hz")


def write_release(root: Path) -> None:
    import numpy as np
    import torch

    from syllablelm.checkpoints.fairseq_data2vec2 import fairseq_key
    from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder
    from syllablelm.units.released import RELEASED_ENCODER_CONFIG

    root.mkdir(parents=True, exist_ok=True)
    c = RELEASED_ENCODER_CONFIG
    torch.manual_seed(0)
    model = Data2Vec2AudioEncoder(c)
    with torch.no_grad():
        model.alibi_scale.uniform_(0.5, 1.5)
        model.blocks[10].norm2.weight.fill_(0.108)  # a feature scale where the presets' δ bite (test_released)
        model.blocks[10].norm2.bias.normal_(0, 0.01)
    sd = {"model." + fairseq_key(k, c): v.half() for k, v in model.state_dict().items()}
    torch.save({"model_seg": sd}, root / "SylBoost_625Hz.pth")
    rng = np.random.default_rng(0)
    np.save(root / "SylBoost_625Hz_kmeans.npy", rng.standard_normal((64, 768)).astype(np.float32))
    np.save(root / "SylBoost_625Hz_agglom.npy", rng.permutation(np.arange(64) % 16).astype(np.int64))


def run(checkout: Path, release: Path, out: Path, audio: list[str], tokenizer: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "experiments.cli"]
    with tempfile.TemporaryDirectory() as cwd:  # not a checkout: `python -m` puts the working directory first
        def call(*args: str) -> None:
            subprocess.run([*cli, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)

        ckpts = []
        for rate in PRESETS:
            ckpt = out / f"imported_{rate}.ckpt"
            call("import-sylboost", "--model", str(release / "SylBoost_625Hz.pth"),
                 "--kmeans", str(release / "SylBoost_625Hz_kmeans.npy"),
                 "--agglom", str(release / "SylBoost_625Hz_agglom.npy"), "--rate", rate, "--out", str(ckpt))
            ckpts.append(ckpt)
        if tokenizer:
            ckpts.append(Path(tokenizer))
        for i, ckpt in enumerate(ckpts):
            call("tokenize", "--checkpoint", str(ckpt), "--input", *audio, "--output", str(out / f"units_{i}.jsonl"),
                 "--device", "cpu")
    for f in sorted(out.iterdir()):
        print(hashlib.sha256(f.read_bytes()).hexdigest(), f.name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release")
    r.add_argument("dir", type=Path)
    u = sub.add_parser("run")
    u.add_argument("checkout", type=Path)
    u.add_argument("release", type=Path)
    u.add_argument("out", type=Path)
    u.add_argument("audio", nargs="+")
    u.add_argument("--tokenizer")
    a = p.parse_args()
    if a.cmd == "release":
        write_release(a.dir)
    else:
        run(a.checkout, a.release, a.out, a.audio, a.tokenizer)


if __name__ == "__main__":
    main()
