"""The HuBERT teacher network: split forward == HF HubertModel, head semantics, span masks."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from syllablelm.models.common import normalize_waves
from syllablelm.models.hubert import HubertTeacher, TeacherConfig, compute_span_mask

VARIANTS = {
    "base_like": dict(),  # group-norm CNN, post-LN transformer
    "large_like": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}


def _padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(3, 16000, generator=g) * 0.1  # 1 s, 0.75 s, 0.4 s
    lengths = torch.tensor([16000, 12000, 6400])
    am = (torch.arange(16000)[None] < lengths[:, None]).long()  # (B, S)
    return waves * am, am


@pytest.mark.parametrize("variant", VARIANTS)
def test_split_forward_equals_hf_hubert_model(variant):
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_hidden_layers=3, **VARIANTS[variant])).eval()
    waves, am = _padded_batch()
    with torch.no_grad():
        feats, frame_mask = teacher.frontend(waves, am)
        assert feats.shape == (3, 49, 128) and frame_mask.sum(-1).tolist() == [49, 37, 19]  # 50 Hz frames
        ref = teacher.encoder(waves, attention_mask=am, output_hidden_states=True)
        torch.testing.assert_close(teacher.transformer(feats, frame_mask), ref.last_hidden_state, rtol=0, atol=1e-6)
        ours = teacher.transformer(feats, frame_mask, output_hidden_states=True)
        assert len(ours) == len(ref.hidden_states) == 4
        for a, b in zip(ours, ref.hidden_states):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(teacher.hidden_states(waves, am, layer=2), ref.hidden_states[2], rtol=0, atol=1e-6)

        span = compute_span_mask(frame_mask, mask_prob=0.5, mask_length=5, generator=torch.Generator().manual_seed(1))
        assert span.any()
        masked_ref = teacher.encoder(waves, attention_mask=am, mask_time_indices=span).last_hidden_state
        masked = teacher.transformer(feats, frame_mask, span)
        torch.testing.assert_close(masked, masked_ref, rtol=0, atol=1e-6)
        assert (masked - ref.last_hidden_state).abs().amax() > 1e-3  # the mask really changed something
        # the front end is mask-independent: reusing `feats` for a second mask pattern did not alter it
        torch.testing.assert_close(teacher.frontend(waves, am)[0], feats)


def test_waveform_normalisation_over_real_samples_only():
    from transformers import Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(feat_extract_norm="layer", normalize_waveform=True)).eval()
    waves, am = _padded_batch()
    waves = waves * 3 + 0.5 * am  # offset and scale that normalisation must remove
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    hf = fe([w[: int(n)].numpy() for w, n in zip(waves, am.sum(-1))], sampling_rate=16000, padding=True,
            return_tensors="pt")
    torch.testing.assert_close(normalize_waves(waves, am), hf.input_values, rtol=0, atol=1e-4)
    with torch.no_grad():
        feats, frame_mask = teacher.frontend(waves, am)
        alone, _ = teacher.frontend(waves[2:, :6400])  # the short utterance without padding
    torch.testing.assert_close(feats[2, :19], alone[0], rtol=0, atol=1e-4)


def test_logits_are_scaled_cosines_with_label_offset():
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=7, final_dim=16, label_offset=4))
    assert teacher.label_embs.shape == (11, 16)
    hidden = torch.randn(2, 5, 128)
    logits = teacher.logits(hidden)
    assert logits.shape == (2, 5, 7)
    proj = teacher.final_proj(hidden)
    for k in (0, 3, 6):
        expected = F.cosine_similarity(proj, teacher.label_embs[k + 4].expand_as(proj), dim=-1) / 0.1
        torch.testing.assert_close(logits[..., k], expected, rtol=1e-5, atol=1e-5)
        wrong = F.cosine_similarity(proj, teacher.label_embs[k].expand_as(proj), dim=-1) / 0.1
        assert not torch.allclose(logits[..., k], wrong, atol=1e-3)  # row k (no offset) is a different label
    assert logits.abs().max() <= 10 + 1e-4  # |cos| <= 1, temperature 0.1


def test_all_row_softmax_puts_the_special_rows_in_the_normaliser():
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=7, final_dim=16, label_offset=4))
    hidden = torch.randn(2, 5, 128)
    real, every = teacher.logits(hidden), teacher.logits(hidden, rows="all")
    assert real.shape == (2, 5, 7) and every.shape == (2, 5, 11)
    assert teacher.column_offset("all") == 4 and teacher.column_offset("labels") == 0
    torch.testing.assert_close(every[..., 4:], real)  # column k + 4 = label k
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 0] = -100
    l_every, l_real = teacher.frame_losses(every, labels, 4), teacher.frame_losses(real, labels)
    assert l_every[0, 0] == 0 and l_real[0, 0] == 0
    expected = -every.log_softmax(-1).gather(-1, (labels.clamp(min=0) + 4)[..., None])[..., 0]
    torch.testing.assert_close(l_every[labels >= 0], expected[labels >= 0])
    assert (l_every[labels >= 0] > l_real[labels >= 0]).all()  # 4 more terms in the normaliser
    total, count = teacher.masked_prediction_loss(every, labels, torch.ones(2, 5, dtype=torch.bool), None, 4)
    torch.testing.assert_close(total, l_every.sum())
    assert int(count) == 9
    pred = teacher.predicted_labels(every, rows="all")
    assert torch.equal(pred, every.argmax(-1) - 4) and torch.equal(teacher.predicted_labels(real), real.argmax(-1))
    with pytest.raises(ValueError, match="rows"):
        teacher.logits(hidden, rows="specials")
    plain = HubertTeacher(TeacherConfig.tiny(num_labels=7, final_dim=16))  # offset 0: both choices agree
    torch.testing.assert_close(plain.logits(hidden, rows="all"), plain.logits(hidden), rtol=0, atol=0)


def test_frontend_normalize_argument_overrides_the_config():
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(feat_extract_norm="layer", normalize_waveform=True)).eval()
    waves, am = _padded_batch()
    waves = waves * 3 + 0.5 * am
    with torch.no_grad():
        normed, raw = teacher.frontend(waves, am)[0], teacher.frontend(waves, am, normalize=False)[0]
        torch.testing.assert_close(teacher.frontend(waves, am, normalize=True)[0], normed)
        teacher.config.normalize_waveform = False
        torch.testing.assert_close(teacher.frontend(waves, am)[0], raw)
    assert (normed - raw).abs().amax() > 1e-3


def test_logits_stay_float32_under_autocast():
    """LossPred runs the teacher under bf16/fp16 autocast; the cosine and the /0.1 must not (a bf16 matmul is
    off by ~0.05 after the division), only final_proj may."""
    torch.manual_seed(0)
    teacher = HubertTeacher(TeacherConfig.tiny(num_labels=50, final_dim=64)).eval()
    hidden = torch.randn(2, 40, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher.logits(hidden)
        proj = teacher.final_proj(hidden)  # what autocast makes of the projection (bf16)
    assert logits.dtype == torch.float32 and proj.dtype == torch.bfloat16
    embs = F.normalize(teacher.label_embs.float(), dim=-1)
    expected = F.normalize(proj.float(), dim=-1) @ embs.T / 0.1
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_masked_prediction_loss_counts_only_masked_real_labelled_frames():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4)
    labels = torch.randint(0, 4, (2, 6))
    labels[0, 1] = -100
    span = torch.tensor([[1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    frame = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    per_frame = HubertTeacher.frame_losses(logits, labels)
    assert per_frame.shape == (2, 6) and per_frame[0, 1] == 0
    total, count = HubertTeacher.masked_prediction_loss(logits, labels, span, frame)
    sel = [(0, 0), (0, 4), (1, 1), (1, 2), (1, 3)]
    expected = sum(F.cross_entropy(logits[b, t][None], labels[b, t][None]) for b, t in sel)
    assert int(count) == 5
    torch.testing.assert_close(total, expected)
    with pytest.raises(ValueError, match="disagree"):
        HubertTeacher.frame_losses(logits, labels[:, :5])


def test_span_mask_statistics_determinism_and_padding():
    lengths = torch.tensor([500] * 32 + [300] * 31 + [7])
    frame_mask = torch.arange(500)[None] < lengths[:, None]  # (64, 500)
    m1 = compute_span_mask(frame_mask, generator=torch.Generator().manual_seed(0))
    m2 = compute_span_mask(frame_mask, generator=torch.Generator().manual_seed(0))
    m3 = compute_span_mask(frame_mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert not (m1 & ~frame_mask).any()  # never on padding
    assert not m1[-1].any()  # shorter than one span: unmasked
    # n = 500: int(0.8 * 500 / 10 + u) = 40 distinct starts out of 491; frame f is covered unless none of the
    # starts in [f - 9, f] is drawn
    starts, k = 491, 40
    covering = [min(f, starts - 1) - max(0, f - 9) + 1 for f in range(500)]
    expected = sum(1 - math.comb(starts - c, k) / math.comb(starts, k) for c in covering) / 500  # ~0.56
    frac = m1[:32].float().mean().item()
    assert abs(frac - expected) < 0.02, (frac, expected)
    assert 0.5 < m1[32:63].float().sum() / frame_mask[32:63].sum() < 0.62
    tiny = compute_span_mask(torch.ones(1, 12, dtype=torch.bool), min_masks=2,
                             generator=torch.Generator().manual_seed(0))
    assert tiny.sum() >= 10  # min_masks forces masking even where p*n/L rounds to 0


def test_config_presets_and_serialisation():
    tiny, base, large = TeacherConfig.tiny(), TeacherConfig.base(), TeacherConfig.large()
    assert (base.hidden_size, base.num_hidden_layers, base.final_dim, base.feat_extract_norm) == (768, 12, 256, "group")
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    assert large.final_dim == 768
    assert large.do_stable_layer_norm and large.feat_extract_norm == "layer" and large.normalize_waveform
    assert tiny.conv_kernel == base.conv_kernel and tiny.conv_stride == base.conv_stride  # 320-sample hop
    again = TeacherConfig(**json.loads(json.dumps(tiny.to_dict())))
    assert again == tiny
    hf = tiny.to_hf_config()
    assert TeacherConfig.from_hf_config(hf, num_labels=100, final_dim=64) == tiny
    with pytest.raises(ValueError):
        TeacherConfig.tiny(feat_extract_norm="batch")
    assert HubertTeacher(tiny).feature_lengths(torch.tensor([16000, 320 * 50 + 80])).tolist() == [49, 50]


def test_gradients_flow_and_feature_grad_mult_scales_cnn():
    waves, am = _padded_batch()
    labels = torch.randint(0, 100, (3, 49), generator=torch.Generator().manual_seed(0))

    def cnn_grad(mult):
        torch.manual_seed(0)
        teacher = HubertTeacher(TeacherConfig.tiny(feature_grad_mult=mult)).train()
        feats, fm = teacher.frontend(waves, am)
        span = compute_span_mask(fm, generator=torch.Generator().manual_seed(0))
        total, count = teacher.masked_prediction_loss(teacher.logits(teacher.transformer(feats, fm, span)),
                                                      labels, span, fm)
        (total / count).backward()
        assert teacher.encoder.masked_spec_embed.grad.abs().sum() > 0 and teacher.label_embs.grad.abs().sum() > 0
        return teacher.encoder.feature_extractor.conv_layers[0].conv.weight.grad

    full, tenth, frozen = cnn_grad(1.0), cnn_grad(0.1), cnn_grad(0.0)
    torch.testing.assert_close(tenth, full * 0.1, rtol=1e-4, atol=1e-7)
    assert frozen is None
