"""Indexing in a worker process, so the process that runs a window never runs model work.

``index_in_process(settings, folders, progress, cancel)`` starts a *spawned* Python process that
opens the library and runs ``pipeline.Indexer`` on it, and blocks until that run ends. It
promises the same contract as ``Indexer(...).run`` in the calling process:

- ``progress`` receives every ``pipeline.Progress`` of the run, in order (sent over a pipe);
- ``cancel`` (a ``threading.Event``) is forwarded to the child, which stops after its current
  batch and saves, exactly as an in-process run does (cancel and kills stay crash-safe: each
  batch is one transaction, and the child takes and drops the library's writer lock itself);
- it returns the run's ``IndexSummary``; an ``ExplorerError`` in the child (a missing folder,
  ``LibraryBusy``...) is raised again here with the same class and message; anything else, and a
  child that dies without an answer (killed, out of memory), is an ``ExplorerError`` saying so.

Why a process: in the window's process, model work in a worker thread competes with the GUI
thread for the GIL. On a loaded machine the OS preempts the thread that holds the GIL, and the
GUI thread then waits for it; and, more often on Linux, the GUI thread waits for a core
because the worker threads of its own process use up the CPU share of the process's scheduling
group (autogroup: one per session). ``bench/ui_stall.py`` splits each long stall into the GUI
thread running, waiting for a core and being blocked; in the window's process at load ~14 the
waiting for a core dominated. The child shares no GIL with the window and starts its own session,
hence its own scheduling group; the parent's waiting thread sleeps until a message arrives or
the child exits (waking every ``poll_s`` only to forward a cancel).

The child writes the database and saves the indices; the caller's ``Library`` must then reopen
its in-memory indices (``Library.reload``) before it searches. The child ends its run when the
parent goes away (it watches its parent pid), so no orphan keeps the writer lock.

``INDEX_MODES`` names how the window indexes (``process`` by default, ``thread`` to run the
pipeline in a thread of the window's process); ``EXPLORER_INDEX_MODE`` overrides it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from multiprocessing.connection import wait as mp_wait
import os
import pickle
import threading
import time
import traceback
from typing import Callable, Sequence

from .errors import ExplorerError

log = logging.getLogger(__name__)

#: how the window runs indexing: in a worker process (default) or in a thread of its own process
INDEX_MODES = ("process", "thread")
DEFAULT_INDEX_MODE = "process"
#: environment variable that overrides the mode (benchmarks compare the two)
MODE_ENV = "EXPLORER_INDEX_MODE"
#: how often the child checks that its parent is still alive
PARENT_CHECK_S = 0.5


def index_mode() -> str:
    """The indexing mode in force: ``EXPLORER_INDEX_MODE`` if set (checked), else the default."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or DEFAULT_INDEX_MODE
    if mode not in INDEX_MODES:
        raise ExplorerError(f"{MODE_ENV}={mode!r} is not an indexing mode; use one of: {', '.join(INDEX_MODES)}")
    return mode


class WorkerDied(ExplorerError):
    """The indexing process ended without an answer (killed, crashed, out of memory)."""


def _watch_parent(ppid: int, stop) -> None:
    """In the child: end the run (as a cancel would) when the parent process is gone."""
    while not stop.is_set():
        if os.getppid() != ppid:
            stop.set()
            return
        time.sleep(PARENT_CHECK_S)


def _child(settings, folders: list[str], conn, stop, ppid: int, thread_cap: int | None, follow_symlinks: bool) -> None:
    """The worker process: open the library, index, send progress and the answer over ``conn``."""
    try:
        try:  # its own session: on Linux its own scheduling group (autogroup), apart from the window's threads
            os.setsid()
        except (AttributeError, OSError):
            pass
        threading.Thread(target=_watch_parent, args=(ppid, stop), daemon=True, name="parent-watch").start()
        if thread_cap:
            from .models import engines

            engines.set_thread_cap(thread_cap)
            try:
                import torch

                torch.set_num_threads(thread_cap)
            except Exception:  # noqa: BLE001 - torch is optional for the exported engines
                pass
        from .library import Library
        from .pipeline import Indexer

        lib = Library(settings.library, settings)
        try:
            summary = Indexer(lib, follow_symlinks=follow_symlinks).run(folders, progress=lambda p: conn.send(("progress", p)),
                                                                        cancel=stop)
        finally:
            lib.close()
        conn.send(("done", summary))
    except ExplorerError as e:
        try:
            conn.send(("error", pickle.dumps(e)))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its line
            conn.send(("error", pickle.dumps(ExplorerError(str(e)))))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        conn.send(("crash", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", traceback.format_exc()))
    finally:
        conn.close()


def index_in_process(
    settings,
    folders: Sequence[str | os.PathLike],
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
    thread_cap: int | None = None,
    follow_symlinks: bool = False,
    poll_s: float = 0.25,
):
    """Index ``folders`` into ``settings.library`` in a spawned process; blocks until it ends.

    ``thread_cap`` bounds the child's inference threads (``engines.set_thread_cap`` and torch);
    None leaves the engines' default. Returns the ``IndexSummary``.
    """
    ctx = mp.get_context("spawn")
    recv_end, send_end = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    proc = ctx.Process(target=_child, name="explorer-indexing", daemon=True,
                       args=(settings, [os.fsdecode(os.fspath(f)) for f in folders], send_end, stop, os.getpid(), thread_cap,
                             follow_symlinks))
    proc.start()
    send_end.close()  # the child holds the only writer: EOF here means it is gone
    answer = None
    try:
        while answer is None:
            if cancel is not None and cancel.is_set() and not stop.is_set():
                stop.set()
            if not mp_wait([recv_end, proc.sentinel], poll_s):
                continue  # nothing yet: look at the cancel event again
            if not recv_end.poll(0):  # the child exited without a message pending
                break
            try:
                msg = recv_end.recv()
            except EOFError:
                break
            if msg[0] == "progress":
                if progress is not None:
                    progress(msg[1])
            else:
                answer = msg
    except BaseException:
        stop.set()  # e.g. the progress callback failed: let the child stop cleanly after its batch
        proc.join(60)
        raise
    finally:
        recv_end.close()
    proc.join(60 if answer is not None else 5)
    if proc.is_alive():  # answered but does not exit (a stuck thread): it has nothing left to write
        proc.terminate()
        proc.join(5)
    if answer is None:
        raise WorkerDied(f"the indexing process ended without finishing (exit code {proc.exitcode}); "
                         "what it committed is kept, index again to continue")
    kind = answer[0]
    if kind == "done":
        return answer[1]
    if kind == "error":
        raise pickle.loads(answer[1])
    log.error("internal error in the indexing process:\n%s", answer[2])
    raise WorkerDied(f"internal error in the indexing process: {answer[1]}")


__all__ = ["INDEX_MODES", "DEFAULT_INDEX_MODE", "MODE_ENV", "WorkerDied", "index_in_process", "index_mode"]
