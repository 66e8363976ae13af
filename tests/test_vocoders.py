"""Unit vocoders (issue 29, item 3): the shared interface for both generators, textless-lib's checkpoint format
(written here by hand from its key names, with random weights), the shipped iSTFT vocoder, its LightningModule."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from syllablelm.audio.spectrogram import log_mel_distance
from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.checkpoints.vocoders import load_textless_vocoder, load_unit_vocoder
from syllablelm.models.code_hifigan import CodeHiFiGAN
from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments/pretrained/vocoder.ckpt"

# a small textless-lib config: x320 (50 Hz units), two residual-block kernels, a duration predictor
TEXTLESS_CFG = {
    "resblock": "1", "upsample_rates": [4, 4, 4, 5], "upsample_kernel_sizes": [8, 8, 8, 11],
    "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 20, "embedding_dim": 8, "model_in_dim": 8, "code_hop_size": 320, "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
}


def textless_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A generator state dict with textless-lib's names (CodeGenerator / ResBlock / VariancePredictor) and
    old-style weight norm (``weight_g`` (dim 0 slices, 1, 1), ``weight_v``), random values. Residual blocks as
    HiFi-GAN names them: resblock "1" three ``convs1`` + three ``convs2``, resblock "2" two ``convs``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    def wn(name, shape):
        return {f"{name}.weight_v": rnd(*shape), f"{name}.weight_g": rnd(shape[0], 1, 1).abs() + 0.05}

    e, ch = cfg["embedding_dim"], cfg["upsample_initial_channel"]
    s = {"dict.weight": rnd(cfg["num_embeddings"], e), "conv_pre.bias": rnd(ch)}
    s.update(wn("conv_pre", (ch, e, 7)))
    k = 0
    for i, kern in enumerate(cfg["upsample_kernel_sizes"]):
        c_in, c_out = ch // 2 ** i, ch // 2 ** (i + 1)
        s.update(wn(f"ups.{i}", (c_in, c_out, kern)))  # ConvTranspose1d weight: (in, out, k)
        s[f"ups.{i}.bias"] = rnd(c_out)
        for rk in cfg["resblock_kernel_sizes"]:
            parts, n_convs = (("convs1", "convs2"), 3) if str(cfg.get("resblock", "1")) == "1" else (("convs",), 2)
            for part in parts:
                for m in range(n_convs):
                    s.update(wn(f"resblocks.{k}.{part}.{m}", (c_out, c_out, rk)))
                    s[f"resblocks.{k}.{part}.{m}.bias"] = rnd(c_out)
            k += 1
    c_last = ch // 2 ** len(cfg["upsample_rates"])
    s.update(wn("conv_post", (1, c_last, 7)))
    s["conv_post.bias"] = rnd(1)
    dp = cfg["dur_predictor_params"]
    h = dp["var_pred_hidden_dim"]
    s.update({"dur_predictor.conv1.0.weight": rnd(h, dp["encoder_embed_dim"], 3), "dur_predictor.conv1.0.bias": rnd(h),
              "dur_predictor.ln1.weight": torch.ones(h), "dur_predictor.ln1.bias": torch.zeros(h),
              "dur_predictor.conv2.0.weight": rnd(h, h, 3), "dur_predictor.conv2.0.bias": rnd(h),
              "dur_predictor.ln2.weight": torch.ones(h), "dur_predictor.ln2.bias": torch.zeros(h),
              "dur_predictor.proj.weight": rnd(1, h), "dur_predictor.proj.bias": torch.tensor([1.0])})
    return s


def write_textless(folder: Path, cfg: dict = TEXTLESS_CFG, state: dict | None = None, name: str = "hifigan_test"):
    ckpt = folder / f"{name}.pt"
    torch.save({"generator": textless_state(cfg) if state is None else state}, ckpt)
    (folder / f"{name}_config.json").write_text(json.dumps(cfg))
    return ckpt


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


TINY = ISTFTVocoderConfig(num_units=12, dim=16, intermediate=32, unit_blocks=1, stft_blocks=1, dur_hidden=8)


@pytest.mark.parametrize("make", [lambda: ISTFTVocoder(TINY), lambda: CodeHiFiGAN(TEXTLESS_CFG)],
                         ids=["istft", "code_hifigan"])
def test_interface_contract(make):
    torch.manual_seed(0)
    model = make()
    n = model.num_units
    units = torch.tensor([1, 4, 2, 9, 0, 3]) % n
    durations = torch.tensor([1, 2, 5, 1, 3, 2])
    wave = model.synthesize(units, durations)
    assert wave.shape == (14 * model.hop,) and torch.isfinite(wave).all()
    pred = model.predict_durations(units)
    assert pred.shape == (6,) and pred.dtype == torch.long and (pred >= 1).all()
    assert model.synthesize(units).shape == (int(pred.sum()) * model.hop,)
    assert model.sample_rate == 16000
    # batch variant: one wave per utterance, each of its own length
    waves = model.synthesize_batch([units, units[:2]], [durations, durations[:2]])
    assert [w.shape[0] for w in waves] == [14 * model.hop, 3 * model.hop]
    # numpy / list input, and a (1, n) row
    assert model.synthesize(units.numpy(), durations.tolist()).shape == wave.shape
    assert model.synthesize(units[None], durations[None]).shape == wave.shape
    # bad inputs: clear errors
    with pytest.raises(ValueError, match=rf"unit id {n} at position 1 is outside \[0, {n}\)"):
        model.synthesize([0, n, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        model.predict_durations([-1])
    with pytest.raises(ValueError, match=r"one duration per unit: 6 units, durations of shape \(5,\)"):
        model.synthesize(units, durations[:5])
    with pytest.raises(ValueError, match=">= 1"):
        model.synthesize(units, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="whole frame counts"):
        model.synthesize(units, durations.float() + 0.5)
    with pytest.raises(ValueError, match="empty"):
        model.synthesize([])
    with pytest.raises(ValueError, match="integer ids"):
        model.synthesize([0.5, 1.0], [1, 1])


def test_istft_output_is_frame_aligned():
    """The wave of ``T`` frames is ``T * hop`` samples and frame ``t``'s units shape samples near ``t * hop``: two
    units sequences differing in the last frames only give waves that agree well before the change."""
    torch.manual_seed(1)
    model = ISTFTVocoder(TINY).eval()
    a = torch.tensor([[1] * 30 + [2] * 10])
    b = torch.tensor([[1] * 30 + [7] * 10])
    wa, wb = model.frames_to_wave(a)[0], model.frames_to_wave(b)[0]
    assert wa.shape == (40 * 320,)
    # receptive field: 3 convolutions of width 7 at 50 Hz (+-9 frames) and one at 100 Hz plus the STFT window
    assert torch.allclose(wa[:15 * 320], wb[:15 * 320], atol=1e-6)
    assert not torch.allclose(wa[-10 * 320:], wb[-10 * 320:])


def _espeak_second():
    """One second of the training voice (eSpeak en-us+Denis) saying an unseen phrase, at 16 kHz."""
    import torchaudio.functional as AF

    from syllablelm.synthesis.espeak import ESpeak

    s = ESpeak().synth("a quiet morning by the river", voice="en-us+Denis", rate=163, pitch=36, range_=60)
    wave = torch.as_tensor(np.asarray(s.audio, dtype=np.float32))
    if wave.abs().max() > 1.5:  # int16 samples
        wave = wave / 32768.0
    wave = AF.resample(wave, s.sample_rate, 16000)
    start = int(torch.nonzero(wave.abs() > 0.01)[0])
    return wave[start:start + 16000]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped vocoder not built yet")
def test_shipped_vocoder_resynthesizes_a_second():
    from syllablelm.units.fine import FineUnitEncoder

    model = load_unit_vocoder(SHIPPED)
    assert isinstance(model, ISTFTVocoder) and model.hop == 320 and model.num_units == 100
    wave = _espeak_second()
    enc = FineUnitEncoder.build(REPO / "experiments/pretrained/kmeans_layer2.npy",
                                checkpoint=REPO / "experiments/pretrained/teacher.ckpt", layer=2)
    units, durations = enc(wave)
    frames = int(durations.sum())
    assert frames == (16000 - 400) // 320 + 1
    out = model.synthesize(units, durations)
    assert out.shape == (frames * 320,) and torch.isfinite(out).all() and out.abs().max() > 0.01
    # closer to the original than the same units played backwards (a nonsense floor)
    target = wave[:frames * 320]
    d_true = log_mel_distance(out, target)
    d_rev = log_mel_distance(model.synthesize(units.copy()[::-1].copy(), durations[::-1].copy()), target)
    assert d_true < d_rev
    pred = model.synthesize(units)  # predicted durations: some frames per unit, about the true total
    assert pred.shape[0] % 320 == 0 and 0.5 < pred.shape[0] / (frames * 320) < 2.0


def test_lightning_module_trains_and_logs_audio(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from datamodules.vocoder_data import VocoderDataModule
    from lightning_modules.vocoder import VocoderModule
    from tests.conftest import make_librispeech

    make_librispeech(tmp_path / "audio", speakers=1, utts=3, seconds=(1.2, 1.6))
    dm = VocoderDataModule([str(tmp_path / "audio")], str(tmp_path / "units.npz"),
                           kmeans=str(REPO / "experiments/pretrained/kmeans_layer2.npy"),
                           checkpoint=str(REPO / "experiments/pretrained/teacher.ckpt"), layer=2, dev_utterances=1,
                           crop_frames=20, batch_size=2)
    module = VocoderModule(vocoder=dict(TINY.__dict__, num_units=100), warmup=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=TensorBoardLogger(tmp_path, name="tb"),
                         enable_checkpointing=False, enable_progress_bar=False, log_every_n_steps=1,
                         num_sanity_val_steps=0, limit_val_batches=1, enable_model_summary=False)
    before = [p.detach().clone() for p in module.vocoder.parameters()]
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/mel", "train/sc", "train/logmag", "train/dur", "val/loss",
                "val/dur_abs_error_frames"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    assert any(not torch.equal(a, b) for a, b in zip(before, module.vocoder.parameters()))
    # the fine units were cached once: a second setup reads them (same labels)
    cached = np.load(tmp_path / "units.npz")
    assert cached["lengths"].sum() == sum(lab.size for lab in dm.load_units(dm.files()))
    # audio went to TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(next((tmp_path / "tb").rglob("events*")).parent), size_guidance={"audio": 0})
    ea.Reload()
    assert any(t.startswith("val/from_fine/") for t in ea.Tags()["audio"])
    # the training checkpoint -> the shipped form: vocoder weights (float16) + hyper-parameters only
    from syllablelm.checkpoints.vocoders import strip_vocoder_checkpoint

    trainer.save_checkpoint(tmp_path / "train.ckpt")
    strip_vocoder_checkpoint(tmp_path / "train.ckpt", tmp_path / "ship.ckpt")
    shipped = torch.load(tmp_path / "ship.ckpt", weights_only=True)
    assert "optimizer_states" not in shipped and shipped["hyper_parameters"]["vocoder"]["num_units"] == 100
    assert all(k.startswith("vocoder.") for k in shipped["state_dict"])
    assert {v.dtype for v in shipped["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    loaded = load_unit_vocoder(tmp_path / "ship.ckpt")
    units, durations = [5, 17, 42], [2, 3, 1]
    ref = module.vocoder.eval().synthesize(units, durations)
    assert torch.allclose(loaded.synthesize(units, durations), ref, atol=2e-2)
    # the configured unit count must match the data's
    bad = VocoderModule(vocoder=dict(TINY.__dict__, num_units=50))
    with pytest.raises(ValueError, match="num_units=100"):
        pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False).fit(bad, datamodule=dm)


def test_speed_benchmark_prints_both_rtfs():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "benchmarks/vocoder_speed.py"), "--seconds", "0.5", "--repeats",
                          "1", "--istft", "no-such-file.ckpt"], check=True, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}).stdout
    rows = [line for line in out.splitlines() if line.startswith(("code HiFi-GAN", "iSTFT"))]
    assert len(rows) == 2 and all(float(r.split()[-3]) > 0 for r in rows), out


# HiFi-GAN V3's kind of residual block, two kernels with distinct dilation pairs (catches a swapped dilation/kernel)
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
