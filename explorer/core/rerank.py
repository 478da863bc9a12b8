"""Reranking without geometric verification: the one home of every reranking formula.

Search (``explorer.core.search``) and evaluation (``explorer.core.evaluate``) both call
``rerank`` with the same ``Scorer`` and vectors, so a query gets the same reranked scores in
the window, the CLI and the metrics. Each method sees a block of queries ``q`` (rows), the
gallery ``g`` (rows; for a search, its candidate pool) and the mode's first-pass scores
``base`` (queries x gallery, ``-inf`` for excluded items such as the query itself):

* ``aqe`` — alpha-query expansion (Radenović et al.): per representation, the query becomes
  ``normalise(q + sum_j s_j^power g_j)`` over its top ``AQE_N`` neighbours (``s_j`` clipped at 0),
  and the gallery is re-scored.
* ``superglobal`` — SuperGlobal-style refinement (Shao et al. 2023), training-free: within the
  query's top ``SG_K`` candidates, each candidate's descriptor is refined as the
  similarity-weighted mean (weights ``s^power``) of itself and its ``SG_M`` nearest candidates;
  the query is expanded with its top ``SG_M`` refined candidates (as ``aqe``); a candidate's
  new score is ``(score(q, g') + score(q', g)) / 2``.
* ``kreciprocal`` — k-reciprocal re-ranking (Zhong et al. 2017) within the top ``KR_K``: the
  Jaccard distance of Gaussian-weighted k1-reciprocal neighbour sets (with local query
  expansion over k2), blended with the first-pass distance, ``score = -((1-λ) J + λ d)``.

``superglobal`` and ``kreciprocal`` only reorder the top candidates: every other item keeps
its first-pass order below them (its score is ``base - OUTSIDE``). Neighbourhoods are taken
among the candidates themselves, and score ties are broken by image id (``Vectors.ids``), so a
search over a candidate pool that holds the true top candidates gives the evaluation's scores
(equal up to float32 rounding, ~1e-6).

A ``Scorer`` says how a mode scores: a plain dot product of one representation (``image``,
``caption``, ``learned``), or the caption-fused formula of ``explorer.core.fusion`` on the
``image`` and ``caption`` representations with per-row caption weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExplorerError
from .fusion import fused_scores
from .modes import CAPTION, IMAGE

METHODS = ("none", "aqe", "superglobal", "kreciprocal")
#: display names of the methods (CLI help, the window)
TITLES = {"none": "none", "aqe": "α-QE", "superglobal": "SuperGlobal", "kreciprocal": "k-reciprocal"}
AQE_N, AQE_POWER = 5, 3.0
SG_K, SG_M, SG_POWER = 50, 5, 3.0
KR_K, KR_K1, KR_K2, KR_LAMBDA = 50, 10, 3, 0.3
#: items outside the reranked top keep their order below it: score = base - OUTSIDE
OUTSIDE = 10.0
#: when choosing neighbours, scores equal to this many decimals are ties (broken by position, i.e.
#: by image id): a search re-encodes its query, whose scores then differ from the stored vector's
#: by float noise (~1e-7), and must still pick the neighbours the evaluation picks
TIE_DECIMALS = 5


def _key(x: np.ndarray) -> np.ndarray:
    return np.round(x, TIE_DECIMALS)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ExplorerError(f"unknown rerank '{method}'; choose from {', '.join(METHODS)}")
    return method


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


@dataclass
class Vectors:
    """Rows of one side: per representation a ``(..., n, d)`` array, caption weights ``(..., n)``,
    and (gallery side) the rows' image ids, which break score ties the same way everywhere."""

    reps: dict[str, np.ndarray]
    weight: np.ndarray | None = None
    ids: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "Vectors":
        """Rows ``idx`` (any integer array shape) of a 2-D side."""
        return Vectors({k: v[idx] for k, v in self.reps.items()}, None if self.weight is None else self.weight[idx],
                       None if self.ids is None else self.ids[idx])

    def rows(self, start: int, stop: int) -> "Vectors":
        return self.take(np.arange(start, stop))


@dataclass(frozen=True)
class Scorer:
    """A mode's score between query rows and gallery rows (broadcast over leading axes)."""

    kind: str = "dot"  # "dot" on ``rep``, or "fused"
    rep: str = "image"
    alpha: float = 0.0

    @property
    def reps(self) -> tuple[str, ...]:
        return (IMAGE, CAPTION) if self.kind == "fused" else (self.rep,)

    def __call__(self, q: Vectors, g: Vectors) -> np.ndarray:
        def mm(name):
            return np.matmul(q.reps[name], np.swapaxes(g.reps[name], -1, -2))

        if self.kind == "dot":
            return mm(self.rep).astype(np.float32)
        ci, cc = mm(IMAGE), mm(CAPTION)
        b = self.alpha * q.weight[..., :, None] * g.weight[..., None, :]
        return fused_scores(ci, cc, 1.0, 1.0, b)  # (1 - b) ci + b cc, the one fusion formula

    def as_queries(self, g: Vectors) -> Vectors:
        """Gallery rows used as queries (their own caption weights), for gallery-gallery scores."""
        return g


def _weights(s: np.ndarray, power: float) -> np.ndarray:
    return np.where(np.isfinite(s), np.clip(s, 0.0, None), 0.0) ** power


def _top(base: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Indices of the top ``k`` scores per row, best first; ties go to the lower image id (``ids``),
    so a search pool and an evaluation gallery in another row order pick and order the same top."""
    k = max(1, min(k, base.shape[1]))
    if ids is None:
        return np.argsort(-_key(base), axis=1, kind="stable")[:, :k]
    return np.stack([np.lexsort((ids, -_key(row)))[:k] for row in base])


def _expand(q: Vectors, nb: Vectors, w: np.ndarray, reps) -> Vectors:
    """Query rows ``(b, d)`` + weighted neighbour rows ``(b, n, d)`` per representation, normalised."""
    out = dict(q.reps)
    for r in reps:
        out[r] = _normalise(q.reps[r] + np.einsum("bn,bnd->bd", w, nb.reps[r]))
    return Vectors(out, q.weight)


def aqe(scorer: Scorer, q: Vectors, g: Vectors, base: np.ndarray, n: int = AQE_N, power: float = AQE_POWER) -> np.ndarray:
    top = _top(base, n, g.ids)
    w = _weights(np.take_along_axis(base, top, 1), power)
    qx = _expand(q, g.take(top), w, scorer.reps)
    new = scorer(qx, g)
    new[~np.isfinite(base)] = -np.inf
    return new


def _outside(base: np.ndarray, top: np.ndarray, new_top: np.ndarray) -> np.ndarray:
    out = (base - OUTSIDE).astype(np.float32)
    np.put_along_axis(out, top, new_top.astype(np.float32), 1)
    out[~np.isfinite(base)] = -np.inf
    return out


def _one(v: Vectors) -> Vectors:
    """(b, d) rows -> (b, 1, d), to score each query against its own candidates."""
    return Vectors({k: a[:, None, :] for k, a in v.reps.items()}, None if v.weight is None else v.weight[:, None])


def superglobal(scorer: Scorer, q: Vectors, g: Vectors, base: np.ndarray, k: int = SG_K, m: int = SG_M,
                power: float = SG_POWER) -> np.ndarray:
    top = _top(base, k, g.ids)
    valid = np.isfinite(np.take_along_axis(base, top, 1))  # (b, k)
    cand = g.take(top)  # (b, k, d)
    gg = scorer(scorer.as_queries(cand), cand)  # (b, k, k)
    gg = np.where(valid[:, None, :], gg, -np.inf)
    mm = min(m + 1, top.shape[1])  # itself and its m nearest candidates
    nb = np.argsort(-_key(gg), axis=2, kind="stable")[:, :, :mm]  # (b, k, mm)
    w = _weights(np.take_along_axis(gg, nb, 2), power)  # (b, k, mm)
    refined = {}
    for r in scorer.reps:
        x = np.take_along_axis(cand.reps[r][:, None, :, :], nb[..., None], 2)  # (b, k, mm, d)
        refined[r] = _normalise(np.einsum("bkm,bkmd->bkd", w, x))
    cand_ref = Vectors({**cand.reps, **refined}, cand.weight)
    s_ref = scorer(_one(q), cand_ref)[:, 0, :]  # score(q, g')
    qw = _weights(np.take_along_axis(base, top[:, :m], 1), power)
    qx = _expand(q, cand_ref.take((np.arange(len(top))[:, None], np.arange(min(m, top.shape[1]))[None, :])), qw, scorer.reps)
    s_exp = scorer(_one(qx), cand)[:, 0, :]  # score(q', g)
    return _outside(base, top, (s_ref + s_exp) / 2)


def kreciprocal(scorer: Scorer, q: Vectors, g: Vectors, base: np.ndarray, k: int = KR_K, k1: int = KR_K1,
                k2: int = KR_K2, lam: float = KR_LAMBDA) -> np.ndarray:
    top = _top(base, k, g.ids)
    b, kk = top.shape
    cand = g.take(top)
    valid = np.isfinite(np.take_along_axis(base, top, 1))
    new_top = np.empty((b, kk), np.float32)
    for i in range(b):  # per query: a (1 + k) x (1 + k) problem
        c = Vectors({r: v[i] for r, v in cand.reps.items()}, None if cand.weight is None else cand.weight[i])
        qi = Vectors({r: v[i : i + 1] for r, v in q.reps.items()}, None if q.weight is None else q.weight[i : i + 1])
        allv = Vectors({r: np.concatenate([qi.reps[r], c.reps[r]]) for r in scorer.reps},
                       None if c.weight is None else np.concatenate([qi.weight, c.weight]))
        sim = scorer(allv, allv).astype(np.float64)
        ok = np.concatenate([[True], valid[i]])
        sim[:, ~ok] = -np.inf
        sim[0, 1:] = base[i, top[i]]  # the query row: its first-pass scores, as the ranking saw them
        sim[1:, 0] = sim[0, 1:]
        np.fill_diagonal(sim, 1.0)
        dist = np.where(np.isfinite(sim), np.clip(2.0 - 2.0 * sim, 0.0, None), np.inf)
        n = len(dist)
        kk1 = min(k1 + 1, n)
        rank = np.argsort(_key(dist), axis=1, kind="stable")
        fwd = rank[:, :kk1]
        V = np.zeros((n, n))
        for a in range(n):
            recip = [j for j in fwd[a] if a in fwd[j]]
            R = set(recip) | {a}
            for j in recip:  # add a neighbour's half-size reciprocal set when it overlaps enough
                half = rank[j, : max(1, int(round(k1 / 2))) + 1]
                rj = [x for x in half if j in rank[x, : max(1, int(round(k1 / 2))) + 1]]
                if len(set(rj) & R) > 2 / 3 * len(rj):
                    R |= set(rj)
            R = np.array(sorted(R), np.int64)
            d = dist[a, R]
            wv = np.exp(-np.where(np.isfinite(d), d, 1e9))
            V[a, R] = wv / max(wv.sum(), 1e-12)
        if k2 > 1:  # local query expansion
            V = np.stack([V[rank[a, : min(k2, n)]].mean(0) for a in range(n)])
        inter = np.minimum(V[0][None, :], V).sum(1)
        union = np.maximum(V[0][None, :], V).sum(1)
        jac = 1.0 - inter / np.maximum(union, 1e-12)
        final = (1 - lam) * jac + lam * dist[0]
        s = -final[1:]
        s[~valid[i]] = -np.inf
        new_top[i] = s
    return _outside(base, top, new_top)


def rerank(method: str, scorer: Scorer, q: Vectors, g: Vectors, base: np.ndarray) -> np.ndarray:
    """Reranked scores ``(b, n)`` for query rows ``q`` against gallery rows ``g``.

    ``base`` is the mode's first-pass score matrix (``-inf`` for items that must not be
    returned, e.g. the query itself); ``none`` returns it unchanged (as float32).
    """
    check_method(method)
    base = np.asarray(base, np.float32)
    if method == "none" or base.shape[1] == 0:
        return base.copy()
    fn = {"aqe": aqe, "superglobal": superglobal, "kreciprocal": kreciprocal}[method]
    return fn(scorer, q, g, base)
