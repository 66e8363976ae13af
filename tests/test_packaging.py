"""A wheel (``pip install .``, not editable) carries every shipped model and config, and finds them when run from
another directory."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

SHIPPED = [p.relative_to(REPO).as_posix() for p in (REPO / "experiments" / "pretrained").rglob("*") if p.is_file()]
CONFIGS = [p.relative_to(REPO).as_posix() for p in (REPO / "experiments" / "configs").rglob("*.yaml")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src") / "syllablelm"  # a copy: setuptools writes build/ into the source tree
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                              ".pytest_cache", "runs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out), str(src)], check=True, cwd=src, timeout=600,
                   env={**os.environ, "PIP_NO_INDEX": "1"})
    wheels = list(out.glob("syllablelm-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_lists_every_shipped_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "experiments/pretrained/backbone/model.safetensors" in names
    assert set(SHIPPED) <= names, sorted(set(SHIPPED) - names)
    assert set(CONFIGS) <= names, sorted(set(CONFIGS) - names)
    assert "syllablelm/synthesis/data/sentences.txt" in names
    assert not any(n.startswith("tests/") for n in names)


def test_an_installed_wheel_finds_its_models_from_another_directory(wheel, tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import experiments.demo as d, syllablelm.checkpoints as ck; "
            "assert str(d.SHIPPED).startswith(%r), d.SHIPPED; "
            "missing = [f for f in d.SHIPPED_FILES if not (d.SHIPPED / f).exists()]; assert not missing, missing; "
            "print(*(ck.load_backbone(d.SHIPPED / f).format for f in ('backbone', 'teacher.ckpt')))") % str(site)
    # -I: isolated mode, so neither the checkout nor its editable install is on the path; only the wheel's files
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                            cwd=elsewhere, capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["hf", "teacher-ckpt"]
