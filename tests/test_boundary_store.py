import numpy as np
import pytest

from datamodules.boundary_store import BoundaryStore, IncompleteVersionError
from datamodules.manifest import build_manifest
from syllablelm.audio.alignments import SegmentError

SEGS = {"a": np.array([[0.1, 0.3], [0.3, 0.5], [0.8, 1.0]]), "b": np.array([[0.0, 0.2]]), "c": np.zeros((0, 2))}


def _write_two_ranks(store, version):
    store.write_shard(version, 0, 2, {"a": SEGS["a"]})
    store.write_shard(version, 1, 2, {"b": SEGS["b"], "c": SEGS["c"]})


def test_round_trip_and_versions(tmp_path):
    store = BoundaryStore(tmp_path)
    _write_two_ranks(store, 0)
    assert store.versions() == [] and not store.is_complete(0)
    manifest = store.finalize(0, 2, meta={"source": "test"})
    assert manifest["num_utterances"] == 3 and store.versions() == [0] and store.latest_version() == 0
    loaded = store.load(0, durations={"a": 1.0, "b": 0.5, "c": 1.0})
    assert set(loaded) == {"a", "b", "c"}
    for k, v in SEGS.items():
        np.testing.assert_array_equal(loaded[k], v)


def test_half_written_version_is_never_read(tmp_path):
    store = BoundaryStore(tmp_path)
    _write_two_ranks(store, 0)
    store.finalize(0, 2)
    store.write_shard(1, 0, 2, {"a": SEGS["a"]})  # rank 1 never finished
    assert store.latest_version() == 0
    with pytest.raises(IncompleteVersionError, match="iter_1.*incomplete"):
        store.load(1)
    with pytest.raises(IncompleteVersionError, match=r"ranks \[1\]"):
        store.finalize(1, 2)
    # a crashed writer leaves only its temp file behind: not a shard, not a version
    (store.version_dir(2)).mkdir()
    (store.version_dir(2) / ".shard-00000-of-00001.npz.abc.tmp").write_bytes(b"partial")
    assert store.versions() == [0] and store.missing_shards(2, 1) == [0]
    # invalidating a version (before a rewrite) makes it incomplete again
    store.invalidate(0)
    assert store.latest_version() is None


def test_manifest_lists_shards_of_one_world_size_only(tmp_path):
    store = BoundaryStore(tmp_path)
    store.write_shard(0, 0, 1, {"stale": SEGS["b"]})  # an earlier single-process attempt
    _write_two_ranks(store, 0)
    store.finalize(0, 2)
    assert set(store.load(0)) == {"a", "b", "c"}
    assert not store.shard_path(0, 0, 1).exists()


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.3, 0.2]]), "end <= start"),
    (np.array([[0.0, 0.4], [0.3, 0.5]]), "overlap or are unsorted"),
    (np.array([[0.0, np.nan]]), "non-finite"),
    (np.array([0.0, 0.4, 0.5]), r"\(n, 2\)"),
])
def test_invalid_segments_are_refused_before_writing(tmp_path, bad, message):
    store = BoundaryStore(tmp_path)
    with pytest.raises(SegmentError, match=message):
        store.write_shard(0, 0, 1, {"x": bad})
    assert not store.shard_path(0, 0, 1).exists()


def test_load_checks_entries_against_durations_and_names_the_file(tmp_path):
    store = BoundaryStore(tmp_path)
    _write_two_ranks(store, 3)
    store.finalize(3, 2)
    with pytest.raises(SegmentError, match=r"shard-00000-of-00002\.values\.npy \[utterance a\].*after the end"):
        store.load(3, durations={"a": 0.9})


def test_duplicate_utterances_across_shards_are_an_error(tmp_path):
    store = BoundaryStore(tmp_path)
    store.write_shard(0, 0, 2, {"a": SEGS["a"]})
    store.write_shard(0, 1, 2, {"a": SEGS["a"]})
    with pytest.raises(SegmentError, match=r"utterance 'a' appears in more than one shard \(shard-00000-of-00002, "
                       r"shard-00001-of-00002\)"):
        store.finalize(0, 2)
    assert not store.version_dir(0).joinpath("manifest.json").exists()


def test_label_store_checks_labels_and_frame_counts(tmp_path):
    from datamodules.label_store import LabelStore
    from syllablelm.audio.frames import num_frames

    store = LabelStore(tmp_path)
    assert num_frames(16000) == 49 and num_frames(399) == 0
    store.write_shard(0, 0, 1, {"a": np.arange(49) % 7, "b": np.zeros(10, dtype=np.int64)})
    store.finalize(0, 1, meta={"num_labels": 7})
    loaded = store.load(0, {"a": 16000})
    assert loaded["a"].dtype == np.int32 and loaded["a"].tolist() == (np.arange(49) % 7).tolist()
    assert store.num_labels(0) == 7
    with pytest.raises(SegmentError, match=r"10 labels for 49 frames"):
        store.load(0, {"b": 16000})
    with pytest.raises(SegmentError, match="non-negative integer"):
        store.write_shard(1, 0, 1, {"x": np.array([0.5, 1.5])})


def test_unit_store_round_trip_and_checks(tmp_path):
    from datamodules.unit_store import UnitStore

    store = UnitStore(tmp_path)
    entries = {"a": (np.array([[0.1, 0.3], [0.3, 0.8]]), np.array([5, 16383])),
               "b": (np.zeros((0, 2)), np.zeros(0, int))}
    store.write_shard(0, 0, 1, entries)
    store.finalize(0, 1, meta={"vocab_size": 16384})
    loaded = store.load(0)
    np.testing.assert_array_equal(loaded["a"][0], entries["a"][0])
    assert loaded["a"][1].tolist() == [5, 16383] and loaded["a"][1].dtype == np.int64
    assert len(loaded["b"][1]) == 0 and store.vocab_size(0) == 16384
    with pytest.raises(SegmentError, match="one non-negative integer unit per segment"):
        store.write_shard(1, 0, 1, {"x": (np.array([[0.0, 0.1]]), np.array([1, 2]))})


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    from syllablelm.runtime.fileio import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644


def test_store_copy_command_copies_a_complete_version(tmp_path):
    from datamodules.shard_store import AbsentVersionError, DamagedVersionError
    from experiments.stores import main

    src, dst = BoundaryStore(tmp_path / "a"), BoundaryStore(tmp_path / "b")
    copy = ["--store", str(tmp_path / "a"), "--out", str(tmp_path / "b")]
    with pytest.raises(AbsentVersionError, match=r"a/iter_0: store version 0 does not exist .*does not exist"):
        main(copy)
    for rank in range(2):
        src.write_shard(0, rank, 2, {f"u{rank}": np.array([[0.0, 0.5], [0.5, 1.0 + rank]])})
    with pytest.raises(IncompleteVersionError, match=r"a/iter_0: store version 0 is incomplete .*2 shard\(s\) written"):
        main(copy)
    src.finalize(0, 2, meta={"stage": "TeacherModule", "command_line": ["syllablelm", "predict", "-c", "x.yaml"]})
    assert main(copy) == 0
    a, b = src.load(0), dst.load(0)
    assert sorted(a) == sorted(b) == ["u0", "u1"] and all(np.array_equal(a[k], b[k]) for k in a)
    meta, source = dst.manifest(0)["meta"], src.manifest(0)
    assert meta["stage"] == "TeacherModule" and meta["copied_from"].endswith("iter_0")
    assert meta["command_line"] != source["meta"]["command_line"]  # the copy records the command that copied it
    assert [s["files"] for s in dst.manifest(0)["shards"]] == [s["files"] for s in source["shards"]]
    assert dst.versions() == [0]
    # a damaged source is refused with the boundary store's error, naming the shard and the recorded command
    path = src.shard_path(0, 1, 2)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DamagedVersionError, match=r"shard-00001-of-00002.offsets.npy: boundary version 0 is damaged: .*"
                       r"truncated: .*rerun `syllablelm predict -c x.yaml`"):
        main([*copy, "--out-version", "1"])
    assert not BoundaryStore(tmp_path / "b").version_dir(1).exists()


def test_noisy_segments_keeps_gaps_and_run_edges():
    from experiments.stores import noisy_segments, touching_runs
    from syllablelm.evaluation.boundary_metrics import boundary_scores

    ref = np.array([[0.1, 0.3], [0.3, 0.5], [0.5, 0.8], [1.2, 1.4], [1.4, 1.7]])  # a pause 0.8-1.2
    assert [len(r) for r in touching_runs(ref)] == [3, 2]
    rng = np.random.default_rng(0)
    assert np.array_equal(noisy_segments(ref, rng), ref)  # no noise: the reference itself
    dropped = noisy_segments(ref, rng, drop=1.0)
    assert dropped.tolist() == [[0.1, 0.8], [1.2, 1.7]]  # only the run edges survive
    for _ in range(20):
        noisy = noisy_segments(ref, rng, drop=0.3, insert=0.5, jitter=0.03)
        check = BoundaryStore.encode(None, "u", noisy, 0)  # sorted, non-overlapping
        assert np.all(np.diff(check, axis=1) >= 0.02 - 1e-9)
        runs = touching_runs(noisy)
        assert [(r[0, 0], r[-1, 1]) for r in runs] == [(0.1, 0.8), (1.2, 1.7)]
    with pytest.raises(ValueError, match="drop"):
        noisy_segments(ref, rng, drop=1.5)
    # many utterances: noise lowers the agreement with the reference roughly as asked
    refs = [np.stack([np.arange(0, 3, 0.2), np.arange(0.2, 3.2, 0.2)], 1) for _ in range(50)]
    noisy = [noisy_segments(r, rng, drop=0.3, insert=0.3) for r in refs]
    s = boundary_scores(noisy, refs, protocol="syllablelm")
    inner = 14
    assert 0.6 < s["recall"] < 0.85  # ~ (2 + 0.7 * 14) / 16 plus lucky insertions
    assert abs(s["n_pred"] - 50 * (2 + inner * 0.7 + inner * 0.3)) < 0.15 * s["n_pred"]


def test_store_reference_command_writes_the_aligned_syllables(synth_corpus, tmp_path):
    from pathlib import Path

    from experiments.cli import main
    from syllablelm.audio.alignments import index_alignments, load_alignment

    folders = [str(synth_corpus / s) for s in ("train", "dev")]
    out = tmp_path / "ref"
    assert main(["store-reference", "--data", *folders, "--alignments", str(synth_corpus / "alignments"),
                 "--out", str(out), "--manifest-cache", str(tmp_path / "cache")]) == 0
    got = BoundaryStore(out).load(0)
    index = index_alignments(synth_corpus / "alignments")
    n_audio = sum(1 for f in folders for _ in Path(f).rglob("*.flac"))
    assert len(got) == n_audio > 0
    for utt, segs in got.items():
        assert np.allclose(segs, load_alignment(index[utt])["syllables"][0])
    assert main(["store-reference", "--data", *folders, "--alignments", str(synth_corpus / "alignments"),
                 "--out", str(out), "--version", "1", "--drop", "0.5", "--seed", "1",
                 "--manifest-cache", str(tmp_path / "cache")]) == 0
    noisy = BoundaryStore(out).load(1)
    assert sorted(noisy) == sorted(got)
    assert sum(map(len, noisy.values())) < sum(map(len, got.values()))
    assert BoundaryStore(out).manifest(1)["meta"]["drop"] == 0.5


def test_store_envelope_command_writes_the_envelope_baseline(synth_corpus, tmp_path):
    from experiments.cli import main
    from syllablelm.audio.io import read_audio
    from syllablelm.boundaries.baselines import envelope_segments

    folders = [str(synth_corpus / s) for s in ("train", "dev")]
    out, cache = tmp_path / "env", str(tmp_path / "cache")
    assert main(["store-envelope", "--data", *folders, "--out", str(out), "--cutoff-hz", "6",
                 "--prominence", "0.2", "--manifest-cache", cache]) == 0
    got = BoundaryStore(out).load(0)
    entries = build_manifest(folders, cache_dir=cache, progress=False).entries
    assert sorted(got) == sorted(e.id for e in entries) and len(got) > 0
    for e in entries:
        want = envelope_segments(read_audio(e.path).numpy(), 16000, cutoff_hz=6.0, prominence=0.2)
        assert np.allclose(got[e.id], want)
    # tuned on dev: the stored parameters are tune_envelope's, and a missing parameter is a clear error
    assert main(["store-envelope", "--data", *folders, "--out", str(out), "--version", "1", "--tune-data",
                 str(synth_corpus / "dev"), "--alignments", str(synth_corpus / "alignments"),
                 "--manifest-cache", cache]) == 0
    meta = BoundaryStore(out).manifest(1)["meta"]
    assert meta["stage"] == "envelope" and {"cutoff_hz", "prominence"} <= set(meta)
    with pytest.raises(SystemExit, match="--prominence"):
        main(["store-envelope", "--data", *folders, "--out", str(out), "--cutoff-hz", "6"])
