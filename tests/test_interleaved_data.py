"""The interleaved LM's data at scale (issue 29): pieces rebuilt on demand from the memory-mapped stores give the same
pieces, sizes, batches and generation caps as pieces built at setup (``materialize``), with DataLoader workers and
with stores of the old layout; the histogram quantile equals numpy's."""
import numpy as np
import pytest

from syllablelm.units.interleave import IGNORE, InterleavedVocab, interleave, split_pieces

from .legacy_store import write_legacy_version

F_UNITS, S_UNITS = 12, 7


def utterances(n=14, seed=0):
    """``{id: (segments s, syllable units, 50 Hz labels)}``: random lengths and syllables, one utterance with a
    syllable so long that its fine units alone exceed the piece limit (a piece then keeps its first fine units), one
    without syllables (left out) and one whose labels end before its last syllable starts."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        frames = int(rng.integers(40, 400))
        labels = np.repeat(rng.integers(0, F_UNITS, frames), rng.integers(1, 4, frames))[:frames]
        k = int(rng.integers(2, 12))
        edges = np.sort(rng.choice(np.arange(2, frames - 2), k, replace=False))
        bounds = np.r_[0, edges, frames] * 0.02
        seg = np.stack([bounds[:-1], bounds[1:]], 1)
        out[f"utt{i:02d}"] = [seg, rng.integers(0, S_UNITS, len(seg)), labels.astype(np.int32)]
    frames = 600  # one 12 s syllable: ~400 fine units after it
    out["utt90"] = [np.array([[0.0, 0.1], [0.1, 12.0]]), np.array([1, 2]),
                    np.arange(frames, dtype=np.int32) % F_UNITS]
    out["utt91"] = [np.zeros((0, 2)), np.zeros(0, np.int64), np.arange(50, dtype=np.int32) % F_UNITS]
    out["utt92"] = [np.array([[0.0, 0.5], [0.5, 2.0]]), np.array([3, 4]), np.arange(20, dtype=np.int32) % F_UNITS]
    return out


def write_stores(root, utts):
    from datamodules.label_store import LabelStore
    from datamodules.unit_store import UnitStore

    units, labels = UnitStore(root / "units"), LabelStore(root / "labels")
    half = sorted(utts)[: len(utts) // 2]  # two shards each, split differently, so ranks and rows differ per store
    for store, parts, value in ((units, (half, sorted(set(utts) - set(half))), lambda u: tuple(utts[u][:2])),
                                (labels, (sorted(utts)[:3], sorted(utts)[3:]), lambda u: utts[u][2])):
        for s, part in enumerate(parts):
            store.write_shard(0, s, 2, {u: value(u) for u in part})
    units.finalize(0, 2, meta={"vocab_size": S_UNITS})
    labels.finalize(0, 2, meta={"num_labels": F_UNITS})
    return str(root / "units"), str(root / "labels")


def make(units, labels, **kw):
    from datamodules.interleaved_data import InterleavedDataModule

    kw = {"val_fraction": 0.25, "seed": 3, "max_tokens": 64, "batch_size": None, "batch_multiple": 1, **kw}
    dm = InterleavedDataModule(unit_dir=units, label_dir=labels, **kw)
    dm.setup("fit")
    return dm


def batches(loader, epochs=(0, 1)):
    out = []
    for e in epochs:
        loader.sampler.set_epoch(e)
        out.extend(list(loader))
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in ("input", "target", "padding_mask"):
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and (x[k] == y[k]).all(), k
        assert x["position"] == y["position"]


SETTINGS = [dict(fine_pool=2), dict(fine_pool=1, lead=0, max_size=40), dict(fine_pool=3, grouping=2, lead=7.5),
            dict(fine_pool=2, max_tokens=None, batch_size=3)]


@pytest.mark.parametrize("kw", SETTINGS)
def test_on_demand_pieces_and_batches_equal_the_built_ones(tmp_path, kw):
    from datamodules.interleaved_pieces import MaterializedPieces, OnDemandPieces
    from syllablelm.audio.frames import seconds_to_frames
    from syllablelm.units.fine import pool_labels, runs

    utts = utterances()
    stores = write_stores(tmp_path, utts)
    lazy, built = make(*stores, **kw), make(*stores, materialize=True, **kw)
    assert isinstance(lazy.datasets["train"], OnDemandPieces)
    assert isinstance(built.datasets["train"], MaterializedPieces)
    assert lazy.generation_stats == built.generation_stats
    vocab = lazy.vocab
    for split in ("train", "val"):
        a, b = lazy.datasets[split], built.datasets[split]
        assert len(a) == len(b) > 0
        assert a.sizes.dtype == b.sizes.dtype and a.sizes.tolist() == b.sizes.tolist()
        assert a.lengths.tolist() == b.lengths.tolist()
        for i in range(len(a)):
            (t, y), (t2, y2) = a.piece(i), b.piece(i)
            assert t.dtype == t2.dtype == np.int64 and t.tolist() == t2.tolist() and y.tolist() == y2.tolist()
    # the training pieces are today's: every kept utterance's whole stream, cut as split_pieces cuts it, in order
    limit = kw.get("max_size", kw.get("max_tokens", 64))
    val_ids = {ex["id"] for ex in built.val_examples(4)}
    expected = []
    for u in sorted(utts):
        seg, syl, lab = utts[u]
        if u in val_ids or not len(syl):
            continue
        fine, dur = runs(pool_labels(lab, kw["fine_pool"]))
        stream = interleave(fine, dur, syl, seconds_to_frames(seg), vocab, frames_per_fine=kw["fine_pool"],
                            lead=kw.get("lead", 5), grouping=kw.get("grouping", 1))
        expected.extend([stream] if limit is None else split_pieces(stream, vocab, limit)[0])
    train = lazy.datasets["train"]
    assert len(train) == len(expected)
    for i, p in enumerate(expected):
        t, y = train.piece(i)
        assert t.tolist() == p.tokens.tolist() and y.tolist() == p.targets.tolist() and y[-1] == IGNORE
    if limit is not None:
        assert (train.sizes <= limit).all() and len(train) > len(utts) - len(val_ids)  # utterances were cut
    assert_same_batches(batches(lazy.train_dataloader()), batches(built.train_dataloader()))
    assert_same_batches(list(lazy.val_dataloader()), list(built.val_dataloader()))


def test_workers_serve_the_same_batches(tmp_path):
    stores = write_stores(tmp_path, utterances())
    one = make(*stores, fine_pool=2, num_workers=0)
    two = make(*stores, fine_pool=2, num_workers=2)
    assert_same_batches(batches(two.train_dataloader(), (0,)), batches(one.train_dataloader(), (0,)))


def test_stores_of_the_old_layout_read_the_same(tmp_path):
    from datamodules.interleaved_pieces import StoreRows

    utts = utterances(8, seed=1)
    columns = make(*write_stores(tmp_path / "columns", utts), fine_pool=2)
    old = tmp_path / "old"
    write_legacy_version(old / "units", "units", 0, [{u: tuple(utts[u][:2]) for u in utts}],
                         meta={"vocab_size": S_UNITS})
    write_legacy_version(old / "labels", "labels", 0, [{u: utts[u][2] for u in utts}], meta={"num_labels": F_UNITS})
    legacy = make(str(old / "units"), str(old / "labels"), fine_pool=2)
    assert isinstance(legacy.datasets["train"].units, StoreRows) and legacy.datasets["train"].units.view is None
    assert_same_batches(batches(legacy.train_dataloader()), batches(columns.train_dataloader()))
    assert legacy.generation_stats == columns.generation_stats


def test_histogram_quantiles_equal_numpys():
    from datamodules.interleaved_index import quantile_of_counts

    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 3000))
        values = rng.integers(0, int(rng.integers(1, 60)), n)
        counts = np.bincount(values)
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert quantile_of_counts(counts, q) == np.quantile(values, q), (trial, q)


def test_setup_holds_an_index_not_the_tokens(tmp_path):
    """What setup holds per piece: 7 int32 (the index and the size) and per utterance 2 int32, nothing the size of
    the streams."""
    dm = make(*write_stores(tmp_path, utterances()), fine_pool=2)
    train = dm.datasets["train"]
    assert train.index.dtype == train.sizes.dtype == train.ranks.dtype == np.int32
    assert train.index.shape == (len(train), 6) and train.ranks.shape[1] == 2
    assert not any(isinstance(v, np.ndarray) and v.size > 6 * len(train) for v in vars(train).values())
    assert InterleavedVocab(F_UNITS, S_UNITS) == train.vocab


# ---- the persistent piece index (index_cache, index_workers) --------------------------------------------------
def same_index(a, b):
    """Two data modules hold the same pieces: index, sizes, ranks of both splits, caps and validation examples."""
    assert a.generation_stats == b.generation_stats and a.generation_stats
    for split in ("train", "val"):
        x, y = a.datasets[split], b.datasets[split]
        for k in ("index", "sizes", "ranks"):
            assert getattr(x, k).dtype == getattr(y, k).dtype == np.int32, (split, k)
            assert np.array_equal(getattr(x, k), getattr(y, k)), (split, k)
    ex, ey = a.val_examples(4), b.val_examples(4)
    assert len(ex) == len(ey) > 0
    for e, f in zip(ex, ey):
        assert e["id"] == f["id"] and all(np.array_equal(e[k], f[k]) for k in ("syllables", "fine_units",
                                                                                 "fine_durations"))


def test_cached_index_equals_the_pass_and_is_read_mapped(tmp_path):
    from datamodules.interleaved_pieces import OnDemandPieces

    stores = write_stores(tmp_path, utterances())
    plain = make(*stores, fine_pool=2)
    first = make(*stores, fine_pool=2, index_cache=str(tmp_path / "cache"))  # builds and writes, then reads
    second = make(*stores, fine_pool=2, index_cache=str(tmp_path / "cache"))  # reads
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]
    for dm in (first, second):
        same_index(dm, plain)
        assert isinstance(dm.datasets["train"], OnDemandPieces) and isinstance(dm.datasets["train"].index, np.memmap)
        assert_same_batches(batches(dm.train_dataloader()), batches(plain.train_dataloader()))
        assert_same_batches(list(dm.val_dataloader()), list(plain.val_dataloader()))


def test_prepare_data_builds_once_and_setup_only_reads(tmp_path, monkeypatch):
    import datamodules.interleaved_data as idata
    import datamodules.interleaved_index as iindex

    stores = write_stores(tmp_path, utterances())
    kw = {"val_fraction": 0.25, "seed": 3, "max_tokens": 64, "batch_size": None, "batch_multiple": 1, "fine_pool": 2,
          "index_cache": str(tmp_path / "cache")}
    dm = idata.InterleavedDataModule(unit_dir=stores[0], label_dir=stores[1], **kw)
    dm.prepare_data()
    assert len(list((tmp_path / "cache").iterdir())) == 2

    def refuse(*a, **k):
        raise AssertionError("the pass ran again")
    monkeypatch.setattr(iindex, "index_pass", refuse)
    dm.setup("fit")
    again = idata.InterleavedDataModule(unit_dir=stores[0], label_dir=stores[1], **kw)
    again.prepare_data()  # found: nothing to build
    again.setup("fit")
    monkeypatch.undo()
    same_index(again, make(*stores, fine_pool=2))
    with pytest.raises(AssertionError, match="ran again"):  # another setting is another key: a pass
        monkeypatch.setattr(iindex, "index_pass", refuse)
        make(*stores, fine_pool=2, max_size=40, index_cache=str(tmp_path / "cache"))


def test_a_new_setting_or_store_version_is_a_new_index(tmp_path):
    from datamodules.label_store import LabelStore

    utts = utterances()
    stores = write_stores(tmp_path, utts)
    cache = tmp_path / "cache"
    make(*stores, fine_pool=2, index_cache=str(cache))
    names = {p.name for p in cache.iterdir()}
    make(*stores, fine_pool=2, max_size=40, index_cache=str(cache))
    assert len({p.name for p in cache.iterdir()} - names) == 2  # train and val, both rebuilt
    names = {p.name for p in cache.iterdir()}
    # label store version 1: other labels for every utterance (the ids and every setting unchanged)
    labels = LabelStore(stores[1])
    changed = {u: (np.asarray(v[2]) + 1) % F_UNITS for u, v in utts.items()}
    labels.write_shard(1, 0, 1, changed)
    labels.finalize(1, 1, meta={"num_labels": F_UNITS})
    new = make(*stores, fine_pool=2, max_size=40, index_cache=str(cache))
    assert len({p.name for p in cache.iterdir()} - names) == 2
    same_index(new, make(*stores, fine_pool=2, max_size=40))
    assert_same_batches(batches(new.train_dataloader(), (0,)), batches(make(*stores, fine_pool=2, max_size=40)
                                                                        .train_dataloader(), (0,)))


@pytest.mark.parametrize("kw", [dict(fine_pool=2), dict(fine_pool=1, lead=0, max_size=40)])
def test_a_pool_builds_the_same_index(tmp_path, kw):
    stores = write_stores(tmp_path, utterances(30, seed=2))
    serial, pooled = make(*stores, **kw), make(*stores, index_workers=2, **kw)
    same_index(pooled, serial)
    assert len(set(serial.datasets["train"].index[:, 0].tolist())) > 8  # several chunks' utterances


def test_merged_chunks_equal_one_pass(tmp_path):
    """Every way of cutting the ids into contiguous chunks merges to the one pass's result."""
    from datamodules.interleaved_index import PassSettings, index_pass, merge_passes

    dm = make(*write_stores(tmp_path, utterances(20, seed=4)), fine_pool=2)
    ctx = dm._open(None)
    ids = ctx["splits"][0][1]
    s = PassSettings(vocab=dm.vocab, fine_pool=2, frames_per_fine=2, label_hop=320, lead=5, grouping=1, limit=64,
                     train=True, materialize=False, unit_where="u", label_where="l")
    whole = index_pass(ids, ctx["sources"], s)
    rng = np.random.default_rng(0)
    for _ in range(5):
        cuts = sorted(rng.choice(np.arange(1, len(ids)), int(rng.integers(1, 6)), replace=False).tolist())
        parts = [index_pass(ids[a:b], ctx["sources"], s) for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        merged = merge_passes(parts)
        for k in ("index", "sizes", "ranks"):
            assert merged[k].dtype == np.int32 and np.array_equal(merged[k], whole[k]), k
        for k in ("stretch_counts", "tail_counts"):  # histograms: equal up to trailing empty bins
            assert np.array_equal(np.trim_zeros(merged[k], "b"), np.trim_zeros(whole[k], "b")), k
        for k in ("stretch_sum", "labels", "syllables", "longest", "skipped", "dropped"):
            assert merged[k] == whole[k], k


@pytest.mark.parametrize("victim", ["index.npy", "ranks.npy", "meta.json"])
def test_a_damaged_cache_names_its_file(tmp_path, victim):
    from datamodules.interleaved_index import IndexCacheError

    stores = write_stores(tmp_path, utterances())
    cache = tmp_path / "cache"
    make(*stores, fine_pool=2, index_cache=str(cache))
    path = next(cache.glob("train-*")) / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(IndexCacheError, match=f"{path}: damaged cached piece index"):
        make(*stores, fine_pool=2, index_cache=str(cache))
