"""The interleaved vocoder LM (issue 29, item 2): its data from a unit store and a label store, a few training steps,
and generation (termination, fine ids only, forced logits give the expected stream, cache = recomputation)."""
import numpy as np
import pytest
import torch

from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.models.interleaved_generation import generate_fine
from syllablelm.units.interleave import IGNORE, InterleavedVocab, deinterleave

F_UNITS, S_UNITS = 12, 7


def write_stores(root, utterances, *, fine=F_UNITS, syllable=S_UNITS):
    """A unit store and a label store of ``{id: (segments s, syllable units, 50 Hz labels)}``."""
    from datamodules.label_store import LabelStore
    from datamodules.unit_store import UnitStore

    units, labels = UnitStore(root / "units"), LabelStore(root / "labels")
    units.write_shard(0, 0, 1, {u: (seg, syl) for u, (seg, syl, _) in utterances.items()})
    units.finalize(0, 1, meta={"vocab_size": syllable})
    labels.write_shard(0, 0, 1, {u: lab for u, (_, _, lab) in utterances.items()})
    labels.finalize(0, 1, meta={"num_labels": fine})
    return str(root / "units"), str(root / "labels")


def random_utterances(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        frames = int(rng.integers(60, 160))  # 1.2 .. 3.2 s at 50 Hz
        labels = np.repeat(rng.integers(0, F_UNITS, frames), rng.integers(1, 4, frames))[:frames]
        edges = np.sort(rng.choice(np.arange(2, frames - 2), 5, replace=False))
        bounds = np.r_[0, edges, frames] * 0.02
        seg = np.stack([bounds[:-1], bounds[1:]], 1)
        out[f"utt{i:02d}"] = (seg, rng.integers(0, S_UNITS, len(seg)), labels.astype(np.int32))
    return out


def datamodule(units, labels, **kw):
    from datamodules.interleaved_data import InterleavedDataModule

    kw = {"val_fraction": 0.25, "batch_size": 4, "seed": 0, **kw}
    return InterleavedDataModule(unit_dir=units, label_dir=labels, **kw)


def test_datamodule_builds_the_streams_and_batches(tmp_path):
    from syllablelm.units.fine import pool_labels, runs

    utts = random_utterances()
    dm = datamodule(*write_stores(tmp_path, utts), fine_pool=2, max_tokens=64, batch_size=None, batch_multiple=1)
    dm.setup("fit")
    vocab = dm.vocab
    assert (vocab.fine, vocab.syllable, dm.frames_per_fine) == (F_UNITS, S_UNITS, 2)
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(val) and len(train)
    assert (train.sizes <= 64).all()  # every piece within the authors' size limit
    # the pieces of the training split, put together, give every training utterance's fine units in order
    val_ids = {ex["id"] for ex in dm.val_examples(4)}
    fine_all = np.concatenate([deinterleave(train.piece(i)[0], vocab)[0] for i in range(len(train))])
    expected = np.concatenate([runs(pool_labels(lab, 2))[0] for u, (_, _, lab) in sorted(utts.items())
                               if u not in val_ids])
    assert len(val_ids) == 3 and fine_all.tolist() == expected.tolist()
    for i in range(len(train)):
        tokens, targets = train.piece(i)
        assert tokens[0] >= vocab.syllable_offset and targets[-1] == IGNORE  # a group first, nothing after the last
    batch = next(iter(dm.train_dataloader()))
    inp, tgt, pad = batch["input"], batch["target"], batch["padding_mask"]
    assert (inp[pad] == vocab.pad).all() and (tgt[pad] == IGNORE).all()
    assert not (tgt == vocab.pad).any() and ((tgt == IGNORE) | (tgt <= vocab.stop_fine)).all()
    stats = dm.generation_stats
    assert stats["stretch_max"] >= stats["stretch_q99"] > 0 and stats["max_piece_tokens"] == train.lengths.max()


def test_datamodule_refuses_missing_ids_and_units_outside_the_vocabulary(tmp_path):
    from datamodules.label_store import LabelStore

    utts = random_utterances(4)
    units, labels = write_stores(tmp_path, utts)
    store = LabelStore(tmp_path / "labels2")
    store.write_shard(0, 0, 1, {u: lab for u, (_, _, lab) in list(utts.items())[:2]})
    store.finalize(0, 1, meta={"num_labels": F_UNITS})
    with pytest.raises(ValueError, match=r"labels2.*not in this store: utt02, utt03"):
        datamodule(units, str(tmp_path / "labels2"), val_fraction=0.0).setup("fit")
    bad = dict(utts)
    seg, syl, lab = bad["utt01"]
    bad["utt01"] = (seg, syl, np.where(lab == lab[0], F_UNITS + 3, lab).astype(np.int32))
    units, labels = write_stores(tmp_path / "bad", bad)  # the manifest says 12 labels, utt01 holds 15
    with pytest.raises(ValueError, match=r"utt01.*label 15, not below the vocabulary's 12"):
        datamodule(units, labels).setup("fit")


class FakeVocoder:
    """What validation needs of a unit vocoder: ``synthesize(units, durations or None) -> wave``."""

    def synthesize(self, units, durations=None):
        frames = durations if durations is not None else torch.full_like(units, 2)
        return torch.sin(torch.repeat_interleave(units.float() + 1, frames) * torch.arange(int(frames.sum())))


def test_a_few_training_steps_and_a_checkpoint_that_generates(tmp_path, monkeypatch):
    import sys
    import types

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_modules.interleaved_lm import InterleavedLMModule

    fake = types.ModuleType("syllablelm.checkpoints.vocoders")
    fake.load_unit_vocoder = lambda path: FakeVocoder()
    monkeypatch.setitem(sys.modules, "syllablelm.checkpoints.vocoders", fake)
    torch.manual_seed(0)
    dm = datamodule(*write_stores(tmp_path, random_utterances()), fine_pool=2)
    vocab = InterleavedVocab(F_UNITS, S_UNITS)
    net = GPTConfig(vocab_size=vocab.pad, block_size=256, n_layer=2, n_head=2, n_embd=32)
    model = InterleavedLMModule(network=net.to_dict(), fine_vocab=F_UNITS, syllable_vocab=S_UNITS,
                                frames_per_fine=2, warmup=2, hold=2, decay=4, vocoder="voc.pt", audio_examples=2)
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    losses = trainer.callback_metrics
    assert torch.isfinite(losses["train/loss"]) and torch.isfinite(losses["val/loss"])
    assert 0 <= float(losses["val/fine_accuracy"]) <= 1
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    audio = events.Tags()["audio"]  # generated and true fine units of two validation utterances
    assert len(audio) == 4 and sum(t.endswith("/generated") for t in audio) == 2
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = InterleavedLMModule.load_from_checkpoint(path)
    assert loaded.generation_stats == dm.generation_stats and loaded.vocab == vocab
    fine = loaded.generate_fine([1, 2, 3], temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert fine.dtype == np.int64 and ((fine >= 0) & (fine < F_UNITS)).all()


def test_the_module_refuses_a_table_smaller_than_the_vocabulary():
    from lightning_modules.interleaved_lm import InterleavedLMModule

    with pytest.raises(ValueError, match="set network.vocab_size to at least 21"):
        InterleavedLMModule(network=GPTConfig.tiny(vocab_size=20).to_dict(), fine_vocab=F_UNITS,
                            syllable_vocab=S_UNITS)


class ForcedLogits(torch.nn.Module):
    """A decoder stub whose next-token logits depend only on how many fine units followed the last group: it
    emits fine unit ``k`` for ``k < n`` and then the fine stop, where ``n`` cycles through ``plan``."""

    def __init__(self, vocab, plan, rows):
        super().__init__()
        self.vocab, self.plan, self.rows = vocab, plan, rows
        self.config = GPTConfig(vocab_size=rows - 1, block_size=512, n_layer=1, n_head=1, n_embd=4)
        self.lm_head = torch.nn.Linear(4, rows, bias=False)
        self.seen: list[int] = []

    def forward(self, idx, cache=None):
        if cache is None:
            self.seen = []
        self.seen.extend(idx[0].tolist())
        t = torch.tensor(self.seen)
        groups = int((t == self.vocab.stop_syllable).sum())
        since = len(t) - 1 - int(torch.nonzero(t == self.vocab.stop_syllable).max())
        n = self.plan[(groups - 1) % len(self.plan)]
        logits = torch.zeros(1, idx.shape[1], self.rows)
        logits[0, -1, since if since < n else self.vocab.stop_fine] = 10.0
        logits[0, -1, self.vocab.stop_fine + 1:] = 50.0  # syllable ids and padding: must never be drawn
        if cache is not None:
            cache.length += idx.shape[1]
        return logits, None


@pytest.mark.parametrize("use_cache", [True, False])
def test_forced_logits_give_the_expected_stream(use_cache):
    v = InterleavedVocab(fine=10, syllable=5)  # stop_fine 10, syllables 11..15, stop_syllable 16
    stub = ForcedLogits(v, plan=[2, 0, 3], rows=v.size)
    out = generate_fine(stub, [4, 0, 1], v, temperature=0, use_cache=use_cache, stretch_cap=8, tail_cap=8)
    # group [4] then 0 1, stop; group [0] at once, stop; group [1] then 0 1 2 and the tail's stop
    assert out.tokens.tolist() == [15, 16, 0, 1, 11, 16, 12, 16, 0, 1, 2]
    assert out.fine_units.tolist() == [0, 1, 0, 1, 2] and out.syllable_index.tolist() == [0, 0, 2, 2, 2]
    assert out.capped == 0
    assert deinterleave(out.tokens, v)[1].tolist() == [4, 0, 1]


def test_caps_end_every_stretch_and_the_tail():
    v = InterleavedVocab(fine=10, syllable=5)
    stub = ForcedLogits(v, plan=[9], rows=v.size)  # never a stop before 9 fine units
    out = generate_fine(stub, [2, 3], v, temperature=0, stretch_cap=4, tail_cap=2)
    assert out.tokens.tolist() == [13, 16, 0, 1, 2, 3, 14, 16, 0, 1] and out.capped == 2
    with pytest.raises(ValueError, match="syllable units must be 0 .. 4"):
        generate_fine(stub, [5], v)


def test_kv_cache_generation_equals_recomputation_on_a_random_model():
    torch.manual_seed(0)
    v = InterleavedVocab(fine=9, syllable=6)
    model = GPT(GPTConfig(vocab_size=v.pad, block_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()
    syl = [3, 1, 4, 1, 5, 0]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 5}):
        runs = [generate_fine(model, syl, v, use_cache=c, stretch_cap=6, tail_cap=6, max_context=24,
                              generator=torch.Generator().manual_seed(3), **kw) for c in (True, False)]
        assert runs[0].tokens.tolist() == runs[1].tokens.tolist()
        assert deinterleave(runs[0].tokens, v)[1].tolist() == syl  # every syllable once, in order
        t = runs[0].tokens
        assert ((t < v.fine) | ((t >= v.syllable_offset) & (t <= v.stop_syllable))).all()  # no fine stop, no pad


def test_the_module_refuses_data_made_with_other_settings(tmp_path):
    import lightning.pytorch as pl

    from lightning_modules.interleaved_lm import InterleavedLMModule

    dm = datamodule(*write_stores(tmp_path, random_utterances(4)), fine_pool=1)  # 50 Hz: 1 frame a fine unit
    model = InterleavedLMModule(network=GPTConfig.tiny(vocab_size=F_UNITS + S_UNITS + 3).to_dict(),
                                fine_vocab=F_UNITS, syllable_vocab=S_UNITS + 1, frames_per_fine=2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError,
                       match=r"syllable_vocab is 8 but the data give 7; the model.s frames_per_fine is 2 but"):
        trainer.fit(model, datamodule=dm)


# ---- a prompt prefix (issue 29, "speech out": continuation conditioned on the prompt) --------------------------------
class Recording(torch.nn.Module):
    """A decoder wrapped to record every ``idx`` it is fed (the context it reads)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.lm_head = model, model.config, model.lm_head
        self.fed: list[list[int]] = []

    def forward(self, idx, cache=None):
        self.fed.append(idx[0].tolist())
        return self.model(idx, cache=cache)


def random_prefix(v, n_syllables, seed):
    """A prompt's stream as the LM trained on: random runs and segments interleaved (50 Hz fine units)."""
    from syllablelm.units.interleave import interleave

    rng = np.random.default_rng(seed)
    durations = rng.integers(1, 5, 4 * n_syllables)
    fine = rng.integers(0, v.fine, len(durations))
    fine[1:][fine[1:] == fine[:-1]] = (fine[1:][fine[1:] == fine[:-1]] + 1) % v.fine  # runs: no repeat in a row
    edges = np.sort(rng.choice(np.arange(1, int(durations.sum())), n_syllables - 1, replace=False))
    bounds = np.r_[0, edges, durations.sum()]
    seg = np.stack([bounds[:-1], bounds[1:]], 1)
    return interleave(fine, durations, rng.integers(0, v.syllable, n_syllables), seg, v, frames_per_fine=1).tokens


def test_a_prefix_is_read_first_and_the_result_covers_the_new_syllables_only():
    v = InterleavedVocab(fine=10, syllable=5)  # stop_fine 10, syllables 11..15, stop_syllable 16
    prefix = [13, 16, 5, 6]  # one prompt group (syllable 2) and two true fine units
    for use_cache in (True, False):
        stub = ForcedLogits(v, plan=[2, 0, 3], rows=v.size)  # n-th group overall: 2, 0, 3, 2, ... fine units
        out = generate_fine(stub, [4, 0, 1], v, temperature=0, use_cache=use_cache, stretch_cap=8, tail_cap=8,
                            prefix_tokens=prefix)
        # the prompt's group is the first: the new groups are the 2nd (0 fine units), 3rd (3) and 4th (2, the tail)
        assert out.tokens.tolist() == [15, 16, 11, 16, 0, 1, 2, 12, 16, 0, 1]
        assert out.fine_units.tolist() == [0, 1, 2, 0, 1] and out.syllable_index.tolist() == [1, 1, 1, 2, 2]
        assert deinterleave(out.tokens, v)[1].tolist() == [4, 0, 1] and out.capped == 0
    # no prefix: another result (the plan starts over), so the prefix was read
    stub = ForcedLogits(v, plan=[2, 0, 3], rows=v.size)
    plain = generate_fine(stub, [4, 0, 1], v, temperature=0, stretch_cap=8, tail_cap=8)
    assert plain.tokens.tolist() == [15, 16, 0, 1, 11, 16, 12, 16, 0, 1, 2]
    with pytest.raises(ValueError, match="must start with a group"):
        generate_fine(stub, [1], v, prefix_tokens=[5, 13, 16])
    with pytest.raises(ValueError, match=r"prefix_tokens must hold .* got \[10\]"):
        generate_fine(stub, [1], v, prefix_tokens=[13, 16, 5, 10])  # a fine stop is never written in a stream
    with pytest.raises(ValueError, match=r"got \[17\]"):
        generate_fine(stub, [1], v, prefix_tokens=[13, 16, 17])  # padding


def test_a_prefix_on_a_random_model_cache_equals_recomputation_and_conditions_the_draws():
    torch.manual_seed(0)
    v = InterleavedVocab(fine=9, syllable=6)
    gpt = GPT(GPTConfig(vocab_size=v.pad, block_size=96, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()
    prefix = random_prefix(v, 4, seed=1)
    syl = [3, 1, 4, 1, 5]
    for kw in ({"temperature": 0}, {"temperature": 1.0}, {"temperature": 1.0, "top_k": 5}):
        runs, fed = [], []
        for c in (True, False):
            model = Recording(gpt)
            runs.append(generate_fine(model, syl, v, use_cache=c, stretch_cap=6, tail_cap=6, max_context=64,
                                      generator=torch.Generator().manual_seed(3), prefix_tokens=prefix, **kw))
            fed.append(model.fed)
        assert runs[0].tokens.tolist() == runs[1].tokens.tolist()
        assert runs[0].fine_units.tolist() == runs[1].fine_units.tolist()
        # the first forward reads the prompt's stream and then the first new group
        first = prefix.tolist() + [v.syllable_offset + syl[0], v.stop_syllable]
        assert fed[0][0] == fed[1][0] == first
        # the result: only the new syllables, each once and in order; owners index them
        fine, syllables, owner = deinterleave(runs[0].tokens, v, with_owner=True)
        assert syllables.tolist() == syl
        assert runs[0].tokens[0] == v.syllable_offset + syl[0]  # the prefix is not in the result
        assert ((runs[0].syllable_index >= 0) & (runs[0].syllable_index < len(syl))).all()
        keep = np.r_[True, fine[1:] != fine[:-1]] if fine.size else np.zeros(0, bool)
        assert runs[0].fine_units.tolist() == fine[keep].tolist()
        assert runs[0].syllable_index.tolist() == owner[keep].tolist()
    # the prompt's stream changes what follows the first group: the logits there differ with and without it
    with_prefix, _ = gpt(torch.tensor([first]))
    alone, _ = gpt(torch.tensor([first[len(prefix):]]))
    assert not torch.allclose(with_prefix[0, -1, :v.fine + 1], alone[0, -1, :v.fine + 1])


def test_a_long_prefix_is_dropped_whole_blocks_first_and_cache_still_equals_recomputation():
    from syllablelm.units.interleave import group_starts

    torch.manual_seed(1)
    v = InterleavedVocab(fine=9, syllable=6)
    gpt = GPT(GPTConfig(vocab_size=v.pad, block_size=96, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()
    prefix = random_prefix(v, 12, seed=2)
    max_context = 24
    assert len(prefix) > 2 * max_context  # the prompt alone overflows the context
    syl = [2, 0, 5, 5]
    runs, fed = [], []
    for c in (True, False):
        model = Recording(gpt)
        runs.append(generate_fine(model, syl, v, use_cache=c, stretch_cap=6, tail_cap=6, max_context=max_context,
                                  temperature=1.0, generator=torch.Generator().manual_seed(5), prefix_tokens=prefix))
        fed.append(model.fed)
    assert runs[0].tokens.tolist() == runs[1].tokens.tolist()
    assert deinterleave(runs[0].tokens, v)[1].tolist() == syl
    # the first forward keeps the prompt from its earliest group start that leaves room for the first new group
    whole = prefix.tolist() + [v.syllable_offset + syl[0], v.stop_syllable]
    room = len(whole) - max_context
    start = min([int(s) for s in group_starts(prefix, v) if s >= room] + [len(prefix)])
    assert fed[0][0] == fed[1][0] == whole[start:]
    assert len(fed[0][0]) <= max_context and fed[0][0][0] in range(v.syllable_offset, v.stop_syllable)
    assert 0 < start < len(prefix)  # the prompt's oldest blocks dropped, its newest kept
    # every context the uncached path reads starts with a group (whole blocks dropped) and fits
    for idx in fed[1]:
        assert len(idx) <= max_context and v.syllable_offset <= idx[0] < v.stop_syllable


def test_the_module_builds_the_prompt_stream_with_its_own_settings():
    from lightning_modules.interleaved_lm import InterleavedLMModule

    kw = {"network": GPTConfig.tiny(vocab_size=F_UNITS + S_UNITS + 2, n_layer=1, n_embd=16, n_head=2).to_dict(),
          "fine_vocab": F_UNITS, "syllable_vocab": S_UNITS, "lead": 5}
    seg = [[0.0, 0.3], [0.3, 0.6]]  # seconds: 50 Hz frames [0, 15], [15, 30]; the second group may come at 15 - 5
    fine, dur = [1, 2, 3], [6, 6, 6]
    # syllable 2 -> 15, syllable 5 -> 18, the syllable stop 20. One 50 Hz frame a fine frame: midpoints 3, 9 <= 10,
    # then 15 > 10 (the group); two: midpoints 6 <= 10, then 18 > 10
    m1 = InterleavedLMModule(frames_per_fine=1, **kw)
    assert m1.prompt_stream(fine, dur, [2, 5], seg).tolist() == [15, 20, 1, 2, 18, 20, 3]
    m2 = InterleavedLMModule(frames_per_fine=2, **kw)
    prefix = m2.prompt_stream(fine, dur, [2, 5], seg)
    assert prefix.tolist() == [15, 20, 1, 18, 20, 2, 3]
    model = Recording(m2.net)
    m2.net = model
    out = m2.generate_stream([4], temperature=1.0, generator=torch.Generator().manual_seed(0), prefix_tokens=prefix)
    assert model.fed[0] == prefix.tolist() + [F_UNITS + 1 + 4, 20]
    assert deinterleave(out.tokens, m2.vocab)[1].tolist() == [4] and (out.syllable_index == 0).all()
