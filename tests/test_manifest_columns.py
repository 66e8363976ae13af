"""The columnar manifest (issue 28): strings as one buffer, id lookups without a dict, the listing without per-file
objects, the cache as columns written once, and decode checks shared across ranks (each file decoded once, the
merged manifest what one process builds)."""
from __future__ import annotations

import collections
import json
import os
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import datamodules.manifest as M
import datamodules.manifest_cache as C
import syllablelm.runtime.strings as S
from datamodules.manifest import ByIdView, Entry, Manifest, Ranks, Strings, build_manifest, utterance_id
from datamodules.speech import SpeechDataModule
from syllablelm.audio.io import iter_audio, list_audio
from tests.conftest import make_librispeech

WORDS = ["", "a", "1-2-3", "ünï/cödé", "x" * 300, "spk/book/chapter_01", "日本語", "a\tb"]


def random_strings(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [WORDS[int(rng.integers(len(WORDS)))] + str(int(rng.integers(1000))) * int(rng.integers(0, 3))
            for _ in range(n)]


# ---- strings ------------------------------------------------------------------------------------------------
def test_strings_are_the_python_strings_they_were_made_from():
    words = random_strings(9000, 0)  # more than one 4096-string decode block, ASCII and not
    s = Strings.from_iter(words)
    assert len(s) == len(words) and list(s) == words
    assert s[0] == words[0] and s[-1] == words[-1] and s[4097] == words[4097]
    assert s.data.nbytes == sum(len(w.encode()) for w in words)  # one buffer, nothing else per string
    with pytest.raises(IndexError):
        s[len(words)]
    idx = np.random.default_rng(1).integers(0, len(words), 5000)  # repeats and any order
    assert list(s.take(idx)) == [words[i] for i in idx]
    assert list(s[10:20:3]) == words[10:20:3]
    assert list(Strings.concat([s.take(idx[:7]), Strings(), s[3:5]])) == [words[i] for i in idx[:7]] + words[3:5]
    assert s.take(idx[:50]) == Strings.from_iter(words[i] for i in idx[:50])
    assert s.take(idx[:50]) != Strings.from_iter(words[i] for i in idx[1:51])
    assert list(Strings.from_iter([])) == [] and list(s.take([])) == []


def entries_of(n: int, seed: int, prefix: str = "") -> list[Entry]:
    rng = np.random.default_rng(seed)
    return [Entry(f"{prefix}{i // 7}-{i % 7}-{i:04d}", f"/data/{prefix}{i}.flac", int(rng.integers(1, 10 ** 7)),
                  int(rng.choice([8000, 16000, 22050, 44100])), int(rng.integers(1, 3))) for i in range(n)]


def test_manifest_columns_answer_what_the_entries_did():
    es = entries_of(300, 0)
    m = Manifest.from_entries(es, {"/bad.flac": "empty"})
    assert len(m) == 300 and list(m.entries) == es and m.entries == es and m.entries[-1] == es[-1]
    assert m.entries[5:8] == es[5:8]
    # the arithmetic the per-entry objects did, restated with Python numbers
    assert m.seconds.tolist() == [e.num_samples / e.sample_rate for e in es]
    assert m.samples_at(16000).tolist() == [e.num_samples * 16000 // e.sample_rate for e in es]
    pick = [299, 3, 3, 0, 150]
    assert list(m.take(pick).entries) == [es[i] for i in pick] and m.take(pick).skipped == m.skipped
    other = Manifest.from_entries(entries_of(20, 1, "x"), {"/b.wav": "too short"})
    both = Manifest.concat([m, other])
    assert list(both.entries) == es + list(other.entries) and both.skipped == {**m.skipped, **other.skipped}
    for i, e in enumerate(es):
        assert m.index_of(e.id) == i
    assert m.index_of("nope") == -1 and m.index_of("") == -1
    assert m.indices_of(Strings.from_iter(["nope", es[7].id, es[0].id])).tolist() == [-1, 7, 0]


def test_by_id_views_are_the_dicts_they_replace():
    first, second = entries_of(50, 2), entries_of(30, 3, "y")
    second[:10] = [Entry(e.id, e.path, e.num_samples + 1, e.sample_rate, 1) for e in first[5:15]]  # ids in both
    ms = [Manifest.from_entries(first), Manifest.from_entries(second)]
    seconds = {e.id: e.num_samples / e.sample_rate for m in ms for e in m.entries}  # later manifests win
    samples = {e.id: e.num_samples * 16000 // e.sample_rate for m in ms for e in m.entries}
    view = ByIdView(ms, "seconds")
    assert dict(view) == seconds and len(view) == len(seconds) and sorted(view) == sorted(seconds)
    assert dict(ByIdView(ms + [ms[0]], "samples", 16000)) == samples  # one manifest object twice: searched once
    assert view.get("nope") is None and view.get("nope", 1.5) == 1.5 and "nope" not in view and 3 not in view
    with pytest.raises(KeyError):
        view["nope"]
    assert all(u in view and view[u] == s and view.get(u) == s for u, s in seconds.items())
    assert dict(ms[1].samples_by_id(8000)) == {e.id: e.num_samples * 8000 // e.sample_rate for e in second}


@pytest.mark.parametrize("buckets", [1, 2])
def test_id_lookups_and_duplicates_stay_exact_when_hashes_collide(monkeypatch, buckets):
    """Every id hashed to one (or two) values: only the exact comparison tells them apart."""
    monkeypatch.setattr(S, "hash", lambda s: len(s) % buckets, raising=False)
    es = entries_of(40, 4)
    m = Manifest.from_entries(es)
    assert [m.index_of(e.id) for e in es] == list(range(40)) and m.index_of("0-0-9999") == -1
    queries = Strings.from_iter([es[9].id, "zz", es[39].id, es[0].id])
    assert m.indices_of(queries).tolist() == [9, -1, 39, 0]
    M._refuse_duplicates(m)  # equal hashes of different ids are no duplicate
    dup = Manifest.from_entries(es[:5] + [Entry(es[2].id, "/elsewhere.flac", 5, 16000, 1)] + es[5:])
    with pytest.raises(ValueError, match=f"duplicate utterance id '{es[2].id}': /data/2.flac and /elsewhere.flac"):
        M._refuse_duplicates(dup)


def test_ids_from_keys_are_utterance_ids(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    keys = ["1-2-0003.flac", "a/b/1-2-0003.flac", "100/sea_fairies/01_baum.flac", "x.y.z.wav", "a/b.c/d.FLAC",
            "a..flac", "sp/1-2-x.flac", "ünï/f.ogg"]
    for key in keys:
        assert M._key_id(key, single_file=False) == utterance_id(root / key, root), key
    single = tmp_path / "100-1-0001.x.flac"
    single.write_bytes(b"")
    assert M._key_id(single.name, single_file=True) == utterance_id(single, single)


# ---- the listing ----------------------------------------------------------------------------------------------
def test_listing_order_links_and_limit(tmp_path):
    """``Path`` order (part by part: ``a/x`` before ``a-b``), links followed once, the first path met kept."""
    root = tmp_path / "r"
    for rel in ["a/x.flac", "a/y/z.wav", "a-b.flac", "a.flac", "b/m.flac", ".hidden/h.flac", "c/.h.flac", "c/k.flac"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    outside = tmp_path / "outside.flac"
    outside.write_bytes(b"x")
    os.symlink(root / "b" / "m.flac", root / "a" / "l.flac")  # a's files come before folder b: listed here
    os.symlink(root / "a" / "x.flac", root / "b" / "n.flac")  # its target was listed already
    os.symlink(root / "c" / "k.flac", root / "c" / "j.flac")  # before its target, in the same folder
    os.symlink(root / "c" / "k.flac", root / "c" / "l.flac")  # after it
    os.symlink(outside, root / "c" / "o1.flac")
    os.symlink(outside, root / "c" / "o2.flac")  # the same file again
    os.symlink(root / "c" / ".h.flac", root / "c" / "p.flac")  # a hidden file is not listed itself
    os.symlink(root, root / "c" / "loop")  # a cycle
    os.symlink(tmp_path / "gone.flac", root / "c" / "broken.flac")
    expected = ["a/l.flac", "a/x.flac", "a/y/z.wav", "a-b.flac", "a.flac", "c/j.flac", "c/o1.flac", "c/p.flac"]
    found = list(iter_audio(root))
    assert found == [str(root / e) for e in expected]
    assert list_audio(root) == [root / e for e in expected] == sorted(root / e for e in expected)
    # limit: the first files met (a folder's files before its sub-folders), sorted
    assert list_audio(root, limit=4) == [root / e for e in ["a/l.flac", "a/x.flac", "a-b.flac", "a.flac"]]
    assert list(iter_audio(root / "a.flac")) == [str(root / "a.flac")]
    with pytest.raises(FileNotFoundError, match="no such audio folder"):
        iter_audio(tmp_path / "missing")


# ---- the cache --------------------------------------------------------------------------------------------------
def write_corpus(root: Path) -> list[str]:
    ids = make_librispeech(root, speakers=2, utts=4, seconds=(0.6, 1.2))
    sf.write(root / "2" / "101" / "2-101-0009.flac", np.zeros(400), 16000)  # too short
    (root / "2" / "101" / "2-101-0010.flac").write_bytes(b"no audio here")  # unreadable
    return ids


def counting_check(monkeypatch) -> collections.Counter:
    opened: collections.Counter = collections.Counter()
    lock, real = threading.Lock(), C._check

    def check(path, verify):
        with lock:
            opened[os.path.basename(path)] += 1
        return real(path, verify)
    monkeypatch.setattr(C, "_check", check)
    return opened


def test_the_cache_is_columns_written_once_and_an_old_one_is_rebuilt(tmp_path, monkeypatch):
    root = tmp_path / "c"
    write_corpus(root)
    cache = tmp_path / "cache"
    legacy = C._cache_path(root.resolve(), "decode", cache).with_suffix(".json")
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"format": 3, "rows": {}}))  # an old JSON cache: not read, replaced
    writes = []
    real_write = C.write_npz
    monkeypatch.setattr(C, "write_npz", lambda path, **a: writes.append(Path(path).name) or real_write(path, **a))
    opened = counting_check(monkeypatch)
    first = build_manifest(root, cache_dir=cache, min_seconds=0.5, progress=False)
    assert len(writes) == 1 and set(opened.values()) == {1} and len(opened) == 10 and not legacy.exists()
    with np.load(cache / writes[0]) as z:
        assert int(z["format"]) == C.CACHE_FORMAT
        keys = list(Strings(z["keys"], z["key_offsets"]))
        assert keys == [str(p.relative_to(root.resolve())) for p in list_audio(root.resolve())]
        problems = list(Strings(z["problems"], z["problem_offsets"]))
        bad = {keys[i]: problems[c] for i, c in enumerate(z["problem"].tolist()) if c >= 0}
        assert list(bad) == ["2/101/2-101-0010.flac"] and "unreadable" in bad["2/101/2-101-0010.flac"]
        assert all(z[k].dtype == np.int64 for k in ("size", "mtime_ns", "num_samples"))
    opened.clear()
    again = build_manifest(root, cache_dir=cache, min_seconds=0.5, progress=False)
    assert not opened and len(writes) == 1 and again.entries == first.entries and again.skipped == first.skipped
    assert sorted(os.path.basename(p) for p in again.skipped) == ["2-101-0009.flac", "2-101-0010.flac"]
    (cache / writes[0]).write_bytes(b"damaged")  # a damaged cache is rebuilt, not trusted
    third = build_manifest(root, cache_dir=cache, min_seconds=0.5, progress=False)
    assert len(opened) == 10 and third.entries == first.entries and len(writes) == 2


def test_checks_in_flight_are_bounded(tmp_path, monkeypatch):
    root = tmp_path / "c"
    write_corpus(root)
    monkeypatch.setattr(C, "CHECK_CHUNK", 3)
    state = {"started": 0, "taken": 0, "most": 0}
    lock, real_check, real_take = threading.Lock(), C._check, C._take_verdict

    def check(path, verify):
        with lock:
            state["started"] += 1
            state["most"] = max(state["most"], state["started"] - state["taken"])
        return real_check(path, verify)

    def take(*a):
        real_take(*a)
        with lock:
            state["taken"] += 1
    monkeypatch.setattr(C, "_check", check)
    monkeypatch.setattr(C, "_take_verdict", take)
    m = build_manifest(root, cache_dir=tmp_path / "cache", min_seconds=0.5, num_workers=4, progress=False)
    assert state["taken"] == 10 and 1 <= state["most"] <= 3
    one_by_one = build_manifest(root, cache_dir=tmp_path / "cache2", min_seconds=0.5, num_workers=1, progress=False)
    assert m.entries == one_by_one.entries and m.skipped == one_by_one.skipped


# ---- sharded verification ---------------------------------------------------------------------------------------
def run_ranks(world: int, build, barrier: bool = True) -> list:
    """``build(ranks)`` on ``world`` threads; returns each rank's result or exception."""
    meet = threading.Barrier(world, timeout=60) if barrier else None
    results: list = [None] * world

    def one(rank):
        try:
            results[rank] = build(Ranks(rank, world, meet.wait if meet else None, wait_timeout=20, poll=0.02))
        except Exception as e:
            results[rank] = e
    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def same_manifest(a: Manifest, b: Manifest) -> bool:
    return a.entries == b.entries and a.skipped == b.skipped


@pytest.mark.parametrize("barrier", [True, False])
def test_ranks_decode_each_file_once_and_merge_what_one_process_builds(tmp_path, monkeypatch, barrier):
    root = tmp_path / "c"
    write_corpus(root)
    alone = build_manifest(root, cache_dir=tmp_path / "alone", min_seconds=0.5, progress=False)
    opened = counting_check(monkeypatch)
    shared = tmp_path / "shared"

    def build(ranks):
        return build_manifest(root, cache_dir=shared, min_seconds=0.5, progress=False, ranks=ranks)
    results = run_ranks(2, build, barrier)
    assert all(isinstance(r, Manifest) for r in results), results
    assert sorted(opened) == sorted(os.path.basename(p) for p in list_audio(root)) and set(opened.values()) == {1}
    assert all(same_manifest(r, alone) for r in results)
    assert sorted(p.name for p in shared.iterdir()) == [C._cache_path(root.resolve(), "decode", shared).name]
    # the merged cache holds what one process caches, row for row
    merged = C.Rows.load(C._cache_path(root.resolve(), "decode", shared))[0]
    single = C.Rows.load(C._cache_path(root.resolve(), "decode", tmp_path / "alone"))[0]
    assert merged.keys == single.keys
    for column in ("size", "mtime", "num_samples", "sample_rate", "channels"):
        assert np.array_equal(getattr(merged, column), getattr(single, column)), column
    assert [merged.problems[c] if c >= 0 else None for c in merged.problem] == \
        [single.problems[c] if c >= 0 else None for c in single.problem]
    # a rescan opens nothing; two changed files among three ranks: each checked once, one rank has none
    opened.clear()
    assert all(same_manifest(r, alone) for r in run_ranks(2, build, barrier)) and not opened
    sf.write(root / "1" / "101" / "1-101-0000.flac", np.zeros(200), 16000)  # now too short
    (root / "2" / "101" / "2-101-0010.flac").unlink()
    sf.write(root / "2" / "101" / "2-101-0010.flac", np.zeros(16000), 16000)  # now readable
    alone = build_manifest(root, cache_dir=tmp_path / "alone", min_seconds=0.5, progress=False)
    opened.clear()
    results = run_ranks(3, build, barrier)
    assert all(isinstance(r, Manifest) and same_manifest(r, alone) for r in results), results
    assert dict(opened) == {"1-101-0000.flac": 1, "2-101-0010.flac": 1}


def test_ranks_without_a_shared_cache_stop_with_a_named_error(tmp_path):
    root = tmp_path / "c"
    write_corpus(root)

    def build(ranks):  # each rank its own cache folder: what node-local caches look like
        ranks = Ranks(ranks.rank, ranks.world, ranks.barrier, wait_timeout=0.3, poll=0.02)
        return build_manifest(root, cache_dir=tmp_path / f"node{ranks.rank}", min_seconds=0.5, progress=False,
                              ranks=ranks)
    first, second = run_ranks(2, build)
    part = C._part_path(C._cache_path(root.resolve(), "decode", tmp_path / "node0"), 1, 2)
    assert isinstance(first, TimeoutError) and str(part) in str(first) and "missing" in str(first)
    assert "must be one folder all ranks share" in str(first)
    assert isinstance(second, TimeoutError) and str(tmp_path / "node1") in str(second)
    assert "must be one folder all ranks share" in str(second)


def test_the_datamodule_builds_manifests_together_in_setup(tmp_path, monkeypatch):
    """Two ranks of a trainer (its strategy's barrier): prepare_data leaves the manifests to setup, which decodes
    each file once over both ranks; both see the manifests a single process builds."""
    root = tmp_path / "c"
    write_corpus(root)
    alone = SpeechDataModule(train_dirs=[str(root)], manifest_cache=str(tmp_path / "alone"), num_workers=0)
    alone.prepare_data()
    alone.setup("fit")
    opened = counting_check(monkeypatch)
    meet = threading.Barrier(2, timeout=60)
    modules = []

    def build(ranks):
        dm = SpeechDataModule(train_dirs=[str(root)], val_dirs=[str(root)], manifest_cache=str(tmp_path / "shared"),
                              num_workers=0)
        dm.trainer = types.SimpleNamespace(global_rank=ranks.rank, world_size=2,
                                           strategy=types.SimpleNamespace(barrier=lambda name=None: meet.wait()))
        modules.append(dm)
        dm.prepare_data()
        assert not dm._scans  # left to setup
        dm.setup("fit")
        return dm
    results = run_ranks(2, build)
    assert all(isinstance(r, SpeechDataModule) for r in results), results
    assert set(opened.values()) == {1} and len(opened) == 10
    for dm in results:
        assert same_manifest(dm.manifest("train"), alone.manifest("train"))
        assert same_manifest(dm.manifest("val"), alone.manifest("train"))


# ---- boundaries on any read-only mapping ------------------------------------------------------------------------
def test_boundary_versions_swap_on_read_only_mappings_and_stores_validate_on_views(tmp_path, monkeypatch):
    from datamodules.boundary_store import BoundaryStore
    from datamodules.label_store import LabelStore

    root = tmp_path / "c"
    ids = make_librispeech(root, speakers=2, utts=3)
    contexts = []

    def load(self, version, context=None):  # what the memory-mapped stores return: read-only, no clear/update
        contexts.append(context)
        return types.MappingProxyType({u: np.array([[0.0, 0.1 * (version + 1)]]) for u in ids[: 3 + version]})
    monkeypatch.setattr(BoundaryStore, "load", load)
    monkeypatch.setattr(LabelStore, "resolve", lambda self, v: 0)
    monkeypatch.setattr(LabelStore, "load", lambda self, v, context=None: contexts.append(context) or {})
    dm = SpeechDataModule(train_dirs=[str(root)], boundary_dir=str(tmp_path / "b"), boundary_version=0,
                          require_boundaries=True, label_dir=str(tmp_path / "l"), num_workers=0,
                          manifest_cache=str(tmp_path / "cache"))
    dm.setup("fit")
    ds = dm.dataset("train")
    assert [e.id for e in ds.entries] == ids[:3]
    np.testing.assert_allclose(ds.load(0)["segments"], [[0.0, 0.1]])
    dm.set_boundary_version(1)  # the live dataset sees the new version
    np.testing.assert_allclose(ds.load(0)["segments"], [[0.0, 0.2]])
    assert [e.id for e in dm.dataset("train").entries] == ids[:4]
    entries = list(dm.manifest("train").entries)
    seconds, samples = contexts[0], contexts[1]
    assert not isinstance(seconds, dict) and not isinstance(samples, dict)
    assert dict(seconds) == {e.id: e.seconds for e in entries} == dict(contexts[2])
    assert dict(samples) == {e.id: e.num_samples * 16000 // e.sample_rate for e in entries}
