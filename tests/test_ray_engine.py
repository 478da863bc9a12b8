"""``explorer index --index-engine ray``: the pipeline on a local Ray instance gives the local indexer's
library, and a job killed between writing a shard and ingesting it resumes without duplicates;
the engine's stages, run in-process, handle incremental changes exactly as the local indexer.

Needs the ``[scale]`` extra (Ray Data); skipped cleanly without it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

ray = pytest.importorskip("ray", reason="Ray is an optional extra ([scale])")
pytest.importorskip("pyarrow")

from explorer.core.distributed import RayIndexer, RayOptions  # noqa: E402
from explorer.core.library import Library  # noqa: E402
from explorer.core.store import CaptionRow, DetectionRow, ImageRow, VectorRow  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024 * 1024)
    yield
    if started:
        ray.shutdown()


class Killed(Exception):
    pass


def snapshot(lib: Library, root) -> dict:
    """relative path -> (id, status, error, captions, detection labels, image vec, caption vec)."""
    out = {}
    im, tx = lib.image_model.model_id, lib.text_model.model_id
    with lib.store.session() as s:
        for r in s.scalars(select(ImageRow)):
            caps = {c.source: c.text for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id == r.id))}
            dets = sorted(d.label for d in s.scalars(select(DetectionRow).where(DetectionRow.image_id == r.id)))
            vec = {v.kind: np.frombuffer(v.data, np.float32) for v in s.scalars(select(VectorRow).where(
                VectorRow.image_id == r.id, VectorRow.model_id.in_((im, tx))))}
            out[os.path.relpath(r.path, root)] = (r.id, r.status, r.error, caps, dets, vec.get("image"), vec.get("caption"))
    return out


def test_ray_job_killed_then_resumed_equals_local_indexer(local_ray, tmp_path, sample_gallery, indexed_sample, loader):
    gal = tmp_path / "gallery"
    shutil.copytree(sample_gallery, gal)
    (gal / "zzz").mkdir()  # scanned last, so the other images get the local indexer's ids
    (gal / "zzz" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    lib_dir = tmp_path / "lib"
    lib = Library(lib_dir, replace(loader.settings, library=str(lib_dir)), loader=loader)
    opts = RayOptions(shard_size=8, batch_size=8, cpus_per_actor=0.25, cpus_per_decode=0.25)

    written = []

    def kill_at_second_shard(p):
        if p.phase == "shard written":
            written.append(p.current)
            if len(written) == 2:
                raise Killed  # shard 1 ingested, shard 2 on disk but not ingested: the worst moment

    with pytest.raises(Killed):
        RayIndexer(lib, options=opts).run([gal], progress=kill_at_second_shard)
    with lib.store.session() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 8
    assert os.path.exists(written[1]) and not os.path.exists(written[0])

    again = RayIndexer(lib, options=opts)
    summary = again.run([gal])
    n_files = sum(1 for _ in sample_gallery.rglob("*.jpg"))
    assert again.stats.shards_reused == 1 and again.stats.rows_reused == 8  # the written shard is not recomputed
    assert again.stats.rows_computed == n_files + 1 - 16  # nor is the ingested one
    assert not list((lib_dir / "ray-shards").glob("*.parquet"))
    assert summary.indexed == n_files - 8 and [f.path.endswith("broken.jpg") for f in summary.failures] == [True]
    lib.close()

    # no duplicates: one row per file, one vector per kind per ok image, indices agree
    lib = Library(lib_dir, replace(loader.settings, library=str(lib_dir)), loader=loader)
    with lib.store.session() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow)) == n_files + 1
        per = s.execute(select(VectorRow.image_id, VectorRow.kind, func.count()).group_by(VectorRow.image_id, VectorRow.kind)).all()
        assert len(per) == 2 * n_files and all(c == 1 for _, _, c in per)
    assert not lib.check().lines()

    # the same library as the local indexer's: ids, captions, detections, vectors
    got, want = snapshot(lib, gal), snapshot(indexed_sample, sample_gallery)
    assert got.pop(os.path.join("zzz", "broken.jpg"))[1] == "error"
    assert set(got) == set(want)
    for rel, (gid, status, err, caps, dets, iv, cv) in got.items():
        wid, wstatus, _, wcaps, wdets, wiv, wcv = want[rel]
        assert (gid, status, caps, dets) == (wid, wstatus, wcaps, wdets), rel
        assert float(iv @ wiv) >= 0.999 and float(cv @ wcv) >= 0.999, rel
    lib.close()


def test_cli_ray_options_are_checked():
    from explorer.cli import parse_concurrency
    from explorer.core.errors import ExplorerError

    assert parse_concurrency("detector=2, image=3") == {"detector": 2, "image": 3}
    with pytest.raises(ExplorerError, match="ROLE=N"):
        parse_concurrency("gpu=2")


class InlineRayIndexer(RayIndexer):
    """The Ray engine's stages (decode, the four role actors, shards, ingest) run in this process:
    the same code as on the cluster, without starting Ray, to test incremental runs cheaply."""

    def __init__(self, lib, loader, **kw):
        super().__init__(lib, **kw)
        self.loader = loader

    def _compute(self, rows, ensure_ray):
        from explorer.core.distributed.ray_engine import ACTORS, ROLES, decode_batch

        for s in range(0, len(rows), self.options.batch_size):
            chunk = rows[s:s + self.options.batch_size]
            b = {k: np.array([r[k] for r in chunk], dtype=object if isinstance(chunk[0][k], (bytes, str)) else None)
                 for k in chunk[0]}
            b = decode_batch(b)
            for role in ROLES:
                actor = object.__new__(ACTORS[role])
                actor.model = self.loader.get(role)
                b = actor(b)
            yield b


def copy_indexed(where, sample_gallery, indexed_sample, loader, **settings) -> tuple:
    """A copy of the sample gallery and of its indexed library (rows moved to the copy's paths),
    opened with ``settings`` changed."""
    gal, lib_dir = where / "gallery", where / "lib"
    shutil.copytree(sample_gallery, gal)
    shutil.copytree(indexed_sample.dir, lib_dir)
    lib = Library(lib_dir, replace(loader.settings, library=str(lib_dir), **settings), loader=loader)
    # the copied library knows the original paths: move its rows to this copy's paths
    with lib.store.Session.begin() as s:
        for r in s.scalars(select(ImageRow)):
            p = os.path.join(str(gal), os.path.relpath(r.path, sample_gallery))
            r.path_key, r.path, r.folder = os.fsencode(p), p, os.path.dirname(p)
    return gal, lib


def assert_same_library(got: dict, want: dict) -> None:
    """Snapshots agree: ids, status, caption rows, detections; vectors to cosine 0.999."""
    assert set(got) == set(want)
    for rel in want:
        gid, status, err, caps, dets, iv, cv = got[rel]
        wid, wstatus, werr, wcaps, wdets, wiv, wcv = want[rel]
        assert (gid, status, err, caps, dets) == (wid, wstatus, werr, wcaps, wdets), rel
        assert (iv is None) == (wiv is None) and (cv is None) == (wcv is None), rel
        if iv is not None:
            assert float(iv @ wiv) >= 0.999, rel
        if cv is not None:
            assert float(cv @ wcv) >= 0.999, rel


def test_incremental_runs_match_local_indexer(tmp_path, indexed_sample, sample_gallery, loader):
    """After the first indexing: a new sidecar caption (only the text is redone, the user caption
    wins), a changed file (redone under the same id) and a new file — the Ray engine's stages store
    exactly what the local indexer stores."""
    from explorer.core.pipeline import Indexer

    results = {}
    for engine in ("local", "ray"):
        gal, lib = copy_indexed(tmp_path / engine, sample_gallery, indexed_sample, loader)
        cat = sorted((gal / "cat").glob("*.jpg"))
        (gal / "cat" / (cat[0].name + ".txt")).write_text("a tabby cat looking at the camera")
        shutil.copy(gal / "coffee" / "coffee.jpg", gal / "cat" / cat[1].name)  # changed content, same name
        os.utime(gal / "cat" / cat[1].name, (1, 1))
        shutil.copy(gal / "rocket" / "rocket.jpg", gal / "rocket" / "rocket-copy.jpg")  # a new file
        if engine == "local":
            summary = Indexer(lib).run([gal])
        else:
            summary = InlineRayIndexer(lib, loader, options=RayOptions(shard_size=4, batch_size=4)).run([gal])
        assert summary.ok, summary.failures
        results[engine] = (summary.indexed, summary.unchanged, snapshot(lib, gal))
        lib.close()
        changed = (os.path.join("cat", cat[0].name), os.path.join("cat", cat[1].name))
    (ni, nu, got), (wi, wu, want) = results["ray"], results["local"]
    assert (ni, nu) == (wi, wu) == (3, len(want) - 3)
    assert set(got) == set(want)
    for rel in want:
        gid, status, err, caps, dets, iv, cv = got[rel]
        wid, wstatus, werr, wcaps, wdets, wiv, wcv = want[rel]
        assert (gid, status, caps, dets) == (wid, wstatus, wcaps, wdets), rel
        assert float(iv @ wiv) >= 0.999 and float(cv @ wcv) >= 0.999, rel
    # the changes really happened (the comparison above is not between two unchanged libraries)
    sidecar, replaced = got[changed[0]], got[changed[1]]
    assert sidecar[3]["sidecar"] == "a tabby cat looking at the camera"
    assert float(replaced[5] @ got[os.path.join("coffee", "coffee.jpg")][5]) >= 0.999
    assert os.path.join("rocket", "rocket-copy.jpg") in got


def test_caption_sources_match_local_indexer(tmp_path, indexed_sample, sample_gallery, loader):
    """Folder words switched on (caption text only is redone, joined to the generated caption and
    the file-name words), a new sidecar (the person-written caption wins) and a deleted file: the
    Ray engine's stages embed and store the same captions as the local indexer."""
    from explorer.core.pipeline import Indexer

    sources = ("metadata", "filename", "folder")
    results = {}
    for engine in ("local", "ray"):
        gal, lib = copy_indexed(tmp_path / engine, sample_gallery, indexed_sample, loader, caption_sources=sources)
        cat = sorted((gal / "cat").glob("*.jpg"))
        (gal / "cat" / (cat[0].name + ".txt")).write_text("  a cat\n on a sofa ")
        (gal / "rocket" / "rocket.jpg").unlink()
        if engine == "local":
            summary = Indexer(lib).run([gal])
        else:
            summary = InlineRayIndexer(lib, loader, options=RayOptions(shard_size=5, batch_size=3)).run([gal])
        assert summary.ok, summary.failures
        results[engine] = ((summary.indexed, summary.unchanged, summary.removed), snapshot(lib, gal))
        lib.close()
    (counts, got), (wcounts, want) = results["ray"], results["local"]
    assert counts == wcounts and counts[2] == 1
    assert_same_library(got, want)
    # the changes really happened
    before = snapshot(indexed_sample, sample_gallery)
    sidecar = got[os.path.join("cat", cat[0].name)]
    assert sidecar[3]["sidecar"] == "a cat on a sofa" and "folder" in sidecar[3]
    other = os.path.join("cat", cat[1].name)
    assert got[other][3]["folder"] == "cat" and not np.array_equal(got[other][6], before[other][6])  # re-embedded


def test_ocr_source_matches_local_indexer(tmp_path, sample_gallery, loader):
    """With the OCR source on, the Ray engine reads the text in the images as the local indexer does."""
    pytest.importorskip("rapidocr_onnxruntime")
    from PIL import Image, ImageDraw, ImageFont

    from explorer.core.pipeline import Indexer

    results = {}
    for engine in ("local", "ray"):
        gal, lib_dir = tmp_path / engine / "gallery", tmp_path / engine / "lib"
        gal.mkdir(parents=True)
        im = Image.new("RGB", (420, 140), "white")
        ImageDraw.Draw(im).text((20, 40), "SUMMER SALE", fill="black", font=ImageFont.load_default(size=44))
        im.save(gal / "poster.jpg", quality=95)
        shutil.copy(sample_gallery / "coffee" / "coffee.jpg", gal / "coffee.jpg")
        lib = Library(lib_dir, replace(loader.settings, library=str(lib_dir), caption_sources=("filename", "ocr")), loader=loader)
        if engine == "local":
            summary = Indexer(lib).run([gal])
        else:
            summary = InlineRayIndexer(lib, loader, options=RayOptions(shard_size=2, batch_size=2)).run([gal])
        assert summary.ok and summary.indexed == 2, summary.failures
        results[engine] = snapshot(lib, gal)
        lib.close()
    assert_same_library(results["ray"], results["local"])
    assert results["ray"]["poster.jpg"][3]["ocr"] == "SUMMER SALE"


HOLDER = """
import sys, time
from explorer.core.lock import WriterLock
lock = WriterLock(sys.argv[1]); lock.acquire("indexing")
print("locked", flush=True); time.sleep(float(sys.argv[2]))
"""


def test_ray_run_holds_the_writer_lock(tmp_path, indexed_sample, sample_gallery, loader):
    """A second writer is refused before anything is written; the run holds the lock, so its
    indices are saved and a later check finds nothing to repair."""
    import subprocess
    import sys

    from explorer.core.lock import LibraryBusy
    from explorer.core.store import RunRow

    gal, lib = copy_indexed(tmp_path, sample_gallery, indexed_sample, loader)
    shutil.copy(gal / "rocket" / "rocket.jpg", gal / "rocket" / "rocket-copy.jpg")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lib.dir), "60"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with lib.store.session() as s:
            runs = s.scalar(select(func.count()).select_from(RunRow))
        with pytest.raises(LibraryBusy, match=f"library is busy \\(indexing by pid {holder.pid} since "):
            InlineRayIndexer(lib, loader).run([gal])
        with lib.store.session() as s:
            assert s.scalar(select(func.count()).select_from(RunRow)) == runs, "the refused writer left no run row"
    finally:
        holder.kill()
        holder.wait()
    writer = []
    summary = InlineRayIndexer(lib, loader).run([gal], progress=lambda p: writer.append(lib.is_writer))
    assert summary.ok and summary.indexed == 1 and writer and all(writer) and not lib.is_writer
    lib_dir = lib.dir
    lib.close()
    lib = Library(lib_dir, replace(loader.settings, library=str(lib_dir)), loader=loader)
    assert not lib.check().lines()
    lib.close()


def _ok_images(lib_dir: Path) -> int:
    """Images committed so far, read without disturbing the writer (read-only SQLite)."""
    import sqlite3

    db = lib_dir / "library.sqlite"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # the schema is being created
        return 0


def test_cli_ray_job_sigkilled_then_rerun_has_no_duplicates(tmp_path, sample_gallery, indexed_sample):
    """A real kill: ``explorer index --index-engine ray`` (a local Ray, 2 CPUs) in a subprocess gets
    SIGKILL once some shards are committed; the same command again completes the library: one row
    per file, one vector per kind per image, ``explorer check`` finds nothing to repair, and ids,
    captions, detections and vectors (cosine >= 0.999) are the local indexer's."""
    import signal
    import subprocess
    import sys
    import time

    gal = tmp_path / "gallery"
    shutil.copytree(sample_gallery, gal)
    (gal / "zzz").mkdir()  # scanned last, so the other images get the local indexer's ids
    (gal / "zzz" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    n_files = sum(1 for _ in sample_gallery.rglob("*.jpg"))
    lib_dir = tmp_path / "lib"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RAY_DISABLE_USAGE_STATS": "1"}
    cmd = [sys.executable, "-m", "explorer", "index", str(gal), "--library", str(lib_dir), "--index-engine", "ray",
           "--shard-size", "4", "--batch-size", "4", "--quiet"]

    # 1. start the job in its own process group and SIGKILL it once a shard or two are in
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen, deadline = 0, time.monotonic() + 600
        while job.poll() is None and time.monotonic() < deadline:
            seen = _ok_images(lib_dir)
            if seen >= 4:
                break
            time.sleep(0.05)
        assert job.poll() is None, f"the job ended before it could be killed:\n{job.stdout.read()[-3000:]}"
        assert seen >= 4, "no shard committed within 10 minutes"
        os.kill(job.pid, signal.SIGKILL)  # the driver dies at once: no clean-up, no index save, no run end
        job.wait(timeout=60)
        assert job.returncode == -signal.SIGKILL
    finally:
        try:  # whatever the driver started (Ray's local processes) goes with it
            os.killpg(job.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        job.wait(timeout=60)
    killed_at = _ok_images(lib_dir)
    assert 4 <= killed_at < n_files, f"killed with {killed_at} of {n_files} images in: not mid-run"

    # 2. the same command again finishes the job (exit 1: the broken file is a recorded failure)
    again = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert again.returncode == 1, again.stdout + again.stderr
    assert f"{n_files - killed_at} indexed, {killed_at} unchanged" in again.stdout, again.stdout
    assert "broken.jpg" in again.stdout and "1 failed" in again.stdout
    assert not list((lib_dir / "ray-shards").glob("*.parquet"))

    # 3. explorer check: database and indices agree
    check = subprocess.run([sys.executable, "-m", "explorer", "check", "--library", str(lib_dir), "--full"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "library is consistent" in check.stdout, check.stdout
    assert f"images: {n_files} indexed, 1 with errors" in check.stdout, check.stdout

    # 4. no duplicates, and the local indexer's library
    lib = Library(lib_dir, replace(indexed_sample.settings, library=str(lib_dir)), loader=indexed_sample.loader)
    try:
        with lib.store.session() as s:
            paths = s.scalars(select(ImageRow.path)).all()
            assert len(paths) == len(set(paths)) == n_files + 1
            per = s.execute(select(VectorRow.image_id, VectorRow.kind, func.count()).group_by(VectorRow.image_id, VectorRow.kind)).all()
            assert len(per) == 2 * n_files and all(c == 1 for _, _, c in per)
        assert not lib.check().lines()  # loads the saved indices: nothing to repair
        for mode in ("image", "caption", "fused"):
            assert len(lib.index(mode)) == n_files, mode
        got, want = snapshot(lib, gal), snapshot(indexed_sample, sample_gallery)
        assert got.pop(os.path.join("zzz", "broken.jpg"))[1] == "error"
        assert_same_library(got, want)
    finally:
        lib.close()
