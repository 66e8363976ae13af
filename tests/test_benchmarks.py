"""The GPU smoke script's CPU path: every stage runs through the real CLI and reports a throughput."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_smoke_script_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_smoke.py"), "--device", "cpu", "--size", "tiny",
                    "--steps", "3", "--utterances", "24", "--out", str(out)], check=True, env=env, cwd=tmp_path,
                   timeout=600, capture_output=True)
    results = {r["stage"]: r for r in json.loads(out.read_text())}
    assert list(results) == ["teacher", "losspred", "sylboost", "units", "speechlm", "generate"]
    for r in results.values():
        rates = [v for k, v in r.items() if k.endswith("_per_s")]
        assert rates and all(v > 0 for v in rates), r
    assert results["teacher"]["batches"] == 3 and results["speechlm"]["batches"] == 3


def test_sylboost_cache_benchmark_runs_and_the_cache_changes_no_loss():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks/sylboost_cache.py"), "--steps", "2", "--batch", "2"],
                         check=True, env=env, capture_output=True, text=True, timeout=300).stdout
    line = next(x for x in out.splitlines() if "speed-up" in x)
    assert float(line.split("largest loss difference")[1]) < 1e-5
