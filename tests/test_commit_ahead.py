"""The pipeline's commit-ahead writer: batches commit in order on one thread, at most one behind,
errors reach the caller, and indexing with it stores exactly what the serial commit stores."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from explorer.core.commit_ahead import CommitAhead
from explorer.core.config import Settings
from explorer.core.library import Library
from explorer.core.pipeline import Indexer
from explorer.core.store import CaptionRow, DetectionRow, ImageRow, VectorRow


def test_commits_run_in_order_on_one_thread_at_most_one_behind():
    done, threads, running = [], set(), []
    gate = threading.Event()

    def commit(i):
        running.append(i)
        if i == 0:
            gate.wait(5)
        threads.add(threading.get_ident())
        done.append(i)

    w = CommitAhead()
    w.submit(commit, 0)  # returns at once: the commit waits on the gate in the writer thread
    assert done == []
    t = threading.Thread(target=w.submit, args=(commit, 1))
    t.start()
    time.sleep(0.2)
    assert running == [0]  # the second submit waits for the first commit: never two pending
    gate.set()
    t.join(5)
    w.close()
    assert done == [0, 1] and len(threads) == 1 and threading.get_ident() not in threads


def test_a_failed_commit_raises_in_the_caller():
    def bad():
        raise OSError("disk full")

    w = CommitAhead()
    w.submit(bad)
    with pytest.raises(OSError, match="disk full"):
        w.submit(lambda: None)  # at the latest when the next batch is handed over
    w.submit(bad)
    with pytest.raises(OSError, match="disk full"):
        w.close()
    w = CommitAhead()
    w.submit(bad)
    w.close(quiet=True)  # a run already ending in an error: logged, not raised again


def test_disabled_commits_at_once_in_the_caller():
    seen = []
    w = CommitAhead(enabled=False)
    w.submit(lambda: seen.append(threading.get_ident()))
    assert seen == [threading.get_ident()]
    w.close()


def _contents(lib: Library) -> dict:
    with lib.store.session() as s:
        images = {r.path: (r.status, r.width, r.height, r.content_hash) for r in s.scalars(select(ImageRow))}
        path = {r.id: r.path for r in s.scalars(select(ImageRow))}
        caps = sorted((path[c.image_id], c.source, c.text) for c in s.scalars(select(CaptionRow)))
        dets = sorted((path[d.image_id], d.label, round(d.score, 4)) for d in s.scalars(select(DetectionRow)))
        vecs = {(path[v.image_id], v.kind): v.array().copy() for v in s.scalars(select(VectorRow))}
    return {"images": images, "captions": caps, "detections": dets, "vectors": vecs}


def test_commit_ahead_stores_what_the_serial_commit_stores(tmp_path, sample_gallery, loader):
    g = tmp_path / "g"
    g.mkdir()
    photos = sorted(p for p in sample_gallery.rglob("*.jpg") if "_" not in p.stem)
    for i in range(11):  # batches of 4: three batches, the last one short
        with Image.open(photos[i % len(photos)]) as im:
            im.convert("RGB").crop((i * 5, 0, i * 5 + 120, 120)).save(g / f"p{i:02d}.jpg", quality=90)
    (g / "broken.jpg").write_bytes(b"not an image")
    out = {}
    for ahead in (False, True):
        d = tmp_path / f"lib-{ahead}"
        lib = Library(d, Settings(library=str(d)), loader=loader)
        summary = Indexer(lib, batch_size=4, commit_ahead=ahead).run([g])
        assert summary.indexed == 11 and len(summary.failures) == 1
        out[ahead] = _contents(lib)
        lib.close()
    a, b = out[False], out[True]
    assert a["images"] == b["images"] and a["captions"] == b["captions"] and a["detections"] == b["detections"]
    assert a["vectors"].keys() == b["vectors"].keys() and len(a["vectors"]) == 22
    for k in a["vectors"]:
        np.testing.assert_array_equal(a["vectors"][k], b["vectors"][k])
