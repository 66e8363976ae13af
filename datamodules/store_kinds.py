"""Which class reads a store: by its kind, or by the kind a version's manifest records.

Callers that are handed a store root without knowing what it holds (``syllablelm store-copy``, the stage runners'
skip checks) open it here, so the kind-to-class table exists once.
"""
from __future__ import annotations

import json
import os

from .boundary_store import BoundaryStore
from .label_store import LabelStore
from .shard_store import MANIFEST, ShardStore
from .unit_store import UnitStore

STORE_CLASSES: dict[str, type[ShardStore]] = {cls.kind: cls for cls in (BoundaryStore, LabelStore, UnitStore)}


def recorded_kind(root: str | os.PathLike, version: int) -> str | None:
    """The ``kind`` the manifest of ``version`` records, None when it has no readable manifest."""
    try:
        return json.loads((ShardStore(root).version_dir(version) / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def open_store(root: str | os.PathLike, kind: str | None = None, version: int | None = None) -> ShardStore:
    """The store at ``root`` as the class of ``kind`` or, without one, of the kind the manifest of ``version``
    records; a plain :class:`ShardStore` when neither says (its errors still name what is wrong)."""
    if kind is None and version is not None:
        kind = recorded_kind(root, version)
    return STORE_CLASSES.get(kind, ShardStore)(root)
