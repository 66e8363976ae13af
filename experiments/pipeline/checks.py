"""What ``syllablelm pipeline --dry-run`` checks: configs, paths, file formats, and that the stages fit together.

Nothing is trained and no model is built. Lightning configs are parsed (not instantiated) by LightningCLI, so
unknown keys, misspelt class paths and wrongly typed arguments are found; every input path must exist or be the
output of an earlier stage; existing files are opened just far enough to know their format (audio headers,
checkpoint keys and configs, k-means shapes); then the stages are checked against each other (the label count
the teacher predicts, the layers asked for, the LossPred/SylBoost subset, the store paths, the unit vocabulary).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from experiments.pipeline.file_formats import ModelInfo, audio_folder_info, kmeans_info, model_info
from experiments.pipeline.stage_configs import (
    fit_resume_checkpoint,
    flag_value,
    flag_values,
    lightning_outputs,
    outputs_of,
    parse_lightning,
)

log = logging.getLogger(__name__)

DATA_KEYS = ("train_dirs", "val_dirs", "test_dirs", "predict_dirs")
STORE_KEYS = ("label_dir", "boundary_dir", "unit_dir", "val_unit_dir")


# ------------------------------------------------------------------------------------ the checks
class _Checker:
    def __init__(self):
        self.problems: list[str] = []
        self.produced: dict[str, str] = {}  # path -> stage that makes it
        self.dry_run = True

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def made_earlier(self, path: str) -> str | None:
        p = os.path.normpath(path)
        for out, stage in self.produced.items():
            if p == out or p.startswith(out + os.sep):
                return stage
        return None

    def produce(self, path: str | None, stage: str) -> None:
        if path:
            self.produced.setdefault(os.path.normpath(path), stage)

    def need(self, stage: str, what: str, path: str | None, fmt=None):
        """An input: made by an earlier stage, or existing and of the right format (``fmt(Path)`` describes
        it or raises ValueError). Returns the format's description (None when not checked)."""
        if not path:
            return None
        maker = self.made_earlier(path)
        if maker is not None:
            log.info("  %-16s %s (made by stage %s)", what, path, maker)
            return None
        if not Path(path).exists():
            self.problem(f"stage {stage}: {what} {path} does not exist (and no earlier stage makes it)")
            return None
        if fmt is None:
            return None
        try:
            info = fmt(Path(path))
        except Exception as e:  # format readers raise ValueError/AudioError naming the file
            self.problem(f"stage {stage}: {what}: {e}")
            return None
        log.info("  %-16s %s (%s)", what, path, info)
        return info


def _processes(cfg: dict) -> int:
    t = cfg.get("trainer") or {}
    devices, nodes = t.get("devices", 1), t.get("num_nodes", 1) or 1
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    try:
        return int(devices) * int(nodes)
    except (TypeError, ValueError):  # "auto": whatever is visible
        return -1


def validate(pipe, stages, extra: list[str], launch, *, dry_run: bool = True) -> list[str]:
    """Every problem found (empty = the pipeline can start); logs each stage's status and what each path is.
    A single-process launch of a multi-device config is a note in a dry run (the real run will be launched
    differently) and a problem otherwise."""
    ck = _Checker()
    ck.dry_run = dry_run
    role: dict[str, dict] = {}  # what later cross-checks need to know
    for stage in pipe.stages:  # stages before --from/--only still produce paths that later ones read
        run = stage in stages
        if run:
            status = "complete: skipped" if pipe.is_complete(stage) else "to run"
            if status == "to run" and stage.command == "fit":
                resume = fit_resume_checkpoint(stage)
                status = f"resumes from {resume}" if resume else status
            log.info("stage %s (%s): %s", stage.name, stage.command, status)
        if stage.lightning:
            try:
                cfg = parse_lightning(stage.config, [*stage.args, *pipe.lightning_args, *launch.trainer_args(),
                                                     *extra])
            except (ValueError, OSError) as e:
                ck.problem(f"stage {stage.name}: {stage.config} does not parse: {e}")
                continue
            if run:
                _check_lightning(ck, stage, cfg, launch, role)
            outs = outputs_of(cfg)
            for key in ("boundary_store", "checkpoint_dir"):
                ck.produce(outs.get(key), stage.name)
        else:
            if run:
                _check_offline(ck, stage, role)
            out = flag_value(stage.args, "--out")
            ck.produce(out, stage.name)
        ck.produce(stage.complete, stage.name)
    _cross_checks(ck, role)
    return ck.problems


def _check_lightning(ck: _Checker, stage, cfg: dict, launch, role: dict) -> None:
    data = (cfg.get("data") or {}).get("init_args") or {}
    model = cfg.get("model") or {}
    procs = _processes(cfg)
    if launch.kind == "single" and procs != 1:
        msg = (f"stage {stage.name}: {stage.config} asks for {procs if procs > 0 else 'all visible'} devices; "
               "launch one pipeline process per device with torchrun or srun (experiments/slurm/), or add "
               "--set trainer.devices=1 --set trainer.num_nodes=1")
        if ck.dry_run:
            log.info("  note: %s", msg)
        else:
            ck.problem(msg)
    for key in DATA_KEYS:
        for d in data.get(key) or []:
            ck.need(stage.name, f"data.{key}", d, audio_folder_info)
    for key in STORE_KEYS:
        ck.need(stage.name, f"data.{key}", data.get(key))
    ck.need(stage.name, "alignments", data.get("alignment_dir"))
    init = (model.get("init_args") or {}).get("init_from")
    info = ck.need(stage.name, "init_from", init, model_info)
    name = str(model.get("class_path", ""))
    entry = {"stage": stage.name, "data": data, "model": model.get("init_args") or {}, "info": info}
    for suffix, key in (("TeacherModule", "teacher"), ("SylBoostModule", "sylboost"), ("SpeechLMModule", "lm")):
        if name.endswith(suffix):
            role[key] = entry
    if name.endswith("TeacherModule") and stage.command == "predict":
        role["losspred"] = {**entry, "store": outputs_of(cfg).get("boundary_store")}


def _check_offline(ck: _Checker, stage, role: dict) -> None:
    a = stage.args
    for d in flag_values(a, "--data"):
        ck.need(stage.name, "--data", d, audio_folder_info)
    if not flag_value(a, "--out") and stage.command in ("labels", "units", "quantize"):
        ck.problem(f"stage {stage.name}: {stage.command} needs --out")
    info = ck.need(stage.name, "--checkpoint", flag_value(a, "--checkpoint"), model_info)
    km = ck.need(stage.name, "--kmeans", flag_value(a, "--kmeans"), kmeans_info)
    for opt in ("--alignments", "--lm", "--pairs", "--tune-data", "--store"):
        ck.need(stage.name, opt, flag_value(a, opt))
    if stage.command == "labels":
        role["labels"] = {"stage": stage.name, "info": info, "kmeans": km, "layer": flag_value(a, "--layer"),
                          "out": flag_value(a, "--out"), "clusters": flag_value(a, "--num-clusters", "100"),
                          "features": flag_value(a, "--features", "mfcc"), "data": flag_values(a, "--data"),
                          "train_hours": flag_value(a, "--train-hours"), "seed": int(flag_value(a, "--seed", 0)),
                          "extra": flag_values(a, "--extra-data")}
    elif stage.command == "quantize":
        role["quantize"] = {"stage": stage.name, "k": int(flag_value(a, "--k", 24576)),
                            "k_merged": int(flag_value(a, "--k-merged", 8192)), "out": flag_value(a, "--out")}
    elif stage.command == "store-copy":
        role.setdefault("copies", {})[os.path.normpath(flag_value(a, "--out", ""))] = flag_value(a, "--store")
    elif stage.command == "units":
        role.setdefault("units", []).append({"stage": stage.name, "out": flag_value(a, "--out")})
        log.info("  units: segments of at most %s frames, encoder precision %s, --chunk-seconds %s (0: whole files)",
                 flag_value(a, "--max-segment-frames", "the tokenizer's"),
                 flag_value(a, "--precision", "the tokenizer's record, else auto"),
                 flag_value(a, "--chunk-seconds", 60))


def _same(a, b) -> bool:
    return a is not None and b is not None and os.path.normpath(str(a)) == os.path.normpath(str(b))


def _cross_checks(ck: _Checker, role: dict) -> None:
    lab, teacher, sb, lp, q, lm = (role.get(k) for k in ("labels", "teacher", "sylboost", "losspred", "quantize", "lm"))
    if lab and lab["features"] == "teacher":
        info, layer = lab["info"], lab["layer"]
        if layer is None:
            ck.problem(f"stage {lab['stage']}: --features teacher needs --layer")
        elif isinstance(info, ModelInfo) and info.layers is not None and not 0 <= int(layer) <= info.layers:
            ck.problem(f"stage {lab['stage']}: --layer {layer} but the checkpoint has {info.layers} layers")
        if lab["kmeans"] and isinstance(info, ModelInfo) and info.hidden and lab["kmeans"][1] != info.hidden:
            ck.problem(f"stage {lab['stage']}: k-means centroids have {lab['kmeans'][1]} dimensions but layer "
                       f"{layer} has {info.hidden}")
    if lab and teacher:
        k = lab["kmeans"][0] if lab["kmeans"] else int(lab["clusters"])
        info = teacher["info"]
        if isinstance(info, ModelInfo) and info.num_labels is not None and info.num_labels != k:
            ck.problem(f"stage {teacher['stage']}: the teacher's head predicts {info.num_labels} classes but stage "
                       f"{lab['stage']} makes {k} labels")
        if isinstance(info, ModelInfo) and info.extra.get("has_head") is False:
            ck.problem(f"stage {teacher['stage']}: {teacher['model'].get('init_from')} has no pretraining head "
                       "(final_proj): LossPred needs a HuBERT pretraining checkpoint, not a fine-tuned one")
        if not _same(teacher["data"].get("label_dir"), lab["out"]):
            ck.problem(f"stage {teacher['stage']}: data.label_dir {teacher['data'].get('label_dir')} is not stage "
                       f"{lab['stage']}'s --out {lab['out']}")
    if lab and lp and lp["data"].get("predict_dirs") is None:
        hours = lab["train_hours"]
        mine = (lab["data"], float(hours) if hours else None, lab["seed"] if hours else lp["data"].get("seed"))
        theirs = (lp["data"].get("train_dirs"), lp["data"].get("train_hours"), lp["data"].get("seed"))
        if hours is None and theirs[1] is not None:
            mine = (mine[0], theirs[1], mine[2])  # labelling whole folders covers any subset of them
            covered = all(any(_same(d, x) for x in lab["data"]) for d in theirs[0] or [])
        else:
            covered = mine[0] == theirs[0] and mine[1:] == theirs[1:]
        if not covered:
            ck.problem(f"stage {lab['stage']} labels (--data, --train-hours, --seed) = {mine} but stage {lp['stage']} "
                       f"predicts data.(train_dirs, train_hours, seed) = {theirs}: LossPred would miss labels")
        labelled = lab["data"] + lab["extra"]
        for d in lp["data"].get("predict_extra_dirs") or []:
            if not any(_same(d, x) for x in labelled):
                ck.problem(f"stage {lp['stage']} predicts data.predict_extra_dirs {d} but stage {lab['stage']} "
                           "does not "
                           "label it (add it to --extra-data)")
    if sb:
        info, layer = sb["info"], sb["model"].get("feature_layer")
        if isinstance(info, ModelInfo) and info.layers is not None and layer is not None and layer > info.layers:
            ck.problem(f"stage {sb['stage']}: feature_layer {layer} but {sb['model'].get('init_from')} has "
                       f"{info.layers} layers")
    if sb and lp:
        source = sb["data"].get("boundary_dir")
        while source is not None and os.path.normpath(source) in role.get("copies", {}):  # seeded by store-copy
            source = role["copies"][os.path.normpath(source)]
        if not _same(source, lp["store"]):
            ck.problem(f"stage {sb['stage']}: data.boundary_dir {sb['data'].get('boundary_dir')} is not where stage "
                       f"{lp['stage']} writes boundaries ({lp['store']})")
        if sb["data"].get("require_boundaries"):
            covered = (lp["data"].get("predict_dirs") or []) + (lp["data"].get("train_dirs") or []) + (
                lp["data"].get("predict_extra_dirs") or [])
            for d in sb["data"].get("val_dirs") or []:
                if not any(_same(d, x) for x in covered):
                    ck.problem(f"stage {sb['stage']} validates on {d}, which stage {lp['stage']} gives no boundaries "
                               "(add it to the LossPred config's data.predict_extra_dirs)")
        for key in ("train_dirs", "train_hours", "seed"):
            if lp["data"].get("predict_dirs") is None and lp["data"].get(key) != sb["data"].get(key):
                ck.problem(f"stage {lp['stage']} predicts boundaries for a different training set than stage "
                           f"{sb['stage']} trains on: data.{key} {lp['data'].get(key)!r} vs {sb['data'].get(key)!r}")
    if q and lm:
        vocab = (lm["model"].get("network") or {}).get("vocab_size")
        want = q["k_merged"] or q["k"]
        if vocab is not None and vocab != want:
            ck.problem(f"stage {lm['stage']}: network.vocab_size {vocab} but stage {q['stage']} makes {want} units")
    if lm and role.get("units"):
        outs = [u["out"] for u in role["units"]]
        if not any(_same(lm["data"].get("unit_dir"), o) for o in outs):
            ck.problem(f"stage {lm['stage']}: data.unit_dir {lm['data'].get('unit_dir')} is none of the units "
                       f"stages' outputs ({', '.join(map(str, outs))})")


def shared_dirs(pipe, stages) -> list[Path]:
    """Directories every rank must see the same way: the state dir and every store and checkpoint folder."""
    dirs = [pipe.state_dir]
    for stage in stages:
        if stage.lightning:
            outs = lightning_outputs(stage.config, stage.args)
            dirs += [Path(outs[k]) for k in ("boundary_store", "checkpoint_dir") if k in outs]
        else:
            out = flag_value(stage.args, "--out")
            if out:
                dirs.append(Path(out) if not Path(out).suffix else Path(out).parent)
    seen, unique = set(), []
    for d in dirs:
        key = os.path.normpath(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique
