"""Speech out (issue 29): resynthesize / continue from the command line, their bad-input handling, and the speech
demo on the session's tiny demo (a tiny end-to-end resynthesis on the CPU: audio -> syllable units -> interleaved
LM -> vocoder -> judge)."""
import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from experiments.cli import main
from experiments.speech_commands import output_names
from syllablelm.checkpoints.vocoders import HYPER_PARAMETERS, STATE_DICT, VOCODER


@pytest.fixture(scope="module")
def tiny_vocoder(tmp_path_factory):
    """A random iSTFT vocoder in this suite's checkpoint format (100 fine units, 50 Hz: the CPU path's)."""
    from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig

    torch.manual_seed(0)
    cfg = ISTFTVocoderConfig()
    model = ISTFTVocoder(cfg)
    assert model.num_units == 100 and model.hop == 320
    path = tmp_path_factory.mktemp("vocoder") / "vocoder.ckpt"
    torch.save({HYPER_PARAMETERS: {VOCODER: cfg.to_dict()},
                STATE_DICT: {f"{VOCODER}.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _audio(folder, synth_corpus, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted((synth_corpus / "test").rglob("*.flac"))[:n]
    for f in files:
        shutil.copy(f, folder / f.name)
    return files


def test_output_names_are_unique():
    from pathlib import Path

    assert output_names([Path("a/x.flac"), Path("b/x.wav"), Path("c/y.flac"), Path("d/x.flac")]) == [
        "x.wav", "x-2.wav", "y.wav", "x-3.wav"]


def test_shipped_fine_labels_absent_is_false_damaged_raises_naming_the_store(tmp_path):
    from datamodules.label_store import LabelStore, label_model_meta
    from datamodules.shard_store import StoreError
    from experiments.speech_demo import shipped_fine_labels

    root = tmp_path / "labels"
    unreadable = rf"^{re.escape(str(root))}: the demo's label store cannot be read: "
    assert shipped_fine_labels(root) is False  # no folder
    (root / "iter_0").mkdir(parents=True)
    assert shipped_fine_labels(root) is False  # a version still being written (no manifest): no version to read
    store = LabelStore(root)
    store.write_shard(0, 0, 1, {"u": np.array([1, 2, 3])})
    store.finalize(0, 1, meta=label_model_meta("teacher", "somewhere/teacher.ckpt", 2, "x/kmeans_layer2.npy"))
    assert shipped_fine_labels(root) is True
    store.write_shard(1, 0, 1, {"u": np.array([1, 2, 3])})
    store.finalize(1, 1, meta=label_model_meta("teacher", "somewhere/teacher.ckpt", 9, "x/kmeans_layer9.npy"))
    assert shipped_fine_labels(root) is False  # readable, another label model
    (root / "iter_1" / "manifest.json").write_text("{not json")  # the newest version's manifest damaged
    with pytest.raises(StoreError, match=unreadable + ".*manifest is unreadable"):
        shipped_fine_labels(root)
    shutil.rmtree(root / "iter_1")
    shard = next(p for p in (root / "iter_0").iterdir() if p.name.startswith("shard-"))
    shard.write_bytes(shard.read_bytes()[:-1])  # a truncated shard: damaged too
    with pytest.raises(StoreError, match=unreadable + ".*damaged"):
        shipped_fine_labels(root)


def test_resynthesize_from_fine_writes_time_aligned_audio_and_streams(tmp_path, synth_corpus, tiny_vocoder):
    files = _audio(tmp_path / "in", synth_corpus)
    out = tmp_path / "out"
    assert main(["resynthesize", "--from", "fine", "--input", str(tmp_path / "in"), "--output-dir", str(out),
                 "--vocoder", str(tiny_vocoder)]) == 0
    lines = [json.loads(x) for x in (out / "units.jsonl").read_text().splitlines()]
    assert [x["output"] for x in lines] == [f.stem + ".wav" for f in files]
    from syllablelm.audio.frames import num_frames

    for f, rec in zip(files, lines):
        wave, sr = sf.read(out / rec["output"])
        n = sf.info(f).frames
        assert sr == 16000 and sum(rec["fine_durations"]) == num_frames(n)
        assert len(wave) == 320 * num_frames(n)  # true durations: one hop per 50 Hz frame, aligned to the input
        assert np.isfinite(wave).all() and len(rec["fine_units"]) == len(rec["fine_durations"])
    # same seed, same bytes
    again = tmp_path / "again"
    assert main(["resynthesize", "--from", "fine", "--input", str(tmp_path / "in"), "--output-dir", str(again),
                 "--vocoder", str(tiny_vocoder)]) == 0
    assert (again / lines[0]["output"]).read_bytes() == (out / lines[0]["output"]).read_bytes()


def test_resynthesize_bad_inputs(tmp_path, synth_corpus, tiny_vocoder, capsys, caplog):
    out = tmp_path / "out"
    base = ["--from", "fine", "--output-dir", str(out), "--vocoder", str(tiny_vocoder)]
    assert main(["resynthesize", "--input", str(tmp_path / "missing"), *base]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["resynthesize", "--input", str(tmp_path / "empty"), *base]) == 2
    assert "no audio files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the whole loop needs a tokenizer and an interleaved LM
        main(["resynthesize", "--input", str(tmp_path / "empty"), "--output-dir", str(out)])
    assert e.value.code == 2 and "--tokenizer" in capsys.readouterr().err
    # one good file, one damaged: the good one is written, the bad one named, exit 4
    mixed = tmp_path / "mixed"
    good = _audio(mixed, synth_corpus, 1)[0]
    (mixed / "broken.flac").write_bytes(b"not audio at all")
    assert main(["resynthesize", "--input", str(mixed), *base]) == 4
    assert "skipped 1 input file" in capsys.readouterr().err
    assert "broken.flac" in caplog.text and "unreadable audio" in caplog.text
    assert (out / f"{good.stem}.wav").exists() and not (out / "broken.wav").exists()
    assert len((out / "units.jsonl").read_text().splitlines()) == 1
    # nothing usable: exit 1 and nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.flac").write_bytes(b"")
    assert main(["resynthesize", "--input", str(bad), "--from", "fine", "--output-dir", str(tmp_path / "none"),
                 "--vocoder", str(tiny_vocoder)]) == 1
    assert not (tmp_path / "none").exists()
    # a vocoder that reads other units than the fine-unit k-means makes: a clear error before any file
    from syllablelm.models.istft_vocoder import ISTFTVocoder, ISTFTVocoderConfig

    cfg = ISTFTVocoderConfig(num_units=7)
    other = tmp_path / "other.ckpt"
    torch.save({HYPER_PARAMETERS: {VOCODER: cfg.to_dict()},
                STATE_DICT: {f"{VOCODER}.{k}": v for k, v in ISTFTVocoder(cfg).state_dict().items()}}, other)
    assert main(["resynthesize", "--input", str(mixed), "--from", "fine", "--output-dir", str(tmp_path / "o2"),
                 "--vocoder", str(other)]) == 1
    assert "7 fine units" in capsys.readouterr().err


@pytest.mark.slow
def test_speech_demo_tiny_end_to_end(tiny_speech_demo):
    wd = tiny_speech_demo
    report = json.loads((wd / "report.json").read_text())
    s = report["speech_out"]
    assert s["voices"] >= 2 and s["utterances"] >= 4
    for cond in ("original", "fine", "syllable", "uniform", "other"):
        c = s["per"]["conditions"][cond]
        assert c["phones"] > 0 and 0 <= c["ci95"][0] <= c["per"] <= c["ci95"][1]
    assert "## Speech out" in (wd / "report.md").read_text()
    for e in s["examples"]:
        for cond in ("original", "fine", "syllable"):
            wave, sr = sf.read(wd / e[cond])
            assert sr == 16000 and len(wave) > 1600 and np.isfinite(wave).all()
    for c in s["continuations"]:
        wave, _ = sf.read(wd / c["wav"])
        assert len(wave) > c["prompt_seconds"] * 16000 + 1600  # the prompt, the pause and generated speech
    assert (wd / s["figure"]).stat().st_size > 1000
    # the interleaved LMs logged generated speech to TensorBoard (validation with the vocoder)
    events = list((wd / "runs" / "speech").rglob("events.out.tfevents*"))
    assert events and any(b"val_audio" in p.read_bytes() for p in events)
    # same seed, same bytes: the evaluation again (every stage skipped) writes the same WAVs
    first = {p.name: p.read_bytes() for p in (wd / "speech").glob("*.wav")}
    shutil.rmtree(wd / "speech")
    assert main(["speech-demo", "--workdir", str(wd), "--tiny"]) == 0
    assert {p.name: p.read_bytes() for p in (wd / "speech").glob("*.wav")} == first


@pytest.mark.slow
def test_continue_and_resynthesize_the_whole_loop(tiny_speech_demo, tmp_path, capsys):
    wd = tiny_speech_demo
    models = ["--tokenizer", str(wd / "runs" / "tokenizer.ckpt"), "--interleaved-lm",
              str(wd / "runs" / "speech" / "ilm_syllable" / "checkpoints" / "last.ckpt")]
    prompt = sorted((wd / "data" / "speech_test" / "test").rglob("*.flac"))[0]
    out = tmp_path / "cont"
    assert main(["continue", "--prompt", str(prompt), "--seconds", "2", "--speechlm",
                 str(wd / "runs" / "speechlm" / "checkpoints" / "last.ckpt"), "--output-dir", str(out), *models]) == 0
    rec = json.loads((out / "units.jsonl").read_text())
    wave, _ = sf.read(out / rec["output"])
    assert rec["prompt_units"] and len(wave) >= sf.info(prompt).frames
    if rec["continuation_units"]:
        assert len(wave) > sf.info(prompt).frames + 1600 and rec["generated_fine_units"]
    out2 = tmp_path / "resyn"
    assert main(["resynthesize", "--input", str(prompt), "--output-dir", str(out2), *models]) == 0
    rec = json.loads((out2 / "units.jsonl").read_text())
    assert rec["syllable_units"] and rec["generated_fine_units"]
    assert len(rec["predicted_durations"]) == len(rec["generated_fine_units"])
    assert min(rec["predicted_durations"]) >= 1
    with pytest.raises(SystemExit):
        main(["continue", "--prompt", str(prompt), "--seconds", "0", "--speechlm", "x", "--output-dir", str(out),
              *models])
    assert "--seconds must be positive" in capsys.readouterr().err


# ---- continue: the interleaved LM continues the prompt's own stream (default) or starts empty -----------------------
class _Fine:
    """The prompt's fine units stub: four runs (50 Hz, 49 frames: one second)."""
    geometry = type("Geometry", (), {"hop": 320, "hz": 50.0})()

    def __call__(self, wave):
        return np.array([3, 5, 3, 7]), np.array([10, 12, 15, 12])


class _Vocoder:
    def predict_durations(self, units):
        return torch.full_like(units, 2)

    def synthesize(self, units, durations):
        return torch.full((int(durations.sum()) * 320,), 0.01)


class _SpeechLM:
    bos = eos = 7

    def generate(self, idx, n, **kw):
        return torch.cat([idx, torch.tensor([[0, 6, 3]])[:, :n]], 1)


def _stub_models():
    """Stubs around a real (random, tiny) interleaved LM: 12 fine units, 7 syllable units, 50 Hz fine frames."""
    from experiments.speech_out import SpeechModels
    from lightning_modules.interleaved_lm import InterleavedLMModule
    from syllablelm.models.gpt import GPTConfig

    torch.manual_seed(0)
    ilm = InterleavedLMModule(network=GPTConfig.tiny(vocab_size=21, n_layer=1, n_head=2, n_embd=16,
                                                     block_size=128).to_dict(),
                              fine_vocab=12, syllable_vocab=7, frames_per_fine=1, lead=5).eval()
    ilm.generation_stats = {"stretch_max": 4, "tail_q90": 4, "max_piece_tokens": 128}
    fed = []
    ilm.net.register_forward_pre_hook(lambda module, args: fed.append(args[0][0].tolist()))

    def tokenizer(wave, sample_rate, deduplicate=True):
        return np.array([[0.0, 0.2], [0.2, 0.5], [0.5, 1.0]]), np.array([1, 4, 2])

    return SpeechModels(tokenizer, _Fine(), _Vocoder(), ilm, _SpeechLM()), fed


def test_continue_conditions_the_fine_units_on_the_prompt_and_the_flag_gives_the_old_behaviour(tmp_path, monkeypatch):
    from experiments import speech_out as so

    models, fed = _stub_models()
    wave = torch.zeros(16000)
    audio, rec = so.continue_speech(models, wave, 1.0, seed=0, name="p")
    # the prompt's stream by hand (fine ids 0..11, syllable u -> 13 + u, the syllable stop 20; lead 5 frames):
    # segments [0, 10], [10, 25], [25, 50] frames; runs 3, 5, 3, 7 start at 0, 10, 22, 37 (midpoints 5, 16, 29.5,
    # 43): group 1; 3 (5 <= 10 - 5); group 4 (16 > 5); 5 (16 <= 20); group 2 (29.5 > 20); 3, 7 (no syllable left).
    # Then the continuation's first group (unit 0).
    assert fed[0] == [14, 20, 3, 17, 20, 5, 15, 20, 3, 7] + [13, 20]
    assert rec["conditioned_on_prompt"] is True
    assert rec["prompt_fine_units"] == [3, 5, 3, 7] and rec["prompt_fine_durations"] == [10, 12, 15, 12]
    assert rec["continuation_units"] == [0, 6, 3] and rec["generated_fine_units"]
    assert len(audio) == 16000 + 1600 + 2 * 320 * len(rec["generated_fine_units"])  # prompt, pause, generated
    # a fine encoder on another grid than the LM's is refused, naming both
    models.fine.geometry = type("Geometry", (), {"hop": 640, "hz": 25.0})()
    with pytest.raises(ValueError, match=r"1 x 50 Hz frames \(320 samples\), the fine units here are 640"):
        so.continue_speech(models, wave, 1.0, seed=0, name="p")
    models.fine.geometry = _Fine.geometry
    # without the prompt's context: the first forward reads the continuation's first group alone
    fed.clear()
    audio, old = so.continue_speech(models, wave, 1.0, seed=0, name="p", prompt_context=False)
    assert fed[0] == [13, 20] and old["conditioned_on_prompt"] is False
    assert "prompt_fine_units" not in old and "prompt_fine_durations" not in old
    assert len(audio) == 16000 + 1600 + 2 * 320 * len(old["generated_fine_units"])
    # the command: default conditioned, --no-prompt-context the old behaviour
    monkeypatch.setattr(so.SpeechModels, "load", lambda **kw: models)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "p.wav", np.zeros(16000, np.float32), 16000)
    args = ["continue", "--prompt", str(tmp_path / "in"), "--seconds", "1", "--speechlm", "lm.ckpt",
            "--tokenizer", "tok.ckpt", "--interleaved-lm", "ilm.ckpt"]
    for flag, conditioned in (([], True), (["--no-prompt-context"], False)):
        out = tmp_path / f"out{len(flag)}"
        assert main([*args, "--output-dir", str(out), *flag]) == 0
        line = json.loads((out / "units.jsonl").read_text())
        assert line["conditioned_on_prompt"] is conditioned and ("prompt_fine_units" in line) is conditioned
