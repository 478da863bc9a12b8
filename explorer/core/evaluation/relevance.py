"""Relevance sources for the retrieval metrics: who is relevant to whom, block by block.

A *relevance source* is any object with ``shape`` ``(nq, ng)`` and ``block(start, stop) ->
(rel_rows, rel_cols, ign_rows, ign_cols)`` (row indices relative to ``start``): the relevant
pairs and the ignored pairs (junk, the query itself in leave-one-out) of a block of query rows.
``LabelRelevance`` ("same label", never a full matrix) is the one the library ships;
``DenseRelevance`` wraps boolean matrices. ``metrics`` consumes them (``as_source``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class LabelRelevance:
    """Relevance "same label", produced block by block (never a full ``nq x ng`` matrix).

    ``query_labels`` / ``gallery_labels``: integer arrays (negative = unlabelled, never
    relevant) or sequences of hashables (``None`` = unlabelled). Optional ``query_ids`` /
    ``gallery_ids``: a query is ignored against the gallery item with the same id (the query
    itself in leave-one-out). Gallery ids must be unique.

    Any object with ``shape`` and ``block(start, stop) -> (rel_rows, rel_cols, ign_rows,
    ign_cols)`` (row indices relative to ``start``) can be passed where a relevance matrix is
    expected; this is the one the library ships.
    """

    def __init__(self, query_labels, gallery_labels, query_ids=None, gallery_ids=None):
        ql, gl = _label_codes(query_labels, gallery_labels)
        self._ql, self._gl = ql, gl
        n_labels = int(max(ql.max(initial=-1), gl.max(initial=-1))) + 1
        labelled = gl >= 0
        order = np.flatnonzero(labelled)
        order = order[np.argsort(gl[order], kind="stable")]
        self._gorder = order
        self._gcount = np.bincount(gl[labelled], minlength=n_labels).astype(np.int64)
        self._gstart = np.concatenate([[0], np.cumsum(self._gcount)[:-1]]).astype(np.int64)
        self.shape = (ql.size, gl.size)
        if (query_ids is None) != (gallery_ids is None):
            raise ValueError("give both query_ids and gallery_ids, or neither")
        self._qid = self._gsorted = self._gidx = None
        if query_ids is not None:
            qid, gid = np.asarray(query_ids), np.asarray(gallery_ids)
            if qid.shape != (ql.size,) or gid.shape != (gl.size,):
                raise ValueError("ids must have one entry per query / gallery item")
            gidx = np.argsort(gid, kind="stable")
            gsorted = gid[gidx]
            if gsorted.size > 1 and np.any(gsorted[1:] == gsorted[:-1]):
                raise ValueError("gallery_ids must be unique")
            self._qid, self._gsorted, self._gidx = qid, gsorted, gidx

    @classmethod
    def leave_one_out(cls, labels) -> "LabelRelevance":
        """Every item is a query against all the others (itself ignored)."""
        n = len(labels)
        return cls(labels, labels, np.arange(n), np.arange(n))

    def block(self, start: int, stop: int):
        qlab = self._ql[start:stop]
        m = qlab.size
        has = qlab >= 0
        counts = np.zeros(m, np.int64)
        counts[has] = self._gcount[qlab[has]] if self._gcount.size else 0
        total = int(counts.sum())
        rows = np.repeat(np.arange(m, dtype=np.int64), counts)
        starts = np.zeros(m, np.int64)
        starts[has] = self._gstart[qlab[has]] if self._gstart.size else 0
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = self._gorder[np.repeat(starts, counts) + within]
        if self._qid is None or self._gsorted.size == 0:
            empty = np.zeros(0, np.int64)
            return rows, cols, empty, empty
        qid = self._qid[start:stop]
        pos = np.searchsorted(self._gsorted, qid)
        ok = pos < self._gsorted.size
        ok[ok] = self._gsorted[pos[ok]] == qid[ok]
        ign_rows = np.flatnonzero(ok).astype(np.int64)
        ign_cols = self._gidx[pos[ok]].astype(np.int64)
        return rows, cols, ign_rows, ign_cols

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """The full ``(relevant, ignore)`` boolean matrices (small problems only)."""
        rel = np.zeros(self.shape, bool)
        ign = np.zeros(self.shape, bool)
        r, c, ir, ic = self.block(0, self.shape[0])
        rel[r, c] = True
        ign[ir, ic] = True
        return rel, ign


def _label_codes(query_labels, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if ql.ndim != 1 or gl.ndim != 1:
        raise ValueError("labels must be 1-D")
    if ql.dtype.kind in "iu" and gl.dtype.kind in "iu":
        return ql.astype(np.int64), gl.astype(np.int64)
    codes: dict[Any, int] = {}

    def code(v) -> int:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return -1
        return codes.setdefault(v, len(codes))

    qc = np.fromiter((code(v) for v in ql.tolist()), np.int64, ql.size)
    gc = np.fromiter((code(v) for v in gl.tolist()), np.int64, gl.size)
    return qc, gc


class DenseRelevance:
    """Boolean ``relevant`` (and optional ``ignore``) matrices as a block source."""

    def __init__(self, relevant, ignore=None, shape=None):
        rel = np.asarray(relevant)
        if rel.ndim != 2:
            raise ValueError(f"relevant must be 2-D, got shape {rel.shape}")
        if shape is not None and rel.shape != tuple(shape):
            raise ValueError(f"relevant has shape {rel.shape}, scores have shape {tuple(shape)}")
        ign = None if ignore is None else np.asarray(ignore)
        if ign is not None and ign.shape != rel.shape:
            raise ValueError(f"ignore has shape {ign.shape}, relevant has shape {rel.shape}")
        self.rel, self.ign, self.shape = rel, ign, rel.shape

    def block(self, start, stop):
        r, c = np.nonzero(self.rel[start:stop])
        if self.ign is None:
            empty = np.zeros(0, np.int64)
            return r, c, empty, empty
        ir, ic = np.nonzero(self.ign[start:stop])
        return r, c, ir, ic


class _UnionIgnore:
    """A relevance source plus an extra dense ignore matrix."""

    def __init__(self, source, ignore):
        ign = np.asarray(ignore)
        if ign.shape != tuple(source.shape):
            raise ValueError(f"ignore has shape {ign.shape}, relevance has shape {tuple(source.shape)}")
        self.source, self.ign, self.shape = source, ign, tuple(source.shape)

    def block(self, start, stop):
        r, c, ir, ic = self.source.block(start, stop)
        er, ec = np.nonzero(self.ign[start:stop])
        return r, c, np.concatenate([ir, er]), np.concatenate([ic, ec])


def as_source(relevant, ignore, shape):
    """``relevant`` (a relevance source or a boolean matrix) plus an optional dense ``ignore`` as one
    source of ``shape``; a shape mismatch is a ``ValueError``."""
    if hasattr(relevant, "block") and hasattr(relevant, "shape"):
        if tuple(relevant.shape) != tuple(shape):
            raise ValueError(f"relevance has shape {tuple(relevant.shape)}, scores have shape {tuple(shape)}")
        return relevant if ignore is None else _UnionIgnore(relevant, ignore)
    return DenseRelevance(relevant, ignore, shape)


__all__ = ["DenseRelevance", "LabelRelevance", "as_source"]
