"""LossPred's frame labels come from the VAD-trimmed audio, as in the authors' notebook (issue 27, item 4).

The authors' facts (``ishine/SyllableLM`` ``syllablelm/Experiments.ipynb``, ``fast_get_hubert_losses``): the file is
read, rVAD gives ``start_sec, end_sec``, the audio is cut to ``audio[:, int(start_sec * sr):int(end_sec * sr)]``;
HuBERT-Base layer-9 features of *that cut audio* are assigned by ``ApplyKmeans(hubert_base_ls960_L9_km500.bin)``,
``T = len(labels)``; HuBERT-Large runs on the same cut audio, so label ``i`` scores the Large model's frame ``i``, and
the boundaries are put back in file time by ``sec_shift = start_sec`` (frame ``i`` of the cut = file time
``start_sec + 0.02 i``). The rule restated here: the label of frame ``i`` of the trim is the label model (features +
nearest centroid) applied to the trimmed samples alone; it belongs to frame ``first + i`` of the wave. Features with
context (attention; GroupNorm over time in the first conv) change some labels against the whole file's labels
sliced to the trim, the old behaviour (``losspred.labels: whole_file``).
"""
from __future__ import annotations

import functools

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from datamodules.label_store import LabelStore
from datamodules.speech import SpeechDataModule
from experiments.cli import main
from lightning_modules.teacher import LossPredConfig, TeacherModule
from syllablelm.audio.io import read_audio
from syllablelm.boundaries.losspred import (
    LossPredOptions,
    losspred_cut,
    losspred_matrices,
    speech_trim,
    trim_labels,
)
from syllablelm.checkpoints import load_encoder
from syllablelm.models.hubert import TeacherConfig
from syllablelm.units.frame_labels import FrameLabeler, mfcc_features
from tests import sylboost_helpers as H
from tests.conftest import burst_wave, make_librispeech

HOP, FIELD = 320, 400  # HuBERT's CNN: frame i covers samples [320 i, 320 i + 400)
K = 12
LAYER = 1
FAST = {"gap": 52, "exact_when_fits": False, "forward_batch": 64}


def trimmed_samples(wave: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """The samples of frames ``first .. last - 1``: from 320 first to the end of frame last - 1."""
    return wave[HOP * first: HOP * (last - 1) + FIELD]


def nearest(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """k-means assignment in float64: the centroid at the smallest squared Euclidean distance."""
    d = ((features[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(1)


def mfcc_labeler(num_labels: int = 20, seed: int = 0) -> FrameLabeler:
    """A label model for tests that need one: MFCCs + centroids drawn from MFCC frames of a burst wave."""
    rng = np.random.default_rng(seed)
    feats = mfcc_features(torch.from_numpy(burst_wave(rng, 4.0)[0])).numpy()
    return FrameLabeler(mfcc_features, feats[rng.choice(len(feats), num_labels, replace=False)])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A few burst-wave files (silent edges), a random tiny teacher's layer 1 as the label model (attention and
    GroupNorm context), and `syllablelm labels` run on them: ``(corpus, store dir, checkpoint, cache)``."""
    tmp = tmp_path_factory.mktemp("losspred_labels")
    corpus = tmp / "corpus"
    make_librispeech(corpus, speakers=1, utts=3, seconds=(1.0, 1.5), seed=4)
    ckpt = H.save_teacher(tmp / "label_model.ckpt", seed=2)
    cache = str(tmp / "cache")
    assert main(["labels", "--data", str(corpus), "--out", str(tmp / "labels"), "--features", "teacher",
                 "--checkpoint", str(ckpt), "--layer", str(LAYER), "--num-clusters", str(K), "--fit-hours", "0.1",
                 "--manifest-cache", cache, "--device", "cpu"]) == 0
    return corpus, tmp / "labels", ckpt, cache


@functools.lru_cache(maxsize=2)
def encoder_of(ckpt):
    return load_encoder(ckpt, layer=LAYER).eval()


def direct_labels(ckpt, centroids: np.ndarray, wave: torch.Tensor) -> np.ndarray:
    """The label model applied to exactly ``wave``, restated: the layer's features, then the nearest centroid."""
    with torch.no_grad():
        feats = encoder_of(ckpt)(wave[None])[0][0].numpy()
    return nearest(feats, centroids)


def datamodule(corpus, store, cache, batch_size: int = 4) -> SpeechDataModule:
    dm = SpeechDataModule(predict_dirs=[str(corpus)], label_dir=str(store), manifest_cache=cache, num_workers=0,
                          batch_size=batch_size)
    dm.setup("predict")
    return dm


def losspred_module(**losspred) -> TeacherModule:
    """A 1-layer LossPred teacher over the K labels; strict packing 52 frames apart keeps the CPU cost down (52
    forwards per utterance)."""
    torch.manual_seed(0)
    return TeacherModule(network=TeacherConfig.tiny(num_labels=K, num_hidden_layers=1),
                         losspred=LossPredConfig(**{**FAST, **losspred})).eval()


def waves_of(batch) -> list[torch.Tensor]:
    return [batch["waves"][b, : int(batch["lengths"][b])] for b in range(len(batch["ids"]))]


def rows_with_trim_labels(ckpt, centroids, batch) -> tuple[torch.Tensor, int]:
    """Each wave's label row holding, at frames first .. last - 1, the labels of its trimmed samples computed
    directly (-100 elsewhere); and how many of them differ from the stored whole-file labels there."""
    rows, differ = torch.full_like(batch["labels"], -100), 0
    for b, wave in enumerate(waves_of(batch)):
        first, last, _ = speech_trim(wave)
        assert first > 0 and last < (len(wave) - FIELD) // HOP + 1  # silence at both edges was trimmed
        lab = direct_labels(ckpt, centroids, trimmed_samples(wave, first, last))
        assert len(lab) == last - first
        rows[b, first:last] = torch.from_numpy(lab)
        differ += int((batch["labels"][b, first:last].numpy() != lab).sum())
    return rows, differ


def test_the_store_records_its_label_model_and_it_reproduces_the_stored_labels(labelled):
    corpus, store_dir, ckpt, cache = labelled
    store = LabelStore(store_dir)
    meta = store.manifest(0)["meta"]
    assert (meta["features"], meta["checkpoint"], meta["layer"]) == ("teacher", str(ckpt), LAYER)
    centroids = np.load(store.version_dir(0) / "kmeans.npy")
    labeler = store.labeler(0)
    assert labeler.num_labels == K == len(centroids)
    stored = store.load(0)
    dm = datamodule(corpus, store_dir, cache)
    for e in dm.manifest("predict").entries:
        wave = read_audio(e.path)
        direct = direct_labels(ckpt, centroids, wave)  # files under 30 s: labelled in one piece
        assert np.array_equal(stored[e.id], direct) and np.array_equal(labeler(wave).numpy(), direct)


def test_losspred_scores_the_labels_of_the_trimmed_wave(labelled):
    """What LossPred uses (the module, through the Trainer and its DataModule's label store) equals LossPred fed
    the directly computed labels of each trim at frames first + i; the stored whole-file labels differ there."""
    corpus, store_dir, ckpt, cache = labelled
    centroids = np.load(LabelStore(store_dir).version_dir(0) / "kmeans.npy")
    dm = datamodule(corpus, store_dir, cache)
    batch = next(iter(dm.predict_dataloader()))
    rows, differ = rows_with_trim_labels(ckpt, centroids, batch)
    assert differ > 0  # context changes labels: the test can tell the two sources apart

    module = losspred_module()
    assert module.losspred_config.labels == "trimmed" and module.labeler is None  # the default
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    (pred,) = trainer.predict(module, dm)
    assert module.labeler is not None  # found through the DataModule's label_dir in setup
    whole = LossPredOptions(**FAST, labels="whole_file")
    theirs = losspred_matrices(module.teacher, waves_of(batch), rows, options=whole)
    assert pred["ids"] == batch["ids"]
    for got, C, (first, regions), offset in zip(pred["segments"], theirs.matrices, theirs.trims, batch["offsets"]):
        assert np.array_equal(got, losspred_cut(C, first, regions, options=whole)[0] + float(offset))

    old = losspred_matrices(module.teacher, waves_of(batch), batch["labels"], options=whole)
    assert theirs.lengths == old.lengths
    assert not all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(theirs.matrices, old.matrices))
    # the named option keeps the old behaviour: the batch's stored labels, sliced to the trim in the core
    waves, labels, labeler = losspred_module(labels="whole_file")._utterances(batch)
    assert labels is batch["labels"] and labeler is None


def test_label_i_of_the_trim_is_frame_first_plus_i():
    """A frame-local label model (each frame's own log energy, quantised) labels the trim exactly as the whole
    wave at frames first .. last - 1: label i of the trim sits at frame first + i, not one frame off."""
    def log_energy(wave: torch.Tensor) -> torch.Tensor:  # (S,) -> (T, 1), frame i = samples [320 i, 320 i + 400)
        frames = wave.unfold(0, FIELD, HOP)
        return torch.log(frames.pow(2).mean(-1) + 1e-8)[:, None]

    labeler = FrameLabeler(log_energy, np.linspace(-18.0, -4.0, K, dtype=np.float32)[:, None])
    rng = np.random.default_rng(7)
    wave = burst_wave(rng, 3.3)[0]
    wave[wave != 0] *= np.linspace(0.05, 3.0, int((wave != 0).sum())).astype(np.float32)  # energy varies
    wave = torch.from_numpy(wave)
    first, last, _ = speech_trim(wave)
    whole = labeler(wave)
    trim = trim_labels(trimmed_samples(wave, first, last), first, last, None, labeler)
    assert first > 0 and torch.equal(trim, whole[first:last])
    assert not torch.equal(trim[1:], whole[first:last - 1]) and not torch.equal(trim[:-1], whole[first + 1:last])

    teacher = losspred_module().teacher
    ours = losspred_matrices(teacher, [wave], labeler=labeler, options=LossPredOptions(**FAST))
    sliced = losspred_matrices(teacher, [wave], [whole], options=LossPredOptions(**FAST, labels="whole_file"))
    assert ours.lengths == sliced.lengths == [last - first] and ours.trims[0][0] == first
    torch.testing.assert_close(ours.matrices[0], sliced.matrices[0], rtol=0, atol=0, equal_nan=True)


def test_labels_are_float32_under_autocast():
    """The label model runs in float32 (as the label store's labels) whatever autocast LossPred runs under."""
    seen = []

    def probed_mfcc(wave: torch.Tensor) -> torch.Tensor:  # records the dtype a matmul gets inside the label model
        seen.append(torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype)
        return mfcc_features(wave)

    reference = mfcc_labeler()
    labeler = FrameLabeler(probed_mfcc, reference.kmeans.centroids)
    wave = torch.from_numpy(burst_wave(np.random.default_rng(2), 2.0)[0])
    first, last, _ = speech_trim(wave)
    trimmed = trimmed_samples(wave, first, last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16  # autocast is on out here
        under = trim_labels(trimmed, first, last, None, labeler)
    assert seen == [torch.float32]
    assert torch.equal(under, reference(trimmed)) and under.dtype == torch.long and len(under) == last - first


def test_trimmed_labels_need_a_label_model(labelled):
    corpus, store_dir, ckpt, cache = labelled
    wave = torch.from_numpy(burst_wave(np.random.default_rng(1), 1.5)[0])
    teacher = losspred_module().teacher
    with pytest.raises(ValueError, match="labeler="):
        losspred_matrices(teacher, [wave], [torch.zeros(80, dtype=torch.long)])
    with pytest.raises(ValueError, match="whole_file"):
        losspred_matrices(teacher, [wave], labeler=mfcc_labeler(K), options=LossPredOptions(labels="whole_file"))
    with pytest.raises(ValueError, match="must be one of"):
        LossPredOptions(labels="sliced")
    batch = next(iter(datamodule(corpus, store_dir, cache, batch_size=1).predict_dataloader()))
    with pytest.raises(ValueError, match="use_label_store"):
        losspred_module().losspred(batch)
    module = losspred_module()
    module.use_label_store(str(store_dir))  # without a trainer: as the demo's figure does
    assert len(module.losspred(batch)["segments"]) == len(batch["ids"])
    # a DataModule without a label store cannot serve the trimmed default
    bare = SpeechDataModule(predict_dirs=[str(corpus)], manifest_cache=cache, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    with pytest.raises(ValueError, match="label_dir"):
        trainer.predict(losspred_module(), bare)


def test_the_label_model_is_found_from_the_labelling_runs_directory(labelled, tmp_path, monkeypatch):
    """Recorded relative paths resolve from the labelling run's working directory; a missing one is an error
    that names the version and the file."""
    corpus, _, ckpt, cache = labelled
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    (tmp_path / "run" / "model.ckpt").write_bytes(ckpt.read_bytes())
    assert main(["labels", "--data", str(corpus), "--out", "labels", "--features", "teacher", "--checkpoint",
                 "model.ckpt", "--layer", str(LAYER), "--num-clusters", "4", "--fit-hours", "0.1",
                 "--manifest-cache", cache, "--device", "cpu"]) == 0
    monkeypatch.chdir(tmp_path)
    store = LabelStore(tmp_path / "run" / "labels")
    assert store.manifest(0)["meta"]["checkpoint"] == "model.ckpt"  # relative, as given
    assert store.labeler(0).num_labels == 4
    (tmp_path / "run" / "model.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="label version 0 .*model.ckpt"):
        store.labeler(0)
