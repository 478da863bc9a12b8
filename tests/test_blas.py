"""core.blas: one OpenBLAS thread while any caller is inside, restored by the last to leave; the
query path's small products run under it."""

import threading

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from explorer.core import blas  # noqa: E402


def _blas_threads():
    """Threads of every loaded BLAS (numpy's and scipy's OpenBLAS are two libraries): all must agree."""
    counts = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    if not counts:
        pytest.skip("numpy has no BLAS threadpool threadpoolctl can see")
    assert len(counts) == 1, counts
    return counts.pop()


@pytest.fixture
def two_threads():
    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS loaded
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        if _blas_threads() != 2:
            pytest.skip("cannot set 2 BLAS threads here")
        yield


def test_one_thread_inside_and_restored_after(two_threads):
    with blas.one_thread():
        assert _blas_threads() == 1
        with blas.one_thread():  # nested
            assert _blas_threads() == 1
        assert _blas_threads() == 1
    assert _blas_threads() == 2


def test_overlapping_callers_in_two_threads_restore_only_at_the_last_exit(two_threads):
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with blas.one_thread():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with blas.one_thread():
            b_in.set()
            a_out.wait(5)  # A left first: the limit must hold while B is still inside
            seen["b_after_a_left"] = _blas_threads()
            seen["depth"] = blas._depth

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert seen["b_after_a_left"] == 1, seen
    assert _blas_threads() == 2


def test_exception_inside_still_restores(two_threads):
    @blas.single_threaded
    def boom():
        assert _blas_threads() == 1
        raise ValueError("x")

    with pytest.raises(ValueError):
        boom()
    assert _blas_threads() == 2


def test_search_ranks_with_one_blas_thread(two_threads, monkeypatch, library_copy, sample_gallery):
    """A real search: the candidate re-scoring and every mode's ranking and reranking run with one
    BLAS thread, and the setting is back to 2 afterwards."""
    from explorer.core import search
    from explorer.core.search import QuerySpec, open_searcher

    searcher = open_searcher(library_copy)
    seen = []
    real_rerank, real_scores = search.rr.rerank, search.row_scores

    def spy_rerank(*a, **k):
        seen.append(("rerank", _blas_threads()))
        return real_rerank(*a, **k)

    def spy_scores(*a, **k):
        seen.append(("rescore", _blas_threads()))
        return real_scores(*a, **k)

    monkeypatch.setattr(search.rr, "rerank", spy_rerank)
    monkeypatch.setattr(search, "row_scores", spy_scores)
    res = searcher.search(QuerySpec(image=str(sample_gallery / "cat" / "chelsea.jpg")), k=3, rerank="aqe")
    assert res.modes["image"].hits
    assert {name for name, _ in seen} == {"rerank", "rescore"}
    assert all(n == 1 for _, n in seen), seen
    assert _blas_threads() == 2
