"""Generation without per-token overhead (syllablelm.models.gpt): the static decode step (fixed shapes, the whole KV
cache behind a mask) and its compiled form give the eager path's tokens; CUDA graphs are checked in
tests/test_cuda.py."""
import pytest
import torch

from syllablelm.models.gpt import GPT, GPTConfig, KVCache


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(vocab_size=64)).eval()


def test_static_decode_gives_the_eager_tokens(gpt):
    prompt = torch.tensor([[64, 3, 5, 7], [64, 9, 9, 1]])
    eager = gpt.generate(prompt, 80, temperature=0, decode="eager")
    static = gpt.generate(prompt, 80, temperature=0, decode="static")
    assert torch.equal(eager, static) and eager.shape == (2, 84)
    draws = [gpt.generate(prompt, 50, temperature=1.0, top_k=20, decode=mode,
                          generator=torch.Generator().manual_seed(5)) for mode in ("eager", "static")]
    assert torch.equal(*draws) and len(set(draws[0][0, 4:].tolist())) > 10  # sampled, varied tokens
    ended = [gpt.generate(prompt, 50, temperature=1.5, decode=mode, stop_at_eos=True,
                          generator=torch.Generator().manual_seed(3)) for mode in ("eager", "static")]
    assert torch.equal(*ended)
    # logits of one static step equal those of a full forward at that position
    cache = KVCache(gpt.config, 2, 20, prompt.device, torch.float32)
    gpt(prompt[:, :3], cache=cache)
    step = gpt.decode_step(prompt[:, 3:4], torch.tensor([3]), cache)
    torch.testing.assert_close(step, gpt(prompt)[0][:, 3], rtol=1e-5, atol=1e-5)
    assert cache.length == 3  # the static step leaves the eager bookkeeping alone


def test_decode_modes_are_checked(gpt):
    with pytest.raises(ValueError, match="decode must be"):
        gpt.generate(torch.tensor([[64]]), 3, decode="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            gpt.generate(torch.tensor([[64]]), 3, decode="cuda_graph")
    assert gpt.generate(torch.tensor([[64]]), 3, temperature=0).shape == (1, 4)  # auto = eager on the CPU


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_tokens(gpt):
    """torch.compile of the static step (about a minute of compilation on 2 CPU cores)."""
    prompt = torch.tensor([[64, 3, 5, 7]])
    assert torch.equal(gpt.generate(prompt, 40, temperature=0, decode="compiled"),
                       gpt.generate(prompt, 40, temperature=0, decode="eager"))
