"""Bad audio (issue 25, items 2 and 7): a float WAV with NaN samples, one with infinite samples, a 0-sample WAV and a
0-byte ``.wav`` among good files. The reader refuses each one naming the file and the problem; the manifest drops,
counts and records them; ``tokenize``, ``units``, ``labels``, ``quantize`` and training skip them (and files that
broke after the manifest was built) with their path and reason, finish the rest, write their outputs atomically and
exit with status 4; only input that is all bad fails (status 1, no output)."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.dataset import collate, is_empty, record_unreadable
from datamodules.label_store import LabelStore
from datamodules.manifest import build_manifest
from datamodules.speech import SpeechDataModule
from datamodules.unit_store import UnitStore
from experiments.cli import main
from syllablelm.audio.io import AudioError, decoded_length, read_audio
from syllablelm.runtime import outcome
from syllablelm.units.tokenizer import Tokenizer
from tests.conftest import burst_wave
from tests.test_reliability import tiny_teacher
from tests.test_teacher import fake_batch
from tests.test_tokenizer import sylboost_ckpt  # noqa: F401  (fixture: a tiny SylBoost checkpoint)

SR = 16_000
GOOD = ["1-101-0000", "1-101-0001", "1-101-0002", "1-101-0003"]
# file name -> what its problem must say
BAD = {"9-901-0000.wav": "480 NaN sample(s), the first at 0.500 s",
       "9-901-0001.wav": "10 infinite sample(s), the first at 0.250 s",
       "9-901-0002.wav": "empty (no samples)",
       "9-901-0003.wav": "unreadable audio"}


def write_corpus(root: Path) -> tuple[list[Path], dict[str, str]]:
    """Good float WAVs (1.0-1.3 s of noise bursts) and one file of each bad kind; returns the good paths and
    ``{bad path: expected problem}``."""
    good_dir, bad_dir = root / "1" / "101", root / "9" / "901"
    good_dir.mkdir(parents=True)
    bad_dir.mkdir(parents=True)
    good = []
    for k, utt in enumerate(GOOD):
        good.append(good_dir / f"{utt}.wav")
        sf.write(good[-1], burst_wave(np.random.default_rng(k), 1.0 + 0.1 * k)[0], SR, subtype="FLOAT")
    wave = burst_wave(np.random.default_rng(10), 1.2)[0]
    nan, inf = wave.copy(), wave.copy()
    nan[8000:8480] = np.nan
    inf[4000:4010] = np.inf
    inf[4005] = -np.inf
    sf.write(bad_dir / "9-901-0000.wav", nan, SR, subtype="FLOAT")
    sf.write(bad_dir / "9-901-0001.wav", inf, SR, subtype="FLOAT")
    sf.write(bad_dir / "9-901-0002.wav", np.zeros(0, np.float32), SR, subtype="FLOAT")
    (bad_dir / "9-901-0003.wav").write_bytes(b"")
    return good, {str(bad_dir / name): problem for name, problem in BAD.items()}


def poison(path: Path) -> Path:
    """NaN samples written into a good float WAV with its size and mtime kept: a file that went bad after the
    manifest was built (the manifest cache still lists it as good)."""
    st = path.stat()
    data, sr = sf.read(path, dtype="float32")
    data[1600:1700] = np.nan
    sf.write(path, data, sr, subtype="FLOAT")
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path


@pytest.fixture(autouse=True)
def no_skips_yet():
    outcome.reset_skips()
    yield
    outcome.reset_skips()


@pytest.fixture
def skip_log():
    """The warnings of :func:`syllablelm.runtime.outcome.record_skip` (one line per skipped path and place)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, handler = logging.getLogger(outcome.__name__), Keep(logging.WARNING)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def recorded(where: str) -> dict[str, str]:
    return {s.path: s.reason for s in outcome.skipped() if s.where == where}


def assert_problems(found: dict[str, str], expected: dict[str, str]) -> None:
    assert set(found) == set(expected)
    for path, problem in found.items():
        assert expected[path] in problem, (path, problem)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path], dict[str, str]]:
    root = tmp_path_factory.mktemp("bad_audio") / "corpus"
    good, bad = write_corpus(root)
    return root, good, bad


@pytest.fixture(scope="module")
def tokenizer(corpus, sylboost_ckpt, tmp_path_factory):  # noqa: F811
    """``quantize`` on a copy of the corpus whose manifest was cached before one good file went bad: the bad files
    are dropped by the manifest, the poisoned one is skipped by the feature pass, the checkpoint is written."""
    tmp = tmp_path_factory.mktemp("bad_audio_quantize")
    data, cache = tmp / "corpus", str(tmp / "cache")
    shutil.copytree(corpus[0], data)
    build_manifest(data, cache_dir=cache, progress=False)
    poisoned = poison(data / "1" / "101" / f"{GOOD[1]}.wav")
    outcome.reset_skips()
    out = tmp / "tokenizer.ckpt"
    assert main(["quantize", "--checkpoint", str(sylboost_ckpt), "--data", str(data), "--k", "8", "--k-merged", "4",
                 "--hours", "1", "--out", str(out), "--manifest-cache", cache, "--device", "cpu"]) == 4
    assert_problems(recorded("manifest"), {p.replace(str(corpus[0]), str(data)): w for p, w in corpus[2].items()})
    assert_problems(recorded("quantize"), {str(poisoned): "100 NaN sample(s), the first at 0.100 s"})
    return out


# ---- the reader ---------------------------------------------------------------------------------------------
def test_the_reader_refuses_bad_audio_naming_the_file_and_the_problem(corpus):
    _, good, bad = corpus
    for path, problem in bad.items():
        for read in (read_audio, decoded_length):
            with pytest.raises(AudioError) as err:
                read(path)
            assert err.value.path == path and problem in err.value.problem and str(err.value).startswith(path)
    nan = next(p for p in bad if p.endswith("0000.wav"))
    # decoded block by block (50 ms blocks): counts over the whole file, the first in file time
    with pytest.raises(AudioError, match=r"480 NaN sample\(s\), the first at 0.500 s"):
        decoded_length(nan, block_seconds=0.05)
    with pytest.raises(AudioError, match=r"80 NaN sample\(s\), the first at 0.525 s"):
        read_audio(nan, offset=0.525)  # a region: what it holds, in seconds of the file
    assert len(read_audio(nan, duration=0.5)) == 8000  # the samples before them are fine
    assert len(read_audio(good[0])) == decoded_length(good[0], block_seconds=0.1) == 16000
    with pytest.raises(AudioError, match=r"no samples from 2.000 s to the end \(the file has 1.000 s\)"):
        read_audio(good[0], offset=2.0)


# ---- the manifest and the DataModule --------------------------------------------------------------------------
def test_the_manifest_drops_counts_and_records_bad_files_also_from_its_cache(corpus, tmp_path, monkeypatch, caplog,
                                                                               skip_log):
    root, good, bad = corpus
    cache = str(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="datamodules.manifest"):
        m = build_manifest(root, cache_dir=cache, progress=False)
    assert [e.id for e in m.entries] == GOOD
    assert_problems(m.skipped, bad)
    assert_problems(recorded("manifest"), bad)
    assert "skipped 4 of 8 audio files" in caplog.text
    assert all(any(path in line and "(manifest)" in line for line in skip_log) for path in bad)
    outcome.reset_skips()  # a later command in this process: its rescan reads the verdicts from the cache
    import datamodules.manifest_cache as mod

    monkeypatch.setattr(mod, "_check", lambda *a: pytest.fail("the cache was not used"))
    again = build_manifest(root, cache_dir=cache, progress=False)
    assert again.entries == m.entries and again.skipped == m.skipped
    assert_problems(recorded("manifest"), bad)


def test_the_datamodule_drops_bad_files_and_training_skips_one_that_broke_later(corpus, tmp_path, skip_log):
    data, cache = tmp_path / "corpus", str(tmp_path / "cache")
    shutil.copytree(corpus[0], data)
    dm = SpeechDataModule(train_dirs=[str(data)], batch_size=4, num_workers=0, manifest_cache=cache)
    dm.setup("fit")
    assert [e.id for e in dm.manifest("train").entries] == GOOD
    assert_problems(recorded("manifest"), {p.replace(str(corpus[0]), str(data)): w for p, w in corpus[2].items()})
    broken = poison(data / "1" / "101" / f"{GOOD[2]}.wav")
    dm = SpeechDataModule(train_dirs=[str(data)], batch_size=4, num_workers=0, manifest_cache=cache)
    dm.setup("fit")  # from the cache: the poisoned file is still listed
    ds = dm.dataset("train")
    assert [e.id for e in ds.entries] == GOOD
    mixed = ds[(0, [0, 1, 2, 3])]
    assert mixed["ids"] == [GOOD[0], GOOD[1], GOOD[3]] and mixed["unreadable"] == [str(broken)]
    assert torch.isfinite(mixed["waves"]).all()  # the NaN never reaches a batch
    assert record_unreadable(mixed) == [str(broken)] and record_unreadable(ds[(0, [0])]) == []
    assert mixed["unreadable_problems"] == ["non-finite audio: 100 NaN sample(s), the first at 0.100 s"]
    assert recorded("training") == {str(broken): mixed["unreadable_problems"][0]}  # the reader's own reason

    # a batch with no readable file left, through Lightning's loop: a skipped step that names the file
    outcome.reset_skips()
    empty = ds[(0, [2])]
    assert is_empty(empty) and empty["unreadable"] == [str(broken)]
    loader = torch.utils.data.DataLoader([fake_batch(seconds=(1.0,), seed=0), empty], batch_size=None,
                                         collate_fn=lambda b: b)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(tiny_teacher(), train_dataloaders=loader)
    assert trainer.global_step == 2 and float(trainer.callback_metrics["train/skipped_batches"]) == 1.0
    assert mixed["unreadable_problems"] == ["non-finite audio: 100 NaN sample(s), the first at 0.100 s"]
    assert recorded("training") == {str(broken): mixed["unreadable_problems"][0]}  # the reader's own reason
    assert any(str(broken) in line and "(training)" in line for line in skip_log)
    assert collate([], [])["unreadable"] == []


# ---- tokenize -------------------------------------------------------------------------------------------------
def test_tokenize_skips_bad_files_and_writes_the_rest(corpus, tokenizer, tmp_path, capsys, skip_log):
    root, good, bad = corpus
    out = tmp_path / "out" / "units.jsonl"
    assert main(["tokenize", "--checkpoint", str(tokenizer), "--input", str(root), "--output", str(out),
                 "--device", "cpu"]) == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in good]  # complete: every good file, no bad one
    assert all(len(r["units"]) == len(r["segments"]) > 0 for r in rows)
    assert os.listdir(out.parent) == ["units.jsonl"]  # written atomically: no temporary file left
    assert_problems(recorded("tokenize"), bad)
    for path, problem in bad.items():  # a warning per bad file: its path and its reason
        assert any(path in line and problem in line for line in skip_log), path
    err = capsys.readouterr().err
    assert "syllablelm: skipped 4 input file(s) (4 by tokenize)" in err
    # the same units as the files alone
    tok = Tokenizer.from_pretrained(tokenizer)
    segments, units = tok(good[0])
    assert rows[0]["units"] == units.tolist() and np.allclose(rows[0]["segments"], np.round(segments, 4))


def test_tokenize_with_only_bad_files_fails_and_writes_nothing(corpus, tokenizer, tmp_path, capsys):
    out = tmp_path / "units.jsonl"
    bad = sorted(corpus[2])
    assert main(["tokenize", "--checkpoint", str(tokenizer), "--input", *bad, "--output", str(out),
                 "--device", "cpu"]) == 1
    assert not out.exists() and os.listdir(tmp_path) == []  # not even an empty file
    assert "none of the 4 audio files could be read" in capsys.readouterr().err
    assert_problems(recorded("tokenize"), corpus[2])
    outcome.reset_skips()
    out.write_text("an earlier run's output\n")  # a failed run leaves an earlier output as it was
    assert main(["tokenize", "--checkpoint", str(tokenizer), "--input", bad[2], bad[3], "--output", str(out),
                 "--device", "cpu"]) == 1
    assert out.read_text() == "an earlier run's output\n"


def test_tokenize_stopped_by_an_error_leaves_no_output(corpus, tokenizer, tmp_path, monkeypatch, capsys):
    calls = []
    real = Tokenizer.__call__

    def crash_on_the_second(self, audio, *a, **k):
        calls.append(audio)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(self, audio, *a, **k)

    monkeypatch.setattr(Tokenizer, "__call__", crash_on_the_second)
    out = tmp_path / "units.jsonl"
    assert main(["tokenize", "--checkpoint", str(tokenizer), "--input", str(corpus[0]), "--output", str(out),
                 "--device", "cpu"]) == 1
    assert not out.exists() and os.listdir(tmp_path) == []  # the first file's line was never visible
    assert f"{corpus[1][1]}: tokenizing failed (RuntimeError: out of memory)" in capsys.readouterr().err


# ---- units and labels -----------------------------------------------------------------------------------------
def _copy_with_cached_manifest(corpus, tmp_path) -> tuple[Path, str, Path, dict[str, str]]:
    """A copy of the corpus whose manifest is cached before one good file (GOOD[1]) goes bad: returns the copy,
    the cache, the poisoned file and the bad files' expected problems in the copy."""
    data, cache = tmp_path / "corpus", str(tmp_path / "cache")
    shutil.copytree(corpus[0], data)
    build_manifest(data, cache_dir=cache, progress=False)
    poisoned = poison(data / "1" / "101" / f"{GOOD[1]}.wav")
    outcome.reset_skips()
    return data, cache, poisoned, {p.replace(str(corpus[0]), str(data)): w for p, w in corpus[2].items()}


def test_units_skips_bad_files_and_lists_them_in_the_version(corpus, tokenizer, tmp_path, capsys):
    data, cache, poisoned, bad = _copy_with_cached_manifest(corpus, tmp_path)
    store_dir = tmp_path / "units"
    assert main(["units", "--checkpoint", str(tokenizer), "--data", str(data), "--out", str(store_dir),
                 "--manifest-cache", cache, "--shards", "2", "--batch-size", "4", "--device", "cpu"]) == 4
    store = UnitStore(store_dir)
    assert store.is_complete(0)
    assert sorted(store.load(0)) == [GOOD[0], GOOD[2], GOOD[3]]
    skipped = store.manifest(0)["meta"]["skipped"]
    assert_problems(skipped, {**bad, str(poisoned): "100 NaN sample(s), the first at 0.100 s"})
    assert_problems(recorded("manifest"), bad)
    assert_problems(recorded("units"), {str(poisoned): "100 NaN"})
    assert "skipped 5 input file(s) (4 by manifest, 1 by units)" in capsys.readouterr().err
    # the same units as a run without the bad file
    tok = Tokenizer.from_pretrained(tokenizer)
    segments, units = tok(data / "1" / "101" / f"{GOOD[0]}.wav")
    assert np.array_equal(store.load(0)[GOOD[0]][1], units)


def test_labels_skips_bad_files_and_lists_them_in_the_version(corpus, tmp_path, capsys):
    data, cache, poisoned, bad = _copy_with_cached_manifest(corpus, tmp_path)
    store_dir = tmp_path / "labels"
    assert main(["labels", "--data", str(data), "--out", str(store_dir), "--features", "mfcc", "--num-clusters", "4",
                 "--manifest-cache", cache, "--device", "cpu"]) == 4
    store = LabelStore(store_dir)
    assert store.is_complete(0)
    labels = store.load(0)
    assert sorted(labels) == [GOOD[0], GOOD[2], GOOD[3]] and all(len(v) > 0 for v in labels.values())
    assert_problems(store.manifest(0)["meta"]["skipped"], {**bad, str(poisoned): "100 NaN sample(s)"})
    assert_problems(recorded("labels"), {str(poisoned): "100 NaN"})  # in the k-means sample and its shard: once
    assert "skipped 5 input file(s) (4 by manifest, 1 by labels)" in capsys.readouterr().err
