"""The work of ``syllablelm quantize`` and ``syllablelm units`` (experiments/unit_commands.py parses their
arguments): pooled features -> k-means + Ward -> a tokenizer checkpoint; a dataset -> a unit-store version."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.manifest import build_manifest
from datamodules.speech import SpeechDataModule
from datamodules.unit_store import UnitStore
from experiments.unit_commands import run_options
from syllablelm.audio.io import AudioError
from syllablelm.runtime.faults import fault_point
from syllablelm.runtime.fileio import weights_fingerprint, write_json, write_npz
from syllablelm.runtime.outcome import record_skip
from syllablelm.units.quantizer import UnitQuantizer, deduplicates, pool_segments
from syllablelm.units.tokenizer import Tokenizer, save_tokenizer

log = logging.getLogger(__name__)


def _device(arg: str | None) -> str:
    if arg:
        return arg
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"


class PooledParts:
    """``quantize``'s pooled features saved as they are made, so a stopped run resumes: ``root/key.json`` (what
    they were made from: weights, segmenter, sample) and ``part-START-END.npz``, the vectors of sampled files
    ``START..END-1`` (in the seeded order) with the hours reached. Parts made from anything else are discarded."""

    def __init__(self, root: Path, key: dict):
        self.root, self.key = root, json.loads(json.dumps(key))

    def load(self) -> tuple[list[np.ndarray], int, float]:
        """(vectors per part, files done, hours done) of the saved parts that continue each other from 0."""
        key_file = self.root / "key.json"
        if key_file.exists() and json.loads(key_file.read_text()) != self.key:
            log.warning("%s was made from other weights, segmenter or sample: starting again", self.root)
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(key_file, self.key)
        vectors, position, hours = [], 0, 0.0
        for path in sorted(self.root.glob("part-*.npz")):
            start, end = (int(x) for x in path.stem.split("-")[1:])
            if start != position:
                break
            with np.load(path) as z:
                vectors.append(z["vectors"])
                position, hours = end, float(z["hours"])
        return vectors, position, hours

    def save(self, start: int, end: int, pending: list[np.ndarray], hours: float) -> np.ndarray:
        v = np.concatenate(pending) if pending else np.zeros((0, 0), np.float32)
        write_npz(self.root / f"part-{start:09d}-{end:09d}.npz", vectors=v, hours=np.float64(hours))
        return v

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def fit_quantizer(args) -> int:
    """``syllablelm quantize`` with parsed arguments."""
    tok = Tokenizer.from_pretrained(args.checkpoint, device=_device(args.device), require_quantizer=False)
    pooling = "drop_edge"
    if args.fixed_frames:
        tok.use_fixed_frames(args.fixed_frames)
        pooling = "mean"  # 2-frame windows have no interior to keep
    entries = build_manifest(args.data, cache_dir=args.manifest_cache).entries
    order = np.random.default_rng(args.seed).permutation(len(entries))
    parts = PooledParts(Path(f"{args.out}.pooled"), {
        "weights": weights_fingerprint(tok.encoder),
        "segmenter": {**tok.segmenter.config.to_dict(), "delta": tok.delta}, "pooling": pooling,
        "seed": args.seed, "hours": args.hours,
        "files": hashlib.sha1("\n".join(str(e.path) for e in entries).encode()).hexdigest()})
    vectors, position, hours = parts.load()
    if position:
        log.info("resuming: %d of the sampled files (%.2f h) already pooled in %s", position, hours, parts.root)
    pending, start = [], position
    bar = tqdm(order[position:], desc="pooled features", unit="file", initial=position, total=len(order))
    for i in bar:
        if hours >= args.hours:
            break
        position += 1
        try:
            wave = tok._load(entries[i].path, None)
        except AudioError as e:  # broke after the manifest was built: left out of the sample
            record_skip(entries[i].path, e.problem, "quantize")
            continue
        feats = tok.features(wave)
        bounds = tok.boundaries([feats], [wave])[0]
        pending.append(pool_segments(feats.float().cpu(), bounds, pooling).numpy())
        hours += entries[i].seconds / 3600
        if position - start >= args.save_every:
            vectors.append(parts.save(start, position, pending, hours))
            pending, start = [], position
    if pending or position > start:
        vectors.append(parts.save(start, position, pending, hours))
    vectors = np.concatenate([v for v in vectors if len(v)])
    if len(vectors) < args.k:
        raise SystemExit(f"only {len(vectors)} segments in the sample for k={args.k}: lower --k or raise --hours")
    log.info("fitting k-means: k=%d on %d segments (%.2f h), then Ward to %d", args.k, len(vectors), hours,
             args.k_merged)
    q = UnitQuantizer.fit(vectors, args.k, args.k_merged or None, pooling=pooling, backend=args.backend,
                          seed=args.seed, feature_layer=tok.encoder.layer)
    save_tokenizer(args.out, tok.encoder, tok.segmenter, q, meta={  # --fixed-frames: in the segmenter config
        "source": str(Path(args.checkpoint).resolve()), "command": "quantize", "args": vars(args),
        "segments": len(vectors), "hours": round(hours, 4)})
    parts.remove()
    log.info("tokenizer checkpoint %s: %d units", args.out, q.k_merged)
    return 0


def tokenize_readable(tok: Tokenizer, paths: list[str], deduplicate: bool, skipped: dict[str, str],
                      where: str = "units") -> list[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """``[(index in paths, (segments, units)), ...]`` of the files of one batch that could be read. The batch
    goes through the tokenizer at once; when the audio reader refuses one of its files (:class:`AudioError`) the
    batch is tokenized again file by file, and each refused file is recorded as skipped (in ``skipped`` too)."""
    try:
        return list(enumerate(tok.batch(paths, deduplicate=deduplicate)))
    except AudioError:
        pass
    done = []
    for i, path in enumerate(paths):
        try:
            done.append((i, tok.batch([path], deduplicate=deduplicate)[0]))
        except AudioError as e:
            record_skip(path, e.problem, where)
            skipped[str(path)] = e.problem
    return done


def write_units(args, variant: str) -> int:
    """``syllablelm units`` with parsed arguments and the unit variant chosen."""
    tok = Tokenizer.from_pretrained(args.checkpoint, device=_device(args.device), **run_options(args))
    run = tok.run_settings()
    log.info("units: %s", tok.describe_run())
    store = UnitStore(args.out)
    store.claim_variant(args.version, variant)  # a resumed run must not mix variants in one version
    n_shards, todo = store.shards_to_write(args.version, args.rank, args.world_size, args.shards)
    dm = SpeechDataModule(predict_dirs=args.data, manifest_cache=args.manifest_cache, num_workers=0)
    for shard in todo:
        ds = dm.dataset("predict", rank=shard, world_size=n_shards)  # whole files of this shard
        out, skipped = {}, {}
        paths = [(ds.entries[it.entry].id, ds.entries[it.entry].path) for it in ds.items]
        for start in tqdm(range(0, len(paths), args.batch_size), desc=f"units rank {args.rank} shard {shard}",
                          unit="batch"):
            chunk = paths[start:start + args.batch_size]
            for i, result in tokenize_readable(tok, [p for _, p in chunk], deduplicates(variant), skipped):
                out[chunk[i][0]] = result
        store.write_shard(args.version, shard, n_shards, out, skipped=skipped)
        fault_point("shard.written")  # a crash between shards: the rerun writes only the missing ones
    if args.rank == 0:
        manifest = store.finalize_when_complete(args.version, n_shards, timeout=args.wait_timeout, meta={
            "vocab_size": tok.vocab_size, "checkpoint": args.checkpoint, "data": args.data,
            "variant": variant, "deduplicated": deduplicates(variant), "tokenizer_run": run,
            "skipped": dm.manifest("predict").skipped})  # with every shard's own skips
        log.info("unit version %d complete (%s units): %s (%d files skipped)", args.version, variant,
                 store.version_dir(args.version), len(manifest["meta"]["skipped"]))
    return 0

