"""The optimizer the authors train SylBoost with: BertAdam (their ``SegmentalSSE/steps/bert_adam.py``), as a torch
optimizer (docs/algorithms.md, "SylBoost").

Per parameter ``p`` with gradient ``g``, moments ``m``, ``v`` (zero at the start) and learning rate ``lr_t``:

    m <- β1 m + (1 - β1) g
    v <- β2 v + (1 - β2) g²
    p <- p - lr_t (m / (√v + ε) + λ p)

Against Adam / AdamW: **no bias correction** (at step t AdamW's step is m / (1 - β1^t) over √(v / (1 - β2^t)), so
BertAdam's is (1 - β1^t) / √(1 - β2^t) times AdamW's: 3.2x at t = 1, 6.6x at t = 12, 3.2x at 100, 2.1x at 270,
1.04x at 2.7k with the default betas), ε = 1e-6 added to √v, and weight decay decoupled from the moments but scaled
by ``lr_t`` with them (as AdamW). BertAdam also carries its learning-rate schedule and evaluates it at the step
count *before* counting the step, so the first update has learning rate 0; here the schedule is
:func:`syllablelm.models.schedules.bert_warmup_linear` in a ``LambdaLR``, whose multiplier for the first update is
that of step 0 — the same rate at every step. Their file keeps a ``max_grad_norm`` it never applies; clipping is
the trainer's (``trainer.gradient_clip_val``).
"""
from __future__ import annotations

import torch


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, ε inside the denominator, decoupled weight decay (module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"BertAdam: lr, eps and weight_decay must be >= 0 (got {lr}, {eps}, {weight_decay})")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"BertAdam: betas must lie in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0.0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss
