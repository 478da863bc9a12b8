"""Thumbnails: a disk cache under ``<library>/thumbnails`` and an asynchronous loader.

The cache key is the path, modification time and size of the file (and the thumbnail
side), so an edited photo gets a fresh thumbnail and an unchanged one is never decoded
twice. Loading runs on a small private thread pool and serves the most recent requests
first (a LIFO stack): when the user scrolls fast through 100k images, what is on screen now
loads before what scrolled past, and stale requests beyond a bound are dropped (they are
asked for again if they come back into view). Worker threads produce ``QImage`` (safe off
the GUI thread); the GUI thread turns them into ``QPixmap`` and keeps an LRU of them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QObject, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage, QPixmap

from ..core.errors import BadImage
from ..core.imageio import load_image

log = logging.getLogger(__name__)

THUMB_SIDE = 192
MAX_PENDING = 600
LRU_SIZE = 1200


def pil_to_qimage(img: Image.Image) -> QImage:
    img = img.convert("RGB")
    data = img.tobytes("raw", "RGB")
    q = QImage(data, img.width, img.height, img.width * 3, QImage.Format.Format_RGB888)
    return q.copy()  # detach from the Python buffer


class ThumbnailCache:
    """The on-disk cache; every method is safe to call from any thread."""

    def __init__(self, directory: str | os.PathLike, side: int = THUMB_SIDE):
        self.dir = Path(directory)
        self.side = side

    def key(self, path: str, st: os.stat_result) -> str:
        raw = f"{path}\0{st.st_mtime_ns}\0{st.st_size}\0{self.side}".encode("utf-8", "surrogateescape")
        return hashlib.sha1(raw).hexdigest()

    def file_for(self, path: str) -> Path:
        st = os.stat(path)
        k = self.key(path, st)
        return self.dir / k[:2] / f"{k}.jpg"

    def load(self, path: str) -> QImage:
        """The thumbnail of ``path`` (from the cache, else decoded and stored); raises OSError/BadImage."""
        cached = self.file_for(path)
        if cached.is_file():
            q = QImage(str(cached))
            if not q.isNull():
                return q
        loaded = load_image(path, max_side=self.side * 2)
        img = loaded.image
        img.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{threading.get_ident()}.tmp")
            img.save(tmp, "JPEG", quality=85)
            os.replace(tmp, cached)
        except OSError as e:  # a read-only library still shows thumbnails
            log.debug("cannot write thumbnail cache %s: %s", cached, e)
        return pil_to_qimage(img)


class _Signals(QObject):
    loaded = Signal(str, QImage)
    failed = Signal(str, str)


def _drain(ld: "ThumbnailLoader") -> None:
    """Pool thread: load thumbnails, newest request first, until the stack is empty."""
    while True:
        path = ld._pop()
        if path is None:
            return
        try:
            img = ld.cache.load(path)
        except (OSError, BadImage) as e:
            ld._signals.failed.emit(path, str(e))
        except Exception as e:  # noqa: BLE001 - a broken file must never kill the loader
            ld._signals.failed.emit(path, f"{type(e).__name__}: {e}")
        else:
            ld._signals.loaded.emit(path, img)


class ThumbnailLoader(QObject):
    """``get(path)`` returns a cached QPixmap or None (and queues the load); ``ready(path)`` follows."""

    ready = Signal(str)

    def __init__(self, cache_dir: str | os.PathLike, threads: int = 2, side: int = THUMB_SIDE, parent: QObject | None = None):
        super().__init__(parent)
        self.cache = ThumbnailCache(cache_dir, side)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._threads = threads
        self._lock = threading.Lock()
        self._stack: list[str] = []
        self._queued: set[str] = set()
        self._running = 0
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()
        self._failed: dict[str, str] = {}
        self._signals = _Signals()
        self._signals.loaded.connect(self._on_loaded)
        self._signals.failed.connect(self._on_failed)
        self._stopped = False

    def set_cache_dir(self, cache_dir: str | os.PathLike) -> None:
        self.cache = ThumbnailCache(cache_dir, self.cache.side)
        self._pixmaps.clear()
        self._failed.clear()

    def get(self, path: str) -> QPixmap | None:
        pm = self._pixmaps.get(path)
        if pm is not None:
            self._pixmaps.move_to_end(path)
            return pm
        if path not in self._failed:
            self.request(path)
        return None

    def failed(self, path: str) -> str | None:
        return self._failed.get(path)

    def request(self, path: str) -> None:
        if self._stopped:
            return
        with self._lock:
            if path in self._queued:
                try:
                    self._stack.remove(path)  # move it to the top: it is on screen now
                except ValueError:
                    return  # being loaded right now
            self._stack.append(path)
            self._queued.add(path)
            if len(self._stack) > MAX_PENDING:
                for old in self._stack[: len(self._stack) - MAX_PENDING]:
                    self._queued.discard(old)
                del self._stack[: len(self._stack) - MAX_PENDING]
            start = self._running < self._threads
            if start:
                self._running += 1
        if start:
            self.pool.start(lambda: _drain(self))

    def _pop(self) -> str | None:
        with self._lock:
            if not self._stack or self._stopped:
                self._running -= 1
                return None
            return self._stack.pop()  # the newest request first

    @Slot(str, QImage)
    def _on_loaded(self, path: str, img: QImage) -> None:
        with self._lock:
            self._queued.discard(path)
        self._pixmaps[path] = QPixmap.fromImage(img)
        self._pixmaps.move_to_end(path)
        while len(self._pixmaps) > LRU_SIZE:
            self._pixmaps.popitem(last=False)
        self.ready.emit(path)

    @Slot(str, str)
    def _on_failed(self, path: str, reason: str) -> None:
        with self._lock:
            self._queued.discard(path)
        self._failed[path] = reason
        self.ready.emit(path)

    def invalidate(self, path: str) -> None:
        self._pixmaps.pop(path, None)
        self._failed.pop(path, None)

    def stop(self, timeout_ms: int = 5000) -> None:
        self._stopped = True
        with self._lock:
            self._stack.clear()
            self._queued.clear()
        self.pool.waitForDone(timeout_ms)
