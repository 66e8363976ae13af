"""Fine units at their own rate (issue 29, item 1): runs, pooling, the frame grid of a 25 Hz CNN, and a fairseq
HuBERT with mHuBERT-25Hz's CNN loaded and labelled on its own grid."""
import warnings

import numpy as np
import pytest
import torch

from syllablelm.audio.frames import FIFTY_HZ, FrameGeometry, num_frames
from syllablelm.units.fine import FineUnitEncoder, expand, pool_labels, run_starts_seconds, runs

MHUBERT_25HZ = dict(conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2, 2])


def test_runs_by_hand_and_inverse():
    u, d = runs([3, 3, 7, 7, 7, 3, 0])
    assert u.tolist() == [3, 7, 3, 0] and d.tolist() == [2, 3, 1, 1]
    assert runs([])[0].size == 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, rng.integers(1, 60))
        u, d = runs(x)
        assert (expand(u, d) == x).all()
        assert (u[1:] != u[:-1]).all()  # runs are maximal
    with pytest.raises(ValueError, match="positive"):
        expand([1, 2], [1, 0])
    with pytest.raises(ValueError, match="one duration"):
        expand([1, 2], [1])


def test_run_starts_at_both_rates():
    assert run_starts_seconds([2, 3, 1]).tolist() == pytest.approx([0.0, 0.04, 0.10])
    g25 = FrameGeometry.from_conv(**{"kernels": MHUBERT_25HZ["conv_kernel"], "strides": MHUBERT_25HZ["conv_stride"]})
    assert run_starts_seconds([2, 3, 1], g25, offset=1.0).tolist() == pytest.approx([1.0, 1.08, 1.20])


def test_pool_labels_majority_ties_and_tail():
    # blocks of 2: (1,1)->1, (2,5)->tie->2, (5,5)->5, (9,)->9
    assert pool_labels([1, 1, 5, 2, 5, 5, 9], 2).tolist() == [1, 2, 5, 9]
    # blocks of 3: (4,1,4)->4, (2,2,1)->2
    assert pool_labels([4, 1, 4, 2, 2, 1], 3).tolist() == [4, 2]
    assert pool_labels([4, 1], 1).tolist() == [4, 1]


@pytest.mark.parametrize("kernels,strides,hop,field", [
    ([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], 320, 400),
    (MHUBERT_25HZ["conv_kernel"], MHUBERT_25HZ["conv_stride"], 640, 720),
])
def test_geometry_matches_the_cnn(kernels, strides, hop, field):
    """The formula against the CNN itself: HF HuBERT's feature encoder output length for many input lengths."""
    from transformers import HubertConfig, HubertModel

    g = FrameGeometry.from_conv(kernels, strides)
    assert (g.hop, g.receptive_field) == (hop, field)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       conv_dim=[8] * len(kernels), conv_kernel=kernels, conv_stride=strides,
                       num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    fe = HubertModel(cfg).feature_extractor.eval()
    for n in (field, field + 1, field + hop - 1, field + hop, 16000, 16371):
        with torch.no_grad():
            assert fe(torch.zeros(1, n)).shape[-1] == g.num_frames(n), n
        assert g.num_frames(g.samples_for_frames(g.num_frames(n))) == g.num_frames(n)
    assert g.num_frames(field - 1) == 0
    assert FIFTY_HZ.num_frames(16371) == num_frames(16371)


def test_frames_per():
    g25 = FrameGeometry(640, 720)
    assert g25.frames_per(FIFTY_HZ) == 2 and g25.hz == 25.0
    with pytest.raises(ValueError, match="whole number"):
        FrameGeometry(480, 400).frames_per(FIFTY_HZ)


def test_25hz_fairseq_hubert_labels_on_its_own_grid(tmp_path):
    """A fairseq HuBERT with mHuBERT-25Hz's CNN and label_rate 25 imports without the rate warning, and its
    layer's k-means units come on the 25 Hz grid (one per 640 samples), not the 50 Hz one."""
    from syllablelm.checkpoints.fairseq_hubert import load_fairseq_hubert, save_fairseq_style_checkpoint
    from syllablelm.models.hubert import HubertTeacher, TeacherConfig

    torch.manual_seed(0)
    cfg = TeacherConfig.tiny(num_labels=6, conv_dim=[32] * 8, **MHUBERT_25HZ)
    path = tmp_path / "mhubert25.pt"
    save_fairseq_style_checkpoint(HubertTeacher(cfg), path, label_rate=25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_fairseq_hubert(path)
    km = tmp_path / "km.npy"
    np.save(km, np.random.default_rng(0).normal(size=(5, cfg.hidden_size)).astype(np.float32))
    enc = FineUnitEncoder.build(km, checkpoint=path, layer=1)
    assert enc.geometry == FrameGeometry(640, 720) and enc.num_units == 5
    wave = torch.randn(16000 * 2 + 123)
    labels = enc.labels(wave)
    assert labels.shape == (FrameGeometry(640, 720).num_frames(wave.numel()),) and labels.max() < 5
    u, d = enc(wave)
    assert d.sum() == labels.size
    # the same model at label_rate 50 is flagged: its CNN gives 25 Hz frames
    save_fairseq_style_checkpoint(HubertTeacher(cfg), tmp_path / "bad.pt", label_rate=50)
    with pytest.warns(UserWarning, match="25 Hz"):
        load_fairseq_hubert(tmp_path / "bad.pt")


def test_pooled_encoder_grid(tmp_path):
    """The CPU path pooled to 25 Hz: a 50 Hz labeler with pool 2 reports a 640-sample hop and majority labels."""

    class Fixed:
        num_labels = 4

        def __call__(self, wave):
            return torch.tensor([0, 0, 1, 2, 2, 2, 3])

    enc = FineUnitEncoder(Fixed(), FIFTY_HZ, pool=2)
    assert enc.geometry.hop == 640 and enc.geometry.receptive_field == 720
    assert enc.labels(torch.zeros(10)).tolist() == [0, 1, 2, 3]
    assert [a.tolist() for a in enc(torch.zeros(10))] == [[0, 1, 2, 3], [1, 1, 1, 1]]
