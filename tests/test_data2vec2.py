"""data2vec 2.0 audio encoder: fairseq-faithful forward, fairseq checkpoint import/export, SylBoost backbone."""
import math
import sys

import lightning
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from syllablelm.checkpoints import CheckpointError, load_encoder, stub_pickle
from syllablelm.checkpoints import fairseq_data2vec2 as d2c
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config, alibi_slopes

A = "modality_encoders.AUDIO."


def _model(seed=0, **kw) -> Data2Vec2AudioEncoder:
    torch.manual_seed(seed)
    model = Data2Vec2AudioEncoder(Data2Vec2Config.tiny(**kw)).eval()
    with torch.no_grad():  # non-trivial norms and ALiBi scales (one negative: fairseq clamps it at 0)
        for name, p in model.named_parameters():
            if "norm" in name or "alibi_scale" in name:
                p.add_(0.3 * torch.randn_like(p))
        if model.alibi_scale is not None:
            model.alibi_scale.view(-1)[0] = -0.5
    return model


def _waves(lengths=(16000, 11000, 6400)):
    torch.manual_seed(1)
    S = max(lengths)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    return torch.randn(len(lengths), S) * mask, mask


def _load_without_fairseq(path, monkeypatch):
    assert not any(m == "fairseq" or m.startswith("fairseq.") for m in sys.modules)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "fairseq", None)  # `import fairseq` now raises ImportError
        return d2c.load_fairseq_data2vec2(path)


def _fairseq_reference(sd: dict, c: Data2Vec2Config, waves: torch.Tensor) -> list[torch.Tensor]:
    """Post-LN data2vec 2.0 forward written straight from fairseq's modules, on fairseq key names (unpadded
    input, layer-norm CNN, ALiBi with one per-head scale)."""
    x = waves[:, None]
    for i, (dim, _, stride) in enumerate(c.conv_layers()):
        x = F.conv1d(x, sd[f"{A}local_encoder.conv_layers.{i}.0.weight"], stride=stride)
        x = F.layer_norm(x.transpose(1, 2), (dim,), sd[f"{A}local_encoder.conv_layers.{i}.2.1.weight"],
                         sd[f"{A}local_encoder.conv_layers.{i}.2.1.bias"]).transpose(1, 2)
        x = F.gelu(x)
    x = F.layer_norm(x.transpose(1, 2), (x.shape[1],), sd[A + "project_features.1.weight"],
                     sd[A + "project_features.1.bias"])
    x = F.linear(x, sd[A + "project_features.2.weight"], sd[A + "project_features.2.bias"])  # (B, T, D)
    B, T, D = x.shape
    pos = x.transpose(1, 2)
    for j in range(1, c.conv_pos_depth + 1):
        w = sd[f"{A}relative_positional_encoder.{j}.0.weight"]
        pos = F.conv1d(pos, w, sd[f"{A}relative_positional_encoder.{j}.0.bias"], padding=w.shape[-1] // 2,
                       groups=c.conv_pos_groups)
        pos = pos[..., :-1] if w.shape[-1] % 2 == 0 else pos  # SamePad
        pos = F.gelu(F.layer_norm(pos.transpose(1, 2), (D,)).transpose(1, 2))
    x = x + pos.transpose(1, 2)
    slopes = torch.tensor([1 / 16, 1 / 256])  # get_alibi(heads=2): start = 2 ** -(2 ** -(log2(2) - 3))
    dist = (torch.arange(T)[None] - torch.arange(T)[:, None]).abs()
    bias = (-slopes[:, None, None] * dist)[None] * sd[A + "alibi_scale"].clamp_min(0)[0]  # (1, H, T, T)
    eps = c.norm_eps
    x = F.layer_norm(x, (D,), sd[A + "context_encoder.norm.weight"], sd[A + "context_encoder.norm.bias"], eps)
    hidden = [x]
    names = [f"{A}context_encoder.blocks.{i}." for i in range(c.prenet_depth)] + \
            [f"blocks.{i}." for i in range(c.depth)]
    H = c.num_heads
    for n in names:
        q, k, v = F.linear(x, sd[n + "attn.qkv.weight"], sd[n + "attn.qkv.bias"]) \
            .reshape(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = ((q * (D // H) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
        o = F.linear((a @ v).transpose(1, 2).reshape(B, T, D), sd[n + "attn.proj.weight"], sd[n + "attn.proj.bias"])
        r = F.layer_norm(x + o, (D,), sd[n + "norm1.weight"], sd[n + "norm1.bias"], eps)
        m = F.linear(F.gelu(F.linear(r, sd[n + "mlp.fc1.weight"], sd[n + "mlp.fc1.bias"])),
                     sd[n + "mlp.fc2.weight"], sd[n + "mlp.fc2.bias"])
        x = F.layer_norm(r + m, (D,), sd[n + "norm2.weight"], sd[n + "norm2.bias"], eps)
        hidden.append(x)
    return hidden


def test_matches_a_forward_written_from_fairseq(tmp_path):
    model = _model()
    path = tmp_path / "d2v2.pt"
    d2c.save_fairseq_style_data2vec2(model, path)
    sd = torch.load(path, weights_only=False, pickle_module=stub_pickle)["model"]
    waves, _ = _waves((12000,))
    with torch.no_grad():
        ours, _ = model(waves)
        ref = _fairseq_reference(sd, model.config, waves)
    assert len(ours) == 1 + model.config.prenet_depth + model.config.depth == 4
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", [{}, dict(layer_norm_first=True, learned_alibi_scale_per_layer=True,
                                              conv_pos_pre_ln=True, conv_pos_width=8),
                                     dict(use_alibi_encoder=False, normalize_waveform=False)])
def test_fairseq_round_trip_without_fairseq(tmp_path, monkeypatch, variant):
    model = _model(**variant)
    path = tmp_path / "d2v2.pt"
    d2c.save_fairseq_style_data2vec2(model, path)
    assert "fairseq" not in sys.modules
    loaded = _load_without_fairseq(path, monkeypatch).eval()
    assert loaded.config == model.config
    from syllablelm.checkpoints import load_fairseq_data2vec2  # re-exported beside load_fairseq_hubert

    assert load_fairseq_data2vec2 is d2c.load_fairseq_data2vec2
    waves, mask = _waves()
    with torch.no_grad():
        (a, fa), (b, fb) = model(waves, mask), loaded(waves, mask)
    assert torch.equal(fa, fb) and len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_frames_and_padding_give_per_utterance_features():
    model = _model()
    lengths = (16000, 11000, 6400)
    waves, mask = _waves(lengths)
    with torch.no_grad():
        batched, frame_mask = model(waves, mask)
        assert frame_mask.sum(1).tolist() == [49, 34, 19]  # 320-sample hop (50 Hz), HuBERT's frame count
        for b, n in enumerate(lengths):
            alone, _ = model(waves[b:b + 1, :n])
            T = alone[0].shape[1]
            for x, y in zip(batched, alone):
                torch.testing.assert_close(x[b, :T], y[0], atol=1e-5, rtol=1e-5)


def test_alibi_slopes_as_fairseq():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    twelve = [2.0 ** -(i + 1) for i in range(8)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    assert np.allclose(alibi_slopes(12), twelve)


# Released data2vec 2.0 Base audio (base_libri.pt): fairseq key -> shape
BASE_SHAPES = {
    **{f"{A}local_encoder.conv_layers.{i}.0.weight": (512, 1 if i == 0 else 512, k)
       for i, k in enumerate([10, 3, 3, 3, 3, 2, 2])},
    **{f"{A}local_encoder.conv_layers.{i}.2.1.{p}": (512,) for i in range(7) for p in ("weight", "bias")},
    f"{A}project_features.1.weight": (512,), f"{A}project_features.1.bias": (512,),
    f"{A}project_features.2.weight": (768, 512), f"{A}project_features.2.bias": (768,),
    **{f"{A}relative_positional_encoder.{j}.0.weight": (768, 48, 19) for j in range(1, 6)},
    **{f"{A}relative_positional_encoder.{j}.0.bias": (768,) for j in range(1, 6)},
    f"{A}alibi_scale": (1, 1, 12, 1, 1),
    f"{A}context_encoder.norm.weight": (768,), f"{A}context_encoder.norm.bias": (768,),
}
_BLOCK = {"attn.qkv.weight": (2304, 768), "attn.qkv.bias": (2304,), "attn.proj.weight": (768, 768),
          "attn.proj.bias": (768,), "mlp.fc1.weight": (3072, 768), "mlp.fc1.bias": (3072,),
          "mlp.fc2.weight": (768, 3072), "mlp.fc2.bias": (768,), "norm1.weight": (768,), "norm1.bias": (768,),
          "norm2.weight": (768,), "norm2.bias": (768,)}
for _prefix in [f"{A}context_encoder.blocks.{i}." for i in range(4)] + [f"blocks.{i}." for i in range(8)]:
    BASE_SHAPES.update({_prefix + k: v for k, v in _BLOCK.items()})


def test_base_has_the_released_key_names_and_shapes():
    c = Data2Vec2Config.base()
    assert (c.prenet_depth + c.depth, c.embed_dim, c.use_alibi_encoder, c.layer_norm_first) == (12, 768, True, False)
    with torch.device("meta"):
        model = Data2Vec2AudioEncoder(c)
    ours = {d2c.fairseq_key(k, c): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == BASE_SHAPES
    assert sum(math.prod(s) for s in ours.values()) == sum(p.numel() for p in model.parameters())


def test_real_size_base_file_loads_without_fairseq(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Data2Vec2AudioEncoder(Data2Vec2Config.base()).half()  # fp16 on disk, as fairseq saves fp16 runs
    path = tmp_path / "base_libri.pt"
    d2c.save_fairseq_style_data2vec2(model, path, pretraining_keys=False)
    sd = torch.load(path, weights_only=False, pickle_module=stub_pickle)["model"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == BASE_SHAPES
    loaded = _load_without_fairseq(path, monkeypatch).eval()
    assert loaded.config == Data2Vec2Config.base() and next(loaded.parameters()).dtype == torch.float32
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].float())
    with torch.no_grad():
        hidden, frame_mask = loaded(torch.randn(1, 8000))
    assert len(hidden) == 13 and hidden[11].shape == (1, 24, 768) and frame_mask.all()


def _rewrite(path, mutate):
    state = torch.load(path, weights_only=False, pickle_module=stub_pickle)
    mutate(state)
    torch.save(state, path)


def test_unknown_missing_and_foreign_keys(tmp_path):
    path = tmp_path / "d2v2.pt"
    d2c.save_fairseq_style_data2vec2(_model(), path)
    _rewrite(path, lambda s: s["model"].update({A + "mystery.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"d2v2\.pt.*unexpected keys.*mystery\.weight"):
        d2c.load_fairseq_data2vec2(path)
    _rewrite(path, lambda s: (s["model"].pop(A + "mystery.weight"), s["model"].pop("blocks.1.norm2.bias")))
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.2\.norm2\.bias"):  # block 2 = main block 1
        d2c.load_fairseq_data2vec2(path)
    _rewrite(path, lambda s: s["cfg"].model.__setitem__("_name", "hubert"))
    assert not d2c.is_fairseq_data2vec2(path)
    with pytest.raises(CheckpointError, match="not a fairseq data2vec 2.0"):
        d2c.load_fairseq_data2vec2(path)


def test_old_four_dim_alibi_scale_is_upgraded(tmp_path):
    model = _model()
    path = tmp_path / "d2v2.pt"
    d2c.save_fairseq_style_data2vec2(model, path, pretraining_keys=False)
    _rewrite(path, lambda s: s["model"].__setitem__(A + "alibi_scale", s["model"][A + "alibi_scale"][0]))
    torch.testing.assert_close(d2c.load_fairseq_data2vec2(path).alibi_scale, model.alibi_scale)


def test_speech_encoder_and_sylboost_use_a_data2vec2_file(tmp_path):
    from lightning_modules.sylboost import SylBoostModule

    path = tmp_path / "data2vec2.pt"
    d2c.save_fairseq_style_data2vec2(_model(), path)
    enc = load_encoder(path, layer=2)
    assert enc.normalize_waveform and len(enc.model.blocks) == 2 and enc.model.final_norm is None
    waves, mask = _waves()
    torch.manual_seed(0)
    # layerdrop off, so that every parameter gets a gradient whatever the draw (the authors' layerdrop rule:
    # tests/test_sylboost_fidelity2.py)
    model = SylBoostModule(init_from=str(path), feature_layer=2, optimizer=lambda p: torch.optim.AdamW(p),
                           student_layerdrop="none")
    assert model.hparams["encoder"]["model_type"] == "data2vec2_fairseq"
    # the authors' SylBoost: raw audio although the checkpoint was pretrained normalised; None = as pretrained
    assert not model.student.normalize_waveform and not model.hparams["normalize_waveform"]
    assert SylBoostModule(init_from=str(path), feature_layer=2, normalize_waveform=None).student.normalize_waveform
    segs = [np.array([[0.0, 0.2], [0.2, 0.5], [0.6, 1.0]]), np.array([[0.1, 0.4], [0.4, 0.68]]),
            np.array([[0.0, 0.38]])]
    batch = {"waves": waves, "attention_mask": mask, "lengths": mask.sum(1), "ids": ["a", "b", "c"],
             "segments": segs, "offsets": [0.0, 0.0, 0.0]}
    model.train()
    loss, n = model._shared_step(batch)
    assert loss > 0 and n == (49 + 34 + 19) * 32
    loss.backward()
    # the authors freeze parameters named feature_extractor; data2vec 2.0's CNN (local_encoder) is not, so it trains
    assert model.hparams["freeze_cnn"] is False
    assert all(p.grad is not None for p in model.student.parameters())
    frozen = SylBoostModule(init_from=str(path), feature_layer=2, freeze_cnn=True)  # the named option
    assert not any(p.requires_grad for p in frozen.student.model.feature_extractor.parameters())
    ckpt = tmp_path / "sylboost.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    reloaded = SylBoostModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    model.eval()
    for a, b in zip(model.features(batch), reloaded.features(batch)):
        assert torch.equal(a, b)
    with torch.no_grad():  # the student's batched features equal its per-utterance ones
        feats, _ = model.student(waves, mask)
        for b, f in enumerate(model.features(batch)):
            torch.testing.assert_close(feats[b, : len(f)], f, atol=1e-5, rtol=1e-5)
