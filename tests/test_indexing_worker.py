"""Indexing in a worker process (``explorer.core.indexing_worker``): same results and contract as
indexing in the calling process — progress, cancel, errors with their class, a killed worker is
a clear error and the next run resumes — and the caller's library sees what the worker wrote."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from explorer.core.config import Settings
from explorer.core.errors import ExplorerError
from explorer.core.indexing_worker import MODE_ENV, WorkerDied, index_in_process, index_mode
from explorer.core.library import Library
from explorer.core.lock import LibraryBusy, holder_info
from explorer.core.pipeline import Indexer
from explorer.core.store import ImageRow, VectorRow


def small_gallery(root: Path, sample_gallery: Path, n: int, side: int = 96) -> Path:
    """``n`` different small crops of the sample photos."""
    photos = sorted(p for p in sample_gallery.rglob("*.jpg") if "_" not in p.stem)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
            x = (i // len(photos)) * 17 % max(1, im.width - side)
            im.crop((x, 0, x + side, side)).save(root / f"img{i:03d}.jpg", quality=90)
    return root


def open_lib(path: Path, loader) -> Library:
    return Library(path, Settings(library=str(path), caption_sources=()), loader=loader)


def ok_ids(lib: Library) -> set[int]:
    with lib.store.session() as s:
        return set(s.scalars(select(ImageRow.id).where(ImageRow.status == "ok")))


def assert_consistent(lib: Library) -> None:
    """Every ok image has both vectors, and each index (as reopened here) holds exactly them."""
    lib.sync_indices(save=False)
    ok = ok_ids(lib)
    with lib.store.session() as s:
        for kind in ("image", "caption"):
            assert set(s.scalars(select(VectorRow.image_id).where(VectorRow.kind == kind))) >= ok, kind
    for mode in ("image", "caption", "fused"):
        assert lib.index(mode).live_ids() == ok, mode


def test_worker_indexes_and_the_caller_sees_it(tmp_path, sample_gallery, loader):
    g = small_gallery(tmp_path / "g", sample_gallery, 20)
    lib = open_lib(tmp_path / "lib", loader)
    lib.sync_indices(save=False)  # the caller holds (empty) indices in memory, as the window does
    assert len(lib.index("image")) == 0
    seen, holders = [], set()

    def progress(p):
        seen.append(p.phase)
        if p.phase == "indexing":
            holders.add(holder_info(lib.dir / "writer.lock").get("pid"))

    summary = index_in_process(lib.settings, [g], progress=progress)
    assert summary.ok and summary.indexed == 20
    assert seen[0] == "loading models" and "indexing" in seen and seen[-1] == "done"
    # another process held the writer lock while it indexed, and let it go at the end
    assert holders and os.getpid() not in holders
    assert not lib.is_writer and not holder_info(lib.dir / "writer.lock").get("pid")
    lib.reload()
    assert len(ok_ids(lib)) == 20
    for mode in ("image", "caption", "fused"):  # reopened from what the worker saved, no sync needed
        assert lib.index(mode).live_ids() == ok_ids(lib), mode
    assert_consistent(lib)
    # the same vectors as indexing in this process: a second run finds nothing to do
    again = Indexer(lib).run([g])
    assert again.indexed == 0 and again.unchanged == 20


def test_worker_errors_keep_their_class_and_cancel_is_forwarded(tmp_path, sample_gallery, loader):
    g = small_gallery(tmp_path / "g", sample_gallery, 6)
    lib = open_lib(tmp_path / "lib", loader)
    with pytest.raises(ExplorerError, match="not a folder"):
        index_in_process(lib.settings, [tmp_path / "missing"])
    with lib.writing("editing captions"):  # this process writes: the worker is refused, clearly
        with pytest.raises(LibraryBusy, match="editing captions by pid"):
            index_in_process(lib.settings, [g])
    cancel = threading.Event()
    cancel.set()
    summary = index_in_process(lib.settings, [g], cancel=cancel)
    assert summary.cancelled and summary.indexed == 0
    summary = index_in_process(lib.settings, [g])
    assert summary.ok and summary.indexed == 6


def test_killed_worker_is_a_clear_error_and_the_next_run_resumes(tmp_path, sample_gallery, loader):
    g = small_gallery(tmp_path / "g", sample_gallery, 40)
    lib = open_lib(tmp_path / "lib", loader)
    killed = []

    def progress(p):
        if p.phase == "indexing" and not killed:
            (child,) = [c for c in mp.active_children() if c.name == "explorer-indexing"]
            os.kill(child.pid, signal.SIGKILL)
            killed.append(p.done)

    with pytest.raises(WorkerDied, match="ended without finishing"):
        index_in_process(lib.settings, [g], progress=progress)
    assert killed and 0 < killed[0] < 40
    lib.reload()
    done_before = len(ok_ids(lib))
    assert done_before >= killed[0]  # committed batches are kept
    summary = index_in_process(lib.settings, [g])
    assert summary.ok and summary.indexed + summary.unchanged == 40 and summary.unchanged == done_before
    lib.reload()
    lib.check()  # as the searcher does on opening
    assert_consistent(lib)


def test_index_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    assert index_mode() == "process"
    monkeypatch.setenv(MODE_ENV, "thread")
    assert index_mode() == "thread"
    monkeypatch.setenv(MODE_ENV, "fork")
    with pytest.raises(ExplorerError, match="not an indexing mode"):
        index_mode()
