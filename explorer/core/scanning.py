"""The scan stage of indexing: walk gallery folders and list their image files.

Paths are OS bytes, so any file name works; symlink loops and unreadable folders are recorded,
never followed twice or fatal. A symlink that leads outside the folders being indexed is skipped
(and counted) unless ``follow_symlinks``: a gallery stays inside its roots by default. Folders
that cannot be listed are reported in ``ScanResult.unreadable`` so that the plan never treats
the files below them as deleted. No database access: ``planning`` compares the result with the
library, ``pipeline`` runs the stages.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field

from .errors import ExplorerError
from .imageio import is_image_path

MAX_NAME_DISPLAY = 4096


def display(path: bytes) -> str:
    return path.decode("utf-8", "replace")[:MAX_NAME_DISPLAY]


@dataclass
class Failure:
    path: str
    reason: str


@dataclass
class ScanResult:
    files: list[tuple[bytes, os.stat_result]] = field(default_factory=list)
    sidecars: set[bytes] = field(default_factory=set)
    problems: list[Failure] = field(default_factory=list)
    #: folders that could not be listed: files below them must not be treated as deleted
    unreadable: list[bytes] = field(default_factory=list)
    #: symlinks not followed because they lead outside every root
    outside_links: list[bytes] = field(default_factory=list)


def resolve_roots(folders) -> list[bytes]:
    """The folders to index as real paths (OS bytes); a missing or unreadable one is a one-line error."""
    roots = []
    for f in folders:
        b = os.fsencode(os.path.realpath(os.path.expanduser(os.fsdecode(f) if isinstance(f, bytes) else str(f))))
        if not os.path.isdir(b):
            raise ExplorerError(f"not a folder: {display(b)}")
        if not os.access(b, os.R_OK | os.X_OK):
            raise ExplorerError(f"folder is not readable (permission denied): {display(b)}")
        roots.append(b)
    return roots


def _inside(path: bytes, roots: list[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def scan(roots: list[bytes], cancel: threading.Event | None = None, follow_symlinks: bool = False) -> ScanResult:
    """Walk ``roots`` recursively; follows symlinks (files and folders) but never visits a folder
    twice. Unless ``follow_symlinks``, a symlink whose target lies outside every root is skipped
    and listed in ``outside_links``: indexing a folder never pulls in files from elsewhere."""
    res = ScanResult()
    real_roots = [os.path.realpath(r) for r in roots]
    seen_dirs: set[tuple[int, int]] = set()
    stack = list(reversed(roots))
    while stack:
        if cancel is not None and cancel.is_set():
            break
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError as e:
            res.problems.append(Failure(display(d), f"cannot open folder: {e.strerror}"))
            res.unreadable.append(d)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue  # a symlink loop or a second link to the same folder
        seen_dirs.add(key)
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            res.problems.append(Failure(display(d), f"cannot list folder: {e.strerror}"))
            res.unreadable.append(d)
            continue
        names = {e.name for e in entries}
        subdirs = []
        for e in sorted(entries, key=lambda e: e.name):
            try:
                if not follow_symlinks and e.is_symlink() and not _inside(os.path.realpath(e.path), real_roots):
                    if e.is_dir(follow_symlinks=True) or is_image_path(e.name):
                        res.outside_links.append(e.path)
                    continue
                if e.is_dir(follow_symlinks=True):
                    subdirs.append(e.path)
                    continue
                if not is_image_path(e.name):
                    continue
                st = e.stat(follow_symlinks=True)
                if not stat.S_ISREG(st.st_mode):
                    continue
            except OSError as err:
                if is_image_path(e.name):
                    res.problems.append(Failure(display(e.path), f"cannot stat file: {err.strerror}"))
                continue
            res.files.append((os.path.realpath(e.path), st))
            if e.name + b".txt" in names:
                res.sidecars.add(os.path.realpath(e.path))
        stack.extend(reversed(subdirs))
    # the same file reached through two links is indexed once
    uniq = {}
    for p, st in res.files:
        uniq.setdefault(p, st)
    res.files = list(uniq.items())
    return res


__all__ = ["Failure", "MAX_NAME_DISPLAY", "ScanResult", "display", "resolve_roots", "scan"]
