"""lm_eval: the ZR2021 / tSC readers on hand-written gold files, pair accuracy, and the scoring protocol."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from syllablelm.evaluation import pair_sets as L


def _write_set(folder: Path, header: str, rows: list[str], touch: bool = True) -> Path:
    """A gold.csv with ``rows`` and an empty .wav for each row's filename (readers only check existence)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gold.csv").write_text("\n".join([header, *rows]) + "\n")
    cols = header.split(",")
    for row in rows:
        if touch:
            (folder / f"{row.split(',')[cols.index('filename')]}.wav").touch()
    return folder


# ZR2021 lexical: a word and its nonword share id and voice; the rows are not in pair order
LEXICAL = ["1,aWordAlex,Alex,12,brick,b r I k,4,1", "2,bNonBruce,Bruce,,blorp,b l O r p,5,0",
           "1,cNonAlex,Alex,,blick,b l I k,4,0", "2,dWordBruce,Bruce,0,zither,z I D @,4,1",
           "1,eWordBruce,Bruce,12,brick,b r I k,4,1", "1,fNonBruce,Bruce,,blick,b l I k,4,0",
           "3,gWordAlex,Alex,oov,quern,k w 3 n,4,1", "3,hNonAlex,Alex,,quarn,k w A n,4,0"]
LEX_HEADER = "id,filename,voice,frequency,word,phones,length,correct"


def test_read_lexical_pairs_by_id_and_voice(tmp_path):
    _write_set(tmp_path / "lexical" / "dev", LEX_HEADER, LEXICAL)
    pairs = L.read_lexical(tmp_path)
    got = {(p.id, p.voice): (p.real.stem, p.fake.stem, p.in_vocab) for p in pairs}
    assert got == {("1", "Alex"): ("aWordAlex", "cNonAlex", True), ("2", "Bruce"): ("dWordBruce", "bNonBruce", False),
                   ("1", "Bruce"): ("eWordBruce", "fNonBruce", True), ("3", "Alex"): ("gWordAlex", "hNonAlex", False)}
    assert all(p.real.suffix == ".wav" and p.real.parent == tmp_path / "lexical" / "dev" for p in pairs)
    # the folder holding gold.csv works as root too
    assert L.read_lexical(tmp_path / "lexical" / "dev") == pairs


def test_read_lexical_falls_back_to_row_order(tmp_path):
    # no voice column and ids not shared: ZR2021's own rule pairs the k-th word with the k-th nonword
    rows = ["1,w1,5,1", "2,n1,,0", "3,w2,0,1", "4,n2,,0"]
    _write_set(tmp_path, "id,filename,frequency,correct", rows)
    pairs = L.read_lexical(tmp_path)
    assert [(p.real.stem, p.fake.stem, p.in_vocab) for p in pairs] == [("w1", "n1", True), ("w2", "n2", False)]


def test_reader_errors_name_the_file_and_the_problem(tmp_path):
    gold = _write_set(tmp_path / "a", "id,filename,voice", ["1,x,Alex"]) / "gold.csv"
    with pytest.raises(L.GoldError, match=r"a/gold.csv: missing column\(s\) \['correct'\]"):
        L.read_lexical(tmp_path / "a")
    _write_set(tmp_path / "b", "id,filename,voice,correct", ["1,x,Alex,1", "1,y,Alex,0"], touch=False)
    with pytest.raises(FileNotFoundError, match="2 listed audio file"):
        L.read_lexical(tmp_path / "b")
    _write_set(tmp_path / "c", "id,filename,voice,correct", ["1,x,Alex,1", "1,y,Alex,yes"])
    with pytest.raises(L.GoldError, match="row 3: correct must be 1 or 0"):
        L.read_lexical(tmp_path / "c")
    _write_set(tmp_path / "d", "id,filename,voice,correct", ["1,x,Alex,1", "1,y,Alex,1", "2,z,Alex,0"])
    with pytest.raises(L.GoldError, match="2 correct and 1 incorrect"):
        L.read_lexical(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no syntactic set"):
        L.read_syntactic(tmp_path)
    assert gold.exists()


def test_read_syntactic_types_without_voice_column(tmp_path):
    # the brief's minimal columns (no voice): pairs key on (type, subtype, id); ids repeat across subtypes
    rows = ["1,s1,agreement,is_are,1", "1,u1,agreement,is_are,0", "1,s2,word_order,swap,1",
            "1,u2,word_order,swap,0", "2,u3,agreement,is_are,0", "2,s3,agreement,is_are,1"]
    _write_set(tmp_path / "syntactic" / "dev", "id,filename,type,subtype,correct", rows)
    pairs = L.read_syntactic(tmp_path)
    got = sorted((p.type, p.id, p.real.stem, p.fake.stem) for p in pairs)
    assert got == [("agreement", "1", "s1", "u1"), ("agreement", "2", "s3", "u3"), ("word_order", "1", "s2", "u2")]
    assert all(p.in_vocab is None for p in pairs)


def test_read_story_cloze_gold_and_name_layouts(tmp_path):
    rows = ["7,7_correct,Alex,1,A story. True end.", "7,7_incorrect,Alex,0,A story. Other end."]
    _write_set(tmp_path / "tsc" / "dev", "id,filename,voice,correct,transcription", rows)
    assert [(p.id, p.real.name, p.fake.name) for p in L.read_story_cloze(tmp_path)] == [
        ("7", "7_correct.wav", "7_incorrect.wav")]
    names = tmp_path / "names"
    names.mkdir()
    for stem in ("b_correct", "b_incorrect", "a_correct", "a_incorrect"):
        (names / f"{stem}.wav").touch()
    pairs = L.read_story_cloze(names)
    assert [(p.id, p.real.name, p.fake.name) for p in pairs] == [
        ("a", "a_correct.wav", "a_incorrect.wav"), ("b", "b_correct.wav", "b_incorrect.wav")]
    (names / "c_correct.wav").touch()
    with pytest.raises(FileNotFoundError, match=r"unpaired \['c'\]"):
        L.read_story_cloze(names)


def test_pair_accuracy_ties_and_errors():
    assert L.pair_accuracy([3.0, 2.0, 1.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)  # win, tie, loss
    assert L.pair_accuracy([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert L.pair_accuracy([2.0, 5.0, -1.0, 0.0], [1.0, 4.0, -2.0, 0.0]) == pytest.approx(0.875)
    assert math.isnan(L.pair_accuracy([], []))
    with pytest.raises(ValueError, match="real scores"):
        L.pair_accuracy([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        L.pair_accuracy([float("nan")], [1.0])


def _scores(table: dict[str, tuple[float, int]], calls: list | None = None):
    def score_fn(paths):
        if calls is not None:
            calls.append([Path(p).name for p in paths])
        return [table[Path(p).name] for p in paths]
    return score_fn


def test_summed_and_normalised_disagree():
    # pair a: the real item is longer; summed -10 < -8, but per token -1.0 > -2.0
    table = {"ra": (-10.0, 10), "fa": (-8.0, 4), "rb": (-3.0, 3), "fb": (-6.0, 3)}
    pairs = [L.Pair("a", Path("ra"), Path("fa")), L.Pair("b", Path("rb"), Path("fb"))]
    summed = L.evaluate_pairs(pairs, _scores(table), normalise=False)
    normalised = L.evaluate_pairs(pairs, _scores(table), normalise=True)
    assert summed["all"] == {"accuracy": 0.5, "num_pairs": 2, "num_items": 2}
    assert normalised["all"]["accuracy"] == 1.0
    assert summed["chance"] == normalised["chance"] == 0.5
    assert "in_vocab" not in summed and "by_type" not in summed


def test_item_averaging_in_vocab_and_types():
    # item 1 (in-vocab) in two voices: won in one, lost in the other -> 0.5; item 2 (oov) won -> 1.0
    table = {"r1a": (-1.0, 1), "f1a": (-2.0, 1), "r1b": (-3.0, 1), "f1b": (-2.0, 1), "r2": (-1.0, 1), "f2": (-5.0, 1)}
    pairs = [L.Pair("1", Path("r1a"), Path("f1a"), "A", True), L.Pair("1", Path("r1b"), Path("f1b"), "B", True),
             L.Pair("2", Path("r2"), Path("f2"), "A", False)]
    res = L.evaluate_pairs(pairs, _scores(table), normalise=False)
    assert res["all"] == {"accuracy": 0.75, "num_pairs": 3, "num_items": 2}  # not the pair mean 2/3
    assert res["in_vocab"] == {"accuracy": 0.5, "num_pairs": 2, "num_items": 1}
    typed = [L.Pair("1", Path("r1a"), Path("f1a"), type="x"), L.Pair("1", Path("r1b"), Path("f1b"), type="y"),
             L.Pair("2", Path("r2"), Path("f2"), type="y")]
    by_type = L.evaluate_pairs(typed, _scores(table), normalise=True)["by_type"]
    assert by_type == {"x": {"accuracy": 1.0, "num_pairs": 1, "num_items": 1},
                       "y": {"accuracy": 0.5, "num_pairs": 2, "num_items": 2}}


def test_normalised_needs_tokens_and_score_fn_must_answer_each_file():
    pairs = [L.Pair("a", Path("r"), Path("f"))]
    assert L.evaluate_pairs(pairs, _scores({"r": (0.0, 0), "f": (-1.0, 2)}), normalise=False)["all"]["accuracy"] == 1
    with pytest.raises(ValueError, match="0 scored tokens"):
        L.evaluate_pairs(pairs, _scores({"r": (0.0, 0), "f": (-1.0, 2)}), normalise=True)
    with pytest.raises(ValueError, match="returned 1 scores for 2 files"):
        L.evaluate_pairs(pairs, lambda paths: [(0.0, 1)], normalise=True)


def test_evaluate_sets_scores_every_file_once_in_batches(tmp_path):
    _write_set(tmp_path / "lexical" / "dev", LEX_HEADER, LEXICAL)
    rows = ["1,s1,agreement,is_are,1", "1,u1,agreement,is_are,0"]
    _write_set(tmp_path / "syntactic" / "dev", "id,filename,type,subtype,correct", rows)
    tsc = tmp_path / "tsc" / "dev"
    tsc.mkdir(parents=True)
    for stem in ("x_correct", "x_incorrect"):
        (tsc / f"{stem}.wav").touch()
    # real items score higher except the nonword of id 2; the tSC ending loses when summed, wins per token
    table = {f"{r.split(',')[1]}": (-1.0, 1) if r.endswith(",1") else (-2.0, 1) for r in LEXICAL}
    table["bNonBruce"] = (0.0, 1)
    table.update({"s1": (-1.0, 1), "u1": (-1.0, 1), "x_correct": (-9.0, 9), "x_incorrect": (-4.0, 2)})
    calls: list = []
    res = L.evaluate_sets(tmp_path, _scores({f"{k}.wav": v for k, v in table.items()}, calls), batch_size=5)
    assert sorted(n for call in calls for n in call) == sorted(f"{k}.wav" for k in table)  # each file once
    assert [len(c) for c in calls] == [5, 5, 2]
    lex = res["lexical"]
    assert lex["num_pairs"] == 4
    assert lex["summed"]["all"] == {"accuracy": 2 / 3, "num_pairs": 4, "num_items": 3}  # items 1 and 3 won, 2 lost
    assert lex["summed"]["in_vocab"]["accuracy"] == 1.0  # only id 1 is in-vocab (frequency 12)
    assert res["syntactic"]["normalised"]["by_type"]["agreement"]["accuracy"] == 0.5  # a tie
    assert res["tsc"]["summed"]["all"]["accuracy"] == 0.0 and res["tsc"]["normalised"]["all"]["accuracy"] == 1.0
    with pytest.raises(FileNotFoundError, match="none of"):
        L.evaluate_sets(tmp_path / "empty", _scores(table))
