"""Import the authors' released SylBoost models (8.33 / 6.25 / 5.0 Hz) as this project's tokenizer checkpoints.

The one module that names the release's keys (it reads them; the suite never writes this format). The import
writes a tokenizer checkpoint through :func:`syllablelm.units.tokenizer.save_tokenizer` (format
``syllablelm.tokenizer/1``, :mod:`syllablelm.checkpoints.tokenizer_file`), its ``meta`` recording which released
files it came from under ``"released_sylboost"``. To train on from there, start a SylBoost run from it
(``SylBoostModule(init_from=<the tokenizer checkpoint>, ...)``: ``load_encoder`` reads a tokenizer's encoder) with
the tokenizer's segmenter.

The release (AlanBaade/SyllableLM, ``extract_units.py``) is, per rate, three files:

* ``SylBoost_{833,625,500}Hz.pth``: a torch pickle ``{"model_seg": state_dict, ...}``; every key of the state dict
  is ``"model." + `` a fairseq ``Data2VecMultiModel`` (data2vec 2.0, AUDIO) key. The file holds no config: the
  authors hard-code it (``d2v2_config``), reproduced here as :data:`RELEASED_ENCODER_CONFIG`.
* ``*_kmeans.npy``: (K, 768) k-means centroids; ``*_agglom.npy``: (K,) int map k-means id -> unit id.

How the authors extract units, and how the imported tokenizer reproduces each step:

* features: ``model(wave, features_only=True, out_layer=-2)["x"]`` on the raw (unnormalised) 16 kHz wave. The
  4 prenet blocks run inside the modality encoder, then the main-block loop breaks after block index
  ``len(blocks) + out_layer = 8 - 2 = 6`` (0-based), i.e. after 7 of the 8 main blocks: 4 + 7 = 11 blocks, no
  final LayerNorm (post-LN model). In this project's numbering (0 = input to block 1) that is
  ``hidden_states[11]``: the encoder is cut at ``layer=11`` with ``normalize_waveform=False``.
* precision: they cast the model and the wave to fp16 (``.half()``) on a GPU, and the features to float32 for the
  min-cut (``.float()``). The import records a default *run* precision in the tokenizer checkpoint
  (``--precision``, default ``"auto"``: fp16 on CUDA, fp32 on the CPU, resolved where ``tokenize`` / ``units``
  run; :mod:`syllablelm.units.tokenizer`); the weights stay stored in the release's dtype (fp16) whatever
  precision is recorded, so nothing is rounded at import time.
* boundaries: the exact-count SSE/D min-cut with lengths 3..min(T, 35) frames, counts searched in
  ``[m//3, m]`` with ``m = int(0.2 T)``, binary search on the 0.75-quantile of the per-frame segment costs against
  the rate's δ (:data:`RELEASED_SYLBOOST`) = ``sse_segment(delta=δ, quantile=0.75, min_len=3, max_len=35,
  max_rate=0.2)`` (``tests/test_released.py`` checks this against a plain re-implementation of their loop).
* units: mean over ``[b + 1, b_next - 1)`` (``pooling="drop_edge"``), standardised with the vector's own mean and
  *unbiased* std (torch's ``.std`` default, which ``syllablelm.units.quantizer.standardize`` also uses), nearest
  centroid,
  ``agglom[id]``, then consecutive duplicates merged (first start, last end).

Loading: the ``.pth`` is read with ``weights_only=True`` when it holds only tensors and plain containers. If it
pickles anything else (an argparse Namespace, an optimizer config object, ...) it is read again as a full pickle
with fairseq classes stubbed out, as ``syllablelm.checkpoints`` does: unpickling runs whatever the file asks for,
so import trusted files only (the official release). A warning says when that happens.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from pathlib import Path

import torch

from syllablelm.boundaries.segmenter import Segmenter
from syllablelm.checkpoints import CheckpointError, load_fairseq_state
from syllablelm.checkpoints.fairseq_data2vec2 import encoder_from_fairseq_state, fairseq_key
from syllablelm.checkpoints.tokenizer_file import precision_meta
from syllablelm.models.data2vec2 import Data2Vec2Config
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.units.quantizer import UnitQuantizer
from syllablelm.units.tokenizer import tokenizer_checkpoint, write_tokenizer_checkpoint

log = logging.getLogger(__name__)

# extract_units.py FULL_MODELS_DICT: δ and quantile of the official rate search, per released model
RELEASED_SYLBOOST: dict[str, dict[str, float]] = {
    "8.33Hz": {"delta": 0.0033, "quantile": 0.75},
    "6.25Hz": {"delta": 0.0028, "quantile": 0.75},
    "5.0Hz": {"delta": 0.0019, "quantile": 0.75},
}
# extract_units.py efficient_extraction defaults: s = 35 (LibriLight), min_hop = 3, THRESHOLD = 1 / 0.10 / 50
RELEASED_SEGMENTER = {"min_len": 3, "max_len": 35, "max_rate": 0.2}
RELEASED_FEATURE_LAYER = 11  # out_layer=-2: 4 prenet + 7 of 8 main blocks (module docstring)
MODEL_KEY, PREFIX = "model_seg", "model."  # the .pth: {MODEL_KEY: {PREFIX + fairseq data2vec 2.0 key: tensor}}
RELEASED_KEY = "released_sylboost"  # in the tokenizer checkpoint's meta: which released files it came from

# extract_units.py d2v2_config (model + modalities.audio fields this encoder uses); the file stores none.
RELEASED_ENCODER_CONFIG = Data2Vec2Config(
    embed_dim=768, num_heads=12, mlp_ratio=4.0, depth=8, prenet_depth=4, layer_norm_first=False, norm_eps=1e-5,
    norm_affine=True, feature_encoder_spec="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    extractor_mode="layer_norm", conv_pos_width=95, conv_pos_depth=5, conv_pos_groups=16, conv_pos_pre_ln=False,
    use_alibi_encoder=True, alibi_scale=1.0, learned_alibi=False, alibi_max_pos=None, learned_alibi_scale=True,
    learned_alibi_scale_per_head=True, learned_alibi_scale_per_layer=False,  # num_alibi_heads 12 = num_heads
    encoder_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, post_mlp_drop=0.1, dropout_input=0.0,
    prenet_dropout=0.1, layerdrop=0.05, prenet_layerdrop=0.05,
    normalize_waveform=False,  # their inference feeds the raw waveform
)


def released_preset(rate: str) -> dict[str, float]:
    """δ and quantile of a released rate; accepts ``"6.25Hz"``, ``"6.25"``, ``"625"`` (the file-name form)."""
    key = str(rate).strip()
    aliases = {k.lower(): k for k in RELEASED_SYLBOOST}
    aliases.update({k[:-2]: k for k in RELEASED_SYLBOOST})
    aliases.update({"833": "8.33Hz", "625": "6.25Hz", "500": "5.0Hz", "5": "5.0Hz", "5hz": "5.0Hz"})
    name = aliases.get(key.lower(), aliases.get(key.lower().removesuffix("hz")))
    if name is None:
        raise ValueError(f"unknown released SylBoost rate {rate!r}; one of {list(RELEASED_SYLBOOST)}")
    return {"rate": name, **RELEASED_SYLBOOST[name]}


def released_encoder_config(**overrides) -> Data2Vec2Config:
    return dataclasses.replace(RELEASED_ENCODER_CONFIG, **overrides)


def load_released_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The fairseq ``Data2VecMultiModel`` state dict inside a released ``.pth`` (``model_seg``, ``model.`` stripped)."""
    path = Path(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        log.warning("%s holds more than tensors: loading it as a full pickle (trusted files only)", path)
        ckpt = load_fairseq_state(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(MODEL_KEY), dict):
        keys = list(ckpt)[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a released SylBoost model (no {MODEL_KEY!r} state dict; found {keys})")
    state = ckpt[MODEL_KEY]
    bad = [k for k in state if not str(k).startswith(PREFIX)]
    if bad:
        raise CheckpointError(f"{path}: {MODEL_KEY!r} keys without the {PREFIX!r} prefix ({len(bad)}): {bad[:20]}")
    return {k[len(PREFIX):]: v for k, v in state.items()}


def import_released_sylboost(model_pth: str | os.PathLike, kmeans_npy: str | os.PathLike,
                             agglom_npy: str | os.PathLike, rate: str, out_ckpt: str | os.PathLike | None = None,
                             *, precision: str = "auto") -> dict:
    """Build a tokenizer checkpoint from a released triple (module docstring); write it atomically to
    ``out_ckpt`` when given and return it (the dict ``Tokenizer.from_pretrained`` reads).

    The encoder holds ``model_seg``'s weights cut after block 11 (block 12 and the pretraining decoder are dropped;
    any other unknown or any missing key is an error naming the file); its tensors keep the file's dtype. The
    segmenter is the rate's δ and quantile with lengths 3..35 and the 0.2 * T cap; the quantizer is the two
    ``.npy`` files (drop-edge pooling, standardised vectors). ``precision`` (``"auto"``, ``"fp32"``, ``"fp16"``,
    ``"bf16"``) is recorded as the precision the tokenizer runs the encoder in by default (module docstring)."""
    recorded = precision_meta(precision)  # an unknown name fails before any file is read
    preset = released_preset(rate)
    config = released_encoder_config()
    state = load_released_state(model_pth)
    model = encoder_from_fairseq_state(state, config, model_pth)
    encoder = SpeechEncoder(model, layer=RELEASED_FEATURE_LAYER, normalize_waveform=False)
    # stored in the file's dtype (fp16), not the module's; encoder.model's names follow the wrapper's first dot
    stored = {k: v.to(state[fairseq_key(k.partition(".")[2], config)].dtype) if v.is_floating_point() else v
              for k, v in encoder.state_dict().items()}
    try:
        quantizer = UnitQuantizer.from_arrays(kmeans_npy, agglom_npy, standardize=True, pooling="drop_edge",
                                              feature_layer=RELEASED_FEATURE_LAYER)
    except ValueError as e:
        raise CheckpointError(f"{kmeans_npy} / {agglom_npy}: {e}") from e
    if quantizer.dim != config.embed_dim:
        raise CheckpointError(f"{kmeans_npy}: centroids of dimension {quantizer.dim}, the encoder gives "
                              f"{config.embed_dim}")
    segmenter = Segmenter({"delta": preset["delta"], "quantile": preset["quantile"], **RELEASED_SEGMENTER,
                           "vad_trim": False})
    meta = {"command": "import-sylboost", **recorded,
            RELEASED_KEY: {"rate": preset["rate"], "model": Path(model_pth).name, "kmeans": Path(kmeans_npy).name,
                           "agglom": Path(agglom_npy).name}}
    ckpt = tokenizer_checkpoint(encoder, segmenter, quantizer, meta, encoder_state=stored)
    if out_ckpt is not None:
        write_tokenizer_checkpoint(out_ckpt, ckpt)
        log.info("imported %s (%s, %d units) -> %s", Path(model_pth).name, preset["rate"], quantizer.k_merged,
                 out_ckpt)
    return ckpt
