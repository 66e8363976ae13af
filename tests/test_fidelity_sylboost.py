"""SylBoost as the authors ran it (docs/algorithms.md, "Fidelity"): the paper configs regenerate boundaries with
the δ + 0.75-quantile rate search, train data2vec 2.0's CNN, feed raw audio and run 3 epochs per iteration; the
segmenter's δ mode works in every consumer; segmentation-metric shifts are tuned on another split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.boundary_store import BoundaryStore
from tests import sylboost_helpers as H
from tests.conftest import REPO

CONFIGS = REPO / "experiments/configs/librispeech"


def _parsed(*overlays: str) -> dict:
    from experiments.pipeline.stage_configs import parse_lightning

    args = [a for o in overlays for a in ("--config", str(CONFIGS / o))]
    return parse_lightning(str(CONFIGS / "sylboost.yaml"), args)


def test_paper_configs_regenerate_with_the_official_rate_search():
    cfg = _parsed()
    m = cfg["model"]["init_args"]
    seg = m["segmenter"]
    # δ search, δ calibrated to 6.25 Hz (no fixed count per second), on the whole utterance
    assert seg["rate_hz"] is None and seg["calibrate_to_hz"] == 6.25 and seg["quantile"] == 0.75
    assert (seg["min_len"], seg["max_len"], seg["max_rate"], seg["vad_trim"]) == (3, 50, 0.2, False)
    assert (m["iterations"], m["epochs_per_iteration"], cfg["trainer"]["max_epochs"]) == (2, 3, 6)
    assert m["normalize_waveform"] is False and m["freeze_cnn"] is True  # HuBERT: CNN frozen, raw audio
    d2v = _parsed("sylboost_data2vec2.yaml")["model"]["init_args"]
    assert d2v["freeze_cnn"] is False and d2v["normalize_waveform"] is False and d2v["feature_layer"] == 11
    for rate in ("5.0", "8.33"):
        seg = _parsed(f"sylboost_rate_{rate}hz.yaml")["model"]["init_args"]["segmenter"]
        assert seg["rate_hz"] is None and seg["calibrate_to_hz"] == float(rate)


def test_segmenter_defaults_are_the_authors():
    from syllablelm.boundaries.segmenter import SegmenterConfig

    c = SegmenterConfig()
    assert c.mode == "delta" and c.calibrate_to_hz == 6.25 and c.quantile == 0.75 and not c.vad_trim
    assert SegmenterConfig(rate_hz=5.0).mode == "rate" and SegmenterConfig(delta=0.0028).mode == "delta"
    with pytest.raises(ValueError, match="exactly one"):
        SegmenterConfig(rate_hz=5.0, calibrate_to_hz=5.0)
    with pytest.raises(ValueError, match="unknown setting"):
        SegmenterConfig.of({"vad": False})


def test_regeneration_in_delta_mode_adapts_each_count(sylboost_setup):
    """The default segmenter: δ calibrated before training (so validation can cut) and again before each
    regeneration; the count follows each utterance's features, not round(rate x seconds); the rate is logged."""
    from syllablelm.audio.io import read_audio
    from syllablelm.boundaries.segmenter import Segmenter, SegmenterConfig

    corpus, tmp, teacher, cache, ids = sylboost_setup
    dm = H.datamodule(corpus, tmp / "store", cache)
    model = H.module(teacher, segmenter={})
    assert model.segmenter.mode == "delta" and torch.isnan(model.delta)
    trainer = H.trainer(tmp)
    regen = next(c for c in trainer.callbacks if type(c).__name__ == "BoundaryRegeneration")
    trainer.fit(model, dm)
    assert np.isfinite(float(model.delta))
    store = BoundaryStore(tmp / "store")
    deltas = [store.manifest(v)["meta"]["delta"] for v in (1, 2)]
    assert all(d is not None and np.isfinite(d) for d in deltas)
    assert [h["version"] for h in regen.history] == [1, 2] and all(h["rate_hz"] > 0 for h in regen.history)
    # the training utterances are the calibration sample: their mean rate is the target
    seconds = {e.id: e.seconds for e in dm.manifest("train").entries}
    final = store.load(2)
    rate = sum(len(final[u]) for u in seconds) / sum(seconds.values())
    assert abs(rate - 6.25) < 0.75
    fixed = {u: int(np.floor(6.25 * s + 0.5)) for u, s in seconds.items()}
    assert any(len(final[u]) != fixed[u] for u in seconds)  # counts adapt per utterance
    # every consumer cuts the same way from the same δ: the module's segmenter equals a plain Segmenter
    u = next(iter(seconds))
    wave = read_audio(next(e.path for e in dm.manifest("train").entries if e.id == u))
    feats = model.features({"ids": [u], "waves": wave[None], "lengths": torch.tensor([len(wave)])})
    plain = Segmenter(SegmenterConfig(), delta=float(model.delta)).segments(feats, [wave])[0]
    np.testing.assert_array_equal(plain, final[u])


def test_segmentation_metrics_tune_the_test_shift_on_validation():
    """``*_oracle_shift_*`` is tuned on the scored split itself; test scores are also given at the shift tuned
    on the last validation (``*_val_shift_*``), which is what a report may quote."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from callbacks.segmentation_metrics import SegmentationMetrics
    from syllablelm.evaluation.boundary_metrics import boundary_scores, tune_shift

    rng = np.random.default_rng(0)

    def utterances(lag: float, n: int = 6):
        out = []
        for _ in range(n):
            b = np.cumsum(rng.uniform(0.12, 0.3, size=12))
            p = b + lag + rng.normal(0, 0.005, size=b.shape)
            out.append({"ref": np.stack([b[:-1], b[1:]], 1), "pred": np.stack([p[:-1], p[1:]], 1)})
        return out

    val, test = utterances(0.08), utterances(-0.06)  # validation predictions are late, test ones early

    class Fixed(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def _batch(self, items):
            return {"segments": [i["pred"] for i in items]}

        def validation_step(self, batch, batch_idx):
            return self._batch(batch["items"])

        def test_step(self, batch, batch_idx):
            return self._batch(batch["items"])

    def loader(items):
        batches = [{"items": items[i:i + 3], "lengths": torch.tensor([16000 * 4] * len(items[i:i + 3])),
                    "alignments": [{"syllables": (it["ref"], ["x"] * len(it["ref"]))} for it in items[i:i + 3]]}
                   for i in range(0, len(items), 3)]
        return DataLoader(batches, batch_size=None, collate_fn=lambda b: b)

    cb = SegmentationMetrics(protocols=("syllablelm",))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[cb])
    model = Fixed()
    trainer.validate(model, loader(val))
    trainer.test(model, loader(test))
    got = cb.results["test"]
    assert not any("best" in k for k in (*got, *cb.results["val"]))
    refs = lambda items: [i["ref"] for i in items]  # noqa: E731
    preds = lambda items: [i["pred"] for i in items]  # noqa: E731
    val_shift, _ = tune_shift(preds(val), refs(val))
    oracle_shift, oracle = tune_shift(preds(test), refs(test))
    assert val_shift != oracle_shift
    assert got["test/syllablelm_val_shift"] == pytest.approx(val_shift)
    at_val = boundary_scores(preds(test), refs(test), shift=val_shift)
    assert got["test/syllablelm_val_shift_f1"] == pytest.approx(at_val["f1"])
    assert got["test/syllablelm_oracle_shift"] == pytest.approx(oracle_shift)
    assert got["test/syllablelm_oracle_shift_r_value"] == pytest.approx(oracle["r_value"])
    assert got["test/syllablelm_val_shift_r_value"] < got["test/syllablelm_oracle_shift_r_value"]
    assert cb.state_dict() == {"val_shifts": {"syllablelm": val_shift}}  # kept across a resume
