"""Log-mel fine units (issue 29, the CPU spectral option; GSLM's "LogMel" units): the 80-band features against a
numpy restatement, their k-means labels, the fine-unit encoder and vocoder data module that read them, the shipped
centroids, and the ``labels`` command's feature choices."""
import json
import shutil

import numpy as np
import pytest
import torch

from syllablelm.audio.frames import num_frames
from syllablelm.checkpoints.kmeans import save_kmeans_centroids
from syllablelm.units.fine import FineUnitEncoder, expand, runs
from syllablelm.units.frame_labels import FEATURE_KINDS, FrameLabeler, logmel_features, mfcc_features
from tests.conftest import REPO

SHIPPED = REPO / "experiments/pretrained/kmeans_logmel.npy"


def numpy_logmel(wave: np.ndarray, period: int = 400) -> np.ndarray:
    """The features restated: frame ``i`` = samples ``[320 i, 320 i + 400)``, times a periodic Hann window (what
    ``torch.hann_window(400)`` gives, MelSpectrogram's default window), ``|rfft|^2`` over 400 points (201 bins),
    times the 0-8 kHz HTK mel filterbank without area normalisation (MelSpectrogram's defaults), then
    ``log(max(x, 1e-5))``; float64 throughout."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(201, 0.0, 8000.0, 80, 16000, norm=None, mel_scale="htk").double().numpy()  # (201, 80)
    n = np.arange(400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / period)  # periodic: the period is 400 (399 gives the symmetric one)
    count = (wave.size - 400) // 320 + 1 if wave.size >= 400 else 0
    rows = []
    for i in range(count):
        frame = wave[320 * i:320 * i + 400].astype(np.float64) * window
        power = np.abs(np.fft.rfft(frame, n=400)) ** 2  # (201,)
        rows.append(np.log(np.maximum(power @ fb, 1e-5)))
    return np.array(rows).reshape(count, 80)


def brute_force_labels(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = ((feats[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(1)


def random_centroids(path, k: int, dim: int = 80, seed: int = 0) -> np.ndarray:
    """``k`` random centroids at levels spread over the log-mel range of :func:`loud_and_soft` (-10 .. 3), written
    as the k-means ``.npy`` files are."""
    rng = np.random.default_rng(seed)
    c = (np.linspace(-10, 3, k)[:, None] + rng.normal(0, 0.5, (k, dim))).astype(np.float32)
    save_kmeans_centroids(path, c)
    return c


def loud_and_soft(samples: int, seed: int) -> np.ndarray:
    """White noise whose gain changes every 320 samples (1e-3 .. 1): frames of many loudnesses, so random centroids
    at several levels give many different labels."""
    rng = np.random.default_rng(seed)
    gains = np.repeat(10 ** rng.uniform(-3, 0, -(-samples // 320)), 320)[:samples]
    return (rng.standard_normal(samples) * gains).astype(np.float32)


def test_logmel_features_match_a_numpy_restatement():
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(5000) * 0.1).astype(np.float32)
    wave[2000:3000] = 0.0  # frame 7 ([2240, 2640)) is silent: every band hits the 1e-5 floor
    got = logmel_features(torch.from_numpy(wave))
    assert got.shape == (15, 80) and got.dtype == torch.float32  # (5000 - 400) // 320 + 1 = 14 + 1
    ref = numpy_logmel(wave)
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-4, rtol=0)
    assert np.allclose(got[7].numpy(), np.log(1e-5))
    # the tolerance tells the windows apart: a symmetric Hann window (period 399) misses it
    assert np.abs(got.numpy() - numpy_logmel(wave, period=399)).max() > 1e-2


@pytest.mark.parametrize("length", [399, 400, 719, 720, 16371])
def test_logmel_frame_count_is_the_cnn_grid(length):
    wave = torch.from_numpy(np.random.default_rng(length).standard_normal(length).astype(np.float32))
    feats = logmel_features(wave)
    assert feats.shape == (num_frames(length), 80)
    assert feats.shape[0] == max(0, (length - 400) // 320 + 1)
    if length >= 400:  # Kaldi's MFCC refuses a wave shorter than its window
        assert feats.shape[0] == mfcc_features(wave).shape[0]
    else:
        assert feats.shape[0] == 0


def test_logmel_labeler_is_nearest_centroid_and_checks_the_width(tmp_path):
    km = tmp_path / "km80.npy"
    centroids = random_centroids(km, 9)
    wave = loud_and_soft(8000, seed=1)
    labeler = FrameLabeler.build("logmel", km)
    labels = labeler(torch.from_numpy(wave))
    assert labels.dtype == torch.long and labeler.num_labels == 9
    expected = brute_force_labels(numpy_logmel(wave), centroids)
    assert labels.tolist() == expected.tolist()
    assert len(set(expected.tolist())) > 3  # the check is not "every frame is one unit"
    # an MFCC k-means (39 dims) given to log-mel features: refused, naming the file
    mfcc_km = tmp_path / "km39.npy"
    random_centroids(mfcc_km, 5, dim=39)
    with pytest.raises(ValueError, match="km39.npy") as err:
        FrameLabeler.build("logmel", mfcc_km)
    assert "80" in str(err.value) and "39" in str(err.value)
    with pytest.raises(ValueError, match="km80.npy"):
        FrameLabeler.build("mfcc", km)


def test_fine_unit_encoder_on_logmel(tmp_path):
    km = tmp_path / "km.npy"
    centroids = random_centroids(km, 11, seed=2)
    wave = torch.from_numpy(loud_and_soft(16000, seed=3))
    enc = FineUnitEncoder.build(km, features="logmel")
    assert (enc.geometry.hop, enc.geometry.receptive_field) == (320, 400) and enc.num_units == 11
    labels = enc.labels(wave)
    assert labels.tolist() == FrameLabeler.build("logmel", km)(wave).tolist()
    assert labels.tolist() == brute_force_labels(numpy_logmel(wave.numpy()), centroids).tolist()
    assert labels.size == (16000 - 400) // 320 + 1
    units, durations = enc(wave)
    assert int(durations.sum()) == labels.size and (expand(units, durations) == labels).all()
    assert (units[1:] != units[:-1]).all()
    # pooled to 25 Hz: hop 640, one label per pair of 50 Hz frames (majority; ties to the smaller id)
    enc2 = FineUnitEncoder.build(km, features="logmel", pool=2)
    assert enc2.geometry.hop == 640 and enc2.geometry.receptive_field == 720
    pooled = enc2.labels(wave)
    assert pooled.size == -(-labels.size // 2)
    for b, p in enumerate(pooled):
        block = labels[2 * b:2 * b + 2]
        assert p == (block[0] if block.size == 1 or block[0] == block[1] else min(block))
    # no checkpoint is needed, and a teacher without one is still refused
    with pytest.raises(ValueError, match="checkpoint"):
        FineUnitEncoder.build(km, features="teacher")


def test_shipped_logmel_kmeans_is_usable(synth_corpus):
    from syllablelm.audio.io import read_audio
    from syllablelm.audio.listing import list_audio
    from syllablelm.checkpoints.kmeans import load_kmeans_centroids

    raw = np.load(SHIPPED, allow_pickle=False)
    assert raw.shape == (1000, 80) and raw.dtype == np.float32 and np.isfinite(raw).all()
    centroids = load_kmeans_centroids(SHIPPED)
    # hardly any duplicated (never assigned) centroids: the shipped file has one pair, the all-floor vector of digital
    # silence (rows 13 and 69; ties go to the smaller id, so unit 69 never occurs)
    assert len(np.unique(centroids, axis=0)) >= 990
    labeler = FrameLabeler.build("logmel", SHIPPED)
    files = list_audio(synth_corpus / "train")[:4]
    seen = set()
    for f in files:
        wave = read_audio(f)
        labels = labeler(wave)
        assert labels.numel() == num_frames(wave.numel())
        seen |= set(labels.tolist())
    assert len(seen) > 100, f"the shipped log-mel k-means labels {len(files)} utterances with {len(seen)} units"


def test_vocoder_data_module_with_logmel_units(synth_corpus, tmp_path, monkeypatch):
    from datamodules.vocoder_data import VocoderDataModule, cache_fingerprint
    from syllablelm.audio.io import read_audio
    from syllablelm.audio.listing import list_audio

    audio = tmp_path / "audio"
    audio.mkdir()
    for f in list_audio(synth_corpus / "train")[:4]:
        shutil.copy(f, audio / f.name)
    km = tmp_path / "km7.npy"
    centroids = random_centroids(km, 7, seed=4)
    cache = tmp_path / "cache" / "units.npz"
    dm = VocoderDataModule([str(audio)], str(cache), kmeans=str(km), checkpoint=None, layer=None, features="logmel",
                           dev_utterances=1, crop_frames=10, batch_size=2)
    dm.setup("fit")
    assert dm.num_units == 7 and dm.hop == 320
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1
    with np.load(cache, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        lengths, flat = z["lengths"], z["labels"]
    assert meta["features"] == "logmel" and meta["checkpoint"] is None and meta["layer"] is None
    assert meta["hop"] == 320 and meta["num_units"] == 7
    files = dm.files()
    for f, lab in zip(files, np.split(flat, np.cumsum(lengths)[:-1])):
        wave = read_audio(f)
        assert lab.tolist() == brute_force_labels(numpy_logmel(wave.numpy()), centroids).tolist(), f
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 10) and batch["wave"].shape == (2, 10 * 320)
    # the cache key tells log-mel units from a teacher's (same files, same k-means file)
    teacher_ckpt = REPO / "experiments/pretrained/teacher.ckpt"
    fp_logmel = cache_fingerprint(files, km, None, None, 1, "logmel")
    assert meta["fingerprint"] == fp_logmel
    assert fp_logmel != cache_fingerprint(files, km, teacher_ckpt, 2, 1, "teacher")
    assert fp_logmel != cache_fingerprint(files, km, None, None, 2, "logmel")  # pooling changes the units
    assert fp_logmel != cache_fingerprint(files, km, None, None, 1, "mfcc")
    # a second data module on the same cache reads it back without recomputing (same labels)
    expected = [x.tolist() for x in np.split(flat, np.cumsum(lengths)[:-1])]

    def no_encoder(*args, **kwargs):
        raise AssertionError("the fine-unit cache was recomputed")

    monkeypatch.setattr("datamodules.vocoder_data.FineUnitEncoder.build", no_encoder)
    again = VocoderDataModule([str(audio)], str(cache), kmeans=str(km), checkpoint=None, layer=None,
                              features="logmel", dev_utterances=1, crop_frames=10)
    assert [x.tolist() for x in again.load_units(files)] == expected
    # the same cache asked for pooled units is stale: recomputed (here: the patched encoder is reached)
    pooled = VocoderDataModule([str(audio)], str(cache), kmeans=str(km), checkpoint=None, layer=None,
                               features="logmel", pool=2, dev_utterances=1, crop_frames=10)
    with pytest.raises(AssertionError, match="recomputed"):
        pooled.load_units(files)
    # teacher units without a checkpoint (or a layer) are refused up front
    with pytest.raises(ValueError, match="checkpoint"):
        VocoderDataModule([str(audio)], str(cache), kmeans=str(km), checkpoint=None, features="teacher")
    with pytest.raises(ValueError, match="layer"):
        VocoderDataModule([str(audio)], str(cache), kmeans=str(km), checkpoint=str(teacher_ckpt), layer=None,
                          features="teacher")


def test_labels_command_offers_every_feature_kind():
    from experiments.labels import parser

    action = next(a for a in parser()._actions if "--features" in a.option_strings)
    assert set(action.choices) == set(FEATURE_KINDS)
    assert "logmel" in action.choices


def test_runs_round_trip_of_logmel_labels_on_speech(synth_corpus):
    """On real (synthetic) speech the labels change within an utterance and the runs invert exactly."""
    from syllablelm.audio.io import read_audio
    from syllablelm.audio.listing import list_audio

    wave = read_audio(list_audio(synth_corpus / "train")[0])
    labels = FineUnitEncoder.build(SHIPPED, features="logmel").labels(wave)
    units, durations = runs(labels)
    assert 1 < units.size < labels.size + 1 and (expand(units, durations) == labels).all()
