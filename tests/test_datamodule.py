import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.boundary_store import BoundaryStore
from datamodules.samplers import EvalBatchSampler, TrainBatchSampler, make_batches
from datamodules.speech import SpeechDataModule
from syllablelm.audio.io import pause_chunks, speech_regions
from syllablelm.runtime.fileio import shard_range
from tests.conftest import burst_wave, make_librispeech


def _dm(tmp_path, cache_dir, **kw):
    root = tmp_path / "c"
    if not root.exists():
        make_librispeech(root, speakers=2, utts=5)
    kw.setdefault("num_workers", 0)
    return SpeechDataModule(train_dirs=[str(root)], val_dirs=[str(root)], manifest_cache=cache_dir, **kw)


def test_synth_corpus_to_batches(synth_corpus, tmp_path):
    dm = SpeechDataModule(train_dirs=[str(synth_corpus / "train")], val_dirs=[str(synth_corpus / "dev")],
                          alignment_dir=str(synth_corpus / "alignments"), batch_size=4, crop_seconds=3.0,
                          num_workers=1, manifest_cache=str(tmp_path / "cache"))
    dm.setup("fit")
    n_train = len(dm.manifests["train"])
    seen = []
    for batch in dm.train_dataloader():
        B, T = batch["waves"].shape
        assert batch["attention_mask"].shape == (B, T) and batch["lengths"].shape == (B,)
        assert T == int(batch["lengths"].max()) <= 3 * 16000
        # the mask is 1 exactly on each item's samples and the padding is silent
        assert torch.equal(batch["attention_mask"].sum(1), batch["lengths"])
        for b in range(B):
            assert batch["waves"][b, batch["lengths"][b]:].abs().sum() == 0
            words = batch["alignments"][b]["words"][0]
            assert isinstance(words, np.ndarray)  # numpy stays numpy: Lightning would move tensors to the GPU
            assert len(words) and words[-1, 1] <= float(batch["lengths"][b]) / 16000 + 1e-6  # clipped to crop
        seen += batch["ids"]
    assert sorted(seen) == sorted(e.id for e in dm.manifests["train"].entries) and len(seen) == n_train
    val = [b for b in dm.val_dataloader()]
    val_ids = [i for b in val for i in b["ids"]]
    assert len(val_ids) == len(set(val_ids)) == len(dm.manifests["val"])
    # uncropped validation: full files, alignments whole
    assert max(float(b["lengths"].max()) for b in val) > 3 * 16000 or all(
        e.seconds <= 3 for e in dm.manifests["val"].entries)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_sampler_shards_equally_and_covers_everything(world):
    seconds = np.random.default_rng(0).uniform(1, 10, size=53)
    per_rank = [list(TrainBatchSampler(seconds, batch_size=4, rank=r, world_size=world, seed=7)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # equal step counts keep DDP in lock-step
    items = [i for p in per_rank for _, b, _ in p for i in b]
    assert set(items) == set(range(53))
    assert len(items) - 53 < 4 * world  # repeats only to even out the last round
    # same seed + epoch -> same batches; another epoch -> another order
    s = TrainBatchSampler(seconds, batch_size=4, seed=7)
    first = [b for _, b, _ in s]
    assert first == [b for _, b, _ in TrainBatchSampler(seconds, batch_size=4, seed=7)]
    assert [k for _, _, k in s] == list(range(len(first)))  # each batch knows its index in the epoch
    s.set_epoch(1)
    assert [b for _, b, _ in s] != first and all(e == 1 for e, _, _ in s)


def test_batches_respect_padded_seconds_budget():
    seconds = np.array([9.0, 8.0, 3.0, 2.0, 2.0, 1.0])
    batches = make_batches(np.argsort(-seconds), seconds, batch_size=10, max_batch_seconds=10.0)
    assert batches == [[0], [1], [2, 3, 4], [5]]
    assert list(EvalBatchSampler(seconds, batch_size=2)) == [(0, [0, 1], 0), (0, [2, 3], 1), (0, [4, 5], 2)]


def test_eval_shards_cover_every_utterance_once(tmp_path, cache_dir):
    dm = _dm(tmp_path, cache_dir, batch_size=3)
    dm.setup("validate")
    ids = []
    for rank in range(3):
        ds = dm.dataset("val", rank=rank, world_size=3)
        lo, hi = shard_range(10, rank, 3)
        assert len(ds) == hi - lo
        ids += [ds.entries[it.entry].id for it in ds.items]
    assert sorted(ids) == sorted(e.id for e in dm.manifests["val"].entries)


def test_crops_first_and_random(tmp_path, cache_dir):
    dm = _dm(tmp_path, cache_dir)
    dm.setup("fit")
    first = dm.dataset("train", crop_seconds=0.5, crop_mode="first")
    rand = dm.dataset("train", crop_seconds=0.5, crop_mode="random")
    offsets = set()
    for i in range(len(first)):
        assert first.window(i) == (0.0, 0.5)
        off, dur = rand.window(i, epoch=3)
        assert dur == 0.5 and 0 <= off <= first.items[i].duration - 0.5 + 1e-9
        assert abs(off / 0.02 - round(off / 0.02)) < 1e-6  # on the frame grid
        assert rand.window(i, epoch=3) == (off, dur)  # deterministic per (seed, epoch, index)
        offsets.add(off)
        item = rand.load(i, epoch=3)
        assert len(item["wave"]) == 8000 and item["offset"] == off
    assert len(offsets) > 1


def test_long_files_are_chunked_at_pauses(tmp_path, cache_dir):
    rng = np.random.default_rng(1)
    wave, regions = burst_wave(rng, 40.0)
    (tmp_path / "ll" / "7" / "book").mkdir(parents=True)
    sf.write(tmp_path / "ll" / "7" / "book" / "chapter.flac", wave, 16000)
    chunks = pause_chunks(wave, 16000, max_seconds=5.0)
    assert chunks[0][0] == 0.0 and abs(chunks[-1][1] - 40.0) < 1e-9
    assert all(b - a <= 5.0 + 1e-9 for a, b in chunks)
    assert all(a == pb for (a, _), (_, pb) in zip(chunks[1:], chunks[:-1]))  # contiguous
    for _, cut in chunks[:-1]:  # every cut lies in a pause, not inside a burst
        assert not any(s < cut < e for s, e in regions)
    dm = SpeechDataModule(predict_dirs=[str(tmp_path / "ll")], chunk_seconds=5.0, num_workers=0,
                          manifest_cache=cache_dir, batch_size=4)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert {i for b in batches for i in b["ids"]} == {"7/book/chapter"}
    offsets = sorted(float(o) for b in batches for o in b["offsets"])
    assert np.allclose(offsets, [a for a, _ in chunks], atol=1e-6)
    assert sum(int(n) for b in batches for n in b["lengths"]) == pytest.approx(len(wave), abs=len(chunks))


def test_speech_regions_find_bursts():
    wave, regions = burst_wave(np.random.default_rng(2), 6.0)
    found = speech_regions(wave, 16000)
    assert len(found) == len(regions)
    assert np.abs(found - np.array(regions)).max() < 0.015


def test_boundaries_from_store_are_clipped_and_required(tmp_path, cache_dir):
    dm = _dm(tmp_path, cache_dir)
    dm.setup("fit")
    ids = [e.id for e in dm.manifests["train"].entries]
    store = BoundaryStore(tmp_path / "store")
    store.write_shard(0, 0, 1, {i: np.array([[0.1, 0.4], [0.4, 0.9]]) for i in ids[:6]})
    store.finalize(0, 1)
    dm = _dm(tmp_path, cache_dir, boundary_dir=str(tmp_path / "store"), boundary_version="latest",
             require_boundaries=True, crop_seconds=0.5)
    dm.setup("fit")
    assert dm.version == 0
    batches = list(dm.train_dataloader())
    got = {i: s for b in batches for i, s in zip(b["ids"], b["segments"])}
    assert set(got) == set(ids[:6])  # utterances without boundaries are dropped
    assert all(isinstance(s, np.ndarray) for s in got.values())  # not tensors, which would go to the GPU
    for segs in got.values():
        np.testing.assert_allclose(segs, [[0.1, 0.4], [0.4, 0.5]])  # clipped to the 0.5 s crop


def test_latest_without_complete_version_is_a_clear_error(tmp_path, cache_dir):
    BoundaryStore(tmp_path / "store").write_shard(0, 0, 1, {"x": np.array([[0.0, 0.1]])})
    dm = _dm(tmp_path, cache_dir, boundary_dir=str(tmp_path / "store"), boundary_version="latest")
    with pytest.raises(FileNotFoundError, match="no complete boundary version"):
        dm.setup("fit")


def test_frame_labels_follow_the_crop(tmp_path, cache_dir):
    from datamodules.label_store import LabelStore
    from syllablelm.audio.frames import num_frames

    dm = _dm(tmp_path, cache_dir)
    dm.setup("fit")
    entries = dm.manifests["train"].entries
    store = LabelStore(tmp_path / "labels")
    # label = frame index, so a slice shows exactly where the crop started
    store.write_shard(0, 0, 1, {e.id: np.arange(num_frames(e.num_samples)) for e in entries})
    store.finalize(0, 1, meta={"num_labels": 1000})
    dm = _dm(tmp_path, cache_dir, label_dir=str(tmp_path / "labels"), crop_seconds=0.6, crop_mode="random",
             batch_size=3)
    dm.setup("fit")
    ds = dm.dataset("train", crop_seconds=0.6, crop_mode="random")
    for i in range(len(ds)):
        item = ds.load(i, epoch=1)
        first = round(item["offset"] / 0.02)
        assert item["labels"].tolist() == list(range(first, first + num_frames(len(item["wave"]))))
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == (len(batch["ids"]), num_frames(batch["waves"].shape[1]))
    assert (batch["labels"] >= 0).all()  # crops of equal length: no padding


def test_librilight_voice_activity_drives_chunking(tmp_path, cache_dir, monkeypatch):
    import json

    import datamodules.speech as speech

    rng = np.random.default_rng(4)
    wave, regions = burst_wave(rng, 30.0)
    book = tmp_path / "ll" / "12" / "some_book"
    book.mkdir(parents=True)
    sf.write(book / "01_chapter.flac", wave, 16000)
    (book / "01_chapter.json").write_text(json.dumps({"speaker": "12", "voice_activity": regions}))
    reads = []
    real = speech.read_audio
    monkeypatch.setattr(speech, "read_audio", lambda *a, **k: reads.append(a) or real(*a, **k))
    dm = SpeechDataModule(predict_dirs=[str(tmp_path / "ll")], chunk_seconds=4.0, num_workers=0,
                          manifest_cache=cache_dir)
    dm.setup("predict")
    ds = dm.dataset("predict", chunk_seconds=4.0)
    assert reads == []  # the plan came from the JSON, not from decoding the file
    assert len(ds) > 7 and all(it.duration <= 4.0 + 1e-9 for it in ds.items)
    for it in ds.items[1:]:  # every cut lies in a pause of the given voice activity
        assert not any(s < it.offset < e for s, e in regions)
