"""Stage 3: quantize -> tokenizer checkpoint -> tokenize / units / evaluate, on a synthetic corpus."""
import json
import shutil
from pathlib import Path

import lightning
import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.unit_store import UnitStore
from experiments.cli import main
from syllablelm import Tokenizer
from syllablelm.audio.io import read_audio
from syllablelm.units.quantizer import UnitQuantizer
from tests import sylboost_helpers as H


@pytest.fixture(scope="module")
def sylboost_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sylboost")
    model = H.module(H.save_teacher(tmp / "teacher.ckpt"))
    path = tmp / "sylboost.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_ckpt(synth_corpus, sylboost_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    sylboost = sylboost_ckpt
    out = tmp / "tokenizer.ckpt"
    assert main(["quantize", "--checkpoint", str(sylboost), "--data", str(synth_corpus / "train"), "--k", "32",
                 "--k-merged", "12", "--hours", "1", "--out", str(out), "--manifest-cache", str(tmp / "cache")]) == 0
    return out


def test_checkpoint_alone_rebuilds_the_tokenizer(tokenizer_ckpt, synth_corpus, tmp_path):
    lone = tmp_path / "elsewhere" / "tok.ckpt"
    lone.parent.mkdir()
    shutil.copy(tokenizer_ckpt, lone)  # no other file travels with it
    tok = Tokenizer.from_pretrained(lone)
    assert tok.vocab_size == 12 and tok.quantizer.k == 32
    path = sorted((synth_corpus / "test").rglob("*.flac"))[0]
    segments, units = tok(path)
    wave = read_audio(path).numpy()
    assert segments.shape == (len(units), 2) and units.dtype == np.int64
    assert np.all(np.diff(segments[:, 0]) > 0) and segments[-1, 1] <= len(wave) / 16000 + 1e-6
    assert np.all(units[1:] != units[:-1])  # deduplicated
    raw_segments, raw_units = tok(wave, sample_rate=16000, deduplicate=False)
    assert len(raw_units) >= len(units) and raw_segments[0, 0] == segments[0, 0]
    # arrays at another rate give the same units as the file
    resampled = tok(torch.from_numpy(np.interp(np.arange(0, len(wave), 16000 / 22050), np.arange(len(wave)),
                                               wave)), sample_rate=22050)
    assert abs(len(resampled[1]) - len(units)) <= max(2, len(units) // 10)


def test_long_recordings_in_bounded_groups_give_the_same_units(tokenizer_ckpt, synth_corpus):
    """A long recording is cut at pauses and encoded in groups of chunks; the group size never changes the
    result (the DP is exact per chunk), and results come back in file time."""
    waves = [read_audio(p).numpy() for p in sorted((synth_corpus / "train").rglob("*.flac"))[:6]]
    pause = np.zeros(8000, dtype=np.float32)
    long = np.concatenate([x for w in waves for x in (w, pause)])  # ~20 s with 0.5 s pauses
    one_group = Tokenizer.from_pretrained(tokenizer_ckpt, chunk_seconds=4.0, group_seconds=1000.0)
    per_chunk = Tokenizer.from_pretrained(tokenizer_ckpt, chunk_seconds=4.0, group_seconds=4.0)
    a, b = one_group(long, sample_rate=16000), per_chunk(long, sample_rate=16000)
    assert len(a[1]) > 10 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0][-1, 1] > len(long) / 16000 - 3.0  # the last chunks are in file time, near the end
    batch = per_chunk.batch([long, waves[0]], sample_rate=16000)  # groups span files; results stay per file
    assert np.array_equal(batch[0][1], a[1]) and np.array_equal(batch[1][1], per_chunk(waves[0], 16000)[1])


def test_quantizer_beside_a_sylboost_checkpoint(sylboost_ckpt, tokenizer_ckpt, tmp_path):
    state = torch.load(tokenizer_ckpt, weights_only=True)["quantizer"]
    shutil.copy(sylboost_ckpt, tmp_path / "plain.ckpt")  # a SylBoost checkpoint is read as a tokenizer too
    with pytest.raises(FileNotFoundError, match="no quantizer"):
        Tokenizer.from_pretrained(tmp_path / "plain.ckpt")
    UnitQuantizer(state["centroids"].numpy(), state["agglom"].numpy()).save(tmp_path / "plain.quantizer.npz")
    assert Tokenizer.from_pretrained(tmp_path / "plain.ckpt").vocab_size == 12


def test_tokenize_command_any_folder_any_rate(tokenizer_ckpt, synth_corpus, tmp_path):
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    src = sorted((synth_corpus / "dev").rglob("*.flac"))[:2]
    shutil.copy(src[0], folder / "a.flac")
    wave = read_audio(src[1]).numpy()
    sf.write(folder / "b.wav", np.stack([wave, wave], 1)[::2], 8000)  # stereo, 8 kHz
    long = np.concatenate([read_audio(p).numpy() for p in sorted((synth_corpus / "train").rglob("*.flac"))[:12]])
    sf.write(tmp_path / "in" / "long.flac", long, 16000)  # > 60 s: tokenized in chunks cut at pauses
    (tmp_path / "in" / "broken.flac").write_bytes(b"not audio")
    out = tmp_path / "units.jsonl"
    assert main(["tokenize", "--checkpoint", str(tokenizer_ckpt), "--input", str(tmp_path / "in"),
                 "--output", str(out)]) == 4  # 4: done, broken.flac skipped
    rows = {json.loads(line)["path"].rsplit("/", 1)[1]: json.loads(line) for line in out.read_text().splitlines()}
    assert set(rows) == {"a.flac", "b.wav", "long.flac"}  # the unreadable file is skipped, the rest written
    for row in rows.values():
        assert set(row) == {"path", "segments", "units"} and len(row["segments"]) == len(row["units"]) > 0
    segs = np.array(rows["long.flac"]["segments"])
    assert len(long) / 16000 > 60 and segs[-1, 1] > 60 and np.all(np.diff(segs[:, 0]) > 0)


def test_units_command_shards_cover_every_file_once(tokenizer_ckpt, synth_corpus, tmp_path):
    common = ["units", "--checkpoint", str(tokenizer_ckpt), "--data", str(synth_corpus / "dev"),
              str(synth_corpus / "test"), "--out", str(tmp_path / "units"), "--world-size", "2",
              "--manifest-cache", str(tmp_path / "cache")]
    assert main([*common, "--rank", "1"]) == 0  # rank 1 first: rank 0 then finds every shard and finalizes
    store = UnitStore(tmp_path / "units")
    assert store.versions() == []
    assert main([*common, "--rank", "0"]) == 0
    loaded = store.load(0)
    ids = {p.stem for s in ("dev", "test") for p in (synth_corpus / s).rglob("*.flac")}
    assert set(loaded) == ids and store.vocab_size(0) == 12
    assert store.manifest(0)["world_size"] == 2 and all(len(u) > 0 for _, u in loaded.values())


def test_evaluate_reports_boundaries_clustering_and_bitrates(tokenizer_ckpt, synth_corpus, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(tokenizer_ckpt), "--data", str(synth_corpus / "test"),
                 "--tune-data", str(synth_corpus / "dev"), "--alignments", str(synth_corpus / "alignments"),
                 "--out", str(out), "--manifest-cache", str(tmp_path / "cache")]) == 0
    report = json.loads(out.read_text())["tokenizer"]
    for protocol in ("syllablelm", "sdhubert"):
        assert 0 < report["boundaries"][protocol]["f1"] <= 1 and "shift" in report["boundaries"][f"{protocol}_tuned"]
    assert 0 < report["clustering"]["snmi"] <= 1 and report["clustering"]["n_pairs"] > 0
    tokens = report["tokens"]
    assert tokens["dedup_token_rate"] <= tokens["token_rate"] and tokens["nominal_bps"] > tokens["entropy_bps"] > 0


def test_frame_unit_baseline_at_25hz(synth_corpus, sylboost_ckpt, tmp_path):
    assert main(["quantize", "--checkpoint", str(sylboost_ckpt), "--data", str(synth_corpus / "dev"), "--k", "16",
                 "--k-merged", "0", "--fixed-frames", "2", "--hours", "1", "--out", str(tmp_path / "frames.ckpt"),
                 "--manifest-cache", str(tmp_path / "cache")]) == 0
    tok = Tokenizer.from_pretrained(tmp_path / "frames.ckpt")
    path = sorted((synth_corpus / "test").rglob("*.flac"))[0]
    segments, units = tok(path, deduplicate=False)
    seconds = len(read_audio(path)) / 16000
    assert tok.vocab_size == 16 and abs(len(units) / seconds - 25.0) < 1.0
    assert np.allclose(segments[:-1, 1] - segments[:-1, 0], 0.04)


def test_a_stopped_quantize_resumes_from_its_saved_parts(synth_corpus, sylboost_ckpt, tmp_path, monkeypatch):
    args = ["quantize", "--checkpoint", str(sylboost_ckpt), "--data", str(synth_corpus / "train"), "--k", "16",
            "--k-merged", "6", "--hours", "1", "--save-every", "3", "--manifest-cache", str(tmp_path / "cache")]
    n_files = len(list((synth_corpus / "train").rglob("*.flac")))
    assert main([*args, "--out", str(tmp_path / "clean.ckpt")]) == 0
    assert not (tmp_path / "clean.ckpt.pooled").exists()  # the parts go once the checkpoint exists
    calls, real, stop_at = [], Tokenizer.features, [8]

    def features(self, wave):
        calls.append(1)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt  # the run is stopped during the 8th file
        return real(self, wave)

    monkeypatch.setattr(Tokenizer, "features", features)
    out = tmp_path / "resumed.ckpt"
    assert main([*args, "--out", str(out)]) == 130  # interrupted: the status of a stopped command
    assert not out.exists() and len(list(Path(f"{out}.pooled").glob("part-*.npz"))) == 2  # files 0-5 saved
    calls.clear()
    stop_at[0] = -1
    assert main([*args, "--out", str(out)]) == 0
    assert len(calls) == n_files - 6  # only the files after the saved parts
    q_clean, q_resumed = (torch.load(p, weights_only=True)["quantizer"] for p in (tmp_path / "clean.ckpt", out))
    assert torch.equal(q_clean["centroids"], q_resumed["centroids"]) and torch.equal(q_clean["agglom"],
                                                                                     q_resumed["agglom"])
    # parts made from other weights are not reused
    stale = Path(f"{tmp_path / 'stale.ckpt'}.pooled")
    stale.mkdir()
    (stale / "key.json").write_text(json.dumps({"weights": "other"}))
    np.savez(stale / "part-000000000-000000003.npz", vectors=np.zeros((5, 4), np.float32), hours=np.float64(0.01))
    calls.clear()
    assert main([*args, "--out", str(tmp_path / "stale.ckpt")]) == 0
    assert len(calls) == n_files and not stale.exists()


def test_pair_scoring_with_a_tiny_lm(tokenizer_ckpt, tmp_path):
    from experiments.pairs import main as make_pairs
    from lightning_modules.speechlm import SpeechLMModule
    from syllablelm.evaluation.lm_scoring import score_pairs
    from syllablelm.models.gpt import GPTConfig

    assert make_pairs(["--out", str(tmp_path / "pairs"), "--num-pairs", "4", "--seed", "1",
                       "--sets", "lexical,syntactic"]) == 0
    torch.manual_seed(0)
    lm = SpeechLMModule(network=GPTConfig.tiny(vocab_size=12, block_size=256))
    torch.save({"state_dict": lm.state_dict(), "hyper_parameters": dict(lm.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "lm.ckpt")
    result = score_pairs(str(tmp_path / "lm.ckpt"), Tokenizer.from_pretrained(tokenizer_ckpt), str(tmp_path / "pairs"))
    assert set(result) == {"lexical", "syntactic"}
    for res in result.values():
        assert res["num_pairs"] == 4
        for mode in ("summed", "normalised"):
            assert 0.0 <= res[mode]["all"]["accuracy"] <= 1.0 and res[mode]["chance"] == 0.5
    wrong = SpeechLMModule(network=GPTConfig.tiny(vocab_size=13, block_size=256))
    torch.save({"state_dict": wrong.state_dict(), "hyper_parameters": dict(wrong.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="vocabulary"):
        score_pairs(str(tmp_path / "wrong.ckpt"), Tokenizer.from_pretrained(tokenizer_ckpt), str(tmp_path / "pairs"))
