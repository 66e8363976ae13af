"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR``, as functions of the optimizer step."""
from __future__ import annotations


def linear_warmup_decay(warmup: int, total: int):
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then linear 1 -> 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def bert_warmup_linear(warmup: float, total: int):
    """LR multiplier of the authors' SylBoost optimizer (BertAdam's ``warmup_linear`` schedule): with
    ``x = step / total``, ``x / warmup`` while ``x < warmup``, then ``(1 - x) / (1 - warmup)``, never below 0.
    Step 0 gives 0 — BertAdam evaluates the schedule before counting the step, so its first update has learning
    rate 0 (unlike :func:`linear_warmup_decay`, whose first multiplier is ``1 / warmup steps``).

    >>> f = bert_warmup_linear(0.1, 100)
    >>> f(0), f(5), f(10), round(f(55), 4), f(100), f(120)
    (0.0, 0.5, 1.0, 0.5, 0.0, 0.0)
    """
    if not 0.0 < warmup < 1.0:
        raise ValueError(f"warmup is a fraction of the steps in (0, 1), got {warmup}")
    total = max(1, int(total))

    def f(step: int) -> float:
        x = step / total
        if x < warmup:
            return x / warmup
        return max(0.0, (x - 1.0) / (warmup - 1.0))
    return f


def linear_tri_stage(warmup: int, hold: int, decay: int, final: float, init: float = 0.0):
    """LR multiplier of the authors' SpeechLM config (``lr_scheduler: linear_tri_stage`` in their
    ``cluster_alan.yaml``: warm-up 16k, hold 84k, decay 300k, ``init_lr_scale`` 0, ``final_lr_scale`` 0.1). No code
    of that name exists in their fork or in fairseq, so the shape is the one the name states, on the stage
    boundaries and update count of fairseq's ``tri_stage`` scheduler, with its exponential decay made linear:

    - ``s < warmup``: linear ``init -> 1``, ``init + (1 - init) * s / warmup``;
    - ``s < warmup + hold``: 1;
    - ``s < warmup + hold + decay``: linear ``1 -> final``, ``1 - (1 - final) * (s - warmup - hold) / decay``;
    - from ``warmup + hold + decay`` on: ``final`` (where the line ends).

    ``s`` is the number of updates already taken (``LambdaLR``'s step count, which is what fairseq's scheduler is
    given after each update), so the first update runs at ``init`` (0 in their config: learning rate 0).

    >>> f = linear_tri_stage(10, 5, 20, 0.1)
    >>> f(0), f(4), f(10), f(14), round(f(25), 4), f(35), f(99)
    (0.0, 0.4, 1.0, 1.0, 0.55, 0.1, 0.1)
    """
    if not 0.0 < final <= 1.0 or not 0.0 <= init <= 1.0:
        raise ValueError(f"need 0 < final <= 1 and 0 <= init <= 1, got final {final}, init {init}")
    if min(warmup, hold, decay) < 0:
        raise ValueError(f"stage lengths must be >= 0, got warmup {warmup}, hold {hold}, decay {decay}")

    def f(step: int) -> float:
        if step < warmup:
            return init + (1.0 - init) * step / warmup
        if step < warmup + hold:
            return 1.0
        if step < warmup + hold + decay:  # at its end the line reaches `final`, returned exactly below
            return 1.0 - (1.0 - final) * (step - warmup - hold) / decay
        return final
    return f


def warmup_hold_decay(warmup: int, hold: int, decay: int, final: float):
    """LR multiplier in three stages with a geometric decay (the shape of fairseq's ``tri_stage`` decay; this
    suite's SpeechLM schedule before :func:`linear_tri_stage`, kept as ``lr_schedule: warmup_hold_decay``): linear
    ``1 / warmup -> 1`` over ``warmup`` steps (the first step already at ``1 / warmup``), 1 for ``hold`` steps, then
    geometric decay to ``final`` over ``decay`` steps, and ``final`` after that.

    >>> f = warmup_hold_decay(10, 5, 20, 0.1)
    >>> f(4), f(12), round(f(25), 4), f(35), f(99)
    (0.5, 1.0, 0.3162, 0.1, 0.1)
    """
    if not 0.0 < final <= 1.0:
        raise ValueError(f"final must be in (0, 1], got {final}")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < warmup + hold:
            return 1.0
        # geometric, like tri_stage: halfway through the decay the multiplier is sqrt(final)
        return final ** (min(step - warmup - hold, decay) / max(1, decay))
    return f
