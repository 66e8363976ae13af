"""Importing the authors' released SylBoost models (syllablelm/units/released.py), on fake files in the release's
formats.

The fake release: a ``.pth`` dict ``{"model_seg": {"model." + fairseq data2vec 2.0 key: fp16 tensor}}`` at the real
shapes (768 wide, 4 prenet + 8 main blocks, the pretraining decoder's keys too), ``*_kmeans.npy`` (64, 768) float32
and ``*_agglom.npy`` (64,) int64 onto 16 units. The reference below re-implements the authors' inference
(extract_units.py) plainly: their ``out_layer=-2`` block loop, their DP over "at most j segments" and binary rate
search, drop-edge pooling, per-vector standardisation with the unbiased std, nearest centroid, agglom, dedup.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from experiments.cli import main as cli_main
from syllablelm.boundaries.mincut import sse_segment
from syllablelm.checkpoints import CheckpointError
from syllablelm.checkpoints.fairseq_data2vec2 import fairseq_key
from syllablelm.checkpoints.tokenizer_file import FORMAT as TOKENIZER_FORMAT
from syllablelm.checkpoints.tokenizer_file import KEYS as TOKENIZER_KEYS
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder
from syllablelm.units import released
from syllablelm.units.released import (
    RELEASED_ENCODER_CONFIG,
    RELEASED_SYLBOOST,
    import_released_sylboost,
    released_preset,
)
from syllablelm.units.tokenizer import Tokenizer

from .conftest import burst_wave

A = "modality_encoders.AUDIO."
K, K_MERGED = 64, 16
OUT_LAYER = -2  # extract_units.py


# ------------------------------------------------------------------------------- the authors' steps, plainly
def their_segment(x: np.ndarray, delta: float, quantile: float = 0.75, s: int = 35, min_hop: int = 3) -> list[int]:
    """extract_units.py efficient_extraction + get_quantile_borders_helper for one utterance, as plain loops.

    ``f[i]`` after round j = the best cost of the first i frames cut into at most j segments (their running
    total keeps ``f[0] = 0`` every round); ``back[i, j]`` the last segment's length, the shortest on a tie (the
    first index torch.min returns). Segment cost = sum of squared deviations from its mean / D."""
    n, D = x.shape
    s = min(n, s)
    m = int(1 / .10 / 50. * n)

    def cost(a, b):
        seg = x[a:b]
        return float(((seg - seg.mean(0)) ** 2).sum() / D)

    f = np.full(n + 1, np.inf)
    f[0] = 0.0
    back = np.zeros((n + 1, m + 1), dtype=np.int64)
    seg_cost = {}
    for j in range(1, m + 1):
        g = f.copy()
        for i in range(1, n + 1):
            best, best_k = np.inf, min_hop
            for k in range(min_hop, min(s, i) + 1):
                if (i - k, i) not in seg_cost:
                    seg_cost[i - k, i] = cost(i - k, i)
                v = f[i - k] + seg_cost[i - k, i]
                if v < best:
                    best, best_k = v, k
            g[i], back[i, j] = best, best_k
        f = g

    def walk(j):
        q, borders, costs = n, [n], []
        while q > 0:
            k = back[q, j]
            costs.append(seg_cost[q - k, q] / k)
            q, j = q - k, j - 1
            borders.append(q)
        return borders[::-1], costs

    lo, hi = m // 3, m
    best_m = lo
    while lo <= hi:
        mid = (lo + hi) // 2
        if np.quantile(walk(mid)[1], quantile) > delta:
            lo, best_m = mid + 1, mid
        else:
            hi = mid - 1
    return walk(best_m)[0]


def their_units(feats: np.ndarray, borders: list[int], kmeans: np.ndarray, agglom: np.ndarray):
    pooled = np.stack([feats[a + 1:b - 1].mean(0) for a, b in itertools.pairwise(borders)])
    pooled = (pooled - pooled.mean(-1, keepdims=True)) / pooled.std(-1, ddof=1, keepdims=True)  # torch .std
    d = (pooled ** 2).sum(-1, keepdims=True) - 2 * pooled @ kmeans.T + (kmeans ** 2).sum(-1)[None]
    clusters = agglom[d.argmin(-1)]
    starts = np.r_[True, clusters[1:] != clusters[:-1]]
    ends = np.r_[clusters[1:] != clusters[:-1], True]
    b = np.asarray(borders)
    return clusters[starts], np.stack([b[:-1][starts], b[1:][ends]], 1)


def their_features(state: dict, wave: np.ndarray) -> np.ndarray:
    """``forward(..., features_only=True, out_layer=-2)['x']``: the main-block loop stops after block index
    ``len(blocks) + out_layer``; the 4 prenet blocks always run; no final LayerNorm (post-LN)."""
    c = RELEASED_ENCODER_CONFIG
    model = Data2Vec2AudioEncoder(c).eval()
    model.load_state_dict({k: state[fairseq_key(k, c)].float() for k in model.state_dict()})
    ran = c.prenet_depth + (c.depth + OUT_LAYER) + 1  # blocks run in all
    with torch.inference_mode():
        hidden, _ = model(torch.from_numpy(wave)[None])
    assert ran == 11 and not torch.equal(hidden[ran], hidden[-1])
    return hidden[ran][0].double().numpy()


# ------------------------------------------------------------------------------------------- fake release
def fake_released_state(seed: int = 0, dtype=torch.float16) -> dict:
    """``model_seg`` of a fake release: random weights at the real shapes, fairseq names, ``model.`` prefix."""
    c = RELEASED_ENCODER_CONFIG
    torch.manual_seed(seed)
    model = Data2Vec2AudioEncoder(c)
    with torch.no_grad():
        model.alibi_scale.uniform_(0.5, 1.5)
        # block 11's output LayerNorm scale sets the feature scale: chosen so that the 6.25 Hz δ (0.0028) falls
        # inside the range of this random model's segment costs and the rate search branches both ways
        model.blocks[10].norm2.weight.fill_(0.108)
        model.blocks[10].norm2.bias.normal_(0, 0.01)
    sd = {"model." + fairseq_key(k, c): v.to(dtype) for k, v in model.state_dict().items()}
    for i in range(4):  # Decoder1d (decoder_dim 384, kernel 7, groups 16, 4 layers) + projection: ignored
        sd[f"model.{A}decoder.blocks.{i}.0.weight"] = torch.randn(384, (768 if i == 0 else 384) // 16, 7).to(dtype)
        sd[f"model.{A}decoder.blocks.{i}.0.bias"] = torch.zeros(384, dtype=dtype)
    sd[f"model.{A}decoder.proj.weight"] = torch.randn(768, 384).to(dtype)
    sd[f"model.{A}decoder.proj.bias"] = torch.zeros(768, dtype=dtype)
    return sd


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    sd = fake_released_state()
    torch.save({"model_seg": sd}, root / "SylBoost_625Hz.pth")
    rng = np.random.default_rng(0)
    np.save(root / "SylBoost_625Hz_kmeans.npy", rng.standard_normal((K, 768)).astype(np.float32))
    np.save(root / "SylBoost_625Hz_agglom.npy", rng.permutation(np.arange(K) % K_MERGED).astype(np.int64))
    audio = root / "audio"
    audio.mkdir()
    wave, _ = burst_wave(np.random.default_rng(5), 2.0)
    sf.write(audio / "utt.flac", wave, 16_000)
    files = {"model": root / "SylBoost_625Hz.pth", "kmeans": root / "SylBoost_625Hz_kmeans.npy",
             "agglom": root / "SylBoost_625Hz_agglom.npy"}
    return {"root": root, "files": files, "state": {k[len("model."):]: v for k, v in sd.items()},
            "audio": audio / "utt.flac"}


# ---------------------------------------------------------------------------------------------------- tests
def test_presets():
    assert RELEASED_SYLBOOST == {"8.33Hz": {"delta": 0.0033, "quantile": 0.75},
                                 "6.25Hz": {"delta": 0.0028, "quantile": 0.75},
                                 "5.0Hz": {"delta": 0.0019, "quantile": 0.75}}
    assert released_preset("625")["rate"] == released_preset("6.25Hz")["rate"] == "6.25Hz"
    assert released_preset("8.33")["delta"] == 0.0033 and released_preset("5.0Hz")["delta"] == 0.0019
    with pytest.raises(ValueError, match="unknown released"):
        released_preset("7Hz")
    c = RELEASED_ENCODER_CONFIG  # extract_units.py d2v2_config
    assert (c.embed_dim, c.num_heads, c.depth, c.prenet_depth, c.norm_eps, c.layer_norm_first) == \
        (768, 12, 8, 4, 1e-5, False)
    assert c.use_alibi_encoder and c.learned_alibi_scale_per_head and not c.learned_alibi_scale_per_layer
    assert not c.normalize_waveform and c.conv_pos_width == 95 and c.conv_pos_depth == 5


@pytest.mark.parametrize("n", [20, 48, 99, 180])
def test_sse_segment_is_their_rate_search(n):
    """Our DP + rate search == their loop, on features with segment structure, over δ that make the search go
    up, down and both ways."""
    rng = np.random.default_rng(n)
    lens = rng.integers(3, 13, size=n)
    means = rng.standard_normal((len(lens), 16))
    x = (np.repeat(means, lens, 0)[:n] + 0.5 * rng.standard_normal((n, 16)))
    seen = set()
    for delta in (0.0, 0.1, 0.15, 0.2, 0.22, 0.25, 0.3, 0.5, 1.0, 1e9):
        ref = their_segment(x, delta)
        ours = sse_segment(torch.from_numpy(x).float(), delta=delta, quantile=0.75, min_len=3, max_len=35,
                           max_rate=0.2).tolist()
        assert ours == ref, (n, delta)
        seen.add(len(ref) - 1)
    assert len(seen) >= 3  # the δ values reached several counts


def test_import_and_tokenize_cli_matches_their_pipeline(release, tmp_path):
    f = release["files"]
    out = tmp_path / "tok625.ckpt"
    assert cli_main(["import-sylboost", "--model", str(f["model"]), "--kmeans", str(f["kmeans"]),
                     "--agglom", str(f["agglom"]), "--rate", "6.25Hz", "--out", str(out)]) == 0
    jsonl = tmp_path / "units.jsonl"
    assert cli_main(["tokenize", "--checkpoint", str(out), "--input", str(release["audio"].parent),
                     "--output", str(jsonl), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 1

    wave, _ = sf.read(release["audio"], dtype="float32")
    feats = their_features(release["state"], wave)  # (T, 768)
    borders = their_segment(feats, RELEASED_SYLBOOST["6.25Hz"]["delta"])
    units, frames = their_units(feats, borders, np.load(f["kmeans"]).astype(np.float64), np.load(f["agglom"]))
    T = len(feats)
    assert int(0.2 * T) // 3 < len(borders) - 1 < int(0.2 * T)  # the search branched both ways
    assert len(set(units.tolist())) > 2
    assert rows[0]["units"] == units.tolist()
    np.testing.assert_allclose(rows[0]["segments"], np.round(frames * 0.02, 4), atol=1e-9)


def test_checkpoint_rebuilds_alone(release, tmp_path):
    f = release["files"]
    out = tmp_path / "tok.ckpt"
    import_released_sylboost(f["model"], f["kmeans"], f["agglom"], "8.33Hz", out)
    ckpt = torch.load(out, map_location="cpu", weights_only=True)  # plain tensors/dicts only
    assert ckpt["format"] == TOKENIZER_FORMAT and tuple(ckpt) == TOKENIZER_KEYS  # the one tokenizer format
    assert ckpt["encoder"]["layer"] == 11
    assert not ckpt["encoder"]["normalize_waveform"]
    assert ckpt["encoder_state"]["model.blocks.10.attn.qkv.weight"].dtype == torch.float16  # the release's dtype
    assert not any(k.startswith("model.blocks.11.") for k in ckpt["encoder_state"])
    for name in f.values():  # the tokenizer needs none of the released files
        name.rename(name.with_suffix(name.suffix + ".moved"))
    try:
        tok = Tokenizer.from_pretrained(out)
    finally:
        for name in f.values():
            name.with_suffix(name.suffix + ".moved").rename(name)
    assert tok.delta == 0.0033 and tok.vocab_size == K_MERGED
    c = tok.segmenter.config
    assert (c.mode, c.rate_hz, c.quantile, c.min_len, c.max_len, c.max_rate, c.vad_trim) == \
        ("delta", None, 0.75, 3, 35, 0.2, False)
    assert tok.quantizer.standardize and tok.quantizer.pooling == "drop_edge" and tok.quantizer.k == K
    assert len(tok.encoder.model.blocks) == 11 and not tok.encoder.normalize_waveform


def test_the_command_names_every_released_rate():
    from experiments import import_released

    assert import_released.RATES == tuple(RELEASED_SYLBOOST)  # its --help lists them without importing torch


def test_bad_files_name_the_file(release, tmp_path):
    f = release["files"]
    state = release["state"]
    bad = {"model." + k: v for k, v in state.items() if k != "blocks.3.attn.qkv.weight"}
    bad["model.blocks.3.attn.qkv_typo.weight"] = state["blocks.3.attn.qkv.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"model_seg": bad}, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*missing keys.*blocks\.7\.attn\.qkv\.weight.*"
                                              r"unexpected keys.*qkv_typo"):
        import_released_sylboost(path, f["kmeans"], f["agglom"], "6.25Hz", tmp_path / "x.ckpt")
    torch.save({"model": {"model." + k: v for k, v in list(state.items())[:3]}}, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*no 'model_seg'"):
        import_released_sylboost(path, f["kmeans"], f["agglom"], "6.25Hz", tmp_path / "x.ckpt")
    torch.save({"model_seg": dict(list(state.items())[:3])}, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*without the 'model\.' prefix"):
        import_released_sylboost(path, f["kmeans"], f["agglom"], "6.25Hz", tmp_path / "x.ckpt")
    np.save(tmp_path / "k.npy", np.zeros((K, 512), dtype=np.float32))
    with pytest.raises(CheckpointError, match=r"k\.npy.*dimension 512"):
        import_released_sylboost(f["model"], tmp_path / "k.npy", f["agglom"], "6.25Hz", tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_pickled_extras_load_as_trusted_file(release, tmp_path, monkeypatch):
    """A .pth that pickles more than tensors (here an argparse Namespace) fails ``weights_only`` and is read as a
    full pickle (trusted files only), with a warning."""
    import argparse

    path = tmp_path / "with_args.pth"
    torch.save({"model_seg": {"model." + k: v for k, v in release["state"].items()},
                "args": argparse.Namespace(lr=1e-4)}, path)
    f = release["files"]
    warnings = []
    monkeypatch.setattr(released.log, "warning", lambda msg, *args: warnings.append(msg % args))
    ckpt = import_released_sylboost(path, f["kmeans"], f["agglom"], "5.0Hz")
    assert len(warnings) == 1 and "full pickle" in warnings[0] and "with_args.pth" in warnings[0]
    assert ckpt["delta"] == 0.0019 and ckpt["segmenter"]["delta"] == 0.0019


def test_imported_checkpoint_rebuilds_the_sylboost_module(release, tmp_path):
    """An imported model starts a SylBoost run like any other backbone: SylBoostModule is built from the tokenizer
    checkpoint alone (``init_from``: its encoder; the segmenter and δ it records) to train on or to regenerate
    boundaries, and its student and frozen teacher are the tokenizer's encoder."""
    from lightning_modules.sylboost import SylBoostModule

    f = release["files"]
    out = tmp_path / "tok.ckpt"
    import_released_sylboost(f["model"], f["kmeans"], f["agglom"], "6.25Hz", out)
    recorded = Tokenizer.from_pretrained(out)
    assert recorded.meta["released_sylboost"]["rate"] == "6.25Hz"  # provenance, in the checkpoint's meta
    module = SylBoostModule(init_from=str(out), feature_layer=recorded.encoder.layer,
                            segmenter={**recorded.segmenter.config.to_dict(), "delta": recorded.delta}).eval()
    seg = module.boundary_segmenter()
    assert seg.config.mode == "delta" and seg.delta == 0.0028 and not seg.config.vad_trim
    assert (seg.config.min_len, seg.config.max_len, seg.config.max_rate) == (3, 35, 0.2)
    assert not module.student.normalize_waveform and module.hparams.freeze_cnn is False
    assert module.hparams.encoder == recorded.encoder.spec()  # what a SylBoost checkpoint of it will record
    tok = recorded
    wave = torch.from_numpy(sf.read(release["audio"], dtype="float32")[0])
    batch = {"ids": ["utt"], "waves": wave[None], "lengths": torch.tensor([len(wave)]),
             "offsets": torch.zeros(1, dtype=torch.float64)}
    feats = module.features(batch)[0]
    assert torch.equal(feats, tok.features(wave))
    assert torch.equal(module.teacher.model.blocks[10].attn.qkv.weight, module.student.model.blocks[10].attn.qkv.weight)
    np.testing.assert_array_equal(module.extract_boundaries(batch)[0],
                                  tok.segmenter.segments([tok.features(wave)], [wave])[0])
