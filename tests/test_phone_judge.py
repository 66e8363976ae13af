"""The intelligibility judge (syllablelm.evaluation.phone_judge), its training module and its data."""
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.phone_data import PhoneDataModule, PhoneDataset, collate, split_items
from lightning_modules.phone_judge import PhoneJudgeModule
from syllablelm.audio.alignments import SegmentError
from syllablelm.audio.io import read_audio
from syllablelm.evaluation.phone_judge import (
    PHONES,
    JudgeNetwork,
    PhoneJudge,
    PhoneRecognizer,
    greedy_decode,
    load_judge,
    phone_error_rate,
    phone_errors,
    phone_ids,
    phones_of_alignment,
    reverse_padded,
    save_judge,
    strip_stress,
)
from tests.conftest import REPO

SHIPPED = REPO / "experiments" / "pretrained" / "judge.ckpt"
TINY = {"conv_channels": 16, "hidden": 16, "layers": 2, "dropout": 0.0}


def levenshtein(a, b) -> int:
    """Textbook dynamic programme (kept apart from torchaudio's, which the module uses)."""
    d = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    d[:, 0], d[0, :] = np.arange(len(a) + 1), np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    return int(d[-1, -1])


def test_inventory_and_stress_stripping(tmp_path):
    assert len(PHONES) == len(set(PHONES)) == 67 and list(PHONES) == sorted(PHONES)
    assert not any("'" in p or "," in p for p in PHONES)
    assert strip_stress("'oU") == "oU" and strip_stress(",E") == "E" and strip_stress("I#") == "I#"
    raw = {"phones": [[0.0, 0.1, "D"], [0.1, 0.2, "'oU"], [0.25, 0.3, "sil"], [0.3, 0.4, ",E"], [0.4, 0.5, "I#"],
                      [0.5, 0.6, "@2"], [0.6, 0.7, ";"]]}
    expected = ["D", "oU", "E", "I#", "@2", ";"]
    assert phones_of_alignment(raw) == expected
    path = tmp_path / "u.json"
    path.write_text(json.dumps(raw))
    assert phones_of_alignment(path) == expected  # from a file (via load_alignment's (times, labels))
    assert phone_ids(expected) == [PHONES.index(p) + 1 for p in expected]  # 0 is the blank
    with pytest.raises(ValueError, match="where.json.*'zz'"):
        phone_ids(["D", "zz"], where="where.json")


def test_greedy_ctc_decoding_of_hand_made_logits():
    # frame-wise best classes: blank, 3, 3, blank, 3, 5, 5, blank, blank, 2, 2 -> 3 (repeat), 3 (after a blank), 5, 2
    best = [0, 3, 3, 0, 3, 5, 5, 0, 0, 2, 2]
    logits = torch.full((len(best), 7), -1.0)
    logits[torch.arange(len(best)), torch.tensor(best)] = 2.0
    assert greedy_decode(logits) == [3, 3, 5, 2]
    assert greedy_decode(logits, length=6) == [3, 3, 5]  # only the first 6 frames
    assert greedy_decode(torch.zeros(4, 3).index_fill_(1, torch.tensor([0]), 1.0)) == []  # all blank


def test_phone_errors_against_hand_counted_distances():
    assert phone_errors(["k", "a", "t"], ["k", "a", "t"]) == (0, 3)
    assert phone_errors(["a", "b", "c"], ["a", "c"]) == (1, 2)  # one insertion
    assert phone_errors(["k", "u", "t", "s"], ["k", "a", "t"]) == (2, 3)  # one substitution, one insertion
    assert phone_errors([], ["D", "E"]) == (2, 2)  # two deletions
    # PER of a set: summed distances over summed reference lengths (not a mean of per-utterance rates)
    assert phone_error_rate([(["a", "b", "c"], ["a", "c"]), ([], ["D", "E", "n", "t"])]) == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    for _ in range(30):
        ref = rng.choice(list(PHONES[:6]), size=rng.integers(1, 9)).tolist()
        hyp = rng.choice(list(PHONES[:6]), size=rng.integers(0, 9)).tolist()
        assert phone_errors(hyp, ref) == (levenshtein(ref, hyp), len(ref))


def test_padded_batch_equals_each_utterance_alone():
    torch.manual_seed(0)
    x = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    rev = reverse_padded(x, torch.tensor([5, 3]))
    assert rev[0, :, 0].tolist() == [4, 3, 2, 1, 0] and rev[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    model = PhoneRecognizer(JudgeNetwork(**TINY)).eval()
    feats, lengths = torch.randn(3, 41, 80), torch.tensor([41, 30, 17])  # odd and even lengths
    logits, out_lengths = model(feats, lengths)
    assert out_lengths.tolist() == [21, 15, 9]
    for i in range(3):
        alone, _ = model(feats[i:i + 1, :lengths[i]], lengths[i:i + 1])
        torch.testing.assert_close(alone[0], logits[i, :out_lengths[i]], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(1)
    model = PhoneRecognizer(JudgeNetwork(**TINY)).eval()
    path = tmp_path / "judge.ckpt"
    save_judge(path, model, recipe={"note": "test"})
    judge = load_judge(path)
    assert judge.phones == PHONES and judge.model.config == model.config
    feats, lengths = torch.randn(1, 50, 80), torch.tensor([50])
    torch.testing.assert_close(judge.model(feats, lengths)[0], model(feats, lengths)[0], atol=2e-2, rtol=2e-2)
    waves = [torch.randn(16_000) * 0.1, torch.randn(8_000) * 0.1]
    batch = judge.transcribe_batch(waves)
    assert batch == [judge.transcribe(w) for w in waves] and all(p in PHONES for h in batch for p in h)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not a phone judge"):
        load_judge(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_judge(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="wave 0"):
        judge.transcribe(torch.zeros(0))


def test_shipped_judge_loads_small_and_reads_synthetic_speech(synth_corpus):
    assert SHIPPED.is_file() and SHIPPED.stat().st_size <= 4 * 2**20
    judge = load_judge(SHIPPED)
    assert isinstance(judge, PhoneJudge) and judge.phones == PHONES
    # the fixture's dev voice is eSpeak's "boris" variant, one the judge trained on (other speaker settings, other
    # sentences): ~2 % PER when shipped; untrained or broken weights give ~100 %
    items = split_items(synth_corpus, "dev")[:4]
    hyps = judge.transcribe_batch([read_audio(a) for _, a, _ in items])
    refs = [judge.phones_of_alignment(j) for _, _, j in items]
    assert phone_error_rate(list(zip(hyps, refs))) < 0.15


def test_module_trains_a_tiny_batch(synth_corpus):
    pl.seed_everything(0)
    data = PhoneDataset(split_items(synth_corpus, "train", limit=4))
    batch = collate([data[i] for i in range(len(data))])
    module = PhoneJudgeModule(network=TINY, lr=1e-2, warmup=0, hold=100, decay=1, freq_masks=0, time_masks=0,
                              noise_prob=0.0)
    opt = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(25):
        logits, out_lengths = module(module.augment(batch["feats"], batch["lengths"]), batch["lengths"])
        loss = module._loss(logits, out_lengths, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses


def test_fit_and_export_through_lightning(synth_corpus, tmp_path):
    from lightning_modules.phone_judge import main as judge_main

    data = PhoneDataModule(str(synth_corpus), train_split="train", val_split="dev", batch_size=2, limit=4)
    module = PhoneJudgeModule(network=TINY)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert 0.0 <= trainer.callback_metrics["val/per"] and torch.isfinite(trainer.callback_metrics["train/loss"])
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    assert judge_main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "j.pt"), "--note", "a=b"]) == 0
    payload = torch.load(tmp_path / "j.pt", weights_only=True)
    assert payload["recipe"]["a"] == "b" and "optimizer_states" not in payload
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())


def test_bad_inputs_name_the_file(tmp_path):
    corpus = tmp_path / "corpus"
    folder = corpus / "train" / "1" / "10"
    folder.mkdir(parents=True)
    sf.write(folder / "1-10-0000.flac", np.zeros(16_000, dtype=np.float32), 16_000)
    with pytest.raises(FileNotFoundError, match="1-10-0000.flac: no alignment"):
        split_items(corpus, "train")
    aligned = corpus / "alignments" / "train" / "1" / "10"
    aligned.mkdir(parents=True)
    (aligned / "1-10-0000.json").write_text(json.dumps({"words": [[0.1, 0.5, "a"]]}))
    with pytest.raises(SegmentError, match="1-10-0000.json: no 'phones' tier"):
        PhoneDataset(split_items(corpus, "train"))
    (aligned / "1-10-0000.json").write_text(json.dumps({"phones": [[0.1, 0.2, "'a"]]}))
    (folder / "1-10-0000.flac").unlink()
    sf.write(folder / "1-10-0000.wav", np.zeros(0, dtype=np.float32), 16_000)  # a WAV can hold no samples
    with pytest.raises(ValueError, match="1-10-0000.wav.*empty"):
        PhoneDataset(split_items(corpus, "train"))
    with pytest.raises(SegmentError, match="nowhere.json: no such alignment file"):
        phones_of_alignment(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="no such split folder"):
        split_items(corpus, "dev")


def test_reserved_sentences_never_train_the_judge(tmp_path):
    from lightning_modules.phone_judge import main as judge_main
    from syllablelm.evaluation.phone_judge import RESERVED_EVERY, judge_sentences
    from syllablelm.synthesis.plan import load_sentences

    pool = ["s0", "s1", "s2", "s3", "s4", "s5", "s0", "s7", "s8"]  # "s0" twice: index 0 (reserved) and 6
    train, reserved = judge_sentences(pool)
    assert RESERVED_EVERY == 4 and reserved == ["s0", "s4", "s8"] and train == ["s1", "s2", "s3", "s5", "s7"]
    train, reserved = judge_sentences(load_sentences())
    assert not set(train) & set(reserved) and len(reserved) == -(-len(load_sentences()) // 4)
    out = tmp_path / "t.txt", tmp_path / "r.txt"
    assert judge_main(["sentences", "--train-out", str(out[0]), "--reserved-out", str(out[1])]) == 0
    assert load_sentences(out[0]) == train and load_sentences(out[1]) == reserved


def test_score_command_on_a_corpus_split(synth_corpus, tmp_path, capsys):
    from lightning_modules.phone_judge import main as judge_main

    torch.manual_seed(0)
    save_judge(tmp_path / "j.pt", PhoneRecognizer(JudgeNetwork(**TINY)))
    assert judge_main(["score", "--judge", str(tmp_path / "j.pt"), "--corpus", str(synth_corpus), "--split", "test",
                       "--out", str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    rows = report["utterances_scored"]
    assert report["per"] == pytest.approx(sum(r["errors"] for r in rows) / sum(r["length"] for r in rows))
    assert report["per_low"] <= report["per"] <= report["per_high"] and "PER" in capsys.readouterr().out
    assert all(r["errors"] == levenshtein(r["ref"], r["hyp"]) for r in rows)
