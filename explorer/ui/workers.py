"""A small worker layer: core calls run on a QThreadPool, results come back as signals.

Every slow call (model loading, indexing, query preparation, evaluation, thumbnails of
the detail view) goes through :class:`Worker`. The function runs in a pool thread and
receives the worker as keyword ``worker`` when it asks for it (``pass_worker=True``), so it
can report progress (throttled, so a fast loop cannot flood the event loop) and see the
cancel event (a ``threading.Event``, the very object handed to ``Indexer.run``).

Errors are wrapped: an ``ExplorerError`` becomes its message; anything else becomes
``"internal error: ..."`` and the traceback is logged.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QThreadPool, Signal

from ..core.errors import ExplorerError

log = logging.getLogger(__name__)


def format_error(exc: BaseException) -> str:
    """The one line the window shows for an exception."""
    if isinstance(exc, ExplorerError):
        return str(exc)
    log.error("internal error:\n%s", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"internal error: {type(exc).__name__}" + (f": {text}" if text else "")


class WorkerSignals(QObject):
    progress = Signal(object)
    result = Signal(object)
    error = Signal(str)
    finished = Signal()


class Worker:
    """Runs ``fn(*args, **kwargs)`` in a pool thread.

    A plain Python object: the pool runs its bound ``run`` through ``QThreadPool.start(callable)``,
    so Qt owns the runnable and no C++ object can be deleted under a running thread.
    """

    def __init__(self, fn: Callable, *args, pass_worker: bool = False, progress_interval: float = 0.1, name: str = "", **kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.pass_worker = pass_worker
        self.name = name or getattr(fn, "__name__", "task")
        self.cancel = threading.Event()
        self.signals = WorkerSignals()
        self._interval = progress_interval
        self._last_emit = 0.0
        self._last_key: Any = None

    def report(self, value: Any, key: Any = None, force: bool = False) -> None:
        """Emit progress at most every ``progress_interval`` s, unless ``key`` (e.g. the phase) changed."""
        now = time.monotonic()
        if force or key != self._last_key or now - self._last_emit >= self._interval:
            self._last_emit, self._last_key = now, key
            self.signals.progress.emit(value)

    def run(self) -> None:
        try:
            kwargs = dict(self.kwargs)
            if self.pass_worker:
                kwargs["worker"] = self
            out = self.fn(*self.args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - everything must reach the window, never the void
            try:
                self.signals.error.emit(format_error(e))
            except RuntimeError:
                pass  # the receiver is gone (window closed)
        else:
            try:
                self.signals.result.emit(out)
            except RuntimeError:
                pass
        finally:
            try:
                self.signals.finished.emit()
            except RuntimeError:
                pass


class TaskRunner(QObject):
    """Starts workers on a private pool and keeps them alive until they finish."""

    busyChanged = Signal(bool)

    def __init__(self, max_threads: int = 3, parent: QObject | None = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._active: set[Worker] = set()

    def start(self, fn: Callable, *args, on_result: Callable | None = None, on_error: Callable | None = None,
              on_progress: Callable | None = None, on_finished: Callable | None = None, pass_worker: bool = False,
              priority: int = 0, name: str = "", **kwargs) -> Worker:
        w = Worker(fn, *args, pass_worker=pass_worker, name=name, **kwargs)
        if on_result is not None:
            w.signals.result.connect(on_result)
        if on_error is not None:
            w.signals.error.connect(on_error)
        if on_progress is not None:
            w.signals.progress.connect(on_progress)
        if on_finished is not None:
            w.signals.finished.connect(on_finished)
        w.signals.finished.connect(lambda w=w: self._done(w))
        was_idle = not self._active
        self._active.add(w)
        self.pool.start(w.run, priority)
        if was_idle:
            self.busyChanged.emit(True)
        return w

    def _done(self, w: Worker) -> None:
        self._active.discard(w)
        if not self._active:
            self.busyChanged.emit(False)

    @property
    def active(self) -> list[Worker]:
        return list(self._active)

    def cancel_all(self) -> None:
        for w in list(self._active):
            w.cancel.set()

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel everything and wait for the pool threads (used when the window closes)."""
        self.cancel_all()
        return self.pool.waitForDone(timeout_ms)
