"""One owner per file format (docs/architecture.md, "File formats and their owners").

(a) each format's key names are string literals in its owner module only, across the code that could restate them;
(b) every format survives write -> read with equal weights and configuration, written by its real writer (the
Lightning modules for this suite's stage checkpoints, the owner module for the others).
"""
from __future__ import annotations

import ast
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from experiments.cli import main
from lightning_modules.speechlm import SpeechLMModule
from lightning_modules.sylboost import SylBoostModule
from lightning_modules.teacher import TeacherModule
from syllablelm import Tokenizer
from syllablelm.checkpoints import (
    CheckpointError,
    checkpoint_format,
    describe,
    load_backbone,
    load_fairseq_data2vec2,
    load_fairseq_hubert,
    load_kmeans_centroids,
    save_fairseq_style_checkpoint,
    save_fairseq_style_data2vec2,
    save_kmeans_centroids,
    suite,
    tokenizer_file,
)
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config
from syllablelm.models.gpt import GPTConfig
from syllablelm.models.hubert import HubertTeacher, TeacherConfig
from syllablelm.units import tokenizer as tokenizer_module
from syllablelm.units.quantizer import UnitQuantizer

from .conftest import REPO, burst_wave

SCANNED = ("syllablelm", "datamodules", "lightning_modules", "callbacks", "experiments")
SUITE = "syllablelm/checkpoints/suite.py"
TOKENIZER = "syllablelm/checkpoints/tokenizer_file.py"
# format -> (owner module, key names that must not be spelled out anywhere else)
FORMATS = {
    "teacher-ckpt": (SUITE, ("teacher.", "network", "state_dict", "hyper_parameters")),
    "sylboost-ckpt": (SUITE, ("student.", "teacher.", "encoder", "segmenter", "state_dict", "hyper_parameters")),
    "speechlm-ckpt": (SUITE, ("net.", "network", "unit_variant", "state_dict", "hyper_parameters")),
    "tokenizer": (TOKENIZER, ("syllablelm.tokenizer/1", "encoder", "encoder_state", "segmenter", "quantizer",
                              "tokenizer_segmenter", "run_precision")),
    "released SylBoost .pth": ("syllablelm/units/released.py", ("model_seg", "model.", "released_sylboost")),
    "fairseq-hubert": ("syllablelm/checkpoints/fairseq_hubert.py",
                       ("label_embs_concat", "final_proj.weight", "dictionaries", "task_state")),
    "fairseq-data2vec2": ("syllablelm/checkpoints/fairseq_data2vec2.py",
                          ("data2vec_multi", "modality_encoders.AUDIO.", "_ema", "task_state")),
    "phone-judge": ("syllablelm/evaluation/phone_judge.py", ("syllablelm-phone-judge",)),
}
# (literal, file) -> why it may appear there. "state_dict" / "hyper_parameters" are Lightning's own names, owned
# here by suite.py all the same. The Lightning modules produce their checkpoints and name what they record with
# suite.py's constants.
EXCEPTIONS = {
    ("unit_variant", "lightning_modules/speechlm.py"): "getattr(datamodule, 'unit_variant'): the DataModule's "
                                                       "attribute, not the checkpoint key",
    ("network", "experiments/demo.py"): "a YAML config key (model.init_args.network), not a checkpoint's",
    ("network", "experiments/pipeline/checks.py"): "a YAML config key (model.init_args.network), not a checkpoint's",
    ("segmenter", "experiments/unit_work.py"): "a key of quantize's pooled-features cache, not a checkpoint's",
    ("network", "experiments/speech_demo.py"): "a YAML config key (model.init_args.network), not a checkpoint's",
    ("network", "syllablelm/evaluation/phone_judge.py"): "a key of the phone judge's own file format (owned there)",
    ("state_dict", "syllablelm/evaluation/phone_judge.py"): "a key of the phone judge's own file format (owned "
                                                           "there)",
}


def _literals() -> dict[str, set[str]]:
    """Every string constant (f-string parts included) -> the files under :data:`SCANNED` that spell it."""
    found: dict[str, set[str]] = {}
    for root in SCANNED:
        for path in (REPO / root).rglob("*.py"):
            rel = str(path.relative_to(REPO))
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.setdefault(node.value, set()).add(rel)
    return found


def test_each_formats_keys_are_spelled_only_by_its_owner():
    literals = _literals()
    owners: dict[str, set[str]] = {}
    for owner, keys in FORMATS.values():
        for key in keys:
            owners.setdefault(key, set()).add(owner)
    stray = {f"{key!r} in {path}" for key, allowed in owners.items() for path in literals.get(key, ())
             if path not in allowed and (key, path) not in EXCEPTIONS}
    assert not stray, sorted(stray)
    for owner, keys in FORMATS.values():  # the owner does name them (the scan sees what it should)
        assert all(owner in literals.get(k, ()) for k in keys), (owner, [k for k in keys if owner not in literals[k]])
    assert not (REPO / "syllablelm/checkpoints/fairseq_hubert_write.py").exists()  # one module reads and writes


# ---- (b) round trips -----------------------------------------------------------------------------------------
def _lightning_save(module: pl.LightningModule, path: Path) -> dict:
    """What Lightning writes for ``module`` (``trainer.save_checkpoint``, the checkpoint callbacks' writer)."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path, weights_only=True)
    return suite.read_suite_checkpoint(path)


def _equal_states(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _tiny_teacher() -> TeacherModule:
    torch.manual_seed(0)
    return TeacherModule(network=TeacherConfig.tiny(num_hidden_layers=1, hidden_size=64, num_attention_heads=2,
                                                    intermediate_size=128, num_labels=10, final_dim=16))


@pytest.fixture(scope="module")
def stage_ckpts(tmp_path_factory):
    """A teacher and a SylBoost checkpoint started from it, both written by Lightning."""
    tmp = tmp_path_factory.mktemp("formats")
    teacher = _tiny_teacher()
    teacher_ckpt = _lightning_save(teacher, tmp / "teacher.ckpt")
    torch.manual_seed(1)
    sylboost = SylBoostModule(init_from=str(tmp / "teacher.ckpt"), feature_layer=1,
                              segmenter={"delta": 0.25, "min_len": 2, "max_len": 20})
    with torch.no_grad():  # a student that differs from its frozen teacher
        for p in sylboost.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sylboost_ckpt = _lightning_save(sylboost, tmp / "sylboost.ckpt")
    return {"dir": tmp, "teacher": teacher, "teacher_ckpt": teacher_ckpt, "sylboost": sylboost,
            "sylboost_ckpt": sylboost_ckpt}


def test_teacher_checkpoint_round_trip(stage_ckpts):
    module, ckpt, path = stage_ckpts["teacher"], stage_ckpts["teacher_ckpt"], stage_ckpts["dir"] / "teacher.ckpt"
    assert suite.lightning_format(ckpt, path) == "teacher-ckpt" == checkpoint_format(path)
    back = suite.read_teacher(ckpt, path)
    assert back.config == module.teacher.config and _equal_states(back.state_dict(), module.teacher.state_dict())
    assert load_backbone(path).teacher is not None and describe(path)["num_labels"] == 10


def test_sylboost_checkpoint_round_trip(stage_ckpts):
    module, ckpt, path = stage_ckpts["sylboost"], stage_ckpts["sylboost_ckpt"], stage_ckpts["dir"] / "sylboost.ckpt"
    assert suite.lightning_format(ckpt, path) == "sylboost-ckpt" == checkpoint_format(path)
    assert suite.sylboost_encoder_spec(ckpt) == module.student.spec()
    assert _equal_states(suite.read_sylboost_student(ckpt, path).state_dict(), module.student.state_dict())
    assert _equal_states(suite.read_sylboost_frozen(ckpt, path).state_dict(), module.teacher.state_dict())
    segmenter, delta = suite.sylboost_segmenter(ckpt, path)
    assert segmenter == module.segmenter.to_dict() and delta == 0.25
    teacher = stage_ckpts["teacher"].teacher  # the frozen copy is the start checkpoint, cut at layer 1
    assert torch.equal(suite.read_sylboost_frozen(ckpt, path).model.encoder.layers[0].attention.q_proj.weight,
                       teacher.encoder.encoder.layers[0].attention.q_proj.weight)


def test_speechlm_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    module = SpeechLMModule(network=GPTConfig.tiny(vocab_size=12, block_size=32, n_layer=1, n_head=2, n_embd=16))
    module.unit_variant = "authors_lm"
    ckpt = _lightning_save(module, tmp_path / "lm.ckpt")
    assert suite.lightning_format(ckpt, tmp_path / "lm.ckpt") == "speechlm-ckpt"
    lm, variant = suite.load_speechlm(tmp_path / "lm.ckpt")
    assert variant == "authors_lm" and lm.config == module.config
    assert _equal_states(lm.state_dict(), module.net.state_dict())
    with pytest.raises(CheckpointError, match=r"lm\.ckpt: a speechlm-ckpt of this suite holds no speech encoder"):
        load_backbone(tmp_path / "lm.ckpt")


def _quantizer(dim: int, seed: int = 0) -> UnitQuantizer:
    rng = np.random.default_rng(seed)
    return UnitQuantizer(rng.standard_normal((8, dim)).astype(np.float32), rng.permutation(np.arange(8) % 5),
                         pooling="drop_edge", feature_layer=1)


def _units(tok: Tokenizer, waves) -> list[tuple[np.ndarray, np.ndarray]]:
    return tok.batch(waves, sample_rate=16000, deduplicate=False)


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(3)
    return [burst_wave(rng, 2.5)[0], burst_wave(rng, 1.5)[0]]


def test_tokenizer_checkpoint_round_trip(stage_ckpts, waves, tmp_path):
    tok = Tokenizer.from_pretrained(stage_ckpts["dir"] / "sylboost.ckpt", require_quantizer=False)
    tok.quantizer = _quantizer(64)
    meta = tok.save(tmp_path / "tok.ckpt", meta={"note": "x"})
    raw = torch.load(tmp_path / "tok.ckpt", weights_only=True)
    assert tuple(raw) == tokenizer_file.KEYS and checkpoint_format(tmp_path / "tok.ckpt") == "tokenizer"
    back = Tokenizer.from_pretrained(tmp_path / "tok.ckpt")
    assert back.meta == meta and meta["note"] == "x" and meta["k"] == 8 and meta["k_merged"] == 5
    assert back.encoder.spec() == tok.encoder.spec()
    assert _equal_states(back.encoder.state_dict(), stage_ckpts["sylboost"].student.state_dict())
    assert back.segmenter.config == tok.segmenter.config and back.delta == tok.delta == 0.25
    for a, b in ((back.quantizer, tok.quantizer),):
        assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.agglom, b.agglom)
        assert (a.standardize, a.pooling, a.feature_layer) == (b.standardize, b.pooling, b.feature_layer)
    for (sa, ua), (sb, ub) in zip(_units(back, waves), _units(tok, waves)):
        assert len(ua) > 3 and np.array_equal(sa, sb) and np.array_equal(ua, ub)
    direct = tokenizer_file.load_tokenizer_checkpoint(tmp_path / "tok.ckpt")  # the owner's own reader
    assert direct.delta == 0.25 and direct.quantizer.k == 8 and direct.meta == meta


def test_converter_gives_the_same_units(stage_ckpts, waves, tmp_path, monkeypatch, capsys):
    """An older tokenizer file (SylBoost checkpoint + quantizer inside, fp16 student, frame-unit record; or the
    quantizer beside it) -> ``convert-tokenizer`` -> a tokenizer checkpoint with the same units."""
    old = dict(stage_ckpts["sylboost_ckpt"])
    q = _quantizer(64, seed=1)
    old[suite.STATE_DICT] = {k: v.half() if k.startswith(suite.STUDENT_PREFIX) and v.is_floating_point() else v
                             for k, v in old[suite.STATE_DICT].items()}
    inside = {**old, tokenizer_file.QUANTIZER: tokenizer_file.QuantizerTables(
        torch.from_numpy(q.centroids), torch.from_numpy(q.agglom),
        {"standardize": True, "pooling": "drop_edge", "feature_layer": 1}).entry()}
    torch.save(inside, tmp_path / "inside.ckpt")
    torch.save({**inside, tokenizer_file.LEGACY_SEGMENTER: {"fixed_frames": 3}}, tmp_path / "frames.ckpt")
    torch.save(old, tmp_path / "beside.ckpt")
    q.save(tmp_path / "beside.quantizer.npz")
    warnings = []
    monkeypatch.setattr(tokenizer_module.log, "warning", lambda msg, *args: warnings.append(msg % args))
    for name in ("inside", "frames", "beside"):
        warnings.clear()
        before = Tokenizer.from_pretrained(tmp_path / f"{name}.ckpt")
        assert len(warnings) == 1 and f"syllablelm convert-tokenizer --in {tmp_path / name}.ckpt" in warnings[0]
        assert before.meta == {}  # converted in memory
        assert main(["convert-tokenizer", "--in", str(tmp_path / f"{name}.ckpt"),
                     "--out", str(tmp_path / f"{name}.v1.ckpt")]) == 0
        after = Tokenizer.from_pretrained(tmp_path / f"{name}.v1.ckpt")
        assert after.meta["converted_from"] == str((tmp_path / f"{name}.ckpt").resolve())
        assert after.segmenter.config == before.segmenter.config and after.delta == before.delta
        assert (after.segmenter.config.fixed_frames == 3) == (name == "frames")
        for (sa, ua), (sb, ub) in zip(_units(after, waves), _units(before, waves)):
            assert len(ua) > 3 and np.array_equal(sa, sb) and np.array_equal(ua, ub)
        stored = torch.load(tmp_path / f"{name}.v1.ckpt", weights_only=True)[tokenizer_file.ENCODER_STATE]
        assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())  # dtype kept
    capsys.readouterr()
    assert main(["convert-tokenizer", "--in", str(stage_ckpts["dir"] / "sylboost.ckpt"),
                 "--out", str(tmp_path / "none.ckpt")]) == 1  # a SylBoost checkpoint alone is no tokenizer yet
    assert "sylboost.ckpt: no quantizer" in capsys.readouterr().err and not (tmp_path / "none.ckpt").exists()
    assert main(["convert-tokenizer", "--in", str(tmp_path / "inside.v1.ckpt"), "--out", str(tmp_path / "x.ckpt")]) == 1
    assert "inside.v1.ckpt: already a tokenizer checkpoint" in capsys.readouterr().err


def test_fairseq_hubert_both_ways(tmp_path):
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_hidden_layers=1, num_labels=6, label_offset=4)).eval()
    save_fairseq_style_checkpoint(teacher, tmp_path / "hubert.pt")
    back = load_fairseq_hubert(tmp_path / "hubert.pt")
    assert _equal_states(back.state_dict(), teacher.state_dict())
    c, b = teacher.config, back.config
    assert (b.num_hidden_layers, b.hidden_size, b.num_labels, b.label_offset, b.final_dim, b.conv_dim) == \
        (c.num_hidden_layers, c.hidden_size, c.num_labels, c.label_offset, c.final_dim, c.conv_dim)
    save_fairseq_style_checkpoint(back, tmp_path / "again.pt")  # and back out: the same weights again
    assert _equal_states(load_fairseq_hubert(tmp_path / "again.pt").state_dict(), teacher.state_dict())


def test_fairseq_data2vec2_both_ways(tmp_path):
    torch.manual_seed(0)
    model = Data2Vec2AudioEncoder(Data2Vec2Config.tiny()).eval()
    save_fairseq_style_data2vec2(model, tmp_path / "d2v2.pt")
    back = load_fairseq_data2vec2(tmp_path / "d2v2.pt")
    assert back.config == model.config and _equal_states(back.state_dict(), model.state_dict())
    save_fairseq_style_data2vec2(back, tmp_path / "again.pt", pretraining_keys=False)
    assert _equal_states(load_fairseq_data2vec2(tmp_path / "again.pt").state_dict(), model.state_dict())


def test_kmeans_npy_both_ways(tmp_path):
    centroids = np.random.default_rng(0).standard_normal((5, 3))
    save_kmeans_centroids(tmp_path / "km.npy", centroids)
    back = load_kmeans_centroids(tmp_path / "km.npy")
    assert back.dtype == np.float32 and np.array_equal(back, centroids.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        save_kmeans_centroids(tmp_path / "bad.npy", np.zeros(3))
