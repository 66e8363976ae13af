"""LibriSpeech syllable references (SD-HuBERT JSON, Peng et al. strings, MFA TextGrids) -> alignment contract."""
import json
import logging

import numpy as np
import pytest

from datamodules.aligned import load_split
from experiments.evaluate import evaluate_tokenizer
from experiments.import_references import main as references_main
from syllablelm.audio.alignments import SegmentError, index_alignments, load_alignment
from syllablelm.audio.references import (
    alignment_path,
    detect_format,
    parse_peng,
    parse_textgrid,
    read_references,
    write_references,
)
from syllablelm.evaluation.boundary_metrics import boundary_scores
from syllablelm.evaluation.cluster_metrics import cluster_scores, strip_stress
from tests.conftest import make_librispeech

# "extra abstract", then "this time" (no pause between the two words), then an <unk> (spn) and silences
WORDS = [(0.0, 0.1, ""), (0.1, 0.5, "extra"), (0.5, 0.6, ""), (0.6, 1.2, "abstract"), (1.2, 1.4, "this"),
         (1.4, 1.7, "time"), (1.7, 1.9, "<unk>"), (1.9, 2.0, "")]
PHONES = [(0.0, 0.1, "sil"), (0.1, 0.2, "EH1"), (0.2, 0.25, "K"), (0.25, 0.32, "S"), (0.32, 0.37, "T"),
          (0.37, 0.42, "R"), (0.42, 0.5, "AH0"), (0.5, 0.6, "sp"), (0.6, 0.7, "AE1"), (0.7, 0.75, "B"),
          (0.75, 0.82, "S"), (0.82, 0.87, "T"), (0.87, 0.92, "R"), (0.92, 1.02, "AE2"), (1.02, 1.1, "K"),
          (1.1, 1.2, "T"), (1.2, 1.25, "DH"), (1.25, 1.33, "IH1"), (1.33, 1.4, "S"), (1.4, 1.5, "T"),
          (1.5, 1.62, "AY1"), (1.62, 1.7, "M"), (1.7, 1.9, "spn"), (1.9, 2.0, "")]
SYLLABLES = [[0.1, 0.25, "EH1 K"], [0.25, 0.5, "S T R AH0"],  # ek.stra: pure maximal onset (the default)
             [0.6, 0.75, "AE1 B"], [0.75, 1.2, "S T R AE2 K T"],  # ab.stract
             [1.2, 1.4, "DH IH1 S"], [1.4, 1.7, "T AY1 M"]]  # never "DH IH1 | S T AY1 M" across the words
S_CODA = [[0.1, 0.32, "EH1 K S"], [0.32, 0.5, "T R AH0"],  # ex.tra: the synthetic corpus's rule
          [0.6, 0.82, "AE1 B S"], [0.82, 1.2, "T R AE2 K T"]] + SYLLABLES[4:]


def long_textgrid(tiers: dict, xmax: float = 2.0) -> str:
    """Praat's long text format, as MFA writes it."""
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {xmax}",
           "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for i, (name, rows) in enumerate(tiers.items(), 1):
        out += [f"    item [{i}]:", '        class = "IntervalTier"', f'        name = "{name}"',
                "        xmin = 0", f"        xmax = {xmax}", f"        intervals: size = {len(rows)}"]
        for j, (a, b, t) in enumerate(rows, 1):
            out += [f"        intervals [{j}]:", f"            xmin = {a}", f"            xmax = {b}",
                    f'            text = "{t}"']
    return "\n".join(out) + "\n"


def short_textgrid(tiers: dict, xmax: float = 2.0) -> str:
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", str(xmax), "<exists>", str(len(tiers))]
    for name, rows in tiers.items():
        out += ['"IntervalTier"', f'"{name}"', "0", str(xmax), str(len(rows))]
        for a, b, t in rows:
            out += [str(a), str(b), f'"{t}"']
    return "\n".join(out) + "\n"


def test_textgrid_maximal_onset_inside_words_with_gaps(tmp_path, caplog):
    (tmp_path / "spk").mkdir()
    (tmp_path / "spk" / "19-198-0001.TextGrid").write_text(long_textgrid({"words": WORDS, "phones": PHONES}))
    (tmp_path / "19-198-0002.TextGrid").write_bytes(
        short_textgrid({"speaker - words": WORDS, "speaker - phones": PHONES}).encode("utf-16"))
    with caplog.at_level(logging.INFO, logger="syllablelm.audio.references"):
        refs = read_references(tmp_path)  # a folder: auto-detected as TextGrids, searched recursively
    assert sorted(refs) == ["19-198-0001", "19-198-0002"]
    assert refs["19-198-0001"] == refs["19-198-0002"]  # long and short formats read alike
    ali = refs["19-198-0001"]
    assert ali["syllables"] == SYLLABLES
    assert [w[2] for w in ali["words"]] == ["extra", "abstract", "this", "time"]  # silences and <unk> are gaps
    assert [p[2] for p in ali["phones"]][:3] == ["EH1", "K", "S"] and len(ali["phones"]) == len(PHONES) - 4
    assert [strip_stress(s[2]) for s in ali["syllables"]][:2] == ["EH K", "S T R AH"]
    assert "2 utterances" in caplog.text
    assert read_references(tmp_path, onset_rule="s_coda")["19-198-0001"]["syllables"] == S_CODA


def test_textgrid_errors_name_file_and_line(tmp_path):
    good = long_textgrid({"words": WORDS, "phones": PHONES})
    with pytest.raises(SegmentError, match=r"ends early"):
        parse_textgrid(good[: len(good) // 2], "x.TextGrid")
    with pytest.raises(SegmentError, match=r"x.TextGrid: line 20: expected a number, got 'oops'"):
        parse_textgrid(good.replace("xmin = 0.1\n", 'xmin = "oops"\n', 1), "x.TextGrid")
    ipa = tmp_path / "ipa.TextGrid"
    ipa.write_text(long_textgrid({"words": [(0.0, 0.3, "hi")], "phones": [(0.0, 0.1, "h"), (0.1, 0.3, "aj")]}))
    with pytest.raises(SegmentError, match=r"ipa.TextGrid: phone 'H' .* not ARPAbet"):
        read_references(ipa, "textgrid")
    words_only = tmp_path / "w.TextGrid"
    words_only.write_text(long_textgrid({"words": WORDS}))
    with pytest.raises(SegmentError, match=r"w.TextGrid: expected one interval tier named '\*phones'"):
        read_references(words_only)


def sdhubert_json(tmp_path):
    data = {
        "0": {"file_name": "test-clean/1089/134686/1089-134686-0000.flac",
              "syllables": [{"start": "0.52", "end": "0.74", "label": "HH AH0"},
                            {"start": 0.74, "end": 1.01, "label": "L OW1"},
                            {"start": 1.01, "end": 1.2, "label": "sil"},  # a labelled pause: a gap
                            {"start": 1.2, "end": 1.55, "label": "W ER1 L D"}]},
        "1": {"file_name": "test-clean/1089/134686/1089-134686-0001.flac", "syllables": []},
    }
    path = tmp_path / "librispeech_syllable_test.json"
    path.write_text(json.dumps(data))
    return path, data


def test_sdhubert_exact_segments_and_skips(tmp_path, caplog):
    path, data = sdhubert_json(tmp_path)
    assert detect_format(path) == "sdhubert"
    with caplog.at_level(logging.INFO, logger="syllablelm.audio.references"):
        refs = read_references(path)
    assert refs == {"1089-134686-0000": {"syllables": [[0.52, 0.74, "HH AH0"], [0.74, 1.01, "L OW1"],
                                                       [1.2, 1.55, "W ER1 L D"]]}}
    assert "1 silence segments" in caplog.text and "1 utterances without syllables" in caplog.text
    data["0"]["syllables"][1] = {"start": 0.74}
    path.write_text(json.dumps(data))
    with pytest.raises(SegmentError, match=r"librispeech_syllable_test.json \[entry '0'\]: syllable 1"):
        read_references(path, "sdhubert")
    data["0"]["syllables"][1] = {"start": 0.6, "end": 1.0, "label": "L OW1"}  # overlaps its neighbour
    path.write_text(json.dumps(data))
    with pytest.raises(SegmentError, match=r"\[entry '0'\] \[syllables\]: segments 0 and 1 overlap"):
        read_references(path, "sdhubert")


def test_peng_strings(tmp_path, caplog):
    rows = parse_peng("0.5__hh_ah0__0.72  0.72__l_ow1__1.01 junk 1.2__w_er1_l_d__1.5", "x")
    assert rows == [(0.5, 0.72, "hh_ah0"), (0.72, 1.01, "l_ow1"), (1.2, 1.5, "w_er1_l_d")]
    data = {"data": [
        {"wav": "dev-clean/84/121123/84-121123-0000.flac", "syllable_alignment": "0.5__HH AH0__0.72".replace(" ", "_"),
         "text_alignment": "0.5__hello__1.01 1.01__<blank>__1.2"},
        {"caption": {"wav": "wavs/val/0/m1-abc.wav"}, "syllable_alignment": "0.1__K AE1 T__0.4".replace(" ", "-")},
        {"wav": "dev-clean/84/121123/84-121123-0001.flac"},  # no syllable_alignment: skipped
    ]}
    path = tmp_path / "ls_dev_with_alignments.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="syllablelm.audio.references"):
        refs = read_references(path)
    assert refs == {"84-121123-0000": {"syllables": [[0.5, 0.72, "HH_AH0"]], "words": [[0.5, 1.01, "hello"]]},
                    "m1-abc": {"syllables": [[0.1, 0.4, "K-AE1-T"]]}}
    assert "1 items without syllable_alignment" in caplog.text and "1 silence segments" in caplog.text
    assert strip_stress("HH_AH0") == "HH_AH"
    path.write_text(json.dumps([{"wav": "a.flac", "syllable_alignment": "0.1__a__0.2 x__b__0.4"}]))  # a list root
    with pytest.raises(SegmentError, match=r"\[item 0\] \(a.flac\) syllable_alignment: token 1 'x__b__0.4'"):
        read_references(path)
    path.write_text(json.dumps([{"syllable_alignment": "0.1__a__0.2"}]))
    with pytest.raises(SegmentError, match=r"\[item 0\]: no 'wav'"):
        read_references(path, "peng")


def test_converter_writes_the_layout_evaluate_reads(tmp_path):
    path, _ = sdhubert_json(tmp_path)
    out = tmp_path / "refs"
    assert references_main(["--format", "sdhubert", "--input", str(path), "--out", str(out)]) == 0
    target = out / "1089" / "134686" / "1089-134686-0000.json"
    assert alignment_path(out, "1089-134686-0000") == target and alignment_path(out, "m1-abc") == out / "m1-abc.json"
    assert index_alignments(out) == {"1089-134686-0000": target, "1089/134686/1089-134686-0000": target}
    times, labels = load_alignment(target)["syllables"]
    np.testing.assert_allclose(times, [[0.52, 0.74], [0.74, 1.01], [1.2, 1.55]])
    assert labels == ["HH AH0", "L OW1", "W ER1 L D"]
    with pytest.raises(ValueError, match="unsafe"):
        alignment_path(out, "../x")


class FixedTokenizer:
    """Predicts the same segments for every utterance (stands in for a trained tokenizer)."""
    vocab_size = 4

    def __init__(self, segments, units):
        self.segments, self.units = np.asarray(segments, dtype=float), np.asarray(units)

    def batch(self, waves, sr, deduplicate=False):
        return [(self.segments, self.units) for _ in waves]


def test_end_to_end_boundaries_and_clustering(tmp_path, caplog):
    ids = make_librispeech(tmp_path / "test-clean", speakers=2, utts=2, seconds=(1.0, 1.5))
    syllables = [{"start": 0.1, "end": 0.3, "label": "HH AH0"}, {"start": 0.3, "end": 0.5, "label": "L OW1"},
                 {"start": 0.6, "end": 0.8, "label": "HH AH1"}]
    refs = {uid: {"file_name": f"test-clean/x/y/{uid}.flac", "syllables": syllables} for uid in ids}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    write_references(read_references(tmp_path / "refs.json"), tmp_path / "ali")
    waves, ref, got_ids = load_split([str(tmp_path / "test-clean")], str(tmp_path / "ali"))
    assert sorted(got_ids) == sorted(ids) and len(waves) == 4
    # prediction boundaries {0.12, 0.3, 0.7} against {0.1, 0.3, 0.5, 0.6, 0.8}: 2 hits of 3, of 5
    pred = [np.array([[0.12, 0.3], [0.3, 0.7]])] * 4
    s = boundary_scores(pred, ref, protocol="syllablelm")
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 5)
    s = boundary_scores(pred, ref, protocol="sdhubert")  # starts only: {0.12, 0.3}
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(2 / 5)
    labels = [load_alignment(index_alignments(tmp_path / "ali")[i])["syllables"][1] for i in got_ids]
    c = cluster_scores(ref, [np.array([0, 1, 0])] * 4, ref, labels)  # HH AH0 and HH AH1: one type after stripping
    assert (c["cpur"], c["spur"], c["snmi"]) == (1.0, 1.0, pytest.approx(1.0))
    tok = FixedTokenizer([[0.1, 0.3], [0.3, 0.5], [0.6, 0.8]], [0, 1, 0])
    report = evaluate_tokenizer(tok, (waves, ref, labels), (waves, ref, labels))
    assert report["boundaries"]["syllablelm"]["f1"] == pytest.approx(1.0) and report["clustering"]["spur"] == 1.0
    with caplog.at_level(logging.INFO, logger="experiments.evaluate"):
        report = evaluate_tokenizer(tok, (waves, ref, [[""] * 3] * 4), (waves, ref, [[""] * 3] * 4))
    assert report["clustering"] is None and "clustering skipped" in caplog.text


def test_sdhubert_without_labels_reads_empty_labels(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"a": {"file_name": "a.flac", "syllables": [{"start": 0.1, "end": 0.2}]}}))
    assert read_references(path) == {"a": {"syllables": [[0.1, 0.2, ""]]}}

    with pytest.raises(ValueError, match="unknown reference format"):
        read_references(path, "nonsense")
