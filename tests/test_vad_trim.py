"""SylBoost's segmenter with ``vad_trim``: cut only the energy-VAD speech span, count segments per second of it."""
import numpy as np
import pytest
import torch

from syllablelm.audio.frames import frames_to_segments
from syllablelm.audio.io import SAMPLE_RATE, speech_frame_span
from syllablelm.boundaries.segmenter import segment_frames
from syllablelm.units.tokenizer import Tokenizer
from tests import sylboost_helpers as H
from tests.conftest import burst_wave


def n_frames(wave) -> int:
    return (len(wave) - 400) // 320 + 1


def test_speech_frame_span_brackets_the_first_onset_and_last_offset():
    wave, regions = burst_wave(np.random.default_rng(3), 4.0)
    T = n_frames(wave)
    first, end = speech_frame_span(wave, SAMPLE_RATE, T)
    assert abs(first * 0.02 - regions[0][0]) <= 0.04 and first * 0.02 <= regions[0][0] + 0.01
    assert abs(end * 0.02 - regions[-1][1]) <= 0.04 and end * 0.02 >= regions[-1][1] - 0.01
    assert speech_frame_span(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, 49) == (0, 49)  # nothing detected
    assert speech_frame_span(wave, SAMPLE_RATE, T, regions=np.array([[0.5, 1.0]])) == (25, 50)


def test_spans_cut_only_inside_them_at_the_span_rate():
    torch.manual_seed(0)
    feats = [torch.randn(200, 8), torch.randn(120, 8), torch.randn(60, 8)]
    spans = [(30, 170), (0, 120), (10, 11)]  # the last is shorter than min_len: the whole utterance instead
    got = segment_frames(feats, rate_hz=6.25, spans=spans)
    assert got[0][0] == 30 and got[0][-1] == 170 and len(got[0]) - 1 == round(6.25 * 140 / 50)
    assert torch.equal(got[0], segment_frames([feats[0][30:170]], rate_hz=6.25)[0] + 30)
    assert torch.equal(got[1], segment_frames([feats[1]], rate_hz=6.25)[0])
    assert torch.equal(got[2], segment_frames([feats[2]], rate_hz=6.25)[0])
    with pytest.raises(ValueError, match="one \\(first, end\\) pair per utterance"):
        segment_frames(feats, rate_hz=6.25, spans=spans[:2])


def test_tokenizer_and_sylboost_trim_to_the_speech_span(tmp_path):
    model = H.module(H.save_teacher(tmp_path / "teacher.ckpt")).eval()
    model.segmenter.vad_trim = True
    rng = np.random.default_rng(5)
    wave = np.concatenate([np.zeros(8000, np.float32), burst_wave(rng, 3.0)[0], np.zeros(12000, np.float32)])
    regions = [(a, b) for a, b in zip(*[iter(np.flatnonzero(np.diff(np.r_[0, wave != 0, 0])) / SAMPLE_RATE)] * 2)]
    batch = {"ids": ["u"], "waves": torch.from_numpy(wave)[None], "lengths": torch.tensor([len(wave)]),
             "offsets": torch.zeros(1, dtype=torch.float64)}
    segs = model.extract_boundaries(batch)[0]
    onset, offset = regions[0][0], regions[-1][1]
    assert segs[0, 0] >= onset - 0.04 and segs[-1, 1] <= offset + 0.04  # no segment in the silent edges
    first, end = speech_frame_span(wave, SAMPLE_RATE, int(segs[-1, 1] / 0.02 + 0.5))
    assert len(segs) == int(np.floor(6.25 * (end - first) / 50 + 0.5))
    model.segmenter.vad_trim = False
    full = model.extract_boundaries(batch)[0]
    assert full[0, 0] == 0.0 and len(full) > len(segs)

    tok = Tokenizer(model.student, None, {**model.hparams.segmenter, "vad_trim": True})
    feats = tok.features(torch.from_numpy(wave))
    b = tok.boundaries([feats], [torch.from_numpy(wave)])[0]
    np.testing.assert_allclose(frames_to_segments(b.numpy()), segs)  # the same cut as the SylBoost module
    with pytest.raises(ValueError, match="pass one wave per utterance"):
        tok.boundaries([feats])


def test_delta_is_calibrated_per_second_of_the_speech_span(synth_corpus, tmp_path):
    from types import SimpleNamespace

    from callbacks.boundary_regeneration import BoundaryRegeneration
    from lightning_modules.sylboost import SylBoostModule

    cache = str(tmp_path / "cache")
    H.write_v0(synth_corpus, tmp_path / "store", cache)
    dm = H.datamodule(synth_corpus, tmp_path / "store", cache)
    dm.setup("fit")
    torch.manual_seed(1)
    model = SylBoostModule(init_from=str(H.save_teacher(tmp_path / "teacher.ckpt")), feature_layer=1,
                           segmenter={"rate_hz": None, "calibrate_to_hz": 5.0, "vad_trim": True}).eval()
    trainer = SimpleNamespace(is_global_zero=True, datamodule=dm,
                              strategy=SimpleNamespace(broadcast=lambda x, src=0: x))
    model.delta.fill_(BoundaryRegeneration(calibration_utterances=8)._calibrate(trainer, model))
    ds = dm.dataset("train")
    segments = span_seconds = file_seconds = 0.0
    for i in range(min(8, len(ds))):
        wave = ds.load(i)["wave"]
        batch = {"ids": ["u"], "waves": wave[None], "lengths": torch.tensor([len(wave)]),
                 "offsets": torch.zeros(1, dtype=torch.float64)}
        segs = model.extract_boundaries(batch)[0]
        first, end = speech_frame_span(wave.numpy(), SAMPLE_RATE, n_frames(wave))
        segments += len(segs)
        span_seconds += (end - first) * 0.02
        file_seconds += len(wave) / SAMPLE_RATE
    # the target holds per second of speech span, not per second of file (these files have silent edges)
    assert abs(segments / span_seconds - 5.0) < 0.25 and segments / file_seconds < 5.0 - 0.25
