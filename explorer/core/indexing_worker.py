"""Indexing in a long-lived, low-priority worker process, so the window's process never runs model work.

``IndexingWorker`` is one *spawned* Python process that runs indexing jobs one at a time and
stays alive between them, keeping its loaded models. ``IndexingWorker.run(settings, folders,
progress, cancel)`` sends it a job (it opens the library and runs ``pipeline.Indexer``) and
blocks until that run ends. Every run, the first and any later one, promises the same contract
as ``Indexer(...).run`` in the calling process:

- ``progress`` receives every ``pipeline.Progress`` of the run, in order (sent over a pipe);
- ``cancel`` (a ``threading.Event``) is forwarded to the child, which stops after its current
  batch and saves, exactly as an in-process run does (cancel and kills stay crash-safe: each
  batch is one transaction, and the child takes and drops the library's writer lock per run);
- it returns the run's ``IndexSummary``; an ``ExplorerError`` in the child (a missing folder,
  ``LibraryBusy``...) is raised again here with the same class and message; anything else, and a
  child that dies without an answer (killed, out of memory), is a ``WorkerDied`` saying so.

The process starts at the first run. It keeps one ``ModelLoader``, keyed by
``registry.model_key(settings)`` (model specs, engine, device, detector and pooling settings):
a run with the same key reuses the loaded models; another key drops them and loads anew. It
ends when ``close()`` is called (the window closes), when its parent process is gone (it
watches its parent pid; a run in progress then stops as a cancel would, so no orphan keeps the
writer lock), and after ``idle_s`` without a job (``IDLE_TIMEOUT_S``: an idle window gives the
models' memory back). A worker that died or timed out between runs is replaced transparently:
a job the child did not acknowledge is sent once more to a fresh process. ``last_run`` says which
process ran the last job and which models it had to load (tests and benchmarks read it).

Why a process: in the window's process, model work in a worker thread competes with the GUI
thread for the GIL, and on Linux the GUI thread also waits for a core when the worker threads
of its own process use up the CPU share of its scheduling group (autogroup: one per session;
``bench/ui_stall.py`` splits long stalls into running, waiting for a core and blocked). The child
shares no GIL with the window and starts its own session, hence its own scheduling group.

Why low priority: background indexers on desktops run below the UI. The child lowers its CPU
weight by ``WORKER_NICE`` before it starts any thread (threads inherit it): it writes that nice
value to ``/proc/self/autogroup`` (its own session's group, which weighs it against the window's
group; raising nice needs no privilege) and calls ``os.nice`` (which weighs its threads against
other threads in the same group, and is all there is without autogroup or on other systems);
failures are ignored. The value was chosen before any measurement and is not tuned against the
stall target.

The child writes the database and saves the indices; the caller's ``Library`` must then reopen
its in-memory indices (``Library.reload``) before it searches. ``index_in_process`` runs one job
in a given worker, or in a one-shot worker that it closes afterwards (the CLI and tests).

``INDEX_MODES`` names how the window indexes (``process`` by default, ``thread`` to run the
pipeline in a thread of the window's process); ``EXPLORER_INDEX_MODE`` overrides it.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
from multiprocessing.connection import wait as mp_wait
import os
import pickle
import threading
import time
import traceback
from dataclasses import dataclass
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
#: an idle worker ends after this long without a job, giving its models' memory (~2 GB) back
IDLE_TIMEOUT_S = 600.0
#: the worker's CPU weight below the window: nice value of its autogroup, and ``os.nice`` increment
#: (fixed before measuring; not a tuning knob)
WORKER_NICE = 10
#: the worker process's name (``multiprocessing.active_children()``)
PROCESS_NAME = "explorer-indexing"
#: how long ``close`` waits for a run in progress to stop after its cancel, and for the process to end
CLOSE_WAIT_S = 30.0


def index_mode() -> str:
    """The indexing mode in force: ``EXPLORER_INDEX_MODE`` if set (checked), else the default."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or DEFAULT_INDEX_MODE
    if mode not in INDEX_MODES:
        raise ExplorerError(f"{MODE_ENV}={mode!r} is not an indexing mode; use one of: {', '.join(INDEX_MODES)}")
    return mode


class WorkerDied(ExplorerError):
    """The indexing process ended without an answer (killed, crashed, out of memory)."""


@dataclass(frozen=True)
class RunInfo:
    """What the worker reports with each answer: its pid, the models it loaded for this run
    (``name:argument``; empty when it reused them) and how many jobs it has run in all."""

    pid: int
    models_loaded: tuple[str, ...]
    jobs: int


# -- the child ----------------------------------------------------------------------------------

def lower_priority(nice: int = WORKER_NICE) -> None:
    """Lower this process's CPU weight: ``nice`` for its autogroup (Linux) and ``os.nice(nice)``.

    Call it before starting threads: on Linux ``os.nice`` changes the calling thread, and threads
    started later inherit it. Failures (no autogroup, another OS, a sandbox) are ignored.
    """
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(int(nice)))
    except OSError:
        pass
    try:
        os.nice(int(nice))
    except (AttributeError, OSError):
        pass


def _watch_parent(ppid: int, stop, gone: threading.Event) -> None:
    """In the child: end a run (as a cancel would) and the serving loop when the parent is gone."""
    while not gone.is_set():
        if os.getppid() != ppid:
            gone.set()
            stop.set()
            return
        time.sleep(PARENT_CHECK_S)


def _send_error(conn, e: ExplorerError) -> None:
    try:
        conn.send(("error", pickle.dumps(e)))
    except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its line
        conn.send(("error", pickle.dumps(ExplorerError(str(e)))))


def _serve(conn, stop, ppid: int, thread_cap: int | None, idle_s: float, nice: int | None) -> None:
    """The worker process: wait for jobs, run each, answer; keep the models between jobs."""
    try:
        try:  # its own session: on Linux its own scheduling group (autogroup), apart from the window's
            os.setsid()
        except (AttributeError, OSError):
            pass
        if nice:
            lower_priority(nice)  # before any thread starts: they inherit it
        gone = threading.Event()
        threading.Thread(target=_watch_parent, args=(ppid, stop, gone), daemon=True, name="parent-watch").start()
        if thread_cap:
            from .models import engines

            engines.set_thread_cap(thread_cap)
            try:
                import torch

                torch.set_num_threads(thread_cap)
            except Exception:  # noqa: BLE001 - torch is optional for the exported engines
                pass
        from .library import Library
        from .models.registry import ModelLoader, model_key
        from .pipeline import Indexer

        loader, key, jobs = None, None, 0
        while True:
            deadline = time.monotonic() + idle_s
            job = None
            while job is None:  # wait for a job; end when idle too long, or when the parent is gone
                left = deadline - time.monotonic()
                if gone.is_set() or left <= 0:
                    return
                if conn.poll(min(left, PARENT_CHECK_S)):
                    try:
                        job = conn.recv()
                    except EOFError:  # the parent closed its end (or died)
                        return
            if job[0] != "index":
                return  # "quit"
            _, settings, folders, follow_symlinks = job
            conn.send(("accepted", os.getpid()))
            jobs += 1
            try:
                if model_key(settings) != key:
                    loader = None
                    gc.collect()  # the old models' memory goes before the new ones load
                    loader, key = ModelLoader(settings), model_key(settings)
                before = set(loader.loaded())
                lib = Library(settings.library, settings, loader=loader)
                try:
                    summary = Indexer(lib, follow_symlinks=follow_symlinks).run(
                        folders, progress=lambda p: conn.send(("progress", p)), cancel=stop)
                finally:
                    lib.close()
                info = RunInfo(os.getpid(), tuple(k for k in loader.loaded() if k not in before), jobs)
                conn.send(("done", summary, info))
            except ExplorerError as e:
                _send_error(conn, e)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent; then this process ends
        try:
            conn.send(("crash", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                       traceback.format_exc()))
        except Exception:  # noqa: BLE001 - the parent is gone too
            pass
    finally:
        conn.close()


# -- the parent ---------------------------------------------------------------------------------

class IndexingWorker:
    """The parent's handle on one long-lived indexing process (started at the first ``run``).

    ``thread_cap`` bounds the child's inference threads (``engines.set_thread_cap`` and torch;
    None leaves the engines' default), ``idle_s`` is how long it waits for a job before ending,
    ``nice`` its CPU weight below the caller (None or 0: unchanged). One run at a time: a second
    concurrent ``run`` is an ``ExplorerError``. Safe to ``close`` from another thread.
    """

    def __init__(self, thread_cap: int | None = None, idle_s: float = IDLE_TIMEOUT_S, nice: int | None = WORKER_NICE):
        self.thread_cap = thread_cap
        self.idle_s = idle_s
        self.nice = nice
        self.last_run: RunInfo | None = None
        self._proc = None
        self._conn = None
        self._stop = None
        self._run_lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The worker process's pid while it is alive, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def start(self) -> int:
        """Start the process now if none is alive (``run`` does it itself); returns its pid."""
        with self._run_lock:
            if self._closed:
                raise ExplorerError("the indexing worker was closed")
            self._ensure_process()
            return self._proc.pid

    def _ensure_process(self) -> None:
        """A live process: the current one, or a new one after forgetting one that ended."""
        if self._proc is None or not self._proc.is_alive():
            self._discard()
            self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe(duplex=True)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_serve, name=PROCESS_NAME, daemon=True,
                                 args=(child_end, self._stop, os.getpid(), self.thread_cap, self.idle_s, self.nice))
        self._proc.start()
        child_end.close()  # the child holds the only other end: EOF here means it is gone
        self._conn = parent_end

    def _discard(self, wait_s: float = 5.0) -> int | None:
        """Forget the current process (ended, or ended now); returns its exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        proc.join(wait_s)
        if proc.is_alive():  # answered but does not exit (a stuck thread): it has nothing left to write
            proc.terminate()
            proc.join(5)
        return proc.exitcode

    def _send_job(self, job, cancel) -> bool:
        """Start a process if none is alive and send ``job``; False when the process was gone."""
        self._ensure_process()
        if cancel is not None and cancel.is_set():
            self._stop.set()
        else:
            self._stop.clear()  # the child is idle: a cancel of an earlier run must not stop this one
        try:
            self._conn.send(job)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False

    def _answer(self, progress, cancel, poll_s: float):
        """Read messages of the current job until its answer; None when the child died first.
        Raises ``_NotAccepted`` when it died before acknowledging the job."""
        accepted = False
        while True:
            if cancel is not None and cancel.is_set() and not self._stop.is_set():
                self._stop.set()
            if not mp_wait([self._conn, self._proc.sentinel], poll_s):
                continue  # nothing yet: look at the cancel event again
            if not self._conn.poll(0):  # the child exited without a message pending
                break
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "accepted":
                accepted = True
            elif msg[0] == "progress":
                if progress is not None:
                    progress(msg[1])
            else:
                return msg
        if not accepted:
            raise _NotAccepted
        return None

    def _drain(self, wait_s: float) -> bool:
        """After the caller gave up on a run (its progress callback failed...): let the child stop
        after its batch and read up to its answer; True when it is ready for the next job."""
        self._stop.set()
        deadline = time.monotonic() + wait_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not mp_wait([self._conn, self._proc.sentinel], left) or not self._conn.poll(0):
                    return False
                if self._conn.recv()[0] not in ("accepted", "progress"):
                    return True
        except (EOFError, OSError):
            return False
        return False

    def run(self, settings, folders: Sequence[str | os.PathLike], progress: Callable | None = None,
            cancel: threading.Event | None = None, follow_symlinks: bool = False, poll_s: float = 0.25):
        """Index ``folders`` into ``settings.library`` in the worker; blocks until the run ends.

        Returns the ``IndexSummary``; see the module docstring for the contract."""
        if not self._run_lock.acquire(blocking=False):
            raise ExplorerError("indexing is already running in this worker; wait for it to finish")
        try:
            if self._closed:
                raise ExplorerError("the indexing worker was closed")
            job = ("index", settings, [os.fsdecode(os.fspath(f)) for f in folders], follow_symlinks)
            answer = None
            for attempt in (1, 2):  # a process that ended between runs (idle, killed) is replaced once
                if not self._send_job(job, cancel):
                    if attempt == 2:
                        raise WorkerDied(f"the indexing process ended before it took the job "
                                         f"(exit code {self._discard()})")
                    self._discard()
                    continue
                try:
                    answer = self._answer(progress, cancel, poll_s)
                    break
                except _NotAccepted:
                    code = self._discard()
                    if attempt == 2:
                        raise WorkerDied(f"the indexing process ended before it took the job (exit code {code})") from None
                except BaseException:
                    if not self._drain(60.0):
                        self._discard()
                    raise
            if answer is None:
                raise WorkerDied(f"the indexing process ended without finishing (exit code {self._discard()}); "
                                 "what it committed is kept, index again to continue")
            kind = answer[0]
            if kind == "done":
                self.last_run = answer[2]
                return answer[1]
            if kind == "error":
                raise pickle.loads(answer[1])
            self._discard()  # a crash ends the process (it says so, then exits)
            log.error("internal error in the indexing process:\n%s", answer[2])
            raise WorkerDied(f"internal error in the indexing process: {answer[1]}")
        finally:
            self._run_lock.release()

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """End the worker: a run in progress is cancelled (it saves its batch), then the process quits."""
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        got = self._run_lock.acquire(timeout=wait_s)
        try:
            if got and self._conn is not None:
                try:
                    self._conn.send(("quit",))
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
            if got:
                self._discard(wait_s)
            elif self._proc is not None:  # a run does not stop: end the process (batches are transactions)
                self._proc.terminate()
        finally:
            if got:
                self._run_lock.release()


class _NotAccepted(Exception):
    """The child ended before it acknowledged the job (it had timed out or was killed meanwhile)."""


def index_in_process(
    settings,
    folders: Sequence[str | os.PathLike],
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
    thread_cap: int | None = None,
    follow_symlinks: bool = False,
    poll_s: float = 0.25,
    worker: IndexingWorker | None = None,
):
    """Index ``folders`` into ``settings.library`` in a worker process; blocks until it ends.

    With ``worker`` the run goes to that long-lived worker (``thread_cap`` is then the worker's
    own); without, a one-shot worker with ``thread_cap`` is started and closed afterwards.
    Returns the ``IndexSummary``.
    """
    if worker is not None:
        if thread_cap is not None and thread_cap != worker.thread_cap:
            raise ExplorerError(f"thread_cap {thread_cap} differs from the worker's ({worker.thread_cap})")
        return worker.run(settings, folders, progress=progress, cancel=cancel, follow_symlinks=follow_symlinks, poll_s=poll_s)
    one_shot = IndexingWorker(thread_cap=thread_cap)
    try:
        return one_shot.run(settings, folders, progress=progress, cancel=cancel, follow_symlinks=follow_symlinks, poll_s=poll_s)
    finally:
        one_shot.close()


__all__ = ["INDEX_MODES", "DEFAULT_INDEX_MODE", "MODE_ENV", "IDLE_TIMEOUT_S", "WORKER_NICE", "IndexingWorker", "RunInfo",
           "WorkerDied", "index_in_process", "index_mode", "lower_priority"]
