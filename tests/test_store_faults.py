"""Damaged store versions (issue 25, items 3, 4 and 7): every read of a truncated, bit-flipped or missing shard, of
an absent version and of a version without manifest raises one clear error naming the file (or the version
folder), what is wrong and how to regenerate it; "latest" refuses to fall back past a damaged version."""
import json

import numpy as np
import pytest

from datamodules.boundary_store import BoundaryStore
from datamodules.distributed import resolve_version
from datamodules.label_store import LabelStore
from datamodules.shard_store import (
    AbsentVersionError,
    DamagedVersionError,
    IncompleteVersionError,
    StoreError,
    command_text,
)
from datamodules.unit_store import UnitStore
from syllablelm.audio.alignments import SegmentError

VERSION = 1


def _value(kind: str, rng: np.random.Generator):
    n = int(rng.integers(10, 30))
    edges = np.cumsum(rng.uniform(0.05, 0.2, n + 1))
    segments = np.stack([edges[:-1], edges[1:]], 1)
    if kind == "boundary":
        return segments
    if kind == "units":
        return segments, rng.integers(0, 50, n)
    return rng.integers(0, 50, 10 * n)


STORES = {"boundary": (BoundaryStore, {}, "the SylBoost `syllablelm fit` that writes boundary version "),
          "units": (UnitStore, {"vocab_size": 50, "variant": "dedup"}, "`syllablelm units --out "),
          "labels": (LabelStore, {"num_labels": 50}, "`syllablelm labels --out ")}


def _write(kind: str, root, version: int = VERSION, command: bool = True):
    """A two-shard version of ``kind`` (40 utterances a shard: the middle of a shard file is array data); with
    ``command`` its manifest records a ``syllablelm`` command line as the console script would."""
    cls, meta, _ = STORES[kind]
    store = cls(root)
    rng = np.random.default_rng(0)
    for rank in range(2):
        store.write_shard(version, rank, 2, {f"u{rank}-{i:02d}": _value(kind, rng) for i in range(40)})
    if command:
        meta = {**meta, "command_line": ["/venv/bin/syllablelm", f"make-{kind}", "--out", str(root)], "cwd": "/wd"}
    store.finalize(version, 2, meta=meta)
    return store


def _raises(cls, fn, *parts: str) -> str:
    """``fn()`` raises ``cls`` (a SegmentError, as store read errors always were) whose one-line message
    contains every part."""
    with pytest.raises(cls) as info:
        fn()
    message = str(info.value)
    assert isinstance(info.value, SegmentError) and "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def _flip_middle(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rerun(kind, root) -> str:
    return f"to regenerate it, rerun `syllablelm make-{kind} --out {root}` in /wd (the command that wrote it)"


@pytest.mark.parametrize("kind", STORES)
def test_truncated_shard(kind, tmp_path):
    store = _write(kind, tmp_path / kind)
    path = store.shard_path(VERSION, 1, 2)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:size // 2])
    problem = (f"{path}: {store.kind} version {VERSION} is damaged: the shard file is truncated: {size // 2} of "
               f"{size} bytes; {_rerun(kind, tmp_path / kind)}")
    assert store.status(VERSION) == ("damaged", problem)
    assert not store.is_complete(VERSION) and store.versions() == []
    _raises(DamagedVersionError, lambda: store.load(VERSION), problem)
    _raises(DamagedVersionError, lambda: store.verify(VERSION), problem)
    _raises(DamagedVersionError, lambda: store.manifest(VERSION), problem)
    assert store.manifest(VERSION, check_shards=False)["version"] == VERSION  # as recorded, for a rewrite
    # the rerun the message asks for redoes that shard (and only it), then rewrites the manifest
    assert store.shards_to_write(VERSION, 0, 1, 2) == (2, [1])


@pytest.mark.parametrize("kind", STORES)
def test_bit_flipped_shard(kind, tmp_path):
    store = _write(kind, tmp_path / kind)
    path = store.shard_path(VERSION, 0, 2)
    _flip_middle(path)
    assert store.is_complete(VERSION)  # the cheap check sees sizes only; reading checks the bytes
    message = _raises(DamagedVersionError, lambda: store.load(VERSION),
                      f"{path}: {store.kind} version {VERSION} is damaged: checksum mismatch: the shard file's crc32 "
                      "is ", _rerun(kind, tmp_path / kind))
    _raises(DamagedVersionError, lambda: store.verify(VERSION, checksums=True), message)
    assert store.shards_to_write(VERSION, 0, 1, 2) == (2, [0])
    other = type(store)(tmp_path / "copy")
    _raises(DamagedVersionError, lambda: store.copy_version(VERSION, other), message)


@pytest.mark.parametrize("kind", STORES)
def test_deleted_shard_under_an_intact_manifest(kind, tmp_path):
    root = tmp_path / kind
    _write(kind, root, version=0)
    store = _write(kind, root)
    path = store.shard_path(VERSION, 1, 2)
    path.unlink()
    problem = (f"{path}: {store.kind} version {VERSION} is damaged: the shard file is missing, though the manifest "
               f"lists it; {_rerun(kind, root)}")
    assert store.status(VERSION) == ("damaged", problem) and store.versions() == [0]
    _raises(DamagedVersionError, lambda: store.load(VERSION), problem)
    # "latest" does not quietly fall back to version 0 (that is how a report lost its iteration-2 row)
    latest = _raises(DamagedVersionError, lambda: resolve_version(store, "latest"), problem, '"latest" does not fall')
    _raises(DamagedVersionError, store.latest_version, latest)
    assert resolve_version(store, 0) == 0 and len(store.load(0)) == 80  # an explicit older version still reads
    # an incomplete newer version (being written) is passed over as before
    store.write_shard(VERSION + 1, 0, 1, {})
    _raises(DamagedVersionError, store.latest_version, problem)
    store.remove(VERSION)
    assert store.latest_version() == 0


@pytest.mark.parametrize("kind", STORES)
def test_absent_and_incomplete_versions(kind, tmp_path):
    root = tmp_path / kind
    cls, _, hint = STORES[kind]
    _raises(AbsentVersionError, lambda: resolve_version(cls(root), "latest"),
            f"{root}: no complete {cls.kind} version to read ({root} does not exist); to write one, rerun ")
    store = _write(kind, root)
    absent = _raises(AbsentVersionError, lambda: store.load(7), f"{store.version_dir(7)}: {store.kind} version 7 does "
                     f"not exist (versions here: {VERSION} complete); to write it, rerun ", hint)
    assert store.status(7) == ("absent", absent)
    store.invalidate(VERSION)
    incomplete = _raises(IncompleteVersionError, lambda: store.load(VERSION),
                         f"{store.version_dir(VERSION)}: {store.kind} version {VERSION} is incomplete (no "
                         "manifest.json; 2 shard(s) written): it is still being written or its writer stopped "
                         "early; if no writer is running, rerun ", hint)
    assert store.status(VERSION) == ("incomplete", incomplete)
    assert isinstance(pytest.raises(FileNotFoundError, store.manifest, VERSION).value, IncompleteVersionError)
    _raises(AbsentVersionError, lambda: store.load(7), "(versions here: 1 incomplete)")
    assert store.latest_version() is None


@pytest.mark.parametrize("kind", STORES)
def test_manifests_without_sizes_still_load_and_damage_still_names_the_file(kind, tmp_path):
    """Old-layout versions (one .npz per shard) whose manifests predate recorded sizes."""
    from tests.legacy_store import write_legacy_version

    root = tmp_path / kind
    cls, meta, hint = STORES[kind]
    rng = np.random.default_rng(0)
    shards = [{f"u{r}-{i:02d}": _value(kind, rng) for i in range(40)} for r in range(2)]
    vdir = write_legacy_version(root, cls.kind, VERSION, shards, meta, sizes=False)
    store = cls(root)
    got = store.load(VERSION)
    assert sorted(got) == sorted([*shards[0], *shards[1]]) and store.versions() == [VERSION]
    assert store.layout(VERSION) == "npz"
    hint = f"to regenerate it, rerun {hint}"
    shard, path = vdir / "shard-00001-of-00002.npz", vdir / "manifest.json"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])  # what a raw zipfile.BadZipFile traceback used to report
    _raises(DamagedVersionError, lambda: store.load(VERSION), f"{shard}: {store.kind} version {VERSION} is damaged: "
            "the shard file is not a readable .npz archive (BadZipFile: ", hint)
    shard.write_bytes(data)
    _flip_middle(shard)  # inside an array: the zip member's own CRC
    _raises(DamagedVersionError, lambda: store.load(VERSION), f"{shard}: {store.kind} version {VERSION} is damaged: "
            "the zip member values.npy is unreadable (BadZipFile: Bad CRC-32", hint)
    path.write_text(path.read_text()[:100])
    _raises(DamagedVersionError, lambda: store.load(VERSION), f"{path}: {store.kind} version {VERSION} is damaged: "
            "its manifest is unreadable (", hint)


@pytest.mark.parametrize("kind", STORES)
def test_column_manifests_record_every_file(kind, tmp_path):
    store = _write(kind, tmp_path / kind)
    manifest = json.loads((store.version_dir(VERSION) / "manifest.json").read_text())
    written = {p.name for p in store.version_dir(VERSION).iterdir()} - {"manifest.json"}
    recorded = {name for s in [*manifest["shards"], manifest["index"]] for name in s["files"]}
    assert manifest["layout"] == "columns" and recorded == written
    assert all(set(rec) == {"bytes", "crc32"} for s in manifest["shards"] for rec in s["files"].values())
    index = store.version_dir(VERSION) / "index.start.npy"
    _flip_middle(index)
    _raises(DamagedVersionError, lambda: store.load(VERSION), f"{index}: {store.kind} version {VERSION} is damaged: "
            "checksum mismatch")


def test_finalize_records_the_command_and_boundary_hints_name_their_step(tmp_path):
    store = BoundaryStore(tmp_path)
    store.write_shard(0, 0, 1, {"a": np.array([[0.0, 0.5]])})
    meta = store.finalize(0, 1)["meta"]
    assert isinstance(meta["command_line"], list) and meta["cwd"]  # this process's sys.argv (pytest's)
    assert command_text(["/x/bin/syllablelm", "fit", "--config", "a b.yaml"]) == "syllablelm fit --config 'a b.yaml'"
    assert command_text(["/repo/experiments/cli.py", "units"]) == "syllablelm units"  # python -m experiments.cli
    assert command_text(["/repo/tools/run.py", "-x"]) == "python /repo/tools/run.py -x"
    assert "LossPred's `syllablelm predict`" in store.writer_hint(0)
    assert "SylBoost `syllablelm fit` that writes boundary version 2" in store.writer_hint(2)
    with pytest.raises(StoreError, match=r"shard-00000-of-00001.offsets.npy: a boundary shard written for version 1 "
                       r"is unreadable \(.*\); delete it and rerun `"):
        store.shard_path(1, 0, 1).parent.mkdir()
        store.shard_path(1, 0, 1).write_bytes(b"not an npz")
        store.finalize(1, 1)


def test_datamodules_surface_the_store_error(tmp_path):
    """The SpeechLM's DataModule and the speech DataModule pass the store's error through unchanged."""
    from datamodules.speech import SpeechDataModule
    from datamodules.unit_data import UnitsDataModule

    for kind, make in (("boundary", lambda root, v: SpeechDataModule(boundary_dir=str(root), boundary_version=v)),
                       ("units", lambda root, v: UnitsDataModule(unit_dir=str(root), version=v))):
        root = tmp_path / kind
        store = _write(kind, root)
        path = store.shard_path(VERSION, 0, 2)
        _flip_middle(path)
        for version in (VERSION, "latest"):
            _raises(DamagedVersionError, make(root, version).setup, f"{path}: ", "checksum mismatch",
                    _rerun(kind, root))
        path.unlink()
        _raises(DamagedVersionError, make(root, "latest").setup, f"{path}: ", "is missing", _rerun(kind, root))
        _raises(AbsentVersionError, make(root, 3).setup, f"{store.version_dir(3)}: ", "does not exist")
