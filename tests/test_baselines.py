import numpy as np

from syllablelm.boundaries.baselines import envelope_segments, mincut_segments, uniform_segments
from syllablelm.evaluation.boundary_metrics import boundary_scores
from syllablelm.evaluation.scoring import tune_envelope

SR = 16000


def modulated(seconds=2.0, rate=4.0, seed=0):
    """Noise whose amplitude dips to zero every 1/rate s, inside one region [0.2, 0.2 + seconds]."""
    rng = np.random.default_rng(seed)
    wave = np.zeros(int((seconds + 0.4) * SR))
    t = np.arange(int(seconds * SR)) / SR
    wave[int(0.2 * SR):int(0.2 * SR) + len(t)] = rng.standard_normal(len(t)) * np.sin(np.pi * rate * t) ** 2 * 0.3
    dips = 0.2 + np.arange(1, int(seconds * rate)) / rate
    return wave, dips


def test_uniform_cuts_each_region_evenly():
    regions = np.array([[0.0, 1.0], [1.5, 1.7]])
    segs = uniform_segments(np.zeros(SR * 2), SR, rate_hz=4.0, regions=regions)
    np.testing.assert_allclose(segs, [[0, .25], [.25, .5], [.5, .75], [.75, 1.0], [1.5, 1.7]])


def test_envelope_minima_sit_on_the_amplitude_dips():
    wave, dips = modulated()
    segs = envelope_segments(wave, SR, cutoff_hz=10.0, prominence=0.2)
    inner = segs[1:, 0]
    assert len(inner) == len(dips)
    assert np.abs(inner - dips).max() < 0.03
    assert abs(segs[0, 0] - 0.2) < 0.03 and abs(segs[-1, 1] - 2.2) < 0.03  # region edges are boundaries


def test_tuning_picks_parameters_that_beat_a_bad_setting():
    wave, dips = modulated(seed=1)
    ref = np.stack([np.r_[0.2, dips], np.r_[dips, 2.2]], 1)
    params, scores = tune_envelope([wave], SR, [ref], cutoffs=(2.0, 10.0), prominences=(0.2, 0.9))
    bad = boundary_scores([envelope_segments(wave, SR, cutoff_hz=2.0, prominence=0.9)], [ref])
    assert params == {"cutoff_hz": 10.0, "prominence": 0.2}
    assert scores["r_value"] > bad["r_value"] and scores["f1"] > 0.9


def test_mincut_baseline_stays_inside_speech_at_the_asked_rate():
    wave, _ = modulated(seconds=4.0)
    segs = mincut_segments(wave, SR, rate_hz=5.0)
    assert segs[0, 0] >= 0.15 and segs[-1, 1] <= 4.25
    assert np.all(segs[1:, 0] >= segs[:-1, 1] - 1e-9)
    assert abs(len(segs) / 4.0 - 5.0) < 1.0


def test_baselines_at_a_matched_rate_place_as_many_segments_per_second_of_audio():
    import pytest

    from syllablelm.evaluation.scoring import run_baselines, uniform_baseline

    waves, refs = [], []
    for seed in range(3):  # 2.2 s of speech in 2.8 s of audio
        wave, dips = modulated(seed=seed)
        waves.append(np.concatenate([wave, np.zeros(int(0.4 * SR))]))
        refs.append(np.stack([np.r_[0.2, dips], np.r_[dips, 2.2]], 1))
    split = (waves, refs)
    speech = run_baselines(split, split, rate_hz=5.0)
    matched = run_baselines(split, split, rate_hz=5.0, per="file")
    for name in ("uniform_5hz", "mincut_logmel_5hz"):
        assert speech[name]["rate_hz"] < 4.5  # 5 per second of speech is fewer per second of audio
        assert matched[name]["rate_hz"] == pytest.approx(5.0, abs=0.2)
    assert matched["uniform_5hz"]["params"]["rate_hz"] > 5.5 and matched["uniform_5hz"]["params"]["matched_hz"] == 5.0
    assert matched["uniform_4.5hz"] == speech["uniform_4.5hz"]  # REFERENCE's 4.5/s is per second of speech
    with pytest.raises(ValueError, match="per must be"):
        run_baselines(split, split, per="utterance")
    # one uniform baseline alone (the demo's report: at LossPred's rate) is the same as the one in the set
    name, alone = uniform_baseline(split, split, 5.0, per="file")
    assert name == "uniform_5hz" and alone[name] == matched[name]
    name, other = uniform_baseline(split, split, 3.3, per="file")
    assert name == "uniform_3.3hz" and other[name]["rate_hz"] == pytest.approx(3.3, abs=0.2)
