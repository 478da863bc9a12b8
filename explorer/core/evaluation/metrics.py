"""Retrieval metrics: AP/mAP, P@k, R@k, interpolated PR curves, the alpha sweep.

Relevance sources live in ``relevance`` and paired comparisons (bootstrap CI, sign test) in
``compare``; their public names are re-exported here.

Pure numpy. Everything works on a *score matrix* ``scores[q, g]`` (higher = more similar)
and a boolean *relevance* matrix of the same shape, processed a block of query rows at a
time, so an ``nq x ng`` evaluation never holds more than a few blocks of ``rows x ng``.

Conventions (the same in every function here)
---------------------------------------------
* **Removed items.** A gallery item is removed from a query's ranking when ``ignore[q, g]``
  is true (junk, or the query itself in leave-one-out) or when its score is ``-inf``. A
  removed item is neither ranked nor counted as relevant. (So a caller that wants "not
  retrieved" to count as a miss must give a very low *finite* score, not ``-inf``.)
  NaN and ``+inf`` scores are programming errors and raise ``ValueError``.
* **Queries without relevant items** (after removal) get AP = NaN and are left out of every
  mean (mAP, P@k, R@k, PR curve); ``ModeMetrics.n_queries_without_relevant`` counts them.
* **Ties in AP and the PR curve** are handled as scikit-learn does: tied scores form one
  threshold. With ``n+`` relevant items, ``AP = (1/n+) * sum over relevant items i of
  P(s_i)`` where ``P(s) = #{relevant, score >= s} / #{items, score >= s}``. This equals
  ``sklearn.metrics.average_precision_score(relevant[q], scores[q])`` exactly (with removed
  items dropped first), and needs no tie-breaking at all.
* **Top-k tie-breaking** (P@k, R@k): the ranking is a stable sort by descending score, then
  ascending gallery index; the item at rank r (0-based) is in the top k iff r < k. So
  ``rank(i) = #{score > s_i} + #{j < i : score_j == s_i}`` (removed items excluded).
  ``P@k = hits/k`` (also when fewer than k items remain), ``R@k = hits/n+``.
* **PR curve**: per query, interpolated precision ``p(r) = max{P(s) : recall(s) >= r}`` over
  the same thresholds as AP, on the fixed grid ``r = 0, 0.01, ..., 1`` (101 points); the
  curve reported is the mean over queries with relevant items.

How ranks are computed without sorting every row
------------------------------------------------
All these metrics only need, for each relevant item with score t, the counts
``#{items >= t}`` and ``#{items > t}``. Sorting each 20k-item row for that costs more than
the matrix product that made the scores, so instead each row is split into buckets by a
*monotone* function of the score (row-wise affine map, clip, floor: every float operation
is monotone, so ``x <= t`` implies ``bucket(x) <= bucket(t)`` whatever the rounding). One
``bincount`` gives the number of items in buckets above a threshold's bucket; the items that
share a bucket with some threshold (a few per threshold) are then compared exactly, via
order-preserving integer keys and ``searchsorted``. The result is exact, not approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..modes import IMAGE
from .compare import PairedComparison, paired_comparison, sign_test_p
from .compare import json_number as _num
from .relevance import DenseRelevance, LabelRelevance
from .relevance import as_source as _as_source

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
PR_POINTS = 101
PR_RECALL = np.linspace(0.0, 1.0, PR_POINTS)

#: Rows of the score matrix evaluated at once inside a chunk (bounds the work buffers).
_SUB_ROWS = 512
#: Elements per temporary comparison matrix in the (rare) exact tie-break fallback.
_TIE_BLOCK = 1 << 22


# --------------------------------------------------------------------------------------
# Exact per-block computation
# --------------------------------------------------------------------------------------


def _order_keys(v: np.ndarray) -> np.ndarray:
    """int64 keys in ``[-2**31, 2**31)`` with the same order and equalities as ``v``."""
    if v.dtype == np.float32:
        b = (v + np.float32(0.0)).view(np.int32)  # -0.0 -> +0.0 so that it ties with 0.0
        return (b ^ ((b >> 31) & 0x7FFFFFFF)).astype(np.int64)
    _, inverse = np.unique(v, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


class _Workspace:
    """Work buffers reused across blocks (fresh large allocations are slow: page faults)."""

    def __init__(self, rows: int, ng: int, dtype):
        self.dtype = np.dtype(dtype)
        self.n_buckets = int(np.clip(ng // 4, 8, 8192))
        width = self.n_buckets + 2
        # Bucket indices are computed in floating point with a row offset; keep them exact
        # integers well inside the mantissa (2**24 for float32).
        self.rows = max(1, min(rows, _SUB_ROWS, (1 << 23) // width))
        self.ng = ng
        self.y = np.empty((self.rows, ng), self.dtype)
        self.q = np.empty((self.rows, ng), np.int64)
        self.mask = np.empty((self.rows, ng), bool)


@dataclass
class _Block:
    ap: np.ndarray  # (cb,) NaN where no relevant
    npos: np.ndarray  # (cb,)
    hits: np.ndarray  # (cb, nk)
    pr: np.ndarray  # (cb, 101) NaN rows where no relevant
    first: np.ndarray | None = None  # (cb,) 1-based rank of the first relevant item, -1 where none


def _eval_block(work: np.ndarray, rel_rows, rel_cols, ign_rows, ign_cols, ks, ws: _Workspace) -> _Block:
    """Metrics for one block of rows. ``work`` is owned scratch (ignored items set to -inf)."""
    cb, ng = work.shape
    nk = len(ks)
    ap = np.full(cb, np.nan)
    hits = np.zeros((cb, nk), np.int64)
    pr = np.full((cb, PR_POINTS), np.nan)
    if ng == 0:
        return _Block(ap, np.zeros(cb, np.int64), hits, pr)
    if len(ign_rows):
        work[ign_rows, ign_cols] = -np.inf
    top = work.max(axis=1)
    if np.isnan(top).any() or np.isposinf(top).any():
        raise ValueError("scores contain NaN or +inf (use -inf to remove an item)")

    rel_rows = np.asarray(rel_rows, np.int64)
    rel_cols = np.asarray(rel_cols, np.int64)
    t = work[rel_rows, rel_cols]
    keep = t > -np.inf
    rows, cols, t = rel_rows[keep], rel_cols[keep], t[keep]
    npos = np.bincount(rows, minlength=cb).astype(np.int64)
    if rows.size == 0:
        return _Block(ap, npos, hits, pr)
    has = npos > 0
    dtype = work.dtype

    # -- monotone bucket index per row: floor(clip((x - lo) * scale, -1, B) + 1) + row * W
    nb = ws.n_buckets
    width = nb + 2
    lo = np.full(cb, np.inf, dtype)
    hi = np.full(cb, -np.inf, dtype)
    np.minimum.at(lo, rows, t)
    np.maximum.at(hi, rows, t)
    lo[~has] = 0
    hi[~has] = 0
    with np.errstate(divide="ignore", over="ignore"):
        span = hi.astype(np.float64) - lo.astype(np.float64)
        scale = np.where(span > 0, nb / np.where(span > 0, span, 1.0), 1.0)
    # Any finite positive scale keeps the bucket function monotone (and NaN-free).
    scale = np.clip(scale, float(np.finfo(dtype).tiny), 1e30).astype(dtype)
    y = ws.y[:cb]
    q = ws.q[:cb]
    with np.errstate(over="ignore", invalid="ignore"):
        np.subtract(work, lo[:, None], out=y)
        np.multiply(y, scale[:, None], out=y)
    np.clip(y, -1, nb, out=y)
    np.add(y, (np.arange(cb, dtype=np.int64) * width + 1).astype(dtype)[:, None], out=y)
    np.copyto(q, y, casting="unsafe")  # all values >= 0, so truncation is floor

    # -- items in buckets strictly above a threshold's bucket: histogram of non-flagged buckets
    qflat = q.reshape(-1)
    hist = np.bincount(qflat, minlength=cb * width)
    qt = q[rows, cols]
    flag = np.zeros(cb * width, bool)
    flag[qt] = True
    hist[flag] = 0
    csum = np.cumsum(hist)
    # non-flagged items of the row with bucket > bucket(t) (all of them are > t)
    base = csum[rows * width + (width - 1)] - csum[qt]

    # -- items sharing a bucket with some threshold: compare exactly
    emask = ws.mask[:cb].reshape(-1)
    np.take(flag, qflat, out=emask, mode="clip")
    eidx = np.flatnonzero(emask)
    erow = eidx // ng
    ev = work.reshape(-1)[eidx]
    keys = _order_keys(np.concatenate([ev, t]))
    ecomp = np.sort((erow << 32) + keys[: ev.size])
    tcomp = (rows << 32) + keys[ev.size :]
    # From here on the thresholds are in (row, ascending score) order: binary searches with
    # sorted needles stay in cache, and each row's relevant items are contiguous.
    order = np.argsort(tcomp, kind="stable")
    tcomp, rows, cols, t, base = tcomp[order], rows[order], cols[order], t[order], base[order]
    e_end = np.cumsum(np.bincount(erow, minlength=cb))[rows]
    n_ge = base + e_end - np.searchsorted(ecomp, tcomp, "left")  # items with score >= t
    n_gt = base + e_end - np.searchsorted(ecomp, tcomp, "right")  # items with score > t

    # -- relevant items with score >= t
    r_end = np.cumsum(npos)
    rel_ge = r_end[rows] - np.searchsorted(tcomp, tcomp, "left")
    prec = rel_ge / n_ge

    # -- AP
    ap_sum = np.bincount(rows, weights=prec, minlength=cb)
    ap[has] = ap_sum[has] / npos[has]

    # -- PR: ascending layout per row; interpolated precision = running max from the bottom
    pos = np.arange(rows.size, dtype=np.int64) - (r_end - npos)[rows]
    p2 = np.zeros((cb, int(npos.max())))
    p2[rows, pos] = prec
    np.maximum.accumulate(p2, axis=1, out=p2)
    grid = np.arange(PR_POINTS, dtype=np.int64)
    need = (grid[None, :] * npos[:, None] + (PR_POINTS - 2)) // (PR_POINTS - 1)  # ceil(r * n+)
    idx = np.clip(npos[:, None] - np.maximum(need, 1), 0, None)
    pr_all = np.take_along_axis(p2, idx, axis=1)
    pr[has] = pr_all[has]

    # -- rank of the first relevant item: the row's best-scored relevant item (the last of its
    # row in this order), with the same tie-breaking as top-k (exact comparison only on ties)
    first = np.full(cb, -1, np.int64)
    hr = np.flatnonzero(has)
    top_i = r_end[hr] - 1
    first[hr] = n_gt[top_i] + 1
    for r, i in zip(hr[(n_ge[top_i] - n_gt[top_i]) > 1].tolist(), top_i[(n_ge[top_i] - n_gt[top_i]) > 1].tolist()):
        seg = slice(int(r_end[r] - npos[r]), int(r_end[r]))
        c0 = int(cols[seg][t[seg] == t[i]].min())
        first[r] = int(n_gt[i]) + int(np.count_nonzero(work[r, :c0] == t[i])) + 1

    # -- top-k hits with deterministic tie-breaking (descending score, then gallery index)
    kk = np.asarray(ks, np.int64)
    straddle = (n_gt[:, None] < kk[None, :]) & (n_ge[:, None] > kk[None, :])
    rank = n_gt.copy()
    amb = np.flatnonzero(straddle.any(axis=1))
    if amb.size:
        gidx = np.arange(ng, dtype=np.int64)
        step = max(1, _TIE_BLOCK // ng)
        for s in range(0, amb.size, step):
            sel = amb[s : s + step]
            eq = work[rows[sel]] == t[sel][:, None]
            eq &= gidx[None, :] < cols[sel][:, None]
            rank[sel] += eq.sum(axis=1)
    for i, k in enumerate(ks):
        inside = rank < k
        hits[:, i] = np.bincount(rows[inside], minlength=cb)
    return _Block(ap, npos, hits, pr, first)


class _Accumulator:
    def __init__(self, nq: int, ks: tuple[int, ...], keep_pr: bool = False):
        self.ks = ks
        self.ap = np.full(nq, np.nan)
        self.npos = np.zeros(nq, np.int64)
        self.hits = np.zeros((nq, len(ks)), np.int64)
        self.pr_sum = np.zeros(PR_POINTS)
        self.pr_count = 0
        self.pr_rows = np.full((nq, PR_POINTS), np.nan) if keep_pr else None
        self.first = np.full(nq, -1, np.int64)

    def add(self, start: int, b: _Block) -> None:
        stop = start + b.ap.size
        self.ap[start:stop] = b.ap
        self.npos[start:stop] = b.npos
        self.hits[start:stop] = b.hits
        if b.first is not None:
            self.first[start:stop] = b.first
        has = b.npos > 0
        self.pr_sum += b.pr[has].sum(axis=0)
        self.pr_count += int(has.sum())
        if self.pr_rows is not None:
            self.pr_rows[start:stop] = b.pr

    def result(self, mode: str) -> "ModeMetrics":
        has = self.npos > 0
        n_has = int(has.sum())
        p_at: dict[int, float] = {}
        r_at: dict[int, float] = {}
        for i, k in enumerate(self.ks):
            if n_has:
                p_at[k] = float(np.mean(self.hits[has, i] / k))
                r_at[k] = float(np.mean(self.hits[has, i] / self.npos[has]))
            else:
                p_at[k] = r_at[k] = float("nan")
        prec = self.pr_sum / self.pr_count if self.pr_count else np.full(PR_POINTS, np.nan)
        return ModeMetrics(
            mode=mode,
            map=float(np.mean(self.ap[has])) if n_has else float("nan"),
            ap=self.ap,
            n_queries=int(self.ap.size),
            n_queries_without_relevant=int(self.ap.size - n_has),
            precision_at_k=p_at,
            recall_at_k=r_at,
            pr_recall=PR_RECALL.copy(),
            pr_precision=prec,
            first_relevant_rank=self.first,
        )


def _check_ks(ks) -> tuple[int, ...]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return tuple(out)


def _run_scores(scores, relevant, ignore, ks, chunk, keep_pr=False) -> _Accumulator:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (queries x gallery), got shape {scores.shape}")
    nq, ng = scores.shape
    source = _as_source(relevant, ignore, scores.shape)
    dtype = np.float32 if scores.dtype == np.float32 else np.float64
    acc = _Accumulator(nq, ks, keep_pr)
    ws = _Workspace(max(1, min(chunk, nq)), ng, dtype)
    work = np.empty((ws.rows, ng), dtype)
    for start in range(0, nq, ws.rows):
        stop = min(nq, start + ws.rows)
        w = work[: stop - start]
        np.copyto(w, scores[start:stop], casting="unsafe")
        acc.add(start, _eval_block(w, *source.block(start, stop), ks, ws))
    return acc


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


@dataclass
class ModeMetrics:
    """Metrics of one retrieval mode (e.g. "image", "fused") on one ground truth."""

    mode: str
    map: float
    ap: np.ndarray
    n_queries: int
    n_queries_without_relevant: int
    precision_at_k: dict[int, float] = field(default_factory=dict)
    recall_at_k: dict[int, float] = field(default_factory=dict)
    pr_recall: np.ndarray = field(default_factory=lambda: PR_RECALL.copy())
    pr_precision: np.ndarray = field(default_factory=lambda: np.full(PR_POINTS, np.nan))
    #: per query, the 1-based rank of the first relevant item (top-k tie-breaking); -1 where none
    first_relevant_rank: np.ndarray | None = None

    @property
    def map_text(self) -> str:
        """mAP as shown everywhere (legend, tables): three decimals, or "n/a"."""
        return "n/a" if not math.isfinite(self.map) else f"{self.map:.3f}"

    def label(self) -> str:
        """Legend text: ``"mode (mAP 0.xxx)"``."""
        return f"{self.mode} (mAP {self.map_text})"

    def to_dict(self, per_query: bool = True) -> dict:
        """JSON-safe (NaN becomes None, keys are strings)."""
        d = {
            "mode": self.mode,
            "map": _num(self.map),
            "n_queries": int(self.n_queries),
            "n_queries_without_relevant": int(self.n_queries_without_relevant),
            "precision_at_k": {str(k): _num(v) for k, v in self.precision_at_k.items()},
            "recall_at_k": {str(k): _num(v) for k, v in self.recall_at_k.items()},
            "pr_recall": [_num(v) for v in np.asarray(self.pr_recall).tolist()],
            "pr_precision": [_num(v) for v in np.asarray(self.pr_precision).tolist()],
        }
        if per_query:
            d["ap"] = [_num(v) for v in np.asarray(self.ap).tolist()]
        return d



def evaluate_scores(
    scores,
    relevant,
    ignore=None,
    mode: str = IMAGE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> ModeMetrics:
    """All metrics from a precomputed ``(nq, ng)`` score matrix (rows processed in blocks).

    ``relevant`` is an ``(nq, ng)`` boolean matrix or a block source such as
    :class:`LabelRelevance`; ``ignore`` an optional ``(nq, ng)`` boolean matrix.
    """
    return _run_scores(scores, relevant, ignore, _check_ks(ks), chunk).result(mode)


def evaluate_embeddings(
    query_vecs,
    gallery_vecs,
    relevant,
    ignore=None,
    mode: str = IMAGE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> ModeMetrics:
    """All metrics with dot-product scores, computed ``chunk`` queries at a time (float32).

    At most one ``chunk x ng`` score block (plus work buffers of at most 512 rows) exists at
    any time, so 20k x 20k evaluations run in bounded memory. Vectors are used as given:
    normalise them first for cosine similarity.
    """
    ks = _check_ks(ks)
    q = np.ascontiguousarray(query_vecs, dtype=np.float32)
    g = np.ascontiguousarray(gallery_vecs, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query vectors {q.shape} and gallery vectors {g.shape} must be 2-D with the same dimension")
    nq, ng = q.shape[0], g.shape[0]
    source = _as_source(relevant, ignore, (nq, ng))
    chunk = max(1, min(int(chunk), max(nq, 1)))
    acc = _Accumulator(nq, ks)
    ws = _Workspace(chunk, ng, np.float32)
    buf = np.empty((chunk, ng), np.float32)
    gt = g.T
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        block = buf[: stop - start]
        np.matmul(q[start:stop], gt, out=block)
        for s in range(start, stop, ws.rows):
            e = min(stop, s + ws.rows)
            acc.add(s, _eval_block(block[s - start : e - start], *source.block(s, e), ks, ws))
    return acc.result(mode)


def average_precision_from_scores(scores, relevant, ignore=None) -> np.ndarray:
    """Per-query non-interpolated AP ``(nq,)``; NaN for queries without relevant items.

    Identical to ``sklearn.metrics.average_precision_score(relevant[i], scores[i])`` with the
    removed items (``ignore`` or ``-inf``) dropped first; tied scores form one threshold.
    """
    return _run_scores(scores, relevant, ignore, (1,), 1024).ap


def precision_recall_at_k(
    scores, relevant, ignore=None, ks: Sequence[int] = DEFAULT_KS
) -> tuple[dict[int, float], dict[int, float]]:
    """Mean P@k and R@k over queries with relevant items: ``({k: P@k}, {k: R@k})``.

    Top k = first k of a stable sort by descending score, ties broken by gallery index.
    """
    m = _run_scores(scores, relevant, ignore, _check_ks(ks), 1024).result("")
    return m.precision_at_k, m.recall_at_k


def pr_curve(scores, relevant, ignore=None, per_query: bool = False):
    """Interpolated PR curve on 101 recall points, mean over queries with relevant items.

    Returns ``(recall, precision)``; with ``per_query=True`` also the ``(nq, 101)`` per-query
    curves (NaN rows for queries without relevant items).
    """
    acc = _run_scores(scores, relevant, ignore, (1,), 1024, keep_pr=True)
    m = acc.result("")
    if per_query:
        return m.pr_recall, m.pr_precision, acc.pr_rows
    return m.pr_recall, m.pr_precision


def alpha_sweep(
    score_fn: Callable[[float], Any],
    alphas: Iterable[float],
    relevant,
    ignore=None,
    chunk: int = 1024,
) -> list[tuple[float, float]]:
    """``[(alpha, mAP)]``; ``score_fn(alpha)`` returns a score matrix or ``(query_vecs, gallery_vecs)``."""
    out: list[tuple[float, float]] = []
    for alpha in alphas:
        s = score_fn(alpha)
        if isinstance(s, tuple):
            m = evaluate_embeddings(s[0], s[1], relevant, ignore, mode=f"alpha={alpha}", ks=(1,), chunk=chunk)
        else:
            m = evaluate_scores(s, relevant, ignore, mode=f"alpha={alpha}", ks=(1,), chunk=chunk)
        out.append((float(alpha), m.map))
    return out


__all__ = ["DEFAULT_KS", "PR_POINTS", "PR_RECALL", "DenseRelevance", "LabelRelevance", "ModeMetrics", "PairedComparison",
           "alpha_sweep", "average_precision_from_scores", "evaluate_embeddings", "evaluate_scores", "paired_comparison",
           "pr_curve", "precision_recall_at_k", "sign_test_p"]
