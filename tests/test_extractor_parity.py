"""``import-sylboost`` + ``tokenize`` give what the authors' released extractor gives, on the same inputs.

The authors' ``extract_units.py`` (patched only to run on the CPU in fp32: tests/data/extractor_parity/README.md)
was run once, outside this repository, on a full-size data2vec 2.0 checkpoint in their release format, k-means and
agglomerative files, and three short WAVs; its output per rate and file is stored in
``tests/data/extractor_parity/authors_output.json``: the min-cut borders, the unit id of every min-cut segment, and
their output after merging repeats (unit, start, end). Every input comes from a rule this repository re-creates
(tests/parity_rule.py): this test rebuilds the checkpoint and the audio, checks their digests against the ones
recorded beside the output (and the shipped k-means/agglom files' sha256), runs ``syllablelm import-sylboost`` and
``syllablelm tokenize`` (fp32, CPU) at 6.25 and 5.0 Hz, and asserts the same borders, the same ids before merging
(``--variant authors_lm``: one unit per min-cut segment) and the same merged units and spans (``--variant dedup``,
the default). Their stored output is checked to be non-degenerate: at least 8 segments after merging and 4 distinct
units per file, and a rate search that ended strictly inside its count range (δ inside the searched costs).

Full size because their model class has a fixed width: about 94 M parameters, ~190 MB of float16 weights written
to the temporary folder (and a tokenizer checkpoint per rate). The module is about 20 s of CPU work (12 forward
passes over 9 s of audio, two imports); marked slow, which CI runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.cli import main as cli_main
from tests import parity_rule
from tests.parity_rule import AGGLOM_NAME, DATA, KMEANS_NAME, OUTPUT, RATES

pytestmark = pytest.mark.slow
FRAME_HZ = 50  # data2vec 2.0 frames per second: tokenize's segments are frames / 50, rounded to 4 decimals


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(OUTPUT.read_text())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, expected) -> dict:
    """The rule's checkpoint and WAVs, written afresh; their digests must be the ones the authors' run recorded,
    else the comparison below would be between different inputs."""
    made = parity_rule.write_inputs(parity_rule.load_rule(), tmp_path_factory.mktemp("extractor_parity"))
    recorded = expected["inputs"]
    problems = []
    if made["weights_digest"] != recorded["weights_digest"]:
        problems.append(f"weights digest {made['weights_digest']} != {recorded['weights_digest']}")
    if made["audio_digests"] != recorded["audio_sha256"]:
        problems.append(f"audio digests {made['audio_digests']} != {recorded['audio_sha256']}")
    for name in (KMEANS_NAME, AGGLOM_NAME):
        if parity_rule.file_sha256(DATA / name) != recorded[name]:
            problems.append(f"{DATA / name}: sha256 differs from the one recorded in {OUTPUT}")
    if problems:
        pytest.fail(f"the rule (tests/parity_rule.py, {parity_rule.RULE}) no longer re-creates the inputs the "
                    f"authors' extractor was run on: {'; '.join(problems)}. Regenerate the stored output "
                    f"({DATA / 'README.md'}) if the rule was changed on purpose.")
    return made


def _precision(command: str) -> list[str]:
    """``--precision fp32`` where the command takes it (fp32 is what this parity covers)."""
    from experiments import import_released, tokenize_audio

    parser = {"import-sylboost": import_released, "tokenize": tokenize_audio}[command].parser()
    return ["--precision", "fp32"] if any("--precision" in a.option_strings for a in parser._actions) else []


def _frames(seconds: list[float]) -> list[int]:
    frames = [round(s * FRAME_HZ) for s in seconds]
    assert np.allclose(np.asarray(frames) / FRAME_HZ, seconds, atol=1e-9), seconds  # on the 20 ms grid
    return frames


@pytest.fixture(scope="module")
def ours(inputs, tmp_path_factory) -> dict:
    """rate -> variant -> file stem -> tokenize's row, from the two commands as a user runs them."""
    root = tmp_path_factory.mktemp("ours")
    audio = sorted(str(p) for p in inputs["audio"].values())
    out = {}
    for rate in RATES:
        ckpt = root / f"tok_{rate}.ckpt"
        assert cli_main(["import-sylboost", "--model", str(inputs["checkpoint"]), "--kmeans", str(DATA / KMEANS_NAME),
                         "--agglom", str(DATA / AGGLOM_NAME), "--rate", rate, "--out", str(ckpt),
                         *_precision("import-sylboost")]) == 0
        out[rate] = {}
        for variant in ("authors_lm", "dedup"):
            jsonl = root / f"units_{rate}_{variant}.jsonl"
            assert cli_main(["tokenize", "--checkpoint", str(ckpt), "--input", *audio, "--output", str(jsonl),
                             "--variant", variant, "--device", "cpu", *_precision("tokenize")]) == 0
            rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
            out[rate][variant] = {Path(row["path"]).stem: row for row in rows}
    return out


def _runs(units: list[int]) -> list[tuple[int, int, int]]:
    """(unit, first index, last index) of each run of equal consecutive ids."""
    runs = []
    for i, u in enumerate(units):
        if runs and runs[-1][0] == u:
            runs[-1] = (u, runs[-1][1], i)
        else:
            runs.append((u, i, i))
    return runs


def test_their_output_is_not_degenerate(expected):
    """What the comparison stands on: many segments, several units, a rate search that branched both ways, and
    their merged output = their per-segment ids with runs merged (the stored fields agree with each other)."""
    assert expected["authors"]["commit"] and set(expected["results"]) == set(RATES)
    for rate in RATES:
        for name, f in expected["results"][rate]["files"].items():
            borders, units, merged = f["borders"], f["units"], f["merged"]
            m = int(0.2 * f["frames"])  # their count cap: THRESHOLD = 1 / 0.10 / 50 segments per frame
            assert borders[0] == 0 and borders[-1] == f["frames"] and len(units) == len(borders) - 1
            assert m // 3 < len(units) < m, (rate, name, len(units), m)  # δ fell inside the searched range
            assert len(merged["units"]) >= 8 and len(set(units)) >= 4, (rate, name)
            runs = _runs(units)
            assert merged["units"] == [u for u, _, _ in runs]
            assert merged["start"] == [borders[a] for _, a, _ in runs]
            assert merged["end"] == [borders[b + 1] for _, _, b in runs]


@pytest.mark.parametrize("rate", RATES)
def test_tokenize_matches_their_extractor(ours, expected, rate):
    theirs = expected["results"][rate]["files"]
    assert set(ours[rate]["authors_lm"]) == set(ours[rate]["dedup"]) == set(theirs)
    for name, f in theirs.items():
        seg = ours[rate]["authors_lm"][name]["segments"]  # (n, 2) seconds: one row per min-cut segment
        starts, ends = _frames([s for s, _ in seg]), _frames([e for _, e in seg])
        assert starts[1:] == ends[:-1], f"{rate} {name}: min-cut segments not contiguous"
        assert [starts[0], *ends] == f["borders"], f"{rate} {name}: min-cut borders differ"
        assert ours[rate]["authors_lm"][name]["units"] == f["units"], \
            f"{rate} {name}: unit ids of the same min-cut segments differ (pooling, k-means or agglom)"
        row = ours[rate]["dedup"][name]
        assert row["units"] == f["merged"]["units"], f"{rate} {name}: merged units differ"
        assert _frames([s for s, _ in row["segments"]]) == f["merged"]["start"], f"{rate} {name}: merged starts"
        assert _frames([e for _, e in row["segments"]]) == f["merged"]["end"], f"{rate} {name}: merged ends"
