"""The long-lived indexing worker (``explorer.core.indexing_worker.IndexingWorker``): later runs
reuse the process and its loaded models (reloading only when the model settings change), a worker
that died between runs is replaced, it ends when idle too long, when closed and when its parent
dies, and it runs at a lower CPU priority than its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from explorer.core.config import Settings
from explorer.core.errors import ExplorerError
from explorer.core.indexing_worker import WORKER_NICE, IndexingWorker
from explorer.core.library import Library
from explorer.core.lock import LibraryBusy, holder_info
from explorer.core.models.registry import model_key

from test_indexing_worker import small_gallery


def _gone(pid: int, within: float) -> bool:
    """Whether process ``pid`` has ended within ``within`` seconds: gone, or a zombie none of whose
    threads still runs (what another parent than ours has not reaped yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            if zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1:
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def _ended(worker: IndexingWorker, within: float) -> bool:
    """Whether ``worker``'s process has ended (as its parent sees it) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if worker.pid is None:
            return True
        time.sleep(0.1)
    return False


def _thread_nices(pid: int) -> list[int]:
    """The nice value of every thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


def test_model_key_ignores_what_no_model_reads():
    s = Settings()
    assert model_key(replace(s, library="/elsewhere", caption_sources=(), vector_store="milvus", whitening="pca")) == model_key(s)
    for change in ({"engine": "torch"}, {"detector_threshold": 0.5}, {"gem_p": 4.0}, {"image": "open_clip:ViT-B-32@x"}):
        assert model_key(replace(s, **change)) != model_key(s), change


def test_later_runs_reuse_the_process_and_its_models(tmp_path, sample_gallery):
    g1 = small_gallery(tmp_path / "g1", sample_gallery, 8)
    g2 = small_gallery(tmp_path / "g2", sample_gallery, 6, side=80)
    s1 = Settings(library=str(tmp_path / "lib1"), caption_sources=())
    worker = IndexingWorker()
    try:
        assert worker.pid is None  # nothing starts before the first run
        first = worker.run(s1, [g1])
        assert first.ok and first.indexed == 8
        run1 = worker.last_run
        assert run1.jobs == 1 and "effnet-lite0:" in run1.models_loaded and "minilm:" in run1.models_loaded
        pid = worker.pid
        assert pid == run1.pid and pid != os.getpid()
        # between runs the worker is alive but holds no writer lock
        assert not holder_info(tmp_path / "lib1" / "writer.lock").get("pid")

        # the worker and all its threads (the pipeline's pools, the engines') run below this process
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert min(_thread_nices(pid)) >= min(19, own + WORKER_NICE)
        if Path("/proc/sys/kernel/sched_autogroup_enabled").is_file() and \
                Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
            with open(f"/proc/{pid}/autogroup") as f:
                assert f.read().split()[-1] == str(WORKER_NICE)

        # another library, same model settings: same process, no model loaded, the usual contract
        phases = []
        s2 = replace(s1, library=str(tmp_path / "lib2"))
        second = worker.run(s2, [g2], progress=lambda p: phases.append(p.phase))
        assert second.ok and second.indexed == 6
        assert worker.last_run.pid == pid and worker.last_run.jobs == 2 and worker.last_run.models_loaded == ()
        assert phases[0] == "loading models" and "indexing" in phases and phases[-1] == "done"
        assert not holder_info(tmp_path / "lib2" / "writer.lock").get("pid")

        # a later run keeps the contract: errors with their class, a forwarded cancel; the worker survives them
        with pytest.raises(ExplorerError, match="not a folder"):
            worker.run(s2, [tmp_path / "missing"])
        lib = Library(tmp_path / "lib2", s2, loader=None)
        try:
            with lib.writing("editing captions"):
                with pytest.raises(LibraryBusy, match="editing captions by pid"):
                    worker.run(s2, [g2])
        finally:
            lib.close()
        small_gallery(g2 / "more", sample_gallery, 3, side=72)
        cancel = threading.Event()
        cancel.set()
        cancelled = worker.run(s2, [g2], cancel=cancel)
        assert cancelled.cancelled and cancelled.indexed == 0
        assert worker.pid == pid and worker.last_run.jobs == 5 and worker.last_run.models_loaded == ()

        # other model settings: the same process loads them anew
        third = worker.run(replace(s2, detector_threshold=0.45), [g2])
        assert third.ok and third.indexed >= 3  # at least those the cancelled run left
        assert worker.last_run.pid == pid and worker.last_run.jobs == 6 and "ssd-mobilenet:" in worker.last_run.models_loaded
    finally:
        worker.close()
    assert worker.pid is None and _gone(pid, 10)


def test_a_worker_killed_between_runs_is_replaced(tmp_path, sample_gallery):
    g = small_gallery(tmp_path / "g", sample_gallery, 5)
    s = Settings(library=str(tmp_path / "lib"), caption_sources=())
    worker = IndexingWorker()
    try:
        worker.run(s, [g])
        pid = worker.pid
        os.kill(pid, signal.SIGKILL)  # and run at once: the parent may not have seen it die yet
        small_gallery(tmp_path / "g" / "more", sample_gallery, 3, side=72)
        summary = worker.run(s, [g])
        assert summary.ok and summary.indexed == 3 and summary.unchanged == 5
        assert worker.last_run.pid not in (None, pid) and worker.last_run.jobs == 1 and worker.last_run.models_loaded
    finally:
        worker.close()


def test_closing_the_worker_cancels_its_run_and_ends_it(tmp_path, sample_gallery):
    g = small_gallery(tmp_path / "g", sample_gallery, 40)
    worker = IndexingWorker()
    indexing, result = threading.Event(), {}

    def run():
        try:
            result["summary"] = worker.run(Settings(library=str(tmp_path / "lib"), caption_sources=()), [g],
                                           progress=lambda p: indexing.set() if p.phase == "indexing" else None)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    try:
        assert indexing.wait(300), "no batch was indexed"
        pid = worker.pid
        worker.close()  # as the window does when it closes
        t.join(60)
        assert not t.is_alive() and "error" not in result, result
        summary = result["summary"]
        assert summary.cancelled and 0 < summary.indexed < 40  # stopped after its batch, and saved it
        assert worker.pid is None and _gone(pid, 10)
    finally:
        worker.close()
        t.join(60)


def test_an_idle_worker_ends_after_its_timeout(tmp_path, sample_gallery):
    g = small_gallery(tmp_path / "g", sample_gallery, 3)
    worker = IndexingWorker(idle_s=1.0)
    try:
        worker.run(Settings(library=str(tmp_path / "lib"), caption_sources=()), [g])
        assert _ended(worker, 60)
    finally:
        worker.close()


PARENT_SCRIPT = """
import os, time
from explorer.core.indexing_worker import WORKER_NICE, IndexingWorker

if __name__ == "__main__":
    worker = IndexingWorker()
    pid = worker.start()
    own, deadline = os.getpriority(os.PRIO_PROCESS, 0), time.monotonic() + 60
    while os.getpriority(os.PRIO_PROCESS, pid) < min(19, own + WORKER_NICE):  # set up: about to serve
        assert worker.pid == pid and time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)
    time.sleep(1.0)
    assert worker.pid == pid, "the worker ended on its own"
    print(pid, flush=True)
    os._exit(0)  # no clean-up: as if killed
"""


def test_the_worker_ends_when_its_parent_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    assert _gone(child, 30), "the worker outlived its parent"


def test_a_closed_worker_refuses_runs(tmp_path):
    worker = IndexingWorker()
    worker.close()
    with pytest.raises(Exception, match="closed"):
        worker.run(Settings(library=str(tmp_path / "lib")), [tmp_path])
