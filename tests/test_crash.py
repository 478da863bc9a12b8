"""Crash safety: ``explorer index`` killed with SIGKILL at random moments never leaves a
half-written image, and ``Library.check`` always brings the indices back in line with the
database; a damaged index cache (deleted, corrupt, or with a manifest older than the index)
is repaired by ``Library.check`` and reported.

The kill schedule is random; the seed is printed in every assertion message and can be fixed
with ``CRASH_SEED=<n>`` to replay a failure."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, text

from explorer.core.config import Settings
from explorer.core.library import Library
from explorer.core.pipeline import Indexer
from explorer.core.store import CaptionRow, ImageRow, VectorRow

pytestmark = pytest.mark.slow  # every test here indexes real photos with the real models

N_PHOTOS = 60
SEED = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(1 << 30))


def open_lib(path: Path, loader) -> Library:
    return Library(path, Settings(library=str(path)), loader=loader)


def make_crops(src: Path, out: Path, n: int, seed: int) -> Path:
    """``n`` small photos: random crops of the sample gallery, longest side 160-360 px."""
    rng = random.Random(seed)
    photos = sorted(src.rglob("*.jpg"))
    out.mkdir(parents=True)
    for i in range(n):
        with Image.open(photos[rng.randrange(len(photos))]) as im:
            img = im.convert("RGB")
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch))
        img.thumbnail((rng.randint(160, 360),) * 2)
        sub = out / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        img.save(sub / f"crop{i:03d}.jpg", quality=rng.randint(80, 95))
    return out


def library_state(lib: Library) -> dict[bytes, dict]:
    """path -> {caption text, image vector, caption vector} for the current models."""
    im, tx = lib.image_model.model_id, lib.text_model.model_id
    out = {}
    with lib.store.session() as s:
        for r in s.scalars(select(ImageRow).where(ImageRow.status == "ok")):
            vec = {(v.kind, v.model_id): v.array() for v in r.vectors}
            out[r.path_key] = {
                "caption": r.active_caption().text if r.captions else None,
                "image": vec.get(("image", im)),
                "text": vec.get(("caption", tx)),
            }
    return out


def assert_invariants(lib: Library, why: str) -> None:
    im, tx = lib.image_model.model_id, lib.text_model.model_id
    with lib.store.session() as s:
        assert s.execute(text("PRAGMA integrity_check")).scalar() == "ok", why
        dup = s.execute(select(ImageRow.path_key).group_by(ImageRow.path_key).having(func.count() > 1)).all()
        assert not dup, f"{why}: duplicate paths {dup}"
        ok = set(s.scalars(select(ImageRow.id).where(ImageRow.status == "ok")))
        n_err = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status != "ok"))
        assert n_err == 0, f"{why}: every photo is good, yet {n_err} rows are errors"
        for kind, model in (("image", im), ("caption", tx)):
            per = dict(s.execute(select(VectorRow.image_id, func.count()).where(VectorRow.kind == kind, VectorRow.model_id == model)
                                 .group_by(VectorRow.image_id)).all())
            half = ok - set(per)
            assert not half, f"{why}: ok images without a {kind} vector (half-written): {sorted(half)}"
            assert set(per) <= ok and all(c == 1 for c in per.values()), f"{why}: {kind} vectors {per}"
        capless = ok - set(s.scalars(select(CaptionRow.image_id)))
        assert not capless, f"{why}: ok images without a caption: {sorted(capless)}"
    stored = {"image": lib.store.load_vectors("image", im), "caption": lib.store.load_vectors("caption", tx)}
    for mode in ("image", "caption", "fused"):
        vi = lib.index(mode)
        assert vi.live_ids() == ok, f"{why}: index {mode} holds {len(vi.live_ids())} ids, the database {len(ok)} ok images"
        if mode != "fused" and ok:
            ids, mat = stored[mode]
            got = np.asarray(vi.index.get_items(ids.tolist()), np.float32)
            np.testing.assert_allclose(got, mat, atol=1e-6, err_msg=f"{why}: index {mode} holds stale vectors")


class Indexing:
    """``explorer index`` in a subprocess, with its stderr lines timestamped as they arrive."""

    def __init__(self, gallery: Path, lib_dir: Path, env: dict, extra=()):
        cmd = [sys.executable, "-m", "explorer", "index", str(gallery), "--library", str(lib_dir),
               "--batch-size", "4", "--progress", "--json", *extra]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.seen = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            now = time.monotonic()
            self.lines.append((now - self.t0, line.rstrip()))
            key = line.strip().rstrip(".")
            self.seen.setdefault(key if key in ("loading models", "scanning", "saving", "done") else "progress", now)

    def wait_for(self, what: str, timeout: float = 300) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if what in self.seen:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        raise AssertionError(f"no '{what}' within {timeout} s: {self.lines}")

    def kill(self) -> bool:
        """SIGKILL; True when the process was still running."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        self.proc.stdout.close()
        return alive

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode, out


@pytest.fixture(scope="module")
def crash_gallery(tmp_path_factory, sample_gallery) -> Path:
    return make_crops(sample_gallery, tmp_path_factory.mktemp("crash") / "gallery", N_PHOTOS, seed=1234)


def test_kill9_at_random_moments_then_resume(tmp_path, crash_gallery, loader):
    rng = random.Random(SEED)
    lib_dir = tmp_path / "lib"
    env = dict(os.environ, EXPLORER_CONFIG=str(tmp_path / "config.json"), XDG_DATA_HOME=str(tmp_path / "data"))
    env.pop("EXPLORER_LIBRARY", None)
    db = lib_dir / "library.sqlite"
    # (what to wait for, random delay after it): while the models load (the database exists from
    # the start), during indexing (after the first progress line, printed after the first batch),
    # and while the indices are being saved at the end
    schedule = [("db", rng.uniform(0.0, 2.0)), ("progress", rng.uniform(0.0, 1.5)), ("progress", rng.uniform(0.5, 4.0)),
                ("saving", rng.uniform(0.0, 0.15))]
    log = []
    done_before = 0
    for k, (event, delay) in enumerate(schedule):
        run = Indexing(crash_gallery, lib_dir, env)
        if event == "db":
            end = time.monotonic() + 60
            while not db.exists() and run.proc.poll() is None and time.monotonic() < end:
                time.sleep(0.005)
            reached = db.exists()
        else:
            reached = run.wait_for(event)
        time.sleep(delay)
        killed = run.kill()
        why = f"CRASH_SEED={SEED}, kill {k + 1} ({delay:.2f} s after {event}, killed={killed}, stderr {run.lines[-3:]})"
        assert reached or event == "saving", why
        lib = open_lib(lib_dir, loader)
        report = lib.check()
        assert_invariants(lib, why)
        with lib.store.session() as s:
            n_ok = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == "ok"))
        log.append((event, round(delay, 2), killed, n_ok, report.lines()))
        assert n_ok >= done_before, f"{why}: committed images were lost ({done_before} -> {n_ok})"
        done_before = n_ok
        lib.close()
    assert any(0 < n < N_PHOTOS for _, _, _, n, _ in log), f"CRASH_SEED={SEED}: no kill landed mid-indexing: {log}"

    # a full rerun completes, exits 0 and leaves a library equal to a clean index of the gallery
    rc, out = Indexing(crash_gallery, lib_dir, env).finish()
    assert rc == 0, f"CRASH_SEED={SEED}: {out} {log}"
    summary = json.loads(out)
    assert summary["failed"] == 0 and summary["indexed"] + summary["unchanged"] == N_PHOTOS, summary
    lib = open_lib(lib_dir, loader)
    assert not lib.check().lines(), "a completed run leaves nothing to repair"
    assert_invariants(lib, f"CRASH_SEED={SEED}, after the final run")
    resumed = library_state(lib)
    with lib.store.session() as s:
        runs = [r for r, in s.execute(text("SELECT status FROM runs ORDER BY id"))]
    lib.close()
    assert runs[-1] == "done" and "running" not in runs, runs

    fresh_lib = open_lib(tmp_path / "fresh", loader)
    assert Indexer(fresh_lib, batch_size=4).run([crash_gallery]).ok
    fresh = library_state(fresh_lib)
    fresh_lib.close()
    assert set(resumed) == set(fresh) and len(fresh) == N_PHOTOS
    for path, want in fresh.items():
        got = resumed[path]
        assert got["caption"] == want["caption"], path
        np.testing.assert_allclose(got["image"], want["image"], atol=1e-5, err_msg=str(path))
        np.testing.assert_allclose(got["text"], want["text"], atol=1e-5, err_msg=str(path))
    print(f"CRASH_SEED={SEED}; kills (event, delay s, killed, ok images after, repairs): {log}")


# ---------------------------------------------------------------------------------------
# damaged index caches


@pytest.fixture(scope="module")
def small_library(tmp_path_factory, sample_gallery, loader) -> tuple[Path, Path]:
    """A library of 6 photos, closed; tests copy it before damaging it."""
    base = tmp_path_factory.mktemp("repair")
    g = base / "gallery"
    g.mkdir()
    for p in sorted(sample_gallery.rglob("*.jpg"))[::8][:6]:
        shutil.copy(p, g / p.name)
    lib = open_lib(base / "lib", loader)
    assert Indexer(lib).run([g]).ok
    lib.close()
    return g, base / "lib"


@pytest.fixture
def damaged(tmp_path, small_library):
    g, src = small_library
    dst = tmp_path / "lib"
    shutil.copytree(src, dst)
    return g, dst


def _files(lib_dir: Path, mode: str) -> tuple[Path, Path]:
    hnsw = next((lib_dir / "indices").glob(f"{mode}--*.hnsw"))
    return hnsw, hnsw.with_suffix(".json")


def _ok_ids(lib: Library) -> set[int]:
    with lib.store.session() as s:
        return set(s.scalars(select(ImageRow.id).where(ImageRow.status == "ok")))


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "empty", "manifest deleted", "manifest garbage"])
def test_damaged_index_file_is_rebuilt_and_reported(damaged, loader, damage):
    g, lib_dir = damaged
    for mode in ("image", "caption", "fused"):
        hnsw, manifest = _files(lib_dir, mode)
        if damage == "deleted":
            hnsw.unlink()
        elif damage == "garbage":
            hnsw.write_bytes(os.urandom(hnsw.stat().st_size))
        elif damage == "truncated":
            hnsw.write_bytes(hnsw.read_bytes()[: hnsw.stat().st_size // 3])
        elif damage == "empty":
            hnsw.write_bytes(b"")
        elif damage == "manifest deleted":
            manifest.unlink()
        elif damage == "manifest garbage":
            manifest.write_text("{not json")
    lib = open_lib(lib_dir, loader)
    report = lib.check()
    lines = report.lines()
    assert len(lines) == 3 and all("rebuilt from stored vectors" in ln and "6 vectors" in ln for ln in lines), lines
    assert_invariants(lib, damage)
    q = lib.store.load_vectors("image", lib.image_model.model_id)
    ids, _ = lib.index("image").search(q[1][0], k=3)
    assert ids[0] == q[0][0]
    lib.close()
    lib = open_lib(lib_dir, loader)  # repaired for good: nothing left to do
    assert not lib.check().lines()
    lib.close()


def test_manifest_older_than_index_is_repaired(damaged, loader, tmp_path, sample_gallery):
    """A crash between writing the index and writing its manifest leaves the older manifest:
    the next check re-adds what the manifest does not know about (no duplicates) and re-applies
    the deletions it missed."""
    g, lib_dir = damaged
    old = {p.name: p.read_bytes() for p in (lib_dir / "indices").glob("*.json")}
    new = [shutil.copy(p, g / ("new-" + p.name)) for p in sorted(sample_gallery.rglob("*.jpg"))[1::8][:2]]
    victim = sorted(g.glob("*.jpg"))[0]
    shutil.move(victim, tmp_path / victim.name)
    try:
        lib = open_lib(lib_dir, loader)
        s = Indexer(lib).run([g])
        assert s.ok and s.indexed == 2 and s.removed == 1
        counts = {m: lib.index(m).index.get_current_count() for m in ("image", "caption", "fused")}
        lib.close()
    finally:  # the gallery is shared by the tests of this module
        shutil.move(tmp_path / victim.name, victim)
        for p in new:
            os.unlink(p)
    for name, data in old.items():  # the manifests go back in time, the index files stay
        (lib_dir / "indices" / name).write_bytes(data)
    assert json.loads(old[_files(lib_dir, "image")[1].name])["seq_high"] < max(
        r[0] for r in open_lib(lib_dir, loader).store.session().execute(select(VectorRow.seq)))

    lib = open_lib(lib_dir, loader)
    lines = lib.check().lines()
    assert len(lines) == 3, lines
    # the raw indices re-add the two vectors the old manifest does not know about; the fused
    # index may instead be rebuilt (its manifest also records what its weights were made from)
    assert all("added/updated 2" in ln for ln in lines if not ln.startswith("index fused")), lines
    assert_invariants(lib, "older manifest")
    for m in ("image", "caption", "fused"):
        assert lib.index(m).index.get_current_count() == counts[m], "re-adding must replace, not duplicate"
        assert len(lib.index(m)) == len(_ok_ids(lib)) == 7
    lib.close()


def test_indexer_reports_repairs_it_made(damaged, loader):
    g, lib_dir = damaged
    _files(lib_dir, "caption")[0].unlink()
    lib = open_lib(lib_dir, loader)
    s = Indexer(lib).run([g])
    assert s.ok and s.unchanged == 6
    assert len(s.repairs) == 1 and s.repairs[0].startswith("index caption--") and "no index file yet" in s.repairs[0]
    assert_invariants(lib, "repair during a run")
    lib.close()


def test_leftover_temporary_files_are_harmless(damaged, loader):
    g, lib_dir = damaged
    for p in list((lib_dir / "indices").iterdir()):
        p.with_name(p.name + ".tmp").write_bytes(b"half written by a killed process")
    lib = open_lib(lib_dir, loader)
    assert not lib.check().lines()
    assert_invariants(lib, "leftover .tmp files")
    lib.close()
