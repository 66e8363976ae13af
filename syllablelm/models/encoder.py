"""A speech encoder cut after its feature layer: the SylBoost student, its frozen teacher and unit extraction.

Wraps an HF model (HuBERT, WavLM, data2vec-audio — HF's is data2vec 1.0 —, wav2vec 2.0) whose transformer keeps
only its first ``layer`` layers, so the output is ``hidden_states[layer]`` (HF numbering: 0 = input to layer 1,
i = output of layer i) and no parameter is left unused (DDP requires that). The configuration travels as a plain
dict (:meth:`spec`), so a LightningModule can rebuild the network from its hyper-parameters alone. A fairseq
data2vec 2.0 checkpoint (``data2vec_multi``, the paper's backbone) is wrapped the same way around this project's
``Data2Vec2AudioEncoder`` (``nn/data2vec2.py``), same hidden-state numbering.

    enc = load_encoder("runs/tiny/teacher/checkpoints/last.ckpt", layer=11)   # syllablelm.checkpoints
    feats, frame_mask = enc(waves, attention_mask)   # (B, T, H), (B, T)
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from syllablelm.models.common import normalize_waves
from syllablelm.models.data2vec2 import Data2Vec2AudioEncoder, Data2Vec2Config

D2V2_TYPE = "data2vec2_fairseq"  # spec()["model_type"] of a data2vec 2.0 encoder (not an HF model type)


class SpeechEncoder(nn.Module):
    def __init__(self, model: PreTrainedModel | Data2Vec2AudioEncoder, *, layer: int, normalize_waveform: bool):
        super().__init__()
        if isinstance(model, Data2Vec2AudioEncoder):
            model.truncate(layer)  # no layerdrop either: a skipped block would leave DDP parameters unused
            model.config.layerdrop = model.config.prenet_layerdrop = 0.0
            self.model, self.layer, self.normalize_waveform = model, layer, normalize_waveform
            return
        total = len(model.encoder.layers)
        if not 1 <= layer <= total:
            raise ValueError(f"feature layer must be in [1, {total}] for this {model.config.model_type}, got {layer}")
        model.encoder.layers = model.encoder.layers[:layer]
        model.config.num_hidden_layers = layer
        # SylBoost never masks its input: without this HF would apply SpecAugment in train mode, and its mask
        # embedding would be a parameter DDP sees unused
        model.config.apply_spec_augment = False
        model.config.mask_time_prob = model.config.mask_feature_prob = 0.0
        if getattr(model, "masked_spec_embed", None) is not None:
            model.masked_spec_embed = None
        if hasattr(model.config, "layerdrop"):
            model.config.layerdrop = 0.0
        self.model = model
        self.layer = layer
        self.normalize_waveform = normalize_waveform

    # ---- construction -----------------------------------------------------------------------------------
    def spec(self) -> dict:
        """Plain-typed description that :meth:`from_spec` turns back into this (untrained) network."""
        if isinstance(self.model, Data2Vec2AudioEncoder):
            return {"model_type": D2V2_TYPE, "config": dataclasses.asdict(self.model.config), "layer": self.layer,
                    "normalize_waveform": self.normalize_waveform}
        return {"model_type": self.model.config.model_type, "config": _json_safe(self.model.config.to_dict()),
                "layer": self.layer, "normalize_waveform": self.normalize_waveform}

    @classmethod
    def from_spec(cls, spec: dict) -> "SpeechEncoder":
        if spec["model_type"] == D2V2_TYPE:
            return cls(Data2Vec2AudioEncoder(Data2Vec2Config(**spec["config"])), layer=spec["layer"],
                       normalize_waveform=spec["normalize_waveform"])
        config = AutoConfig.for_model(spec["model_type"], **{k: v for k, v in spec["config"].items()
                                                            if k != "model_type"})
        return cls(AutoModel.from_config(config), layer=spec["layer"], normalize_waveform=spec["normalize_waveform"])

    # ---- use ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def utterance_features(self, waves) -> list[torch.Tensor]:
        """``(T, H)`` features of each 16 kHz wave (numpy or tensor), one utterance at a time (no padding)."""
        from tqdm.auto import tqdm

        device = next(self.parameters()).device
        return [self(torch.as_tensor(w, dtype=torch.float32, device=device)[None])[0][0]
                for w in tqdm(waves, desc="features", disable=len(waves) < 50)]

    def freeze_cnn(self) -> None:
        for p in self.model.feature_extractor.parameters():
            p.requires_grad_(False)

    def forward(self, waves: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:  # (B, S) -> (B, T, H), (B, T) bool
        """Features of ``hidden_states[layer]`` and the frame mask. Padding never changes a feature: a CNN with
        GroupNorm over time (HuBERT/wav2vec 2.0/WavLM Base) normalises over the padding, and stacked positional
        convolutions (data2vec-audio) carry it into real frames, so a padded batch runs one utterance at a time
        (an unpadded one — equal crops — runs batched). A data2vec 2.0 encoder with a layer-norm CNN masks the
        padding itself and always runs batched. Training then sees exactly the features that per-utterance
        boundary extraction sees."""
        if self.normalize_waveform:
            waves = normalize_waves(waves, attention_mask)
        lengths = None if attention_mask is None else attention_mask.sum(-1)
        if isinstance(self.model, Data2Vec2AudioEncoder) and self.model.padding_exact:
            hidden, frame_mask = self.model(waves, attention_mask)  # batched == per utterance (nn/data2vec2.py)
            return hidden[self.layer], frame_mask
        if lengths is not None and bool((lengths < waves.shape[1]).any()):
            parts = [self._hidden(waves[b:b + 1, : int(n)], None)[0] for b, n in enumerate(lengths)]
            hidden = torch.nn.utils.rnn.pad_sequence(parts, batch_first=True)  # (B, T, H)
        else:
            hidden = self._hidden(waves, attention_mask)
        return hidden, self._frames(hidden, attention_mask)

    # ---- the frozen front end apart (SylBoost's frozen-feature cache) ------------------------------------
    @torch.no_grad()
    def frontend(self, wave: torch.Tensor) -> torch.Tensor:
        """CNN output ``(T, C)`` of one unpadded utterance ``(S,)`` (input normalisation included): what
        :meth:`forward_frontend` continues from. Only meaningful while the CNN is frozen."""
        wave = wave[None]
        if self.normalize_waveform:
            wave = normalize_waves(wave, None)
        return self.model.feature_extractor(wave)[0].transpose(0, 1)

    def forward_frontend(self, frames: list[torch.Tensor], lengths: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:  # B x (T_i, C), (B,) samples -> (B, T, H), (B, T)
        """:meth:`forward` from per-utterance :meth:`frontend` outputs of waves of ``lengths`` samples: the same
        features, without running the CNN. Batched where the layers after the CNN ignore padding (one positional
        convolution: HuBERT, wav2vec 2.0, WavLM; data2vec 2.0 masks its own); HF data2vec-audio's stacked
        positional convolutions would carry padding into real frames, so it runs one utterance at a time."""
        if len(frames) > 1 and not self._post_cnn_batch_exact():
            parts = [self.forward_frontend([f], lengths[b:b + 1])[0][0] for b, f in enumerate(frames)]
            hidden = torch.nn.utils.rnn.pad_sequence(parts, batch_first=True)
        else:
            cnn = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True).transpose(1, 2)  # (B, C, T)
            placeholder = cnn.new_zeros(len(frames), int(lengths.max()))  # never read: the CNN is bypassed
            mask = self._sample_mask(lengths, placeholder)
            with self._cnn_output(cnn):
                hidden = self._hidden(placeholder, mask)
        return hidden, self._frames(hidden, self._sample_mask(lengths, hidden))

    @staticmethod
    def _sample_mask(lengths: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """(B, S) long mask of real samples, or None when nothing is padded."""
        lengths = lengths.to(like.device)
        S = int(lengths.max())
        if bool((lengths == S).all()):
            return None
        return (torch.arange(S, device=like.device)[None] < lengths[:, None]).long()

    def _post_cnn_batch_exact(self) -> bool:
        return isinstance(self.model, Data2Vec2AudioEncoder) or self.model.config.model_type != "data2vec-audio"

    @contextmanager
    def _cnn_output(self, cnn: torch.Tensor):
        """Within the block the model's CNN returns ``cnn`` whatever its input (a parameter-free stand-in)."""
        real = self.model.feature_extractor
        self.model.feature_extractor = _Fixed(cnn)
        try:
            yield
        finally:
            self.model.feature_extractor = real

    def _frames(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T) bool mask of the real frames of ``hidden`` (B, T, ...) from the (B, S) sample mask."""
        B, T = hidden.shape[:2]
        if attention_mask is None:
            return torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        if isinstance(self.model, Data2Vec2AudioEncoder):
            n = self.model.frame_lengths(attention_mask.long().sum(-1))
            return torch.arange(T, device=hidden.device)[None] < n[:, None]
        return self.model._get_feature_vector_attention_mask(T, attention_mask).bool()

    def _hidden(self, waves: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.model, Data2Vec2AudioEncoder):
            return self.model(waves, attention_mask)[0][self.layer]
        out = self.model(waves, attention_mask=attention_mask, output_hidden_states=True)
        # = hidden_states[self.layer] (the model keeps self.layer layers). transformers 5 records only the layers that
        # ran, so a layer skipped by layerdrop (a training SylBoost student) shortens the tuple; when none ran, the
        # input to layer 1 is last_hidden_state (post-LN encoders; a pre-LN one adds its final LayerNorm there)
        return out.hidden_states[-1] if out.hidden_states else out.last_hidden_state


class _Fixed(nn.Module):
    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, _waves):
        return self.out


def _json_safe(obj):
    """JSON-safe copy (HF configs may hold dtypes or tuples); keeps checkpoints loadable with weights_only."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
