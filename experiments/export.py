"""``syllablelm export-encoder``: a SylBoost run's student encoder as a transformers model folder.

    syllablelm export-encoder --checkpoint runs/backbone/checkpoints/last.ckpt --out experiments/pretrained/backbone

The folder (``config.json``, ``model.safetensors``, ``preprocessor_config.json`` whose ``do_normalize`` is the
student's input normalisation) is what ``SylBoostModule(init_from=...)``, ``syllablelm ceiling`` and ``labels
--features teacher`` load as an HF HuBERT directory. It holds the student's layers up to its feature layer (the
ones SylBoost trained). The shipped SylBoost backbone was made this way (``experiments/pretrained/README.md``).
The folder is written beside ``--out`` and renamed onto it when complete.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from experiments.arguments import command_parser
from syllablelm.runtime.fileio import current_umask, write_json

log = logging.getLogger(__name__)


def export_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the student of a SylBoost checkpoint to the model folder ``out`` (replaced if it exists)."""
    from lightning_modules.sylboost import SylBoostModule

    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such SylBoost checkpoint")
    module = SylBoostModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    model = module.student.model
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"{checkpoint}: the student is a {type(model).__name__}, not a transformers model; "
                         "only HF-style encoders (HuBERT, WavLM, data2vec-audio) can be exported as a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        write_json(tmp / "preprocessor_config.json", {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
            "padding_value": 0.0, "do_normalize": bool(module.student.normalize_waveform),
            "return_attention_mask": model.config.feat_extract_norm == "layer"}, indent=1)
        mask = current_umask()  # mkdtemp makes an owner-only folder; a backbone is shared like any output
        tmp.chmod(0o777 & ~mask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~mask)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported the student of %s (%d layers) to %s", checkpoint, model.config.num_hidden_layers, out)
    return out


def parser() -> argparse.ArgumentParser:
    p = command_parser("export-encoder", __doc__)
    p.add_argument("--checkpoint", required=True, help="a SylBoost checkpoint (syllablelm fit)")
    p.add_argument("--out", required=True, help="the model folder to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        export_encoder(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"syllablelm export-encoder: {e}") from None
    return 0
