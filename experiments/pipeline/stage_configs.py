"""Reading a pipeline stage's config without running it: where a Lightning stage writes, the checkpoint a ``fit``
stage resumes from, the config as LightningCLI parses it, and the values of an offline command's flags.

Used by ``syllablelm pipeline`` (resume) and its ``--dry-run`` checks (:mod:`experiments.pipeline.checks`).
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import yaml


def _callbacks(trainer: dict) -> list[dict]:
    cbs = trainer.get("callbacks") or []
    return [cbs] if isinstance(cbs, dict) else list(cbs)


def outputs_of(cfg: dict) -> dict:
    trainer, data = cfg.get("trainer") or {}, (cfg.get("data") or {}).get("init_args") or {}
    out = {"root_dir": trainer.get("default_root_dir")}
    for cb in _callbacks(trainer):
        name, init = str(cb.get("class_path", "")), cb.get("init_args") or {}
        if name.endswith("ModelCheckpoint") and init.get("dirpath"):
            out["checkpoint_dir"] = init["dirpath"]
        if name.endswith("BoundaryWriter"):
            out["boundary_store"] = init.get("store_dir")
        if name.endswith("BoundaryRegeneration"):
            out["boundary_store"] = data.get("boundary_dir")  # later versions go to the store it trains from
    if out.get("checkpoint_dir") is None and out["root_dir"]:
        out["checkpoint_dir"] = str(Path(out["root_dir"]) / "checkpoints")
    return {k: v for k, v in out.items() if v}


def _merge(base: dict, over: dict) -> dict:
    """jsonargparse's overlay rule for YAML: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lightning_outputs(config: str | os.PathLike, args: list[str] = ()) -> dict:
    """Where a Lightning config writes: ``root_dir``, ``checkpoint_dir``, ``boundary_store`` (raw YAML, with the
    overlays a stage adds as ``--config FILE`` in its args)."""
    cfg = {}
    for path in [config, *flag_values(list(args), "--config")]:
        cfg = _merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    return outputs_of(cfg)


def fit_resume_checkpoint(stage) -> Path | None:
    """The newest of a ``fit`` stage's ``last.ckpt`` and Lightning's SLURM ``hpc_ckpt_*.ckpt``."""
    outs = lightning_outputs(stage.config, stage.args)
    found = []
    if outs.get("checkpoint_dir"):
        found.append(Path(outs["checkpoint_dir"]) / "last.ckpt")
    if outs.get("root_dir"):
        found += Path(outs["root_dir"]).glob("hpc_ckpt_*.ckpt")
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def parse_lightning(config: str, args: list[str]) -> dict:
    """The config as LightningCLI parses it (overrides applied, classes resolved, nothing instantiated).
    Raises ValueError with jsonargparse's message when it does not parse."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class ParseOnly(LightningCLI):
        def instantiate_classes(self) -> None:
            pass

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli = ParseOnly(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                            run=False, args=["--config", config, *args], seed_everything_default=0)
    except SystemExit as e:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and not ln.startswith("usage:")]
        raise ValueError("; ".join(lines[-6:]) or f"LightningCLI exited with {e.code}") from None
    return cli.config.as_dict()


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values after ``flag`` up to the next option (``--data a b --out c`` -> ``[a, b]`` for ``--data``)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                out.append(args[i])
                i += 1
            continue
        if args[i].startswith(flag + "="):
            out.append(args[i].split("=", 1)[1])
        i += 1
    return out


def flag_value(args: list[str], flag: str, default=None):
    vals = flag_values(args, flag)
    return vals[0] if vals else default
