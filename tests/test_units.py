"""Stage 3 units: pooling, SylBoost targets, standardisation, k-means/Ward, dedup, quantizer files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from syllablelm.units import clustering as K
from syllablelm.units import quantizer as U
from syllablelm.units.quantizer import UnitQuantizer


def ramp(T: int, D: int = 2) -> torch.Tensor:
    """Frame t has value t in every dim, so a mean over [lo, hi) is (lo + hi - 1) / 2."""
    return torch.arange(T, dtype=torch.float32).unsqueeze(1).repeat(1, D)  # (T, D)


def naive_range(s: int, e: int, mode: str) -> tuple[int, int]:
    L = e - s
    if mode == "drop_edge":
        return (s + 1, e - 1) if L > 2 else (s, e)
    if mode == "middle_third_symmetric":
        return s + int(L * 0.33), e - int(L * 0.33)
    # the authors' data loader, in Python float arithmetic (from_pct = 0.33, to_pct = 0.67)
    return s + int(L * 0.33), e - int(L * (1 - 0.67))


# -------------------------------------------------------------------------------------------- pooling
def test_as_segments_from_boundaries_and_passthrough():
    b = torch.tensor([0, 3, 7, 10])
    assert U.as_segments(b).tolist() == [[0, 3], [3, 7], [7, 10]]
    np.testing.assert_array_equal(U.as_segments(np.array([[2, 5], [8, 9]])), [[2, 5], [8, 9]])
    assert U.as_segments(torch.tensor([0])).shape == (0, 2)


def test_drop_edge_by_hand():
    x = ramp(12)
    got = U.pool_segments(x, torch.tensor([0, 5, 7, 8, 12]), "drop_edge")[:, 0]
    # [0,5) -> frames 1..3; [5,7) len 2 -> whole; [7,8) len 1 -> whole; [8,12) -> frames 9..10
    assert got.tolist() == [2.0, 5.5, 7.0, 9.5]
    assert U.pool_segments(x, torch.tensor([[2, 5]]), "drop-edge")[0, 0] == 3.0  # len 3 -> middle frame only


def test_middle_third_by_hand():
    x = ramp(30)
    segs = torch.tensor([[0, 2], [2, 5], [5, 9], [9, 16], [16, 30]])
    got = U.pool_segments(x, segs, "middle_third")[:, 0]
    # len 2, 3 -> whole; len 4 -> [6, 8); len 7 -> int(2.31)=2 -> [11, 14); len 14 -> int(4.62)=4 -> [20, 26)
    assert got.tolist() == [0.5, 3.0, 6.5, 12.0, 22.5]
    # L = 100: int(33.0) = 33 at the start, int(100 * 0.32999999999999996) = 32 at the end (the authors' floats)
    lo, hi = U.pooling_range(np.array([[0, 100], [7, 8], [0, 200]]), "middle_third")
    assert lo.tolist() == [33, 7, 66] and hi.tolist() == [68, 8, 135]
    lo, hi = U.pooling_range(np.array([[0, 100], [0, 200]]), "middle_third_symmetric")
    assert lo.tolist() == [33, 66] and hi.tolist() == [67, 134]


def test_pooling_with_gaps_numpy_in_numpy_out():
    x = ramp(20).numpy()
    out = U.pool_segments(x, np.array([[0, 4], [10, 13]]), "mean")  # frames 4..9 and 13.. are a pause
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [1.5, 11.0])


@pytest.mark.parametrize("mode", ["drop_edge", "middle_third", "middle_third_symmetric"])
def test_vectorised_pooling_equals_naive_loop(mode):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        T, D = 200, 8
        x = torch.randn(T, D, generator=g) * 10 + 3
        cuts = torch.unique(torch.randint(0, T, (40,), generator=g)).tolist()
        segs = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if torch.rand(1, generator=g) < 0.8]  # leaves gaps
        got = U.pool_segments(x, torch.tensor(segs), mode)
        ref = torch.stack([x[slice(*naive_range(s, e, mode))].double().mean(0) for s, e in segs]).float()
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)


def test_batched_pooling_matches_per_item():
    x = torch.randn(3, 50, 4)
    segs = torch.tensor([[0, 10], [10, 25], [3, 9], [40, 50]])
    batch = torch.tensor([0, 0, 1, 2])
    got = U.pool_segments(x, segs, "drop_edge", batch_index=batch)
    for i in range(4):
        torch.testing.assert_close(got[i], U.pool_segments(x[batch[i]], segs[i:i + 1], "drop_edge")[0])


def test_pooling_rejects_empty_or_out_of_range_segments():
    with pytest.raises(ValueError):
        U.pool_segments(ramp(10), torch.tensor([[3, 3]]))
    with pytest.raises(ValueError):
        U.pool_segments(ramp(10), torch.tensor([[5, 11]]))
    with pytest.raises(ValueError):
        U.pool_segments(ramp(10), torch.tensor([[0, 5]]), "median")


def test_float64_accumulation():
    x = torch.full((400, 1), 1e4) + torch.arange(400.0).unsqueeze(1) * 1e-3  # big offset, small signal
    got = U.pool_segments(x, torch.tensor([[397, 400]]), "mean")[0, 0]
    assert abs(float(got) - (1e4 + 0.398)) < 2e-3  # a float32 cumsum is off by ~0.01 here


# ------------------------------------------------------------------------------------------- targets
def test_segment_cuts_gap_becomes_segment_and_last_runs_to_end():
    cuts = U.segment_cuts(np.array([[3, 8], [12, 20], [20, 26]]), 24)
    np.testing.assert_array_equal(cuts, [3, 8, 12, 20, 24])  # 26 lies beyond the crop end
    assert U.segment_cuts(torch.tensor([[0, 5], [5, 10]]), 10).tolist() == [0, 5, 10]  # T is not cut twice


def test_segment_mean_targets():
    x = ramp(30)
    tgt = U.segment_mean_targets(x, torch.tensor([[3, 8], [12, 20]]), 28)
    assert tgt.shape == x.shape
    assert (tgt[:3] == 0).all() and (tgt[28:] == 0).all()  # before the first cut; past T (padding)
    # segments [3,8) [8,12) gap [12,20) [20,28); middle third: [4,7) [9,11) [14,18) [22,26)
    expect = {range(3, 8): 5.0, range(8, 12): 9.5, range(12, 20): 15.5, range(20, 28): 23.5}
    for frames, value in expect.items():
        assert (tgt[list(frames), 0] == value).all(), (frames, tgt[list(frames), 0])


def test_segment_mean_targets_batched_equals_unbatched():
    x = torch.randn(2, 40, 3)
    segs = [np.array([[0, 10], [15, 30]]), np.array([[5, 9], [9, 33]])]
    out = U.segment_mean_targets(x, segs, [40, 35])
    for b, T in enumerate([40, 35]):
        torch.testing.assert_close(out[b], U.segment_mean_targets(x[b], segs[b], T))
    assert U.segment_mean_targets(x[0], np.zeros((0, 2)), 40).abs().sum() == 0  # no segments: all zero


# -------------------------------------------------------------------------------------- standardise
def test_standardize():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    z = U.standardize(x)
    torch.testing.assert_close(z[0], (x[0] - 2.5) / x[0].std())
    assert z[0].mean().abs() < 1e-6 and abs(float(z[0].std()) - 1.0) < 1e-6
    assert (z[1] == 0).all()  # constant vector: eps keeps it finite
    zn = U.standardize(x.numpy().astype(np.float16))
    assert isinstance(zn, np.ndarray) and zn.dtype == np.float32
    np.testing.assert_allclose(zn, z.numpy(), atol=1e-3)


# -------------------------------------------------------------------------------------- clustering
def blobs(n_centers=6, per=150, D=16, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, D)) * 3
    labels = np.repeat(np.arange(n_centers), per)
    return (centers[labels] + spread * rng.standard_normal((len(labels), D))).astype(np.float32), labels


def assert_recovers(C, X, labels, exact=True):
    """Every centroid's points come from one true cluster; with ``exact`` also one centroid per cluster."""
    ids = UnitQuantizer(C, np.arange(len(C)), standardize=False).assign(X)
    for i in np.unique(ids):
        assert len(np.unique(labels[ids == i])) == 1  # no centroid straddles two clusters
    if exact:
        for c in np.unique(labels):
            assert len(np.unique(ids[labels == c])) == 1


def test_kmeans_sklearn_recovers_exact_k():
    X, labels = blobs()
    C = K.kmeans(X, 6, backend="sklearn", seed=1)
    assert C.shape == (6, 16) and C.dtype == np.float32
    assert_recovers(C, X, labels)


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_kmeans_backends_overcluster_purely_and_deterministically(backend):
    # faiss initialises from random points (no k-means++), so with K equal to the true count it can leave a
    # cluster uncovered; over-clustering (the real use: 24576 centroids) is what both backends must get right
    if backend == "faiss" and not K.faiss_available():
        pytest.skip("faiss not installed (optional extra [faiss])")
    X, labels = blobs()
    C = K.kmeans(X, 18, backend=backend, seed=1, n_init=3)
    assert C.shape == (18, 16) and C.dtype == np.float32
    assert_recovers(C, X, labels, exact=False)
    np.testing.assert_array_equal(C, K.kmeans(torch.from_numpy(X), 18, backend=backend, seed=1, n_init=3))


def test_kmeans_streaming_chunks():
    X, labels = blobs(seed=2)
    perm = np.random.default_rng(0).permutation(len(X))
    chunks = list(np.array_split(X[perm], 9))  # chunks smaller than the init needs: they are re-batched
    C = K.kmeans(chunks, 6, backend="sklearn", seed=0, batch_size=256, stream_epochs=3)
    assert_recovers(C, X, labels)


def test_agglomerate_consistent_map():
    rng = np.random.default_rng(0)
    groups = rng.standard_normal((4, 8)) * 5
    C = np.repeat(groups, 3, axis=0) + 0.01 * rng.standard_normal((12, 8))  # 4 groups of 3 centroids
    perm = rng.permutation(12)
    agg = K.agglomerate(C[perm], 4)
    group = np.repeat(np.arange(4), 3)[perm]
    assert agg.dtype == np.int64 and agg.shape == (12,) and agg[0] == 0 and set(agg) == set(range(4))
    for g in range(4):
        assert len(set(agg[group == g])) == 1
    np.testing.assert_array_equal(K.agglomerate(C, 20), np.arange(12))


def test_quantizer_fit_assign_merged_equals_lookup():
    X, labels = blobs(n_centers=4, per=100)
    q = UnitQuantizer.fit(X, k=8, k_merged=4, backend="sklearn", seed=0)
    assert (q.k, q.k_merged, q.dim) == (8, 4, 16)
    raw, merged = q.assign(X, merged=False), q.assign(X)
    np.testing.assert_array_equal(merged, q.agglom[raw])
    for c in range(4):
        assert len(np.unique(merged[labels == c])) == 1
    # chunking does not change the answer; torch in -> torch out
    t = q.assign(torch.from_numpy(X), max_elements=8 * 7)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long
    np.testing.assert_array_equal(t.numpy(), merged)


# -------------------------------------------------------------------------------------------- dedup
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_dedup(kind):
    conv = (lambda a: torch.as_tensor(np.asarray(a))) if kind == "torch" else np.asarray
    segs = conv([[0.0, 0.2], [0.2, 0.5], [0.7, 0.9], [0.9, 1.0], [1.0, 1.3]])  # pause 0.5..0.7
    s, u = U.dedup(segs, conv([4, 4, 4, 1, 4]))  # a run across the pause merges (official behaviour)
    np.testing.assert_allclose(np.asarray(s), [[0.0, 0.9], [0.9, 1.0], [1.0, 1.3]])
    assert np.asarray(u).tolist() == [4, 1, 4]
    s, u = U.dedup(segs[:1], conv([7]))
    assert np.asarray(s).tolist() == [[0.0, 0.2]] and np.asarray(u).tolist() == [7]
    s, u = U.dedup(conv(np.zeros((0, 2))), conv(np.zeros(0, np.int64)))
    assert np.asarray(s).shape == (0, 2) and len(u) == 0
    s, u = U.dedup(segs[:4], conv([1, 2, 1, 2]))  # alternating: nothing merges
    np.testing.assert_allclose(np.asarray(s), np.asarray(segs[:4]))
    assert np.asarray(u).tolist() == [1, 2, 1, 2]


# ----------------------------------------------------------------------------------- quantizer files
def small_quantizer():
    X, _ = blobs(n_centers=5, per=60, D=12)
    return UnitQuantizer.fit(X, k=10, k_merged=5, backend="sklearn", seed=0, feature_layer=11), X


def test_save_load_round_trip_atomic(tmp_path):
    q, X = small_quantizer()
    path = tmp_path / "quantizer.npz"
    q.save(path)
    assert os.listdir(tmp_path) == ["quantizer.npz"]  # the temporary file was renamed, none left
    r = UnitQuantizer.load(path)
    assert (r.k, r.k_merged, r.standardize, r.pooling, r.feature_layer) == (10, 5, True, "drop_edge", 11)
    np.testing.assert_array_equal(r.assign(X), q.assign(X))
    np.testing.assert_array_equal(r.centroids, q.centroids)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    q, _ = small_quantizer()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        q.save(tmp_path / "q.npz")
    assert os.listdir(tmp_path) == []


def test_from_arrays_release_format(tmp_path):
    q, X = small_quantizer()
    np.save(tmp_path / "m_kmeans.npy", q.centroids)
    np.save(tmp_path / "m_agglom.npy", q.agglom)
    r = UnitQuantizer.from_arrays(tmp_path / "m_kmeans.npy", str(tmp_path / "m_agglom.npy"))
    np.testing.assert_array_equal(r.assign(X), q.assign(X))
    raw = UnitQuantizer.from_arrays(q.centroids)  # no agglom: raw k-means ids
    np.testing.assert_array_equal(raw.assign(X), q.assign(X, merged=False))
    with pytest.raises(ValueError):
        UnitQuantizer.from_arrays(q.centroids, q.agglom[:-1])


def test_tokenize_pools_assigns_dedups():
    q, _ = small_quantizer()
    C = torch.from_numpy(q.centroids)  # (10, 12)
    order = [0, 0, 3, 7]
    feats = torch.cat([C[i].repeat(5, 1) for i in order])  # (20, 12): four constant 5-frame segments
    segs, units = q.tokenize(feats, torch.tensor([0, 5, 10, 15, 20]), offset=1.0)
    expect = q.assign(C[order].numpy())  # pooling a constant segment gives that constant
    assert expect[0] == expect[1]  # so at least one merge happens
    keep = np.r_[True, expect[1:] != expect[:-1]]
    np.testing.assert_array_equal(units, expect[keep])
    assert segs[0, 0] == 1.0 and segs[-1, 1] == pytest.approx(1.4) and segs.dtype == np.float64
    _, raw = q.tokenize(feats, torch.tensor([0, 5, 10, 15, 20]), deduplicate=False)
    np.testing.assert_array_equal(raw, expect)
