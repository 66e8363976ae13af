"""Fidelity to the authors' SpeechLM: the decoder (their ``cluster_alan`` model: dropout positions, initialisation)
and the units it reads (their LM data loader maps one k-means id per segment through the Ward table and does not
deduplicate again). Each behaviour is restated here in a few lines of our own and compared with the package;
the earlier behaviours stay reachable as named variants (``GPTConfig.style="nanogpt"``, ``--variant dedup``)."""
from __future__ import annotations

import math

import lightning
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.unit_data import UnitsDataModule
from datamodules.unit_store import UnitStore
from lightning_modules.speechlm import SpeechLMModule
from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.units.quantizer import UnitQuantizer, deduplicates
from tests.conftest import make_librispeech

V = 10
SMALL = dict(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.1)


# ------------------------------------------------------------------------------------ the authors' decoder
def authors_forward(model: GPT, idx: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The authors' ClusterAlanModel forward, restated: table lookup plus learned positions (no dropout), then per
    pre-LN block ``x + drop(proj(attn(ln1 x)))`` with attention-weight dropout 0, and ``x + drop(mlp(ln2 x))``
    with no dropout inside the MLP; no final LayerNorm; logits against the token table. Weights read from
    ``model`` (one tensor per role; our packing of q, k, v into one matrix is the only layout assumption)."""
    E, P = model.transformer.wte.weight, model.transformer.wpe.weight
    B, T = idx.shape
    d, H = E.shape[1], model.config.n_head
    x = E[idx] + P[:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for blk in model.transformer.h:
        h = F.layer_norm(x, (d,), blk.ln_1.weight, blk.ln_1.bias)
        q, k, v = (h @ blk.attn.c_attn.weight.T).split(d, -1)  # qkv without bias
        q, k, v = (t.reshape(B, T, H, d // H).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2) / math.sqrt(d // H)).masked_fill(~causal, float("-inf")).softmax(-1)
        y = (w @ v).transpose(1, 2).reshape(B, T, d)
        x = x + F.dropout(y @ blk.attn.c_proj.weight.T + blk.attn.c_proj.bias, p, training)  # proj_drop
        h = F.layer_norm(x, (d,), blk.ln_2.weight, blk.ln_2.bias)
        h = F.gelu(h @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias) @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
        x = x + F.dropout(h, p, training)  # post_mlp_dropout
    return x @ E.T


def test_default_decoder_in_train_mode_is_the_authors_forward_mask_for_mask():
    """Same seed, same dropout draws: only if the package drops exactly where the authors do (after the attention
    projection and after the MLP, in that order; nothing on the embeddings or the attention weights)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(**SMALL)).double().train()
    idx = torch.randint(0, V + 1, (3, 11))
    torch.manual_seed(7)
    ours = model(idx)[0]
    torch.manual_seed(7)
    theirs = authors_forward(model, idx, 0.1, training=True)
    torch.testing.assert_close(ours, theirs)
    with torch.no_grad():
        assert not torch.allclose(ours, model.eval()(idx)[0])  # dropout really acted
        torch.testing.assert_close(model(idx)[0], authors_forward(model, idx, 0.1, training=False))


def _dropout_sites(monkeypatch, **style) -> tuple[dict[str, float], set[float]]:
    """Every nn.Dropout with p > 0 by name, and the dropout_p values SDPA gets in train mode."""
    model = GPT(GPTConfig.tiny(**SMALL, **style)).train()
    seen: set[float] = set()
    sdpa = F.scaled_dot_product_attention

    def spy(*args, dropout_p=0.0, **kwargs):
        seen.add(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(torch.randint(0, V, (2, 6)))
    sites = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    return sites, seen


def test_dropout_sites_of_both_styles(monkeypatch):
    authors, sdpa_p = _dropout_sites(monkeypatch)  # the default
    assert authors == {f"transformer.h.{i}.{s}": 0.1 for i in range(2) for s in ("attn.resid_dropout", "mlp.dropout")}
    assert sdpa_p == {0.0}  # attention_dropout 0
    # the named earlier variant: the same two sites, plus the embeddings and the attention weights
    nano, sdpa_p = _dropout_sites(monkeypatch, style="nanogpt")
    assert nano == {**authors, "transformer.drop": 0.1} and sdpa_p == {0.1}


def _std(t: torch.Tensor) -> float:
    return float(t.detach().double().std())


BIG = dict(vocab_size=8191, block_size=3000, n_layer=3, n_head=4, n_embd=256)  # 8192 x 256 token rows


def test_authors_initialisation():
    """Tables N(0, 1/sqrt(d)) (ClusterAlanModel's embed_weight and pe), every Linear N(0, 0.02) with zero biases
    (fairseq init_bert_params), c_proj included (no depth scaling), LayerNorms at torch's default."""
    torch.manual_seed(0)
    model, d = GPT(GPTConfig(**BIG)), 256  # the default
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    assert _std(wte) == pytest.approx(1 / math.sqrt(d), rel=0.01) and abs(float(wte.detach().mean())) < 1e-3
    assert _std(wpe) == pytest.approx(1 / math.sqrt(d), rel=0.01)
    assert model.lm_head.weight is wte  # the tied output projection is the same table
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert sum(n.endswith("c_proj") for n in linears) == 2 * model.config.n_layer
    for name, m in linears.items():
        assert _std(m.weight) == pytest.approx(0.02, rel=0.03), name
        assert m.bias is None or not m.bias.any(), name
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert bool((m.weight == 1).all()) and not m.bias.any()


def test_nanogpt_variant_keeps_the_earlier_initialisation():
    torch.manual_seed(0)
    model, L = GPT(GPTConfig(**BIG, style="nanogpt")), 3
    assert _std(model.transformer.wte.weight) == pytest.approx(0.02, rel=0.01)
    assert _std(model.transformer.wpe.weight) == pytest.approx(0.02, rel=0.01)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            want = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj") else 0.02
            assert _std(m.weight) == pytest.approx(want, rel=0.03), name


def test_nanogpt_variant_draws_the_earlier_weights_exactly():
    """Absolute sums of three tensors of the decoder as it was before ``style`` existed (seed 0, this config,
    computed with that code): the nanogpt variant consumes the random stream the same way."""
    torch.manual_seed(0)
    sd = GPT(GPTConfig.tiny(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32, style="nanogpt")).state_dict()
    before = {"transformer.wte.weight": 5.05825514963135, "transformer.h.0.attn.c_attn.weight": 49.44771853928842,
              "transformer.h.1.mlp.c_proj.weight": 32.640757779960495}
    for name, total in before.items():
        assert float(sd[name].double().abs().sum()) == pytest.approx(total, rel=1e-6), name


def test_style_is_validated_and_old_hyperparameters_get_the_default(tmp_path):
    with pytest.raises(ValueError, match="style"):
        GPTConfig(style="gpt2")
    torch.manual_seed(0)
    lm = SpeechLMModule(network=GPTConfig.tiny(vocab_size=V, n_layer=1, n_head=2, n_embd=32, style="nanogpt"))
    hp = dict(lm.hparams)
    hp["network"] = {k: v for k, v in hp["network"].items() if k != "style"}  # as saved before the field existed
    torch.save({"state_dict": lm.state_dict(), "hyper_parameters": hp,
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "old.ckpt")
    loaded = SpeechLMModule.load_from_checkpoint(tmp_path / "old.ckpt")
    assert loaded.config.style == "authors" and loaded.unit_variant is None  # no record in an old checkpoint
    for k, v in lm.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


# ------------------------------------------------------------------------------------------ unit variants
def toy_quantizer() -> tuple[UnitQuantizer, np.ndarray]:
    """4 k-means centroids (rows already standardised, so a constant segment assigns to its centroid) and a Ward
    map that merges k-means ids 0 and 1 into unit 0."""
    rng = np.random.default_rng(0)
    C = rng.standard_normal((4, 8))
    C = (C - C.mean(1, keepdims=True)) / C.std(1, ddof=1, keepdims=True)
    agglom = np.array([0, 0, 1, 2])
    return UnitQuantizer(C.astype(np.float32), agglom), C


def toy_utterance(C: np.ndarray, kmeans_ids: list[int], frames: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Features: each k-means id's centroid held for ``frames`` frames; boundaries every ``frames`` frames."""
    feats = torch.from_numpy(np.concatenate([np.repeat(C[i][None], frames, 0) for i in kmeans_ids])).float()
    return feats, torch.arange(0, frames * len(kmeans_ids) + 1, frames)


def authors_lm_units(C: np.ndarray, agglom: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """The authors' LM input, restated: each segment's nearest centroid (its k-means id, as their extraction
    script stores it) mapped through the Ward table, ``reducer[kmeans_ids]``, and nothing else."""
    kmeans_ids = ((pooled[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
    return agglom[kmeans_ids]


SEQ = [2, 0, 1, 1, 3, 0]  # k-means ids per segment: 0 and 1 merge, and 1 repeats on its own


def test_authors_lm_keeps_one_merged_unit_per_segment_dedup_merges_runs():
    q, C = toy_quantizer()
    feats, bounds = toy_utterance(C, SEQ)
    want = authors_lm_units(C, q.agglom, C[SEQ])
    np.testing.assert_array_equal(want, [1, 0, 0, 0, 2, 0])
    segs, units = q.tokenize(feats, bounds, deduplicate=deduplicates("authors_lm"))
    np.testing.assert_array_equal(units, want)  # adjacent equal merged ids kept: 0 0 0
    assert len(segs) == len(SEQ) and np.allclose(segs[:, 1] - segs[:, 0], 0.1)  # one unit per 5-frame segment
    segs, units = q.tokenize(feats, bounds, deduplicate=deduplicates("dedup"))
    np.testing.assert_array_equal(units, [1, 0, 2, 0])
    np.testing.assert_allclose(segs[1], [0.1, 0.4])  # the merged run spans its three segments


class FakeTokenizer:
    """Stands in for the SylBoost encoder + min-cut: every file gets the toy features of ``SEQ`` rotated by its
    index, then the real quantizer (pooling, assignment, Ward map, optional dedup)."""

    def __init__(self):
        self.quantizer, self.C = toy_quantizer()
        self.calls: list[bool] = []

    @property
    def vocab_size(self) -> int:
        return self.quantizer.k_merged

    def ids_for(self, path) -> list[int]:
        r = sum(map(ord, str(path).rsplit("/", 1)[-1])) % len(SEQ)
        return SEQ[r:] + SEQ[:r]

    def run_settings(self) -> dict:  # what `units` records of the run (Tokenizer.run_settings)
        return {"precision": "fp32", "max_segment_frames": 35, "chunk_seconds": 60.0}

    def describe_run(self) -> str:
        return "fake"

    def batch(self, paths, sample_rate=None, *, deduplicate=True):
        self.calls.append(deduplicate)
        return [self.quantizer.tokenize(*toy_utterance(self.C, self.ids_for(p)), deduplicate=deduplicate)
                for p in paths]


@pytest.fixture
def fake_units(tmp_path, monkeypatch):
    import experiments.unit_work as units_cmd
    from experiments.cli import main

    data = tmp_path / "data"
    ids = make_librispeech(data, speakers=1, utts=3, seconds=(0.5, 1.0))
    tok = FakeTokenizer()
    monkeypatch.setattr(units_cmd.Tokenizer, "from_pretrained", lambda *a, **k: tok)

    def run(out: str, *flags: str) -> int:
        return main(["units", "--checkpoint", str(tmp_path / "tok.ckpt"), "--data", str(data), "--out",
                     str(tmp_path / out), "--manifest-cache", str(tmp_path / "cache"), *flags])
    return run, tok, ids, tmp_path


def test_units_command_writes_and_records_each_variant(fake_units, capsys):
    run, tok, ids, tmp = fake_units
    assert run("lm", "--variant", "authors_lm") == 0
    assert run("alias", "--no-dedup") == 0  # the older flag is the same variant
    assert run("plain") == 0  # the command's default is unchanged: dedup
    for out, variant in (("lm", "authors_lm"), ("alias", "authors_lm"), ("plain", "dedup")):
        store = UnitStore(tmp / out)
        meta = store.manifest(0)["meta"]
        assert store.variant(0) == variant and meta["variant"] == variant
        assert meta["deduplicated"] is (variant == "dedup") and meta["vocab_size"] == 3
        loaded = store.load(0)
        assert set(loaded) == set(ids)
        for utt, (segs, units) in loaded.items():
            seq = tok.ids_for(f"{utt}.flac")
            raw = authors_lm_units(tok.C, tok.quantizer.agglom, tok.C[seq])
            if variant == "authors_lm":
                np.testing.assert_array_equal(units, raw)
                assert len(segs) == len(seq)
            else:
                np.testing.assert_array_equal(units, raw[np.r_[True, raw[1:] != raw[:-1]]])
    with pytest.raises(SystemExit):
        run("bad", "--no-dedup", "--variant", "dedup")
    assert run("lm", "--variant", "dedup") == 1  # one version never mixes variants: one line, exit 1
    assert "holds 'authors_lm' units" in capsys.readouterr().err


def test_a_stopped_run_cannot_resume_with_the_other_variant(tmp_path):
    store = UnitStore(tmp_path / "u")
    store.claim_variant(0, "authors_lm")
    store.claim_variant(0, "authors_lm")  # the same variant resumes (and every rank may claim)
    with pytest.raises(ValueError, match="unit_variant.json"):
        store.claim_variant(0, "dedup")
    store.claim_variant(1, "dedup")  # another version is free


def _store(root, variant_meta: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    entries = {f"utt{i}": rng.integers(0, V, n) for i, n in enumerate([5, 7, 4, 6, 8, 5])}
    store = UnitStore(root)
    store.write_shard(0, 0, 1, {k: (np.stack([np.arange(len(u)) * 0.2, np.arange(len(u)) * 0.2 + 0.2], 1), u)
                                for k, u in entries.items()})
    store.finalize(0, 1, meta={"vocab_size": V, **variant_meta})


def test_datamodule_reads_the_variant_and_refuses_mixed_train_and_val(tmp_path):
    _store(tmp_path / "lm", {"variant": "authors_lm"})
    _store(tmp_path / "old", {"deduplicated": True})  # written before the variant was recorded
    _store(tmp_path / "old_raw", {"deduplicated": False})
    _store(tmp_path / "bare", {})
    for name, want in (("lm", "authors_lm"), ("old", "dedup"), ("old_raw", "authors_lm"), ("bare", None)):
        assert UnitsDataModule(unit_dir=str(tmp_path / name), version=0).unit_variant == want
    dm = UnitsDataModule(unit_dir=str(tmp_path / "lm"), val_unit_dir=str(tmp_path / "old"), version=0,
                         val_version=0, context_length=8, num_workers=0)
    with pytest.raises(ValueError, match="validation units are 'dedup' units, training units 'authors_lm'"):
        dm.setup("fit")
    ok = UnitsDataModule(unit_dir=str(tmp_path / "lm"), val_unit_dir=str(tmp_path / "old_raw"), version=0,
                         val_version=0, context_length=8, num_workers=0)
    ok.setup("fit")
    assert ok.unit_variant == "authors_lm"


def test_lm_checkpoint_records_the_unit_variant_and_pair_scoring_follows_it(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    from syllablelm.evaluation import lm_scoring as lm_pairs

    _store(tmp_path / "units", {"variant": "authors_lm"})
    dm = UnitsDataModule(unit_dir=str(tmp_path / "units"), context_length=8, batch_size=2, pack=True, num_workers=0)
    lm = SpeechLMModule(network=GPTConfig.tiny(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16),
                        warmup=1, hold=1, decay=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_steps=1,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(lm, dm)
    assert lm.unit_variant == "authors_lm"
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    assert torch.load(tmp_path / "lm.ckpt", weights_only=True)["unit_variant"] == "authors_lm"
    assert SpeechLMModule.load_from_checkpoint(tmp_path / "lm.ckpt").unit_variant == "authors_lm"

    # score_pairs tokenizes in the recorded variant; the pair sets themselves are lm_eval's business
    class Recording:
        vocab_size, calls = V, []

        def batch(self, paths, sample_rate=None, *, deduplicate=True):
            self.calls.append(deduplicate)
            return [(np.zeros((3, 2)), np.array([1, 1, 2]))] * len(paths)

    monkeypatch.setattr(lm_pairs, "evaluate_sets", lambda root, score_fn, split="dev", batch_size=64:
                        {"lexical": score_fn(["a.flac", "b.flac"])})
    tok = Recording()
    res = lm_pairs.score_pairs(str(tmp_path / "lm.ckpt"), tok, str(tmp_path))
    assert tok.calls == [False] and res["lexical"][0][1] == 4  # 3 units + EOS, undeduplicated
    lm_pairs.score_pairs(str(tmp_path / "lm.ckpt"), tok, str(tmp_path), variant="dedup")  # explicit wins
    assert tok.calls[-1] is True
    with pytest.raises(ValueError, match="trained on 'dedup' units"):
        lm_pairs.resolve_variant("auto", "dedup", deduplicate=False)
    assert lm_pairs.resolve_variant("auto", None) == "dedup"  # no record: the earlier behaviour
    assert lm_pairs.resolve_variant("auto", None, deduplicate=False) == "authors_lm"
    assert lm_pairs.resolve_variant("auto", "authors_lm") == "authors_lm"
