"""``syllablelm tokenize`` as users call it: symlinked dataset folders, several inputs and file lists, a clear error
when nothing is found, and a ``--help`` that loads no training stack. The listing is the training manifests' too."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datamodules.manifest import build_manifest
from experiments import tokenize_audio
from experiments.cli import main
from syllablelm.audio.io import list_audio
from syllablelm.units.quantizer import UNIT_VARIANTS
from tests.conftest import REPO, burst_wave
from tests.test_tokenizer import sylboost_ckpt, tokenizer_ckpt  # noqa: F401  (fixtures: a tiny tokenizer)


def _audio(path: Path, seed: int, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, burst_wave(np.random.default_rng(seed), seconds)[0], 16000)
    return path


def _linked_corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    """``corpus/`` as clusters link datasets in: sub-folders and a file that are symbolic links to elsewhere,
    links back to ancestors (cycles), a hidden folder and a broken link. Returns the root and the paths (relative
    to it) the listing must give, each once."""
    store, corpus = tmp_path / "elsewhere", tmp_path / "corpus"
    _audio(store / "spk1" / "1-1-0000.flac", 0)
    _audio(store / "spk1" / "1-1-0001.wav", 1)
    _audio(store / "spk2" / "2-1-0000.flac", 2)
    _audio(store / "4-1-0000.flac", 3)
    _audio(corpus / "own" / "3-1-0000.flac", 4)
    _audio(corpus / ".hidden" / "5-1-0000.flac", 5)
    (corpus / "own" / "notes.txt").write_text("not audio")
    (corpus / "spk1").symlink_to(store / "spk1", target_is_directory=True)
    (corpus / "spk2").symlink_to(Path("..") / "elsewhere" / "spk2", target_is_directory=True)  # a relative link
    (corpus / "4-1-0000.flac").symlink_to(store / "4-1-0000.flac")
    (corpus / "own" / "up").symlink_to(corpus, target_is_directory=True)  # a link to the parent: a cycle
    (corpus / "own" / "self").symlink_to(".", target_is_directory=True)
    (store / "spk1" / "back").symlink_to(store, target_is_directory=True)  # to an ancestor, inside a linked folder
    (corpus / "gone.flac").symlink_to(tmp_path / "missing.flac")  # broken: skipped
    return corpus, ["4-1-0000.flac", "own/3-1-0000.flac", "spk1/1-1-0000.flac", "spk1/1-1-0001.wav",
                    "spk2/2-1-0000.flac"]


def test_listing_follows_links_ends_cycles_and_feeds_the_manifest(tmp_path, cache_dir):
    corpus, expected = _linked_corpus(tmp_path)
    files = list_audio(corpus)
    assert [p.relative_to(corpus).as_posix() for p in files] == expected  # sorted, each file once
    assert list_audio(corpus) == files  # deterministic
    assert list_audio(corpus / "4-1-0000.flac") == [corpus / "4-1-0000.flac"]
    m = build_manifest(corpus, cache_dir=cache_dir, progress=False)  # the training manifest: the same files
    assert [e.path for e in m.entries] == [str(p) for p in list_audio(corpus.resolve())]
    assert sorted(e.id for e in m.entries) == ["1-1-0000", "1-1-0001", "2-1-0000", "3-1-0000", "4-1-0000"]
    assert m.skipped == {}


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        assert set(row) == {"path", "segments", "units"} and len(row["segments"]) == len(row["units"])
    return rows


def test_a_folder_of_symlinked_folders_is_tokenized_fully(tokenizer_ckpt, tmp_path):  # noqa: F811
    corpus, expected = _linked_corpus(tmp_path)
    out = tmp_path / "units.jsonl"
    assert main(["tokenize", "--checkpoint", str(tokenizer_ckpt), "--input", str(corpus), "--output", str(out),
                 "--device", "cpu"]) == 0
    rows = _rows(out)
    assert [Path(r["path"]).relative_to(corpus).as_posix() for r in rows] == expected
    assert all(len(r["units"]) > 0 for r in rows)


def test_several_inputs_and_a_file_list_combine(tokenizer_ckpt, tmp_path):  # noqa: F811
    a, b = _audio(tmp_path / "d1" / "a.flac", 0), _audio(tmp_path / "d1" / "sub" / "b.wav", 1)
    c, e = _audio(tmp_path / "d2" / "c.flac", 2), _audio(tmp_path / "extra" / "e.flac", 3)
    _audio(tmp_path / "unlisted" / "u.flac", 4)
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text(f"# audio to tokenize\n\n../d2/c.flac\n  ../extra/e.flac  \n{a}\n../d1\nmissing.flac\n")
    out = tmp_path / "units.jsonl"
    assert main(["tokenize", "--checkpoint", str(tokenizer_ckpt), "--input", str(tmp_path / "d1"),
                 str(tmp_path / "d2"), str(b), "--file-list", str(listing), "--output", str(out),
                 "--device", "cpu"]) == 4  # the listed file that does not exist is skipped (status 4)
    rows = _rows(out)
    assert [os.path.realpath(r["path"]) for r in rows] == [str(p.resolve()) for p in (a, b, c, e)]  # once each
    assert rows[3]["path"] == str(listing.parent / "../extra/e.flac")  # relative to the list's folder


def test_only_unreadable_files_is_a_failure(tokenizer_ckpt, tmp_path, capsys):  # noqa: F811
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.flac").write_bytes(b"not audio")
    out = tmp_path / "units.jsonl"
    assert main(["tokenize", "--checkpoint", str(tokenizer_ckpt), "--input", str(tmp_path / "in"),
                 "--output", str(out), "--device", "cpu"]) == 1
    assert "none of the 1 audio files could be read" in capsys.readouterr().err
    assert not out.exists()  # nothing tokenized: no output file, not an empty one

def test_no_audio_is_an_error_naming_what_was_searched(tmp_path, capsys):
    empty, other = tmp_path / "empty", tmp_path / "no-audio"
    empty.mkdir()
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "readme.txt").write_text("text")
    (other / ".hidden.flac").write_bytes(b"hidden")
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing here\n\n")
    never = str(tmp_path / "never-loaded.ckpt")  # nothing found: the checkpoint is not even opened
    out = tmp_path / "units.jsonl"
    assert main(["tokenize", "--checkpoint", never, "--input", str(empty), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "syllablelm tokenize: no audio files (.flac, .wav" in err and str(empty) in err
    assert main(["tokenize", "--checkpoint", never, "--input", str(empty), str(other), "--file-list", str(listing),
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and str(other) in err and f"file list {listing}" in err
    assert main(["tokenize", "--checkpoint", never, "--input", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert f"no such file or folder: {tmp_path / 'nope'}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["tokenize", "--checkpoint", never, "--output", str(out)])  # neither --input nor --file-list
    assert exit_.value.code == 2 and "--file-list" in capsys.readouterr().err
    assert not out.exists()


HELP_PROBE = """
import contextlib, io, json, sys
import experiments.cli as cli
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        cli.main(["tokenize", "--help"])
    code = None
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "lightning", "lightning.pytorch", "datamodules.speech", "syllablelm.units.tokenizer",
                     "numpy") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy, "help": out.getvalue()}))
"""


def test_help_loads_no_training_stack():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], cwd=REPO, capture_output=True, text=True,
                            check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    probe = json.loads(result.stdout.splitlines()[-1])
    assert probe["heavy"] == [] and probe["code"] == 0
    for option in ("--checkpoint", "--input", "--file-list", "--output", "--device", "--variant", "--no-dedup"):
        assert option in probe["help"], option


def test_variant_choices_match_the_core():
    assert sorted(tokenize_audio.VARIANTS) == sorted(UNIT_VARIANTS)
    assert tokenize_audio.DEFAULT_VARIANT in UNIT_VARIANTS
