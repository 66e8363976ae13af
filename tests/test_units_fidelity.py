"""The tokenizer's run settings against the authors' extractor (issue 27, items 6, 9 and 10).

What ``extract_units.py`` (AlanBaade/SyllableLM; ishine/SyllableLM at the top level) does, restated here and
never imported:

* its min-cut ``efficient_extraction(embeddings, s=35, min_hop=3, ...)`` tries segment lengths ``k`` from
  ``min_hop`` to ``s`` *inclusive* (one table row per length ``1..s``, read from row ``min_hop`` on), with ``s``
  first lowered to the utterance's length; its comment: ``s`` is 50 for LibriSpeech, 35 for LibriLight;
* ``SylBoostFeatureReader`` runs the data2vec 2.0 model cast with ``.half()`` on a GPU and feeds it ``x.half()``;
  the min-cut converts the fp16 features with ``.float()`` first;
* it runs one min-cut over whatever it is given: a whole file is one call.

The tokenizer here is a tiny data2vec 2.0 encoder written as a tokenizer checkpoint, so every test runs in seconds
on a CPU.
"""
from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from experiments import import_released, tokenize_audio, unit_commands
from experiments.cli import main
from syllablelm.boundaries import dp
from syllablelm.boundaries import segmenter as segmenter_module
from syllablelm.boundaries.mincut import sse_mincut, sse_segment
from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig, segment_frames
from syllablelm.checkpoints import CheckpointError, tokenizer_file
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config, alibi_bias
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.units.quantizer import UnitQuantizer, dedup, pool_segments, standardize
from syllablelm.units.released import import_released_sylboost
from syllablelm.units.tokenizer import Tokenizer, resolve_precision, save_tokenizer, whole_file_bytes
from tests.conftest import REPO, burst_wave
from tests.test_released import release, their_segment  # noqa: F401  (fixture: a fake release)

PIPELINES = REPO / "experiments/configs/librispeech"
SR = 16_000


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    """Bursts and pauses, as pause_chunks sees speech."""
    return burst_wave(np.random.default_rng(seed), seconds)[0]


def _save(path, encoder, segmenter, quantizer, meta=None):
    save_tokenizer(path, encoder, segmenter, quantizer, meta)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tokenizer checkpoint: a tiny data2vec 2.0 encoder, δ calibrated to 6.25 Hz with the LibriSpeech SylBoost
    lengths (3..50), 16 centroids (segment vectors of two utterances) onto 6 units. Returns its path and parts."""
    root = tmp_path_factory.mktemp("tiny_tokenizer")
    torch.manual_seed(0)
    encoder = SpeechEncoder(Data2Vec2AudioEncoder(Data2Vec2Config.tiny()), layer=3, normalize_waveform=False).eval()
    segmenter = Segmenter(SegmenterConfig(calibrate_to_hz=6.25, max_len=50))
    with torch.inference_mode():
        feats = [encoder(torch.from_numpy(_wave(8.0, s))[None])[0][0] for s in (1, 2)]
    segmenter.calibrate(feats)
    pooled = torch.cat([pool_segments(f, b) for f, b in zip(feats, segmenter.cut(feats))])  # centroids: 16 of
    pick = np.random.default_rng(0).choice(len(pooled), 16, replace=False)  # the standardised segment vectors
    quantizer = UnitQuantizer(standardize(pooled[pick]).numpy(), np.arange(16) % 6)
    return {"path": _save(root / "tokenizer.ckpt", encoder, segmenter, quantizer), "root": root,
            "encoder": encoder, "segmenter": segmenter, "quantizer": quantizer}


def _valid(result, seconds: float, vocab: int) -> None:
    segments, units = result
    assert len(units) >= 5 and segments.shape == (len(units), 2) and units.dtype == np.int64
    assert np.all(segments[:, 1] > segments[:, 0]) and np.all(segments[1:, 0] >= segments[:-1, 1] - 1e-9)
    assert segments[0, 0] >= 0 and segments[-1, 1] <= seconds + 1e-6
    assert units.min() >= 0 and units.max() < vocab


# ------------------------------------------------------------------------ item 6: the maximum segment (``s``)
def _sse(x: np.ndarray) -> float:
    return float(((x - x.mean(0)) ** 2).sum() / x.shape[1])


def _their_two_segment_cut(x: np.ndarray, s: int, min_hop: int = 3) -> list[int]:
    """The best 2-segment cut over the lengths their table holds: ``k`` in ``range(min_hop, s + 1)`` for both
    segments (``s`` lowered to the length first)."""
    n = len(x)
    s = min(n, s)
    lengths = range(min_hop, s + 1)
    costs = {k: _sse(x[:k]) + _sse(x[k:]) for k in lengths if n - k in lengths}
    return [0, min(costs, key=costs.get), n]  # ties: the shortest first segment, as torch.min's first index


def test_max_segment_is_inclusive_as_the_authors_s():
    """70 frames: 36 of one vector then 34 of another. With ``s = 36`` the cut falls between them; with 35 a
    36-frame segment is not allowed, so the best cut is 35 + 35 — a segment of exactly ``s`` frames is allowed."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(8), rng.standard_normal(8)
    x = np.concatenate([np.tile(a, (36, 1)), np.tile(b, (34, 1))]) + 0.01 * rng.standard_normal((70, 8))
    expected = {35: [0, 35, 70], 36: [0, 36, 70], 50: [0, 36, 70]}
    for s, want in expected.items():
        assert _their_two_segment_cut(x, s) == want
        assert sse_mincut(torch.from_numpy(x).float(), 2, min_len=3, max_len=s).tolist() == want
        # the segmenter's rate mode with k = round(1.43 * 70 / 50) = 2 segments
        assert segment_frames([torch.from_numpy(x).float()], rate_hz=1.43, max_len=s)[0].tolist() == want
    with pytest.raises(ValueError, match="cannot cover"):  # 2 x 34 < 70: no cut exists, as in their table
        sse_mincut(torch.from_numpy(x).float(), 2, min_len=3, max_len=34)


def test_max_segment_35_is_their_rate_search_with_s_35():
    """Features whose homogeneous stretches run 40-45 frames: with ``max_len = s`` the δ search gives their
    borders for s = 35 and for s = 50, no segment exceeds ``s``, and 50 lets a longer one through than 35 would;
    a max above the utterance's length is that length."""
    rng = np.random.default_rng(3)
    lens = [42, 6, 45, 9, 40, 8]
    x = np.repeat(rng.standard_normal((len(lens), 12)), lens, 0) + 0.3 * rng.standard_normal((sum(lens), 12))
    reached = set()
    for s in (35, 50):
        for delta in (0.05, 0.08, 0.12):
            ref = their_segment(x, delta, s=s)
            ours = sse_segment(torch.from_numpy(x).float(), delta=delta, quantile=0.75, min_len=3, max_len=s,
                               max_rate=0.2).tolist()
            assert ours == ref, (s, delta)
            assert max(np.diff(ours)) <= s
            reached.add((s, max(np.diff(ours))))
    assert max(m for s, m in reached if s == 50) > 35  # the LibriSpeech bound lets longer segments through
    short = torch.from_numpy(x[:30]).float()
    assert sse_segment(short, delta=0.1, max_len=35).tolist() == their_segment(x[:30], 0.1, s=35)


def test_the_tokenizer_takes_a_max_segment_and_keeps_its_delta(tiny):
    tok = Tokenizer.from_pretrained(tiny["path"], max_segment_frames=35)
    c, file_c = tok.segmenter.config, tiny["segmenter"].config
    assert c.max_len == 35 and file_c.max_len == 50
    assert tok.delta == tiny["segmenter"].delta and (c.min_len, c.quantile, c.max_rate, c.calibrate_to_hz) == \
        (file_c.min_len, file_c.quantile, file_c.max_rate, file_c.calibrate_to_hz)
    wave = torch.from_numpy(_wave(8.0, 7))
    bounds = tok.boundaries([tok.features(wave)])[0]
    assert int(bounds.diff().max()) <= 35
    with pytest.raises(ValueError, match=r"max segment of 2 frames.*min_len <= max_len"):
        Tokenizer.from_pretrained(tiny["path"], max_segment_frames=2)


def test_units_command_cuts_at_the_max_segment_and_records_how_it_ran(tiny, tmp_path):
    data = tmp_path / "audio"
    data.mkdir()
    for i in range(2):
        sf.write(data / f"utt{i}.flac", _wave(6.0, 10 + i), SR)
    out = tmp_path / "units"
    assert main(["units", "--checkpoint", str(tiny["path"]), "--data", str(data), "--out", str(out),
                 "--device", "cpu", "--variant", "authors_lm", "--max-segment-frames", "35",
                 "--manifest-cache", str(tmp_path / "cache")]) == 0
    from datamodules.unit_store import UnitStore

    store = UnitStore(out)
    run = store.manifest(0)["meta"]["tokenizer_run"]
    assert run == {"precision": "fp32", "max_segment_frames": 35, "chunk_seconds": 60.0}
    loaded = store.load(0)
    assert len(loaded) == 2
    for segments, _ in loaded.values():  # authors_lm: one unit per min-cut segment, none longer than 35 frames
        assert np.all(np.round((segments[:, 1] - segments[:, 0]) * 50) <= 35)


@pytest.mark.parametrize("name", ["pipeline.yaml", "pipeline_data2vec2.yaml"])
def test_paper_pipelines_cut_librilight_at_35_frames(name):
    """Both units steps (LibriLight and the LM's dev units) pass 35, where the SylBoost segmenter the tokenizer
    carries says 50 (its LibriSpeech setting)."""
    from experiments.pipeline import runner

    pipe = runner.load_pipeline(PIPELINES / name)
    stages = [s for s in pipe.stages if s.command == "units"]
    assert [s.name for s in stages] == ["units", "units_dev"]
    for stage in stages:
        args = unit_commands.units_parser().parse_args(stage.args)
        assert args.max_segment_frames == 35 and args.precision is None and args.chunk_seconds == 60.0
    sylboost = yaml.safe_load((PIPELINES / "sylboost.yaml").read_text())
    assert sylboost["model"]["init_args"]["segmenter"]["max_len"] == 50


# ---------------------------------------------------------------------------------------- item 9: precision
def test_precision_resolution_rule():
    assert resolve_precision("auto", "cuda") == resolve_precision(None, "cuda:1") == "fp16"  # the authors'
    assert resolve_precision("auto", "cpu") == resolve_precision(None, torch.device("cpu")) == "fp32"
    for name in ("fp32", "fp16", "bf16"):
        assert resolve_precision(name, "cpu") == resolve_precision(name, "cuda") == name
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", "cpu")
    assert unit_commands.PRECISIONS == import_released.PRECISIONS == tokenizer_file.PRECISIONS


def test_fp32_and_bf16_runs_on_the_cpu(tiny):
    """bf16: the encoder's weights and input cast (the authors' ``.half()``, in bf16), its features bf16, valid
    units; the min-cut reads those features as floats (their ``.float()``)."""
    wave = _wave(5.0, 3)
    full = Tokenizer.from_pretrained(tiny["path"])
    low = Tokenizer.from_pretrained(tiny["path"], precision="bf16")
    assert full.precision == "fp32" and low.precision == "bf16" and low.dtype == torch.bfloat16
    assert {p.dtype for p in low.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.encoder.parameters()} == {torch.float32}
    f32, f16 = full.features(torch.from_numpy(wave)), low.features(torch.from_numpy(wave))
    assert f32.dtype == torch.float32 and f16.dtype == torch.bfloat16 and f16.shape == f32.shape
    assert float((f16.float() - f32).norm() / f32.norm()) < 0.05  # the same features, rounded
    assert low.boundaries([f16])[0].tolist() == sse_segment(
        f16.float(), delta=low.delta, quantile=0.75, min_len=3, max_len=50, max_rate=0.2).tolist()
    for tok in (full, low):
        _valid(tok(wave, SR), len(wave) / SR, tok.vocab_size)


def test_fp16_on_the_cpu_runs_with_a_warning(tiny, caplog):
    caplog.set_level(logging.WARNING, logger="syllablelm.units.tokenizer")
    tok = Tokenizer.from_pretrained(tiny["path"], precision="fp16")
    assert "fp16 on the CPU" in caplog.text
    wave = _wave(4.0, 4)
    assert tok.features(torch.from_numpy(wave)).dtype == torch.float16
    _valid(tok(wave, SR), len(wave) / SR, tok.vocab_size)


def test_the_file_records_a_default_run_precision(tiny, tmp_path):
    """``precision=None`` (the commands' default): the file's record, else auto (fp32 on the CPU); an explicit
    precision wins; the API's default is fp32 whatever is recorded."""
    plain = Tokenizer.from_pretrained(tiny["path"], precision=None)
    assert plain.precision == "fp32" and tokenizer_file.RUN_PRECISION not in plain.meta
    marked = _save(tmp_path / "bf16.ckpt", tiny["encoder"], tiny["segmenter"], tiny["quantizer"],
                   tokenizer_file.precision_meta("bf16"))
    assert Tokenizer.from_pretrained(marked, precision=None).precision == "bf16"
    assert Tokenizer.from_pretrained(marked, precision="fp32").precision == "fp32"
    assert Tokenizer.from_pretrained(marked).precision == "fp32"
    auto = _save(tmp_path / "auto.ckpt", tiny["encoder"], tiny["segmenter"], tiny["quantizer"],
                 tokenizer_file.precision_meta("auto"))
    assert Tokenizer.from_pretrained(auto, precision=None).precision == "fp32"  # auto, resolved on the CPU
    bad = torch.load(marked, weights_only=True)
    bad["meta"]["run_precision"] = "fp8"
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"bad\.ckpt.*'fp8'"):
        Tokenizer.from_pretrained(tmp_path / "bad.ckpt", precision=None)
    with pytest.raises(ValueError, match="run precision must be one of"):
        tokenizer_file.precision_meta("half")


def test_import_sylboost_records_the_run_precision(release, tmp_path):  # noqa: F811
    """The import records a run precision (default auto) and stores the weights as released (fp16)."""
    f = release["files"]
    files = ["--model", str(f["model"]), "--kmeans", str(f["kmeans"]), "--agglom", str(f["agglom"]),
             "--rate", "6.25Hz"]
    assert import_released.parser().parse_args([*files, "--out", "x"]).precision == "auto"
    assert inspect.signature(import_released_sylboost).parameters["precision"].default == "auto"
    with pytest.raises(SystemExit):
        import_released.parser().parse_args([*files, "--out", "x", "--precision", "half"])
    out = tmp_path / "bf16.ckpt"
    assert main(["import-sylboost", *files, "--out", str(out), "--precision", "bf16"]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["run_precision"] == "bf16"
    assert ckpt["encoder_state"]["model.blocks.10.attn.qkv.weight"].dtype == torch.float16  # stored as released
    tok = Tokenizer.from_pretrained(out, precision=None)
    assert tok.precision == "bf16" and tok.encoder.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("command", ["tokenize", "units"])
def test_run_options_parse(command):
    parser = tokenize_audio.parser() if command == "tokenize" else unit_commands.units_parser()
    need = (["--checkpoint", "t.ckpt", "--input", "a", "--output", "o"] if command == "tokenize" else
            ["--checkpoint", "t.ckpt", "--data", "a", "--out", "o"])
    args = parser.parse_args(need)
    assert unit_commands.run_options(args) == {"precision": None, "chunk_seconds": 60.0, "max_segment_frames": None}
    args = parser.parse_args([*need, "--precision", "bf16", "--chunk-seconds", "0", "--max-segment-frames", "35"])
    assert unit_commands.run_options(args) == {"precision": "bf16", "chunk_seconds": None, "max_segment_frames": 35}
    with pytest.raises(SystemExit):
        parser.parse_args([*need, "--precision", "fp8"])
    for bad in (["--chunk-seconds", "-1"], ["--max-segment-frames", "0"]):
        with pytest.raises(SystemExit):
            unit_commands.check_run_options(parser, parser.parse_args([*need, *bad]))
    helps = {a.dest: a.help for a in parser._actions}
    assert "4.2 TiB" in helps["chunk_seconds"] and "35 for LibriLight" in helps["max_segment_frames"]
    assert "fp16 on CUDA" in helps["precision"]


# ---------------------------------------------------------------------------------------- item 10: whole files
def test_whole_file_and_chunks_agree_under_the_chunk_length(tiny):
    wave = _wave(12.0, 5)
    chunked = Tokenizer.from_pretrained(tiny["path"])  # 60 s chunks: a 12 s file is one chunk
    whole = Tokenizer.from_pretrained(tiny["path"], chunk_seconds=None)
    assert chunked.chunk_seconds == 60.0 and whole.chunk_seconds is None
    for deduplicate in (True, False):
        a, b = chunked(wave, SR, deduplicate=deduplicate), whole(wave, SR, deduplicate=deduplicate)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_whole_file_is_one_mincut_over_all_its_frames(tiny, monkeypatch):
    """A file longer than the chunk length: chunked, several utterances reach the min-cut; whole, one call over
    every frame, equal to the min-cut, pooling and merging done by hand on the whole file's features."""
    wave = np.concatenate([_wave(6.0, s) for s in range(4)])  # 24 s
    calls = []
    real = segmenter_module.sse_segment_batch

    def recording(features, lengths=None, **kw):
        calls.append(list(lengths))
        return real(features, lengths, **kw)

    monkeypatch.setattr(segmenter_module, "sse_segment_batch", recording)
    chunked = Tokenizer.from_pretrained(tiny["path"], chunk_seconds=8.0)
    chunked(wave, SR)
    assert sum(len(c) for c in calls) >= 3
    calls.clear()
    whole = Tokenizer.from_pretrained(tiny["path"], chunk_seconds=0)
    segments, units = whole(wave, SR)
    feats = whole.features(torch.from_numpy(wave))
    assert calls == [[len(feats)]]
    c = whole.segmenter.config
    bounds = sse_segment(feats.float(), delta=whole.delta, quantile=c.quantile, min_len=c.min_len,
                         max_len=c.max_len, max_rate=c.max_rate)
    by_hand = dedup(*whole.quantizer.tokenize(feats, bounds, deduplicate=False))
    assert np.array_equal(segments, by_hand[0]) and np.array_equal(units, by_hand[1])


def test_tokenize_command_whole_files_in_bf16(tiny, tmp_path):
    data = tmp_path / "audio"
    data.mkdir()
    wave = np.concatenate([_wave(5.0, 20), _wave(5.0, 21)])
    sf.write(data / "long.flac", wave, SR)
    outs = {}
    for name, extra in (("chunks", ["--chunk-seconds", "4"]), ("whole", ["--chunk-seconds", "0"]),
                        ("whole_bf16", ["--chunk-seconds", "0", "--precision", "bf16"])):
        outs[name] = tmp_path / f"{name}.jsonl"
        assert main(["tokenize", "--checkpoint", str(tiny["path"]), "--input", str(data), "--output",
                     str(outs[name]), "--device", "cpu", *extra]) == 0
    rows = {k: json.loads(v.read_text().splitlines()[0]) for k, v in outs.items()}
    direct = Tokenizer.from_pretrained(tiny["path"], chunk_seconds=None)(str(data / "long.flac"))
    assert rows["whole"]["units"] == direct[1].tolist()
    assert rows["whole"]["segments"] == np.round(direct[0], 4).tolist()
    assert rows["chunks"]["segments"] != rows["whole"]["segments"]  # 4 s chunks cut differently
    segs = np.array(rows["whole_bf16"]["segments"])
    _valid((segs, np.array(rows["whole_bf16"]["units"])), len(wave) / SR, 6)


def test_the_memory_statement_is_the_tables_sizes():
    """whole_file_bytes against the tensors themselves at a small length, then its figures for an hour (the
    --chunk-seconds help and docs quote them)."""
    seconds, heads, dim = 3.0, 12, 8
    need = whole_file_bytes(seconds, heads=heads, dim=dim, min_len=3, max_len=35, max_rate=0.2)
    T = int(seconds * 50)
    feats = torch.randn(1, T, dim)
    lengths = torch.tensor([T])
    cost = dp.sse_cost_table(feats, lengths, 3, 35)
    _, bp = dp.min_cut_dp(cost, lengths, int(0.2 * T), 3)
    assert need["cost_table"] == cost.numel() * cost.element_size()
    assert need["backpointers"] == bp.numel() * bp.element_size()
    bias = alibi_bias(heads, T)  # (1, heads, T, T) float32, alive through the whole forward
    assert need["attention"] == 3 * bias.numel() * bias.element_size()  # + a block's logits and their sum
    assert need["features"] == feats.numel() * feats.element_size()
    hour = whole_file_bytes(3600.0)
    assert round(hour["attention"] / 2**40, 1) == 4.2 and round(hour["backpointers"] / 2**30) == 6
    assert round(whole_file_bytes(60.0)["attention"] / 2**30, 1) == 1.2
    assert round(whole_file_bytes(300.0)["attention"] / 2**30) == 30
