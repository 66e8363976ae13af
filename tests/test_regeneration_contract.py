"""The regeneration contract (datamodules.contracts): SylBoostModule and SpeechDataModule implement the protocols,
the callback uses nothing of them but the protocols' members and sets none of their attributes, the collated batch
is exactly :class:`SpeechBatch`, and the callback runs against stand-ins that have nothing but the protocols."""
from __future__ import annotations

import ast
import types
from types import SimpleNamespace
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import torch

from callbacks.boundary_regeneration import BoundaryRegeneration
from datamodules.boundary_store import BoundaryStore
from datamodules.contracts import RegenerationData, RegenerationModule, SpeechBatch
from datamodules.dataset import collate
from tests import sylboost_helpers as H
from tests.conftest import REPO

CALLBACK = REPO / "callbacks" / "boundary_regeneration.py"
MODULE, DATA = "pl_module", "trainer.datamodule"


def members(protocol) -> set[str]:
    """The names a protocol declares (methods, properties, annotated attributes)."""
    return set(getattr(protocol, "__annotations__", {})) | {n for n in vars(protocol) if not n.startswith("_")}


# ---- what the callback's source uses of the module and the DataModule -----------------------------------------
def _is_datamodule(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "datamodule" and isinstance(node.value, ast.Name)
            and node.value.id == "trainer")


def callback_uses(source: str) -> tuple[dict[str, set[str]], list[str]]:
    """``({"pl_module": attributes read, "trainer.datamodule": attributes read}, problems)``. ``pl_module`` is the
    module's name everywhere in the callback; the DataModule is ``trainer.datamodule`` or a local name assigned from
    it. A problem is anything the scan cannot follow or that changes them other than through a method: setting or
    deleting an attribute, ``getattr``-style access, handing them to a function other than ``isinstance``,
    ``type`` or one of the callback's own methods taking them under the same parameter name."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    aliases = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _is_datamodule(node.value)
               for t in node.targets if isinstance(t, ast.Name)}
    methods = {node.name: [a.arg for a in node.args.args] for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef)}

    def kind(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and node.id == MODULE:
            return MODULE
        if _is_datamodule(node) or (isinstance(node, ast.Name) and node.id in aliases):
            return DATA
        return None

    uses: dict[str, set[str]] = {MODULE: set(), DATA: set()}
    problems = []
    for node in ast.walk(tree):
        which = kind(node)
        if which is None:
            continue
        parent, where = parents.get(node), f"line {node.lineno}"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            if not (isinstance(parent, ast.Assign) and _is_datamodule(parent.value)):
                problems.append(f"{where}: rebinds {node.id}")
        elif isinstance(parent, ast.Attribute) and parent.value is node:
            uses[which].add(parent.attr)
            if not isinstance(parent.ctx, ast.Load):
                problems.append(f"{where}: sets or deletes {which}.{parent.attr}")
        elif isinstance(parent, ast.Assign) and parent.value is node and which == DATA:
            pass  # dm = trainer.datamodule
        elif isinstance(parent, ast.Call) and node in parent.args:
            func = parent.func
            if isinstance(func, ast.Name) and func.id in ("isinstance", "type"):
                continue
            params = methods.get(func.attr, []) if (isinstance(func, ast.Attribute) and isinstance(
                func.value, ast.Name) and func.value.id == "self") else []
            position = parent.args.index(node) + 1  # after self
            name = node.id if isinstance(node, ast.Name) else None
            if not (position < len(params) and params[position] == (name or "")):
                problems.append(f"{where}: {which} handed to {ast.unparse(func)}")
        else:
            problems.append(f"{where}: {which} used as {ast.unparse(parent)!r}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "setattr", "hasattr", "delattr", "vars") and node.args and kind(node.args[0]):
            problems.append(f"line {node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, ...)")
    return uses, problems


def test_the_callback_uses_exactly_the_protocols():
    uses, problems = callback_uses(CALLBACK.read_text())
    assert problems == []
    assert uses[MODULE] == members(RegenerationModule)  # nothing undeclared, and no member the callback never uses
    assert uses[DATA] == members(RegenerationData)


def test_the_scan_catches_a_new_duck_typed_attribute_or_a_mutation():
    source = CALLBACK.read_text()
    extra = source + "\n\ndef _f(trainer, pl_module):\n    dm = trainer.datamodule\n    pl_module.student.train()\n" \
                     "    dm.boundaries.clear()\n    pl_module.iteration = 1\n    setattr(pl_module, 'x', 1)\n" \
                     "    helper(pl_module)\n"
    uses, problems = callback_uses(extra)
    assert {"student", "iteration"} <= uses[MODULE] - members(RegenerationModule)
    assert "boundaries" in uses[DATA] - members(RegenerationData)
    assert any("sets or deletes pl_module.iteration" in p for p in problems)
    assert any("setattr(pl_module" in p for p in problems)
    assert any("handed to helper" in p for p in problems)


def test_the_module_and_the_datamodule_implement_the_protocols(sylboost_setup):
    corpus, tmp, teacher, cache, _ = sylboost_setup
    model, dm = H.module(teacher), H.datamodule(corpus, tmp / "store", cache)
    assert isinstance(model, RegenerationModule) and isinstance(dm, RegenerationData)
    assert not isinstance(object(), RegenerationModule) and not isinstance(object(), RegenerationData)
    # every member is there, not just present enough for isinstance: call the plain ones
    assert (model.iterations, model.epochs_per_iteration, model.reinit_each_iteration) == (2, 1, True)
    assert not model.calibrates_delta and model.boundary_delta() is None  # a fixed rate: no δ
    searching = H.module(teacher, segmenter={})
    assert searching.calibrates_delta and searching.boundary_delta() is None
    model.set_boundary_delta(0.25)
    assert model.boundary_delta() == 0.25 and float(model.delta) == 0.25
    model.train()
    with model.evaluating():
        assert not model.training and not model.student.training and torch.is_inference_mode_enabled()
    assert model.training and model.student.training and not model.teacher.training
    model.restore_iteration(1)
    assert model.iteration == 1
    dm.setup("fit")
    assert dm.boundary_dir == str(tmp / "store") and dm.version == 0
    assert dm.has_split("train") and dm.has_split("val") and not dm.has_split("test")


# ---- the batch --------------------------------------------------------------------------------------------------
def conforms(value, tp) -> bool:
    """``value`` is of the (generic) type ``tp``: unions, list[X], tuple[X, ...], dict[K, V] and classes."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if tp is None or tp is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(conforms(v, args[0]) for v in value)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(conforms, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, origin or tp)


def test_conforms_checks_what_it_should():
    assert conforms([np.zeros((1, 2)), None], list[np.ndarray | None]) and not conforms([1], list[np.ndarray | None])
    assert conforms((1, 2), tuple[int, int]) and not conforms((1, 2.0), tuple[int, int])
    assert not conforms([1, 2], tuple[int, int]) and not conforms((1,), tuple[int, int])
    assert conforms({"a": (np.zeros(1), ["x"])}, dict[str, tuple[np.ndarray, list[str]]])
    assert not conforms({"a": (np.zeros(1), [1])}, dict[str, tuple[np.ndarray, list[str]]])


def check_batch(batch, hints: dict) -> None:
    assert set(batch) == set(hints)
    for key, tp in hints.items():
        assert conforms(batch[key], tp), (key, batch[key])
    B = len(batch["ids"])
    assert batch["waves"].dtype == torch.float32 and batch["waves"].shape[0] == B
    assert batch["attention_mask"].dtype == batch["lengths"].dtype == torch.long
    assert batch["attention_mask"].shape == batch["waves"].shape and batch["lengths"].shape == (B,)
    assert batch["offsets"].dtype == batch["durations"].dtype == torch.float64 and batch["offsets"].shape == (B,)
    assert len(batch["segments"]) == len(batch["alignments"]) == B
    assert batch["labels"] is None or (batch["labels"].dtype == torch.long and batch["labels"].shape[0] == B)
    assert len(batch["unreadable"]) == len(batch["unreadable_problems"])


def test_a_collated_batch_has_exactly_the_declared_keys_and_types(sylboost_setup):
    corpus, tmp, _, cache, _ = sylboost_setup
    hints = get_type_hints(SpeechBatch)
    assert SpeechBatch.__optional_keys__ == frozenset() and SpeechBatch.__required_keys__ == set(hints)
    dm = H.datamodule(corpus, tmp / "store", cache)
    dm.setup("fit")
    ds = dm.dataset("train", crop_seconds=3.0)
    batches = [ds[(0, [0, 1, 2], 0)], ds[3], next(iter(dm.train_dataloader())),
               next(iter(dm.offline_dataloader("val"))), next(dm.first_utterances("train", 1)),
               collate([], ["/data/broken.flac"], ["unreadable"])]
    for batch in batches:
        check_batch(batch, hints)
    assert batches[0]["position"] == (0, 0) and batches[1]["position"] == (0, -1)
    assert all(s is not None for s in batches[0]["segments"]) and any(a for a in batches[0]["alignments"])
    assert batches[-1]["unreadable_problems"] == ["unreadable"] and len(batches[-1]["ids"]) == 0
    # frame labels, when a label version is loaded
    item = {"id": "u", "wave": torch.zeros(3200), "offset": 0.0, "duration": 0.2, "segments": None,
            "alignment": None, "labels": np.arange(9, dtype=np.int32)}  # 0.2 s: 9 frames
    labelled = collate([item])
    check_batch(labelled, hints)
    assert labelled["labels"] is not None and labelled["labels"][0].tolist() == list(range(9))


# ---- the callback against stand-ins that have nothing but the protocols ------------------------------------------
class ProtocolOnlyModule:
    """Only the members of RegenerationModule, forwarded to a SylBoostModule it hides; logs are recorded."""

    __slots__ = ("_inner", "logged")

    def __init__(self, inner):
        self._inner, self.logged = inner, []

    iterations = property(lambda self: self._inner.iterations)
    epochs_per_iteration = property(lambda self: self._inner.epochs_per_iteration)
    reinit_each_iteration = property(lambda self: self._inner.reinit_each_iteration)
    device = property(lambda self: self._inner.device)
    calibrates_delta = property(lambda self: self._inner.calibrates_delta)

    def to(self, device):
        self._inner.to(device)
        return self

    def log_dict(self, dictionary, **kwargs):
        self.logged.append(dict(dictionary))

    def boundary_delta(self):
        return self._inner.boundary_delta()

    def set_boundary_delta(self, delta):
        self._inner.set_boundary_delta(delta)

    def calibrated_delta(self, features, waves):
        return self._inner.calibrated_delta(features, waves)

    def evaluating(self):
        return self._inner.evaluating()

    def features(self, batch):
        return self._inner.features(batch)

    def extract_boundaries(self, batch):
        return self._inner.extract_boundaries(batch)

    def restore_iteration(self, iteration):
        self._inner.restore_iteration(iteration)

    def start_iteration(self, iteration):
        self._inner.start_iteration(iteration)


class ProtocolOnlyData:
    """Only the members of RegenerationData, forwarded to a SpeechDataModule it hides."""

    __slots__ = ("_inner",)

    def __init__(self, inner):
        self._inner = inner

    boundary_dir = property(lambda self: self._inner.boundary_dir)
    version = property(lambda self: self._inner.version)

    def set_boundary_version(self, version):
        self._inner.set_boundary_version(version)

    def has_split(self, split):
        return self._inner.has_split(split)

    def manifest(self, split):
        return self._inner.manifest(split)

    def offline_dataloader(self, split):
        return self._inner.offline_dataloader(split)

    def first_utterances(self, split, n):
        return self._inner.first_utterances(split, n)


def test_the_stand_ins_declare_exactly_the_protocols():
    assert members(ProtocolOnlyModule) - {"logged"} == members(RegenerationModule)
    assert members(ProtocolOnlyData) == members(RegenerationData)


def one_process_trainer(dm, epochs: int):
    optimizers, metrics = [], []
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj, reduce=lambda t, reduce_op=None: t,
                               barrier=lambda *a: None, root_device=torch.device("cpu"),
                               setup_optimizers=lambda trainer: optimizers.append(trainer.current_epoch))
    logger = SimpleNamespace(log_metrics=lambda m, step: metrics.append(dict(m)))
    return SimpleNamespace(datamodule=dm, strategy=strategy, is_global_zero=True, global_rank=0, world_size=1,
                           current_epoch=0, global_step=0, fast_dev_run=False, max_epochs=epochs, loggers=[logger],
                           optimizers=optimizers, metrics=metrics)


def test_the_callback_runs_on_the_protocols_alone(sylboost_setup):
    """A fit's hooks driven by hand against the stand-ins: δ calibrated at fit start and again before version 1,
    which is what the weights give, utterance by utterance; then a run resumed after version 1 was written but
    before a checkpoint recorded it reuses it on the ``on_fit_end`` path."""
    corpus, tmp, teacher, cache, ids = sylboost_setup
    real_model, real_dm = H.module(teacher, segmenter={}), H.datamodule(corpus, tmp / "store", cache)
    real_dm.setup("fit")
    model, dm = ProtocolOnlyModule(real_model), ProtocolOnlyData(real_dm)
    assert isinstance(model, RegenerationModule) and isinstance(dm, RegenerationData)
    assert not isinstance(model, torch.nn.Module)
    trainer = one_process_trainer(dm, epochs=2)
    regen = BoundaryRegeneration(calibration_utterances=8)
    regen.setup(trainer, model, "fit")
    regen.on_fit_start(trainer, model)
    assert model.boundary_delta() is not None and real_model.iteration == 0  # calibrated before version 1
    regen.on_train_start(trainer, model)  # a fresh run: nothing due
    assert regen.done == 0 and dm.version == 0
    regen.on_train_epoch_end(trainer, model)  # the end of epoch 0 = iteration 0
    assert regen.done == 1 and dm.version == 1 and real_model.iteration == 1
    assert trainer.optimizers == [0]  # a fresh optimizer and schedule for iteration 1
    assert len(model.logged) == 1 and set(model.logged[0]) >= {"regen/rate_hz", "regen/train_f1", "regen/val_f1"}
    store = BoundaryStore(tmp / "store")
    assert store.versions() == [0, 1]
    meta = store.manifest(1)["meta"]
    assert meta["stage"] == "ProtocolOnlyModule" and meta["delta"] == model.boundary_delta()
    final = H.offline_boundaries(real_model, corpus, cache)  # the student was re-initialised: the same weights
    assert set(store.load(1)) == set(ids) and all(np.array_equal(store.load(1)[u], final[u]) for u in ids)
    # resumed with version 1 on disk but not in the checkpoint, δ unset: reused, and cut with its δ again
    delta = model.boundary_delta()
    real_model.set_boundary_delta(float("nan"))
    real_dm.set_boundary_version(0)
    resumed = BoundaryRegeneration()
    trainer = one_process_trainer(dm, epochs=2)
    trainer.current_epoch = 1
    resumed.on_fit_end(trainer, model)
    assert resumed.done == 1 and resumed.history == regen.history and model.boundary_delta() == delta
    assert dm.version == 1 and store.versions() == [0, 1] and trainer.optimizers == []
    assert trainer.metrics == model.logged  # to the loggers directly


def test_setup_rejects_what_does_not_implement_the_protocols(sylboost_setup):
    corpus, tmp, teacher, cache, _ = sylboost_setup
    model, dm = H.module(teacher), H.datamodule(corpus, tmp / "store", cache)
    with pytest.raises(TypeError, match="RegenerationModule"):
        BoundaryRegeneration().setup(one_process_trainer(dm, epochs=2), object(), "fit")
    with pytest.raises(ValueError, match="RegenerationData"):
        BoundaryRegeneration().setup(one_process_trainer(object(), epochs=2), model, "fit")
    BoundaryRegeneration().setup(one_process_trainer(dm, epochs=2), model, "fit")
