"""The CUDA paths against the CPU ones. Skipped without a GPU; on a GPU machine: ``pytest -m gpu``
(``benchmarks/gpu_check.sh`` runs these, the GPU demo and the bf16 smoke run in one go)."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from datamodules.boundary_store import BoundaryStore
from lightning_modules.sylboost import SylBoostModule
from syllablelm.boundaries.mincut import calibrate_delta, ncut_mincut_batch, sse_mincut_batch, sse_segment_batch
from syllablelm.models.gpt import GPT, GPTConfig
from tests import sylboost_helpers as sb
from tests.test_speechlm import tiny_gpt
from tests.test_teacher import fake_batch, tiny_module

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 convolutions/matmuls would make CPU-vs-GPU differences a precision question, not a correctness one."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _padded(seed: int, lengths, dim: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g)
    for b, T in enumerate(lengths):
        x[b, T:] = 1e3  # padding must never matter
    return x


@pytest.mark.parametrize("seed", range(3))
def test_min_cuts_on_cuda_equal_cpu(seed):
    lengths = [97, 60, 150]
    x = _padded(seed, lengths)
    ks = [12, 9, 20]
    cpu = sse_mincut_batch(x, ks, lengths)
    gpu = sse_mincut_batch(x.cuda(), ks, lengths)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))

    g = torch.Generator().manual_seed(100 + seed)
    S = torch.rand(3, 150, 150, generator=g)
    S = S + S.transpose(1, 2)
    cpu = ncut_mincut_batch(S, ks, lengths, min_len=1, max_len=49)
    gpu = ncut_mincut_batch(S.cuda(), ks, lengths, min_len=1, max_len=49)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))

    feats = [x[b, :T] for b, T in enumerate(lengths)]
    delta = calibrate_delta(feats, 6.25)
    assert calibrate_delta([f.cuda() for f in feats], 6.25) == pytest.approx(delta, rel=1e-9)
    cpu = sse_segment_batch(x, lengths, delta=delta)
    gpu = sse_segment_batch(x.cuda(), lengths, delta=delta)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


@torch.no_grad()
def test_losspred_on_cuda_matches_cpu():
    module = tiny_module(forward_batch=16)
    batch = fake_batch(seconds=(3.6, 1.2))
    cpu, lengths, _ = module.losspred_matrices(batch)
    module = module.cuda()
    gpu_batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    gpu, gpu_lengths, _ = module.losspred_matrices(gpu_batch)
    assert gpu_lengths == lengths
    for C, G in zip(cpu, gpu):
        torch.testing.assert_close(G.cpu(), C, equal_nan=True, atol=1e-4, rtol=1e-4)
    segments = module.losspred(gpu_batch)["segments"]
    assert [len(s) for s in segments] == [len(s) for s in tiny_module(forward_batch=16).losspred(batch)["segments"]]


@pytest.mark.parametrize("cache_frozen", [False, True])
def test_sylboost_fits_and_regenerates_on_one_gpu(synth_corpus, tmp_path, cache_frozen):
    cache = str(tmp_path / "cache")
    ids = sb.write_v0(synth_corpus, tmp_path / "store", cache)
    teacher = sb.save_teacher(tmp_path / "teacher.ckpt")
    torch.manual_seed(1)
    model = SylBoostModule(init_from=str(teacher), feature_layer=1, iterations=2, epochs_per_iteration=1,
                           cache_frozen=cache_frozen, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    trainer = sb.trainer(tmp_path, accelerator="gpu")
    trainer.fit(model, datamodule=sb.datamodule(synth_corpus, tmp_path / "store", cache))
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
    store = BoundaryStore(tmp_path / "store")
    assert store.is_complete(1) and store.is_complete(2)
    regenerated = store.load(2)
    assert sorted(regenerated) == ids
    # the GPU's regeneration against the same weights on the CPU, one utterance at a time: float32 sums in
    # another order may move a near-tie, nothing more
    offline = sb.offline_boundaries(model.cpu(), synth_corpus, cache)
    same = [np.array_equal(regenerated[i], offline[i]) for i in ids]
    starts_close = np.mean([np.abs(regenerated[i][:, 0] - offline[i][:, 0]).max() <= 0.021
                            for i in ids if len(regenerated[i]) == len(offline[i])])
    assert np.mean(same) >= 0.8 and starts_close >= 0.9, (np.mean(same), starts_close)


def test_gpt_bf16_autocast_on_cuda_matches_fp32_cpu():
    torch.manual_seed(0)
    model = tiny_gpt().eval()
    x = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        _, ref = model(x[:, :-1], x[:, 1:])
        model = model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x[:, :-1].cuda(), x[:, 1:].cuda())
    assert abs(float(loss) - float(ref)) < 0.02 * float(ref)
    prompt = torch.full((1, 1), model.bos, dtype=torch.long, device="cuda")
    g1 = model.generate(prompt, 12, temperature=0.0, use_cache=True)
    g2 = model.generate(prompt, 12, temperature=0.0, use_cache=False)
    assert torch.equal(g1, g2)


def test_lightning_gpu_trainer_sees_the_device():
    trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False)
    assert trainer.strategy.root_device.type == "cuda"


def first_low_margin_step(logits_steps, tolerance: float) -> int:
    """Index of the first decode step whose top-2 logit margin is below ``tolerance`` (len if none)."""
    for i, logits in enumerate(logits_steps):
        top = torch.topk(logits.float(), 2, dim=-1).values
        if bool(((top[..., 0] - top[..., 1]) < tolerance).any()):
            return i
    return len(logits_steps)


def test_cuda_graph_decode_gives_the_eager_tokens():
    """fp32: the captured step replays the eager path's greedy tokens exactly; bf16: the same tokens up to the
    first step whose top-2 logit margin is below 0.05 (where rounding may legitimately flip the argmax)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(vocab_size=64)).eval().cuda()
    prompt = torch.tensor([[64, 3, 5, 7], [64, 9, 9, 1]], device="cuda")
    eager = model.generate(prompt, 120, temperature=0, decode="eager")
    assert torch.equal(model.generate(prompt, 120, temperature=0, decode="cuda_graph"), eager)
    assert torch.equal(model.generate(prompt, 120, temperature=0), eager)  # auto on CUDA = cuda_graph
    bf16 = model.to(torch.bfloat16)
    eager16 = bf16.generate(prompt, 120, temperature=0, decode="eager")
    graph16 = bf16.generate(prompt, 120, temperature=0, decode="cuda_graph")
    with torch.no_grad():  # the eager path's logits at every generated position, to find the first close call
        steps = list(bf16(eager16[:, :-1])[0][:, prompt.shape[1] - 1:].transpose(0, 1))
    k = first_low_margin_step(steps, 0.05)
    assert torch.equal(graph16[:, :prompt.shape[1] + k], eager16[:, :prompt.shape[1] + k])
