"""Running ``syllablelm`` stages as subprocesses from a command (the demo, ``sylboost-gain``): each stage in its
own process with its log, wall time and peak memory, skipped when its output exists; tiny configs rewritten to a
working folder."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from syllablelm.fileio import write_text

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs" / "tiny"


class Runner:
    """Runs each stage as a ``syllablelm`` subprocess and records its wall time and peak memory."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.timings: dict[str, dict] = {}
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", SYLLABLELM_CACHE=str(workdir / "cache"),
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def run(self, name: str, args: list[str], done: Path | None = None, resume: Path | None = None) -> None:
        """Run ``syllablelm ARGS`` unless it finished before: a finished stage leaves ``logs/NAME.done`` (and
        its ``done`` output, when given). A ``fit`` interrupted after writing ``resume`` (its ``last.ckpt``)
        continues from it (``--ckpt_path``) instead of starting again."""
        marker = self.workdir / "logs" / f"{name}.done"
        if marker.exists() and (done is None or done.exists()):
            log.info("%s: already done (%s)", name, done or marker)
            self.timings.setdefault(name, {"skipped": True})
            return
        if resume is not None and resume.exists():
            args = [*args, "--ckpt_path", str(resume)]
        log.info("%s: syllablelm %s", name, " ".join(args))
        logfile = self.workdir / "logs" / f"{name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(logfile, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=self.workdir,
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            tail = logfile.read_text()[-3000:]
            raise RuntimeError(f"stage {name} failed (log: {logfile}):\n{tail}")
        self.timings[name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
        write_text(marker, " ".join(args) + "\n")


def write_config(src: str, dst: Path, workdir: Path, edit) -> Path:
    """A tiny config with the workdir's paths, edited by ``edit(cfg)``. One pass over the config's own text, so a
    workdir whose path contains ``runs/tiny`` or ``data/synth`` is never rewritten again."""
    new = {"data/synth": str(workdir / "data/synth"), "runs/tiny": str(workdir / "runs")}
    text = re.sub("|".join(map(re.escape, new)), lambda m: new[m.group(0)], (CONFIGS / src).read_text())
    cfg = yaml.safe_load(text)
    edit(cfg)
    write_text(dst, yaml.safe_dump(cfg, sort_keys=False))
    return dst


def place_run(cfg: dict, root: Path) -> None:
    """Put a Lightning config's outputs under ``root``: its root dir, its checkpoints in ``root/checkpoints`` and
    its TensorBoard run ``root.name`` under ``root.parent``."""
    cfg["trainer"]["default_root_dir"] = str(root)
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(root.parent), name=root.name)
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(root / "checkpoints")


def regenerate_test_too(cfg: dict) -> None:
    """Reports score every stage on the held-out test split, so SylBoost writes test boundaries too."""
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("BoundaryRegeneration"):
            cb["init_args"] = {"splits": ["train", "val", "test"]}
