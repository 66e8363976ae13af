"""LossPred's defaults against the authors' arithmetic (SyllableLM ``Experiments.ipynb``: ``fast_get_hubert_losses``,
``process_loss_multiple``, ``min_cut_efficient``), restated here in our own code, never imported from the package.

Each test also runs the named option that keeps the previous behaviour and checks that it differs on inputs where
the two disagree, so the test would fail had the default not changed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.teacher import LossPredConfig, TeacherModule
from syllablelm import checkpoints as ck
from syllablelm.boundaries.losspred import (
    frame_losses,
    group_span_mask,
    loss_matrices,
    losspred_cut,
    mask_groups,
    num_segments,
)
from syllablelm.checkpoints import fairseq_hubert as cw
from syllablelm.models.hubert import HubertTeacher, TeacherConfig
from tests.test_teacher import fake_batch

LEFT, RIGHT = 25, 26  # the notebook's ssl, ssr for window_size = 51
HOP = 320


# ---------------------------------------------------------------- item 1: exact path when the utterance fits a gap
def authors_mask_rows(T: int, gap: int | None) -> tuple[list[list[int]], int | None]:
    """The notebook's forwards: span centres masked in each forward, and the gap actually used (None = exact).
    ``if gap_size is not None and gap_size >= T: gap_size = None``; exact: one row per mid in [-25, T + 25);
    else row idx masks mid = -25 + idx and every gap-th centre after it below T + 25."""
    if gap is not None and gap >= T:
        gap = None
    if gap is None:
        return [[mid] for mid in range(-LEFT, T + RIGHT - 1)], None
    return [list(range(mid, T + RIGHT - 1, gap)) for mid in range(-LEFT, -LEFT + gap)], gap


def authors_loss_matrix(T: int, gap: int | None, forward) -> torch.Tensor:
    """The notebook's ``full_losses`` for a toy ``forward(mask (T,) bool) -> losses (T,)``: losses kept on masked
    frames only, row ``mid - 26`` gets the span's frames left of ``mid``, row ``mid + 26`` those from ``mid`` on,
    then ``clean_log_mi_exp``'s band (columns [r - 25, r + 25], diagonal excluded). NaN outside that band."""
    rows, gap = authors_mask_rows(T, gap)
    forwards = []
    for mids in rows:
        mask = torch.zeros(T, dtype=torch.bool)
        for m in mids:
            mask[max(0, m - LEFT):min(T, m + RIGHT)] = True
        forwards.append(torch.where(mask, forward(mask), torch.zeros(T, dtype=torch.float64)))
    full = torch.zeros(T, T, dtype=torch.float64)
    for idx, mid in enumerate(range(-LEFT, T + RIGHT - 1)):
        losses = forwards[idx if gap is None else idx % gap]
        if mid - LEFT - 1 >= 0:
            part = losses.clone()
            part[min(T, mid):] = 0
            full[mid - LEFT - 1] += part
        if mid + RIGHT < T:
            part = losses.clone()
            part[:max(0, mid)] = 0
            full[mid + RIGHT] += part
    idx = torch.arange(T)
    dist = idx[None, :] - idx[:, None]  # c - r
    band = (dist >= -LEFT) & (dist < RIGHT) & (dist != 0)
    return torch.where(band, full, torch.full_like(full, float("nan")))


def toy_forward(mask: torch.Tensor) -> torch.Tensor:
    """Loss of frame c = 0.01 c + masked frames more than 30 frames away from c: a second span in the same
    forward changes the losses."""
    T = mask.shape[0]
    idx = torch.arange(T)
    far = (idx[:, None] - idx[None, :]).abs() > 30  # (c, other frame)
    return 0.01 * idx.double() + (far & mask[None, :]).sum(1).double()


def toy_run(rows, span):  # the package's `run` interface: (N,), (N, T) -> (N, T)
    return torch.stack([toy_forward(s) for s in span])


def _as_lists(groups) -> list[list[int]]:
    return [[int(m) for m in g] for g in groups]


def test_item1_mask_groups_follow_the_authors_gap_rule():
    for T in list(range(1, 320)) + [400, 1000]:
        rows, _ = authors_mask_rows(T, 150)
        assert _as_lists(mask_groups(T, gap=150)) == rows, T
    # the old strict packing (exact_when_fits=False) differs exactly for 100 < T <= 150: two spans in a forward
    differs = [T for T in range(1, 320) if _as_lists(mask_groups(T, gap=150, exact_when_fits=False))
               != authors_mask_rows(T, 150)[0]]
    assert differs == list(range(101, 151))


@pytest.mark.parametrize("T", [120, 149, 150, 200])
def test_item1_loss_matrices_equal_the_authors_for_t_near_the_gap(T):
    ours = loss_matrices(toy_run, [T], gap=150)[0].double()
    ref = authors_loss_matrix(T, 150, toy_forward)
    band = ~torch.isnan(ref)
    assert not torch.isnan(ours[band]).any()
    torch.testing.assert_close(ours[band], ref[band], rtol=0, atol=1e-4)
    old = loss_matrices(toy_run, [T], gap=150, exact_when_fits=False)[0].double()
    if T <= 150:  # old packing: other spans in the forward shift some losses
        assert (old[band] - ref[band]).abs().max() > 1
    else:
        torch.testing.assert_close(old[band], ref[band], rtol=0, atol=1e-4)


# ---------------------------------------------------------------- item 2: segment count
def authors_num_segments(T: int) -> int:
    """``process_loss_multiple``: ``ks = [int(T / 50 / sec_per_syllable) + 1]`` boundaries with
    sec_per_syllable = 0.16, i.e. one fewer segments."""
    return int(T / 50 / 0.16) + 1 - 1


def test_item2_segment_count_is_the_authors_float_arithmetic():
    Ts = range(8, 6000)  # from one segment up (below 8 frames the package keeps at least one segment)
    assert [num_segments(T) for T in Ts] == [authors_num_segments(T) for T in Ts]
    assert [num_segments(T) for T in range(1, 8)] == [1] * 7
    differs = [T for T in Ts if num_segments(T, rule="floor") != authors_num_segments(T)]
    assert differs[:4] == [232, 376, 456, 464]  # floor(T / 8) is one more there
    assert all(num_segments(T, rule="floor") == authors_num_segments(T) + 1 for T in differs)


@pytest.mark.parametrize("rule, expected", [("authors", 28), ("floor", 29)])
def test_item2_teacher_boundaries_use_the_count_rule(rule, expected):
    torch.manual_seed(0)
    module = TeacherModule(network=TeacherConfig.tiny(num_labels=20, num_hidden_layers=1),
                           losspred=LossPredConfig(vad=False, count_rule=rule))
    T = 232
    C = torch.rand(T, T, dtype=torch.float64) * 5
    segs, _ = losspred_cut(C, 0, np.array([[0.0, T * 0.02]]), options=module.losspred_config)
    assert len(segs) == expected
    if rule == "authors":
        assert expected == authors_num_segments(T)


# ---------------------------------------------------------------- item 3: softmax over every row of the table
def authors_frame_losses(teacher: HubertTeacher, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The notebook's gap path: cosine against every row of label_embs_concat (norms + 1e-5), / logit_temp,
    cross-entropy of row label + 4."""
    with torch.no_grad():
        proj = hidden.double() @ teacher.final_proj.weight.double().T + teacher.final_proj.bias.double()
        table = teacher.label_embs.double()
        x = (proj / (proj.pow(2).sum(-1, keepdim=True).sqrt() + 1e-5)) @ \
            (table / (table.pow(2).sum(-1, keepdim=True).sqrt() + 1e-5)).T
        x = x / teacher.config.logit_temp  # (B, T, K + 4)
        target = labels + 4
        return torch.logsumexp(x, -1) - x.gather(-1, target[..., None])[..., 0]


def _offset_module(**losspred) -> TeacherModule:
    torch.manual_seed(0)
    net = TeacherConfig.tiny(num_labels=20, num_hidden_layers=2, label_offset=4)
    # the batch's own labels sliced to the trim (the reference below slices them too)
    return TeacherModule(network=net, losspred=LossPredConfig(**{"labels": "whole_file", **losspred})).eval()


@torch.no_grad()
def test_item3_losspred_losses_normalise_over_all_rows():
    module = _offset_module()
    assert module.teacher.label_embs.shape[0] == 24
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 40, 128, generator=g)
    labels = torch.randint(0, 20, (3, 40), generator=g)
    ref = authors_frame_losses(module.teacher, hidden, labels)
    ours = frame_losses(module.teacher, hidden, labels, module.losspred_config.softmax_rows)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)
    old = frame_losses(_offset_module(softmax_rows="labels").teacher, hidden, labels, "labels").double()
    assert ((ref - old) > 1e-3).float().mean() > 0.9  # the 4 special rows add to the normaliser


@torch.no_grad()
def test_item3_losspred_matrix_uses_the_all_row_losses():
    """The whole LossPred path: entries of C equal the authors' losses of the span just right of the row."""
    module = _offset_module()
    batch = fake_batch(seconds=(1.6,))
    (C,), (T,), ((first, _),) = module.losspred_matrices(batch)
    wave = batch["waves"][0, : int(batch["lengths"][0])]
    last = first + T
    feats, _ = module.teacher.frontend(wave[first * HOP:(last - 1) * HOP + 400][None], normalize=False)
    labels = batch["labels"][:, first:last]
    for r in (0, T // 3, T // 2):
        mid = r + RIGHT  # the span whose left part row r holds: c in [r + 1, r + 25]
        span = group_span_mask(T, [mid])[None]
        ref = authors_frame_losses(module.teacher, module.teacher.transformer(feats[:, :T], None, span), labels)[0]
        hi = min(T, r + LEFT + 1)
        torch.testing.assert_close(C[r, r + 1:hi].double(), ref[r + 1:hi], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- item 4: raw audio into an imported teacher
@torch.no_grad()
def test_item4_imported_teacher_gets_raw_audio_in_losspred(tmp_path):
    torch.manual_seed(0)
    source = HubertTeacher(TeacherConfig.tiny(num_labels=20, num_hidden_layers=1, feat_extract_norm="layer",
                                              do_stable_layer_norm=True, conv_bias=True, normalize_waveform=True))
    path = tmp_path / "large_like.pt"
    cw.save_fairseq_style_checkpoint(source, path)  # task.normalize = True, as hubert_large_ll60k.pt
    assert ck.load_fairseq_hubert(path).config.normalize_waveform

    def matrices(**losspred):
        module = TeacherModule(init_from=str(path), losspred=LossPredConfig(labels="whole_file", **losspred)).eval()
        return module, module.losspred_matrices(batch)[0][0]

    batch = fake_batch(seconds=(1.4,))
    batch["waves"] = batch["waves"] * 3  # normalisation would undo this scale
    default, C_default = matrices()
    assert default.teacher.config.normalize_waveform  # the checkpoint's flag is kept, LossPred ignores it
    # the authors' input: the waveform as read, no normalisation (the flag switched off by hand)
    raw = TeacherModule(init_from=str(path)).eval()
    raw.teacher.config.normalize_waveform = False
    raw.losspred_config = LossPredConfig(waveform="pretrained", labels="whole_file")
    torch.testing.assert_close(C_default, raw.losspred_matrices(batch)[0][0], equal_nan=True)
    _, C_pretrained = matrices(waveform="pretrained")  # the named option: normalised as pretrained
    assert torch.nanmean((C_pretrained - C_default).abs()) > 1e-3


def test_losspred_config_rejects_unknown_choices():
    for kw in (dict(count_rule="round"), dict(softmax_rows="some"), dict(waveform="normalised")):
        with pytest.raises(ValueError, match="must be one of"):
            LossPredConfig(**kw)
