"""textless-lib's code HiFi-GAN generator (issue 29, item 3): its checkpoint format (written here by hand from its
key names, with random weights) loads strictly and synthesizes, at 50 and 25 Hz; bad files are named; both kinds of
residual block match plain torch ops."""
import json

import pytest
import torch

from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.checkpoints.vocoders import load_textless_vocoder, load_unit_vocoder
from syllablelm.models.code_hifigan import CodeHiFiGAN
from tests.textless_format import TEXTLESS_CFG, textless_state, write_textless


def reference_weight_norm(module: torch.nn.Module, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The weight torch's own weight norm (dim 0) makes of ``g`` and ``v``: the independent reference."""
    m = torch.nn.utils.parametrizations.weight_norm(module, dim=0)
    with torch.no_grad():
        m.parametrizations.weight.original0.copy_(g)
        m.parametrizations.weight.original1.copy_(v)
    return m.weight.detach()


def test_textless_format_loads_and_synthesizes(tmp_path):
    state = textless_state(TEXTLESS_CFG)
    ckpt = write_textless(tmp_path, state=state)
    model = load_textless_vocoder(ckpt)  # config found beside it (TWIST's "<stem>_config.json")
    assert isinstance(model, CodeHiFiGAN) and model.hop == 320 and model.num_units == 20 and not model.training
    # weight norm folded as torch's weight_norm(dim=0) would, for a convolution and a transposed convolution
    ref_pre = reference_weight_norm(torch.nn.Conv1d(8, 32, 7), state["conv_pre.weight_g"],
                                    state["conv_pre.weight_v"])
    assert torch.allclose(model.conv_pre.weight, ref_pre, atol=1e-6)
    ref_up = reference_weight_norm(torch.nn.ConvTranspose1d(32, 16, 8, 4), state["ups.0.weight_g"],
                                   state["ups.0.weight_v"])
    assert torch.allclose(model.ups[0].weight, ref_up, atol=1e-6)
    assert torch.equal(model.dur_predictor.proj.weight, state["dur_predictor.proj.weight"])

    units, durations = [3, 7, 1, 19], [2, 1, 3, 2]
    wave = model.synthesize(units, durations)
    assert wave.shape == (8 * 320,) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
    assert wave.abs().max() <= 1.0 and wave.abs().max() > 0
    # durations None -> predicted (>= 1), and the wave has their total length
    pred = model.predict_durations(units)
    assert pred.dtype == torch.long and pred.shape == (4,) and (pred >= 1).all()
    assert model.synthesize(units).shape == (int(pred.sum()) * 320,)
    # the same file through the format-detecting loader, and the config given explicitly
    again = load_unit_vocoder(ckpt)
    assert torch.equal(again.synthesize(units, durations), wave)
    assert torch.equal(load_textless_vocoder(ckpt, tmp_path / "hifigan_test_config.json").synthesize(units, durations),
                       wave)


def test_textless_25hz_config_hops_640(tmp_path):
    cfg = dict(TEXTLESS_CFG, upsample_rates=[4, 4, 4, 10], upsample_kernel_sizes=[8, 8, 8, 20], code_hop_size=640)
    model = load_textless_vocoder(write_textless(tmp_path, cfg))
    assert model.hop == 640 and model.synthesize([0, 5], [3, 1]).shape == (4 * 640,)


def test_textless_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "nogen.pt"
    torch.save({"model": {}}, bad)
    (tmp_path / "nogen_config.json").write_text(json.dumps(TEXTLESS_CFG))
    with pytest.raises(CheckpointError, match=r"nogen\.pt.*'generator'"):
        load_textless_vocoder(bad)
    state = textless_state(TEXTLESS_CFG)
    state["conv_post.weight_v"] = torch.zeros(1, 3, 7)
    with pytest.raises(CheckpointError, match=r"wrongshape\.pt.*wrong shapes.*conv_post\.weight"):
        load_textless_vocoder(write_textless(tmp_path, state=state, name="wrongshape"))
    state = textless_state(TEXTLESS_CFG)
    del state["dict.weight"]
    with pytest.raises(CheckpointError, match=r"missing\.pt.*missing.*dict\.weight"):
        load_textless_vocoder(write_textless(tmp_path, state=state, name="missing"))
    lonely = tmp_path / "lonely" / "g_00100000"
    lonely.parent.mkdir()
    torch.save({"generator": textless_state(TEXTLESS_CFG)}, lonely)
    with pytest.raises(CheckpointError, match="no JSON config"):
        load_textless_vocoder(lonely)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt.*not a readable"):
        load_unit_vocoder(tmp_path / "junk.pt")
    cfg = dict(TEXTLESS_CFG, multispkr=True)
    with pytest.raises(CheckpointError, match="multispkr"):
        load_textless_vocoder(write_textless(tmp_path, cfg, name="spk"))


RESBLOCK2_CFG = dict(TEXTLESS_CFG, resblock="2", resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [2, 6]])


def _plain_weight(state: dict, name: str) -> torch.Tensor:
    """Weight norm restated: ``w = g * v / ||v||``, the norm over everything but the first dimension."""
    g, v = state[f"{name}.weight_g"], state[f"{name}.weight_v"]
    return g * v / v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()


def _plain_resblock2(state: dict, name: str, x: torch.Tensor, kernel: int, dilations) -> torch.Tensor:
    """HiFi-GAN's ResBlock2 in plain torch ops: for the first two dilations ``d``, ``x = x + conv_d(lrelu(x, 0.1))``
    with padding ``(k * d - d) // 2``."""
    for m, d in enumerate(dilations[:2]):
        y = torch.nn.functional.leaky_relu(x, 0.1)
        w, b = _plain_weight(state, f"{name}.convs.{m}"), state[f"{name}.convs.{m}.bias"]
        x = x + torch.nn.functional.conv1d(y, w, b, dilation=d, padding=(kernel * d - d) // 2)
    return x


def _plain_generator(state: dict, cfg: dict, frames: torch.Tensor) -> torch.Tensor:
    """The whole resblock-"2" generator from the state dict: embedding, conv_pre, per stage lrelu(0.1) + transposed
    conv + mean of the stage's ResBlock2s, lrelu(0.01), conv_post, tanh."""
    F = torch.nn.functional
    x = F.conv1d(state["dict.weight"][frames].transpose(1, 2), _plain_weight(state, "conv_pre"),
                 state["conv_pre.bias"], padding=3)
    n_k = len(cfg["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), _plain_weight(state, f"ups.{i}"), state[f"ups.{i}.bias"],
                               stride=u, padding=(k - u) // 2)
        x = sum(_plain_resblock2(state, f"resblocks.{i * n_k + j}", x, kk, dd)
                for j, (kk, dd) in enumerate(zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]))) / n_k
    x = F.conv1d(F.leaky_relu(x, 0.01), _plain_weight(state, "conv_post"), state["conv_post.bias"], padding=3)
    return torch.tanh(x)[:, 0]


def test_textless_resblock2_loads_strictly_and_matches_plain_ops(tmp_path):
    state = textless_state(RESBLOCK2_CFG, seed=3)
    assert "resblocks.5.convs.1.weight_g" in state and not any(".convs1." in k for k in state)
    model = load_textless_vocoder(write_textless(tmp_path, RESBLOCK2_CFG, state=state))  # strict key matching
    own = set(model.state_dict())
    assert {k.replace(".weight_g", ".weight") for k in state if not k.endswith(".weight_v")} == own
    # one block on its own: stage 1, kernel 5, dilations (2, 6), 8 channels
    torch.manual_seed(0)
    x = torch.randn(2, 8, 37)
    ref = _plain_resblock2(state, "resblocks.3", x, 5, [2, 6])
    with torch.no_grad():
        out = model.resblocks[3](x)
    assert out.shape == x.shape and torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)  # the block does something
    # the whole generator
    frames = torch.tensor([[3, 3, 7, 1, 1, 1, 19, 0, 5]])
    with torch.no_grad():
        wave = model.frames_to_wave(frames)
    ref = _plain_generator(state, RESBLOCK2_CFG, frames)
    assert wave.shape == ref.shape == (1, 9 * 320) and ref.abs().max() > 1e-3
    assert torch.allclose(wave, ref, atol=1e-5)
    assert model.synthesize([3, 7, 1], [2, 1, 3]).shape == (6 * 320,)
    # HiFi-GAN's ResBlock2 reads two dilations: a longer list in the config still loads the two-conv weights
    cfg3 = dict(RESBLOCK2_CFG, resblock_dilation_sizes=[[1, 2, 4], [2, 6, 12]])
    again = load_textless_vocoder(write_textless(tmp_path, cfg3, state=state, name="longer"))
    with torch.no_grad():
        assert torch.allclose(again.frames_to_wave(frames), wave, atol=1e-6)


def test_textless_resblock_kind_errors_and_weights_decide(tmp_path):
    with pytest.raises(CheckpointError, match=r"badkind_config\.json: resblock '3' is not .*'1'.*'2'"):
        load_textless_vocoder(write_textless(tmp_path, dict(RESBLOCK2_CFG, resblock="3"), name="badkind"))
    short = dict(RESBLOCK2_CFG, resblock_dilation_sizes=[[1], [2, 6]])
    with pytest.raises(CheckpointError, match=r"short_config\.json: resblock '2' needs 2 dilations.*kernel 3"):
        load_textless_vocoder(write_textless(tmp_path, short, state=textless_state(RESBLOCK2_CFG), name="short"))
    # textless-lib builds ResBlock1 whatever the config says: ResBlock1 weights under a "2" config load as ResBlock1
    frames = torch.tensor([[4, 4, 9, 2]])
    ref1 = load_textless_vocoder(write_textless(tmp_path, TEXTLESS_CFG, name="one")).frames_to_wave(frames)
    with pytest.warns(UserWarning, match=r"mislabel_config\.json: resblock '2'.*ResBlock1"):
        model = load_textless_vocoder(write_textless(tmp_path, dict(TEXTLESS_CFG, resblock="2"),
                                                     state=textless_state(TEXTLESS_CFG), name="mislabel"))
    assert torch.equal(model.frames_to_wave(frames), ref1)
    # and ResBlock2 weights under a "1" config load as ResBlock2 (what speech-resynthesis trained)
    state2 = textless_state(RESBLOCK2_CFG)
    with pytest.warns(UserWarning, match="ResBlock2"):
        model = load_textless_vocoder(write_textless(tmp_path, dict(RESBLOCK2_CFG, resblock="1"), state=state2,
                                                     name="mislabel2"))
    with torch.no_grad():
        assert torch.allclose(model.frames_to_wave(frames), _plain_generator(state2, RESBLOCK2_CFG, frames), atol=1e-5)
