"""``compile_layers``: the opt-in ``torch.compile`` of each transformer layer (issue 21, item 3)."""
import sys

import pytest
import torch

from lightning_modules.speechlm import SpeechLMModule
from lightning_modules.teacher import TeacherModule
from syllablelm.models.common import compile_layers, transformer_blocks
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.models.hubert import HubertTeacher, TeacherConfig
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from train_speed import speech_batch  # noqa: E402


def test_transformer_blocks_finds_each_networks_layers():
    teacher = HubertTeacher(TeacherConfig.tiny())
    assert transformer_blocks(teacher) is teacher.encoder.encoder.layers
    gpt = GPT(GPTConfig.tiny(vocab_size=20))
    assert transformer_blocks(gpt) is gpt.transformer.h
    d2v = Data2Vec2AudioEncoder(Data2Vec2Config.tiny())
    wrapped = SpeechEncoder(d2v, layer=2, normalize_waveform=False)
    assert transformer_blocks(wrapped) is d2v.blocks
    with pytest.raises(TypeError, match="no transformer layers"):
        transformer_blocks(torch.nn.Linear(2, 2))


def test_compile_layers_compiles_every_layer_in_place_and_keeps_the_parameter_names():
    module = SpeechLMModule(network=GPTConfig.tiny(vocab_size=20))
    names = list(module.state_dict())
    compiled = SpeechLMModule(network=GPTConfig.tiny(vocab_size=20), compile_layers=True)
    assert list(compiled.state_dict()) == names  # checkpoints load either way
    assert all(b._compiled_call_impl is not None for b in compiled.net.transformer.h)
    assert all(b._compiled_call_impl is None for b in module.net.transformer.h)
    assert compile_layers(TeacherModule().teacher) == TeacherConfig.tiny().num_hidden_layers


@pytest.mark.slow
def test_compiled_layers_train_as_the_eager_ones():
    """Loss and gradients of one training step with compiled layers equal eager ones (CPU inductor, fp32)."""
    def step(make, compiled, batch):
        torch.manual_seed(0)
        module = make(compiled).train()
        loss = module.training_step(batch, 0)
        loss.backward()
        return float(loss), [p.grad.clone() for p in module.parameters() if p.grad is not None]

    ids = torch.randint(0, 20, (2, 17), generator=torch.Generator().manual_seed(1))
    cases = [(lambda c: TeacherModule(compile_layers=c), speech_batch(2, 1.0, 100, "cpu")),
             (lambda c: SpeechLMModule(network=GPTConfig.tiny(vocab_size=20, dropout=0.0), compile_layers=c),
              {"input": ids[:, :-1], "target": ids[:, 1:]})]
    for make, batch in cases:
        eager_loss, eager_grads = step(make, False, batch)
        loss, grads = step(make, True, batch)
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert len(grads) == len(eager_grads)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
