"""The interleaved vocoder LM's token stream (issue 29, item 2): golden interleavings written by hand from the rule
of the authors' ``interleave5`` (docs/algorithms.md, "Interleaved vocoder LM: the token stream")."""
import numpy as np
import pytest

from syllablelm.units.interleave import IGNORE, InterleavedVocab, interleave

V = InterleavedVocab(fine=10, syllable=5)  # fine 0..9, stop_fine 10, syllables 11..15, stop_syllable 16, pad 17
X = IGNORE


def test_vocabulary_layout():
    assert (V.stop_fine, V.syllable_offset, V.stop_syllable, V.pad, V.size) == (10, 11, 16, 17, 18)


def test_the_worked_example():
    # fine runs at 25 Hz (2 frames of 50 Hz each): [0, 6) mid 3, [6, 14) mid 10, [14, 24) mid 19, [24, 40) mid 32;
    # syllables 1 on [0, 20] and 2 on [20, 40]: the second goes in once a fine midpoint passes 20 - 5 = 15
    out = interleave([3, 4, 5, 6], [3, 4, 5, 8], [1, 2], [[0, 20], [20, 40]], V)
    assert out.tokens.tolist() == [12, 16, 3, 4, 13, 16, 5, 6]
    assert out.targets.tolist() == [X, 3, 4, 10, X, 5, 6, X]
    assert out.is_syllable.tolist() == [True, False, False, False, True, False, False, False]


def test_the_first_syllable_comes_before_any_fine_unit_and_syllables_are_never_targets():
    out = interleave([7], [1], [4], [[0, 2]], V)
    assert out.tokens.tolist() == [15, 16, 7] and out.targets.tolist() == [X, 7, X]
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, m = int(rng.integers(1, 12)), int(rng.integers(1, 6))
        edges = np.sort(rng.choice(np.arange(1, 200), m - 1, replace=False)) if m > 1 else np.array([], int)
        bounds = np.concatenate([[0], edges, [200]])
        out = interleave(rng.integers(0, 10, n), rng.integers(1, 6, n), rng.integers(0, 5, m),
                         np.stack([bounds[:-1], bounds[1:]], 1), V)
        assert out.is_syllable[0] and out.tokens[0] >= V.syllable_offset
        predicted = set(out.targets[out.targets != IGNORE].tolist())
        assert predicted <= set(range(V.fine + 1))  # fine units and the fine stop only
        fine = out.tokens[(out.tokens < V.fine)]
        assert len(fine) == n and len(out.tokens) == n + 2 * m  # every unit once, one stop per group
        assert (out.targets[:-1][out.tokens[1:] < V.fine] == out.tokens[1:][out.tokens[1:] < V.fine]).all()


def test_the_insertion_time_compares_fine_midpoints_with_the_next_start_minus_100_ms():
    # one fine unit [0, 10) at 50 Hz (frames_per_fine 1), midpoint 5; the second syllable starts at 10 or 11:
    # 5 <= 10 - 5 puts the fine unit first; a start of 9 (4 < 5) puts the syllable first
    first = interleave([2, 3], [10, 10], [0, 1], [[0, 10], [10, 20]], V, frames_per_fine=1)
    assert first.tokens.tolist() == [11, 16, 2, 12, 16, 3]
    assert first.targets.tolist() == [X, 2, 10, X, 3, X]
    later = interleave([2, 3], [10, 10], [0, 1], [[0, 9], [9, 20]], V, frames_per_fine=1)
    assert later.tokens.tolist() == [11, 16, 12, 16, 2, 3]
    assert later.targets.tolist() == [X, 10, X, 2, 3, X]  # back-to-back groups: the stop_syllable predicts the stop


def test_groups_of_syllables_share_one_stop():
    out = interleave([1], [40], [0, 1, 2], [[0, 5], [5, 10], [10, 15]], V, grouping=2)
    # group [0, 1] then group [2]; the fine unit (midpoint 40) comes last
    assert out.tokens.tolist() == [11, 12, 16, 13, 16, 1]
    assert out.targets.tolist() == [X, X, 10, X, 1, X]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one duration per fine unit"):
        interleave([1, 2], [1], [0], [[0, 1]], V)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        interleave([10], [1], [0], [[0, 1]], V)


def test_deinterleave_recovers_both_streams():
    from syllablelm.units.interleave import deinterleave

    rng = np.random.default_rng(1)
    for grouping in (1, 2, 3):
        for _ in range(30):
            n, m = int(rng.integers(0, 15)), int(rng.integers(1, 8))
            fine = rng.integers(0, 10, n)
            bounds = np.r_[0, np.sort(rng.choice(np.arange(1, 300), m - 1, replace=False)), 300]
            syl = rng.integers(0, 5, m)
            out = interleave(fine, rng.integers(1, 9, n), syl, np.stack([bounds[:-1], bounds[1:]], 1), V,
                             grouping=grouping)
            got_fine, got_syl, owner = deinterleave(out.tokens, V, with_owner=True)
            assert got_fine.tolist() == fine.tolist() and got_syl.tolist() == syl.tolist()
            assert (np.diff(owner) >= 0).all() and (owner >= 0).all()  # the first group comes before any fine unit
    # the worked example: 3 4 follow syllable 0, 5 6 follow syllable 1; padding and stops are dropped
    f, s, o = deinterleave([12, 16, 3, 4, 13, 16, 5, 6, V.pad, V.pad], V, with_owner=True)
    assert (f.tolist(), s.tolist(), o.tolist()) == ([3, 4, 5, 6], [1, 2], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        deinterleave([18], V)


def test_pieces_cut_at_groups_within_the_authors_size():
    from syllablelm.units.interleave import split_pieces

    # blocks: [12 16 3 4] (size 2 + 3 = 5), [13 16 5 6 7] (3 + 3 = 6), [14 16 8] (1 + 3 = 4)
    # at 50 Hz: fine midpoints 2, 6 | 9, 11, 13 | 15; syllables start at 12 and 19 (thresholds 7 and 14)
    out = interleave([3, 4, 5, 6, 7, 8], [4, 4, 2, 2, 2, 2], [1, 2, 3], [[0, 12], [12, 19], [19, 30]], V,
                     frames_per_fine=1)
    assert out.tokens.tolist() == [12, 16, 3, 4, 13, 16, 5, 6, 7, 14, 16, 8]
    whole, lost = split_pieces(out, V, 15)
    assert lost == 0 and len(whole) == 1 and whole[0].tokens.tolist() == out.tokens.tolist()
    pieces, lost = split_pieces(out, V, 11)  # 5 + 6 fit, the third block starts a new piece
    assert [p.tokens.tolist() for p in pieces] == [[12, 16, 3, 4, 13, 16, 5, 6, 7], [14, 16, 8]]
    assert [p.targets.tolist() for p in pieces] == [[X, 3, 4, 10, X, 5, 6, 7, X], [X, 8, X]]
    pieces, lost = split_pieces(out, V, 4)  # one syllable (3) and at most one fine unit a piece
    assert [p.tokens.tolist() for p in pieces] == [[12, 16, 3], [13, 16, 5], [14, 16, 8]] and lost == 3
    with pytest.raises(ValueError, match="holds no group"):
        split_pieces(out, V, 2)
