"""Listing audio files: the one listing of the project. The training manifests (:mod:`datamodules.manifest`, through
:func:`iter_audio`) and ``syllablelm tokenize`` (through :func:`list_audio`) find their files here, so both see the
same files in the same order.

A corpus folder is searched recursively for :data:`AUDIO_EXTENSIONS`, following symbolic links (datasets are often
linked in on clusters) without searching a folder twice, skipping hidden names; :func:`list_audio` states the rules.
:func:`iter_audio` yields the same paths as strings, one at a time, so a corpus of millions of files costs no object
per file kept around (issue 28).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")


def list_audio(root: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Every audio file (:data:`AUDIO_EXTENSIONS`) under ``root``, recursively and sorted; ``[root]`` when ``root``
    is a file. The one listing of the project: the training manifests (through :func:`iter_audio`, the same
    listing as strings) and ``syllablelm tokenize`` both use it.

    Symbolic links are followed, to folders and to files (datasets are often linked in on clusters). Real paths
    are tracked: a folder reached twice (a link to an ancestor, two links to one place) is searched once, so
    cycles end, and a file reached twice is listed once, under the first path met (depth first, in name order,
    a folder's files before its sub-folders). Hidden files and folders (``.name``) are skipped, and so are broken
    links (logged). Paths stay as found under ``root`` (links not resolved), so they are relative to it. Raises
    ``FileNotFoundError`` when ``root`` does not exist. ``limit``: stop after that many files (a quick look).
    """
    return [Path(p) for p in iter_audio(root, limit)]


def iter_audio(root: str | os.PathLike, limit: int | None = None) -> Iterator[str]:
    """:func:`list_audio` as strings (``str`` of each of its paths, in its order), yielded one at a time: a corpus of
    millions of files costs no string or ``Path`` per file kept around. The folders are searched once when this is
    called (errors and warnings come then, not at the first ``next``) and again, in output order, as it is consumed.

    The first search follows :func:`list_audio`'s rules to the letter (depth first, a folder's files before its
    sub-folders) and remembers only what the second needs: the folders to enter and the files reached a second time
    (to leave out). A file reached twice is recognised without remembering every file: each real folder is searched
    once, so a plain (not linked) file can be met again only through a link to it. Only the real paths of files
    listed through a link are kept; a link's target counts as already listed when it was listed through another
    link, or when it is a plain audio file of a folder already searched (or of the folder being searched, before the
    link in name order). The second search visits each folder's files and sub-folders together in name order, which
    is the order of ``Path`` objects (part by part), so its output needs no sort. With ``limit`` the first ``limit``
    files of the first search are listed (sorted), as :func:`list_audio` has always done.
    """
    root = Path(root)
    if root.is_file():
        return iter([str(root)])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such audio folder")
    base = str(root)
    prefix = "" if base == "." else base if base.endswith("/") else base + "/"
    enter, dropped, first = _search_audio(root, limit)
    if limit is not None:
        first.sort()  # parts joined with "\0", which sorts below every character a name can hold: part order
        return iter([prefix + rel.replace("\0", "/") for rel in first])
    return _audio_in_order(base, prefix, enter, dropped)


def _search_audio(root: Path, limit: int | None) -> tuple[set[str], set[str], list[str]]:
    """:func:`list_audio`'s search: the folders entered (paths as found), the audio files left out because they were
    reached before (paths as found) and, with ``limit``, the first ``limit`` files (root-relative, parts joined with
    ``"\\0"``)."""
    log = logging.getLogger(__name__)
    enter: set[str] = set()
    dropped: set[str] = set()
    first: list[str] = []
    count = 0
    broken: list[str] = []
    top = os.path.realpath(root)
    queued = {top}  # real paths of the folders searched or queued
    searched: set[str] = set()  # real paths of the folders whose listing is complete
    linked: set[str] = set()  # real paths of the files listed through a link

    def listed_plainly(file: str, current: str, before: str) -> bool:
        """Whether the real file ``file`` was listed as a plain file of its folder already."""
        folder, name = os.path.split(file)
        if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
            return False
        return folder in searched or (folder == current and name < before)

    stack = [(str(root), "", top)]
    while stack:
        folder, rel, real = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.warning("%s: folder not searched (%s)", folder, e.strerror or e)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                link = entry.is_symlink()
                if entry.is_dir():  # follows links
                    sub = os.path.realpath(entry.path) if link else os.path.join(real, entry.name)
                    if sub not in queued:
                        queued.add(sub)
                        enter.add(entry.path)
                        subfolders.append((entry.path, rel + entry.name + "\0", sub))
                elif entry.name.lower().endswith(AUDIO_EXTENSIONS):
                    if entry.is_file():
                        if link:
                            file = os.path.realpath(entry.path)
                            if file in linked or listed_plainly(file, real, entry.name):
                                dropped.add(entry.path)
                                continue
                            linked.add(file)
                        elif os.path.join(real, entry.name) in linked:
                            dropped.add(entry.path)
                            continue
                        count += 1
                        if limit is not None:
                            first.append(rel + entry.name)
                            if count >= limit:
                                return enter, dropped, first
                    elif link and not os.path.exists(entry.path):
                        broken.append(entry.path)
            except OSError:  # vanished or unreadable while listing
                broken.append(entry.path)
        searched.add(real)
        stack.extend(reversed(subfolders))  # depth first, in name order
    if broken:
        log.warning("skipped %d broken links or unreadable entries under %s: %s%s", len(broken), root,
                    ", ".join(broken[:5]), " ..." if len(broken) > 5 else "")
    return enter, dropped, first


def _audio_in_order(base: str, prefix: str, enter: set[str], dropped: set[str]) -> Iterator[str]:
    """The files :func:`_search_audio` found, in ``Path`` order: each folder's entries in name order, a sub-folder's
    files where its name comes (only the folders it entered, without the files it dropped)."""
    stack: list[tuple[Iterator[os.DirEntry], str]] = []

    def open_folder(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                stack.append((iter(sorted(it, key=lambda e: e.name)), rel))
        except OSError:  # reported by the first search
            pass

    open_folder(base, "")
    while stack:
        entries, rel = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        if entry.path in enter:
            open_folder(entry.path, rel + entry.name + "/")
            continue
        try:
            if (entry.name.lower().endswith(AUDIO_EXTENSIONS) and entry.path not in dropped and not entry.is_dir()
                    and entry.is_file()):
                yield prefix + rel + entry.name
        except OSError:  # vanished since the first search
            pass
