"""Run the authors' extractor (``extract_units.py``, patched for CPU and fp32: README.md) on the parity inputs and
write ``authors_output.json``. Not part of the test suite: it imports *their* code, from a checkout given on the
command line, and is kept here so the stored output can be regenerated (README.md, "Regenerating").

    python tests/data/extractor_parity/run_authors.py --authors /path/to/patched/checkout \
        --inputs /tmp/parity_inputs --commit <their commit> --out tests/data/extractor_parity/authors_output.json

``--inputs`` is what ``python -m tests.parity_rule inputs DIR`` wrote (``SylBoost_parity.pth``, ``audio/*.wav``);
``kmeans.npy`` / ``agglom.npy`` are read from this folder. Per rate and file the output holds the min-cut borders
(frames), the unit ids of every min-cut segment (k-means id mapped through the agglomerative table, before
repeats are merged) and their own output after merging (``clusters_with_times``: unit, start, end). The borders
and the k-means ids are recorded by wrapping two of their callables (``efficient_extraction`` and the
``ApplyKmeans`` instance) without changing what they compute.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATES = ("6.25Hz", "5.0Hz")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors", required=True, help="the patched checkout holding extract_units.py")
    p.add_argument("--inputs", required=True, help="the folder `python -m tests.parity_rule inputs` wrote")
    p.add_argument("--commit", required=True, help="their commit the checkout was exported from")
    p.add_argument("--out", default=str(HERE / "authors_output.json"))
    p.add_argument("--features", help="also save their features per file (.npz), for diagnosing a mismatch")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.authors).resolve()))  # their `syllablelm` package, not this repository's
    import extract_units as eu
    import soundfile as sf
    import torch

    torch.set_num_threads(2)
    inputs = Path(args.inputs)
    checkpoint = inputs / "SylBoost_parity.pth"
    wavs = sorted((inputs / "audio").glob("*.wav"))
    kmeans, agglom = HERE / "kmeans.npy", HERE / "agglom.npy"

    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)["model_seg"]
    digest = hashlib.sha256()  # tests/parity_rule.py state_digest, restated: key, dtype, shape, bytes, sorted keys
    for key in sorted(state):
        v = np.ascontiguousarray(state[key].numpy())
        digest.update(f"{key[len('model.'):]}|{v.dtype.str}|{list(v.shape)}\n".encode())
        digest.update(v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes())

    recorded: dict[str, list] = {"mincut": [], "kmeans": []}
    their_extraction = eu.efficient_extraction

    def recording_extraction(*a, **kw):
        out = their_extraction(*a, **kw)
        recorded["mincut"].append(out)
        return out

    eu.efficient_extraction = recording_extraction  # forward() looks the name up in the module at call time

    results, features = {}, {}
    for rate in RATES:
        reader = eu.SylBoostFeatureReader(str(checkpoint), str(kmeans), str(agglom), rate)
        apply_kmeans = reader.kmeans_centroids

        def recording_kmeans(x, _apply=apply_kmeans):
            ids = _apply(x)
            recorded["kmeans"].append(ids.clone())
            return ids

        reader.kmeans_centroids = recording_kmeans
        per_file = {}
        for wav in wavs:
            samples, sr = sf.read(str(wav), dtype="float32")
            assert sr == 16000 and samples.ndim == 1, wav
            recorded["mincut"].clear()
            recorded["kmeans"].clear()
            with torch.no_grad():
                result = reader.forward(torch.from_numpy(samples)[None])
            borders = [int(b) for b in recorded["mincut"][0][0][0]]  # [delta][batch item] -> border list
            kmeans_ids = recorded["kmeans"][0].numpy().reshape(-1)
            units = reader.agglom[kmeans_ids].reshape(-1)
            merged = result["clusters_with_times"][0]  # (3, m): unit, start, end
            feats = result["features"][0].float().numpy()
            features[f"{rate}/{wav.stem}"] = feats
            per_file[wav.stem] = {
                "frames": int(feats.shape[0]),
                "borders": borders,
                "kmeans_ids": kmeans_ids.tolist(),
                "units": units.tolist(),
                "merged": {"units": merged[0].tolist(), "start": merged[1].tolist(), "end": merged[2].tolist()},
            }
        results[rate] = {"delta": eu.FULL_MODELS_DICT[rate]["delta"],
                         "quantile": eu.FULL_MODELS_DICT[rate]["quantile"], "files": per_file}

    audio = {}
    for wav in wavs:
        pcm, _ = sf.read(str(wav), dtype="int16")
        audio[wav.stem] = hashlib.sha256(np.ascontiguousarray(pcm, dtype="<i2").tobytes()).hexdigest()
    out = {
        "format": "syllablelm.extractor_parity.output/1",
        "produced_by": "tests/data/extractor_parity/run_authors.py (README.md)",
        "authors": {"repository": "ishine/SyllableLM (AlanBaade/SyllableLM's code)", "commit": args.commit,
                    "script": "extract_units.py", "patch": "README.md: CPU, fp32; dataclass defaults"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                        "machine": platform.machine()},
        "inputs": {
            "weights_digest": digest.hexdigest(),
            "checkpoint_file_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "audio_sha256": audio,
            "kmeans.npy": hashlib.sha256(kmeans.read_bytes()).hexdigest(),
            "agglom.npy": hashlib.sha256(agglom.read_bytes()).hexdigest(),
        },
        "results": results,
    }
    text = json.dumps(out, indent=1)
    text = re.sub(r"\[[-\d,\s]+\]", lambda m: json.dumps(json.loads(m.group(0))), text)  # int lists on one line
    Path(args.out).write_text(text + "\n")
    if args.features:
        np.savez(args.features, **features)


if __name__ == "__main__":
    main()
