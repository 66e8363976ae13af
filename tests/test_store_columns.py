"""Stores as memory-mapped columns (issue 28): reads equal what was written, one utterance at a time through the
version's id index; shards mapped lazily with bounded file descriptors; a shard is complete when its last-written
file exists; old-layout (.npz) versions read value-identical directly and after ``syllablelm store-convert``,
in roots that mix both; the SpeechLM's batches from the mapped unit column equal batches cut from the stream
built in memory."""
from __future__ import annotations

import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from datamodules import store_columns
from datamodules.boundary_store import BoundaryStore
from datamodules.label_store import LabelStore
from datamodules.shard_store import DamagedVersionError
from datamodules.store_columns import StoreView
from datamodules.unit_data import UnitsDataModule
from datamodules.unit_store import UnitStore
from syllablelm.runtime.strings import Strings
from tests.legacy_store import write_legacy_version


def open_file_count() -> int:
    """File descriptors this process holds (``/proc/self/fd``)."""
    return len(os.listdir("/proc/self/fd"))


KINDS = {"boundary": BoundaryStore, "units": UnitStore, "labels": LabelStore}


def random_value(kind: str, rng: np.random.Generator, n: int | None = None):
    n = int(rng.integers(0, 12)) if n is None else n
    edges = np.cumsum(rng.uniform(0.02, 0.3, n + 1))
    segments = np.stack([edges[:-1], edges[1:]], 1)
    if kind == "boundary":
        return segments
    if kind == "units":
        return segments, rng.integers(0, 70_000 if rng.random() < 0.3 else 300, n)
    return rng.integers(0, 500, 5 * n)


def random_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Ids of mixed lengths, prefixes of each other, non-ASCII: what a byte-order index must get right."""
    pool = set()
    while len(pool) < n:
        stem = "".join(rng.choice(list("ab9-/é"), int(rng.integers(1, 7))))
        pool.add(stem)
    return sorted(pool)


def same_value(kind: str, got, want) -> bool:
    if kind == "units":
        return (np.array_equal(got[0], np.asarray(want[0], np.float64)) and got[1].dtype == np.int64
                and np.array_equal(got[1], want[1]) and isinstance(got[1], np.ndarray) and got[0].dtype == np.float64)
    dtype = np.int32 if kind == "labels" else np.float64
    return got.dtype == dtype and np.array_equal(got, np.asarray(want, dtype).reshape(got.shape))


def write_version(store, version: int, shards: list[dict], meta: dict | None = None) -> None:
    for r, entries in enumerate(shards):
        store.write_shard(version, r, len(shards), entries)
    store.finalize(version, len(shards), meta=meta)


def test_packed_strings_and_fixed_width_keep_byte_order():
    rng = np.random.default_rng(1)
    ids = random_ids(rng, 60)
    packed = Strings.from_iter(ids)
    assert list(packed) == ids
    fixed = packed.fixed_width()
    assert [x.decode() for x in fixed] == ids
    assert sorted(fixed.tolist()) == fixed.tolist()  # Python's str order is the bytes order of UTF-8


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_reads_every_value_as_written(kind, tmp_path):
    rng = np.random.default_rng(hash(kind) % 1000)
    ids = random_ids(rng, 80)
    values = {i: random_value(kind, rng) for i in ids}
    shards = [{i: values[i] for i in ids[r::3]} for r in range(3)]
    store = KINDS[kind](tmp_path)
    write_version(store, 0, shards, {"vocab_size": 70_000, "num_labels": 500})
    view = store.load(0)
    # iteration: shard by shard, sorted within each (the old layout's dict order); id_at: globally sorted
    assert isinstance(view, StoreView) and len(view) == len(ids)
    assert list(view) == [i for part in shards for i in sorted(part)]
    assert [view.id_at(k) for k in range(len(view))] == sorted(ids)
    for i in rng.permutation(ids):
        assert i in view and same_value(kind, view[i], values[i]), i
    for missing in ("", "zz", ids[0] + "\0", ids[-1] * 9, ids[0][:-1] + "q"):
        if missing not in values:
            assert missing not in view and view.get(missing) is None
            with pytest.raises(KeyError):
                view[missing]
    again = pickle.loads(pickle.dumps(view))  # DataLoader workers under spawn; the maps are reopened
    assert same_value(kind, again[ids[5]], values[ids[5]])
    if kind == "units":  # unit ids in the smallest unsigned type of each shard
        manifest = store.manifest(0)
        for r, shard in enumerate(shards):
            top = max([int(u.max()) for _, u in shard.values() if len(u)], default=0)
            column = np.load(store.version_dir(0) / f"shard-{r:05d}-of-00003.units.npy", mmap_mode="r")
            assert column.dtype == np.min_scalar_type(top)
        assert manifest["layout"] == "columns"


def test_many_shards_hold_a_bounded_number_of_files(tmp_path, monkeypatch):
    monkeypatch.setattr(store_columns, "OPEN_SHARDS", 4)
    store = UnitStore(tmp_path)
    n_shards = 40
    write_version(store, 0, [{f"u{s:03d}-{k}": (np.array([[0.0, 0.1 * (k + 1)]]), np.array([s])) for k in range(3)}
                             for s in range(n_shards)], {"vocab_size": 64})
    view = store.load(0)
    assert view.max_open == 4
    before = open_file_count()
    for utt in np.random.default_rng(0).permutation(list(view)):  # random order: shards evicted and mapped again
        segments, units = view[utt]
        assert segments[0, 1] == pytest.approx(0.1 * (int(utt[-1]) + 1)) and units.tolist() == [int(utt[1:4])]
    # a mapped column holds one file descriptor; the LRU keeps 4 shards' columns
    assert len(view._open) == 4 * len(store.columns) and open_file_count() - before <= 4 * len(store.columns)
    had = (7, "segments") in view._open
    source = view.rows(view.position("u007-2"), 0, 1, "units")  # one column alone: the other is not mapped for it
    assert source.tolist() == [7] and (7, "units") in view._open and ((7, "segments") in view._open) == had


def test_a_shard_is_complete_only_when_its_last_file_is_written(tmp_path, monkeypatch):
    store = UnitStore(tmp_path)
    entries = {"a": (np.array([[0.0, 0.5]]), np.array([3]))}
    store.write_shard(0, 0, 1, entries)
    assert store.missing_shards(0, 1) == []
    written = []

    def failing(path, array):  # a stop while the shard is rewritten: after its ids, before its units
        if path.name.endswith(".units.npy"):
            raise OSError("disk full")
        written.append(path.name)
        real(path, array)

    real = store_columns.write_npy
    monkeypatch.setattr(store_columns, "write_npy", failing)
    with pytest.raises(OSError):
        store.write_shard(0, 0, 1, {"b": (np.array([[0.0, 0.2]]), np.array([4]))})
    assert written[:2] == ["shard-00000-of-00001.ids.npy", "shard-00000-of-00001.id_offsets.npy"]
    assert store.missing_shards(0, 1) == [0]  # the old marker went first: new ids never pass for a complete shard
    monkeypatch.setattr(store_columns, "write_npy", real)
    store.write_shard(0, 0, 1, entries)
    store.finalize(0, 1, meta={"vocab_size": 8})
    assert list(store.load(0)) == ["a"]


@pytest.mark.parametrize("kind", KINDS)
def test_old_layout_reads_identical_directly_after_conversion_and_in_a_mixed_root(kind, tmp_path, monkeypatch):
    from experiments.stores import convert

    rng = np.random.default_rng(7)
    ids = random_ids(rng, 50)
    values = {i: random_value(kind, rng) for i in ids}
    shards = [{i: values[i] for i in ids[r::2]} for r in range(2)]
    meta = {"vocab_size": 70_000, "num_labels": 500, "command_line": ["syllablelm", "make", "--x"], "cwd": "/wd"}
    cls = KINDS[kind]
    write_legacy_version(tmp_path, cls.kind, 0, shards, meta)
    (tmp_path / "iter_0" / "skipped-00001-of-00002.json").write_text(json.dumps({"/a/bad.flac": "empty"}))
    store = cls(tmp_path)
    write_version(store, 1, shards, meta)  # a newer version in columns: the root mixes layouts
    assert [store.layout(v) for v in (0, 1)] == ["npz", "columns"] and store.versions() == [0, 1]
    direct = store.load(0)
    assert isinstance(direct, dict) and all(same_value(kind, direct[i], values[i]) for i in ids)
    with pytest.raises(Exception, match="store-convert"):
        store.view(0)
    # a stop after the columns, before the new manifest: the old version still reads
    monkeypatch.setattr(cls, "finalize", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.convert(0)
    monkeypatch.undo()
    assert store.layout(0) == "npz" and all(same_value(kind, store.load(0)[i], values[i]) for i in ids)
    assert convert(["--store", str(tmp_path)]) == 0
    manifest = store.manifest(0)
    assert manifest["layout"] == "columns" and not list(store.version_dir(0).glob("*.npz"))
    assert manifest["meta"]["command_line"] == ["syllablelm", "make", "--x"]  # still the writer's, for reruns
    assert manifest["meta"]["converted"]["from"] == "npz" and manifest["meta"]["skipped"] == {"/a/bad.flac": "empty"}
    for v in (0, 1):
        view = store.load(v)
        assert isinstance(view, StoreView) and list(view) == list(direct)  # the old layout's order
        assert all(same_value(kind, view[i], values[i]) for i in ids)
    assert store.convert(0) is None  # already columns
    copied = cls(tmp_path / "copy")
    write_legacy_version(tmp_path / "old", cls.kind, 3, shards, meta)
    cls(tmp_path / "old").copy_version(3, copied)  # a copy of an old-layout version is written as columns
    assert copied.layout(3) == "columns" and all(same_value(kind, copied.load(3)[i], values[i]) for i in ids)


def test_conversion_refuses_a_damaged_old_version(tmp_path):
    vdir = write_legacy_version(tmp_path, "boundary", 0, [{"a": np.array([[0.0, 1.0]])}])
    shard = vdir / "shard-00000-of-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(DamagedVersionError, match="truncated"):
        BoundaryStore(tmp_path).convert(0)
    assert shard.exists()


def _dm(root, **kw) -> UnitsDataModule:
    dm = UnitsDataModule(unit_dir=str(root), num_workers=0, **kw)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=0,
                                 strategy=SimpleNamespace(broadcast=lambda o, src=0: o))
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("layout", [dict(pack=True, context_length=7, batch_size=3),
                                    dict(pack=False, context_length=9, batch_size=3),
                                    dict(pack=False, collate="authors", context_length=9, batch_size=None,
                                         max_tokens=24, batch_multiple=2)])
def test_speechlm_batches_from_the_mapped_column_equal_the_stream_in_memory(layout, tmp_path):
    V = 300
    rng = np.random.default_rng(3)
    ids = [f"{s}-{c}-{u:04d}" for s in (19, 250) for c in (7, 8) for u in range(9)]
    units = {i: rng.integers(0, V, int(rng.integers(0, 20))) for i in ids}
    entries = {i: (np.stack([np.arange(len(u)) * 0.2, np.arange(len(u)) * 0.2 + 0.2], 1), u) for i, u in units.items()}
    write_version(UnitStore(tmp_path / "cols"), 0, [dict(list(entries.items())[r::3]) for r in range(3)],
                  {"vocab_size": V})
    write_legacy_version(tmp_path / "old", "units", 0, [entries], {"vocab_size": V})
    kw = dict(layout, val_fraction=0.25, seed=5)
    cols, old = _dm(tmp_path / "cols", **kw), _dm(tmp_path / "old", **kw)
    for split in ("train", "val"):
        # the stream restated: S, then each utterance's units and S, utterances of the split in id order
        order = cols.ids[split]
        want = [V]
        for i in order:
            want += units[i].tolist() + [V]
        assert np.asarray(cols.datasets[split].stream).tolist() == want
        assert old.ids[split] == order
    for epoch in (0, 1):
        cols.trainer.current_epoch = old.trainer.current_epoch = epoch
        got, ref = list(cols.train_dataloader()), list(old.train_dataloader())
        assert len(got) == len(ref) > 0
        for x, y in zip(got, ref):
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x if k != "position")
