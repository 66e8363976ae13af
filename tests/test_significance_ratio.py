"""The paired voice-level bootstrap of a ratio-of-sums statistic (syllablelm.evaluation.significance), as the
speech-out evaluation uses it for phone error rates."""
import numpy as np
import pytest

from syllablelm.evaluation.significance import paired_ratio_bootstrap, resample_indices


def per_corpus(seed: int, voices: int, per_voice: int = 6, rate_a: float = 0.2, rate_b: float = 0.3):
    """Per-utterance (errors, reference length) for two conditions; each voice has its own difficulty, shared
    by both conditions (what makes the pairing matter)."""
    rng = np.random.default_rng(seed)
    num_a, num_b, den, groups = [], [], [], []
    for v in range(voices):
        shift = rng.uniform(-0.1, 0.1)
        for _ in range(per_voice):
            n = int(rng.integers(20, 60))
            den.append(n)
            num_a.append(rng.binomial(n, np.clip(rate_a + shift, 0, 1)))
            num_b.append(rng.binomial(n, np.clip(rate_b + shift, 0, 1)))
            groups.append(f"v{v}")
    return np.array(num_a), np.array(num_b), np.array(den), np.array(groups)


def test_values_are_ratios_of_sums_and_inside_their_intervals():
    num_a, num_b, den, groups = per_corpus(0, voices=12)
    out = paired_ratio_bootstrap(num_a, den, num_b, den, groups=groups, n_resamples=500)
    assert out["n_utterances"] == len(den) and out["n_groups"] == 12 and out["n_resamples"] == 500
    assert out["a"]["value"] == pytest.approx(num_a.sum() / den.sum())
    assert out["b"]["value"] == pytest.approx(num_b.sum() / den.sum())
    assert out["difference"]["value"] == pytest.approx(num_a.sum() / den.sum() - num_b.sum() / den.sum())
    for key in ("a", "b", "difference"):
        assert out[key]["low"] <= out[key]["value"] <= out[key]["high"]
    # b is 10 points worse on every voice: the paired interval of a - b stays below 0
    assert out["difference"]["high"] < 0 and out["difference"]["p_nonnegative"] == 0.0
    assert out["difference"]["p_nonpositive"] == 1.0


def test_interval_shrinks_with_more_voices():
    widths = []
    for voices in (6, 48):
        num_a, num_b, den, groups = per_corpus(1, voices=voices)
        out = paired_ratio_bootstrap(num_a, den, num_b, groups=groups, n_resamples=1000, seed=3)
        widths.append({k: out[k]["high"] - out[k]["low"] for k in ("a", "b", "difference")})
    for key in ("a", "b", "difference"):
        assert widths[1][key] < 0.6 * widths[0][key], (key, widths)  # ~1/sqrt(8) of it in expectation


def test_equals_a_hand_written_voice_bootstrap():
    """Three voices, five draws: voices drawn with replacement (one ``integers`` call per draw, voices in sorted
    order), every utterance of a drawn voice counted, both conditions on the same draw."""
    num_a = np.array([1, 0, 3, 2, 5])
    num_b = np.array([2, 2, 1, 4, 0])
    den = np.array([10, 5, 8, 6, 9])
    groups = np.array(["b", "a", "b", "c", "a"])
    out = paired_ratio_bootstrap(num_a, den, num_b, den, groups=groups, n_resamples=5, level=0.5, seed=42)

    rng = np.random.default_rng(42)
    members = {"a": [1, 4], "b": [0, 2], "c": [3]}
    names = ["a", "b", "c"]
    ra, rb = [], []
    for _ in range(5):
        picked = rng.integers(0, 3, size=3)
        rows = [i for g in picked for i in members[names[g]]]
        ra.append(sum(num_a[i] for i in rows) / sum(den[i] for i in rows))
        rb.append(sum(num_b[i] for i in rows) / sum(den[i] for i in rows))
    ra, rb = np.array(ra), np.array(rb)
    for key, values in (("a", ra), ("b", rb), ("difference", ra - rb)):
        assert out[key]["low"] == pytest.approx(np.quantile(values, 0.25), abs=1e-12)
        assert out[key]["high"] == pytest.approx(np.quantile(values, 0.75), abs=1e-12)
    assert out["difference"]["p_nonnegative"] == pytest.approx(np.mean(ra - rb >= 0))
    assert out["a"]["value"] == pytest.approx(11 / 38) and out["b"]["value"] == pytest.approx(9 / 38)


def test_whole_voice_draws_and_checks():
    groups = np.array(["x", "x", "y", "z", "z", "z"])
    draws = resample_indices(6, 50, np.random.default_rng(0), groups, within=False)
    for row in draws:
        kept = row[row >= 0]
        for members in ({0, 1}, {2}, {3, 4, 5}):  # voices x, y, z
            hits = [i for i in kept if i in members]
            assert len(hits) % len(members) == 0  # a drawn voice comes whole, never partly
            assert sorted(hits) == sorted(list(members) * (len(hits) // len(members)))
    with pytest.raises(ValueError, match="same utterances"):
        paired_ratio_bootstrap([1, 2], [3, 4], [1], groups=["a", "b"])
    with pytest.raises(ValueError, match="level"):
        paired_ratio_bootstrap([1], [3], [1], groups=["a"], level=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        paired_ratio_bootstrap([-1], [3], [1], groups=["a"])
