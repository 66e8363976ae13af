"""Reading fairseq checkpoints without fairseq: the unpickler, plain configs, key mapping, strict loading.

fairseq ``.pt`` files are pickles of ``{"cfg" | "args", "model", "task_state", ...}`` whose config and dictionary
objects name fairseq classes. :data:`stub_pickle` unpickles them WITHOUT fairseq: every ``fairseq.*`` class
becomes an inert stub that only stores its pickled state. Unpickling still executes whatever the file asks for
outside fairseq (that is what a pickle is), so load trusted files only — the official release or your own.
"""
from __future__ import annotations

import argparse
import functools
import pickle
import re
import types
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file does not fit the model it should build (names the file and the offending keys)."""



class FairseqStub:
    """Stand-in for any ``fairseq.*`` class: accepts any construction and keeps the pickled state."""

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"_state": state})


_STUBS: dict[tuple[str, str], type] = {}


class StubUnpickler(pickle.Unpickler):
    """A pickle reader that turns every ``fairseq.*`` class into a :class:`FairseqStub` subclass."""

    def find_class(self, module: str, name: str):
        if module == "fairseq" or module.startswith("fairseq."):
            return _STUBS.setdefault((module, name), type(name, (FairseqStub,), {"__module__": module}))
        return super().find_class(module, name)


# torch.load wants a *module* exposing Unpickler/load (it subclasses Unpickler for its tensor storages):
# torch.load(path, weights_only=False, pickle_module=stub_pickle)
stub_pickle = types.ModuleType("syllablelm_stub_pickle")
stub_pickle.Unpickler = StubUnpickler
stub_pickle.load = lambda f, **kw: StubUnpickler(f, **kw).load()
stub_pickle.__dict__.update(dumps=pickle.dumps, dump=pickle.dump, Pickler=pickle.Pickler)


def load_fairseq_state(path: str | Path, map_location="cpu") -> dict:
    """The whole pickled dict of a fairseq checkpoint, fairseq classes stubbed (trusted files only)."""
    return torch.load(str(path), map_location=map_location, weights_only=False, pickle_module=stub_pickle)


def to_plain(obj):
    """DictConfig / Namespace / stub / enum -> plain python containers and scalars."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException
        if isinstance(obj, (DictConfig, ListConfig)):
            try:
                obj = OmegaConf.to_container(obj, resolve=True)
            except OmegaConfBaseException:  # an interpolation that cannot resolve offline: keep it unresolved
                obj = OmegaConf.to_container(obj, resolve=False)
    except ImportError:
        pass
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, FairseqStub):  # e.g. a fairseq ChoiceEnum member pickled as cls(value)
        return to_plain(obj._args[0]) if len(obj._args) == 1 else {k: to_plain(v) for k, v in vars(obj).items()}
    return getattr(obj, "value", obj) if hasattr(obj, "_value_") else obj


SLOTS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "n": r"(?P<n>q|k|v|out)"}


@functools.lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{", "{").replace(r"\}", "}").format(**SLOTS))


def map_key(key: str, table, src: int, dst: int) -> str | None:
    """Translate ``key`` through a table of name templates (column ``src`` -> column ``dst``); None if no row
    matches. Templates use ``{i}`` (a layer index), ``{p}`` (weight|bias), ``{n}`` (q|k|v|out)."""
    for entry in table:
        m = _pattern(entry[src]).fullmatch(key)
        if m:
            return entry[dst].format(**m.groupdict())
    return None


def load_strict(module: nn.Module, mapped: dict, unexpected: list[str], path) -> None:
    """``module.load_state_dict(mapped)``, or a :class:`CheckpointError` naming the file and every missing,
    unexpected (``unexpected`` plus mapped keys the module lacks) or mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(unexpected + [k for k in mapped if k not in expected])
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in mapped.items()
           if k in expected and v.shape != expected[k].shape]
    problems = [f"{name} ({len(keys)}): {keys[:20]}" for name, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", bad)) if keys]
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not match the model it describes; " + "; ".join(problems))
    module.load_state_dict(mapped, strict=True)
