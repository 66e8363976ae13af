"""Speech out on the log-mel fine units (issue 29, the CPU spectral option): the commands' ``--fine-features logmel``
(the shipped k-means and the vocoder trained on it), the refusal of a vocoder of the other units, and the speech
demo's log-mel run beside the teacher's in one workdir (own stages, WAVs and report section)."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from experiments.cli import main
from syllablelm.checkpoints.vocoders import HYPER_PARAMETERS, STATE_DICT, VOCODER
from tests.conftest import REPO

SHIPPED = REPO / "experiments" / "pretrained"


def _random_vocoder(path, num_units: int):
    from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig

    torch.manual_seed(0)
    cfg = ISTFTVocoderConfig(num_units=num_units)
    torch.save({HYPER_PARAMETERS: {VOCODER: cfg.to_dict()},
                STATE_DICT: {f"{VOCODER}.{k}": v for k, v in ISTFTVocoder(cfg).state_dict().items()}}, path)
    return path


def test_shipped_logmel_models_load_and_match():
    from experiments.speech_out import SHIPPED_FINE, SpeechModels

    kmeans, vocoder = SHIPPED_FINE["logmel"]
    assert kmeans.exists() and vocoder.exists()
    models = SpeechModels.load(fine_features="logmel")
    assert models.fine.num_units == models.vocoder.num_units == 1000
    assert models.fine.geometry.hop == models.vocoder.hop == 320
    teacher = SpeechModels.load()  # the default stays the teacher's layer-2 units and their vocoder
    assert teacher.fine.num_units == teacher.vocoder.num_units == 100


def test_resynthesize_from_logmel_fine_units(tmp_path, synth_corpus):
    from syllablelm.audio.frames import num_frames
    from syllablelm.audio.io import read_audio
    from syllablelm.units.fine import FineUnitEncoder

    src = tmp_path / "in"
    src.mkdir()
    files = sorted((synth_corpus / "test").rglob("*.flac"))[:2]
    for f in files:
        shutil.copy(f, src / f.name)
    voc = _random_vocoder(tmp_path / "v1000.ckpt", 1000)
    out = tmp_path / "out"
    assert main(["resynthesize", "--from", "fine", "--fine-features", "logmel", "--vocoder", str(voc), "--input",
                 str(src), "--output-dir", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "units.jsonl").read_text().splitlines()]
    enc = FineUnitEncoder.build(SHIPPED / "kmeans_logmel.npy", features="logmel")
    for f, rec in zip(files, lines):
        units, durations = enc(read_audio(f))
        assert rec["fine_units"] == units.tolist() and rec["fine_durations"] == durations.tolist()
        assert max(rec["fine_units"]) < 1000 and sum(rec["fine_durations"]) == num_frames(sf.info(f).frames)
        wave, sr = sf.read(out / rec["output"])
        assert sr == 16000 and len(wave) == 320 * num_frames(sf.info(f).frames)


def test_logmel_units_refuse_a_vocoder_of_other_units(tmp_path, synth_corpus, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted((synth_corpus / "test").rglob("*.flac"))[0], src)
    # the teacher's vocoder (100 units) with the log-mel units (1000): refused before any file, naming both
    assert main(["resynthesize", "--from", "fine", "--fine-features", "logmel", "--vocoder",
                 str(SHIPPED / "vocoder.ckpt"), "--input", str(src), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "100 fine units" in err and "kmeans_logmel.npy has 1000" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_speech_demo_logmel_beside_the_teacher_run(tiny_speech_demo):
    wd = tiny_speech_demo
    teacher_wavs = {p.name: p.read_bytes() for p in (wd / "speech").glob("*.wav")}
    assert main(["speech-demo", "--workdir", str(wd), "--tiny", "--fine-features", "logmel"]) == 0
    report = json.loads((wd / "report.json").read_text())
    s, t = report["speech_out_logmel"], report["speech_out"]
    assert s["fine_features"] == "logmel" and s["fine_units"] == 1000
    assert t.get("fine_features", "teacher") == "teacher"
    for cond in ("original", "fine", "syllable", "uniform", "other"):
        c = s["per"]["conditions"][cond]
        assert c["phones"] > 0 and 0 <= c["ci95"][0] <= c["per"] <= c["ci95"][1]
    # the original audio is the same audio, judged the same way, whichever fine units
    assert s["per"]["conditions"]["original"] == t["per"]["conditions"]["original"]
    md = (wd / "report.md").read_text()
    assert md.index("## Speech out\n") < md.index("## Speech out (log-mel fine units)")
    for e in s["examples"]:
        assert e["fine"].startswith("speech_logmel/")
        wave, sr = sf.read(wd / e["fine"])
        assert sr == 16000 and np.isfinite(wave).all() and len(wave) > 1600
    assert s["figure"] == "figures/speech_out_logmel.png" and (wd / s["figure"]).stat().st_size > 1000
    # its own fine units and interleaved LMs (1000 fine ids), the uniform tokenizer shared with the teacher run
    ilm = torch.load(wd / "runs" / "speech_logmel" / "ilm_syllable" / "checkpoints" / "last.ckpt",
                     map_location="cpu", weights_only=False)
    assert ilm["hyper_parameters"]["fine_vocab"] == 1000
    assert (wd / "runs" / "speech_logmel" / "fine").is_dir()
    assert not (wd / "runs" / "speech_logmel" / "uniform_units").exists()
    markers = {p.name for p in (wd / "logs").iterdir()}
    assert any(n.startswith("speech_ilm_syllable_logmel") for n in markers)
    # the teacher run's WAVs are untouched
    assert {p.name: p.read_bytes() for p in (wd / "speech").glob("*.wav")} == teacher_wavs
