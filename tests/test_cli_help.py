"""``syllablelm <command> --help`` for every plain command: answers without loading a model library, explains every
option, shows defaults, and reads as plain text (benchmarks/cli_help.py times them)."""
import argparse
import json
import subprocess
import sys

import pytest

from experiments.arguments import HelpFormatter, plain
from experiments.cli import COMMANDS, command_parser
from tests.conftest import REPO

HEAVY = ("torch", "torchaudio", "lightning", "transformers", "sklearn", "scipy", "matplotlib", "soundfile")


def test_building_every_parser_loads_no_model_library():
    """Each command's parser, built in a fresh interpreter (one per command: imports must not hide each other)."""
    code = ("import json, sys\nfrom experiments.cli import command_parser\ncommand_parser(sys.argv[1]).format_help()\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    loaded = {}
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-c", code, name], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        loaded[name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in loaded.items() if v} == {}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_explained_with_its_default(name):
    p = command_parser(name)
    assert p.prog == f"syllablelm {name}" and isinstance(p.formatter_class, type) \
        and issubclass(p.formatter_class, HelpFormatter)
    unexplained = [a.option_strings or a.dest for a in p._actions
                   if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert unexplained == []
    text = p.format_help()
    assert "``" not in text and ":func:`" not in text and ":mod:`" not in text and ":class:`" not in text
    for a in p._actions:  # a default that is not None/False is printed
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and a.help:
            assert "%(default)" in a.help or "(default: " in p._get_formatter()._get_help_string(a), a.dest


def test_the_formatter_shows_defaults_and_plain_text():
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--rate", type=float, default=6.25, help="the rate")
    p.add_argument("--flag", action="store_true", help="a switch")
    text = p.format_help()
    assert "the rate (default: 6.25)" in text and "a switch (default" not in text
    assert plain("see ``x`` and :func:`~a.b` or :class:`C`") == "see x and a.b or C"


def test_help_runs_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "store-reference", "--help"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "usage: syllablelm store-reference" in out.stdout and "--jitter-ms" in out.stdout
