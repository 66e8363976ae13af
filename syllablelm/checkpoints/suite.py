"""The three checkpoints this suite's Lightning stages write — teacher, SylBoost, SpeechLM: their key layout, read
without Lightning. The one module that names their keys (the lean tokenizer checkpoint is :mod:`.tokenizer_file`'s).

Lightning writes them (``ModelCheckpoint``, ``trainer.save_checkpoint``) from the modules in ``lightning_modules/``:
the ``state_dict`` names are those modules' attribute paths, the ``hyper_parameters`` what each module passes to
``save_hyperparameters``. Nothing in the suite writes them by hand; ``tests/test_formats.py`` writes each one
through its Lightning module and reads it back here, so a renamed attribute or hyper-parameter fails there.
All three load with ``torch.load(weights_only=True)`` (:func:`read_suite_checkpoint`): containers, tensors and
strings only.

Keys Lightning itself puts in every one (its names, not this suite's): ``"state_dict"`` (:data:`STATE_DICT`),
``"hyper_parameters"`` (:data:`HYPER_PARAMETERS`), ``"pytorch-lightning_version"``, ``"epoch"``,
``"global_step"``, ``"loops"``, ``"hparams_name"`` and, unless saved ``weights_only``, ``"optimizer_states"``,
``"lr_schedulers"``, ``"callbacks"``. Only the first two are read here.

``teacher-ckpt`` — ``lightning_modules.teacher.TeacherModule`` (HuBERT-style teacher + LossPred):

* ``hyper_parameters["network"]``: :meth:`TeacherConfig.to_dict` — the whole architecture, head included;
* ``state_dict["teacher.*"]``: the :class:`HubertTeacher` (encoder + masked-prediction head; label offset as in
  its config).

``sylboost-ckpt`` — ``lightning_modules.sylboost.SylBoostModule``:

* ``hyper_parameters["encoder"]``: :meth:`SpeechEncoder.spec` of the student (backbone kind and config, cut at the
  feature layer, waveform normalisation);
* ``hyper_parameters["segmenter"]``: :meth:`SegmenterConfig.to_dict` (how boundaries are cut);
* the module's other arguments (``feature_layer``, ``normalize_waveform``, ``freeze_cnn``, the schedule, ...):
  read only by ``SylBoostModule.load_from_checkpoint``;
* ``state_dict["student.*"]``: the trained :class:`SpeechEncoder` (what tokenizers and later stages use);
* ``state_dict["teacher.*"]``: the frozen encoder it distils from (the start checkpoint, cut the same way);
* ``state_dict["delta"]``: the δ in use, a float64 scalar (NaN while none is set: rate or frames mode, or not
  calibrated yet).

``speechlm-ckpt`` — ``lightning_modules.speechlm.SpeechLMModule``:

* ``hyper_parameters["network"]``: :meth:`GPTConfig.to_dict`;
* ``state_dict["net.*"]``: the :class:`GPT`;
* ``"unit_variant"`` (top level, written by the module's ``on_save_checkpoint``): the unit variant the LM was
  trained on (``authors_lm`` / ``dedup``), absent or None in checkpoints older than that record.

Teacher and SpeechLM share the ``network`` hyper-parameter; :func:`lightning_format` tells them apart by their
weights (``teacher.*`` vs ``net.*``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from syllablelm.checkpoints.fairseq import CheckpointError
from syllablelm.models.encoder import SpeechEncoder
from syllablelm.models.gpt import GPT, GPTConfig
from syllablelm.models.hubert import HubertTeacher, TeacherConfig

# Lightning's own keys
STATE_DICT = "state_dict"
HYPER_PARAMETERS = "hyper_parameters"
# teacher-ckpt
TEACHER_NETWORK = "network"  # hyper-parameter: TeacherConfig.to_dict()
TEACHER_PREFIX = "teacher."  # TeacherModule.teacher
# sylboost-ckpt
SYLBOOST_ENCODER = "encoder"  # hyper-parameter: SpeechEncoder.spec()
SYLBOOST_SEGMENTER = "segmenter"  # hyper-parameter: SegmenterConfig.to_dict()
STUDENT_PREFIX = "student."  # SylBoostModule.student
FROZEN_PREFIX = "teacher."  # SylBoostModule.teacher (the frozen start encoder)
DELTA = "delta"  # SylBoostModule's buffer: the δ in use (NaN: none)
# speechlm-ckpt
LM_NETWORK = "network"  # hyper-parameter: GPTConfig.to_dict()
LM_PREFIX = "net."  # SpeechLMModule.net
UNIT_VARIANT = "unit_variant"  # top-level entry: the training units' variant

LIGHTNING_FORMATS = ("teacher-ckpt", "sylboost-ckpt", "speechlm-ckpt")


def read_suite_checkpoint(path: str | Path) -> dict:
    """A ``.ckpt`` of this suite as a plain dict (``weights_only``: tensors, containers and strings only)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
        raise CheckpointError(f"{path}: not a readable checkpoint of this suite ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this suite (a {type(ckpt).__name__})")
    return ckpt


def hyper_parameters(ckpt: dict) -> dict:
    """The checkpoint's hyper-parameters (``{}`` when it records none, e.g. a tokenizer checkpoint)."""
    return ckpt.get(HYPER_PARAMETERS) or {}


def _weights(ckpt: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in (ckpt.get(STATE_DICT) or {}).items() if k.startswith(prefix)}


def lightning_format(ckpt: dict, path) -> str:
    """``"teacher-ckpt"``, ``"sylboost-ckpt"`` or ``"speechlm-ckpt"`` for a dict :func:`read_suite_checkpoint`
    gave (call it after ruling out a tokenizer checkpoint); ``CheckpointError`` naming ``path`` otherwise."""
    hp = hyper_parameters(ckpt)
    if STATE_DICT in ckpt:
        if SYLBOOST_ENCODER in hp:
            return "sylboost-ckpt"
        if TEACHER_NETWORK in hp:  # = LM_NETWORK: the weights tell the two apart
            lm = any(k.startswith(LM_PREFIX) for k in ckpt[STATE_DICT])
            return "speechlm-ckpt" if lm and not _weights(ckpt, TEACHER_PREFIX) else "teacher-ckpt"
    raise CheckpointError(f"{path}: neither a teacher, a SylBoost nor a tokenizer checkpoint of this suite "
                          f"(keys {sorted(ckpt)[:10]}, hyper-parameters {sorted(hp)[:10]})")


# ---- teacher-ckpt -------------------------------------------------------------------------------------------
def teacher_network(ckpt: dict) -> dict:
    """The teacher's :class:`TeacherConfig` fields, as recorded."""
    return hyper_parameters(ckpt)[TEACHER_NETWORK]


def read_teacher(ckpt: dict, path) -> HubertTeacher:
    """The ``HubertTeacher`` of a teacher checkpoint dict (its ``teacher.*`` weights, strictly)."""
    teacher = HubertTeacher(TeacherConfig(**teacher_network(ckpt)))
    state = _weights(ckpt, TEACHER_PREFIX)
    if not state:
        raise CheckpointError(f"{path}: no '{TEACHER_PREFIX}*' weights in the checkpoint")
    teacher.load_state_dict(state)
    return teacher


# ---- sylboost-ckpt ------------------------------------------------------------------------------------------
def sylboost_encoder_spec(ckpt: dict) -> dict:
    """The student's :meth:`SpeechEncoder.spec`, as recorded."""
    return hyper_parameters(ckpt)[SYLBOOST_ENCODER]


def sylboost_student_state(ckpt: dict, path) -> dict[str, torch.Tensor]:
    """The student's state dict as stored (dtypes kept)."""
    state = _weights(ckpt, STUDENT_PREFIX)
    if not state:
        raise CheckpointError(f"{path}: no '{STUDENT_PREFIX}*' weights in the checkpoint")
    return state


def read_sylboost_student(ckpt: dict, path) -> SpeechEncoder:
    """The student :class:`SpeechEncoder` of a SylBoost checkpoint dict (rebuilt from its spec, loaded strictly)."""
    encoder = SpeechEncoder.from_spec(sylboost_encoder_spec(ckpt))
    encoder.load_state_dict(sylboost_student_state(ckpt, path))
    return encoder


def read_sylboost_frozen(ckpt: dict, path) -> SpeechEncoder:
    """The frozen encoder the student distils from (the start checkpoint, cut at the feature layer)."""
    encoder = SpeechEncoder.from_spec(sylboost_encoder_spec(ckpt))
    state = _weights(ckpt, FROZEN_PREFIX)
    if not state:
        raise CheckpointError(f"{path}: no '{FROZEN_PREFIX}*' weights in the checkpoint")
    encoder.load_state_dict(state)
    return encoder


def sylboost_segmenter(ckpt: dict, path) -> tuple[dict, float | None]:
    """``(segmenter config dict, δ)``: the recorded :class:`SegmenterConfig` fields and the δ buffer as a float
    (NaN when none was set; None when the checkpoint has no δ buffer)."""
    hp = hyper_parameters(ckpt)
    if SYLBOOST_SEGMENTER not in hp:
        raise CheckpointError(f"{path}: a SylBoost checkpoint without its {SYLBOOST_SEGMENTER!r} hyper-parameter")
    delta = ckpt[STATE_DICT].get(DELTA)
    return hp[SYLBOOST_SEGMENTER], None if delta is None else float(delta)


# ---- speechlm-ckpt ------------------------------------------------------------------------------------------
def read_speechlm(ckpt: dict, path) -> tuple[GPT, str | None]:
    """The :class:`GPT` of a SpeechLM checkpoint dict (eval mode, CPU) and the unit variant it records (None in
    checkpoints older than that record)."""
    hp = hyper_parameters(ckpt)
    if LM_NETWORK not in hp or STATE_DICT not in ckpt:
        raise CheckpointError(f"{path}: not a SpeechLM checkpoint (no {LM_NETWORK} hyper-parameters / "
                              f"{STATE_DICT})")
    lm = GPT(GPTConfig(**hp[LM_NETWORK]))
    lm.load_state_dict(_weights(ckpt, LM_PREFIX))
    return lm.eval(), ckpt.get(UNIT_VARIANT)


def load_speechlm(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, str | None]:
    """:func:`read_speechlm` of the file ``path``, the decoder moved to ``device`` (no Lightning needed)."""
    lm, variant = read_speechlm(read_suite_checkpoint(path), path)
    return lm.to(device), variant
