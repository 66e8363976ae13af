"""The work of ``syllablelm labels`` (experiments/labels.py parses its arguments): k-means frame labels for
masked-prediction training and LossPred (``losspred.labels: whole_file``), written as a label-store version whose
manifest records the label model (:func:`datamodules.label_store.label_model_meta`) that LossPred's default runs on
each VAD-trimmed wave."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.label_store import OWN_KMEANS, LabelStore, label_model_meta
from datamodules.speech import SpeechDataModule
from syllablelm.audio.frames import FRAME_SECONDS, num_frames, seconds_to_frames
from syllablelm.audio.io import SAMPLE_RATE, AudioError, read_audio
from syllablelm.checkpoints import load_kmeans_centroids
from syllablelm.checkpoints.kmeans import save_kmeans_centroids
from syllablelm.runtime.faults import fault_point
from syllablelm.runtime.outcome import record_skip
from syllablelm.units.clustering import kmeans
from syllablelm.units.frame_labels import FrameLabeler, feature_function

log = logging.getLogger(__name__)


def _features_fn(args):
    if args.features == "teacher" and (not args.checkpoint or args.layer is None):
        raise SystemExit("--features teacher needs --checkpoint and --layer")
    return feature_function(args.features, args.checkpoint, args.layer, args.device)


def _chunk_features(fn, entry, offset: float, duration: float) -> torch.Tensor:
    """Features of one chunk (starting on the 20 ms grid) with one frame per 20 ms it spans (a chunk yields one
    frame fewer than it spans: the last is repeated)."""
    feats = fn(read_audio(entry.path, SAMPLE_RATE, offset=offset, duration=duration))
    want = int(seconds_to_frames(duration))
    if len(feats) < want and len(feats):
        feats = torch.cat([feats, feats[-1:].expand(want - len(feats), -1)])
    return feats[:want]


def _file_labels(labeler: FrameLabeler, entry, chunks: list[tuple[float, float]]) -> np.ndarray:
    """Labels of a whole file on its 50 Hz grid, chunk by chunk: only one chunk's features exist at a time, so
    memory does not grow with the file (LibriLight files run to an hour). The same features and k-means as
    ``labeler`` applied to a wave (what LossPred does to each VAD-trimmed wave), chunk by chunk."""
    labels = np.concatenate([labeler.kmeans(_chunk_features(labeler.features, entry, o, d)).numpy()
                             for o, d in chunks])
    return labels[:num_frames(entry.num_samples * SAMPLE_RATE // entry.sample_rate)]


def _windows(seconds: float, size: float) -> list[tuple[float, float]]:
    """``[offset, duration)`` windows of about ``size`` seconds covering a file, on the 20 ms grid (a tail under
    1 s joins the window before it)."""
    size = max(FRAME_SECONDS, int(seconds_to_frames(size)) * FRAME_SECONDS)
    starts = list(np.arange(0.0, seconds, size))
    if len(starts) > 1 and seconds - starts[-1] < 1.0:
        starts.pop()
    return [(float(a), float((starts[i + 1] if i + 1 < len(starts) else seconds) - a)) for i, a in enumerate(starts)]


def _skip(path: str, problem: str, skipped: dict[str, str]) -> None:
    record_skip(path, problem, "labels")
    skipped[path] = problem


def _wait_for(path: Path, what: str, timeout: float) -> None:
    start = time.time()
    while not path.exists():
        if time.time() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what} ({path})")
        time.sleep(2.0)


def write_labels(args) -> int:
    """``syllablelm labels`` with parsed arguments (:func:`experiments.labels.parser`)."""

    store = LabelStore(args.out)
    vdir = store.version_dir(args.version)
    # with --train-hours, predict reads the training subset exactly as fit/predict of a stage sees it
    dirs = ({"train_dirs": args.data, "train_hours": args.train_hours, "predict_extra_dirs": args.extra_data}
            if args.train_hours else {"predict_dirs": args.data + (args.extra_data or [])})
    dm = SpeechDataModule(**dirs, manifest_cache=args.manifest_cache, seed=args.seed, chunk_seconds=args.chunk_seconds,
                          verify=args.verify, num_workers=2)
    entries = dm.manifest("predict").entries
    fn = _features_fn(args)

    centroids_path = vdir / OWN_KMEANS
    if args.kmeans:
        centroids = load_kmeans_centroids(args.kmeans)
    else:
        if args.rank == 0 and not centroids_path.exists():
            rng = np.random.default_rng(args.seed)
            sample, hours, sample_skips = [], 0.0, {}
            for i in tqdm(rng.permutation(len(entries)), desc="k-means sample", unit="file"):
                if hours >= args.fit_hours:
                    break
                e, part, part_hours = entries[i], [], 0.0
                try:
                    for offset, duration in _windows(e.seconds, args.chunk_seconds):  # an hour: not at once
                        if hours + part_hours >= args.fit_hours:
                            break
                        part.append(_chunk_features(fn, e, offset, duration).numpy())
                        part_hours += duration / 3600
                except AudioError as err:  # broke after the manifest was built: left out of the sample
                    _skip(e.path, err.problem, sample_skips)
                    continue
                sample += part
                hours += part_hours
            if not sample:
                raise RuntimeError(f"no file of the k-means sample could be read ({len(sample_skips)} skipped, "
                                   "each named above with its reason)")
            vectors = np.concatenate(sample)
            log.info("fitting k-means: %d clusters on %d frames (%.2f h)", args.num_clusters, len(vectors), hours)
            centroids = kmeans(vectors, args.num_clusters, seed=args.seed)
            save_kmeans_centroids(centroids_path, centroids)
        _wait_for(centroids_path, "rank 0's k-means centroids", args.wait_timeout)
        centroids = load_kmeans_centroids(centroids_path)
    labeler = FrameLabeler(fn, centroids)

    n_shards, todo = store.shards_to_write(args.version, args.rank, args.world_size, args.shards)
    for shard in todo:
        ds = dm.dataset("predict", rank=shard, world_size=n_shards, chunk_seconds=args.chunk_seconds)
        chunks: dict[int, list[tuple[float, float]]] = {}
        for item in ds.items:
            chunks.setdefault(item.entry, []).append((item.offset, item.duration))
        out, skipped = {}, {}
        with torch.inference_mode():
            for k, spans in tqdm(chunks.items(), desc=f"labels rank {args.rank} shard {shard}", unit="file"):
                try:
                    out[ds.entries[k].id] = _file_labels(labeler, ds.entries[k], spans)
                except AudioError as e:  # broke after the manifest was built: left out of the shard
                    _skip(ds.entries[k].path, e.problem, skipped)
        store.write_shard(args.version, shard, n_shards, out, skipped=skipped)
        fault_point("shard.written")  # a crash between shards: the rerun writes only the missing ones
    if args.rank == 0:
        # the label model (LabelStore.labeler reads it back: LossPred labels each VAD-trimmed wave with it)
        model = label_model_meta(args.features, args.checkpoint, args.layer, args.kmeans or str(centroids_path))
        manifest = store.finalize_when_complete(args.version, n_shards, timeout=args.wait_timeout, meta={
            "num_labels": int(len(centroids)), **model,
            "skipped": dm.manifest("predict").skipped})  # with every shard's own skips
        log.info("label version %d complete: %s (%d files skipped)", args.version, vdir,
                 len(manifest["meta"]["skipped"]))
    return 0
