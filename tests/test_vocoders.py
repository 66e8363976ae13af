"""Unit vocoders (issue 29, item 3): the shared interface for both generators, the shipped iSTFT vocoder, its
LightningModule and the speed benchmark (textless-lib's format: tests/test_code_hifigan.py)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from syllablelm.audio.spectrogram import log_mel_distance
from syllablelm.checkpoints.vocoders import load_unit_vocoder
from syllablelm.models.code_hifigan import CodeHiFiGAN
from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig
from tests.textless_format import TEXTLESS_CFG

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments/pretrained/vocoder.ckpt"


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
