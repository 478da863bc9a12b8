"""The library's writer lock: one writing process at a time, across processes.

A library has one writer at a time (indexing, ``explorer check`` repairs, caption edits,
ground-truth imports, the window's indexing). The lock is an ``fcntl.flock`` on
``DIR/writer.lock``; the kernel drops it when its holder exits, also after ``kill -9``, so a
lock is never stale. The holder writes its pid, what it does and since when into the file, so
a second writer can say who is busy: ``library is busy (indexing by pid 1234 since 21:40:05)``.
Readers (search, evaluation) never take the lock and never write.

Within one process the lock is re-entrant and shared by threads (the window edits a caption
while its indexing thread runs); SQLite serialises those writes, and each index file is saved
under its own thread lock.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from .errors import ExplorerError

LOCK_FILE = "writer.lock"


class LibraryBusy(ExplorerError):
    """Another process is writing this library."""


class LibraryReadOnly(ExplorerError):
    """The library is on read-only media (or not writable by this user): it can be searched, not changed."""


def holder_info(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict) -> str:
    if not info.get("pid"):
        return "another process holds the writer lock"
    since = info.get("since", 0)
    when = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S") if since else "?"
    return f"{info.get('purpose', 'writing')} by pid {info['pid']} since {when}"


class WriterLock:
    """A re-entrant, process-wide writer lock on one library folder."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None
        self._depth = 0
        self._mutex = threading.RLock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, purpose: str = "writing", wait: bool | float = False, on_wait=None) -> None:
        """Take the lock; raises ``LibraryBusy`` when another process holds it (unless ``wait``:
        True waits for ever, a number of seconds waits that long), ``LibraryReadOnly`` when the
        folder cannot be written. ``on_wait(message)`` is called once before waiting."""
        import fcntl

        with self._mutex:
            if self._fd is not None:
                self._depth += 1
                return
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise LibraryReadOnly(f"library at {self.path.parent} is read-only ({e.strerror}): it can be searched but not changed") from None
                raise ExplorerError(f"cannot lock library at {self.path.parent}: {e.strerror or e}") from None
            deadline = None if wait is True else time.monotonic() + float(wait or 0)
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        raise ExplorerError(f"cannot lock library at {self.path.parent}: {e.strerror or e}") from None
                    msg = f"library is busy ({describe_holder(holder_info(self.path))})"
                    if deadline is not None and time.monotonic() >= deadline:
                        os.close(fd)
                        raise LibraryBusy(msg + "; try again when it is done, or add --wait") from None
                    if not told and on_wait is not None:
                        on_wait(msg + "; waiting...")
                        told = True
                    time.sleep(0.2)
            info = {"pid": os.getpid(), "purpose": purpose, "command": " ".join(sys.argv)[:500], "since": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            except OSError:
                pass  # the description is a courtesy; the flock is the lock
            self._fd, self._depth = fd, 1

    def release(self) -> None:
        import fcntl

        with self._mutex:
            if self._fd is None:
                return
            self._depth -= 1
            if self._depth > 0:
                return
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
