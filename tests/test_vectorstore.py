"""The vector-store contract on every backend, and the library on the Milvus backend.

The Milvus tests run Milvus Lite embedded (``pymilvus`` + ``milvus-lite``, the ``[scale]`` extra)
and skip cleanly when it is not installed.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from explorer.core.errors import ExplorerError
from explorer.core.vectorstore import check_backend, open_store

try:
    import pymilvus  # noqa: F401
    import milvus_lite  # noqa: F401

    HAVE_MILVUS = True
except ImportError:
    HAVE_MILVUS = False

needs_milvus = pytest.mark.skipif(not HAVE_MILVUS, reason="pymilvus / milvus-lite not installed (extra [scale])")
BACKENDS = ["hnswlib", pytest.param("milvus", marks=needs_milvus), "hnswlib-pca8"]


@pytest.fixture(autouse=True)
def _close_milvus():
    yield
    if HAVE_MILVUS:
        from explorer.core.vectorstore.milvus import close_clients

        close_clients()


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def assert_same_ranking(a, sa, b, sb):
    """Same scores rank by rank, and the same ids — except that the order inside a group of tied
    scores is arbitrary (identical structured captions give identical caption vectors), and a tie
    group cut by the end of the list may hold different members (all with that same score)."""
    assert len(a) == len(b)
    assert np.allclose(sa, sb, atol=1e-5)
    groups = np.round(np.asarray(sa, np.float64) / 1e-5).astype(np.int64)
    for g in np.unique(groups):
        if g == groups[-1]:
            continue  # the boundary group: equal scores already checked
        sel = groups == g
        assert set(np.asarray(a)[sel].tolist()) == set(np.asarray(b)[sel].tolist())
    if len(set(groups.tolist())) == len(groups):  # no ties at all: exactly the same list
        assert list(a) == list(b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_contract_add_replace_delete_search_save_load(tmp_path, backend, monkeypatch):
    import explorer.core.vectorstore.reduced as reduced

    monkeypatch.setattr(reduced, "FIT_MIN", 100)  # fit the projection inside this small test
    rng = np.random.default_rng(1)
    dim, n = 32, 300
    vecs = unit(rng.standard_normal((n, dim)))
    ids = np.arange(1, n + 1, dtype=np.int64) * 3  # ids need not be dense
    st = open_store(backend, tmp_path / "indices", "image--test", dim, {"image": "t"})
    assert st.load() is not None  # nothing stored yet: a reason, not an exception
    st.upsert(ids, vecs)
    assert len(st) == n and st.live_ids() == set(ids.tolist()) and st.ids().tolist() == sorted(ids.tolist())
    got, scores = st.search(vecs[7], 10)
    assert got[0] == ids[7] and np.isclose(scores[0], 1.0, atol=1e-4)
    assert list(scores) == sorted(scores, reverse=True)
    # replace: the same id with another vector is held once, with the new vector
    st.upsert(ids[7:8], vecs[8:9])
    assert len(st) == n
    assert np.allclose(st.get_vectors([ids[7]])[0], vecs[8], atol=1e-6)
    top2 = st.search(vecs[8], 2)[0]
    assert set(top2.tolist()) == {ids[7], ids[8]}
    # delete: gone from search, from len and from the ids
    assert st.delete([ids[8], 99999]) == 1
    assert len(st) == n - 1 and ids[8] not in st.live_ids()
    assert ids[8] not in st.search(vecs[8], 20)[0]
    # candidates (what the library's pool asks for): about the m best live ids, for a caller that re-scores
    cand = st.candidates(vecs[9], 20)
    assert ids[9] in cand and ids[8] not in cand and set(cand.tolist()) <= st.live_ids()
    # save, then a fresh store loads the same contents
    st.save()
    st2 = open_store(backend, tmp_path / "indices", "image--test", dim, {"image": "t"})
    assert st2.load() is None
    assert st2.live_ids() == st.live_ids()
    assert np.allclose(st2.get_vectors(ids[:5]), np.vstack([vecs[:5]]), atol=1e-6)
    q = unit(rng.standard_normal(dim))
    assert st2.search(q, 10)[0].tolist() == st.search(q, 10)[0].tolist()
    # neighbours: each stored vector's own id comes first
    nb = st2.neighbours(ids[:4], 3)
    assert nb.shape == (4, 3) and nb[:, 0].tolist() == ids[:4].tolist()
    # a store built for other vectors is not trusted
    st3 = open_store(backend, tmp_path / "indices", "image--test", dim, {"image": "other"})
    assert st3.load() is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_rebuilds_from_source(tmp_path, backend):
    rng = np.random.default_rng(2)
    vecs = unit(rng.standard_normal((50, 16)))
    ids = np.arange(50, dtype=np.int64) + 1
    seqs = np.arange(50) + 1

    def changed(seq_high):
        sel = seqs > seq_high
        return ids[sel], vecs[sel], int(seqs.max())

    st = open_store(backend, tmp_path / "indices", "caption--x", 16, {"text": "x"})
    rep = st.sync(changed, set(ids.tolist()))
    assert rep.rebuilt and rep.added == 50 and len(st) == 50
    st.save()
    st = open_store(backend, tmp_path / "indices", "caption--x", 16, {"text": "x"})
    rep = st.sync(changed, set(ids[:40].tolist()))  # ten images were removed meanwhile
    assert not rep.rebuilt and rep.added == 0 and rep.deleted == 10 and len(st) == 40


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ExplorerError, match="unknown vector store"):
        check_backend("faiss-on-the-moon")
    assert check_backend("hnswlib-pca128") == "hnswlib-pca128"


@needs_milvus
@pytest.mark.parametrize("mode", ["image", "caption", "fused"])
def test_milvus_same_top10_as_hnswlib_on_sample_gallery(indexed_sample, tmp_path, mode):
    hn = indexed_sample.index(mode)
    ids = hn.ids()
    vecs = hn.get_vectors(ids)
    mv = open_store("milvus", tmp_path / "indices", hn.name, hn.dim, {"t": 1})
    mv.upsert(ids, vecs)
    queries = vecs if mode != "fused" else unit(vecs)
    exact_lists = 0
    for q in queries:
        a, sa = hn.search(q, 10)
        b, sb = mv.search(q, 10)
        assert_same_ranking(a, sa, b, sb)
        exact_lists += a.tolist() == b.tolist()
    assert exact_lists >= len(queries) // 2  # ties are the exception, not the rule


@needs_milvus
def assert_searches_rank_alike(lib_a, lib_b, gallery, n: int = 3) -> None:
    """Image queries of ``n`` gallery photos rank alike in every indexed mode on both libraries."""
    from explorer.core.search import QuerySpec, Searcher

    a, b = Searcher(lib_a), Searcher(lib_b)
    for qp in sorted(gallery.rglob("*.jpg"))[:n]:
        ra = a.search(QuerySpec(image=str(qp)), modes=("image", "caption", "fused"), k=10)
        rb = b.search(QuerySpec(image=str(qp)), modes=("image", "caption", "fused"), k=10)
        for m in ("image", "caption", "fused"):
            sa, sb = [h.score for h in ra.modes[m].hits], [h.score for h in rb.modes[m].hits]
            assert_same_ranking([h.image_id for h in ra.modes[m].hits], sa, [h.image_id for h in rb.modes[m].hits], sb)


def _sample_library_on(backend: str, tmp_path, indexed_sample, loader):
    """A copy of the indexed sample library without its indices, opened on ``backend``."""
    from explorer.core.library import Library

    dst = tmp_path / "lib"
    shutil.copytree(indexed_sample.dir, dst)
    shutil.rmtree(dst / "indices")
    return Library(dst, replace(loader.settings, library=str(dst), vector_store=backend), loader=loader)


def test_library_on_milvus_gives_same_agreement_search_and_evaluation(indexed_sample, sample_gallery, loader, tmp_path):
    """A copy of the indexed sample library opened with vector_store=milvus: the indices are rebuilt
    in Milvus Lite from the database, and agreement, search and evaluation match hnswlib."""
    from explorer.core.evaluate import run_evaluation
    from explorer.core.search import QuerySpec, Searcher
    from explorer.core.store import ImageRow
    from sqlalchemy import select

    lib = _sample_library_on("milvus", tmp_path, indexed_sample, loader)
    try:
        rep = lib.check()
        assert all(r.rebuilt for r in rep.repairs.values())
        assert type(lib.index("image")).__name__ == "MilvusStore"
        for mode in ("image", "caption", "fused"):
            assert lib.index(mode).live_ids() == indexed_sample.index(mode).live_ids()
        # caption agreement recomputed through Milvus neighbourhoods equals the hnswlib one
        lib.refresh_agreement()
        lib.sync_indices()

        def agreement(l):
            with l.store.session() as s:
                return dict(s.execute(select(ImageRow.id, ImageRow.caption_agreement)).all())

        assert agreement(lib) == pytest.approx(agreement(indexed_sample))
        # search: the same rankings and scores in every mode
        a, b = Searcher(indexed_sample), Searcher(lib)
        queries = sorted(p for p in sample_gallery.rglob("*.jpg"))[:4]
        for qp in queries:
            ra = a.search(QuerySpec(image=str(qp)), modes=("image", "caption", "fused"), k=10)
            rb = b.search(QuerySpec(image=str(qp)), modes=("image", "caption", "fused"), k=10)
            for m in ("image", "caption", "fused"):
                assert [h.image_id for h in ra.modes[m].hits] == [h.image_id for h in rb.modes[m].hits], (qp, m)
                assert np.allclose([h.score for h in ra.modes[m].hits], [h.score for h in rb.modes[m].hits], atol=1e-5)
        # evaluation: identical metrics
        ea = run_evaluation(indexed_sample, f"folders:{sample_gallery}", modes=("image", "fused", "caption"))
        eb = run_evaluation(lib, f"folders:{sample_gallery}", modes=("image", "fused", "caption"))
        assert [r.mode for r in ea.results] == [r.mode for r in eb.results]
        for ra, rb in zip(ea.results, eb.results):
            assert np.allclose(ra.ap, rb.ap, atol=1e-9), ra.mode  # every query's AP, not only the mean
    finally:
        lib.close()


def _closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_milvus
def test_milvus_server_uri_unreachable_is_one_line_error(tmp_path):
    """Server mode takes ``http://host:19530``; with nothing listening, the first use is a clear
    one-line ExplorerError naming the address — no traceback, no hang, nothing written."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    st = open_store("milvus", tmp_path / "indices", "image--test", 8, {"image": "t"}, uri=uri)
    assert st.server and st.uri == uri
    with pytest.raises(ExplorerError) as e:
        st.upsert(np.array([1]), np.ones((1, 8), np.float32))
    msg = str(e.value)
    assert msg.startswith(f"cannot reach the Milvus server at {uri}: ") and "\n" not in msg and "MilvusException" not in msg
    assert not (tmp_path / "indices" / "milvus.db").exists()
    with pytest.raises(ExplorerError, match="unsupported Milvus URI"):
        open_store("milvus", tmp_path / "indices", "image--test", 8, {"image": "t"}, uri="grpc+ssl://127.0.0.1:1")


def _row_counts(lib_dir) -> tuple:
    import sqlite3

    con = sqlite3.connect(f"file:{lib_dir / 'library.sqlite'}?mode=ro", uri=True)
    try:
        return tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("images", "captions", "vectors"))
    finally:
        con.close()


@needs_milvus
def test_cli_with_unreachable_milvus_server_exits_2_with_one_line(indexed_sample, tmp_path):
    """The whole path: ``explorer check --vector-store milvus --vector-store-uri http://…`` on a real
    library whose server is down prints one error line and exits 2, and the library loses nothing."""
    import subprocess
    import sys
    from pathlib import Path

    dst = tmp_path / "lib"
    shutil.copytree(indexed_sample.dir, dst)
    before = _row_counts(dst)
    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "explorer", "check", "--library", str(dst), "--vector-store", "milvus",
                        "--vector-store-uri", uri], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"cannot reach the Milvus server at {uri}" in lines[0], p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert _row_counts(dst) == before and before[0] > 0


def test_library_on_reduced_backend_reduces_all_three_indices(indexed_sample, sample_gallery, loader, tmp_path, monkeypatch):
    """``hnswlib-pca<R>`` reduces the image, caption and fused indices (each its own projection, fitted
    here on the sample gallery), and the library's search through them ranks as on hnswlib."""
    import explorer.core.vectorstore.reduced as reduced
    from explorer.core.library import Library

    monkeypatch.setattr(reduced, "FIT_MIN", 20)  # the sample gallery has 50 images: fit the projections
    lib = _sample_library_on("hnswlib-pca8", tmp_path, indexed_sample, loader)
    try:
        rep = lib.check()
        assert all(r.rebuilt for r in rep.repairs.values())
        for mode in ("image", "caption", "fused"):
            st = lib.index(mode)
            assert type(st).__name__ == "ReducedStore" and st.proj is not None and st.proj.shape[0] == 8, mode
            assert st.live_ids() == indexed_sample.index(mode).live_ids()
        lib.save_indices()
        assert not Library(lib.dir, replace(loader.settings, library=str(lib.dir), vector_store="hnswlib-pca8"), loader=loader).check().lines()
        assert_searches_rank_alike(indexed_sample, lib, sample_gallery)
    finally:
        lib.close()


def test_reduced_backend_with_its_own_caption_dimension(tmp_path):
    """``hnswlib-pca<R>-caption<C>`` projects the caption index to C and the others to R; an index
    whose dimension is not above its R stays plain hnswlib."""
    assert check_backend("hnswlib-pca256-caption128") == "hnswlib-pca256-caption128"
    with pytest.raises(ExplorerError, match="unknown vector store"):
        check_backend("hnswlib-pca256-caption")
    b = "hnswlib-pca16-caption8"
    assert open_store(b, tmp_path, "image--m", 32).r == 16
    assert open_store(b, tmp_path, "fused--m--t", 48).r == 16
    assert open_store(b, tmp_path, "caption--t", 24).r == 8
    assert open_store("hnswlib-pca16", tmp_path, "caption--t", 24).r == 16
    assert type(open_store("hnswlib-pca16-caption32", tmp_path, "caption--t", 24)).__name__ == "HnswlibStore"


def test_library_on_reduced_backend_with_a_caption_dimension(indexed_sample, sample_gallery, loader, tmp_path, monkeypatch):
    """A library on ``hnswlib-pca8-caption4``: the caption index at 4 dimensions, image and fused at 8;
    the search ranks as on hnswlib."""
    import explorer.core.vectorstore.reduced as reduced

    monkeypatch.setattr(reduced, "FIT_MIN", 20)
    lib = _sample_library_on("hnswlib-pca8-caption4", tmp_path, indexed_sample, loader)
    try:
        lib.check()
        assert {m: lib.index(m).proj.shape[0] for m in ("image", "caption", "fused")} == {"image": 8, "caption": 4, "fused": 8}
        assert_searches_rank_alike(indexed_sample, lib, sample_gallery)
    finally:
        lib.close()


def test_live_ids_bitmap_behaves_as_a_set():
    from explorer.core.vectorstore.liveids import LiveIds

    rng = np.random.default_rng(5)
    ref: set[int] = set()
    live = LiveIds()
    for _ in range(60):
        a = rng.integers(0, 400, rng.integers(0, 30))
        if rng.random() < 0.6:
            live.update(a)
            ref.update(a.tolist())
        else:
            live.difference_update(a.tolist())
            ref.difference_update(a.tolist())
        assert len(live) == len(ref) and live == ref and ref == live
    assert list(live) == sorted(ref) and live.ids().dtype == np.int64 and live.max() == max(ref)
    other = set(rng.integers(0, 600, 200).tolist())
    assert live - other == ref - other and other - live == other - ref and live & other == ref & other
    assert all((i in live) == (i in ref) for i in range(-3, 700)) and "x" not in live and str(max(ref)) not in live
    live.discard(max(ref))
    assert max(ref) not in live and len(live) == len(ref) - 1
    assert LiveIds() == set() and LiveIds().max() == -1 and LiveIds([3]) != {4}
    with pytest.raises(ValueError):
        LiveIds([-1])


def test_reduced_store_live_ids_through_add_replace_delete_save_load(tmp_path, monkeypatch):
    """The bitmap live ids of the reduced store and of its projected index follow every change as a
    set did, before and after the projection is fitted, and survive save/load (same file format)."""
    import explorer.core.vectorstore.reduced as reduced
    from explorer.core.vectorstore.liveids import LiveIds

    monkeypatch.setattr(reduced, "FIT_MIN", 100)
    rng = np.random.default_rng(3)
    dim = 16
    st = open_store("hnswlib-pca8", tmp_path / "indices", "image--live", dim, {"image": "t"})
    st.load()
    ref: set[int] = set()
    for step in range(12):
        ids = rng.choice(np.arange(1, 2000), 40, replace=False)  # new ids and replacements of old ones
        st.upsert(ids, unit(rng.standard_normal((len(ids), dim))))
        ref.update(ids.tolist())
        gone = rng.choice(sorted(ref), 7, replace=False).tolist() + [5000]
        assert st.delete(gone) == 7
        ref.difference_update(gone)
        st.search(unit(rng.standard_normal(dim)), 5)  # a due fit happens here
        assert isinstance(st.live_ids(), LiveIds) and st.live_ids() == ref and len(st) == len(ref)
        assert st.ids().tolist() == sorted(ref)
        if st.proj is not None:
            assert isinstance(st.inner.live_ids(), LiveIds) and st.inner.live_ids() == ref
        if step % 4 == 3:
            st.save()
            assert np.load(st.live_path).tolist() == sorted(ref)  # the same file as before: sorted int64
            st = open_store("hnswlib-pca8", tmp_path / "indices", "image--live", dim, {"image": "t"})
            assert st.load() is None and st.live_ids() == ref and st.inner.live_ids() == ref
    assert st.proj is not None
    # sync against a set of live ids from the database removes the stale ones
    keep = set(sorted(ref)[:50])
    rep = st.sync(lambda seq: (np.zeros(0, np.int64), np.zeros((0, dim), np.float32), st.manifest.seq_high), keep)
    assert rep.deleted == len(ref) - 50 and st.live_ids() == keep


def test_reduced_candidates_are_the_projected_top_without_reading_full_rows(tmp_path, monkeypatch):
    """The reduced store's ``candidates`` is the projected index's top max(m, MIN_CANDIDATES), and
    reads no row of the full-vector file (the library's pool re-scores them from the gallery)."""
    import explorer.core.vectorstore.reduced as reduced

    monkeypatch.setattr(reduced, "FIT_MIN", 100)
    monkeypatch.setattr(reduced, "MIN_CANDIDATES", 30)
    rng = np.random.default_rng(5)
    dim, n = 32, 300
    vecs = unit(rng.standard_normal((n, dim)))
    ids = np.arange(1, n + 1, dtype=np.int64)
    st = open_store("hnswlib-pca8", tmp_path / "indices", "image--cand", dim, {"image": "t"})
    st.load()
    st.upsert(ids, vecs)
    q = unit(rng.standard_normal(dim))
    st.search(q, 1)  # fits the projection
    assert st.proj is not None

    class NoRows:
        def __getitem__(self, key):
            raise AssertionError("candidates read a full-vector row")

    full, st._full = st._full, NoRows()
    try:
        small, large = st.candidates(q, 10), st.candidates(q, 50)
    finally:
        st._full = full
    assert len(small) == 30 == len(set(small.tolist())) and len(large) == 50
    projected = np.argsort(-((vecs @ st.proj.T) @ (st.proj @ q)))[:30] + 1
    assert len(set(small.tolist()) & set(projected.tolist())) >= 29  # HNSW at 300 points: (nearly) exact
    assert set(small.tolist()) <= set(large.tolist()) | set(projected.tolist())
