import numpy as np
import pytest
import torch

from syllablelm.boundaries.losspred import (
    GAP,
    HALF,
    group_span_mask,
    loss_matrices,
    mask_groups,
    num_segments,
    similarity,
    span_positions,
)


def pattern_run(rows, span):
    """A fake teacher: the loss of frame c depends on c and on exactly which frames are masked, so every entry
    of C reveals the forward it came from."""
    N, T = span.shape
    weights = torch.arange(1, T + 1, dtype=torch.float64)
    key = (span.double() * weights).sum(1, keepdim=True)  # (N, 1) identifies the mask pattern
    return key * 1000 + torch.arange(T)[None, :]


@pytest.mark.parametrize("T, exact, fits", [(30, True, True), (30, False, True), (160, False, True),
                                            (420, False, True), (97, True, True), (130, False, False)])
def test_every_band_entry_is_filled_once_from_the_right_span(T, exact, fits):
    C = loss_matrices(pattern_run, [T], exact=exact, exact_when_fits=fits)[0]
    groups = mask_groups(T, exact=exact, exact_when_fits=fits)
    group_of = {int(m): g for g, mids in enumerate(groups) for m in mids}
    assert sorted(group_of) == list(span_positions(T)) and len(group_of) == T + 50
    weights = torch.arange(1, T + 1, dtype=torch.float64)
    for r in range(T):
        for c in range(T):
            if c > r and c - r <= HALF:
                mid = r + HALF + 1  # span just right of r
            elif c < r and r - c <= HALF + 1:
                mid = r - HALF - 1  # span just left of r
            else:
                assert torch.isnan(C[r, c]), (r, c)
                continue
            mask = group_span_mask(T, groups[group_of[mid]])
            assert mask[c] and not mask[r]  # the loss is read on a masked frame, the row is visible
            expected = float(((mask.double() * weights).sum() * 1000 + c))
            assert C[r, c] == pytest.approx(expected, rel=1e-6), (r, c)


def test_gap_path_costs_150_forwards_whatever_the_length():
    # T <= gap: one span per forward (T + 50 forwards, the authors' rule); longer: 150 forwards
    assert [len(mask_groups(T)) for T in (50, 100, 150, 151, 400, 2000)] == [100, 150, 200, 150, 150, 150]
    assert all(len(m) == 1 for m in mask_groups(150))
    # strict gap packing (exact_when_fits=False): min(150, T + 50) forwards, two spans in some for T in (100, 150]
    assert [len(mask_groups(T, exact_when_fits=False)) for T in (50, 100, 150, 400)] == [100, 150, 150, 150]
    assert max(len(m) for m in mask_groups(150, exact_when_fits=False)) == 2
    assert len(mask_groups(400, exact=True)) == 450
    for mids in mask_groups(700):
        assert np.all(np.diff(mids) == GAP)
    with pytest.raises(ValueError, match="larger than the span"):
        mask_groups(100, gap=40)


def test_batched_utterances_equal_one_at_a_time():
    torch.manual_seed(0)
    lengths = [80, 37, 160]
    feats = torch.randn(3, 160, 5)

    def runner(f):
        def run(rows, span):  # per-frame, so padding cannot leak into a row's result
            x = f[rows, : span.shape[1]]
            return x.sum(-1) * (1 + span.float()) + span.float().cumsum(1)
        return run

    together = loss_matrices(runner(feats), lengths, forward_batch=7)
    for b, t in enumerate(lengths):
        alone = loss_matrices(runner(feats[b:b + 1, :t]), [t], forward_batch=64)[0]
        torch.testing.assert_close(together[b], alone, equal_nan=True)


def test_similarity_band_and_floor():
    T = 60
    C = loss_matrices(pattern_run, [T], exact=True)[0] / 1e6
    S = similarity(C)
    idx = torch.arange(T)
    dist = (idx[:, None] - idx[None, :]).abs()
    floor = torch.tensor(np.exp(-100.0), dtype=torch.float64)
    assert torch.all(S[dist > HALF] == floor) and torch.all(S.diagonal() == floor)
    inside = (dist <= HALF) & (dist > 0)
    torch.testing.assert_close(S[inside], torch.exp(-C.double())[inside])
    assert S.dtype == torch.float64


@pytest.mark.parametrize("rule", ["authors", "floor"])
def test_segment_count_is_6_25_per_second(rule):
    assert num_segments(400, rule=rule) == 50 and num_segments(7, rule=rule) == 1
    assert num_segments(500, rate_hz=5.0, rule=rule) == 50
    # the authors' float arithmetic loses one segment where T / 50 / 0.16 rounds just below an integer
    assert num_segments(232, rule="floor") == 29 and num_segments(232) == num_segments(232, rule="authors") == 28
    with pytest.raises(ValueError, match="rule"):
        num_segments(100, rule="round")
