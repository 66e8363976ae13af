"""Shared fixtures: small corpora made at test time (never downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def burst_wave(rng: np.random.Generator, seconds: float, sr: int = 16_000) -> tuple[np.ndarray, list[list[float]]]:
    """Noise bursts (0.2-0.6 s) separated by silences (0.15-0.4 s): a crude stand-in for speech whose
    speech regions are known exactly. Returns the wave and the ``[start, end]`` seconds of the bursts."""
    wave = np.zeros(int(seconds * sr), dtype=np.float32)
    t, regions = float(rng.uniform(0.1, 0.3)), []
    while t < seconds - 0.3:
        length = min(float(rng.uniform(0.2, 0.6)), seconds - 0.1 - t)
        a, b = int(t * sr), int((t + length) * sr)
        wave[a:b] = rng.standard_normal(b - a).astype(np.float32) * 0.1
        regions.append([a / sr, b / sr])
        t += length + float(rng.uniform(0.15, 0.4))
    return wave, regions


def make_librispeech(root: Path, speakers: int = 2, chapters: int = 1, utts: int = 4, seed: int = 0,
                     seconds: tuple[float, float] = (1.0, 3.0), sr: int = 16_000) -> list[str]:
    """A LibriSpeech-layout folder of burst waves; returns the utterance ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for spk in range(1, speakers + 1):
        for ch in range(1, chapters + 1):
            folder = root / str(spk) / str(100 + ch)
            folder.mkdir(parents=True, exist_ok=True)
            for u in range(utts):
                uid = f"{spk}-{100 + ch}-{u:04d}"
                wave, _ = burst_wave(rng, float(rng.uniform(*seconds)), sr)
                sf.write(folder / f"{uid}.flac", wave, sr)
                ids.append(uid)
    return ids


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """One finished ``syllablelm demo --tiny`` per test session (its work directory): the demo test checks it, and
    the fault tests copy it, damage the copy and rerun (tests/test_faults.py). Treat it as read-only."""
    from experiments.cli import main

    workdir = tmp_path_factory.mktemp("tiny_demo") / "demo"
    status = main(["demo", "--workdir", str(workdir), "--tiny"])
    assert status == 0, f"the tiny demo exited {status} (its logs: {workdir / 'logs'})"
    return workdir


@pytest.fixture(scope="session")
def tiny_speech_demo(tiny_demo, tmp_path_factory) -> Path:
    """``syllablelm speech-demo --tiny`` on a copy of the session's tiny demo, with the shipped vocoder and judge (the
    teacher's fine units); tests may add the log-mel run to the same workdir (its own stages and section)."""
    import shutil

    from experiments.cli import main

    wd = tmp_path_factory.mktemp("speech") / "demo"
    shutil.copytree(tiny_demo, wd, symlinks=True)
    assert main(["speech-demo", "--workdir", str(wd), "--tiny"]) == 0
    return wd


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """A small eSpeak corpus (train/dev/test + alignments), made once per test session."""
    from syllablelm.synthesis.corpus import synthesize_corpus

    out = tmp_path_factory.mktemp("synth")
    synthesize_corpus(out, num_utterances=36, seed=3, speakers=6)
    return out


# launch environments (torchrun, SLURM, NODE_RANK) a test must not inherit from the shell that runs it
LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "NODE_RANK", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
                "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NNODES", "SLURM_JOB_NAME",
                "SLURM_NODELIST", "SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.fixture
def sylboost_setup(synth_corpus, tmp_path):
    """A random tiny teacher checkpoint and boundary version 0 (uniform segments) for SylBoost tests:
    ``(corpus, tmp_path, teacher checkpoint, manifest cache, utterance ids)``."""
    from tests import sylboost_helpers as H

    cache = str(tmp_path / "cache")
    teacher = H.save_teacher(tmp_path / "teacher.ckpt")
    ids = H.write_v0(synth_corpus, tmp_path / "store", cache)
    return synth_corpus, tmp_path, teacher, cache, ids
