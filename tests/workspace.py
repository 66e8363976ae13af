"""A stand-in for the paper's working directory: LibriSpeech and LibriLight layouts of synthetic audio, and tiny
randomly initialised checkpoints in the real formats (fairseq HuBERT ``.pt`` with the pretraining head, a
joblib k-means model as fairseq's ``learn_kmeans.py`` writes it), at the paths
``experiments/configs/librispeech/pipeline.yaml`` expects.

    python -m tests.workspace /tmp/paper_ws     # then, inside it:
    syllablelm pipeline --config experiments/configs/librispeech/pipeline.yaml --dry-run

The pipeline's stage configs name each other relative to the working directory, so the workspace links this
repository's ``experiments/`` in, as a real working directory would (or run from the repository root).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.conftest import burst_wave

SR = 16_000
LIBRISPEECH = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "test-clean")
LIBRILIGHT = ("small", "medium", "large")


def _librispeech_split(root: Path, rng, first_speaker: int, speakers: int = 2, utts: int = 3) -> None:
    for spk in range(first_speaker, first_speaker + speakers):
        chapter = root / str(spk) / "100"
        chapter.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in range(utts):
            uid = f"{spk}-100-{u:04d}"
            wave, _ = burst_wave(rng, float(rng.uniform(1.5, 3.0)))
            sf.write(chapter / f"{uid}.flac", wave, SR)
            lines.append(f"{uid} SOME WORDS")
        (chapter / f"{spk}-100.trans.txt").write_text("\n".join(lines) + "\n")


def _librilight_split(root: Path, rng, first_speaker: int) -> None:
    book = root / str(first_speaker) / "some_book"
    book.mkdir(parents=True, exist_ok=True)
    wave, regions = burst_wave(rng, 6.0)
    sf.write(book / "01_chapter.flac", wave, SR)
    (book / "01_chapter.json").write_text(json.dumps({"speaker": str(first_speaker), "voice_activity": regions}))


def make_paper_workspace(root: str | Path, *, seed: int = 0) -> Path:
    import joblib
    import torch
    from sklearn.cluster import MiniBatchKMeans

    from syllablelm.checkpoints import save_fairseq_style_checkpoint
    from syllablelm.models.hubert import HubertTeacher, TeacherConfig

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i, split in enumerate(LIBRISPEECH):
        _librispeech_split(root / "LibriSpeech" / split, rng, 10 * (i + 1))
    for i, split in enumerate(LIBRILIGHT):
        _librilight_split(root / "LibriLight" / split, rng, 100 + i)
    ck = root / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
                 num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, final_dim=16, num_labels=500,
                 label_offset=4)
    save_fairseq_style_checkpoint(HubertTeacher(TeacherConfig.base(**small)), ck / "hubert_base_ls960.pt")
    save_fairseq_style_checkpoint(HubertTeacher(TeacherConfig.large(**{**small, "num_hidden_layers": 4})),
                                  ck / "hubert_large_ll60k.pt")
    from syllablelm.checkpoints import save_fairseq_style_data2vec2
    from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config

    d2v2 = Data2Vec2Config(embed_dim=32, num_heads=2, depth=8, prenet_depth=4, conv_pos_width=8, conv_pos_depth=2,
                           conv_pos_groups=2, feature_encoder_spec="[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2",
                           normalize_waveform=True)
    save_fairseq_style_data2vec2(Data2Vec2AudioEncoder(d2v2), ck / "data2vec2_base_libri.pt")
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    joblib.dump(MiniBatchKMeans(n_clusters=500, n_init=1, random_state=0, batch_size=1000).fit(x),
                ck / "hubert_base_ls960_L9_km500.bin")
    link = root / "experiments"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parents[1] / "experiments")  # configs at their documented paths
    return root


if __name__ == "__main__":
    print(make_paper_workspace(sys.argv[1]))
