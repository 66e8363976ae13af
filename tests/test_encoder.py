import pytest
import torch
from transformers import Data2VecAudioConfig, Data2VecAudioModel, HubertConfig, HubertModel, WavLMConfig, WavLMModel

from syllablelm.models.encoder import SpeechEncoder

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


@pytest.mark.parametrize("config, model", [(HubertConfig, HubertModel), (WavLMConfig, WavLMModel),
                                           (Data2VecAudioConfig, Data2VecAudioModel)])
def test_padding_never_changes_a_feature(config, model):
    torch.manual_seed(0)
    enc = SpeechEncoder(model(config(**SMALL)), layer=2, normalize_waveform=True).eval()
    waves = torch.randn(3, 24000)
    lengths = [24000, 15000, 9000]
    mask = (torch.arange(24000)[None] < torch.tensor(lengths)[:, None]).long()
    waves = waves * mask
    with torch.no_grad():
        batched, frame_mask = enc(waves, mask)
        for b, n in enumerate(lengths):
            alone, _ = enc(waves[b:b + 1, :n])
            T = alone.shape[1]
            assert int(frame_mask[b].sum()) == T
            torch.testing.assert_close(batched[b, :T], alone[0], atol=1e-4, rtol=1e-4)
    assert all(p is not None for p in enc.parameters()) and not hasattr(enc.model, "masked_spec_embed") \
        or enc.model.masked_spec_embed is None
    assert len(enc.model.encoder.layers) == 2  # cut after the feature layer: no unused parameters under DDP


def _d2v2(mode: str) -> SpeechEncoder:
    from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config

    return SpeechEncoder(Data2Vec2AudioEncoder(Data2Vec2Config.tiny(extractor_mode=mode)), layer=2,
                         normalize_waveform=False)


@pytest.mark.parametrize("make", [
    lambda: SpeechEncoder(HubertModel(HubertConfig(**SMALL)), layer=2, normalize_waveform=True),
    lambda: SpeechEncoder(WavLMModel(WavLMConfig(**SMALL)), layer=2, normalize_waveform=False),
    lambda: SpeechEncoder(Data2VecAudioModel(Data2VecAudioConfig(**SMALL)), layer=2, normalize_waveform=True),
    lambda: _d2v2("layer_norm"), lambda: _d2v2("default"),
], ids=["hubert", "wavlm", "data2vec-audio", "data2vec2", "data2vec2-groupnorm"])
def test_features_from_the_cached_frontend_equal_the_full_forward(make):
    """What SylBoost's frozen-feature cache relies on: per-utterance CNN outputs, continued in a padded batch,
    give the full forward's features and frame mask (the CNN itself is never run again)."""
    torch.manual_seed(0)
    enc = make().eval()
    lengths = torch.tensor([24000, 15000, 9000])
    mask = (torch.arange(24000)[None] < lengths[:, None]).long()
    waves = torch.randn(3, 24000) * mask
    with torch.no_grad():
        full, frame_mask = enc(waves, mask)
        frames = [enc.frontend(waves[b, :n]) for b, n in enumerate(lengths.tolist())]
        calls = []
        hook = enc.model.feature_extractor.register_forward_hook(lambda *a: calls.append(1))
        cached, cached_mask = enc.forward_frontend(frames, lengths)
        one, one_mask = enc.forward_frontend(frames[1:2], lengths[1:2])
        hook.remove()
    assert not calls  # the CNN was bypassed
    assert torch.equal(cached_mask, frame_mask) and cached.shape == full.shape
    torch.testing.assert_close(cached * frame_mask[..., None], full * frame_mask[..., None], atol=1e-4, rtol=1e-4)
    T = int(frame_mask[1].sum())
    assert one.shape[1] == T and bool(one_mask.all())
    torch.testing.assert_close(one[0], full[1, :T], atol=1e-4, rtol=1e-4)
    assert isinstance(enc.model.feature_extractor, torch.nn.Module) and not calls  # the real CNN is back
    assert any(True for _ in enc.model.feature_extractor.parameters())
