"""What a user sees when a command fails: one line naming the problem (the traceback behind --debug), the exit
statuses of syllablelm.runtime.outcome, and no library chatter unless --verbose (docs/architecture.md,
"Reliability")."""
from __future__ import annotations

import logging

import pytest

from experiments import cli
from syllablelm.runtime import outcome


def test_an_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["quantize", "--checkpoint", str(tmp_path / "missing.ckpt"), "--data", str(tmp_path), "--out",
            str(tmp_path / "tok.ckpt")]
    assert cli.main(argv) == outcome.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("syllablelm quantize: error: ") and "missing.ckpt" in err[0]
    assert len(err) == 2 and "--debug" in err[1] and "Traceback" not in "\n".join(err)
    with pytest.raises(Exception, match="missing.ckpt"):  # --debug anywhere: the exception itself
        cli.main([*argv, "--debug"])


def test_the_real_reason_is_taken_out_of_a_jsonargparse_union_error():
    wrapped = ValueError("Does not validate against any of the Union subtypes\nSubtypes: [A, NoneType]\nErrors:\n"
                         "  - Problem with given class_path 'm.SylBoostModule':\n"
                         "    - /data/teacher.ckpt: no such file or folder\n  - Expected a <class 'NoneType'>\n"
                         "Given value type: Namespace")
    assert cli.error_line(wrapped) == "/data/teacher.ckpt: no such file or folder"
    assert cli.error_line(KeyError("x")) == "KeyError: 'x'"  # a bare message gets its type
    assert cli.error_line(RuntimeError("first\nsecond")) == "first [...]"


def test_skipped_inputs_make_status_4_and_a_summary_line(capsys):
    outcome.reset_skips()
    assert outcome.finish(0) == outcome.EXIT_OK and capsys.readouterr().err == ""
    outcome.record_skip("/a.wav", "empty (no samples)", "tokenize")
    outcome.record_skip("/a.wav", "empty (no samples)", "tokenize")  # once per path and place
    outcome.record_skip("/b.wav", "unreadable audio", "manifest")
    assert [s.path for s in outcome.skipped()] == ["/a.wav", "/b.wav"]
    assert outcome.finish(0) == outcome.EXIT_SKIPPED
    assert "skipped 2 input file(s) (1 by tokenize, 1 by manifest)" in capsys.readouterr().err
    assert outcome.finish(outcome.EXIT_FAILED) == outcome.EXIT_FAILED  # a failure stays a failure
    outcome.reset_skips()


def test_lightning_tips_are_dropped_unless_verbose():
    cli.quiet_libraries()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "💡 Tip: For seamless cloud uploads, try litmodels",
                            None, None)
    real = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "`Trainer.fit` stopped: `max_epochs=2` reached.",
                             None, None)
    assert not all(f.filter(tip) for f in logger.filters) and all(f.filter(real) for f in logger.filters)
