"""The inputs of the extractor parity test (tests/test_extractor_parity.py), re-created by rule.

The test compares ``import-sylboost`` + ``tokenize`` with the output the authors' ``extract_units.py`` gave on the
same inputs (stored in ``tests/data/extractor_parity/``; its README says how it was produced). Every input is made
here from the numbers in ``rule.json``, so the test rebuilds them bit for bit and checks their digests:

* **weights**: a data2vec 2.0 model in the released SylBoost format (``{"model_seg": {"model." + key: tensor}}``,
  the 192 keys and shapes their extractor loads strictly, listed in ``rule.json``), full size (their model class
  has a fixed width). One PCG64 stream (numpy ``default_rng(seed)``) draws float32 standard normals ``z`` for each
  key in sorted key order; the key's values are then: matrices and kernels ``gain * z / sqrt(fan_in)``; 1-D
  ``*.weight`` (LayerNorm / GroupNorm scales) ``mean + std * z``; 1-D ``*.bias`` ``bias_std * z``;
  ``alibi_scale`` ``mean + std * z``; the feature layer's output norm (keys under ``feature_norm.prefix``) is the
  norm rule times ``feature_norm.scale``, which sets the features' scale and with it where the rates' δ fall in the
  min-cut's count search. Stored as float16, as the released files are. The digest (:func:`state_digest`) hashes
  the tensors, not the ``torch.save`` file, so it does not depend on the serialiser's version.
* **audio**: short "syllable" waves (:func:`synth_wave`): harmonic vowels at a steady pitch whose two formant
  peaks glide, some with a noise onset, separated by short silences; float64 arithmetic, then 16-bit PCM. The
  digest hashes the int16 samples.
* **k-means centroids and the agglomerative map**: fitted once by this suite's own code (:func:`fit_quantizer`:
  ``UnitQuantizer.fit``, scikit-learn's k-means then Ward, on the standardised frame features of the rule's model
  and audio) and shipped as ``kmeans.npy`` / ``agglom.npy`` (98 KB): a refit's float32 bytes depend on the CPU's
  summation order and on scikit-learn's version, so the test checks the shipped files' sha256 instead of
  refitting.

``python -m tests.parity_rule inputs DIR`` writes the checkpoint and the WAVs (what the authors' extractor was run
on); ``python -m tests.parity_rule fit DIR`` refits the quantizer files from them (regeneration only).

Imports only numpy/torch/soundfile at module level, so the authors' ``syllablelm`` package (a different one of the
same name) can be imported beside it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "extractor_parity"
RULE = DATA / "rule.json"
OUTPUT = DATA / "authors_output.json"
CHECKPOINT_NAME = "SylBoost_parity.pth"
KMEANS_NAME, AGGLOM_NAME = "kmeans.npy", "agglom.npy"
RATES = ("6.25Hz", "5.0Hz")


def load_rule(path: str | Path = RULE) -> dict:
    return json.loads(Path(path).read_text())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    return sha256(Path(path).read_bytes())


# ------------------------------------------------------------------------------------------------------- weights
def build_state(rule: dict) -> dict[str, np.ndarray]:
    """The fairseq data2vec 2.0 state dict (no ``model.`` prefix) of the rule: key -> float16 array."""
    w = rule["weights"]
    rng = np.random.default_rng(w["seed"])
    dtype = np.dtype(w["dtype"])
    feat = w["feature_norm"]
    out = {}
    for key, shape in sorted(w["keys"], key=lambda ks: ks[0]):
        z = rng.standard_normal(math.prod(shape), dtype=np.float32).reshape(shape)  # (shape) float32
        name = key.rsplit(".", 1)[-1]
        if key.endswith("alibi_scale"):
            v = w["alibi_scale"]["mean"] + w["alibi_scale"]["std"] * z
        elif len(shape) >= 2:
            v = z * np.float32(w["matrix_gain"] / math.sqrt(math.prod(shape[1:])))
        elif name == "weight":
            v = w["norm_weight"]["mean"] + w["norm_weight"]["std"] * z
        elif name == "bias":
            v = w["bias_std"] * z
        else:
            raise ValueError(f"{RULE}: no value rule for key {key!r} of shape {shape}")
        if key.startswith(feat["prefix"]):
            v = v * np.float32(feat["scale"])
        out[key] = np.asarray(v, dtype=np.float32).astype(dtype)
    return out


def state_digest(state: dict[str, np.ndarray]) -> str:
    """sha256 over the keys in sorted order: name, dtype, shape and the little-endian bytes of each tensor."""
    h = hashlib.sha256()
    for key in sorted(state):
        v = np.ascontiguousarray(state[key])
        h.update(f"{key}|{v.dtype.str}|{list(v.shape)}\n".encode())
        h.update(v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def write_checkpoint(state: dict[str, np.ndarray], path: str | Path) -> Path:
    """The released SylBoost ``.pth`` layout: ``{"model_seg": {"model." + key: tensor}}``."""
    import torch

    torch.save({"model_seg": {"model." + k: torch.from_numpy(v) for k, v in state.items()}}, str(path))
    return Path(path)


# --------------------------------------------------------------------------------------------------------- audio
def synth_wave(seconds: float, seed: int, a: dict) -> np.ndarray:
    """One file of the rule: (round(seconds * sr),) int16 samples (module docstring).

    A vowel is a harmonic tone at a steady pitch drawn from ``f0_hz`` (multiples of 50 Hz, so a whole number of
    periods fits the encoder's 20 ms hop), its harmonics' amplitudes shaped by two formant peaks that glide
    linearly over the vowel, a flat envelope with raised-cosine ramps; a syllable starts with a noise burst with
    probability ``onset_prob``. Gaps are silence (zeros)."""
    sr = a["sample_rate"]
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    wave = np.zeros(n)
    t = a["lead_s"]
    ramp = int(round(a["ramp_s"] * sr))
    while True:
        length = rng.uniform(*a["syllable_s"])
        if t + length > seconds - a["lead_s"]:
            break
        start, count = int(round(t * sr)), int(round(length * sr))
        onset = int(round(rng.uniform(*a["onset_s"]) * sr)) if rng.uniform() < a["onset_prob"] else 0
        wave[start:start + onset] = rng.standard_normal(onset) * rng.uniform(*a["onset_amp"])
        vowel = count - onset
        f0 = float(rng.choice(a["f0_hz"]))
        # formants glide linearly from one value to another over the vowel (a diphthong), so frames change
        # within a vowel; the harmonics' amplitudes follow them sample by sample
        f1 = np.linspace(rng.uniform(*a["f1_hz"]), rng.uniform(*a["f1_hz"]), vowel)  # (vowel,)
        f2 = np.linspace(rng.uniform(*a["f2_hz"]), rng.uniform(*a["f2_hz"]), vowel)  # (vowel,)
        phase = 2 * np.pi * f0 * np.arange(vowel) / sr
        v = np.zeros(vowel)
        for h in range(1, int(a["max_hz"] // f0) + 1):
            amp = np.exp(-0.5 * ((h * f0 - f1) / a["bw_hz"][0]) ** 2) \
                + 0.6 * np.exp(-0.5 * ((h * f0 - f2) / a["bw_hz"][1]) ** 2) + a["floor_amp"]  # (vowel,)
            v += amp * np.sin(h * phase)
        envelope = np.ones(vowel)
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)  # (ramp,) rising half cosine
        envelope[:ramp] *= edge
        envelope[vowel - ramp:] *= edge[::-1]
        v *= envelope / max(np.abs(v).max(), 1e-9) * rng.uniform(*a["vowel_amp"])
        wave[start + onset:start + count] += v
        t += length + rng.uniform(*a["gap_s"])
    return np.round(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)


def build_audio(rule: dict) -> dict[str, np.ndarray]:
    """name -> int16 samples, for each file of the rule."""
    a = rule["audio"]
    return {f["name"]: synth_wave(f["seconds"], f["seed"], a) for f in a["files"]}


def audio_digest(samples: np.ndarray) -> str:
    return sha256(np.ascontiguousarray(samples, dtype="<i2").tobytes())


def write_audio(audio: dict[str, np.ndarray], folder: str | Path, sample_rate: int) -> dict[str, Path]:
    import soundfile as sf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, samples in audio.items():
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], samples, sample_rate, subtype="PCM_16")
    return paths


def write_inputs(rule: dict, folder: str | Path) -> dict:
    """The checkpoint and the WAVs of the rule under ``folder``; returns their paths and digests."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = build_state(rule)
    audio = build_audio(rule)
    return {"checkpoint": write_checkpoint(state, folder / CHECKPOINT_NAME),
            "audio": write_audio(audio, folder / "audio", rule["audio"]["sample_rate"]),
            "weights_digest": state_digest(state),
            "audio_digests": {name: audio_digest(s) for name, s in audio.items()}}


# --------------------------------------------------------------------------------------------- quantizer (refit)
def fit_quantizer(rule: dict, checkpoint: str | Path, audio: dict[str, Path], out: str | Path) -> dict:
    """Refit ``kmeans.npy`` / ``agglom.npy`` with this suite's code: the imported encoder's features (layer 11,
    fp32) of every frame of the rule's files (sorted by name), ``UnitQuantizer.fit`` (each frame standardised,
    scikit-learn's k-means, then Ward; the rule's k, k_merged and seed). Frames rather than the min-cut's segments,
    so the segments the test tokenizes are not the very points the centroids were fitted to. Regeneration only
    (module docstring). Returns the files' sha256."""
    import torch

    from syllablelm.audio.io import read_audio
    from syllablelm.checkpoints.fairseq_data2vec2 import encoder_from_fairseq_state
    from syllablelm.models.encoder import SpeechEncoder
    from syllablelm.units.quantizer import UnitQuantizer
    from syllablelm.units.released import RELEASED_FEATURE_LAYER, load_released_state, released_encoder_config

    q = rule["quantizer"]
    state = {k: v.float() for k, v in load_released_state(checkpoint).items()}
    model = encoder_from_fairseq_state(state, released_encoder_config(), checkpoint)
    encoder = SpeechEncoder(model, layer=RELEASED_FEATURE_LAYER, normalize_waveform=False).eval()
    with torch.inference_mode():
        frames = torch.cat([encoder(read_audio(audio[name])[None])[0][0] for name in sorted(audio)])  # (sum T, D)
    quantizer = UnitQuantizer.fit(frames, q["k"], q["k_merged"], backend=q["backend"], seed=q["seed"])
    out = Path(out)
    np.save(out / KMEANS_NAME, quantizer.centroids.astype(np.float32))
    np.save(out / AGGLOM_NAME, quantizer.agglom.astype(np.int64))
    return {KMEANS_NAME: file_sha256(out / KMEANS_NAME), AGGLOM_NAME: file_sha256(out / AGGLOM_NAME)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.parity_rule", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["inputs", "fit"], help="inputs: write the checkpoint and WAVs; fit: also "
                   "refit kmeans.npy / agglom.npy into --quantizer-dir")
    p.add_argument("dir", help="where the checkpoint and audio/ go")
    p.add_argument("--quantizer-dir", default=str(DATA))
    args = p.parse_args(argv)
    rule = load_rule()
    made = write_inputs(rule, args.dir)
    print(json.dumps({"weights": made["weights_digest"], "audio": made["audio_digests"]}, indent=1))
    if args.what == "fit":
        print(json.dumps(fit_quantizer(rule, made["checkpoint"], made["audio"], args.quantizer_dir), indent=1))


if __name__ == "__main__":
    main()
