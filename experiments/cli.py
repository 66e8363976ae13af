"""The ``syllablelm`` console script: LightningCLI stages plus plain offline commands, one entry point.

    syllablelm fit --config experiments/configs/tiny/teacher.yaml      # LightningCLI (subclass mode)
    syllablelm synth --out data/synth --num-utterances 200             # a plain command

``fit|validate|test|predict`` go to LightningCLI; the config's ``model.class_path`` picks the stage's
LightningModule and ``data.class_path`` its DataModule. Every other subcommand is a plain function
``main(argv)`` registered in :data:`COMMANDS`; ``syllablelm <command> --help`` documents each one.
"""
from __future__ import annotations

import importlib
import logging
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# name -> ("module:function", one-line help). Later stages add their commands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("syllablelm.synth.corpus:main",
              "synthesise a LibriSpeech-layout corpus with alignments (eSpeak NG)"),
    "pairs": ("syllablelm.synth.pairs:main",
              "synthesise sWUGGY / sBLIMP / tSC-style mini-sets (ZeroSpeech layout)"),
    "labels": ("experiments.frame_labels:main",
               "k-means frame labels (MFCC or a teacher layer) into a label store"),
    "baselines": ("experiments.score_baselines:main",
                  "score the uniform / envelope / log-mel min-cut baselines"),
    "quantize": ("experiments.unit_commands:quantize",
                 "fit k-means + Ward on SylBoost features -> tokenizer checkpoint"),
    "units": ("experiments.unit_commands:units",
              "write unit shards (segments + unit ids) for a dataset"),
    "tokenize": ("experiments.tokenize_audio:main",
                 "tokenize audio files, folders or a file list into JSON lines of units"),
    "import-sylboost": ("experiments.import_released:main",
                        "the authors' released SylBoost model -> tokenizer checkpoint"),
    "demo": ("experiments.demo:main",
             "the whole pipeline on a synthetic corpus -> DIR/report.json + report.md"),
    "evaluate": ("experiments.evaluate:main",
                 "boundary / clustering / bitrate (and LM pair) scores of a tokenizer"),
    "ceiling": ("experiments.ceiling:main",
                "what SylBoost's min-cut can reach from a backbone and a boundary version"),
    "references": ("experiments.import_references:main",
                   "LibriSpeech syllable references (SD-HuBERT/Peng/MFA) -> alignments"),
    "export-encoder": ("experiments.export:main",
                       "a SylBoost student as a transformers model folder (a backbone)"),
    "store-copy": ("experiments.stores:main",
                   "copy a store version (e.g. LossPred's boundaries for a second SylBoost)"),
    "store-reference": ("experiments.stores:reference",
                        "the reference syllables (optionally noisy) as a boundary version: SylBoost's upper bound"),
    "store-envelope": ("experiments.stores:envelope",
                       "the envelope-minima segmentation as a boundary version (unsupervised labels)"),
    "sylboost-gain": ("experiments.sylboost_gain:main",
                      "what SylBoost's iterations add over their start and LossPred, on held-out voices, by data size"),
    "pipeline": ("experiments.pipeline.runner:main",
                 "every stage in order, resumable, on torchrun/SLURM (--dry-run checks)"),
}


def lightning_cli(args: list[str] | None, **kwargs):
    """LightningCLI with the project's defaults: subclass mode for model and data (the config's class_path
    picks the stage), a fixed default seed, and a saved config that a repeated run may overwrite."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    kwargs.setdefault("subclass_mode_model", True)
    kwargs.setdefault("subclass_mode_data", True)
    kwargs.setdefault("seed_everything_default", 0)
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return LightningCLI(LightningModule, LightningDataModule, args=args, **kwargs)


def _usage() -> str:
    lines = ["usage: syllablelm <command> [options]", "", "training stages (LightningCLI; --config FILE):"]
    lines += [f"  {c}" for c in LIGHTNING_COMMANDS]
    lines += ["", "offline commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "syllablelm <command> --help shows a command's options."]
    return "\n".join(lines)


def run_command(name: str, argv: list[str]):
    """Import and run a plain command (imports are lazy so ``syllablelm synth`` never loads Lightning)."""
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(argv)


PROJECT_LOGGERS = ("syllablelm", "datamodules", "lightning_modules", "callbacks", "experiments")


def _setup_logging() -> None:
    """INFO logs of the project's own packages on stderr (Lightning configures its own loggers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def main(argv: list[str] | None = None):
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    if argv[0] in LIGHTNING_COMMANDS or argv[0].startswith("-"):
        lightning_cli(None if from_sys else argv)  # LightningCLI reads sys.argv itself when run as a script
        return 0
    print(f"syllablelm: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
