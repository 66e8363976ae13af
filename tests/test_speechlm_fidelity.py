"""The SpeechLM trained as the authors trained it (issue 27 items 2 and 3), each fact restated from their code here:

- their collate (``ClusterAlanDataset.collater`` with ``end_stop=True``, fork ishine/SyllableLM): rows padded with
  -100 to the longest utterance plus one column, the stop token written into that LAST column of every row, the
  start token prepended; their model embeds ``embed_weight[tokens]`` (so -100 reads a row counted from the end),
  predicts ``tokens[:, 1:]`` from every column but the last, and its attention hides padded keys;
- fairseq's token budget (``batch_by_size_vec`` + the ``batch_by_size`` wrapper, ``required_batch_size_multiple``
  8, items sorted longest first by their ``ordered_indices``);
- their ``linear_tri_stage`` schedule: linear warm-up from ``init_lr_scale`` 0, hold, linear decay to 0.1, on
  fairseq's tri-stage update count (the first update at learning rate 0).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from datamodules.samplers import TokenBudgetBatchSampler, budget_batch_ends
from datamodules.unit_data import UnitsDataModule
from datamodules.unit_store import UnitStore
from lightning_modules.speechlm import SpeechLMModule
from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.models.schedules import linear_tri_stage, warmup_hold_decay
from tests.conftest import REPO

V = 128  # units 0..127, BOS = stop = 128; the table has 129 rows, so their -100 reads row 29


def write_units(root, units: dict[str, list[int]], vocab: int = V) -> None:
    store = UnitStore(root)
    store.write_shard(0, 0, 1, {k: (np.stack([np.arange(len(u)) * 0.16, np.arange(len(u)) * 0.16 + 0.16], 1),
                                    np.asarray(u, dtype=np.int64)) for k, u in units.items()})
    store.finalize(0, 1, meta={"vocab_size": vocab})


def one_rank(world: int = 1, rank: int = 0, **kw) -> UnitsDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("version", 0)  # rank 1 of this stand-in hears no broadcast of "latest"
    if "val_unit_dir" in kw:
        kw.setdefault("val_version", 0)
    dm = UnitsDataModule(**kw)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0,
                                 strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    dm.setup("fit")
    return dm


def their_collate(utterances: list[list[int]], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Their collate's arithmetic, restated: (B, N + 2) tokens and padding mask, N the longest utterance."""
    stop = start = vocab
    N = max(len(u) for u in utterances)
    rows = [list(u) + [-100] * (N - len(u)) + [stop] for u in utterances]  # pad value -100, stop in the last column
    mask = [[False] * len(u) + [True] * (N - len(u)) + [False] for u in utterances]  # the stop column is not padding
    return (torch.tensor([[start] + r for r in rows]),  # the start column prepended
            torch.tensor([[False] + m for m in mask]))


# ---- item 2: their collate ----------------------------------------------------------------------------------------
def test_authors_collate_matches_theirs_on_a_small_batch(tmp_path):
    utts = {"a": [5, 6, 7], "b": [9], "c": [], "d": [1, 2, 3]}
    write_units(tmp_path, utts)
    dm = one_rank(unit_dir=str(tmp_path), context_length=16, pack=False, collate="authors", max_tokens=100)
    ds = dm.datasets["train"]
    assert len(ds) == 4 and list(ds.sizes) == [3, 1, 0, 3]  # rows in id order; fairseq's size = units
    batch = ds[(0, [0, 1, 2], 7)]  # a, b, c
    S, P = V, 29  # P: the row embed_weight[-100] reads in a table of V + 1 = 129 rows
    assert batch["input"].tolist() == [[S, 5, 6, 7], [S, 9, P, P], [S, P, P, P]]
    assert batch["target"].tolist() == [[5, 6, 7, S], [9, -100, -100, S], [-100, -100, -100, S]]
    assert batch["padding_mask"].tolist() == [[False] * 4, [False, False, True, True], [False, True, True, True]]
    assert batch["position"] == (0, 7)
    # the same from their arithmetic: input = what their embedding lookup reads for every column but the last,
    # target = tokens[:, 1:], mask = their mask without the dropped last column
    tokens, mask = their_collate([utts["a"], utts["b"], utts["c"]], V)
    rows_read = torch.arange(V + 1)[tokens]  # torch indexing: -100 counts from the end, as in their model
    assert torch.equal(batch["input"], rows_read[:, :-1])
    assert torch.equal(batch["target"], tokens[:, 1:])
    assert torch.equal(batch["padding_mask"], mask[:, :-1])
    # the stop token of a shorter row is a target in the last column only, never right after its last unit
    assert (batch["target"][:, -1] == S).all() and batch["target"][1, 1] == -100


def reference_logits(model: GPT, idx: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """Their attention over the same weights, written out: scaled dot products, a key hidden when it is in the
    future or padded (their ValleFlashAttention's mask), softmax, pre-LN residual blocks, tied output."""
    B, T = idx.shape
    x = model.transformer.wte.weight[idx] + model.transformer.wpe.weight[:T]
    hidden = ~torch.ones(T, T, dtype=torch.bool).tril() | padded[:, None, :]  # (B, query, key)
    for block in model.transformer.h:
        attn = block.attn
        H = attn.n_head
        q, k, v = attn.c_attn(block.ln_1(x)).split(x.shape[-1], dim=2)
        q, k, v = (t.view(B, T, H, -1).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        y = scores.masked_fill(hidden[:, None], float("-inf")).softmax(-1) @ v
        x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.ln_2(x))
    return x @ model.transformer.wte.weight.T


def test_padding_mask_hides_padded_keys_as_their_attention():
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)).double().eval()
    tokens, mask = their_collate([[5, 6, 7, 8, 9], [9, 4], [3]], V)
    idx, padded = torch.arange(V + 1)[tokens][:, :-1], mask[:, :-1]
    with torch.no_grad():
        logits = model(idx, padding_mask=padded)[0]
        torch.testing.assert_close(logits, reference_logits(model, idx, padded))
        # the last column (where a shorter row predicts its stop) sees no padded input but its own
        other = idx.clone()
        other[1, 3] = other[2, 2] = 77  # padded columns before the last one
        torch.testing.assert_close(model(other, padding_mask=padded)[0][:, -1], logits[:, -1])
        assert not torch.allclose(model(other)[0][1:, -1], model(idx)[0][1:, -1])  # without the mask it would
        # no padding in the batch: the plain causal path, same logits
        full = idx[:1]
        torch.testing.assert_close(model(full, padding_mask=padded[:1])[0], model(full)[0])


def test_long_utterances_become_near_equal_pieces_of_at_most_the_limit(tmp_path):
    utts = {"a": list(range(12)), "b": list(range(11)), "c": [4, 4]}
    write_units(tmp_path, utts)
    # limit = min(context_length - 1, max_tokens) = min(7, 5) = 5: 12 -> 4 + 4 + 4, 11 -> 4 + 4 + 3
    dm = one_rank(unit_dir=str(tmp_path), context_length=8, pack=False, collate="authors", max_tokens=5)
    ds = dm.datasets["train"]
    assert list(ds.lengths) == [4, 4, 4, 4, 4, 3, 2]
    rows = [ds.stream[s:s + n].tolist() for s, n in zip(ds.starts, ds.lengths)]
    assert sum(rows[:3], []) == utts["a"] and sum(rows[3:6], []) == utts["b"] and rows[6] == utts["c"]


def test_validation_scores_each_utterance_alone(tmp_path):
    write_units(tmp_path / "train", {f"t{i}": [i, i + 1, i + 2] for i in range(6)})
    write_units(tmp_path / "val", {"v0": [1, 2, 3, 4], "v1": [5]})
    dm = one_rank(unit_dir=str(tmp_path / "train"), val_unit_dir=str(tmp_path / "val"), context_length=8,
                  pack=False, collate="authors", max_tokens=12, batch_size=None)
    ds = dm.datasets["val"]
    batch = ds[(0, list(range(len(ds))))]
    got = sorted(t[t != -100].tolist() for t in batch["target"])
    assert got == [[1, 2, 3, 4, V], [5, V]] and "padding_mask" not in batch  # S u.. S per utterance


def test_authors_options_are_checked(tmp_path):
    write_units(tmp_path, {"a": [1, 2]})
    with pytest.raises(ValueError, match="set pack: false"):
        UnitsDataModule(unit_dir=str(tmp_path), collate="authors", max_tokens=8)
    with pytest.raises(ValueError, match="belong to collate: authors"):
        UnitsDataModule(unit_dir=str(tmp_path), pack=False, max_tokens=8)
    with pytest.raises(ValueError, match="collate must be one of"):
        UnitsDataModule(unit_dir=str(tmp_path), pack=False, collate="fairseq")


# ---- item 2: fairseq's token budget --------------------------------------------------------------------------------
def fairseq_batches(sizes: list[int], max_tokens: int | None, max_sentences: int | None, mult: int) -> list[int]:
    """fairseq's batch_by_size_vec + wrapper, restated as its own comments describe it (a last complete batch and
    a tail; a batch's cost is its count x its longest size): the row counts of the batches, in order."""
    cap_t = max_tokens if max_tokens is not None else math.inf
    cap_s = max_sentences if max_sentences is not None else math.inf
    done: list[list[int]] = []
    batch: list[int] = []
    tail: list[int] = []
    for n in sizes:
        grown = batch + tail + [n]
        if len(grown) > cap_s or len(grown) * max(grown) > cap_t:
            done.append(batch)
            if len(tail + [n]) * max(tail + [n]) > cap_t:
                done.append(tail)
                batch, tail = [n], []
            else:
                batch, tail = tail + [n], []
        elif len(grown) < mult or len(grown) % mult == 0:
            batch, tail = grown, []
        else:
            tail.append(n)
    counts = [len(b) for b in done + [batch, tail] if b]
    if mult > 1 and counts and counts[-1] % mult:
        counts.pop()
    return counts


def test_budget_batches_by_hand():
    # max_tokens 12, multiple 2. [4, 4] costs 8; the third 4 would make 3 rows (not a multiple of 2): it waits in
    # the tail. The 3 would make 4 rows costing 16 > 12: [4, 4] is finished, tail + item [4, 3] opens the next
    # batch. The next 3 waits (3 rows); the 2 would cost 4 x 4 = 16: [4, 3] is finished, [3, 2] opens the next.
    # The last 2 waits (3 rows, cost 9); at the end [3, 2] and the tail [2] are batches, and [2], one row, is not a
    # multiple of 2: fairseq's wrapper drops it.
    sizes = [4, 4, 4, 3, 3, 2, 2]
    ends = budget_batch_ends(sizes, max_tokens=12, multiple=2)
    counts = np.diff([0, *ends]).tolist()
    assert counts == fairseq_batches(sizes, 12, None, 2)
    assert ends == [2, 4, 6]  # [4, 4] [4, 3] [3, 2]; [2] alone is odd and dropped
    assert budget_batch_ends([5, 5, 5, 4, 4, 3], max_tokens=10) == [2, 4, 6]  # 5+5 | 5+4 | 4+3
    with pytest.raises(ValueError, match="more than max_tokens"):
        budget_batch_ends([3, 9], max_tokens=8)  # fairseq refuses an item over the budget


def test_budget_batches_equal_their_restatement_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(400):
        sizes = rng.integers(1, 30, rng.integers(0, 50)).tolist()
        if rng.random() < 0.7:
            sizes.sort(reverse=True)
        max_tokens = int(rng.integers(30, 100)) if rng.random() < 0.9 else None
        max_sentences = int(rng.integers(1, 12)) if max_tokens is None or rng.random() < 0.3 else None
        mult = int(rng.choice([1, 2, 3, 8]))
        ends = budget_batch_ends(sizes, max_tokens, max_sentences, mult)
        counts = np.diff([0, *ends]).tolist()
        assert counts == fairseq_batches(sizes, max_tokens, max_sentences, mult)
        for lo, hi in zip([0, *ends], ends):  # every batch within the budget, counts < mult or a multiple
            assert max_tokens is None or (hi - lo) * max(sizes[lo:hi]) <= max_tokens
            assert (hi - lo) < mult or (hi - lo) % mult == 0


def test_budget_sampler_sorts_once_shuffles_per_epoch_and_shards_equally():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 20, 90).astype(float)
    samplers = [TokenBudgetBatchSampler(sizes, max_tokens=40, multiple=8, rank=r, world_size=2, seed=5)
                for r in (0, 1)]
    order, bounds = samplers[0].fixed_batches()
    assert np.all(np.diff(sizes[order]) <= 0)  # longest first
    assert np.array_equal(order, samplers[1].fixed_batches()[0])  # the same ties on every rank
    fixed = [sorted(order[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
    assert np.diff(bounds).tolist() == fairseq_batches(sizes[order].astype(int).tolist(), 40, None, 8)
    epochs = []
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        served = [[b for _, b, _ in s] for s in samplers]
        assert len(served[0]) == len(served[1]) == len(samplers[0]) == math.ceil(len(fixed) / 2)
        both = [sorted(b) for rank in served for b in rank]
        assert all(b in fixed for b in both) and all(b in both for b in fixed)  # each batch; one repeat if odd
        epochs.append(served[0])
    assert epochs[0] != epochs[1]  # the order is reshuffled, the batches are not rebuilt


def test_budget_sampler_resumes_inside_an_epoch():
    sizes = np.random.default_rng(2).integers(1, 12, 60).astype(float)
    s = TokenBudgetBatchSampler(sizes, max_tokens=24, rank=1, world_size=2, seed=3)
    s.set_epoch(4)
    whole = list(s)
    again = TokenBudgetBatchSampler(sizes, max_tokens=24, rank=1, world_size=2, seed=3)
    again.resume(4, 3)
    assert list(again) == whole[3:] and len(whole) > 3


def test_authors_batches_through_the_loaders_of_two_ranks(tmp_path):
    rng = np.random.default_rng(3)
    write_units(tmp_path, {f"u{i:02d}": rng.integers(0, V, int(rng.integers(1, 15))).tolist() for i in range(30)})
    kw = {"unit_dir": str(tmp_path), "context_length": 16, "pack": False, "collate": "authors", "max_tokens": 30,
          "batch_size": None, "seed": 1}
    dms = [one_rank(2, r, **kw) for r in (0, 1)]
    loaders = [dm.train_dataloader() for dm in dms]
    assert len(loaders[0]) == len(loaders[1]) > 0
    for loader in loaders:
        for batch in loader:
            rows, cols = batch["input"].shape
            n = (~batch["padding_mask"]).sum(1) - 1  # units per row
            assert rows * int(n.max()) <= 30 and cols == int(n.max()) + 1  # the budget, as fairseq counts it
            assert rows < 8 or rows % 8 == 0
            assert (batch["target"][:, -1] == V).all()


# ---- item 3: the schedule ------------------------------------------------------------------------------------------
def test_linear_tri_stage_values():
    f = linear_tri_stage(16_000, 84_000, 300_000, 0.1)
    # warm-up from init_lr_scale 0: fairseq's tri-stage sets lr = init + (peak - init) / warmup * updates
    assert f(0) == 0.0 and f(1) == pytest.approx(1 / 16_000) and f(8_000) == pytest.approx(0.5)
    assert f(15_999) == pytest.approx(15_999 / 16_000) and f(16_000) == f(99_999) == 1.0
    # linear decay from 1 at update 100k to 0.1 at 400k: 1 - 0.9 * (u - 100k) / 300k
    assert f(100_000) == 1.0 and f(250_000) == pytest.approx(0.55) and f(175_000) == pytest.approx(0.775)
    assert f(399_999) == pytest.approx(0.1 + 0.9 / 300_000) and f(400_000) == f(10**6) == 0.1
    g = warmup_hold_decay(16_000, 84_000, 300_000, 0.1)  # the geometric option stays: sqrt(0.1) halfway
    assert g(250_000) == pytest.approx(0.1 ** 0.5) and g(0) == pytest.approx(1 / 16_000)


def test_the_module_runs_its_first_update_at_learning_rate_zero():
    net = GPTConfig.tiny(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = SpeechLMModule(network=net, warmup=4, hold=2, decay=4, final_lr_scale=0.1,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01))
    assert model.hparams.lr_schedule == "linear_tri_stage"  # the default: the authors'
    cfg = model.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0, 0.25, 0.5, 0.75, 1, 1, 1, 1 - 0.9 / 4, 1 - 0.9 / 2, 1 - 0.9 * 3 / 4, 0.1, 0.1]  # restated by hand
    assert lrs == pytest.approx([1e-3 * w for w in want])
    geometric = SpeechLMModule(network=net, warmup=4, hold=2, decay=4, lr_schedule="warmup_hold_decay")
    assert geometric.configure_optimizers()["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        SpeechLMModule(network=net, lr_schedule="cosine")


# ---- the configs and a short fit -----------------------------------------------------------------------------------
def test_paper_configs_use_their_batches_and_schedule_the_tiny_one_keeps_its_own():
    for name in ("speechlm_base", "speechlm_large"):
        cfg = yaml.safe_load((REPO / f"experiments/configs/librilight/{name}.yaml").read_text())
        d, m = cfg["data"]["init_args"], cfg["model"]["init_args"]
        assert (d["pack"], d["collate"], d["max_tokens"], d["batch_size"], d["batch_multiple"]) == (
            False, "authors", 160, None, 8)
        assert cfg["trainer"]["devices"] == 2 and d["context_length"] == 161  # README_Cluster.md: 2 GPUs x 160
        assert m["lr_schedule"] == "linear_tri_stage"
    tiny = yaml.safe_load((REPO / "experiments/configs/tiny/speechlm.yaml").read_text())
    assert tiny["data"]["init_args"]["pack"] is True and "collate" not in tiny["data"]["init_args"]
    assert tiny["model"]["init_args"]["lr_schedule"] == "warmup_hold_decay"  # the demo's numbers unchanged


def test_a_short_fit_on_authors_batches_and_its_exact_validation(tmp_path):
    rng = np.random.default_rng(4)
    write_units(tmp_path / "train", {f"u{i:02d}": rng.integers(0, V, int(rng.integers(1, 12))).tolist()
                                     for i in range(24)})
    write_units(tmp_path / "val", {"v0": [3, 4, 5], "v1": [6, 7]})
    dm = UnitsDataModule(unit_dir=str(tmp_path / "train"), val_unit_dir=str(tmp_path / "val"), context_length=12,
                         pack=False, collate="authors", max_tokens=24, batch_size=None, num_workers=0)
    net = GPTConfig.tiny(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = SpeechLMModule(network=net, warmup=2, hold=2, decay=4)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, max_steps=6,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert trainer.global_step == 6
    metrics = trainer.validate(model, dm, verbose=False)[0]
    logprob, ntok = model.log_likelihood([torch.tensor([3, 4, 5]), torch.tensor([6, 7])])
    assert metrics["val/loss"] == pytest.approx(float(-logprob.sum() / ntok.sum()), rel=1e-5)


def test_a_crashed_fit_on_authors_batches_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The token-budget sampler keeps the suite's exact resume (tests/test_exact_resume.py has the full story)."""
    from callbacks.exact_resume import ExactResume
    from syllablelm.runtime import faults

    rng = np.random.default_rng(5)
    write_units(tmp_path / "units", {f"u{i:02d}": rng.integers(0, V, int(rng.integers(1, 10))).tolist()
                                     for i in range(20)})

    def fit(root, resume=False):
        pl.seed_everything(0)
        dm = UnitsDataModule(unit_dir=str(tmp_path / "units"), context_length=10, pack=False, collate="authors",
                             max_tokens=18, batch_size=None, num_workers=0)
        model = SpeechLMModule(network=GPTConfig.tiny(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                                      dropout=0.2), warmup=2, hold=2, decay=6)
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, enable_version_counter=False,
                                            every_n_train_steps=1)
        trainer = pl.Trainer(max_steps=10, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=root, callbacks=[ExactResume(), ckpt])
        last = root / "ckpt" / "last.ckpt"
        trainer.fit(model, dm, ckpt_path=str(last) if resume and last.exists() else None)
        return model, trainer

    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    ref, _ = fit(tmp_path / "ref")
    monkeypatch.setenv(faults.ENV, "train_batch_end:SpeechLMModule@6")
    faults.reset()
    with pytest.raises(faults.InjectedFault):
        fit(tmp_path / "run")
    monkeypatch.delenv(faults.ENV)
    faults.reset()
    model, trainer = fit(tmp_path / "run", resume=True)
    assert trainer.global_step == 10
    want = ref.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items()), "the resumed SpeechLM differs"
