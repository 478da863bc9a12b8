"""2-D maps of a library for one representation (image, caption, fused, learned).

``gallery_map`` returns a :class:`GalleryMap`: one 2-D point per indexed image plus what the
map colours by (ground-truth label = the image's folder name, caption source, caption weight,
cluster) and what hover shows (path, caption). The projection is

- **UMAP** (cosine metric) when ``umap-learn`` is installed (the ``umap`` extra) and asked for,
- **PCA** otherwise (the default: fast, deterministic), via the eigenvectors of the ``d x d``
  covariance computed in row chunks; above ``FIT_ROWS`` images the components are fitted on a
  seeded random sample of that many rows, and every image is projected.

Clusters are k-means (k-means++ seeding, fixed seed) on the first ``CLUSTER_DIMS`` principal
components. Results are cached in ``LIBRARY/cache/maps`` keyed by a stamp of the gallery
(``Store.gallery_stamp``), the representation, its models, alpha, the head and the method,
so a map is computed once until the gallery changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import fusion
from .blas import one_thread
from .errors import Cancelled, ExplorerError
from .modes import CAPTION, FUSED, HEAD, IMAGE, INDEXED, LEARNED

#: what a map can show: the vectors of every mode (the indexed ones, then those a head adds)
REPRESENTATIONS = INDEXED + HEAD
METHODS = ("pca", "umap")
COLOUR_BY = ("label", "caption source", "caption weight", "cluster")
CLUSTER_DIMS = 32
DEFAULT_CLUSTERS = 10
CACHE_VERSION = "1"
#: PCA components are fitted on at most this many rows (a seeded sample beyond), then all rows are projected
FIT_ROWS = 10000


def umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


@dataclass
class GalleryMap:
    """Everything the embedding map draws, one entry per image (all arrays aligned)."""

    representation: str
    method: str
    ids: np.ndarray  # (n,) int64
    xy: np.ndarray  # (n, 2) float32
    paths: list[str]
    labels: list[str]  # folder name
    caption_sources: list[str]
    captions: list[str]
    weights: np.ndarray  # (n,) caption weight in [0, 1]
    clusters: np.ndarray  # (n,) int
    elapsed_s: float = 0.0
    cached: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def categories(self, colour_by: str) -> tuple[list[str], np.ndarray]:
        """For a categorical colouring: (category names, per-point category index)."""
        if colour_by == "label":
            values = self.labels
        elif colour_by == "caption source":
            values = self.caption_sources
        elif colour_by == "cluster":
            values = [f"cluster {c}" for c in self.clusters.tolist()]
        else:
            raise ExplorerError(f"'{colour_by}' is not a categorical colouring; choose from label, caption source, cluster")
        names = sorted(set(values))
        code = {n: i for i, n in enumerate(names)}
        return names, np.fromiter((code[v] for v in values), np.int64, len(values))


# -- projections (pure numpy) ----------------------------------------------------------------

def pca(X: np.ndarray, n_components: int = 2, chunk: int = 16384, fit_rows: int = FIT_ROWS, seed: int = 0) -> np.ndarray:
    """Scores on the top principal components (sign fixed so each axis' largest |loading| is positive).

    The components are fitted on all rows up to ``fit_rows`` (exact PCA), else on a seeded
    random sample of ``fit_rows`` rows; every row is then projected.
    """
    X = np.asarray(X, np.float32)
    n, d = X.shape
    if n == 0:
        return np.zeros((0, n_components), np.float32)
    F = X if n <= fit_rows else X[np.sort(np.random.default_rng(seed).choice(n, fit_rows, replace=False))]
    mean = F.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), np.float64)
    for s in range(0, len(F), chunk):
        B = F[s:s + chunk] - mean.astype(np.float32)
        cov += B.T @ B  # float32 products per chunk, float64 sum over chunks
    # LAPACK on small matrices with one thread: the threaded eigh/qr spun 13 s where one took 1 s (bench/views_speed.py)
    with one_thread():
        V = _top_eigenvectors(cov, min(n_components, d), seed)
    V *= np.sign(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])])
    out = np.empty((n, V.shape[1]), np.float32)
    m32, V32 = mean.astype(np.float32), V.astype(np.float32)
    for s in range(0, n, chunk):
        out[s:s + chunk] = (X[s:s + chunk] - m32) @ V32
    if out.shape[1] < n_components:  # fewer dimensions than components asked for
        out = np.pad(out, ((0, 0), (0, n_components - out.shape[1])))
    return out


def _top_eigenvectors(C: np.ndarray, k: int, seed: int = 0, exact_dims: int = 256, iters: int = 12) -> np.ndarray:
    """The ``k`` leading eigenvectors (columns, by decreasing eigenvalue) of a symmetric PSD matrix.

    Small matrices: exact ``eigh``. Larger ones: block subspace iteration with ``k + 10`` columns
    (a few ``d x d`` by ``d x (k+10)`` products), then an exact small eigenproblem — a full
    1280 x 1280 ``eigh`` costs seconds on a loaded CPU for only 2-32 wanted vectors.
    """
    d = C.shape[0]
    if d <= exact_dims:
        _, V = np.linalg.eigh(C)
        return V[:, ::-1][:, :k]
    Q = np.random.default_rng(seed).normal(size=(d, min(d, k + 10)))
    Q, _ = np.linalg.qr(Q)
    for _ in range(iters):
        Q, _ = np.linalg.qr(C @ Q)
    w, U = np.linalg.eigh(Q.T @ C @ Q)
    return (Q @ U[:, ::-1])[:, :k]


def kmeans(X: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Cluster index per row (k-means++ seeding, Lloyd iterations)."""
    X = np.asarray(X, np.float32)
    n = len(X)
    k = max(1, min(k, n))
    if n == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    sample = X[rng.choice(n, min(n, 20000), replace=False)] if n > 20000 else X
    centres = [sample[rng.integers(len(sample))]]
    d2 = ((sample - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(sample[rng.choice(len(sample), p=p)])
        d2 = np.minimum(d2, ((sample - centres[-1]) ** 2).sum(1))
    C = np.stack(centres)
    assign = np.zeros(n, np.int64)
    for _ in range(iters):
        dist = (X ** 2).sum(1)[:, None] - 2 * X @ C.T + (C ** 2).sum(1)[None, :]
        new = dist.argmin(1)
        if _ and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            m = assign == j
            if m.any():
                C[j] = X[m].mean(0)
    return assign


def project(X: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, 2) float32 coordinates."""
    if method not in METHODS:
        raise ExplorerError(f"unknown projection '{method}'; choose from {', '.join(METHODS)}")
    if method == "umap":
        if not umap_available():
            raise ExplorerError("UMAP needs the optional package umap-learn: pip install 'retrieval-explorer[umap]'")
        import umap

        if len(X) < 4:
            return pca(X, 2)
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=min(15, len(X) - 1))
        return np.asarray(reducer.fit_transform(np.asarray(X, np.float32)), np.float32)
    return pca(X, 2)


# -- library glue -------------------------------------------------------------------------------

def representation_vectors(library, representation: str, ids=None, head=None):
    """(ids, vectors, caption weights) of the gallery for one representation."""
    if representation not in REPRESENTATIONS:
        raise ExplorerError(f"unknown representation '{representation}'; choose from {', '.join(REPRESENTATIONS)}")
    if representation == LEARNED and head is None:
        raise ExplorerError("the learned representation needs a fusion head (File ▸ Load fusion head, or --head)")
    g = library.gallery_vectors(ids)
    if representation == IMAGE:
        X = g.image
    elif representation == CAPTION:
        X = g.caption
    elif representation == FUSED:
        X = fusion.fuse_gallery(g.image, g.caption, library.fused_index_alpha, g.weights, library.shared_space)
    else:
        from .learned import learned_vectors_for_eval

        X = learned_vectors_for_eval(head, library, g.ids.tolist())
    return g.ids, np.asarray(X, np.float32), g.weights


def cache_key(library, representation: str, method: str, head=None, clusters: int = DEFAULT_CLUSTERS) -> str:
    parts = {
        "v": CACHE_VERSION, "stamp": library.store.gallery_stamp(), "rep": representation, "method": method,
        "image": library.image_model.model_id, "text": library.text_model.model_id, "clusters": clusters,
        "alpha": library.fused_index_alpha if representation == FUSED else None,
        "head": getattr(head, "fingerprint", None) if representation == LEARNED else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _cache_path(library, representation: str, key: str) -> Path:
    return Path(library.dir) / "cache" / "maps" / f"{representation}-{key}.npz"


def gallery_map(library, representation: str = IMAGE, method: str | None = None, head=None,
                clusters: int = DEFAULT_CLUSTERS, use_cache: bool = True,
                progress: Callable[[str, float], None] | None = None, cancel: threading.Event | None = None) -> GalleryMap:
    """The 2-D map of the library for ``representation`` (cached until the gallery changes).

    ``method`` None = UMAP when installed, else PCA.
    """
    emit = progress or (lambda msg, frac: None)

    def check():
        if cancel is not None and cancel.is_set():
            raise Cancelled("map cancelled")

    t0 = time.perf_counter()
    method = method or ("umap" if umap_available() else "pca")
    if method not in METHODS:
        raise ExplorerError(f"unknown projection '{method}'; choose from {', '.join(METHODS)}")
    emit("reading the catalog", 0.0)
    catalog = {iid: (path, folder) for iid, path, folder, _ in library.store.image_catalog()}
    captions = library.store.active_captions()
    key = cache_key(library, representation, method, head, clusters)
    path = _cache_path(library, representation, key)
    xy = cl = None
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                ids, xy, cl, weights = z["ids"], z["xy"], z["clusters"], z["weights"]
        except (OSError, ValueError, KeyError):
            xy = None  # a damaged cache is recomputed
    cached = xy is not None
    if not cached:
        check()
        emit("loading vectors", 0.1)
        ids, X, weights = representation_vectors(library, representation, head=head)
        if len(ids) == 0:
            raise ExplorerError("the library has no indexed images yet: index a folder first")
        check()
        emit(f"projecting {len(ids)} points ({method.upper()})", 0.4)
        P = pca(X, max(2, min(CLUSTER_DIMS, X.shape[1])))  # one PCA serves the PCA map and the clustering
        xy = P[:, :2].copy() if method == "pca" else project(X, method)
        check()
        emit("clustering", 0.8)
        cl = kmeans(P, clusters)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=ids, xy=xy, clusters=cl, weights=weights)
        os.replace(tmp, path)
        for old in path.parent.glob(f"{representation}-*.npz"):  # only the current map per representation is kept
            if old != path:
                old.unlink(missing_ok=True)
    keep = np.array([int(i) in catalog for i in ids.tolist()], bool)
    ids, xy, cl, weights = ids[keep], xy[keep], cl[keep], weights[keep]
    emit("done", 1.0)
    return GalleryMap(
        representation, method, ids.astype(np.int64), np.asarray(xy, np.float32),
        [catalog[int(i)][0] for i in ids.tolist()],
        [os.path.basename(catalog[int(i)][1]) for i in ids.tolist()],
        [captions.get(int(i), ("none", ""))[0] for i in ids.tolist()],
        [captions.get(int(i), ("none", ""))[1] for i in ids.tolist()],
        np.asarray(weights, np.float32), np.asarray(cl, np.int64), time.perf_counter() - t0, cached)
