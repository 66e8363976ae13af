"""Stage 1 through its LightningModule and the CLI: LossPred paths against slow references, labels, store."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from datamodules.boundary_store import BoundaryStore
from datamodules.label_store import LabelStore
from datamodules.speech import SpeechDataModule
from lightning_modules.teacher import LossPredConfig, TeacherModule
from syllablelm.boundaries.losspred import group_span_mask, mask_groups, scatter_group, speech_trim
from syllablelm.models.hubert import TeacherConfig
from tests.conftest import REPO, burst_wave

HOP = 320


def tiny_module(**losspred) -> TeacherModule:
    """Scores the batch's own labels (``labels: whole_file``): the slow references slice them to the trim. The
    default, labels of the trimmed wave, is tests/test_losspred_labels.py's."""
    torch.manual_seed(0)
    net = TeacherConfig.tiny(num_labels=20, num_hidden_layers=2)
    return TeacherModule(network=net, losspred=LossPredConfig(**{"labels": "whole_file", **losspred})).eval()


def fake_batch(seconds=(3.1, 4.7, 2.2), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    waves = [burst_wave(rng, s)[0] for s in seconds]
    S = max(len(w) for w in waves)
    B = len(waves)
    frames = (S - 400) // HOP + 1
    batch = {"ids": [f"u{b}" for b in range(B)], "waves": torch.zeros(B, S),
             "lengths": torch.tensor([len(w) for w in waves]),
             "offsets": torch.zeros(B, dtype=torch.float64), "labels": torch.full((B, frames), -100)}
    for b, w in enumerate(waves):
        batch["waves"][b, : len(w)] = torch.from_numpy(w)
        n = (len(w) - 400) // HOP + 1
        batch["labels"][b, :n] = torch.from_numpy(rng.integers(0, 20, n))
    batch["attention_mask"] = (torch.arange(S)[None] < batch["lengths"][:, None]).long()
    return batch


def slow_reference(module: TeacherModule, batch, exact: bool) -> list[torch.Tensor]:
    """One utterance and one group of spans per forward, batch size 1, no padding anywhere."""
    out = []
    for b in range(len(batch["ids"])):
        wave = batch["waves"][b, : int(batch["lengths"][b])]
        first, last, _ = speech_trim(wave, module.losspred_config.vad)
        feats, _ = module.teacher.frontend(wave[first * HOP:(last - 1) * HOP + 400][None])
        labels = batch["labels"][b, first:last]
        T = min(feats.shape[1], int((labels >= 0).sum()))
        feats, labels = feats[:, :T], labels[None, :T]
        C = torch.full((T, T), float("nan"))
        for mids in mask_groups(T, exact=exact):
            span = group_span_mask(T, mids)[None]
            hidden = module.teacher.transformer(feats, None, span)
            losses = module.teacher.frame_losses(module.teacher.logits(hidden), labels)[0]
            scatter_group(C, losses, mids)
        out.append(C)
    return out


@pytest.mark.parametrize("exact", [False, True])
@torch.no_grad()
def test_losspred_batched_equals_one_forward_per_group(exact):
    module = tiny_module(exact=exact, forward_batch=16)
    # > 150 frames, so the gap path masks two spans in some forwards; a short one beside it pads the batch
    batch = fake_batch(seconds=(3.6, 1.2)) if not exact else fake_batch(seconds=(1.6, 1.1))
    fast, lengths, _ = module.losspred_matrices(batch)
    slow = slow_reference(module, batch, exact)
    for C, R, T in zip(fast, slow, lengths):
        idx = torch.arange(T)
        band = ((idx[:, None] - idx[None]).abs() <= 25) & (idx[:, None] != idx[None])
        assert not torch.isnan(C[band]).any()  # every in-band entry written
        torch.testing.assert_close(C, R, equal_nan=True, atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_gap_path_is_an_approximation_of_the_exact_path():
    batch = fake_batch(seconds=(4.5,))
    gap, _, _ = tiny_module(exact=False).losspred_matrices(batch)
    exact, _, _ = tiny_module(exact=True).losspred_matrices(batch)
    diff = (gap[0] - exact[0]).abs()
    assert torch.nanmean(diff) > 0  # the other masked spans are visible to attention
    assert torch.nanmean(diff) < torch.nanmean(exact[0].abs())  # ... but the losses stay close


@torch.no_grad()
def test_boundaries_are_in_file_time_and_skip_silent_starts():
    module = tiny_module()
    batch = fake_batch(seconds=(4.0, 3.0), seed=2)
    batch["offsets"] = torch.tensor([10.0, 0.0], dtype=torch.float64)
    out = module.losspred(batch, keep_matrices=1)
    assert set(out["matrices"]) == {0}
    for b, segs in enumerate(out["segments"]):
        wave = batch["waves"][b, : int(batch["lengths"][b])]
        _, _, regions = speech_trim(wave, module.losspred_config.vad)
        local = segs - float(batch["offsets"][b])
        assert len(segs) >= 1 and np.all(np.diff(local[:, 0]) > 0)
        assert local[0, 0] >= regions[0, 0] - 0.02 and local[-1, 1] <= len(wave) / 16000
        centres = local[:, 0] + 0.01
        assert all(((c >= regions[:, 0]) & (c < regions[:, 1])).any() for c in centres)


def _config(tmp_path, corpus) -> str:
    cfg = yaml.safe_load((REPO / "experiments/configs/tiny/teacher.yaml").read_text())
    text = yaml.safe_dump(cfg).replace("data/synth", str(corpus)).replace("runs/tiny", str(tmp_path / "runs"))
    path = tmp_path / "teacher.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_cli_labels_fit_predict_make_a_valid_store(synth_corpus, tmp_path):
    from experiments.cli import main

    splits = [str(synth_corpus / s) for s in ("train", "dev", "test")]
    assert main(["labels", "--data", *splits, "--out", str(tmp_path / "runs/labels"), "--num-clusters", "100",
                 "--fit-hours", "0.02", "--manifest-cache", str(tmp_path / "cache")]) == 0
    labels = LabelStore(tmp_path / "runs/labels")
    assert labels.latest_version() == 0 and labels.num_labels(0) == 100
    config = _config(tmp_path, synth_corpus)
    common = ["--config", config, "--data.manifest_cache", str(tmp_path / "cache"), "--data.num_workers", "0",
              "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.fast_dev_run", "true"])
    main(["predict", *common, "--data.max_utterances", "4"])
    store = BoundaryStore(tmp_path / "runs/boundaries")
    assert store.latest_version() == 0
    dm = SpeechDataModule(predict_dirs=splits, max_utterances=4, manifest_cache=str(tmp_path / "cache"))
    durations = {e.id: e.seconds for e in dm.manifest("predict").entries}
    segments = store.load(0, durations)  # validates sorted / non-overlapping / inside each file
    assert set(segments) == set(durations)
    rates = [len(s) / durations[u] for u, s in segments.items()]
    assert all(2.0 < r < 7.0 for r in rates)  # 6.25 segments/s of trimmed speech, minus silent starts


class _Killed(Exception):
    pass


class _Stop(pl.Callback):
    """Fails the predict run after ``after`` batches, as a killed job would."""

    def __init__(self, after: int):
        self.after = after

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx + 1 == self.after:
            raise _Killed("stopped")


def test_a_stopped_losspred_predict_resumes_from_its_partial_files(synth_corpus, tmp_path):
    from callbacks.boundary_writer import BoundaryWriter
    from experiments.cli import main

    cache = str(tmp_path / "cache")
    dirs = [str(synth_corpus / s) for s in ("dev", "test")]
    assert main(["labels", "--data", *dirs, "--out", str(tmp_path / "labels"), "--num-clusters", "20",
                 "--fit-hours", "0.01", "--manifest-cache", cache]) == 0

    def run(store, *callbacks, module=None):
        module = module or tiny_module()
        calls = []
        real = module.losspred
        module.losspred = lambda batch, *a, **k: (calls.append(list(batch["ids"])), real(batch, *a, **k))[1]
        dm = SpeechDataModule(predict_dirs=dirs, label_dir=str(tmp_path / "labels"), batch_size=2, num_workers=0,
                              manifest_cache=cache)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                             callbacks=[BoundaryWriter(store_dir=str(tmp_path / store), flush_every=1), *callbacks])
        try:
            trainer.predict(module, dm, return_predictions=False)
        except _Killed:
            pass
        return calls

    full = run("clean")
    assert len(full) >= 4
    stopped = run("resumed", _Stop(after=3))
    assert len(stopped) == 3 and not BoundaryStore(tmp_path / "resumed").is_complete(0)
    assert len(list((tmp_path / "resumed/iter_0/partial").glob("rank*-part*.npz"))) == 3
    resumed = run("resumed")
    assert resumed == full[3:]  # only the batches the stopped run had not finished
    clean, again = BoundaryStore(tmp_path / "clean").load(0), BoundaryStore(tmp_path / "resumed").load(0)
    assert clean.keys() == again.keys() and all(np.array_equal(clean[u], again[u]) for u in clean)
    assert not (tmp_path / "resumed/iter_0/partial").exists()
    # partial files of other weights are not reused
    run("other", _Stop(after=2))
    other = tiny_module()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert len(run("other", module=other)) == len(full)
