"""A memory-saving index: hnswlib over PCA-projected vectors, exact re-scoring from disk.

Resident: only an hnswlib index of ``R``-d projections (``R`` = 256 by default: 1M vectors take
about 1.1 GiB instead of 5.0 GiB at 1280-d). On disk: the full vectors in a memory-mapped float32
file whose row is the image id, so re-scoring a query's candidates touches only those rows.

- The projection is *uncentred* PCA (the top ``R`` right singular vectors of the stored vectors),
  so inner products are preserved for everything in the kept subspace: ``q·x ≈ (Pq)·(Px)``. It is
  learned from the gallery once the store holds :data:`FIT_MIN` vectors (from a sample of at most
  :data:`FIT_SAMPLE`); below that the store answers by exact search over the full vectors. When the
  store has grown :data:`REFIT_GROWTH` times past its size when fitted (or last loaded), it refits and
  rebuilds the projected index from the full vectors (no model runs). Fitting is lazy: a fit that
  falls due during ``upsert`` happens at the next ``search`` or ``save``, so a bulk load (a rebuild
  from the database, 1M vectors in chunks) writes the full vectors and builds the projected index
  once, instead of inserting projections that a refit throws away.
- ``search(q, k)`` asks the projected index for ``m = max(OVERSAMPLE * k, MIN_CANDIDATES)`` candidates
  (with a search beam ``ef >= CANDIDATE_EF * m``) and returns the top ``k`` by their exact inner
  product with the full vectors.
- ``candidates(q, m)`` (what the library's candidate pool asks for) returns the projected index's
  top ``max(m, MIN_CANDIDATES)`` ids without re-scoring them: the pool re-scores its union of
  candidates exactly from the gallery's own full vectors, so a query reads no row of this store's
  full-vector file (at 1M images a pool of 200 re-scored here would read 2,000 scattered rows of a
  5-7 GB file per index and query: under a memory limit, from disk).
- ``get_vectors`` returns full vectors, so the library's exact re-scoring is unchanged.
- The live ids (the store's and the projected index's) are :class:`~.liveids.LiveIds` bitmaps, a
  byte per id instead of ~60 bytes in a Python set: ~1 MiB each at 1M vectors instead of ~60 MiB.

Crash safety follows the other stores: full-vector rows and the live-id list are flushed before
the manifest is replaced, so the manifest can only be older than the data and syncing again is
idempotent. Any unreadable part makes ``load`` report a reason, and the store is rebuilt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
from pathlib import Path

import numpy as np

from ..index import VectorIndex, _fsync_file
from .base import ManifestSync
from .liveids import LiveIds

FIT_MIN = 1000
FIT_SAMPLE = 50_000
REFIT_GROWTH = 4.0
OVERSAMPLE = 10
#: candidates re-scored at least. Selected on *validation* queries by a rule fixed before the run:
#: the fewest of {100, 200, 400, 1000} (ef = CANDIDATE_EF x candidates) with recall@10 >= 0.95 on 400
#: real validation images (``bench/scale_million.py --val /tmp/m-val``, 1M generated vectors,
#: 2026-12-01 03:28 UTC): 100 gave 0.919, 200 gave 0.956 -> 200. The test queries were not used.
MIN_CANDIDATES = 200
#: the projected index searches with ``ef >= CANDIDATE_EF x candidates``: with ef = 128 for 100
#: candidates its beam missed true neighbours at 1M vectors (recall@10 0.85-0.88, while exact
#: projected search + re-scoring gives 0.99-1.00); 4x was the cheapest setting of
#: ``bench/scale_million.py``'s sweep reaching 0.95 on its generated queries (an earlier round)
CANDIDATE_EF = 4

log = logging.getLogger(__name__)


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Loading a projected index lists its labels through hnswlib (a Python list of every id, ~40 MiB
    at 1M) to build the bitmap; glibc keeps most of that freed memory resident (measured at 1M:
    1,293 MiB anonymous after load without this, 1,222 MiB with it)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fit_projection(x: np.ndarray, r: int) -> np.ndarray:
    """The ``r x d`` uncentred PCA basis (orthonormal rows) of the rows of ``x``."""
    x = np.asarray(x, np.float64)
    # eigenvectors of the d x d second-moment matrix == right singular vectors of x
    w, v = np.linalg.eigh(x.T @ x)
    return np.ascontiguousarray(v[:, np.argsort(w)[::-1][:r]].T, np.float32)


class ProjectedIndex(VectorIndex):
    """The hnswlib index of the projections, its live labels kept as a bitmap."""

    live_type = LiveIds


class ReducedStore(ManifestSync):
    def __init__(self, directory: Path, name: str, dim: int, r: int, source: dict | None = None):
        super().__init__(directory, name, dim, {**(source or {}), "pca": r}, suffix=f"pca{r}")
        self._live = LiveIds()
        self.r = r
        self.full_path = self.directory / f"{name}.full.f32"
        self.live_path = self.directory / f"{name}.pca{r}.live.npy"
        self.proj_path = self.directory / f"{name}.pca{r}.proj.npy"
        self.inner = ProjectedIndex(self.directory, f"{name}--pca{r}", r, self.manifest.source)
        self.proj: np.ndarray | None = None
        self.fit_n = 0
        self._full: np.memmap | None = None
        self._rows = 0
        self._refit = False

    # -- full vectors on disk ------------------------------------------------------------------------
    def _open_full(self, rows: int) -> None:
        """Map the full-vector file with room for at least ``rows`` rows (grows by 1.5x)."""
        if self._full is not None and rows <= self._rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        have = self.full_path.stat().st_size // (4 * self.dim) if self.full_path.exists() else 0
        want = max(rows, have, int(self._rows * 1.5), 1024)
        if self._full is not None:
            self._full.flush()
            self._full = None
        with open(self.full_path, "ab") as f:
            f.truncate(want * 4 * self.dim) if have < want else None
        self._full = np.memmap(self.full_path, np.float32, "r+", shape=(want, self.dim))
        self._rows = want
        try:  # re-scoring reads scattered rows: no read-ahead, so only the rows read become resident
            self._full._mmap.madvise(mmap.MADV_RANDOM)
        except (AttributeError, OSError, ValueError):
            pass

    # -- life cycle -------------------------------------------------------------------------------
    def _reset(self) -> None:
        with self.lock:
            self._full = None
            self._rows = 0
            for p in (self.full_path, self.live_path, self.proj_path, self.inner.path, self.inner.manifest_path):
                p.unlink(missing_ok=True)
            self.inner = ProjectedIndex(self.directory, self.inner.name, self.r, self.manifest.source)
            self.proj, self.fit_n, self._live = None, 0, LiveIds()

    def load(self) -> str | None:
        with self.lock:
            manifest, reason = self._read_manifest()
            if reason:
                return reason
            try:
                live = LiveIds(np.load(self.live_path))
                rows = self.full_path.stat().st_size // (4 * self.dim)
                if live.max() >= rows:
                    return "full-vector file is shorter than the ids it should hold"
                proj = np.load(self.proj_path) if self.proj_path.exists() else None
            except (OSError, ValueError) as e:
                return f"unreadable reduced index ({e})"
            if proj is not None:
                if proj.shape != (self.r, self.dim):
                    return "projection has the wrong shape"
                why = self.inner.load()
                if why:
                    return f"projected index: {why}"
                if self.inner.live_ids() != live:
                    return "projected index and full vectors disagree"
            self.manifest, self._live, self.proj = manifest, live, proj
            self.fit_n = len(live) if proj is not None else 0
            self._full, self._rows = None, 0
            if rows:
                self._open_full(rows)
            self._loaded = True
            _return_free_heap()
            return None

    def _ensure(self) -> None:
        if not self._loaded:
            if self.load():
                self._reset()
                self.manifest.seq_high = 0
            self._loaded = True

    def save(self) -> None:
        with self.lock:
            if not self._loaded:
                return
            if self._refit:
                self._fit()
            if self._full is not None:
                self._full.flush()
                _fsync_file(self.full_path)
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.live_path.with_name(self.live_path.name + ".tmp.npy")
            np.save(tmp, self._live.ids())
            os.replace(tmp, self.live_path)
            if self.proj is not None:
                tmp = self.proj_path.with_name(self.proj_path.name + ".tmp.npy")
                np.save(tmp, self.proj)
                os.replace(tmp, self.proj_path)
                self.inner.save()
            self._write_manifest()

    # -- the projection ---------------------------------------------------------------------------
    def _fit(self) -> None:
        ids = self._live.ids()
        if len(ids) < FIT_MIN:  # deletions took it below the fitting size: exact search again
            self.proj, self.fit_n, self._refit = None, 0, False
            self.inner = ProjectedIndex(self.directory, self.inner.name, self.r, self.manifest.source)
            self.proj_path.unlink(missing_ok=True)
            return
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(ids, FIT_SAMPLE, replace=False)) if len(ids) > FIT_SAMPLE else ids
        self.proj = fit_projection(self._full[sample], self.r)
        self.inner = ProjectedIndex(self.directory, self.inner.name, self.r, self.manifest.source)
        for s in range(0, len(ids), 50_000):
            chunk = ids[s:s + 50_000]
            self.inner.upsert(chunk, self._full[chunk] @ self.proj.T)
            log.info("%s: projected index %d/%d", self.name, s + len(chunk), len(ids))
        self.fit_n, self._refit = len(ids), False

    # -- contents ------------------------------------------------------------------------------------
    def upsert(self, ids, vectors) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, np.float32).reshape(len(ids), self.dim)
        with self.lock:
            self._ensure()
            self._open_full(int(ids.max()) + 1)
            self._full[ids] = vecs
            self._live.update(ids)
            if self._refit:
                return  # the due (re)fit rebuilds the projected index from the full vectors
            if self.proj is not None and len(self._live) <= REFIT_GROWTH * max(self.fit_n, 1):
                self.inner.upsert(ids, vecs @ self.proj.T)
            elif len(self._live) >= FIT_MIN:
                self._refit = True

    def delete(self, ids) -> int:
        with self.lock:
            self._ensure()
            todo = [int(i) for i in ids if int(i) in self._live]
            self._live.difference_update(todo)
            if self.proj is not None and not self._refit:
                self.inner.delete(todo)
            return len(todo)

    def get_vectors(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        with self.lock:
            self._ensure()
            return np.array(self._full[ids], np.float32) if len(ids) else np.zeros((0, self.dim), np.float32)

    # -- search -----------------------------------------------------------------------------------------
    def _projected(self, q: np.ndarray, m: int, ef: int | None = None) -> np.ndarray | None:
        """The projected index's top ``m`` ids (beam ``ef >= CANDIDATE_EF x m``), fitting first if a
        fit is due; ``None`` while there is no projection (below the fitting size). Under the lock."""
        if self._refit:
            self._fit()
        if self.proj is None:
            return None
        return self.inner.search(self.proj @ q, m, max(ef or self.inner.ef, CANDIDATE_EF * m))[0]

    def candidates(self, query, m):
        """The projected index's top ``max(m, MIN_CANDIDATES)`` ids, *not* re-scored here: the
        caller (the library's candidate pool) re-scores them exactly from its own copy of the full
        vectors, so a query reads no row of this store's full-vector file. Below the fitting size
        (no projection yet) this is exact search."""
        q = np.asarray(query, np.float32).reshape(-1)
        with self.lock:
            self._ensure()
            n = len(self._live)
            if n == 0 or m <= 0:
                return np.zeros(0, np.int64)
            cand = self._projected(q, min(max(m, MIN_CANDIDATES), n))
            return self.search(q, m)[0] if cand is None else cand

    def search(self, query, k, ef=None):
        q = np.asarray(query, np.float32).reshape(-1)
        with self.lock:
            self._ensure()
            n = len(self._live)
            if n == 0 or k <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            k = min(k, n)
            cand = self._projected(q, max(OVERSAMPLE * k, MIN_CANDIDATES), ef)
            cand = np.sort(self._live.ids() if cand is None else cand)
            scores = np.asarray(self._full[cand] @ q, np.float32)
        top = np.argsort(-scores, kind="stable")[:k]
        return cand[top], scores[top]
