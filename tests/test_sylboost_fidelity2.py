"""SylBoost as the authors trained it, round 2 (issue 27, items 7 and 8): the last segment of a crop ends at the
crop's frame 400, and the student's layerdrop.

Facts restated from the authors' training fork (ishine/SyllableLM, ``syllablelm/SegmentalSSE``), in this file's own
code: their loader (``datasets/spokencoco_dataset.py``, ``_LoadAudio`` / ``collate``) keeps a clip's first 8 s and
zero-pads a shorter one to 8 s; boundary frames are ``round(seconds / 0.02)`` of every segment start and end, kept
when below ``round(16000 * 8 / 320) = 400``; the pooling windows are laid out on those cuts plus 400
(``[b + int(L * 0.33), e - int(L * (1 - 0.67)))``, the whole segment when ``L < 3``); ``models/segmenter.py``
(``Segmenter2.forward``) zeroes the teacher's padded frames, counts only real frames inside a window, divides by
``max(count, 1)`` and takes the MSE over the real frames only. ``Segmenter2.__init__`` sets the data2vec 2.0
model's ``cfg.layerdrop`` (main blocks) to 0 and leaves the prenet's ``prenet_layerdrop`` and HuBERT's
``encoder_layerdrop`` as loaded.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy

from datamodules.speech import SpeechDataModule
from lightning_modules.sylboost import SylBoostModule
from syllablelm.audio.frames import seconds_to_frames
from syllablelm.checkpoints import save_fairseq_style_checkpoint, save_fairseq_style_data2vec2
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config
from syllablelm.models.hubert import HubertTeacher, TeacherConfig
from syllablelm.units.quantizer import segment_mean_targets
from tests import sylboost_helpers as H
from tests.conftest import REPO


# ---- the authors' arithmetic, restated with loops ----------------------------------------------------------
def authors_targets(y: np.ndarray, segments_s, real: int, crop_seconds: float = 8.0) -> np.ndarray:
    """Targets of one clip as the authors' loader + ``Segmenter2`` build them: ``y`` (T_model, D) teacher features
    of the padded crop, ``real`` the clip's real frames. Returns (T_model, D); rows >= ``real`` are zero."""
    length = round(16000 * crop_seconds / 320)  # 400 for 8 s
    cuts = sorted({round(t / 0.02) for seg in segments_s for t in seg})
    cuts = [c for c in cuts if c < length]
    inner = np.zeros(length, dtype=bool)
    bounds = cuts + [length]
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = b - a
        if n < 3:
            inner[a:b] = True
        else:
            inner[a + int(n * 0.33): b - int(n * (1 - 0.67))] = True
    T = y.shape[0]
    seg_of = np.cumsum(np.isin(np.arange(T), cuts))  # frame -> index of the segment it is in (0: before any cut)
    out = np.zeros_like(y)
    for f in range(real):
        members = [g for g in range(real) if seg_of[g] == seg_of[f] and inner[g]]  # real frames of its window
        if members:
            out[f] = y[members].sum(0) / len(members)
    return out


def test_a_short_clip_last_segment_ends_at_frame_400():
    """A 3 s clip (149 real frames) padded to 8 s: the last segment is [105, 400), L = 295, its window
    [105 + 97, 400 - 97) = [202, 303) lies wholly in the padding, so frames 105..148 get zero; with the clip's end
    (149) it would be [105, 149), window [119, 135)."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal((399, 6))
    segs = [[0.1, 0.5], [0.6, 1.3], [1.3, 2.1]]  # cuts 5, 25, 30, 65, 105
    want = authors_targets(y, segs, real=149)
    got = segment_mean_targets(torch.from_numpy(y), seconds_to_frames(segs), 149, end=400).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(got[105:] == 0) and np.all(got[:5] == 0)  # after the last cut, before the first
    np.testing.assert_allclose(got[70], y[65 + 13: 105 - 13].mean(0))  # [65, 105): L = 40, trims int(13.2) = 13
    clip_end = segment_mean_targets(torch.from_numpy(y), seconds_to_frames(segs), 149).numpy()
    np.testing.assert_allclose(clip_end[120], y[105 + 14: 149 - 14].mean(0))  # L = 44: the rule changes targets
    assert np.all(clip_end[149:] == 0)


def test_a_window_half_in_the_padding_averages_its_real_frames_only():
    """Last cut 200, 300 real frames: window [200 + 66, 400 - 65) = [266, 335) (int(200 * 0.32999999999999996) =
    65), of which frames 266..299 are real: their mean is every trailing frame's target."""
    rng = np.random.default_rng(1)
    y = rng.standard_normal((399, 4))
    segs = [[0.5, 2.0], [2.0, 4.0]]  # cuts 25, 100, 200
    got = segment_mean_targets(torch.from_numpy(y), seconds_to_frames(segs), 300, end=400).numpy()
    np.testing.assert_allclose(got, authors_targets(y, segs, real=300), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[200:300], np.broadcast_to(y[266:300].mean(0), (100, 4)))
    assert np.all(got[300:] == 0)


def test_a_clip_longer_than_the_crop_still_ends_at_400_not_399():
    """The CNN gives 399 frames for 8 s, the loader counts 400: last cut 350 -> [350, 400), L = 50, window
    [366, 384); with the CNN's 399 it would be [366, 383)."""
    rng = np.random.default_rng(2)
    y = rng.standard_normal((399, 3))
    segs = [[1.0, 3.0], [3.0, 7.0], [7.0, 9.5]]  # 9.5 s: the crop cuts the last segment at 8 s (frame 400)
    clipped = np.clip(np.asarray(segs), 0, 8.0)  # what the dataset hands over (window_segments)
    got = segment_mean_targets(torch.from_numpy(y), seconds_to_frames(clipped), 399, end=400).numpy()
    np.testing.assert_allclose(got, authors_targets(y, segs, real=399), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[390], y[366:384].mean(0))
    np.testing.assert_allclose(segment_mean_targets(y, seconds_to_frames(clipped), 399)[390], y[366:383].mean(0))


def fake_trainer(crop_seconds, eval_crop_seconds=None, strategy=None):
    """What ``setup`` reads: the datamodule's hyper-parameters (a real SpeechDataModule's names) and the strategy."""
    dm = SpeechDataModule(train_dirs=["unused"], crop_seconds=crop_seconds, eval_crop_seconds=eval_crop_seconds)
    return SimpleNamespace(datamodule=dm, strategy=strategy)


def test_the_module_loss_uses_the_authors_targets(tmp_path):
    """Loss of a batch of a 3 s clip and a full 8 s crop = MSE over real frames against the restated targets; the
    clip's end rule (``pad_targets: none``) gives another loss, so the comparison can fail."""
    teacher = H.save_teacher(tmp_path / "teacher.ckpt")
    torch.manual_seed(0)
    lengths = torch.tensor([48000, 128000])
    mask = (torch.arange(128000)[None] < lengths[:, None]).long()
    waves = torch.randn(2, 128000) * mask
    segs = [np.array([[0.1, 0.5], [0.6, 1.3], [1.3, 2.1]]), np.array([[1.0, 3.0], [3.0, 7.0], [7.0, 8.0]])]
    batch = {"waves": waves, "attention_mask": mask, "lengths": lengths, "ids": ["a", "b"],
             "segments": segs, "offsets": torch.zeros(2, dtype=torch.float64)}
    losses = {}
    for rule in ("authors", "none"):
        model = H.module(teacher)
        model.hparams.pad_targets = rule
        model.trainer = fake_trainer(crop_seconds=8.0)
        model.setup("fit")
        model.eval()
        with torch.no_grad():
            losses[rule] = float(model._shared_step(batch)[0])
    with torch.no_grad():
        y, frame_mask = model.teacher(waves, mask)
        x, _ = model.student(waves, mask)
    real = frame_mask.sum(1).tolist()
    assert real == [149, 399]
    want = [authors_targets(y[b].double().numpy(), segs[b].tolist(), real[b]) for b in range(2)]
    sq = sum(((x[b, : real[b]].double().numpy() - want[b][: real[b]]) ** 2).sum() for b in range(2))
    assert losses["authors"] == pytest.approx(sq / (sum(real) * x.shape[-1]), rel=1e-5)
    assert abs(losses["authors"] - losses["none"]) > 1e-4 * losses["none"]


def test_the_crop_comes_from_the_datamodule_per_split(tmp_path):
    model = H.module(H.save_teacher(tmp_path / "teacher.ckpt"))
    assert model.hparams.pad_targets == "authors"  # the default
    model.trainer = fake_trainer(crop_seconds=8.0, eval_crop_seconds=3.0)
    model.setup("fit")
    assert model._target_ends == {"train": 400, "val": 150}
    model.trainer = fake_trainer(crop_seconds=None)
    model.setup("fit")
    assert model._target_ends == {"train": None, "val": None}  # no crop: the clip's end
    with pytest.raises(ValueError, match="pad_targets"):
        SylBoostModule(init_from=str(tmp_path / "teacher.ckpt"), feature_layer=1, pad_targets="crop")


# ---- layerdrop ---------------------------------------------------------------------------------------------
def data2vec2_file(path: Path, **config) -> Path:
    torch.manual_seed(0)
    save_fairseq_style_data2vec2(Data2Vec2AudioEncoder(Data2Vec2Config.tiny(**config)).eval(), path)
    return path


def hubert_file(path: Path, layerdrop: float) -> Path:
    torch.manual_seed(0)
    save_fairseq_style_checkpoint(HubertTeacher(TeacherConfig.tiny(layerdrop=layerdrop)).eval(), path)
    return path


def rebuilt(model: SylBoostModule) -> SylBoostModule:
    return SylBoostModule(**{k: v for k, v in model.hparams.items() if not k.startswith("_")})


def test_data2vec2_student_zeroes_main_layerdrop_and_keeps_the_prenet_one(tmp_path):
    path = data2vec2_file(tmp_path / "d2v2.pt", layerdrop=0.3, prenet_layerdrop=0.2)  # 1 prenet + 2 main blocks
    model = SylBoostModule(init_from=str(path), feature_layer=2)
    c = model.student.model.config
    assert (c.layerdrop, c.prenet_layerdrop) == (0.0, 0.2)
    assert model.hparams.student_layerdrop == {"layerdrop": 0.0, "prenet_layerdrop": 0.2}
    again = rebuilt(model).student.model.config  # a checkpoint trains on as the original did
    assert (again.layerdrop, again.prenet_layerdrop) == (0.0, 0.2)
    none = SylBoostModule(init_from=str(path), feature_layer=2, student_layerdrop="none").student.model.config
    assert (none.layerdrop, none.prenet_layerdrop) == (0.0, 0.0)
    given = SylBoostModule(init_from=str(path), feature_layer=2,
                           student_layerdrop={"layerdrop": 0.1, "prenet_layerdrop": 0.0}).student.model.config
    assert (given.layerdrop, given.prenet_layerdrop) == (0.1, 0.0)
    with pytest.raises(ValueError, match="prenet_layerdrop"):
        SylBoostModule(init_from=str(path), feature_layer=2, student_layerdrop={"layerdrop": 0.1})


def test_data2vec2_layerdrop_values_act_in_the_forward(tmp_path):
    """A file with both layerdrops 1: the authors' student skips its prenet block on every training step and
    always runs its main block."""
    path = data2vec2_file(tmp_path / "d2v2.pt", layerdrop=1.0, prenet_layerdrop=1.0)
    model = SylBoostModule(init_from=str(path), feature_layer=2)
    model.student.train()
    feats, _ = model.student(torch.randn(1, 16000))
    feats.pow(2).sum().backward()
    prenet, main = model.student.model.blocks
    assert all(p.grad is None for p in prenet.parameters())
    assert all(p.grad is not None for p in main.parameters())


def test_hubert_student_keeps_the_checkpoint_layerdrop(tmp_path):
    model = SylBoostModule(init_from=str(hubert_file(tmp_path / "hubert.pt", 0.05)), feature_layer=2)
    hf = model.student.model
    assert hf.config.layerdrop == 0.05 and hf.encoder.config.layerdrop == 0.05  # what HF's encoder loop reads
    assert model.teacher.model.config.layerdrop == 0.0  # the frozen teacher runs in eval mode anyway
    assert model.hparams.student_layerdrop == {"layerdrop": 0.05}
    assert rebuilt(model).student.model.encoder.config.layerdrop == 0.05
    none = SylBoostModule(init_from=str(tmp_path / "hubert.pt"), feature_layer=2, student_layerdrop="none")
    assert none.student.model.encoder.config.layerdrop == 0.0
    always = SylBoostModule(init_from=str(hubert_file(tmp_path / "all.pt", 1.0)), feature_layer=2)
    always.student.train()
    feats, _ = always.student(torch.randn(1, 16000))
    feats.pow(2).sum().backward()
    assert all(p.grad is None for p in always.student.model.encoder.layers.parameters())  # every layer skipped


def test_a_hubert_student_with_skipped_layers_gives_the_last_run_layers_output(tmp_path):
    """Layerdrop 0.5 on 2 layers: each step's feature is the output of the last layer that ran (the input to layer
    1 when none did), whatever pattern the draws make; transformers records only the layers that ran."""
    model = SylBoostModule(init_from=str(hubert_file(tmp_path / "hubert.pt", 0.5)), feature_layer=2)
    wave = torch.randn(1, 16000)
    with torch.no_grad():  # the teacher holds the same weights, in eval mode: nothing skipped
        hs = model.teacher.model(wave, output_hidden_states=True).hidden_states  # input, layer 1, layer 2
        candidates = {"both skipped": hs[0], "layer 2 skipped": hs[1], "none skipped": hs[2],
                      "layer 1 skipped": model.teacher.model.encoder.layers[1](hs[0])}
        model.student.train()
        seen = set()
        for seed in range(24):
            torch.manual_seed(seed)
            feats = model.student(wave)[0]
            match = [name for name, c in candidates.items() if torch.allclose(feats, c, atol=1e-6)]
            assert len(match) == 1, seed
            seen.add(match[0])
    assert seen == set(candidates)


def test_ddp_without_find_unused_parameters_is_refused_when_layerdrop_acts(tmp_path):
    model = SylBoostModule(init_from=str(hubert_file(tmp_path / "hubert.pt", 0.05)), feature_layer=2)
    model.trainer = fake_trainer(8.0, strategy=DDPStrategy())
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        model.setup("fit")
    model.trainer = fake_trainer(8.0, strategy=DDPStrategy(find_unused_parameters=True))
    model.setup("fit")
    none = SylBoostModule(init_from=str(tmp_path / "hubert.pt"), feature_layer=2, student_layerdrop="none")
    none.trainer = fake_trainer(8.0, strategy=DDPStrategy())
    none.setup("fit")
    # fairseq's base_audio_only_task.yaml shape: no prenet block, so its prenet_layerdrop skips nothing
    flat = SylBoostModule(init_from=str(data2vec2_file(tmp_path / "flat.pt", prenet_depth=0, depth=3,
                                                       prenet_layerdrop=0.05)), feature_layer=2)
    assert flat.student.model.config.prenet_layerdrop == 0.05
    flat.trainer = fake_trainer(8.0, strategy=DDPStrategy())
    flat.setup("fit")


def test_configs_train_as_the_authors():
    paper = yaml.safe_load((REPO / "experiments/configs/librispeech/sylboost.yaml").read_text())
    args = paper["model"]["init_args"]
    assert args["pad_targets"] == "authors" and args["student_layerdrop"] == "authors"
    assert paper["trainer"]["strategy"] == "ddp_find_unused_parameters_true"
    assert paper["data"]["init_args"]["crop_seconds"] == 8.0
    for overlay in (REPO / "experiments/configs/librispeech").glob("sylboost_*.yaml"):
        init = (yaml.safe_load(overlay.read_text()).get("model") or {}).get("init_args") or {}
        assert init.get("pad_targets", "authors") == "authors", overlay.name
        assert init.get("student_layerdrop", "authors") == "authors", overlay.name
    tiny = yaml.safe_load((REPO / "experiments/configs/tiny/sylboost.yaml").read_text())["model"]["init_args"]
    assert tiny.get("pad_targets", "authors") == "authors"
