import pytest
import torch
from transformers import Data2VecAudioConfig, Data2VecAudioModel, HubertConfig, HubertModel, WavLMConfig, WavLMModel

from syllablelm.nn.encoder import SpeechEncoder

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
