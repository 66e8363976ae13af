"""The lean tokenizer checkpoint (``syllablelm quantize`` -> ``syllablelm.units.tokenizer.save_tokenizer``): only the
student encoder, the segmenter and the quantizer, readable with ``weights_only``; the same units as the SylBoost
checkpoint + quantizer it replaces; a backbone for ``load_backbone``; clear errors for other files."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from experiments.cli import main
from syllablelm import Tokenizer
from syllablelm.audio.io import read_audio
from syllablelm.boundaries.segmenter import Segmenter
from syllablelm.checkpoints import CheckpointError, describe, load_backbone, load_encoder
from syllablelm.checkpoints.tokenizer_file import FORMAT as TOKENIZER_FORMAT
from syllablelm.checkpoints.tokenizer_file import KEYS as TOKENIZER_KEYS
from syllablelm.checkpoints.tokenizer_file import QUANTIZER as QUANTIZER_KEY
from syllablelm.models.encoder import SpeechEncoder
from tests import sylboost_helpers as H


@pytest.fixture(scope="module")
def ckpts(synth_corpus, tmp_path_factory):
    """A real SylBoost training checkpoint (one optimizer step: optimizer state, loops, callbacks, teacher,
    student), the lean tokenizer checkpoint ``quantize`` makes from it, and today's format (the same training
    checkpoint with the same quantizer inside)."""
    tmp = tmp_path_factory.mktemp("lean")
    cache = str(tmp / "cache")
    H.write_v0(synth_corpus, tmp / "store", cache)
    model = H.module(H.save_teacher(tmp / "teacher.ckpt"))
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=tmp)
    trainer.fit(model, H.datamodule(synth_corpus, tmp / "store", cache))
    full = tmp / "sylboost.ckpt"
    trainer.save_checkpoint(full)
    lean = tmp / "tokenizer.ckpt"
    assert main(["quantize", "--checkpoint", str(full), "--data", str(synth_corpus / "train"), "--k", "32",
                 "--k-merged", "12", "--hours", "1", "--out", str(lean), "--manifest-cache", cache]) == 0
    old = torch.load(full, map_location="cpu", weights_only=True)
    old[QUANTIZER_KEY] = torch.load(lean, weights_only=True)[QUANTIZER_KEY]
    today = tmp / "today.ckpt"
    torch.save(old, today)
    return {"full": full, "lean": lean, "today": today}


def test_lean_checkpoint_holds_only_what_tokenizing_needs(ckpts):
    lean = torch.load(ckpts["lean"], weights_only=True)  # containers, tensors and strings only
    full = torch.load(ckpts["full"], weights_only=True)
    assert tuple(lean) == TOKENIZER_KEYS and lean["format"] == TOKENIZER_FORMAT
    assert {"optimizer_states", "loops", "callbacks", "state_dict", "lr_schedulers"} <= set(full)  # what it drops
    student = {k[len("student."):]: v for k, v in full["state_dict"].items() if k.startswith("student.")}
    assert set(lean["encoder_state"]) == set(student)  # the student only: no teacher, no delta buffer
    assert all(torch.equal(lean["encoder_state"][k], v) for k, v in student.items())
    assert lean["encoder"] == full["hyper_parameters"]["encoder"]
    assert lean["segmenter"] == full["hyper_parameters"]["segmenter"] and lean["delta"] is None  # rate mode
    meta = lean["meta"]
    assert meta["feature_layer"] == 1 and meta["normalize_waveform"] is False
    assert meta["k"] == 32 and meta["k_merged"] == 12 and meta["source"] == str(ckpts["full"].resolve())
    assert meta["command"] == "quantize" and meta["args"]["k"] == 32 and meta["suite_version"]
    assert len(meta["weights_fingerprint"]) == 40
    sizes = {name: path.stat().st_size for name, path in ckpts.items()}
    ratio = sizes["lean"] / sizes["today"]
    print(f"lean {sizes['lean']} B, today's format {sizes['today']} B, SylBoost checkpoint {sizes['full']} B: "
          f"ratio {ratio:.3f}")
    assert ratio < 0.4 and sizes["lean"] < 0.4 * sizes["full"]


def test_lean_and_todays_format_give_the_same_units(ckpts, synth_corpus):
    lean, today = Tokenizer.from_pretrained(ckpts["lean"]), Tokenizer.from_pretrained(ckpts["today"])
    assert lean.vocab_size == today.vocab_size == 12 and lean.meta["k"] == 32 and today.meta == {}
    files = sorted((synth_corpus / "test").rglob("*.flac"))[:4]
    for dedup in (True, False):
        for (sa, ua), (sb, ub) in zip(lean.batch(files, deduplicate=dedup), today.batch(files, deduplicate=dedup)):
            assert len(ua) > 0 and np.array_equal(sa, sb) and np.array_equal(ua, ub)


def test_a_delta_segmenter_and_fixed_frames_round_trip(ckpts, synth_corpus, tmp_path):
    wave = read_audio(sorted((synth_corpus / "test").rglob("*.flac"))[0])
    tok = Tokenizer.from_pretrained(ckpts["today"])
    tok.segmenter = Segmenter({"delta": 0.37, "quantile": 0.8, "min_len": 2, "max_len": 30})
    meta = tok.save(tmp_path / "delta.ckpt", meta={"note": "round trip"})
    back = Tokenizer.from_pretrained(tmp_path / "delta.ckpt")
    assert meta["note"] == back.meta["note"] == "round trip"
    assert back.delta == 0.37 and back.segmenter.config == tok.segmenter.config
    assert all(np.array_equal(a, b) for a, b in zip(back(wave, 16000), tok(wave, 16000)))
    tok.use_fixed_frames(2)
    tok.save(tmp_path / "frames.ckpt")
    frames = Tokenizer.from_pretrained(tmp_path / "frames.ckpt")
    assert frames.segmenter.config.fixed_frames == 2 and frames.delta is None
    assert all(np.array_equal(a, b) for a, b in zip(frames(wave, 16000), tok(wave, 16000)))


def test_load_backbone_reads_the_student(ckpts, synth_corpus):
    bb = load_backbone(ckpts["lean"])
    assert bb.format == "tokenizer" and bb.layers == 1 and bb.normalize_waveform is False and bb.teacher is None
    student = Tokenizer.from_pretrained(ckpts["full"], require_quantizer=False).encoder
    wave = read_audio(sorted((synth_corpus / "dev").rglob("*.flac"))[0])[None]
    with torch.no_grad():
        ours = SpeechEncoder(bb.encoder, layer=bb.layers, normalize_waveform=bb.normalize_waveform)(wave)[0]
        loaded = load_encoder(ckpts["lean"], layer=1)(wave)[0]  # what SylBoost / labels start from
        assert torch.equal(ours, student(wave)[0]) and torch.equal(loaded, ours)
    info = describe(ckpts["lean"])
    assert info["format"] == "tokenizer" and info["layers"] == 1 and info["hidden"] == 64


def test_corrupt_or_foreign_files_name_the_file(ckpts, tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(ckpts["lean"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"corrupt\.ckpt: not a readable checkpoint"):
        Tokenizer.from_pretrained(corrupt)
    lean = torch.load(ckpts["lean"], weights_only=True)
    torch.save({**lean, "format": "syllablelm.tokenizer/99"}, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match=r"future\.ckpt: checkpoint format 'syllablelm.tokenizer/99'"):
        Tokenizer.from_pretrained(tmp_path / "future.ckpt")
    torch.save({k: v for k, v in lean.items() if k != "quantizer"}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match=r"partial\.ckpt: a syllablelm.tokenizer/1 checkpoint without "
                                              r"\['quantizer'\]"):
        Tokenizer.from_pretrained(tmp_path / "partial.ckpt")
    torch.save({**lean, "encoder_state": {}}, tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt: the tokenizer checkpoint's encoder_state"):
        load_backbone(tmp_path / "empty.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"other\.ckpt: neither a teacher, a SylBoost nor a tokenizer"):
        Tokenizer.from_pretrained(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"teacher\.ckpt: neither a tokenizer nor a SylBoost checkpoint"):
        Tokenizer.from_pretrained(H.save_teacher(tmp_path / "teacher.ckpt"))
