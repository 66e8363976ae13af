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
    from datamodules.interleaved_data import MaterializedPieces, OnDemandPieces
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
    from datamodules.interleaved_data import StoreRows

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
    from datamodules.interleaved_data import quantile_of_counts

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
