"""Exact and near-duplicate groups of a library's images.

- **Exact duplicates**: indexed images with the same content hash (the hash the indexer
  stores for every file).
- **Near duplicates**: images whose image vectors have cosine similarity >= ``threshold``.
  Pairs come from the hnswlib image index, ``k`` nearest neighbours per image (one batched
  k-NN query per chunk of images, never an n^2 loop), and are joined into groups with
  union-find, so a group may be larger than ``k`` (chains of near neighbours join).

A group lists its members by image id (ascending); the first member is the group's
*representative*. ``DuplicateReport.exclusions()`` gives the ids that evaluation leaves out
when duplicates are excluded: every member except the representative, so each duplicate
group counts once.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import Cancelled, ExplorerError
from .modes import IMAGE

#: Default cosine-similarity threshold for near duplicates. On the sample gallery (EffNet-Lite0 GeM)
#: edited copies have >= 0.79 with their original and different photos <= 0.64 (README).
DEFAULT_THRESHOLD = 0.75
DEFAULT_K = 10
CHUNK = 2048
KINDS = ("exact", "near")


@dataclass
class DuplicateGroup:
    kind: str  # "exact" or "near"
    ids: list[int]
    paths: list[str]
    #: lowest similarity of the edges that joined the group (1.0 for exact duplicates)
    min_similarity: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ids": self.ids, "paths": self.paths, "min_similarity": round(float(self.min_similarity), 4)}


@dataclass
class DuplicateReport:
    threshold: float
    k: int
    n_images: int
    groups: list[DuplicateGroup] = field(default_factory=list)
    elapsed_s: float = 0.0

    def exclusions(self) -> set[int]:
        """Ids to leave out of evaluation: all but the representative (first) of every group."""
        out: set[int] = set()
        for g in self.groups:
            out.update(g.ids[1:])
        return out

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for g in self.groups if g.kind == kind) for kind in KINDS}

    def to_json(self) -> str:
        return json.dumps({
            "schema": "retrieval-explorer/duplicates/v1", "threshold": self.threshold, "k": self.k,
            "n_images": self.n_images, "n_groups": len(self.groups), "n_excluded": len(self.exclusions()),
            "elapsed_s": round(self.elapsed_s, 3), "groups": [g.to_dict() for g in self.groups],
        }, indent=1)

    def summary_lines(self) -> list[str]:
        c = self.counts()
        lines = [f"{self.n_images} images: {c['exact']} exact-duplicate groups, {c['near']} near-duplicate groups "
                 f"(cosine >= {self.threshold:.3f}); {len(self.exclusions())} images would be excluded from evaluation"]
        for g in self.groups:
            lines.append(f"{g.kind} ({len(g.ids)} images, min similarity {g.min_similarity:.3f}):")
            lines.extend(f"    {p}" for p in g.paths)
        return lines


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:  # path compression
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not np.isfinite(t) or not -1.0 <= t <= 1.0:
        raise ExplorerError(f"duplicate threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return t


def near_duplicate_pairs(index, ids: np.ndarray, threshold: float, k: int = DEFAULT_K,
                         progress: Callable[[float], None] | None = None, cancel: threading.Event | None = None,
                         num_threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b, similarity) with a < b among ``ids``, from ``k``-NN queries on a :class:`VectorIndex`.

    The index is an inner-product index over unit vectors, so similarity = cosine. Each image
    is queried once, in chunks, against the whole index; neighbours outside ``ids`` are dropped.
    """
    threshold = check_threshold(threshold)
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    kk = min(k + 1, len(index))
    wanted = np.sort(ids)
    A, B, S = [], [], []
    for s in range(0, n, CHUNK):
        if cancel is not None and cancel.is_set():
            raise Cancelled("duplicate search cancelled")
        chunk = ids[s:s + CHUNK]
        with index.lock:
            vecs = index.get_vectors(chunk)
            index.index.set_ef(max(index.ef, kk))
            labels, dist = index.index.knn_query(vecs, k=kk, num_threads=num_threads)
        sim = 1.0 - dist
        src = np.repeat(chunk, kk)
        lab = labels.reshape(-1).astype(np.int64)
        sim = sim.reshape(-1)
        keep = (sim >= threshold) & (lab != src)
        pos = np.searchsorted(wanted, lab)
        keep &= (pos < n) & (wanted[np.minimum(pos, n - 1)] == lab)
        a, b = np.minimum(src[keep], lab[keep]), np.maximum(src[keep], lab[keep])
        A.append(a)
        B.append(b)
        S.append(sim[keep].astype(np.float32))
        if progress is not None:
            progress(min(1.0, (s + len(chunk)) / n))
    a, b, sim = np.concatenate(A), np.concatenate(B), np.concatenate(S)
    if len(a):  # each pair once (both ends usually find each other)
        key = a * (int(wanted.max()) + 1) + b
        _, first = np.unique(key, return_index=True)
        a, b, sim = a[first], b[first], sim[first]
    return a, b, sim


def group_pairs(ids: np.ndarray, a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> list[tuple[list[int], float]]:
    """Connected components (size >= 2) of the pair graph: [(sorted member ids, min edge similarity)]."""
    ids = np.sort(np.asarray(ids, np.int64))
    if len(a) == 0:
        return []
    uf = _UnionFind(len(ids))
    ia, ib = np.searchsorted(ids, a), np.searchsorted(ids, b)
    for x, y in zip(ia.tolist(), ib.tolist()):
        uf.union(x, y)
    members: dict[int, list[int]] = {}
    for i in np.unique(np.concatenate([ia, ib])).tolist():
        members.setdefault(uf.find(i), []).append(int(ids[i]))
    low: dict[int, float] = {}
    for x, s in zip(ia.tolist(), sim.tolist()):
        r = uf.find(x)
        low[r] = min(low.get(r, 1.0), float(s))
    return [(sorted(m), low[r]) for r, m in sorted(members.items()) if len(m) >= 2]


def find_duplicates(library, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K, near: bool = True,
                    progress: Callable[[str, float], None] | None = None, cancel: threading.Event | None = None) -> DuplicateReport:
    """Exact groups (same content hash), then near-duplicate groups among the rest of the library.

    An exact group is also one node of the near-duplicate graph (its representative), so an
    image never appears in two groups: a near-duplicate group can contain exact duplicates'
    representatives, and its ``ids`` then lists only those.
    """
    threshold = check_threshold(threshold)
    if k < 1:
        raise ExplorerError(f"k must be at least 1, got {k}")
    emit = progress or (lambda msg, frac: None)
    t0 = time.perf_counter()
    emit("reading the catalog", 0.0)
    catalog = library.store.image_catalog()
    path_of = {iid: path for iid, path, _, _ in catalog}
    by_hash: dict[str, list[int]] = {}
    for iid, _, _, h in catalog:
        if h:
            by_hash.setdefault(h, []).append(iid)
    groups = [DuplicateGroup("exact", sorted(m), [path_of[i] for i in sorted(m)], 1.0)
              for m in by_hash.values() if len(m) >= 2]
    hidden = {i for g in groups for i in g.ids[1:]}
    if near:
        emit("syncing the image index", 0.05)
        library.sync_indices(save=False)
        index = library.index(IMAGE)
        with index.lock:
            live = np.array(sorted(index.live_ids()), np.int64)
        ids = live[~np.isin(live, np.fromiter(hidden, np.int64, len(hidden)))] if hidden else live
        a, b, sim = near_duplicate_pairs(index, ids, threshold, k, progress=lambda f: emit("searching neighbours", 0.1 + 0.85 * f),
                                         cancel=cancel)
        for members, low in group_pairs(ids, a, b, sim):
            groups.append(DuplicateGroup("near", members, [path_of.get(i, f"#{i}") for i in members], low))
    groups.sort(key=lambda g: (g.kind != "exact", -len(g.ids), g.ids[0]))
    emit("done", 1.0)
    return DuplicateReport(threshold, k, len(catalog), groups, time.perf_counter() - t0)
