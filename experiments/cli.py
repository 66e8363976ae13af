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
import os
import re
import sys

from syllablelm.runtime.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE, finish, reset_skips

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# name -> ("module:function", one-line help). Later stages add their commands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("experiments.synth:main",
              "synthesise a LibriSpeech-layout corpus with alignments (eSpeak NG)"),
    "pairs": ("experiments.pairs:main",
              "synthesise sWUGGY / sBLIMP / tSC-style mini-sets (ZeroSpeech layout)"),
    "labels": ("experiments.labels:main",
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
    "convert-tokenizer": ("experiments.convert_tokenizer:main",
                          "an older tokenizer file (SylBoost checkpoint + quantizer) -> tokenizer checkpoint"),
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
    "store-convert": ("experiments.stores:convert",
                      "rewrite old-layout store versions (.npz shards) as memory-mapped columns, in place"),
    "store-reference": ("experiments.stores:reference",
                        "the reference syllables (optionally noisy) as a boundary version: SylBoost's upper bound"),
    "store-envelope": ("experiments.stores:envelope",
                       "the envelope-minima segmentation as a boundary version (unsupervised labels)"),
    "sylboost-gain": ("experiments.sylboost_gain:main",
                      "what SylBoost's iterations add over their start and LossPred, on held-out voices, by data size"),
    "resynthesize": ("experiments.speech_commands:resynthesize",
                     "audio -> syllable units -> fine units -> audio (--from fine: the vocoder's ceiling)"),
    "continue": ("experiments.speech_commands:continue_speech",
                 "a spoken continuation of a prompt: SpeechLM -> interleaved LM -> vocoder"),
    "speech-demo": ("experiments.speech_demo:main",
                    "speech out on a finished demo workdir: resynthesis PER table, WAVs, continuations"),
    "pipeline": ("experiments.pipeline.runner:main",
                 "every stage in order, resumable, on torchrun/SLURM (--dry-run checks)"),
}


def lightning_cli(args: list[str] | None, **kwargs):
    """LightningCLI with the project's defaults: subclass mode for model and data (the config's class_path
    picks the stage), a fixed default seed, a saved config that a repeated run may overwrite, and the
    :class:`~callbacks.exact_resume.ExactResume` callback in every stage (a resumed run draws the same random
    numbers as an uninterrupted one)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from callbacks.exact_resume import ExactResume

    kwargs.setdefault("trainer_defaults", {"callbacks": [ExactResume()]})
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


def command_parser(name: str):
    """The ``argparse`` parser of a plain command: ``parser()`` of its module for a ``module:main`` entry,
    ``<function>_parser()`` for another function. Building it imports no model library (tests/test_cli_help.py)."""
    module, func = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), "parser" if func == "main" else f"{func}_parser")()


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


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (:mod:`syllablelm.runtime.outcome`: 0 done, 1 failed, 2 usage error,
    4 done with skipped inputs). An error ends in one line on stderr; ``--debug`` (anywhere on the command line, or
    ``SYLLABLELM_DEBUG=1``) shows the traceback instead, and ``--verbose`` (or ``SYLLABLELM_VERBOSE=1``) keeps the
    tips and deprecation warnings of Lightning and other libraries that are filtered out otherwise."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SYLLABLELM_DEBUG") == "1"
    verbose = "--verbose" in argv or os.environ.get("SYLLABLELM_VERBOSE") == "1"
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if from_sys:
        sys.argv = [sys.argv[0], *argv]  # LightningCLI reads sys.argv itself when run as a script
    _setup_logging()
    if not verbose:
        quiet_libraries()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK
    command = argv[0]
    if command not in COMMANDS and command not in LIGHTNING_COMMANDS and not command.startswith("-"):
        print(f"syllablelm: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    reset_skips()  # this command's skips only (tests and the pipeline run several commands in one process)
    try:
        if command in COMMANDS:
            status = run_command(command, argv[1:])
        else:
            lightning_cli(None if from_sys else argv)
            status = EXIT_OK
    except KeyboardInterrupt:
        print(f"syllablelm {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # SystemExit (argparse, explicit exits) passes through
        if debug:
            raise
        logging.getLogger(__name__).debug("%s failed", command, exc_info=True)
        print(f"syllablelm {command}: error: {error_line(e)}\n  (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED
    return finish(status)


def error_line(e: BaseException) -> str:
    """The message of an error as one line: its first line, with the exception type when the message alone would
    not say what happened."""
    text = str(e).strip()
    if "Does not validate against any of the Union subtypes" in text:  # jsonargparse wraps a class's own error
        reasons = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
        reasons = [r for r in reasons if not r.startswith(("Expected a ", "Problem with given class_path"))]
        if reasons:
            return reasons[0]
    first = text.splitlines()[0] if text else ""
    if not first or type(e).__name__ in ("KeyError", "IndexError", "AssertionError", "AttributeError", "TypeError",
                                        "ZeroDivisionError", "NameError"):
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return first + (" [...]" if len(text.splitlines()) > 1 else "")


# Library chatter that fills stage logs without telling a user anything about their run. ``--verbose`` keeps it.
QUIET_MESSAGES = (
    r".*Tip:.*",                                    # Lightning's product tips (litlogger, litmodels)
    r".*litlogger.*", r".*litmodels.*",
    r"(GPU|TPU|HPU) available: .*",                 # hardware inventory lines
    r"`Trainer\(limit_.*",
)
QUIET_WARNINGS = (
    r".*does not have many workers which may be a bottleneck.*",
    r".*Found \d+ module\(s\) in eval mode.*",     # SylBoost's frozen teacher is in eval mode on purpose
    r".*is smaller than the logging interval.*",
    r".*srun.*command is available on your system.*",
    r".*`isinstance\(treespec, LeafSpec\)`.*",
)


class _DropMatching(logging.Filter):
    def __init__(self, patterns):
        super().__init__()
        self.patterns = [re.compile(p, re.S) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def quiet_libraries() -> None:
    """Filter deprecation warnings, Lightning's tips and its known-noise warnings out of this process's output."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    drop = _DropMatching(QUIET_MESSAGES)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(drop)


if __name__ == "__main__":
    sys.exit(main())
