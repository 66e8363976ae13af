"""Speech out (issue 29): the models that turn units back into speech, and the two ways through them.

    speech -> syllable units (tokenizer) -> [SpeechLM continuation] -> syllable units
           -> fine units (the interleaved vocoder LM, syllables given) -> frames (duration predictor)
           -> vocoder -> speech

:class:`SpeechModels` holds the pieces; :func:`resynthesize` runs one utterance through them (``source="syllables"``:
the whole loop; ``"fine"``: the true fine units with their true durations, the vocoder's time-aligned ceiling);
:func:`continue_speech` appends a spoken continuation to a prompt (the interleaved LM continuing the prompt's own
stream of syllables and true fine units, :func:`prompt_prefix`). Every function returns the audio and a record of
every unit stream (JSON-ready), which the commands write as JSON lines.

Fine units are the CPU path's by default: the shipped teacher's layer-2 k-means (100 units, 50 Hz), what the shipped
vocoder and the interleaved LM were trained on (docs/algorithms.md, "Speech out"); ``fine_features="logmel"`` takes
the shipped log-mel k-means (1000 units, 50 Hz; spectral, not SSL units) and the vocoder trained on them.

Random draws (sampling the LMs) come from one ``torch.Generator`` seeded per utterance from ``seed`` and the
utterance's name, so a file's output does not depend on which other files are in the run.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "pretrained"
FINE_CHECKPOINT = SHIPPED / "teacher.ckpt"
FINE_KMEANS = SHIPPED / "kmeans_layer2.npy"
FINE_LAYER = 2
VOCODER = SHIPPED / "vocoder.ckpt"
# the shipped fine units and the vocoder trained on them, per feature kind (``--fine-features``)
SHIPPED_FINE = {"teacher": (FINE_KMEANS, VOCODER),
                "logmel": (SHIPPED / "kmeans_logmel.npy", SHIPPED / "vocoder_logmel.ckpt")}


def utterance_seed(seed: int, name: str) -> int:
    """A per-utterance seed: ``seed`` mixed with the utterance's name (stable across runs and file sets)."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclasses.dataclass
class Sampling:
    """How the LMs draw: ``temperature`` 0 is greedy; ``top_k`` restricts to the most likely ids. Default: plain
    sampling (1.0, all ids), chosen on the demo's dev split (docs/results.md, "Speech out"): lower temperatures make
    the tiny interleaved LM loop on a few units (greedy: twice the reference's phones, mostly insertions)."""
    temperature: float = 1.0
    top_k: int | None = None


@dataclasses.dataclass
class SpeechModels:
    tokenizer: object | None  # syllablelm.units.tokenizer.Tokenizer
    fine: object  # syllablelm.units.fine.FineUnitEncoder
    vocoder: object  # syllablelm.models.vocoder.UnitVocoder
    interleaved: object | None = None  # lightning_modules.interleaved_lm.InterleavedLMModule
    speechlm: object | None = None  # syllablelm.models.gpt.GPT
    deduplicate: bool = True  # the tokenizer's unit variant the LMs were trained on

    @classmethod
    def load(cls, *, tokenizer: str | None = None, interleaved: str | None = None, vocoder: str | Path | None = None,
             speechlm: str | None = None, fine_features: str = "teacher",
             fine_checkpoint: str | Path = FINE_CHECKPOINT, fine_kmeans: str | Path | None = None,
             fine_layer: int = FINE_LAYER, fine_pool: int = 1,
             device: str = "cpu") -> "SpeechModels":
        """The models; ``fine_kmeans`` and ``vocoder`` default to the shipped ones of ``fine_features``
        (:data:`SHIPPED_FINE`: the teacher's layer-2 units, or the log-mel units); ``fine_checkpoint`` and
        ``fine_layer`` are read for ``teacher`` features only."""
        from syllablelm.checkpoints.vocoders import load_unit_vocoder
        from syllablelm.units.fine import FineUnitEncoder

        shipped_kmeans, shipped_vocoder = SHIPPED_FINE.get(fine_features, (None, None))
        fine_kmeans, vocoder = fine_kmeans or shipped_kmeans, vocoder or shipped_vocoder
        if fine_kmeans is None or vocoder is None:
            raise ValueError(f"fine features {fine_features!r} have no shipped k-means or vocoder: give both "
                             f"(shipped: {', '.join(SHIPPED_FINE)})")
        teacher = fine_features == "teacher"
        fine = FineUnitEncoder.build(fine_kmeans, features=fine_features,
                                     checkpoint=fine_checkpoint if teacher else None,
                                     layer=fine_layer if teacher else None, pool=fine_pool, device=device)
        source = f"{fine_checkpoint} layer {fine_layer}" if teacher else f"{fine_features} frames"
        voc = load_unit_vocoder(vocoder)
        if voc.num_units != fine.num_units:
            raise ValueError(f"{vocoder}: the vocoder reads {voc.num_units} fine units, the fine-unit k-means "
                             f"{fine_kmeans} has {fine.num_units}")
        if voc.hop != fine.geometry.hop:
            raise ValueError(f"{vocoder}: the vocoder's fine frames are {voc.hop} samples, the fine units' "
                             f"{fine.geometry.hop} ({source}, pool {fine_pool})")
        tok = ilm = lm = None
        variant = None
        if tokenizer:
            from syllablelm.units.tokenizer import Tokenizer

            tok = Tokenizer.from_pretrained(tokenizer, device=device)
        if speechlm:
            from syllablelm.checkpoints.suite import load_speechlm

            lm, variant = load_speechlm(speechlm, device)
        if interleaved:
            ilm = load_interleaved(interleaved, device)
            if ilm.vocab.fine != fine.num_units:
                raise ValueError(f"{interleaved}: the interleaved LM predicts {ilm.vocab.fine} fine units, the "
                                 f"fine-unit k-means {fine_kmeans} has {fine.num_units}")
            if tok is not None and ilm.vocab.syllable != tok.vocab_size:
                raise ValueError(f"{interleaved}: the interleaved LM reads {ilm.vocab.syllable} syllable units, "
                                 f"the tokenizer {tokenizer} makes {tok.vocab_size}")
        return cls(tok, fine, voc, ilm, lm, variant != "authors_lm")


def load_interleaved(path: str | Path, device: str = "cpu"):
    from lightning_modules.interleaved_lm import InterleavedLMModule

    return InterleavedLMModule.load_from_checkpoint(str(path), map_location=device).eval()


def fine_from_syllables(models: SpeechModels, syllables: np.ndarray, generator: torch.Generator,
                        sampling: Sampling, prefix_tokens: np.ndarray | None = None) -> np.ndarray:
    """The interleaved LM's deduplicated fine units for a syllable unit sequence (syllables given); with
    ``prefix_tokens`` (:func:`prompt_prefix`) those of the syllables that continue that stream."""
    if models.interleaved is None:
        raise ValueError("an interleaved vocoder LM is needed to go from syllable units to fine units")
    kw = {} if prefix_tokens is None else {"prefix_tokens": prefix_tokens}
    return np.asarray(models.interleaved.generate_fine(
        np.asarray(syllables, dtype=np.int64), temperature=sampling.temperature, top_k=sampling.top_k,
        generator=generator, **kw), dtype=np.int64)


def prompt_prefix(models: SpeechModels, fine_units, fine_durations, syllable_units, syllable_segments) -> np.ndarray:
    """A prompt's interleaved stream for the interleaved LM to continue: its true fine units and durations (from
    ``models.fine``) with its syllable units and segments (seconds, the tokenizer's), interleaved with the LM's own
    settings (:meth:`~lightning_modules.interleaved_lm.InterleavedLMModule.prompt_stream`). The fine units' frame
    must be the one the LM trained on (its ``frames_per_fine`` 50 Hz frames), else the prompt's timing would be
    misread: refused with both named."""
    from syllablelm.audio.frames import HOP

    ilm = models.interleaved
    if ilm is None:
        raise ValueError("an interleaved vocoder LM is needed to go from syllable units to fine units")
    hop = int(models.fine.geometry.hop)
    want = int(ilm.hparams.frames_per_fine)
    if hop != want * HOP:
        raise ValueError(f"the interleaved LM trained on fine frames of {want} x 50 Hz frames ({want * HOP} "
                         f"samples), the fine units here are {hop} samples a frame: use the fine encoder (and pool) "
                         "it trained with, or --no-prompt-context")
    return np.asarray(ilm.prompt_stream(fine_units, fine_durations, syllable_units, syllable_segments), np.int64)


@torch.inference_mode()
def vocode(models: SpeechModels, units, durations=None) -> np.ndarray:
    """Fine units (and their durations in fine frames, or None: predicted) -> 16 kHz float32 audio."""
    u = torch.as_tensor(np.asarray(units, dtype=np.int64))
    d = None if durations is None else torch.as_tensor(np.asarray(durations, dtype=np.int64))
    if u.numel() == 0:
        return np.zeros(0, np.float32)
    return models.vocoder.synthesize(u, d).detach().float().cpu().numpy().reshape(-1)


def syllable_units(models: SpeechModels, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if models.tokenizer is None:
        raise ValueError("a tokenizer is needed to turn speech into syllable units")
    segments, ids = models.tokenizer(wave, 16000, deduplicate=models.deduplicate)
    return np.asarray(segments, dtype=np.float64), np.asarray(ids, dtype=np.int64)


def resynthesize(models: SpeechModels, wave: torch.Tensor, *, source: str = "syllables", seed: int = 0,
                 name: str = "", sampling: Sampling | None = None, syllables: np.ndarray | None = None
                 ) -> tuple[np.ndarray, dict]:
    """One utterance back to speech (module docstring). ``syllables``: use these syllable units instead of the
    tokenizer's (the evaluation's "another utterance's units" floor and the uniform-segment comparison)."""
    sampling = sampling or Sampling()
    fine_u, fine_d = models.fine(wave)
    record: dict = {"fine_units": fine_u.tolist(), "fine_durations": fine_d.tolist(),
                    "fine_hz": models.fine.geometry.hz}
    if source == "fine":
        return vocode(models, fine_u, fine_d), record
    if source != "syllables":
        raise ValueError(f"source must be 'syllables' or 'fine', got {source!r}")
    if syllables is None:
        segments, syllables = syllable_units(models, wave)
        record["syllable_segments"] = np.round(segments, 4).tolist()
    record["syllable_units"] = np.asarray(syllables).tolist()
    gen = torch.Generator().manual_seed(utterance_seed(seed, name))
    fine = fine_from_syllables(models, syllables, gen, sampling)
    durations = models.vocoder.predict_durations(torch.as_tensor(fine)).cpu().numpy() if fine.size else fine
    record.update(generated_fine_units=fine.tolist(), predicted_durations=np.asarray(durations).tolist())
    return vocode(models, fine, durations), record


def units_per_second(models: SpeechModels) -> float:
    """The syllable unit rate the continuation length is planned at: the SpeechLM's training stream's, recorded
    in the interleaved LM (units / s of its training utterances) when it has it, else 5 Hz (the paper's rate)."""
    rate = getattr(models.interleaved, "syllables_per_second", None) if models.interleaved is not None else None
    return float(rate) if rate else 5.0


def continue_speech(models: SpeechModels, wave: torch.Tensor, seconds: float, *, seed: int = 0, name: str = "",
                    sampling: Sampling | None = None, prompt_context: bool = True) -> tuple[np.ndarray, dict]:
    """The prompt's audio followed by a spoken continuation of about ``seconds`` s: prompt -> syllable units ->
    the SpeechLM's continuation (``seconds`` x the unit rate new units, fewer when it ends the utterance) -> the
    interleaved LM's fine units for the continuation's syllables -> the vocoder, appended to the prompt's audio
    after a 0.1 s pause (the prompt keeps its own audio; the continuation speaks in the voice its fine units carry:
    the shipped CPU vocoder has no speaker input, TWIST's speaks in LJ's voice).

    ``prompt_context`` (default): the interleaved LM continues the prompt's own stream (its syllables with its true
    fine units, :func:`prompt_prefix`), so the continuation's fine units condition on the prompt's voice and content,
    as TWIST-style continuation conditions on its prompt; the record then holds the prompt's fine units and
    durations and ``conditioned_on_prompt`` true. False: the fine units of the continuation's syllables from an
    empty context (the earlier behaviour; ``conditioned_on_prompt`` false). The SpeechLM's draws come first from the
    one generator, so the continuation's syllable units are the same either way."""
    if models.speechlm is None:
        raise ValueError("a SpeechLM checkpoint is needed to continue speech")
    sampling = sampling or Sampling()
    segments, prompt = syllable_units(models, wave)
    gen = torch.Generator().manual_seed(utterance_seed(seed, name))
    lm = models.speechlm
    n_new = max(1, int(round(float(seconds) * units_per_second(models))))
    idx = torch.tensor([[lm.bos, *prompt.tolist()]], dtype=torch.long)
    out = lm.generate(idx, n_new, temperature=sampling.temperature, top_k=sampling.top_k, generator=gen,
                      stop_at_eos=True)[0, idx.shape[1]:].tolist()
    new = np.asarray(out[:out.index(lm.eos)] if lm.eos in out else out, dtype=np.int64)
    record = {"prompt_segments": np.round(segments, 4).tolist(), "prompt_units": prompt.tolist(),
              "continuation_units": new.tolist(), "conditioned_on_prompt": bool(prompt_context and prompt.size)}
    prefix = None
    if prompt_context and not prompt.size:  # no group to start a stream with (training left such utterances out)
        record["prompt_context_note"] = "the prompt has no syllable units: the fine units start from an empty context"
    elif prompt_context:
        fine_u, fine_d = models.fine(wave)
        record.update(prompt_fine_units=np.asarray(fine_u).tolist(), prompt_fine_durations=np.asarray(fine_d).tolist())
        if new.size:
            prefix = prompt_prefix(models, fine_u, fine_d, prompt, segments)
    if new.size == 0:
        record["note"] = "the SpeechLM ended the utterance at once: nothing to add"
        return wave.numpy().astype(np.float32), record
    fine = fine_from_syllables(models, new, gen, sampling, prefix)
    durations = models.vocoder.predict_durations(torch.as_tensor(fine)).cpu().numpy() if fine.size else fine
    record.update(generated_fine_units=fine.tolist(), predicted_durations=np.asarray(durations).tolist())
    speech = vocode(models, fine, durations)
    gap = np.zeros(int(0.1 * 16000), np.float32)  # a short pause between the prompt and its continuation
    return np.concatenate([wave.numpy().astype(np.float32), gap, speech]), record
