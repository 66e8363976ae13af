"""Importing fairseq HuBERT checkpoints (without fairseq), HF encoder directories and k-means models."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

from syllablelm import checkpoints as ck
from syllablelm.checkpoints import fairseq_hubert as cw
from syllablelm.models.hubert import HubertTeacher, TeacherConfig

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)


def _losses(teacher: HubertTeacher, seed: int = 0) -> torch.Tensor:
    """Per-frame masked-prediction losses (B, T) on a fixed padded batch with a fixed span mask."""
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(2, 12800, generator=g) * 0.1
    am = torch.ones(2, 12800, dtype=torch.long)
    am[1, 8000:] = 0
    with torch.no_grad():
        feats, fm = teacher.eval().frontend(waves * am, am)
        span = _span(fm)
        labels = torch.randint(0, teacher.config.num_labels, fm.shape, generator=g)
        return teacher.frame_losses(teacher.logits(teacher.transformer(feats, fm, span)), labels)


def _span(fm):
    from syllablelm.models.hubert import compute_span_mask
    return compute_span_mask(fm, mask_prob=0.5, mask_length=5, generator=torch.Generator().manual_seed(3))


def _load_without_fairseq(path, monkeypatch):
    """Load with every `import fairseq` made to fail, proving fairseq is never needed."""
    assert not any(m == "fairseq" or m.startswith("fairseq.") for m in sys.modules)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "fairseq", None)  # `import fairseq` now raises ImportError
        return ck.load_fairseq_hubert(path)


@pytest.mark.parametrize("style", ["cfg", "args"])
@pytest.mark.parametrize("variant", ["group_postln", "layer_preln"])
def test_fairseq_round_trip_keeps_per_frame_losses(tmp_path, monkeypatch, style, variant):
    extra = {} if variant == "group_postln" else dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                                      normalize_waveform=True, conv_bias=True)
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=20, **extra))
    path = tmp_path / "hubert.pt"
    cw.save_fairseq_style_checkpoint(teacher, path, style=style)
    assert "fairseq" not in sys.modules  # the fake module was only there while pickling
    loaded = _load_without_fairseq(path, monkeypatch)
    assert loaded.config.label_offset == 4 and loaded.label_embs.shape == (24, 64)
    assert loaded.config == TeacherConfig.tiny(num_labels=20, label_offset=4, **extra)
    torch.testing.assert_close(loaded.label_embs[4:], teacher.label_embs)  # label k = row k + 4
    # identical per-frame losses; ignoring the offset (rows 0..K-1) would shift every label by 4 and fail here
    torch.testing.assert_close(_losses(loaded), _losses(teacher), rtol=0, atol=1e-5)


def test_loaded_offset_teacher_round_trips_again(tmp_path, monkeypatch):
    torch.manual_seed(1)
    first = tmp_path / "a.pt"
    cw.save_fairseq_style_checkpoint(HubertTeacher(TeacherConfig.tiny(num_labels=10)), first)
    a = _load_without_fairseq(first, monkeypatch)
    cw.save_fairseq_style_checkpoint(a, tmp_path / "b.pt")  # offset 4 is written as is, not padded again
    b = _load_without_fairseq(tmp_path / "b.pt", monkeypatch)
    torch.testing.assert_close(b.label_embs, a.label_embs)


def _rewrite(path, mutate):
    """Load a fairseq-style file with the stub unpickler, let `mutate` edit it, save it back (re-creating the
    Dictionary under the fake fairseq module)."""
    state = torch.load(path, weights_only=False, pickle_module=ck.stub_pickle)
    mutate(state)
    dicts = (state.get("task_state") or {}).get("dictionaries", [])
    with cw._fake_fairseq_dictionary_module() as Dictionary:
        fresh = []
        for d in dicts:
            nd = Dictionary()
            nd.__dict__.update({k: v for k, v in vars(d).items() if k != "_args"})
            fresh.append(nd)
        if dicts:
            state["task_state"]["dictionaries"] = fresh
        torch.save(state, path)


def test_dictionary_in_any_order_maps_label_k_to_its_row(tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=12))
    path = tmp_path / "perm.pt"
    cw.save_fairseq_style_checkpoint(teacher, path)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))

    def shuffle(state):  # symbol order as fairseq-preprocess would write it (by count), rows moved along
        d = state["task_state"]["dictionaries"][0]
        d.symbols = d.symbols[:4] + [str(int(k)) for k in perm]
        d.indices = {s: i for i, s in enumerate(d.symbols)}
        embs = state["model"]["label_embs_concat"]
        state["model"]["label_embs_concat"] = torch.cat([embs[:4], embs[4:][perm]])

    _rewrite(path, shuffle)
    torch.testing.assert_close(_losses(_load_without_fairseq(path, monkeypatch)), _losses(teacher), rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["base", "large"])
def test_real_shaped_checkpoint_key_names_and_shapes(tmp_path, monkeypatch, preset):
    """One-layer Base/Large-shaped teachers: every fairseq name and shape as in the released checkpoints."""
    cfg = getattr(TeacherConfig, preset)(num_hidden_layers=1, **NO_DROPOUT)
    torch.manual_seed(0)
    path = tmp_path / f"{preset}.pt"
    cw.save_fairseq_style_checkpoint(HubertTeacher(cfg), path)
    sd = torch.load(path, weights_only=False, pickle_module=ck.stub_pickle)["model"]
    H, F = cfg.hidden_size, cfg.final_dim
    shapes = {
        "feature_extractor.conv_layers.0.0.weight": (512, 1, 10),
        "feature_extractor.conv_layers.6.0.weight": (512, 512, 2),
        "layer_norm.weight": (512,), "post_extract_proj.weight": (H, 512), "mask_emb": (H,),
        "encoder.pos_conv.0.weight_g": (1, 1, 128), "encoder.pos_conv.0.weight_v": (H, H // 16, 128),
        "encoder.pos_conv.0.bias": (H,), "encoder.layers.0.self_attn.k_proj.weight": (H, H),
        "encoder.layers.0.self_attn_layer_norm.weight": (H,), "encoder.layers.0.fc1.weight": (4 * H, H),
        "encoder.layers.0.fc2.bias": (H,), "encoder.layers.0.final_layer_norm.bias": (H,),
        "encoder.layer_norm.weight": (H,), "final_proj.weight": (F, H), "label_embs_concat": (504, F),
    }
    if preset == "base":  # GroupNorm in the first conv block only, no conv bias
        shapes["feature_extractor.conv_layers.0.2.weight"] = (512,)
        assert "feature_extractor.conv_layers.1.2.weight" not in sd
        assert "feature_extractor.conv_layers.0.0.bias" not in sd
    else:  # LayerNorm (inside TransposeLast) in every block
        shapes["feature_extractor.conv_layers.5.2.1.bias"] = (512,)
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    loaded = _load_without_fairseq(path, monkeypatch)
    assert loaded.config == getattr(TeacherConfig, preset)(num_hidden_layers=1, label_offset=4, **NO_DROPOUT)


def test_mismatched_keys_raise_errors_naming_the_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "broken.pt"
    cw.save_fairseq_style_checkpoint(HubertTeacher(TeacherConfig.tiny(num_hidden_layers=1)), path)

    def corrupt(state):
        del state["model"]["mask_emb"]
        state["model"]["encoder.layers.0.self_attn.rel_bias"] = torch.zeros(3)
        state["model"]["encoder.layers.0.fc1.bias"] = torch.zeros(7)

    _rewrite(path, corrupt)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_fairseq_hubert(path)
    msg = str(err.value)
    assert str(path) in msg and "encoder.masked_spec_embed" in msg and "rel_bias" in msg
    assert "intermediate_dense.bias" in msg and "(7,)" in msg  # the shape mismatch

    _rewrite(path, lambda s: s["model"].pop("label_embs_concat"))
    with pytest.raises(ck.CheckpointError, match="label_embs_concat"):
        ck.load_fairseq_hubert(path)


def test_missing_dictionary_assumes_four_specials_with_a_warning(tmp_path):
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=9))
    path = tmp_path / "nodict.pt"
    cw.save_fairseq_style_checkpoint(teacher, path)
    _rewrite(path, lambda s: s.pop("task_state"))
    with pytest.warns(UserWarning, match="no dictionary"):
        loaded = ck.load_fairseq_hubert(path)
    assert loaded.config.num_labels == 9
    torch.testing.assert_close(_losses(loaded), _losses(teacher), rtol=0, atol=1e-5)


def test_hf_dir_round_trip_offline(tmp_path):
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny()).eval()
    teacher.encoder.save_pretrained(tmp_path / "hf")
    with pytest.warns(UserWarning, match="no pretraining head"):
        loaded = HubertTeacher.from_hf_dir(tmp_path / "hf", num_labels=100, final_dim=64)
    assert loaded.config == teacher.config
    waves = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().hidden_states(waves, layer=2), teacher.hidden_states(waves, layer=2))
    cfg_file = tmp_path / "hf" / "config.json"  # a dir saved with masking off still keeps its mask embedding
    cfg_file.write_text(cfg_file.read_text().replace('"mask_time_prob": 0.05', '"mask_time_prob": 0.0'))
    assert '"mask_time_prob": 0.0' in cfg_file.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = HubertTeacher.from_hf_dir(tmp_path / "hf", num_labels=5, final_dim=8)
    torch.testing.assert_close(again.encoder.masked_spec_embed, teacher.encoder.masked_spec_embed)
    (tmp_path / "hf" / "preprocessor_config.json").write_text('{"do_normalize": true}')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert HubertTeacher.from_hf_dir(tmp_path / "hf", num_labels=5, final_dim=8).config.normalize_waveform
    assert type(ck.load_backbone(tmp_path / "hf").encoder).__name__ == "HubertModel"


@pytest.mark.parametrize("name", ["WavLM", "Data2VecAudio", "Wav2Vec2"])
def test_load_hf_encoder_other_families(tmp_path, name):
    import transformers

    config = getattr(transformers, f"{name}Config")(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, conv_dim=(16,) * 7,
                                                    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    getattr(transformers, f"{name}Model")(config).save_pretrained(tmp_path)
    assert type(ck.load_backbone(tmp_path).encoder).__name__ == f"{name}Model"


def test_kmeans_joblib_and_npy(tmp_path):
    import joblib
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    km = MiniBatchKMeans(n_clusters=8, n_init=1, random_state=0, batch_size=100).fit(x)
    joblib.dump(km, tmp_path / "km.bin")  # what fairseq's learn_kmeans.py writes
    centers = ck.load_kmeans_centroids(tmp_path / "km.bin")
    np.testing.assert_allclose(centers, km.cluster_centers_, rtol=1e-6)
    np.save(tmp_path / "km.npy", centers)
    np.testing.assert_array_equal(ck.load_kmeans_centroids(tmp_path / "km.npy"), centers)
    labeler = ck.KMeansLabeler.from_file(tmp_path / "km.npy", chunk=7)  # several chunks
    labels = labeler(torch.from_numpy(x))
    assert labels.dtype == torch.long and labels.shape == (400,)
    np.testing.assert_array_equal(labels.numpy(), km.predict(x))
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(ValueError, match="K, D"):
        ck.load_kmeans_centroids(tmp_path / "bad.npy")


def test_conv_layer_spec_parser():
    from syllablelm.models.common import parse_conv_spec

    assert parse_conv_spec("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(ValueError):
        parse_conv_spec("__import__('os').system('true')")


def test_structured_dictconfig_with_fairseq_dataclass_and_enum(tmp_path, monkeypatch):
    """fairseq stores cfg.model as a structured DictConfig typed by its own dataclass, with ChoiceEnum members;
    both pickle as references to fairseq classes that the stub unpickler must absorb."""
    import dataclasses
    import enum
    import types

    from omegaconf import OmegaConf

    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(feat_extract_norm="layer", num_labels=6))
    path = tmp_path / "structured.pt"
    cw.save_fairseq_style_checkpoint(teacher, path)
    state = torch.load(path, weights_only=False, pickle_module=ck.stub_pickle)
    plain = ck.to_plain(state["cfg"])
    with monkeypatch.context() as m:
        for name in ("fairseq", "fairseq.dataclass", "fairseq.dataclass.constants", "fairseq.models",
                     "fairseq.models.hubert", "fairseq.models.hubert.hubert"):
            m.setitem(sys.modules, name, types.ModuleType(name))
        Choices = enum.Enum("Choices", {"default": "default", "layer_norm": "layer_norm"},
                            module="fairseq.dataclass.constants")
        sys.modules["fairseq.dataclass.constants"].Choices = Choices
        fields = [(k, type(v), dataclasses.field(default=v)) for k, v in plain["model"].items()
                  if k not in ("_name", "extractor_mode")]
        HubertConfig = dataclasses.make_dataclass(
            "HubertConfig", [("extractor_mode", Choices, dataclasses.field(default=Choices.layer_norm))] + fields,
            namespace={"__module__": "fairseq.models.hubert.hubert"})
        sys.modules["fairseq.models.hubert.hubert"].HubertConfig = HubertConfig
        model_cfg = OmegaConf.structured(HubertConfig)
        model_cfg.label_rate = "${task.label_rate}"  # fairseq's II("task.label_rate")
        state["cfg"] = OmegaConf.create({"model": model_cfg, "task": plain["task"]})
        dictionary = state.pop("task_state")["dictionaries"][0]
        with cw._fake_fairseq_dictionary_module() as Dictionary:  # nests inside the fake fairseq package
            d = Dictionary()
            d.__dict__.update({k: v for k, v in vars(dictionary).items() if k != "_args"})
            state["task_state"] = {"dictionaries": [d]}
            torch.save(state, path)
    with open(path, "rb") as f:
        raw = f.read()
    assert b"fairseq.models.hubert.hubert" in raw and b"fairseq.dataclass.constants" in raw
    loaded = _load_without_fairseq(path, monkeypatch)
    assert loaded.config == TeacherConfig.tiny(feat_extract_norm="layer", num_labels=6, label_offset=4)
    torch.testing.assert_close(_losses(loaded), _losses(teacher), rtol=0, atol=1e-5)


def test_second_label_set_with_untied_projection(tmp_path, monkeypatch):
    import copy

    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=5))
    path = tmp_path / "two_sets.pt"
    cw.save_fairseq_style_checkpoint(teacher, path)

    def add_first_label_set(state):  # a 3-label set in front; final_proj gets one chunk per set
        d = state["task_state"]["dictionaries"][0]
        other = copy.copy(d)
        other.symbols = d.symbols[:4] + ["0", "1", "2"]
        other.indices = {s: i for i, s in enumerate(other.symbols)}
        state["task_state"]["dictionaries"] = [other, d]
        m = state["model"]
        m["label_embs_concat"] = torch.cat([torch.randn(7, 64), m["label_embs_concat"]])
        m["final_proj.weight"] = torch.cat([torch.randn(64, 128), m["final_proj.weight"]])
        m["final_proj.bias"] = torch.cat([torch.randn(64), m["final_proj.bias"]])
        state["cfg"].model.untie_final_proj = True

    _rewrite(path, add_first_label_set)
    loaded = _load_without_fairseq(path, monkeypatch)  # label_set=0: the 3-label set
    assert loaded.config.num_labels == 3
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "fairseq", None)
        second = ck.load_fairseq_hubert(path, label_set=1)
        with pytest.raises(ck.CheckpointError, match="label_set=2"):
            ck.load_fairseq_hubert(path, label_set=2)
    torch.testing.assert_close(_losses(second), _losses(teacher), rtol=0, atol=1e-5)
