"""The recipes of docs/results.md: their first steps run (the full runs take hours) and their readers parse."""
import json
import shutil

import pytest

from experiments.recipes import realdev
from experiments.recipes.sylboost_scaling import teacher_config


def test_realdev_reads_label_start_end_alignments_and_scores(synth_corpus, tmp_path):
    """A realdev-shaped folder (audio/<spk>/<chapter>/<id>.flac, alignments with [label, start, end] entries)."""
    data = tmp_path / "realdev"
    for ali in sorted((synth_corpus / "alignments" / "test").rglob("*.json"))[:3]:
        uid = ali.stem
        flac = next((synth_corpus / "test").rglob(f"{uid}.flac"))
        (data / "audio" / "1" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(flac, data / "audio" / "1" / "1" / flac.name)
        entry = json.loads(ali.read_text())
        (data / "alignments" / "1" / "1").mkdir(parents=True, exist_ok=True)
        (data / "alignments" / "1" / "1" / ali.name).write_text(json.dumps(
            {"utt_id": uid, "syllables": [[lab, s, e] for s, e, lab in entry["syllables"]]}))
    refs = realdev.read_references(data)
    assert len(refs) == 3 and all(len(segs) > 2 for _, segs in refs.values())
    out = tmp_path / "realdev.json"
    assert realdev.main(["--data", str(data), "--cutoff-hz", "8", "--prominence", "0.1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["systems"]["envelope minima"]
    assert 0 < row["f1"] <= 1 and row["rate_hz"] > 0


@pytest.mark.parametrize("strength,epochs", [("weak", 10), ("strong", 25)])
def test_scaling_recipe_teacher_configs_parse(tmp_path, strength, epochs):
    from experiments.pipeline.stage_configs import parse_lightning

    cfg = parse_lightning(str(teacher_config(tmp_path, f"teacher_{strength}", epochs)), [])
    assert cfg["trainer"]["max_epochs"] == epochs
    assert cfg["trainer"]["default_root_dir"] == str(tmp_path / "runs" / f"teacher_{strength}")
