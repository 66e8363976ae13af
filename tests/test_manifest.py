import logging
import os

import numpy as np
import pytest
import soundfile as sf

from datamodules.manifest import build_manifest, utterance_id
from syllablelm.audio.io import read_audio
from tests.conftest import make_librispeech


def _bad_files(folder):
    """One file of each bad kind; returns {file name: expected problem keyword}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "9-9-0001.flac").write_bytes(b"not audio at all")
    sf.write(folder / "9-9-0002.wav", np.zeros(0), 16000)  # valid header, no samples
    sf.write(folder / "9-9-0003.flac", np.zeros(800), 16000)  # 50 ms
    good = np.random.default_rng(0).standard_normal(32000) * 0.1
    sf.write(folder / "9-9-0004.flac", good, 16000)
    data = (folder / "9-9-0004.flac").read_bytes()
    (folder / "9-9-0004.flac").write_bytes(data[: len(data) // 2])  # truncated stream, intact header
    return {"9-9-0001.flac": "unreadable", "9-9-0002.wav": "empty", "9-9-0003.flac": "too short",
            "9-9-0004.flac": "unreadable"}


def test_bad_files_are_skipped_and_counted(tmp_path, cache_dir, caplog):
    ids = make_librispeech(tmp_path / "c", speakers=1, utts=3)
    expected = _bad_files(tmp_path / "c" / "9" / "9")
    with caplog.at_level(logging.WARNING):
        m = build_manifest(tmp_path / "c", min_seconds=0.5, cache_dir=cache_dir, progress=False)
    assert sorted(e.id for e in m.entries) == sorted(ids)
    assert len(m.skipped) == 4
    for path, problem in m.skipped.items():
        name = path.rsplit("/", 1)[1]
        assert expected[name] in problem, (name, problem)
    assert "skipped 4 of 7 audio files" in caplog.text and "9-9-0002.wav" in caplog.text


def test_header_only_verification_misses_truncation_but_decode_catches_it(tmp_path, cache_dir):
    _bad_files(tmp_path / "c" / "9" / "9")
    header = build_manifest(tmp_path / "c", verify="header", min_seconds=0.5, cache_dir=cache_dir, progress=False)
    assert [e.id for e in header.entries] == ["9-9-0004"]
    with pytest.raises(ValueError, match="no usable audio.*"):
        build_manifest(tmp_path / "c", verify="decode", min_seconds=0.5, cache_dir=cache_dir, progress=False)


def test_nothing_usable_is_a_clear_error(tmp_path, cache_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files found"):
        build_manifest(tmp_path / "empty", cache_dir=cache_dir, progress=False)
    with pytest.raises(FileNotFoundError, match="no such audio folder"):
        build_manifest(tmp_path / "missing", cache_dir=cache_dir, progress=False)


def test_cache_reuses_unchanged_files_and_rechecks_changed_ones(tmp_path, cache_dir, monkeypatch):
    make_librispeech(tmp_path / "c", speakers=1, utts=3)
    first = build_manifest(tmp_path / "c", cache_dir=cache_dir, progress=False)
    opened = []
    import datamodules.manifest_cache as mod

    real = mod._check
    monkeypatch.setattr(mod, "_check", lambda p, v: opened.append(os.path.basename(p)) or real(p, v))
    again = build_manifest(tmp_path / "c", cache_dir=cache_dir, progress=False)
    assert opened == [] and again.entries == first.entries
    sf.write(tmp_path / "c" / "1" / "101" / "1-101-0001.flac", np.zeros(100), 16000)  # now too short
    third = build_manifest(tmp_path / "c", cache_dir=cache_dir, min_seconds=0.5, progress=False)
    assert opened == ["1-101-0001.flac"] and len(third.entries) == 2


def test_duplicate_ids_are_an_error(tmp_path, cache_dir):
    make_librispeech(tmp_path / "a", speakers=1, utts=1)
    make_librispeech(tmp_path / "b", speakers=1, utts=1)
    with pytest.raises(ValueError, match="duplicate utterance id '1-101-0000'"):
        build_manifest([tmp_path / "a", tmp_path / "b"], cache_dir=cache_dir, progress=False)


def test_librilight_ids_are_relative_paths(tmp_path):
    root = tmp_path / "ll"
    path = root / "100" / "sea_fairies" / "01_baum.flac"
    assert utterance_id(path, root) == "100/sea_fairies/01_baum"
    assert utterance_id(root / "1" / "2" / "1-2-0003.flac", root) == "1-2-0003"


def test_resampling_and_mixdown(tmp_path):
    t = np.arange(22050) / 22050
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t + 0.5)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 22050)
    wave = read_audio(tmp_path / "s.wav")
    assert wave.shape == (16000,) and wave.dtype.__str__() == "torch.float32"
    expected = (left + right) / 2
    # energy is preserved by the mixdown + resampling (RMS of a sine is amplitude / sqrt 2)
    assert abs(float(wave[1000:-1000].pow(2).mean().sqrt()) - np.sqrt((expected ** 2).mean())) < 0.01
    part = read_audio(tmp_path / "s.wav", offset=0.25, duration=0.5)
    assert part.shape == (8000,)
