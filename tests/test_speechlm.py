"""Stage 4: the GPT decoder, the units DataModule (packing, cropping, DDP shards) and the SpeechLM module."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from datamodules.unit_data import UnitsDataModule
from datamodules.unit_store import UnitStore
from lightning_modules.speechlm import SpeechLMModule
from syllablelm.models.gpt import GPT, GPTConfig, KVCache
from syllablelm.models.schedules import warmup_hold_decay
from tests.conftest import REPO

V = 10  # units 0..9, BOS = EOS = 10


def tiny_gpt(dtype=torch.float32, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.tiny(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).to(dtype).eval()


# ---- the decoder ----------------------------------------------------------------------------------------
def test_forward_shapes_and_loss():
    model = tiny_gpt()
    idx = torch.randint(0, V + 1, (3, 7))
    targets = torch.randint(0, V + 1, (3, 7))
    targets[0, 4:] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 7, V + 1) and model(idx)[1] is None
    keep = targets != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], targets[keep]))


def test_architecture_tied_no_final_layernorm_qkv_without_bias():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(b.attn.c_attn.bias is None and b.attn.c_proj.bias is not None for b in model.transformer.h)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == 2 * model.config.n_layer
    # functionally: blocks, then the tied projection of the raw residual stream
    idx = torch.randint(0, V + 1, (2, 9))
    with torch.no_grad():
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(9))
        for block in model.transformer.h:
            x = block(x)
        torch.testing.assert_close(model(idx)[0], x @ model.transformer.wte.weight.T)


def test_causal():
    model = tiny_gpt()
    a = torch.randint(0, V, (2, 12))
    b = a.clone()
    b[:, 7:] = (b[:, 7:] + 3) % V
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    torch.testing.assert_close(la[:, :7], lb[:, :7])
    assert not torch.allclose(la[:, 7:], lb[:, 7:])


def test_kv_cache_logits_equal_full_forward():
    model = tiny_gpt(torch.float64)
    seq = torch.randint(0, V + 1, (2, 20))
    with torch.no_grad():
        full = model(seq)[0]
        cache = KVCache(model.config, 2, 20, seq.device, torch.float64)
        parts = [model(seq[:, :5], cache=cache)[0]]  # prefill
        parts.append(model(seq[:, 5:9], cache=cache)[0])  # several tokens after a cache: the shifted mask
        parts += [model(seq[:, t:t + 1], cache=cache)[0] for t in range(9, 20)]  # one token at a time
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, 1), full)


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, 5)])
def test_generation_with_cache_equals_without(temperature, top_k):
    model = tiny_gpt(torch.float64)
    prompt = torch.tensor([[V, 1, 2, 3], [V, 4, 5, 6]])
    out = [model.generate(prompt, 25, temperature=temperature, top_k=top_k, use_cache=c,
                          generator=torch.Generator().manual_seed(1)) for c in (True, False)]
    assert out[0].shape == (2, 29) and torch.equal(out[0][:, :4], prompt)
    assert torch.equal(out[0], out[1])
    if temperature == 0:  # greedy: each new token is the argmax of a full forward over what came before
        logits = model(out[0][:, :-1])[0]
        assert torch.equal(logits[:, 3:].argmax(-1), out[0][:, 4:])


def test_generate_stops_at_eos():
    # the scaled EOS row dominates with this seed's N(0, 0.02) tables (the nanogpt style's init); the authors'
    # N(0, 1/sqrt(d)) tables with the same seed need not make it the argmax, and the stopping logic is the same
    model = tiny_gpt(style="nanogpt")
    with torch.no_grad():
        model.transformer.wte.weight[V] *= 50  # make EOS (tied output row) the likeliest token by far
    out = model.generate(torch.tensor([[V, 1], [V, 2]]), 10, temperature=0.0, stop_at_eos=True)
    assert out.shape == (2, 3) and (out[:, -1] == V).all()


def test_log_likelihood_equals_manual_sum():
    model = tiny_gpt(torch.float64)
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6, 7, 8, 9, 0, 1])]
    logprob, ntok = model.log_likelihood(seqs, batch_size=2)  # mixed lengths: padded batches
    no_eos, ntok_no_eos = model.log_likelihood(seqs, score_eos=False)
    for i, u in enumerate(seqs):
        lp = torch.log_softmax(model(torch.cat([torch.tensor([V]), u])[None])[0][0], -1)  # (n + 1, V + 1)
        target = torch.cat([u, torch.tensor([V])])
        manual = lp[torch.arange(len(target)), target]
        assert ntok[i] == len(u) + 1 and ntok_no_eos[i] == len(u)
        torch.testing.assert_close(logprob[i], manual.sum())
        torch.testing.assert_close(no_eos[i], manual[:-1].sum())
    model.train()  # dropout 0.1: scoring switches it off and restores the mode
    torch.testing.assert_close(model.log_likelihood(seqs)[0], logprob)
    assert model.training


def test_parameter_counts():
    with torch.device("meta"):  # counts only: no memory, no init time
        base, large = GPT(GPTConfig.base(vocab_size=8192)), GPT(GPTConfig.large(vocab_size=8192))
    print(f"base {base.num_parameters() / 1e6:.1f}M, large {large.num_parameters() / 1e6:.1f}M "
          "(every parameter once; tied table once; 3000 positions included)")
    assert 85e6 < base.num_parameters() < 100e6 and 290e6 < large.num_parameters() < 330e6


def test_warmup_hold_decay():
    f = warmup_hold_decay(16_000, 84_000, 300_000, 0.1)
    assert f(0) == pytest.approx(1 / 16_000) and f(15_999) == 1.0 and f(16_000) == f(99_999) == 1.0
    assert f(250_000) == pytest.approx(0.1 ** 0.5) and f(400_000) == f(10**6) == pytest.approx(0.1)
    assert f(100_001) < 1.0 and all(f(s) > f(s + 10_000) for s in range(100_000, 390_000, 10_000))


# ---- the DataModule -------------------------------------------------------------------------------------
def write_store(root, lengths, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    entries = {f"utt{i:03d}": rng.integers(0, V, n) for i, n in enumerate(lengths)}
    store = UnitStore(root)
    store.write_shard(0, 0, 1, {k: (np.stack([np.arange(len(u)) * 0.2, np.arange(len(u)) * 0.2 + 0.2], 1), u)
                                for k, u in entries.items()})
    store.finalize(0, 1, meta={"vocab_size": V})
    return entries


def rank_dm(world: int = 1, rank: int = 0, **kw) -> UnitsDataModule:
    dm = UnitsDataModule(num_workers=0, **kw)
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj)  # a rank without real DDP (give versions)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, strategy=strategy)
    dm.setup("fit")
    return dm


def stream_of(entries: dict) -> list[int]:
    out = [V]
    for k in sorted(entries):
        out += list(entries[k]) + [V]
    return out


def test_packing_cuts_the_stream_into_overlapping_windows(tmp_path):
    entries = write_store(tmp_path, [5, 0, 13, 3, 8])
    dm = rank_dm(unit_dir=str(tmp_path), context_length=8, batch_size=2, pack=True)
    assert dm.vocab_size == V
    ds = dm.datasets["train"]
    batch = ds[(0, list(range(len(ds))))]
    stream = stream_of(entries)  # S u.. S S u.. S ... (the empty utterance is S S)
    assert batch["input"].shape == (len(ds), 8) and len(ds) == -(-(len(stream) - 1) // 8)
    targets = batch["target"][batch["target"] != -100].tolist()
    inputs = batch["input"][batch["target"] != -100].tolist()
    assert targets == stream[1:] and inputs == stream[:-1]  # every token a target once, in order


def test_cropping_without_packing(tmp_path):
    entries = write_store(tmp_path, [4, 20, 6])
    dm = rank_dm(unit_dir=str(tmp_path), context_length=8, batch_size=3, pack=False)
    ds = dm.datasets["train"]
    assert len(ds) == 3
    seen = set()
    for epoch in range(6):
        batch = ds[(epoch, [0, 1, 2])]
        assert batch["input"].shape == (3, 8)
        short = batch["target"][0][batch["target"][0] != -100].tolist()
        assert short == list(entries["utt000"]) + [V]  # whole utterance, padded
        long = [V] + list(entries["utt001"]) + [V]
        window = [int(batch["input"][1, 0])] + batch["target"][1].tolist()
        start = next(s for s in range(len(long) - 8) if long[s:s + 9] == window)  # a contiguous crop
        seen.add(start)
        assert torch.equal(ds[(epoch, [1])]["input"][0], batch["input"][1])  # seeded by (seed, epoch, item)
    assert len(seen) > 1  # the crop moves between epochs


@pytest.mark.parametrize("pack", [True, False])
def test_two_ranks_train_equal_and_val_exactly_once(tmp_path, pack):
    write_store(tmp_path / "train", [3, 9, 14, 2, 7, 11, 5, 6, 8, 4, 10])
    val = write_store(tmp_path / "val", [12, 3, 25, 7, 1], seed=1)
    kw = {"unit_dir": str(tmp_path / "train"), "val_unit_dir": str(tmp_path / "val"), "version": 0,
          "val_version": 0, "context_length": 6, "batch_size": 2, "pack": pack, "seed": 3}
    dms = [rank_dm(2, r, **kw) for r in (0, 1)]
    loaders = [dm.train_dataloader() for dm in dms]
    for epoch in (0, 1):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        assert len(loaders[0]) == len(loaders[1]) > 0
        batches = [[idx for _, idx, _ in loader.sampler] for loader in loaders]
        covered = sorted(i for rank in batches for b in rank for i in b)
        assert set(covered) == set(range(len(dms[0].datasets["train"])))  # every window, some repeated
    # validation: the ranks' windows predict every position of the val stream exactly once
    stream = stream_of(val)
    positions, targets = [], []
    for dm in dms:
        ds = dm.datasets["val"]
        assert len(ds) > 0 and np.array_equal(ds.stream, stream)
        positions += [p for s, n in zip(ds.starts, ds.lengths) for p in range(s + 1, s + n)]
        for _, idx, _ in dm.val_dataloader().sampler:
            t = ds[(0, idx)]["target"]
            targets += t[t != -100].tolist()
    assert sorted(positions) == list(range(1, len(stream)))  # no repeats, no gaps
    assert len(targets) == sum(len(u) + 1 for u in val.values()) and targets.count(V) == len(val)
    assert sorted(targets) == sorted(stream[1:])


def test_val_fraction_is_a_seeded_disjoint_split(tmp_path):
    write_store(tmp_path, [4] * 20)
    a, b, c = (rank_dm(unit_dir=str(tmp_path), val_fraction=0.25, context_length=8, pack=False, seed=s)
               for s in (1, 1, 2))
    assert len(a.datasets["val"]) == len(a.ids["val"]) == 5 and len(a.datasets["train"]) == 15
    assert not set(a.ids["val"]) & set(a.ids["train"]) and len(set(a.ids["val"]) | set(a.ids["train"])) == 20
    assert a.ids == b.ids and a.ids != c.ids  # deterministic by seed


# ---- the LightningModule --------------------------------------------------------------------------------
def tiny_trainer(tmp_path, **kw):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_fit_checkpoint_reloads_alone_and_val_loss_is_exact(tmp_path):
    write_store(tmp_path / "units", [4, 9, 6, 3, 7, 5, 8, 2, 6, 5])
    dm = UnitsDataModule(unit_dir=str(tmp_path / "units"), val_fraction=0.3, context_length=16, batch_size=4,
                         pack=False, num_workers=0)
    net = GPTConfig.tiny(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = SpeechLMModule(network=net, warmup=2, hold=2, decay=4)
    trainer = tiny_trainer(tmp_path, max_steps=4, num_sanity_val_steps=0, enable_checkpointing=False)
    trainer.fit(model, dm)
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["network"]["vocab_size"] == V
    loaded = SpeechLMModule.load_from_checkpoint(ckpt).eval()  # weights_only; no other file
    assert loaded.config == net and loaded.net.lm_head.weight is loaded.net.transformer.wte.weight
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    # val/loss = exact token mean over the held-out utterances, which log_likelihood scores alone too
    metrics = tiny_trainer(tmp_path).validate(loaded, dm, verbose=False)[0]
    ds = dm.datasets["val"]
    val_seqs = [torch.from_numpy(ds.window(i)[1:-1]) for i in range(len(ds))]  # S u.. S -> u..
    assert len(val_seqs) == 3
    logprob, ntok = loaded.log_likelihood(val_seqs)
    assert metrics["val/loss"] == pytest.approx(float(-logprob.sum() / ntok.sum()), rel=1e-5)
    assert metrics["val/perplexity"] == pytest.approx(float(torch.exp(-logprob.sum() / ntok.sum())), rel=1e-5)


def test_vocab_mismatch_is_a_clear_error(tmp_path):
    write_store(tmp_path, [4, 5, 6])
    dm = UnitsDataModule(unit_dir=str(tmp_path), context_length=8, batch_size=2, num_workers=0)
    model = SpeechLMModule(network=GPTConfig.tiny(vocab_size=V + 2, n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_trainer(tmp_path, max_steps=1).fit(model, dm)


def test_cli_fast_dev_run_with_the_tiny_config(tmp_path):
    from experiments.cli import lightning_cli

    write_store(tmp_path / "units", [6, 9, 4, 7, 5, 8, 3, 6, 5, 7])
    cfg = yaml.safe_load((REPO / "experiments/configs/tiny/speechlm.yaml").read_text())
    cfg["model"]["init_args"]["network"]["vocab_size"] = V
    text = yaml.safe_dump(cfg).replace("runs/tiny", str(tmp_path))
    (tmp_path / "lm.yaml").write_text(text)
    cli = lightning_cli(["fit", "--config", str(tmp_path / "lm.yaml"), "--trainer.fast_dev_run", "true",
                         "--data.init_args.num_workers", "0"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert type(cli.model).__name__ == "SpeechLMModule" and cli.model.hparams.network["vocab_size"] == V


def test_paper_configs():
    for size, shape in (("base", (12, 12, 768)), ("large", (24, 16, 1024))):
        cfg = yaml.safe_load((REPO / f"experiments/configs/librilight/speechlm_{size}.yaml").read_text())
        m, t = cfg["model"]["init_args"], cfg["trainer"]
        net, opt = m["network"], m["optimizer"]["init_args"]
        assert (net["n_layer"], net["n_head"], net["n_embd"]) == shape and net["block_size"] == 3000
        assert net["dropout"] == 0.1 and net["bias"] is False and net["style"] == "authors"  # the authors' decoder
        assert (opt["lr"], tuple(opt["betas"]), opt["eps"], opt["weight_decay"]) == (2e-4, (0.9, 0.98), 1e-6, 0.01)
        assert (m["warmup"], m["hold"], m["decay"], m["final_lr_scale"]) == (16_000, 84_000, 300_000, 0.1)
        assert t["max_steps"] == 400_000 and t["precision"] == "bf16-mixed"
        assert cfg["data"]["init_args"]["context_length"] <= net["block_size"]
