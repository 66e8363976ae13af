"""What every plain command's ``--help`` shares: one formatter, the module docstring as the description, and the
wording of the options several commands take.

A plain command module (``experiments/<command>.py``) imports only the standard library at its top, builds its
options in ``parser()`` and imports the heavy parts (torch, Lightning, the core) inside ``main`` after parsing, so
``syllablelm <command> --help`` answers without loading a model library (tests/test_cli_help.py checks each one;
``benchmarks/cli_help.py`` times them).
"""
from __future__ import annotations

import argparse
import os
import re

DEVICE = ("where the model runs: cpu, cuda or cuda:N; when not given, this process's GPU (cuda:$LOCAL_RANK) if CUDA "
          "is available, else the CPU")
LIMIT = "use at most this many utterances of each split (the first ones in path order); no limit when not given"
SEED = "the random seed; the same seed and inputs give the same output"
WORKDIR = "the run's folder: data, checkpoints, logs and the report are written under it (created; a rerun resumes)"
UNIT_VARIANTS = ("authors_lm", "dedup")  # syllablelm.units.quantizer.UNIT_VARIANTS (a test keeps them equal)
MANIFEST_CACHE = "a folder for cached file lists (audio lengths per folder), so reruns skip the scan"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description keeps its line breaks (usage examples); every option with a default shows it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help  # "(default: None)" / "(default: False)" say nothing
        return super()._get_help_string(action)


def plain(text: str) -> str:
    """reStructuredText markup of a docstring as plain text: ``x`` and :func:`x` -> x."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def command_parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for ``syllablelm <prog>`` whose description is ``doc`` (a module docstring) in plain
    text."""
    return argparse.ArgumentParser(prog=f"syllablelm {prog}", description=plain(doc or "").strip(),
                                   formatter_class=HelpFormatter, **kwargs)


def add_sharding(p: argparse.ArgumentParser, shards_note: str = "") -> None:
    """``--rank`` / ``--world-size`` (default: torchrun's RANK / WORLD_SIZE) and ``--shards``: how the offline
    store writers (``labels``, ``units``) split their files."""
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)), help="this process's rank ($RANK)")
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                   help="processes sharing the work ($WORLD_SIZE)")
    p.add_argument("--shards", type=int, help="shard files, dealt round-robin to the ranks (default: one per rank); "
                   "more give finer resume points" + shards_note)
