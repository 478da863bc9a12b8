"""Library integrity under reuse, corruption, full disks, read-only media and two writers (issue 17).

Each test reproduces one way a new user broke a library: deleting and adding images (ids and
sequence numbers reused), a garbled index file (segfault), a full disk (truncated index), two
writers, read-only media, a damaged database page or an empty database file, a crafted fusion
head, a kill inside the agreement refresh, and the smaller ones (COCO type errors, caption
length, interrupted run rows, symlinks leaving the gallery). The real offline models index
the photos; tests that need a second process start one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from sqlalchemy import select, text, update

from explorer import cli
from explorer.core import library as library_mod
from explorer.core.config import Settings
from explorer.core.errors import ExplorerError
from explorer.core.library import Library
from explorer.core.pipeline import Indexer, scan
from explorer.core.store import ImageRow, Meta, RunRow, Store, VectorRow

ROOT = Path(__file__).resolve().parents[1]
MINI = {"rocket": ["rocket.jpg", "rocket_crop.jpg"], "coins": ["coins.jpg", "coins_crop.jpg"], "brick": ["brick.jpg", "brick_dim.jpg"]}
can_mount = os.geteuid() == 0 and shutil.which("mount") is not None


def open_lib(path: Path, loader) -> Library:
    return Library(path, Settings(library=str(path)), loader=loader)


@pytest.fixture
def run_cli(monkeypatch, loader, capsys):
    """``explorer ...`` in this process with the session's models: returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(library_mod, "ModelLoader", lambda settings: loader)

    def run(*args) -> tuple[int, str, str]:
        rc = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def mini_gallery(dst: Path, sample_gallery: Path) -> Path:
    for folder, names in MINI.items():
        (dst / folder).mkdir(parents=True)
        for n in names:
            shutil.copy(sample_gallery / folder / n, dst / folder / n)
    return dst


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT)
    return e


def by_path(lib: Library) -> dict[str, int]:
    with lib.store.session() as s:
        return {p: i for i, p in s.execute(select(ImageRow.id, ImageRow.path).where(ImageRow.status == "ok"))}


def index_vectors(lib: Library, mode: str) -> dict[str, np.ndarray]:
    """path -> the vector the hnswlib index holds for it (read straight from hnswlib)."""
    vi = lib.index(mode)
    if vi.index is None:
        lib.sync_indices(save=False)
    return {p: np.asarray(vi.index.get_items([i]), np.float32)[0] for p, i in by_path(lib).items()}


def stored_vectors(lib: Library, kind: str) -> dict[str, np.ndarray]:
    model = lib.image_model.model_id if kind == "image" else lib.text_model.model_id
    ids, mat = lib.store.load_vectors(kind, model)
    paths = {i: p for p, i in by_path(lib).items()}
    return {paths[int(i)]: mat[j] for j, i in enumerate(ids)}


def assert_index_holds_stored_vectors(lib: Library, why: str) -> None:
    for mode in ("image", "caption"):
        have, want = index_vectors(lib, mode), stored_vectors(lib, mode)
        assert set(have) == set(want), why
        wrong = [p for p in want if not np.allclose(have[p], want[p], atol=1e-6)]
        assert not wrong, f"{why}: {len(wrong)} of {len(want)} {mode} vectors in the index belong to other images: {wrong[:3]}"


def tamper_index(lib_dir: Path, mode: str, a: int, b: int) -> None:
    """Swap the vectors of labels a and b inside an index file (what id reuse did), keeping it
    a valid, checksummed file: only a comparison with the database can see it."""
    hnsw = next((lib_dir / "indices").glob(f"{mode}--*.hnsw"))
    dim = json.loads(hnsw.with_suffix(".json").read_text())["dim"]
    idx = hnswlib.Index(space="ip", dim=dim)
    idx.load_index(str(hnsw))
    va, vb = idx.get_items([a, b])
    idx.add_items(np.array([vb, va], np.float32), np.array([a, b]))
    idx.save_index(str(hnsw))
    try:
        from explorer.core.index import check_hnsw_file, file_crc
    except ImportError:  # a library format without checksums
        return
    size, crc = file_crc(hnsw)
    Path(str(hnsw) + ".sum").write_text(json.dumps({"size": size, "crc32": crc, "count": check_hnsw_file(hnsw, dim)}))


@pytest.fixture(scope="module")
def mini_lib(tmp_path_factory, sample_gallery, loader) -> tuple[Path, Path]:
    """Six photos indexed once (read-only for tests: copy the library before changing it)."""
    root = tmp_path_factory.mktemp("mini")
    g = mini_gallery(root / "g", sample_gallery)
    lib = open_lib(root / "lib", loader)
    assert Indexer(lib).run([g]).ok
    lib.close()
    return g, root / "lib"


@pytest.fixture
def lib_copy(tmp_path, mini_lib) -> Path:
    dst = tmp_path / "lib"
    shutil.copytree(mini_lib[1], dst)
    return dst


# -- 1. ids and sequence numbers are never reused --------------------------------------------------


def test_store_never_reuses_image_ids_or_vector_seqs(tmp_path):
    store = Store(tmp_path / "lib")

    def add(names, seq_from=None):
        with store.Session.begin() as s:
            seq = store.next_seq(s)
            rows = [ImageRow(path_key=n.encode(), path=n, folder="f") for n in names]
            s.add_all(rows)
            s.flush()
            for r in rows:
                s.add(VectorRow(image_id=r.id, kind="image", model_id="m", dim=1, data=b"\0\0\0\0", seq=seq))
                seq += 1
            return [r.id for r in rows]

    first = add(["a", "b", "c"])
    with store.Session.begin() as s:
        top_seq = s.scalar(select(VectorRow.seq).order_by(VectorRow.seq.desc()).limit(1))
        for r in s.scalars(select(ImageRow).where(ImageRow.id.in_(first[1:]))):
            s.delete(r)  # the newest images (highest ids and seqs) go
    again = add(["d", "e"])
    assert min(again) > max(first), f"ids reused: {first} then {again}"
    with store.Session.begin() as s:
        assert store.next_seq(s) > top_seq + 2
        assert min(s.scalars(select(VectorRow.seq).where(VectorRow.image_id.in_(again)))) > top_seq
    store.close()
    reopened = Store(tmp_path / "lib")  # the counters survive a reopen
    assert int(reopened.get_meta("image_id_high")) == max(again)
    reopened.close()


def test_delete_then_add_gives_exactly_a_clean_index(tmp_path, sample_gallery, run_cli, loader):
    """The issue's repro: rm -r the rocket folder, add coffee and chelsea, index again; searching
    'rocket' must not return the new images under the rockets' old ids, and every result and
    vector must equal those of a library indexed from scratch."""
    g = mini_gallery(tmp_path / "g", sample_gallery)
    lib_dir, clean_dir = tmp_path / "lib", tmp_path / "clean"
    assert run_cli("index", g, "--library", lib_dir, "--quiet")[0] == 0
    shutil.rmtree(g / "rocket")
    (g / "zz-new").mkdir()
    shutil.copy(sample_gallery / "coffee" / "coffee.jpg", g / "zz-new" / "coffee.jpg")
    shutil.copy(sample_gallery / "cat" / "chelsea.jpg", g / "zz-new" / "chelsea.jpg")
    rc, out, _ = run_cli("index", g, "--library", lib_dir, "--quiet")
    assert rc == 0 and "2 indexed" in out and "2 removed" in out, out
    assert run_cli("index", g, "--library", clean_dir, "--quiet")[0] == 0

    def hits(lib_path, *query):
        rc, out, err = run_cli("search", *query, "--library", lib_path, "--mode", "image,caption,fused", "--k", "6", "--json")
        assert rc == 0, err
        return {m: [(Path(h["path"]).name, round(h["score"], 4)) for h in r["hits"]] for m, r in json.loads(out)["modes"].items()}

    for query in (("--text", "rocket"), ("--image", g / "zz-new" / "coffee.jpg"), ("--image", g / "coins" / "coins.jpg")):
        assert hits(lib_dir, *query) == hits(clean_dir, *query), query
    lib, clean = open_lib(lib_dir, loader), open_lib(clean_dir, loader)
    for mode in ("image", "caption", "fused"):
        have, want = index_vectors(lib, mode), index_vectors(clean, mode)
        assert set(have) == set(want)
        for p in want:
            np.testing.assert_allclose(have[p], want[p], atol=1e-5, err_msg=f"{mode} vector of {p}")
    rc, out, _ = run_cli("check", "--library", lib_dir)
    assert rc == 0 and "library is consistent" in out, out
    lib.close()
    clean.close()


def test_renaming_every_file_three_times_keeps_every_vector_right(tmp_path, sample_gallery, loader):
    g = mini_gallery(tmp_path / "g", sample_gallery)
    lib = open_lib(tmp_path / "lib", loader)
    assert Indexer(lib).run([g]).ok
    for cycle in range(3):
        for p in sorted(g.rglob("*.jpg")):
            p.rename(p.with_name(p.stem + "_r.jpg"))
        s = Indexer(lib).run([g])
        assert s.ok and s.indexed == 6 and s.removed == 6, s
        assert_index_holds_stored_vectors(lib, f"rename cycle {cycle + 1}")
        # every photo finds itself first, at score 1
        for p, vec in stored_vectors(lib, "image").items():
            ids, scores = lib.index("image").search(vec, 1)
            assert ids[0] == by_path(lib)[p] and scores[0] > 0.999, p
    lib.close()


def test_check_compares_index_vectors_with_the_database(lib_copy, run_cli, loader):
    lib = open_lib(lib_copy, loader)
    a, b = sorted(by_path(lib).values())[:2]
    lib.close()
    tamper_index(lib_copy, "image", a, b)
    rc, out, _ = run_cli("check", "--library", lib_copy)
    assert rc == 0 and "differ from the database" in out and "rebuilt" in out, out
    lib = open_lib(lib_copy, loader)
    assert_index_holds_stored_vectors(lib, "after check")
    assert not lib.check().lines()
    lib.close()


def test_a_library_from_before_the_counters_is_repaired_on_open(lib_copy, loader):
    """A library written by the old code: no counters and no identity in meta, manifests without
    it, and an index whose labels were handed to other images."""
    lib = open_lib(lib_copy, loader)
    a, b = sorted(by_path(lib).values())[-2:]
    lib.close()
    tamper_index(lib_copy, "caption", a, b)
    store = Store(lib_copy)
    with store.Session.begin() as s:
        for key in ("library_id", "image_id_high", "seq_high"):
            s.execute(Meta.__table__.delete().where(Meta.key == key))
    store.close()
    for m in (lib_copy / "indices").glob("*.json"):
        d = json.loads(m.read_text())
        d["source"].pop("library", None)
        m.write_text(json.dumps(d))
    lib = open_lib(lib_copy, loader)
    lines = lib.check().lines()
    assert len(lines) == 3 and all("built for other vectors" in ln for ln in lines), lines
    assert_index_holds_stored_vectors(lib, "legacy library")
    assert int(lib.store.get_meta("image_id_high")) == max(by_path(lib).values())
    lib.close()


# -- 2. a garbled index file is rebuilt, never loaded -------------------------------------------------


def test_garbled_index_file_is_rebuilt_not_loaded(lib_copy):
    """Random bytes in the data region (the header intact) used to load and then crash hnswlib
    (exit 139). Checked in a child process, so a segfault fails the test instead of pytest."""
    for mode in ("image", "fused"):
        hnsw = next((lib_copy / "indices").glob(f"{mode}--*.hnsw"))
        data = bytearray(hnsw.read_bytes())
        rng = np.random.default_rng(1)
        data[96:] = rng.integers(0, 256, len(data) - 96, dtype=np.uint8).tobytes()
        hnsw.write_bytes(bytes(data))
    script = textwrap.dedent(f"""
        import sys
        from explorer import cli
        rc1 = cli.main(["search", "--text", "a rocket", "--library", {str(lib_copy)!r}, "--k", "3"])
        rc2 = cli.main(["check", "--library", {str(lib_copy)!r}])
        rc3 = cli.main(["search", "--text", "a rocket", "--library", {str(lib_copy)!r}, "--k", "3"])
        sys.exit(10 * rc1 + rc2 + 100 * rc3)
    """)
    r = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stdout.count("rebuilt from stored vectors") == 2 and "checksum" in r.stdout, r.stdout
    assert "rocket" in r.stdout


# -- 3. a full disk keeps the old index ------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    if not can_mount:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def fill(mnt: Path, leave: int) -> None:
    """Fill the file system up to ``leave`` free bytes."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_full_disk_keeps_the_old_index_and_says_so(small_tmpfs, mini_lib, loader, sample_gallery, run_cli):
    """On a real full file system (a 4 MB tmpfs): hnswlib writes a short file without an error;
    the save must notice, keep the old files, leave no temporary file, and say it in one line."""
    lib_dir = small_tmpfs / "lib"
    shutil.copytree(mini_lib[1], lib_dir)
    before = {p.name: p.read_bytes() for p in (lib_dir / "indices").iterdir()}
    lib = open_lib(lib_dir, loader)
    vi = lib.index("image")
    lib.check()
    extra = np.random.default_rng(0).standard_normal((400, vi.dim)).astype(np.float32)
    vi.upsert(np.arange(10_000, 10_400), extra)  # grows the file by ~2 MB
    fill(small_tmpfs, 64 * 1024)
    with lib.writing("test"), pytest.raises(ExplorerError, match=r"cannot save index image--.*no space left on device.*previous index files are kept"):
        vi.save()
    lib.close()
    after = {p.name: p.read_bytes() for p in (lib_dir / "indices").iterdir()}
    assert after == before, "the old index files must stay as they were, with no temporary file left"
    (small_tmpfs / "filler").unlink()
    lib = open_lib(lib_dir, loader)
    assert not lib.check().lines(), "the kept index loads as it was"
    lib.close()
    # the command line: indexing into a full disk ends with one line, exit 2, nothing lost
    (small_tmpfs / "g").mkdir()
    shutil.copy(sample_gallery / "coffee" / "coffee.jpg", small_tmpfs / "g" / "c.jpg")
    before = {p.name: p.read_bytes() for p in (lib_dir / "indices").iterdir()}
    db_before = (lib_dir / "library.sqlite").stat().st_size
    fill(small_tmpfs, 8 * 1024)
    rc, out, err = run_cli("index", small_tmpfs / "g", "--library", lib_dir, "--quiet")
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (rc, out, err)
    (small_tmpfs / "filler").unlink()
    assert {p.name: p.read_bytes() for p in (lib_dir / "indices").iterdir() if not p.name.endswith(".tmp")} == before
    assert not list((lib_dir / "indices").glob("*.tmp"))
    lib = open_lib(lib_dir, loader)
    assert lib.store.integrity_check(full=True) == [] and lib.store.count_images() >= 6 and db_before > 0
    lib.check()
    assert_index_holds_stored_vectors(lib, "after the full disk")
    lib.close()


# -- 4. one writer at a time -------------------------------------------------------------------------------

HOLDER = """
import sys, time
from explorer.core.lock import WriterLock
lock = WriterLock(sys.argv[1]); lock.acquire("indexing")
print("locked", flush=True); time.sleep(float(sys.argv[2]))
"""


def hold_lock(lib_dir: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lib_dir), str(seconds)], env=env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_told_the_library_is_busy(lib_copy, mini_lib, run_cli, loader):
    g = mini_lib[0]
    holder = hold_lock(lib_copy, 60)
    try:
        for cmd in (("index", g), ("check",)):
            rc, out, err = run_cli(*cmd, "--library", lib_copy)
            assert rc == 2 and f"library is busy (indexing by pid {holder.pid} since " in err, (cmd, rc, out, err)
        lib = open_lib(lib_copy, loader)
        with pytest.raises(ExplorerError, match="library is busy"):
            Indexer(lib).run([g])  # the window's indexing goes through the same lock
        with pytest.raises(ExplorerError, match="library is busy"):
            from explorer.core.edits import set_user_caption

            set_user_caption(lib, min(by_path(lib).values()), "a caption")
        rc, out, err = run_cli("search", "--text", "coins", "--library", lib_copy, "--k", "2")  # readers never need it
        assert rc == 0, err
        with lib.store.session() as s:
            assert not list(s.scalars(select(RunRow).where(RunRow.status != "done"))), "the refused writer left no run row"
        lib.close()
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_waits_with_wait(lib_copy, mini_lib, run_cli):
    holder = hold_lock(lib_copy, 3)
    t0 = time.monotonic()
    rc, out, err = run_cli("index", mini_lib[0], "--library", lib_copy, "--wait", "--quiet")
    assert rc == 0 and "waiting" in err and "6 unchanged" in out, (rc, out, err)
    assert time.monotonic() - t0 > 1.0
    holder.wait()


def test_run_row_of_a_killed_writer_is_marked_interrupted(lib_copy, loader):
    script = textwrap.dedent(f"""
        import os, signal
        from explorer.core.lock import WriterLock
        from explorer.core.store import RunRow, Store
        lock = WriterLock({str(lib_copy)!r}); lock.acquire("indexing")
        store = Store({str(lib_copy)!r})
        with store.Session.begin() as s:
            s.add(RunRow(folders="[]"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", script], env=env())
    assert r.returncode == -signal.SIGKILL
    lib = open_lib(lib_copy, loader)
    lib.check()  # any writer (here: check saving its repairs) marks it
    with lib.store.session() as s:
        assert [r.status for r in s.scalars(select(RunRow).order_by(RunRow.id))][-1] == "interrupted"
    lib.close()


# -- 5. a read-only library can be searched ---------------------------------------------------------------


@pytest.fixture
def read_only_copy(tmp_path, lib_copy):
    if not can_mount:
        pytest.skip("needs root for a read-only bind mount")
    next((lib_copy / "indices").glob("caption--*.json")).write_text("{not json")  # a repair is due
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", str(lib_copy), str(ro)], capture_output=True)
    if r.returncode or subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode:
        subprocess.run(["umount", str(ro)])
        pytest.skip("cannot make a read-only bind mount")
    yield ro
    subprocess.run(["umount", "-l", str(ro)])


def test_read_only_library_can_be_searched_and_checked(read_only_copy, mini_lib, run_cli):
    ro = read_only_copy
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in ro.rglob("*")}
    rc, out, err = run_cli("search", "--text", "coins", "--library", ro, "--k", "2")
    assert rc == 0 and "coins" in out, (out, err)
    rc, out, err = run_cli("search", "--image", mini_lib[0] / "brick" / "brick.jpg", "--library", ro, "--k", "2")
    assert rc == 0 and "brick" in out, (out, err)
    rc, out, err = run_cli("check", "--library", ro)
    assert rc == 0 and "in memory only" in out, (out, err)
    rc, out, err = run_cli("index", mini_lib[0], "--library", ro)
    assert rc == 2 and "read-only" in err and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in ro.rglob("*")} == files


def test_searching_never_writes(lib_copy, mini_lib, run_cli):
    (next((lib_copy / "indices").glob("fused--*.json"))).unlink()  # a repair is due
    def files(with_cache: bool = False):
        """Every file but the database (and, unless ``with_cache``, the derived gallery cache, which
        the first search of a library state writes: ``explorer.core.gallery_cache``)."""
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in lib_copy.rglob("*")
                if not p.name.startswith("library.sqlite")
                and (with_cache or not (p == lib_copy / "cache" or "gallery-" in str(p.relative_to(lib_copy))))}

    before = files()
    cached = None
    for _ in range(2):
        rc, out, err = run_cli("search", "--image", mini_lib[0] / "coins" / "coins.jpg", "--library", lib_copy, "--k", "2")
        assert rc == 0, err
        assert files() == before
        if cached is None:
            cached = files(with_cache=True)
    assert files(with_cache=True) == cached  # the second search wrote nothing at all


# -- 6. database corruption is seen, not loaded ---------------------------------------------------------------


def test_damaged_database_pages_are_reported_and_nothing_is_changed(lib_copy, run_cli):
    db = lib_copy / "library.sqlite"
    con = __import__("sqlite3").connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'vectors'").fetchone()[0]
    con.close()
    data = bytearray(db.read_bytes())
    for pg in (root, root + 1):  # two pages of the vectors table: an invalid page number appears
        data[(pg - 1) * page + 8:pg * page] = np.random.default_rng(pg).integers(0, 256, page - 8, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in (lib_copy / "indices").iterdir()}
    rc, out, err = run_cli("check", "--library", lib_copy)
    assert rc == 2 and "is damaged" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert {p.name: p.read_bytes() for p in (lib_copy / "indices").iterdir()} == before


def test_nan_and_wrong_length_vectors_are_refused_with_a_reason(lib_copy, loader, run_cli):
    lib = open_lib(lib_copy, loader)
    ids = sorted(by_path(lib).values())
    im = lib.image_model
    with lib.store.Session.begin() as s:
        seq = lib.store.next_seq(s)
        s.execute(update(VectorRow).where(VectorRow.image_id == ids[0], VectorRow.kind == "image")
                  .values(data=np.full(im.dim, np.nan, np.float32).tobytes(), seq=seq))
        s.execute(update(VectorRow).where(VectorRow.image_id == ids[1], VectorRow.kind == "image")
                  .values(data=np.ones(im.dim - 7, np.float32).tobytes(), seq=seq + 1))
    lib.close()
    rc, out, err = run_cli("check", "--library", lib_copy)
    assert rc == 1 and "refused 2 damaged stored vectors" in out, (rc, out, err)
    lib = open_lib(lib_copy, loader)
    lib.check()
    vi = lib.index("image")
    assert ids[0] not in vi.live_ids() and ids[1] not in vi.live_ids()
    live = sorted(vi.live_ids())
    assert np.isfinite(np.asarray(vi.index.get_items(live))).all()
    rc, out, err = run_cli("search", "--image", mini_lib_photo(lib), "--library", lib_copy, "--k", "6", "--json")
    assert rc == 0 and "NaN" not in out, err
    lib.close()


def mini_lib_photo(lib: Library) -> str:
    return sorted(by_path(lib))[-1]


def test_empty_database_file_is_corruption_not_a_new_library(lib_copy, mini_lib, run_cli):
    (lib_copy / "library.sqlite").write_bytes(b"")
    for wal in lib_copy.glob("library.sqlite-*"):
        wal.unlink()
    before = {p.name: p.read_bytes() for p in (lib_copy / "indices").iterdir()}
    for cmd in (("check",), ("index", mini_lib[0]), ("search", "--text", "coins")):
        rc, out, err = run_cli(*cmd, "--library", lib_copy)
        assert rc == 2 and "is empty (0 bytes)" in err and len(err.strip().splitlines()) == 1, (cmd, rc, out, err)
    assert (lib_copy / "library.sqlite").stat().st_size == 0
    assert {p.name: p.read_bytes() for p in (lib_copy / "indices").iterdir()} == before


# -- 7. a crafted fusion head fails fast ---------------------------------------------------------------------

CRAFT = """
import json, resource, sys, time
import torch
from safetensors.torch import save_file
from explorer.core.learned.head import FusionHead, HeadConfig
from explorer.core.learned.io import FORMAT, FORMAT_VERSION, load_head
cfg = HeadConfig("effnet", 64, "minilm", 32, d_model=32, ff_dim=64, n_heads=4, out_dim=16)
tensors = {k: v.contiguous() for k, v in FusionHead(cfg).state_dict().items()}
bad = dict(cfg.__dict__, d_model=int(sys.argv[2]), ff_dim=int(sys.argv[2]))
save_file(tensors, sys.argv[1], metadata={"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(bad), "train": "{}"})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
try:
    load_head(sys.argv[1])
    result = "loaded"
except Exception as e:
    result = type(e).__name__ + ": " + str(e)
print(json.dumps({"result": result, "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "s": time.time() - t0}))
"""


@pytest.mark.parametrize("width", [1_000_000, 4096, 256])
def test_crafted_head_config_fails_fast_without_allocating(tmp_path, width):
    """Valid small tensors, a config claiming d_model = ff_dim = 1e6 (out of bounds), 4096 (within
    bounds, but not the tensors' shapes: caught on the meta device) or 256: refused before anything
    is built, with under 200 MB of extra peak memory (measured in a child process; the old code
    took 12 GB for 1e6)."""
    r = subprocess.run([sys.executable, "-c", CRAFT, str(tmp_path / "evil.safetensors"), str(width)], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["result"].startswith("ExplorerError") and ("invalid" in res["result"] or "do not match" in res["result"]), res
    assert res["peak_mb"] < 200, res


# -- 8. caption agreement: a stamp, and a deterministic tie order ---------------------------------------------


def agreement_by_path(lib: Library) -> dict[str, float]:
    with lib.store.session() as s:
        return dict(s.execute(select(ImageRow.path, ImageRow.caption_agreement).where(ImageRow.status == "ok")).all())


def synthetic_library(path: Path, loader, order: list[int]) -> Library:
    """60 images whose stored vectors have many exact ties (12 distinct captions), inserted in
    ``order``: the agreement must not depend on it. (Stored vectors, not an encoder: this tests
    the neighbourhood computation on data with ties.)"""
    lib = open_lib(path, loader)
    rng = np.random.default_rng(7)
    im_dim, tx_dim = lib.image_model.dim, lib.text_model.dim
    img = rng.standard_normal((60, im_dim)).astype(np.float32)
    img[30:] = img[:30] + 0.3 * rng.standard_normal((30, im_dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    caps = rng.standard_normal((12, tx_dim)).astype(np.float32)
    caps /= np.linalg.norm(caps, axis=1, keepdims=True)
    with lib.store.Session.begin() as s:
        seq = lib.store.next_seq(s)
        for j in order:
            row = ImageRow(path_key=f"/x/img{j:03d}.jpg".encode(), path=f"/x/img{j:03d}.jpg", folder="/x")
            s.add(row)
            s.flush()
            s.add(VectorRow(image_id=row.id, kind="image", model_id=lib.image_model.model_id, dim=im_dim, data=img[j].tobytes(), seq=seq))
            s.add(VectorRow(image_id=row.id, kind="caption", model_id=lib.text_model.model_id, dim=tx_dim,
                            data=caps[j % 12].tobytes(), seq=seq + 1))
            seq += 2
    return lib


def test_agreement_does_not_depend_on_insertion_order(tmp_path, loader):
    results = []
    for n, order in enumerate((list(range(60)), list(range(59, -1, -1)), list(np.random.default_rng(3).permutation(60)))):
        lib = synthetic_library(tmp_path / f"lib{n}", loader, [int(j) for j in order])
        lib.check()
        lib.refresh_agreement()
        results.append(agreement_by_path(lib))
        lib.close()
    assert results[0] == results[1] == results[2]
    assert len(set(results[0].values())) > 2


def test_agreement_is_recomputed_after_a_kill_inside_its_refresh(lib_copy, mini_lib, loader):
    lib = open_lib(lib_copy, loader)
    want = agreement_by_path(lib)
    # a kill inside refresh_agreement: its one transaction never committed, so the values (and
    # stamp) are still those from before the run that changed the library
    with lib.store.Session.begin() as s:
        s.execute(update(ImageRow).values(caption_agreement=0.0))
        s.merge(Meta(key="agreement_stamp", value="from-before-the-last-run"))
    s = Indexer(lib).run([mini_lib[0]])
    assert s.ok and s.indexed == 0
    assert agreement_by_path(lib) == want
    lib.close()


# -- 9. the smaller ones -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coco", [
    {"images": [5], "annotations": []},
    {"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []},
    {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": [1], "caption": "x"}]},
    {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [7]},
    {"images": {"id": 1}, "annotations": []},
])
def test_malformed_coco_captions_get_one_clear_line(tmp_path, coco, run_cli):
    from explorer.core.captions import CaptionsFile

    f = tmp_path / "captions.json"
    f.write_text(json.dumps(coco))
    with pytest.raises(ExplorerError, match="captions file"):
        CaptionsFile.load(f)
    (tmp_path / "g").mkdir()
    rc, out, err = run_cli("index", tmp_path / "g", "--library", tmp_path / "lib", "--captions", f)
    assert rc == 2 and err.startswith("error: captions file") and "Traceback" not in err, err


def test_captions_from_files_are_bounded_like_edits(tmp_path, sample_gallery, loader):
    from explorer.core.captions import CaptionsFile
    from explorer.core.edits import MAX_CAPTION_CHARS, active_caption

    g = tmp_path / "g"
    g.mkdir()
    shutil.copy(sample_gallery / "coins" / "coins.jpg", g / "a.jpg")
    shutil.copy(sample_gallery / "brick" / "brick.jpg", g / "b.jpg")
    (g / "b.jpg.txt").write_text("word " * 5000)  # a 25 kB sidecar
    f = tmp_path / "caps.json"
    f.write_text(json.dumps({str(g / "a.jpg"): "x" * 1_000_000}))  # a 1 MB caption
    lib = open_lib(tmp_path / "lib", loader)
    assert Indexer(lib, captions_file=CaptionsFile.load(f)).run([g]).ok
    ids = by_path(lib)
    for name, src in (("a.jpg", "captions-file"), ("b.jpg", "sidecar")):
        cap = active_caption(lib, ids[str(g / name)])
        assert cap.source == src and 0 < len(cap.text) <= MAX_CAPTION_CHARS, (name, cap.source, len(cap.text))
    lib.close()


def test_symlinks_out_of_the_gallery_are_not_followed_by_default(tmp_path, sample_gallery):
    g, outside = tmp_path / "g", tmp_path / "outside"
    (g / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(sample_gallery / "coins" / "coins.jpg", g / "sub" / "in.jpg")
    shutil.copy(sample_gallery / "brick" / "brick.jpg", outside / "out.jpg")
    os.symlink(outside, g / "linked-folder")
    os.symlink(outside / "out.jpg", g / "linked.jpg")
    os.symlink(g / "sub" / "in.jpg", g / "inside-link.jpg")  # stays inside: followed (and indexed once)
    roots = [os.fsencode(g)]
    res = scan(roots)
    assert [os.path.basename(p) for p, _ in res.files] == [b"in.jpg"]
    assert len(res.outside_links) == 2
    res = scan(roots, follow_symlinks=True)
    assert sorted(os.path.basename(p) for p, _ in res.files) == [b"in.jpg", b"out.jpg"]
