"""Retrieval metrics: AP against scikit-learn, hand-checked P@k / R@k / PR, comparisons."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from explorer.core.evaluation import (
    PR_RECALL,
    DenseRelevance,
    LabelRelevance,
    alpha_sweep,
    average_precision_from_scores,
    evaluate_embeddings,
    evaluate_scores,
    paired_comparison,
    pr_curve,
    precision_recall_at_k,
    sign_test_p,
)


def sk_ap(scores, relevant, ignore=None):
    """Reference: sklearn per query, removed items (ignore / -inf) dropped first."""
    out = []
    for i in range(scores.shape[0]):
        keep = scores[i] > -np.inf
        if ignore is not None:
            keep &= ~ignore[i]
        r = relevant[i][keep]
        if not r.any():
            out.append(np.nan)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(average_precision_score(r, scores[i][keep]))
    return np.array(out)


def naive_hits(scores, relevant, ignore, ks):
    """Reference top-k: stable sort by descending score, ties by gallery index."""
    hits = np.zeros((scores.shape[0], len(ks)), int)
    for i in range(scores.shape[0]):
        keep = scores[i] > -np.inf
        if ignore is not None:
            keep &= ~ignore[i]
        idx = np.flatnonzero(keep)
        order = idx[np.lexsort((idx, -scores[i][idx]))]
        for j, k in enumerate(ks):
            hits[i, j] = relevant[i][order[:k]].sum()
    return hits


# -- AP against scikit-learn -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_ap_equals_sklearn_random_and_tied(dtype, decimals):
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((60, 400))
    if decimals is not None:  # heavy ties: about 60 (or 8) distinct values per row
        scores = np.round(scores, decimals)
    scores = scores.astype(dtype)
    relevant = rng.random(scores.shape) < 0.08
    relevant[0] = False  # a query without relevant items
    ap = average_precision_from_scores(scores, relevant)
    ref = sk_ap(scores, relevant)
    assert np.isnan(ap[0]) and np.isnan(ref[0])
    np.testing.assert_allclose(ap, ref, atol=1e-9, rtol=0)


def test_ap_equals_sklearn_with_ignored_items_removed():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((40, 300)), 1)
    relevant = rng.random(scores.shape) < 0.1
    ignore = rng.random(scores.shape) < 0.15
    ignore[:, 0] = True  # e.g. the query itself
    scores[rng.random(scores.shape) < 0.05] = -np.inf  # removed by the caller
    ap = average_precision_from_scores(scores, relevant, ignore)
    np.testing.assert_allclose(ap, sk_ap(scores, relevant, ignore), atol=1e-9, rtol=0)
    # Ignoring changes the result (the test would be vacuous otherwise).
    assert not np.allclose(ap, average_precision_from_scores(scores, relevant), equal_nan=True)


def test_ap_extreme_score_ranges_are_exact():
    """Huge spreads, an outlier, denormal gaps: the bucketing must stay exact."""
    rng = np.random.default_rng(11)
    rows = [
        rng.standard_normal(500) * 1e30,
        np.concatenate([rng.standard_normal(499) * 1e-3, [1e6]]),
        np.float32(1.0) + np.arange(500, dtype=np.float32) * np.float32(1.2e-7),
        rng.standard_normal(500) * 1e-40,
        np.full(500, 0.25),
        np.where(rng.random(500) < 0.5, -0.0, 0.0),
    ]
    huge = np.concatenate([[-1.7e308, 1.7e308], rng.standard_normal(498)])
    for dtype in (np.float32, np.float64):
        scores = np.stack(rows).astype(dtype)
        if dtype == np.float64:
            scores = np.vstack([scores, huge])
        relevant = rng.random(scores.shape) < 0.2
        relevant[1, -1] = True  # the outlier is relevant
        relevant[-1, :2] = True
        np.testing.assert_allclose(
            average_precision_from_scores(scores, relevant), sk_ap(scores, relevant), atol=1e-9, rtol=0
        )
        ks = (1, 3, 10, 50, 499)
        m = evaluate_scores(scores, relevant, ks=ks)
        hits = naive_hits(scores, relevant, None, ks)
        npos = relevant.sum(1)
        for j, k in enumerate(ks):
            assert m.precision_at_k[k] == pytest.approx(np.mean(hits[:, j] / k), abs=1e-12)
            assert m.recall_at_k[k] == pytest.approx(np.mean(hits[:, j] / npos), abs=1e-12)


def test_queries_without_relevant_are_nan_and_excluded_from_map():
    scores = np.array([[0.9, 0.1, 0.5], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    relevant = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], bool)
    ignore = np.zeros_like(relevant)
    ignore[2, 0] = True  # its only relevant item is ignored: no relevant left
    m = evaluate_scores(scores, relevant, ignore, mode="image", ks=(1,))
    assert m.ap[0] == 1.0 and np.isnan(m.ap[1]) and np.isnan(m.ap[2])
    assert m.map == 1.0
    assert m.n_queries == 3 and m.n_queries_without_relevant == 2
    assert m.precision_at_k == {1: 1.0} and m.recall_at_k == {1: 1.0}


def test_minus_inf_scores_are_removed_like_ignore():
    scores = np.array([[0.9, -np.inf, 0.5, 0.1]])
    relevant = np.array([[0, 1, 1, 0]], bool)
    # The -inf item is neither ranked nor counted as relevant: AP of [0.9 no, 0.5 yes, 0.1 no].
    assert average_precision_from_scores(scores, relevant)[0] == pytest.approx(0.5)
    ignore = np.array([[0, 1, 0, 0]], bool)
    finite = np.array([[0.9, 0.7, 0.5, 0.1]])
    assert average_precision_from_scores(finite, relevant, ignore)[0] == pytest.approx(0.5)


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        average_precision_from_scores(np.array([[0.1, np.nan]]), np.array([[1, 0]], bool))


# -- P@k and R@k by hand --------------------------------------------------------------


def test_precision_recall_at_k_by_hand():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # ranking 0,1,2,3,4 ; relevant 0 and 2
            [0.5, 0.5, 0.5, 0.1, 0.9],  # ranking 4,0,1,2,3 (tie broken by index); relevant 1
        ]
    )
    relevant = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]], bool)
    p, r = precision_recall_at_k(scores, relevant, ks=(1, 2, 3, 5, 10))
    # query 0 hits: @1=1 @2=1 @3=2 @5=2 @10=2 ; query 1 hits: @1=0 @2=0 @3=1 @5=1 @10=1
    assert p == pytest.approx({1: (1 + 0) / 2, 2: (1 / 2 + 0) / 2, 3: (2 / 3 + 1 / 3) / 2, 5: (2 / 5 + 1 / 5) / 2, 10: (2 / 10 + 1 / 10) / 2})
    assert r == pytest.approx({1: (1 / 2 + 0) / 2, 2: (1 / 2 + 0) / 2, 3: (1 + 1) / 2, 5: 1.0, 10: 1.0})


def test_top_k_ties_are_broken_by_gallery_index():
    scores = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    relevant = np.array([[0, 0, 0, 1], [1, 0, 0, 0]], bool)
    p, r = precision_recall_at_k(scores, relevant, ks=(1, 3, 4))
    # Query 0: its relevant item has index 3, rank 3 -> only in the top 4. Query 1: rank 0.
    assert p == pytest.approx({1: (0 + 1) / 2, 3: (0 + 1 / 3) / 2, 4: (1 / 4 + 1 / 4) / 2})
    assert r == pytest.approx({1: 0.5, 3: 0.5, 4: 1.0})
    # Ignoring index 0 moves query 0's item up; query 1 then has no relevant item left.
    ignore = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], bool)
    p, r = precision_recall_at_k(scores, relevant, ignore, ks=(2, 3))
    assert p == pytest.approx({2: 0.0, 3: 1 / 3}) and r == pytest.approx({2: 0.0, 3: 1.0})


def test_top_k_matches_stable_sort_on_random_ties():
    rng = np.random.default_rng(5)
    scores = np.round(rng.random((50, 200)), 1)
    relevant = rng.random(scores.shape) < 0.2
    ignore = rng.random(scores.shape) < 0.1
    ks = (1, 2, 5, 10, 20, 50, 300)
    m = evaluate_scores(scores, relevant, ignore, ks=ks)
    hits = naive_hits(scores, relevant, ignore, ks)
    npos = (relevant & ~ignore).sum(1)
    ok = npos > 0
    for j, k in enumerate(ks):
        assert m.precision_at_k[k] == pytest.approx(np.mean(hits[ok, j] / k), abs=1e-12)
        assert m.recall_at_k[k] == pytest.approx(np.mean(hits[ok, j] / npos[ok]), abs=1e-12)


# -- PR curve ---------------------------------------------------------------------------


def test_pr_curve_known_case():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.9, 0.5, 0.0]])
    relevant = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool)
    recall, precision, per_query = pr_curve(scores, relevant, per_query=True)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 101))
    # Query 0: points (R .5, P 1), (R .5, P .5), (R 1, P 2/3), (R 1, P .5)
    #   -> interpolated 1 up to recall 0.5, then 2/3.
    q0 = np.where(recall <= 0.5 + 1e-12, 1.0, 2 / 3)
    # Query 1: its relevant item is ranked 3rd -> 1/3 everywhere.
    q1 = np.full(101, 1 / 3)
    np.testing.assert_allclose(per_query[0], q0, atol=1e-12)
    np.testing.assert_allclose(per_query[1], q1, atol=1e-12)
    np.testing.assert_allclose(precision, (q0 + q1) / 2, atol=1e-12)
    assert average_precision_from_scores(scores, relevant)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_pr_curve_ties_use_threshold_points():
    # Two tied items, one relevant: one threshold with P = 1/2 at R = 1.
    recall, precision = pr_curve(np.array([[0.5, 0.5]]), np.array([[0, 1]], bool))
    np.testing.assert_allclose(precision, 0.5)


def test_pr_curve_monotone_and_mean_over_queries():
    rng = np.random.default_rng(1)
    scores = np.round(rng.standard_normal((30, 150)), 1)
    relevant = rng.random(scores.shape) < 0.1
    relevant[3] = False
    recall, precision, per_query = pr_curve(scores, relevant, per_query=True)
    assert np.isnan(per_query[3]).all()
    ok = ~np.isnan(per_query[:, 0])
    assert np.all(np.diff(per_query[ok], axis=1) <= 1e-15)
    assert np.all(np.diff(precision) <= 1e-15)
    np.testing.assert_allclose(precision, per_query[ok].mean(axis=0))
    assert ((per_query[ok] >= 0) & (per_query[ok] <= 1)).all()
    # Brute force for a few queries: max precision over thresholds with recall >= r.
    for i in np.flatnonzero(ok)[:5]:
        th = np.unique(scores[i])[::-1]
        P = np.array([relevant[i][scores[i] >= t].sum() / (scores[i] >= t).sum() for t in th])
        R = np.array([relevant[i][scores[i] >= t].sum() / relevant[i].sum() for t in th])
        ref = [P[R >= g - 1e-12].max() for g in PR_RECALL]
        np.testing.assert_allclose(per_query[i], ref, atol=1e-12)


# -- chunked embeddings vs full matrix ------------------------------------------------


def test_evaluate_embeddings_chunked_equals_full_scores():
    rng = np.random.default_rng(2)
    # Small integer vectors: float32 dot products are exact whatever the BLAS blocking,
    # and there are plenty of ties.
    labels = rng.integers(0, 6, 90)
    vecs = rng.integers(-2, 3, (90, 12)).astype(np.float32)
    rel, ign = LabelRelevance.leave_one_out(labels).dense()
    ks = (1, 5, 10, 20)
    full = evaluate_scores(vecs.astype(np.float64) @ vecs.T.astype(np.float64), rel, ign, mode="x", ks=ks)
    for chunk in (7, 32, 1000):
        for relevance, ignore in ((rel, ign), (LabelRelevance.leave_one_out(labels), None)):
            m = evaluate_embeddings(vecs, vecs, relevance, ignore, mode="x", ks=ks, chunk=chunk)
            np.testing.assert_array_equal(m.ap, full.ap)
            assert m.map == full.map
            assert m.precision_at_k == full.precision_at_k and m.recall_at_k == full.recall_at_k
            np.testing.assert_allclose(m.pr_precision, full.pr_precision, atol=1e-12, rtol=0)
    # And the full-matrix result agrees with sklearn.
    np.testing.assert_allclose(full.ap, sk_ap(vecs @ vecs.T, rel, ign), atol=1e-9, rtol=0)


def test_label_relevance_blocks_match_dense():
    labels = np.array([0, 1, 0, -1, 1, 0])
    src = LabelRelevance(labels[:4], labels, query_ids=[10, 11, 12, 13], gallery_ids=[10, 11, 12, 13, 14, 15])
    rel, ign = src.dense()
    expect = (labels[:4, None] == labels[None, :]) & (labels[:4, None] >= 0)
    np.testing.assert_array_equal(rel, expect)
    np.testing.assert_array_equal(ign, np.eye(4, 6, dtype=bool))
    s = LabelRelevance(["cat", None, "cat"], ["cat", "dog", None])
    np.testing.assert_array_equal(s.dense()[0], [[1, 0, 0], [0, 0, 0], [1, 0, 0]])
    d = DenseRelevance(rel, ign)
    r, c, ir, ic = d.block(1, 3)
    assert set(zip(r.tolist(), c.tolist())) == {(0, 1), (0, 4), (1, 0), (1, 2), (1, 5)}


def test_alpha_sweep_accepts_scores_or_vectors():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    g = rng.standard_normal((30, 8)).astype(np.float32)
    rel = rng.random((20, 30)) < 0.2

    def by_scores(alpha):
        return alpha * (q @ g.T) + (1 - alpha) * rng.random((20, 30))

    def by_vectors(alpha):
        return q * alpha, g

    out = alpha_sweep(by_scores, [0.0, 1.0], rel)
    assert [a for a, _ in out] == [0.0, 1.0]
    assert out[1][1] == pytest.approx(np.nanmean(sk_ap(q @ g.T, rel)), abs=1e-6)
    vec = alpha_sweep(by_vectors, [0.5, 2.0], rel)
    assert vec[0][1] == pytest.approx(vec[1][1])  # positive scaling keeps the ranking


def test_mode_metrics_to_dict_is_json_safe():
    m = evaluate_scores(np.array([[0.2, 0.1], [0.3, 0.4]]), np.array([[1, 0], [0, 0]], bool), mode="fused", ks=(1, 2))
    d = m.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["mode"] == "fused" and d["map"] == 1.0 and d["ap"] == [1.0, None]
    assert d["precision_at_k"] == {"1": 1.0, "2": 0.5} and len(d["pr_precision"]) == 101
    assert m.label() == "fused (mAP 1.000)"


# -- paired comparison -------------------------------------------------------------------


def test_paired_comparison_identical():
    ap = np.linspace(0.1, 0.9, 25)
    c = paired_comparison(ap, ap.copy(), n_boot=2000)
    assert c.mean_diff == 0.0 and c.p_value == 1.0
    assert (c.wins, c.losses, c.ties) == (0, 0, 25)
    assert c.ci_low == 0.0 and c.ci_high == 0.0


def test_paired_comparison_b_always_better():
    rng = np.random.default_rng(0)
    a = rng.random(40) * 0.5
    b = a + 0.05 + rng.random(40) * 0.1
    a[3] = np.nan  # dropped pairwise
    c = paired_comparison(a, b, n_boot=3000, seed=1)
    assert (c.n_pairs, c.n_dropped, c.wins, c.losses, c.ties) == (39, 1, 39, 0, 0)
    assert c.p_value == pytest.approx(2 / 2**39)
    assert 0 < c.ci_low < c.mean_diff < c.ci_high
    again = paired_comparison(a, b, n_boot=3000, seed=1)
    assert (again.ci_low, again.ci_high) == (c.ci_low, c.ci_high)
    json.dumps(c.to_dict(), allow_nan=False)


def test_sign_test_by_hand():
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert sign_test_p(0, 5) == pytest.approx(2 / 32)
    assert sign_test_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    assert 0.0 <= sign_test_p(20000, 0) < 1e-300


# -- hygiene ----------------------------------------------------------------------------


def test_evaluation_package_never_imports_qt_or_torch():
    code = (
        "import sys, explorer.core.evaluation as e\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'torch')"
        " or m == 'matplotlib.pyplot']\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
