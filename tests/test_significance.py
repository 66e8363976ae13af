"""The paired bootstrap over utterances (syllablelm.evaluation.significance) and the per-utterance counts it
resamples."""
import numpy as np
import pytest

from syllablelm.evaluation.boundary_metrics import boundary_counts, boundary_scores
from syllablelm.evaluation.significance import paired_bootstrap, resample_indices


def corpus(seed: int, n: int = 30):
    """References with 3-8 syllables per utterance, a good system (small jitter) and a poor one (uniform cuts)."""
    rng = np.random.default_rng(seed)
    refs, good, poor = [], [], []
    for _ in range(n):
        b = np.cumsum(np.concatenate([[0.1], rng.uniform(0.12, 0.35, rng.integers(3, 9))]))
        refs.append(np.stack([b[:-1], b[1:]], 1))
        g = np.sort(b + rng.normal(0, 0.03, len(b)))
        good.append(np.stack([g[:-1], g[1:]], 1))
        u = np.linspace(b[0], b[-1], len(b) + 1)
        poor.append(np.stack([u[:-1], u[1:]], 1))
    return refs, good, poor


def test_counts_sum_to_the_corpus_scores():
    refs, good, _ = corpus(0)
    counts = boundary_counts(good, refs, shift=0.01)
    whole = boundary_scores(good, refs, shift=0.01)
    assert counts.shape == (len(refs), 3)
    assert tuple(counts.sum(0)) == (whole["hits"], whole["n_pred"], whole["n_ref"])


@pytest.mark.parametrize("protocol", ["syllablelm", "sdhubert"])
def test_difference_is_the_whole_set_difference_and_lies_in_its_interval(protocol):
    refs, good, poor = corpus(1)
    out = paired_bootstrap(good, poor, refs, shift_a=0.005, shift_b=-0.01, protocol=protocol, n_resamples=500)
    a = boundary_scores(good, refs, protocol=protocol, shift=0.005)
    b = boundary_scores(poor, refs, protocol=protocol, shift=-0.01)
    assert out["n_utterances"] == len(refs) and out["n_resamples"] == 500
    for m in ("f1", "r_value"):
        assert out[m]["difference"] == pytest.approx(a[m] - b[m], abs=1e-12)
        assert out[m]["low"] <= out[m]["difference"] <= out[m]["high"]
        assert out[m]["low"] > 0 and out[m]["p_not_better"] == 0.0  # the good system wins every draw


def test_a_system_against_itself_and_a_noise_level_difference():
    refs, good, _ = corpus(2)
    same = paired_bootstrap(good, good, refs, n_resamples=200)
    assert all(same[m] == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_not_better": 1.0} for m in ("f1", "r_value"))
    # two equally good systems (the same jitter, drawn twice): an interval around zero, neither always wins
    twins = []
    for seed in (10, 11):
        rng = np.random.default_rng(seed)
        twins.append([np.stack([g[:-1], g[1:]], 1) for g in
                      (np.sort(np.r_[r[:, 0], r[-1, 1]] + rng.normal(0, 0.03, len(r) + 1)) for r in refs)])
    out = paired_bootstrap(*twins, refs, n_resamples=1000)
    for m in ("f1", "r_value"):
        assert out[m]["low"] < 0 < out[m]["high"] and 0.02 < out[m]["p_not_better"] < 0.98


def test_seeded_and_checked():
    refs, good, poor = corpus(3)
    assert paired_bootstrap(good, poor, refs, seed=7) == paired_bootstrap(good, poor, refs, seed=7)
    with pytest.raises(ValueError, match="utterances"):
        paired_bootstrap(good[:-1], poor, refs)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(good, poor, refs, level=1.0)


def test_voices_bootstrap_widens_the_interval_when_voices_disagree():
    """Two voices: ``a`` beats ``b`` on one and ties on the other. Resampling utterances alone sees a clear win;
    resampling voices (then utterances within them) also draws the tied voice twice, so its interval is wider and
    reaches zero."""
    refs, good, poor = corpus(4, n=24)
    voices = np.repeat(["v1", "v2"], 12)
    pred_a = good[:12] + poor[12:]  # a: good on v1, as poor as b on v2
    flat = paired_bootstrap(pred_a, poor, refs, n_resamples=500)
    grouped = paired_bootstrap(pred_a, poor, refs, n_resamples=500, groups=voices)
    assert grouped["n_groups"] == 2 and flat["n_groups"] is None
    for m in ("f1", "r_value"):
        assert grouped[m]["difference"] == flat[m]["difference"]  # the whole-set difference does not change
        assert grouped[m]["high"] - grouped[m]["low"] > flat[m]["high"] - flat[m]["low"]
        assert flat[m]["low"] > 0 and grouped[m]["low"] <= 0 < grouped[m]["high"]
    draws = resample_indices(6, 50, np.random.default_rng(0), groups=["a", "a", "b", "b", "b", "c"])
    assert draws.shape[0] == 50 and draws.max() < 6 and (draws >= -1).all()
    # every row holds whole voices' worth of draws: 2, 3 or 1 utterances per drawn voice, three voices drawn
    assert all(sum(1 for i in row if i >= 0) in range(3, 10) for row in draws)
    with pytest.raises(ValueError, match="groups"):
        paired_bootstrap(pred_a, poor, refs, groups=voices[:-1])
