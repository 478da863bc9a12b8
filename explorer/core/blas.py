"""One BLAS thread for the small products of a query, process-wide and safe across threads.

numpy's OpenBLAS runs every product on all its threads (2 here). For the products a query makes —
a query row against a few hundred candidates, a PCA basis against a few thousand rows — the second
thread is pure risk on a busy machine: the call returns only when both threads are done, and a
woken BLAS thread that finds both cores taken waits for a scheduler tick. Measured on the 2-core
machine at load average ~5 (``a (1, 1280) @ (1280, 566)``, 40 calls): **0.02 ms median but p90
8–16 ms** (whole 4 ms ticks) with 2 threads, **0.03–0.05 ms median and p90 0.08–0.09 ms** with one,
and a ``limit`` from a cached ``ThreadpoolController`` costs 4 µs. A query makes a dozen such
calls (exact re-scores, agreement, fusion, reranking per mode), and the window ranks on its GUI
thread, so each wait was a stall there too.

``one_thread()`` (a context manager) and ``@single_threaded`` (the same around a function) limit
OpenBLAS to one thread while any caller in the process is inside, and restore the original
setting when the last one leaves. The limit is process-wide (OpenBLAS has one setting), so the
count is kept under a lock: overlapping callers in different threads never restore too early or
leave the limit behind. Big products that do profit from threads (evaluation, training) run
outside it; if one overlaps a query in another thread it runs single-threaded for that moment.
Without threadpoolctl both are no-ops.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading

_lock = threading.Lock()
_depth = 0  # callers inside one_thread(), process-wide
_saved: list = []  # (library controller, its thread count before) while _depth > 0
_local = threading.local()  # per-thread depth and saved counts for OpenMP-layer BLAS
_controller = None
_controller_modules = -1  # len(sys.modules) when the controller was built


def _get_controller():
    """threadpoolctl's view of the loaded libraries (3.6 ms to build here), rebuilt only when
    modules were imported since: a BLAS library arrives with an import (numpy's and scipy's are
    two different OpenBLAS builds), and in a steady query loop nothing is imported."""
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a pinned dependency
            return None
        _controller_modules = len(sys.modules)
        _controller = ThreadpoolController()
    return _controller


def _blas_libraries(per_thread: bool) -> list:
    """The loaded BLAS libraries whose thread setting is per thread (OpenMP layer) or process-wide."""
    ctl = _get_controller()
    if ctl is None:
        return []
    return [lc for lc in ctl.lib_controllers
            if lc.user_api == "blas" and (getattr(lc, "threading_layer", None) == "openmp") == per_thread]


def _set_threads(lc, n: int) -> None:
    """Set a process-wide pool's size from any thread. threadpoolctl lets only one "controlling"
    thread change OpenBLAS's shared pool and silently ignores the others; the window queries from
    several threads, and this module serialises its own changes under ``_lock``, so it takes
    control for the call and gives it back."""
    clear = getattr(type(lc), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    lc.set_num_threads(n)
    if clear is not None:
        clear()


@contextlib.contextmanager
def one_thread():
    """Run the block with BLAS limited to one thread (see the module docstring)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = [(lc, lc.num_threads) for lc in _blas_libraries(per_thread=False)]
            for lc, _ in _saved:
                _set_threads(lc, 1)
        _depth += 1
    local_depth = getattr(_local, "depth", 0)
    if local_depth == 0:  # OpenMP-layer BLAS: the limit is the calling thread's own
        _local.saved = [(lc, lc.num_threads) for lc in _blas_libraries(per_thread=True)]
        for lc, _ in _local.saved:
            lc.set_num_threads(1)
    _local.depth = local_depth + 1
    try:
        yield
    finally:
        _local.depth -= 1
        if _local.depth == 0:
            for lc, n in _local.saved:
                lc.set_num_threads(n)
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lc, n in _saved:
                    _set_threads(lc, n)
                _saved = []


def single_threaded(fn):
    """Decorator: ``fn`` runs inside ``one_thread()``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_thread():
            return fn(*args, **kwargs)

    return wrapper
