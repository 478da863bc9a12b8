"""The gallery in memory: what ranking and result display need, as numpy arrays kept in step
with the library, so that re-scoring a query's candidates makes no SQL round trip.

``GalleryArrays.load(library)`` reads, for every indexed (status ok) image with both an image
and a caption vector: its id, image vector (projected by the library's whitening, as the image
index and ``Library.gallery_vectors`` hold it), caption vector, caption weight
(``fusion.caption_weight`` of the active caption and the stored agreement), and for display
its path, size, active caption and detections. Rows are ordered by image id, so ``rows(ids)``
is one ``searchsorted``; re-scoring candidates is numpy fancy indexing. The vectors and weights
are exactly ``Library.gallery_vectors()`` (float32), so search and evaluation agree exactly.

It also keeps, for *every* ok image (with vectors or not), its path key and content hash, so
that a dropped query image is matched to its library image without asking the database.

**Kept in step.** An arrays object is immutable and records the ``stamp`` it was read under:
the database's change counter (``Catalog.ChangeCounter``: SQLite's ``data_version`` on a
connection of its own, which changes whenever any other connection, in this process or
another, commits) plus the whitening and the model ids. ``GalleryArraysHolder.current()``
compares the stamp with the library's (a PRAGMA on an open connection and a few attribute
reads: microseconds) and reloads the whole gallery when it changed, so stale arrays are never
used. The counter is read *before* loading, so a commit that lands during a load makes the
next ``current()`` load again.

**Memory** (float32): ``n * (image_dim + text_dim) * 4`` bytes for the vectors — at 100k images
with 1280-d image and 384-d caption vectors 512 + 154 MB — plus the per-image metadata (measured
in ``bench/query_latency.py``). ``dtype="float16"`` (setting ``search_vectors``) halves the vectors; re-scoring then differs
from the float32 scores by at most ``FLOAT16_MAX_ERROR`` for unit vectors (float16 rounding is
at most 2**-11 relative per component, so ``|q . (g - g16)| <= 2**-11 * sum|q_i g_i| <= 2**-11``
by Cauchy-Schwarz, and fused scores are convex combinations of the two cosines), and search no
longer equals evaluation bit for bit. float32 is the default.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import fusion
from .catalog import Catalog, ChangeCounter, GalleryMeta, path_key
from .errors import ExplorerError

#: bound on |float32 score - float16 score| for unit vectors (see the module docstring)
FLOAT16_MAX_ERROR = 2.0 ** -11
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class GalleryArrays:
    """One consistent snapshot of the gallery (see the module docstring). Never written after loading."""

    #: image ids with both vectors, ascending; row ``r`` of every per-row array is ``ids[r]``
    ids: np.ndarray
    image: np.ndarray
    caption: np.ndarray
    weights: np.ndarray
    #: display metadata, per row
    meta: GalleryMeta
    #: ``{path_key: image id}`` and ``{content hash: smallest image id}`` of every ok image
    id_by_key: dict
    id_by_hash: dict
    stamp: tuple
    load_s: float = 0.0
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy arrays (vectors, weights, detections); Python objects not counted."""
        return int(self.ids.nbytes + self.image.nbytes + self.caption.nbytes + self.weights.nbytes + self.meta.nbytes)

    @classmethod
    def load(cls, library, dtype: str = "float32", counter: ChangeCounter | None = None) -> "GalleryArrays":
        """Read the whole gallery of ``library`` (a few seconds at 100k images). ``counter``: the
        change counter whose value goes into the stamp (``GalleryArraysHolder`` passes its own)."""
        check_dtype(dtype)
        t0 = time.perf_counter()
        own = counter is None
        counter = ChangeCounter(library.store) if own else counter
        try:
            stamp = library_stamp(library, counter)  # before reading: a commit during the load makes the next check reload
        finally:
            if own:
                counter.close()
        im, tx = library.image_model, library.text_model
        store = library.store
        ids_i, mat_i = store.load_vectors("image", im.model_id, None)
        ids_c, mat_c = store.load_vectors("caption", tx.model_id, None)
        t_vec = time.perf_counter() - t0
        t1 = time.perf_counter()
        meta_all = Catalog(store).gallery_meta()
        t_meta = time.perf_counter() - t1
        common = np.intersect1d(np.intersect1d(ids_i, ids_c), meta_all.ids)
        if len(common):
            img = library.project_image(mat_i[np.searchsorted(ids_i, common)])
            cap = np.ascontiguousarray(mat_c[np.searchsorted(ids_c, common)], np.float32)
        else:
            img = np.zeros((0, library.image_dim), np.float32)
            cap = np.zeros((0, tx.dim), np.float32)
        meta = meta_all.take(np.searchsorted(meta_all.ids, common))
        weights = np.array([fusion.caption_weight(c.source, c.confidence, a) if c is not None else 0.0
                            for c, a in zip(meta.captions, meta.agreement)], np.float32)
        if dtype == "float16":
            img, cap = img.astype(np.float16), cap.astype(np.float16)
        else:
            img, cap = np.ascontiguousarray(img, np.float32), np.ascontiguousarray(cap, np.float32)
        id_by_key = dict(zip(meta_all.keys, meta_all.ids.tolist()))
        id_by_hash: dict[str, int] = {}
        for h, i in zip(meta_all.hashes, meta_all.ids.tolist()):  # ids ascending: the first one wins
            if h and h not in id_by_hash:
                id_by_hash[h] = i
        return cls(common.astype(np.int64), img, cap, weights, meta, id_by_key, id_by_hash, stamp,
                   time.perf_counter() - t0, {"vectors_s": t_vec, "meta_s": t_meta})

    def rows(self, ids) -> np.ndarray:
        """Row of each of ``ids`` (-1 where the gallery has no such image)."""
        ids = np.asarray(ids, np.int64)
        if not len(self.ids) or not len(ids):
            return np.full(len(ids), -1, np.int64)
        r = np.searchsorted(self.ids, ids)
        r = np.minimum(r, len(self.ids) - 1)
        return np.where(self.ids[r] == ids, r, -1)

    def vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 image and caption vectors of ``rows``."""
        return np.asarray(self.image[rows], np.float32), np.asarray(self.caption[rows], np.float32)

    def image_id(self, path) -> int | None:
        """The ok library image at ``path`` (any spelling of it), as ``Catalog.image_id`` finds it."""
        return self.id_by_key.get(path_key(path))


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExplorerError(f"search vectors must be one of {', '.join(DTYPES)} (setting search_vectors, "
                            f"EXPLORER_SEARCH_VECTORS), got {dtype!r}")
    return dtype


def row_scores(mat: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``mat @ vec`` for a candidate pool (a few hundred rows), without BLAS: a multi-threaded BLAS
    matrix-vector product wakes its worker threads for a few hundred microseconds of work, and on
    a loaded 2-core machine that wake-up took 20-30 ms (measured: 432 x 1280 + 432 x 384, gather
    and product 25 ms median with OpenBLAS' 2 threads, 0.09 ms with 1 thread, 0.16 ms with einsum)."""
    return np.einsum("ij,j->i", mat, vec)


def library_stamp(library, counter: ChangeCounter) -> tuple:
    """What the arrays of ``library`` depend on: its database change counter, whitening and models."""
    w = library.whitening
    return (counter.value(), w.tag if w is not None else None, library.image_model.model_id, library.text_model.model_id)


class GalleryArraysHolder:
    """The current ``GalleryArrays`` of one library: ``current()`` reloads when the library changed."""

    def __init__(self, library, dtype: str = "float32"):
        self.library = library
        self.dtype = check_dtype(dtype)
        self._arrays: GalleryArrays | None = None
        self._lock = threading.Lock()
        self._counter = ChangeCounter(library.store)
        #: how many times the gallery was read
        self.loads = 0

    def current(self) -> GalleryArrays:
        with self._lock:
            a = self._arrays
            if a is None or a.stamp != library_stamp(self.library, self._counter):
                a = self._arrays = GalleryArrays.load(self.library, self.dtype, self._counter)
                self.loads += 1
            return a

    def close(self) -> None:
        """Release the change counter's connection (the arrays stay readable)."""
        self._counter.close()

    def peek(self) -> GalleryArrays | None:
        """The arrays last loaded (possibly stale), without checking."""
        return self._arrays


__all__ = ["DTYPES", "FLOAT16_MAX_ERROR", "GalleryArrays", "GalleryArraysHolder", "library_stamp", "row_scores"]
