"""LossPred as a plain core function (``syllablelm.boundaries.losspred.losspred_segments``): it runs without
Lightning, and ``TeacherModule``'s predict/test steps give exactly its boundaries (float32 and bf16 autocast), with
the default labels (a label model on each VAD-trimmed wave: tests/test_losspred_labels.py)."""
import subprocess
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_modules.teacher import LossPredConfig, TeacherModule
from syllablelm.boundaries.losspred import (
    LossPredOptions,
    losspred_flops,
    losspred_matrices,
    losspred_segments,
    mask_groups,
)
from syllablelm.models.hubert import TeacherConfig
from tests.conftest import REPO
from tests.test_losspred_labels import mfcc_labeler
from tests.test_teacher import fake_batch

CORE_WITHOUT_LIGHTNING = """
import sys
import numpy as np, torch
from syllablelm.boundaries.losspred import LossPredOptions, losspred_flops, losspred_segments
from syllablelm.models.hubert import HubertTeacher, TeacherConfig
from syllablelm.units.frame_labels import FrameLabeler, mfcc_features

torch.manual_seed(0)
teacher = HubertTeacher(TeacherConfig.tiny(num_labels=20, num_hidden_layers=1)).eval()
rng = np.random.default_rng(0)
waves = []
for seconds in (2.3, 1.1):
    w = np.zeros(int(seconds * 16000), np.float32)
    w[3000:-4000] = rng.standard_normal(len(w) - 7000) * 0.1  # speech between two silences
    waves.append(torch.from_numpy(w))
feats = mfcc_features(waves[0]).numpy()
labeler = FrameLabeler(mfcc_features, feats[rng.choice(len(feats), 20, replace=False)])  # labels the trims
opt = LossPredOptions(forward_batch=16)
out = losspred_segments(teacher, waves, labeler=labeler, options=opt, offsets=[3.0, 0.0], keep_similarity=1)
assert len(out) == 2 and all(len(r.segments) >= 1 for r in out), out
assert out[0].segments[0, 0] >= 3.0 + 0.18 and out[0].first == 9 and out[0].similarity is not None
assert out[1].similarity is None
assert losspred_flops(teacher, [r.frames for r in out], opt) > 0
assert not {'lightning', 'pytorch_lightning'} & set(sys.modules), sorted(m for m in sys.modules if 'lightning' in m)
print("ok")
"""


def test_core_losspred_runs_without_lightning():
    done = subprocess.run([sys.executable, "-c", CORE_WITHOUT_LIGHTNING], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def tiny_module(layers: int = 1, **losspred) -> TeacherModule:
    """With the default ``labels: trimmed`` and a label model (MFCC k-means) set as a trainer's DataModule would."""
    torch.manual_seed(0)
    net = TeacherConfig.tiny(num_labels=20, num_hidden_layers=layers)
    module = TeacherModule(network=net, losspred=LossPredConfig(**losspred)).eval()
    module.labeler = mfcc_labeler(20)
    return module


def several_utterances() -> dict:
    """Three lengths, each trimmed by the VAD (and losing segments that start in silence); offsets put them in
    file time. With gap 60 the long ones mask two or three spans per forward, the short one fits one gap (one span
    per forward), and forwards of 7 patterns mix utterances: packing and trimming both matter, on a CPU budget."""
    batch = fake_batch(seconds=(1.8, 0.9, 2.3), seed=3)
    batch["offsets"] = torch.tensor([0.0, 5.0, 1.25], dtype=torch.float64)
    return batch


def core(module: TeacherModule, batch: dict, options: LossPredOptions, **kw):
    waves = [batch["waves"][b, : int(batch["lengths"][b])] for b in range(len(batch["ids"]))]
    return losspred_segments(module.teacher, waves, labeler=module.labeler, options=options,
                             offsets=batch["offsets"].tolist(), **kw)


def assert_same_segments(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.float64 and np.array_equal(g, w), (g, w)


@torch.no_grad()
def test_predict_step_equals_the_core_function_float32():
    module = tiny_module(gap=60, forward_batch=7)
    batch = several_utterances()
    options = LossPredOptions(gap=60, forward_batch=7)  # the plain options, built apart from the module's
    results = core(module, batch, options, keep_similarity=2)
    lengths = [r.frames for r in results]
    assert min(lengths) <= 60 < max(lengths) and max(len(m) for m in mask_groups(max(lengths), gap=60)) > 1
    assert all(r.first > 0 and r.regions[-1, 1] < int(n) / 16000 - 0.05 for r, n in zip(results, batch["lengths"]))
    pred = module.predict_step(batch, 0)
    assert pred["ids"] == batch["ids"]
    assert_same_segments(pred["segments"], [r.segments for r in results])
    assert module.flops_per_batch == losspred_flops(module.teacher, lengths, options)
    out = module.losspred(batch, keep_matrices=2)  # the test step's path, similarity matrices included
    assert_same_segments(out["segments"], [r.segments for r in results])
    assert set(out["matrices"]) == {0, 1} and results[2].similarity is None
    for b in (0, 1):
        S, trim = out["matrices"][b]
        assert S.dtype == torch.float32 and torch.equal(S, results[b].similarity) and trim == results[b].trim_seconds
        assert trim == results[b].first * 0.02


@torch.no_grad()
def test_module_matrices_are_the_core_matrices():
    module = tiny_module(exact=True, forward_batch=16)
    batch = fake_batch(seconds=(1.3, 0.9), seed=1)
    waves = [batch["waves"][b, : int(batch["lengths"][b])] for b in range(2)]
    mine = module.losspred_matrices(batch)
    theirs = losspred_matrices(module.teacher, waves, labeler=module.labeler,
                               options=LossPredOptions(exact=True, forward_batch=16))
    assert mine.lengths == theirs.lengths and len(mine.trims) == 2
    for a, b in zip(mine.matrices, theirs.matrices):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert module.flops_per_batch == losspred_flops(module.teacher, mine.lengths, LossPredOptions(exact=True))


def test_trainer_predict_in_bf16_equals_the_core_function_under_autocast():
    """Lightning's precision plugin (bf16-mixed on CPU = torch.autocast) around predict_step, against the core
    function under the same autocast: identical boundaries. Small (one layer, gap 60: packed forwards on short
    utterances) because CPU bf16 is slow."""
    module = tiny_module(layers=1, gap=60, forward_batch=16)
    options = LossPredOptions(gap=60, forward_batch=16)
    batch = fake_batch(seconds=(2.1, 1.0, 1.5), seed=3)
    batch["offsets"] = torch.tensor([0.0, 2.5, 7.0], dtype=torch.float64)
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    (pred,) = trainer.predict(module, loader)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        results = core(module, batch, options, keep_similarity=3)
    assert max(r.frames for r in results) > 60 and all(r.first > 0 for r in results)
    assert_same_segments(pred["segments"], [r.segments for r in results])
    with torch.no_grad():  # the autocast run really was bf16: its matrices differ from float32's
        fp32 = core(module, batch, options, keep_similarity=3)
    assert not all(torch.equal(a.similarity, b.similarity) for a, b in zip(fp32, results))


def test_options_and_empty_batches():
    with pytest.raises(ValueError, match="must be one of"):
        LossPredOptions(softmax_rows="some")
    assert LossPredOptions().normalize is False and LossPredOptions(waveform="pretrained").normalize is None
    teacher = tiny_module(layers=1).teacher
    assert losspred_segments(teacher, [], []) == [] and losspred_flops(teacher, []) == 0
