"""The authors' SylBoost optimizer (syllablelm.models.optimizers.BertAdam) and its schedule, restated step by step
from their update rule (docs/algorithms.md, "SylBoost"): no bias correction, eps inside the denominator, decoupled
weight decay scaled by the learning rate, and a first update at learning rate 0."""
import math

import numpy as np
import pytest
import torch
import yaml

from lightning_modules.sylboost import SylBoostModule
from syllablelm.models.optimizers import BertAdam
from syllablelm.models.schedules import bert_warmup_linear
from tests.conftest import REPO

B1, B2, EPS = 0.9, 0.999, 1e-6


def their_steps(p0, grads, lrs, wd):
    """Their loop in plain numpy: m, v start at 0; update = m / (sqrt(v) + e) + wd * p; p -= lr_t * update."""
    p, m, v, out = np.array(p0, dtype=np.float64), 0.0, 0.0, []
    for g, lr in zip(grads, lrs):
        g = np.asarray(g, dtype=np.float64)
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        p = p - lr * (m / (np.sqrt(v) + EPS) + wd * p)
        out.append(p.copy())
    return out


def test_three_steps_equal_their_arithmetic():
    rng = np.random.default_rng(0)
    p0, grads = rng.standard_normal(5), rng.standard_normal((3, 5))
    lrs = [0.1, 0.05, 0.02]
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = BertAdam([p], lr=1.0, weight_decay=0.01)
    for g, lr, want in zip(grads, lrs, their_steps(p0, grads, lrs, 0.01)):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("t, ratio", [(1, 3.16), (12, 6.57), (100, 3.24), (270, 2.06), (2700, 1.04)])
def test_its_step_is_adams_times_the_missing_bias_correction(t, ratio):
    """A constant gradient of 1: AdamW's step is lr (m/(1-b1^t)) / sqrt(v/(1-b2^t)) = lr, BertAdam's lr m / sqrt(v):
    larger by (1 - b1^t) / sqrt(1 - b2^t) at step t (the issue's 3.2x at t = 1, ~6.5x near 12, 1.04x at 2.7k)."""
    steps = {}
    for name, cls in (("bert", BertAdam), ("adamw", torch.optim.AdamW)):
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = cls([p], lr=1e-3, eps=1e-12, weight_decay=0.0)
        for _ in range(t):
            before = p.detach().clone()
            p.grad = torch.ones_like(p)
            opt.step()
        steps[name] = float(before - p.detach())
    expected = (1 - B1 ** t) / math.sqrt(1 - B2 ** t)
    assert steps["bert"] / steps["adamw"] == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(ratio, abs=0.01)


def test_the_first_update_has_learning_rate_zero():
    """Their schedule is read at the step count before the step: with LambdaLR, the multiplier of step 0 is 0."""
    total, warmup = 50, 0.1
    p = torch.nn.Parameter(torch.ones(3))
    opt = BertAdam([p], lr=0.1, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, bert_warmup_linear(warmup, total))
    seen = []
    for _ in range(3):
        before = p.detach().clone()
        p.grad = torch.ones_like(p)
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if len(seen) == 1:
            assert torch.equal(p.detach(), before)  # nothing moved, though the moments did
    f = bert_warmup_linear(warmup, total)
    assert seen == pytest.approx([0.0, 0.1 * (1 / total) / warmup, 0.1 * (2 / total) / warmup])
    # their warmup_linear: x / w, then max((x - 1) / (w - 1), 0), at x = step / total
    for step in (0, 3, 5, 6, 30, 49, 50, 70):
        x = step / total
        assert f(step) == pytest.approx(x / warmup if x < warmup else max((x - 1) / (warmup - 1), 0.0))
    assert opt.state[p]["exp_avg"].abs().sum() > 0


def test_the_paper_config_trains_with_it_and_adamw_stays_available():
    config = yaml.safe_load((REPO / "experiments/configs/librispeech/sylboost.yaml").read_text())
    args = config["model"]["init_args"]
    assert args["optimizer"]["class_path"] == "syllablelm.models.optimizers.BertAdam"
    assert args["optimizer"]["init_args"] == {"lr": 5.0e-5, "weight_decay": 0.01}
    assert args["lr_schedule"] == "bert_warmup_linear" and args["warmup"] == 0.1
    tiny = yaml.safe_load((REPO / "experiments/configs/tiny/sylboost.yaml").read_text())["model"]["init_args"]
    assert tiny["optimizer"]["class_path"] == "torch.optim.AdamW" and "lr_schedule" not in tiny
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        SylBoostModule(init_from="unused", lr_schedule="cosine")
    with pytest.raises(ValueError, match="betas"):
        BertAdam([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))
