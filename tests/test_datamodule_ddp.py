import json
import os
import subprocess
import sys

import numpy as np
import pytest

from datamodules.boundary_store import BoundaryStore
from tests.conftest import REPO, make_librispeech


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_offline_pass_covers_each_utterance_once(tmp_path):
    ids = make_librispeech(tmp_path / "c", speakers=3, utts=3)  # 9 utterances: uneven 5/4 split
    store = BoundaryStore(tmp_path / "store")
    for version, end in ((0, 0.5), (1, 0.7)):
        store.write_shard(version, 0, 1, {i: np.array([[0.0, end]]) for i in ids})
        store.finalize(version, 1)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    subprocess.run([sys.executable, str(REPO / "tests/ddp_scripts/offline_pass.py"), "--data", str(tmp_path / "c"),
                    "--store", str(tmp_path / "store"), "--out", str(tmp_path), "--cache", str(tmp_path / "cache")],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # both ranks read the version rank 0 resolved, with identical contents
    assert r0["version"] == r1["version"] == 1 and r0["digest"] == r1["digest"]
    # offline pass: every utterance exactly once across ranks
    assert sorted(r0["predict"] + r1["predict"]) == sorted(ids)
    assert len(r0["predict"]) == 5 and len(r1["predict"]) == 4
    # training: equal step counts, everything covered
    assert len(r0["train"]) >= 4 and set(r0["train"] + r1["train"]) == set(ids)
