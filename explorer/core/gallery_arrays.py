"""The gallery in memory: what ranking and result display need, as numpy arrays kept in step
with the library, so that re-scoring a query's candidates makes no SQL round trip.

``GalleryArrays.load(library)`` reads from the database, for every indexed (status ok) image with both an image
and a caption vector: its id, image vector (projected by the library's whitening, as the image
index and ``Library.gallery_vectors`` hold it), caption vector, caption weight
(``fusion.caption_weight`` of the active caption and the stored agreement), and for display
its path, size, active caption and detections. Rows are ordered by image id, so ``rows(ids)``
is one ``searchsorted``; re-scoring candidates is numpy fancy indexing. The vectors and weights
are exactly ``Library.gallery_vectors()`` (float32), so search and evaluation agree exactly.

It also keeps, for *every* ok image (with vectors or not), its path key and content hash, so
that a dropped query image is matched to its library image without asking the database.

**On disk, between processes** (``gallery_cache``): ``GalleryArrays.open`` (what the searcher
uses) opens the library's cached arrays when their key — the persistent gallery generation that
SQLite triggers move on every write, the whitening, the model ids — matches exactly, and
otherwise reads the gallery from the database (``read_arrays``; ``load`` does only that),
stores it for the next process and re-opens it memory-mapped. So a one-shot ``explorer search``
reads the gallery from SQL only after the library changed, and resident memory is the pages
re-scoring touches. The metadata is columnar (texts as blobs and offsets, look-ups by bisection:
``gallery_cache.CompactMeta``, ``SortedLookup``); rows become Python objects only when asked for.

**Kept in step.** An arrays object is immutable and records the ``stamp`` it was read under:
the database's change counter (``Catalog.ChangeCounter``: SQLite's ``data_version`` on a
connection of its own, which changes whenever any other connection, in this process or
another, commits) plus the whitening and the model ids. ``GalleryArraysHolder.current()``
compares the stamp with the library's (a PRAGMA on an open connection and a few attribute
reads: microseconds) and re-opens the gallery when it changed, so stale arrays are never
used. The counter is read *before* loading, so a commit that lands during a load makes the
next ``current()`` load again.

**Memory** (float32): ``n * (image_dim + text_dim) * 4`` bytes for the vectors — at 100k images
with 1280-d image and 384-d caption vectors 512 + 154 MB — plus the per-image metadata (measured
in ``bench/gallery_cache.py``); resident only where touched when memory-mapped from the cache,
in full when read without it (a library whose cache cannot be written). ``dtype="float16"`` (setting ``search_vectors``) halves the vectors; re-scoring then differs
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

from . import fusion, gallery_cache
from .catalog import Catalog, ChangeCounter, path_key
from .gallery_cache import CompactMeta, SortedLookup, StrColumn
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
    #: display metadata, per row (``gallery_cache.CompactMeta``: paths, sizes, captions, detections)
    meta: CompactMeta
    #: ``get(path_key)`` -> image id, ``get(content hash)`` -> smallest image id, of every ok image
    id_by_key: SortedLookup
    id_by_hash: SortedLookup
    stamp: tuple
    load_s: float = 0.0
    timings: dict = field(default_factory=dict)
    #: where the arrays came from: ``sql`` (read from the database), ``cache`` (an existing cache
    #: file), ``sql+cache`` (read from the database, then stored and re-opened from the cache)
    source: str = "sql"
    #: every array by name (what the cache stores)
    arrays: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays (vectors, weights, metadata columns); memory-mapped ones count
        in full here, though only their touched pages are resident."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def mapped(self) -> bool:
        """Whether the vectors are memory-mapped from the cache (else held in memory)."""
        return isinstance(self.image, np.memmap)

    @classmethod
    def load(cls, library, dtype: str = "float32", counter: ChangeCounter | None = None) -> "GalleryArrays":
        """Read the whole gallery of ``library`` from the database into memory (a few seconds at 100k
        images; no cache). ``counter``: the change counter whose value goes into the stamp."""
        check_dtype(dtype)
        t0 = time.perf_counter()
        stamp = _stamp(library, counter)
        arrays, timings = read_arrays(library, dtype)
        return cls.from_arrays(arrays, stamp, time.perf_counter() - t0, timings, "sql")

    @classmethod
    def open(cls, library, dtype: str = "float32", counter: ChangeCounter | None = None, cache: bool = True) -> "GalleryArrays":
        """The gallery of ``library``: from its cache (``gallery_cache``) when one is valid, else read
        from the database (``load``) and, with ``cache``, stored for the next process and re-opened
        memory-mapped. A cache that cannot be written or is damaged is never an error."""
        check_dtype(dtype)
        t0 = time.perf_counter()
        stamp = _stamp(library, counter)  # first: a commit after this makes the next check reload
        key = gallery_cache.cache_key(library, dtype) if cache else None
        root = gallery_cache.cache_root(library)
        if key is not None:
            arrays = gallery_cache.read(root, key)
            if arrays is not None:
                return cls.from_arrays(arrays, stamp, time.perf_counter() - t0, {"cache_s": time.perf_counter() - t0}, "cache")
        arrays, timings = read_arrays(library, dtype)
        source = "sql"
        # stored only when no gallery write committed while reading (the generation is unchanged)
        if key is not None and library.store.gallery_generation() == key["generation"]:
            t1 = time.perf_counter()
            if gallery_cache.write(root, key, arrays) is not None:
                mapped = gallery_cache.read(root, key)
                if mapped is not None:
                    arrays, source = mapped, "sql+cache"
            timings["cache_write_s"] = time.perf_counter() - t1
        return cls.from_arrays(arrays, stamp, time.perf_counter() - t0, timings, source)

    @classmethod
    def from_arrays(cls, a: dict, stamp: tuple, load_s: float = 0.0, timings: dict | None = None, source: str = "sql") -> "GalleryArrays":
        """The gallery over the named arrays ``a`` (as ``read_arrays`` makes them or the cache maps them)."""
        return cls(a["ids"], a["image"], a["caption"], a["weights"], CompactMeta(a),
                   SortedLookup(StrColumn(a["key_off"], a["key"], raw=True), a["key_ids"]),
                   SortedLookup(StrColumn(a["hash_off"], a["hash"], raw=True), a["hash_ids"]),
                   stamp, load_s, timings or {}, source, a)

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


def _stamp(library, counter: ChangeCounter | None) -> tuple:
    own = counter is None
    counter = ChangeCounter(library.store) if own else counter
    try:
        return library_stamp(library, counter)
    finally:
        if own:
            counter.close()


def read_arrays(library, dtype: str) -> tuple[dict[str, np.ndarray], dict]:
    """Every array of the gallery of ``library``, read from the database (module docstring), and
    how long the vectors and the metadata took."""
    t0 = time.perf_counter()
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
    a = {"ids": common.astype(np.int64), "image": img, "caption": cap, "weights": weights}
    a.update(CompactMeta.encode(meta))
    all_ids = meta_all.ids.tolist()
    a["key_off"], a["key"], a["key_ids"] = SortedLookup.encode(zip(meta_all.keys, all_ids))
    a["hash_off"], a["hash"], a["hash_ids"] = SortedLookup.encode((h.encode(), i) for h, i in zip(meta_all.hashes, all_ids) if h)
    return a, {"vectors_s": t_vec, "meta_s": t_meta, "encode_s": time.perf_counter() - t0 - t_vec - t_meta}


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

    def __init__(self, library, dtype: str = "float32", cache: bool = True):
        """``cache``: use and write the library's on-disk gallery cache (``gallery_cache``)."""
        self.library = library
        self.dtype = check_dtype(dtype)
        self.cache = cache
        self._arrays: GalleryArrays | None = None
        self._lock = threading.Lock()
        self._counter = ChangeCounter(library.store)
        #: how many times the gallery was read
        self.loads = 0

    def current(self) -> GalleryArrays:
        with self._lock:
            a = self._arrays
            if a is None or a.stamp != library_stamp(self.library, self._counter):
                a = self._arrays = GalleryArrays.open(self.library, self.dtype, self._counter, self.cache)
                self.loads += 1
            return a

    def close(self) -> None:
        """Release the change counter's connection (the arrays stay readable)."""
        self._counter.close()

    def peek(self) -> GalleryArrays | None:
        """The arrays last loaded (possibly stale), without checking."""
        return self._arrays


__all__ = ["DTYPES", "FLOAT16_MAX_ERROR", "GalleryArrays", "GalleryArraysHolder", "library_stamp", "row_scores"]
