"""The FLOP formulas of syllablelm.models.flops against torch's FlopCounterMode on real networks (MFU divides by them).

SDPA runs on the math backend here: the counter sees its batched matmuls (fused kernels are not counted)."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from syllablelm.models import flops
from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.models.hubert import HubertTeacher, TeacherConfig


def counted(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("samples", [16000, 48123, 70001])
def test_hubert_forward_formula_is_exact(samples):
    torch.manual_seed(0)
    cfg = TeacherConfig.tiny()
    teacher = HubertTeacher(cfg).eval()
    wave = torch.randn(1, samples)

    def run():
        with torch.no_grad():
            feats, mask = teacher.frontend(wave)
            teacher.logits(teacher.transformer(feats, mask, None), rows="labels")
    assert counted(run) == flops.hubert_forward(samples, cfg, head_rows=cfg.num_labels)


def test_gpt_formulas_forward_training_and_decode_step():
    torch.manual_seed(0)
    cfg = GPTConfig.tiny(vocab_size=64)
    model = GPT(cfg)
    idx = torch.randint(0, 64, (2, 50))

    def forward():
        with torch.no_grad():
            model.eval()(idx)
    assert counted(forward) == flops.gpt_forward(2, 50, cfg)

    def train_step():
        model.train()
        _, loss = model(idx, idx)
        loss.backward()
    # every matmul of the decoder trains (the embedding lookups are no matmul): backward = 2x forward
    assert counted(train_step) == flops.training(flops.gpt_forward(2, 50, cfg))
    from syllablelm.models.generation import KVCache

    model.eval()
    cache = KVCache(cfg, 2, 80, "cpu", torch.float32)
    with torch.no_grad():
        model(idx, cache=cache)

    def step():
        with torch.no_grad():
            model.decode_step(idx[:, :1], torch.tensor([50]), cache)
    assert counted(step) == flops.gpt_forward(2, 1, cfg, keys=80)  # the static step attends to the whole buffer


def test_conv_frontend_stops_when_too_short():
    assert flops.conv_frontend(100, [8] * 7, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]) < \
        flops.conv_frontend(1000, [8] * 7, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    assert flops.training(10, 5) == 35
