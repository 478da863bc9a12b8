"""The default backend: :class:`explorer.core.index.VectorIndex` (hnswlib) behind the store contract.

The wrapper adds nothing to how vectors are kept; it only adapts names (``neighbours``) and
forwards everything else, so code and tests that reach the hnswlib object (``store.index``)
keep working.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..index import VectorIndex
from .base import VectorStore, canonical_top, fetch_k


class HnswlibStore(VectorStore):
    def __init__(self, directory: Path, name: str, dim: int, source: dict | None = None):
        self.__dict__["_vi"] = VectorIndex(directory, name, dim, source)

    # everything the wrapped index has (index, path, manifest, ef, lock, name, dim...) is forwarded
    def __getattr__(self, item):
        return getattr(self.__dict__["_vi"], item)

    def __setattr__(self, key, value):
        setattr(self._vi, key, value)

    @property
    def name(self):
        return self._vi.name

    @property
    def dim(self):
        return self._vi.dim

    @property
    def lock(self):
        return self._vi.lock

    @property
    def ef(self):
        return self._vi.ef

    def load(self):
        return self._vi.load()

    def save(self):
        self._vi.save()

    def live_ids(self):
        return self._vi.live_ids()

    def __len__(self):
        return len(self._vi)

    def upsert(self, ids, vectors):
        self._vi.upsert(ids, vectors)

    def delete(self, ids):
        return self._vi.delete(ids)

    def get_vectors(self, ids):
        return self._vi.get_vectors(ids)

    def search(self, query, k, ef=None):
        return self._vi.search(query, k, ef)

    def sync(self, changed, live, db_seq_high=None):
        return self._vi.sync(changed, live, db_seq_high)

    def reset(self, report, reason):
        self._vi.reset(report, reason)

    def neighbours(self, ids, k):
        """One batched hnswlib query over the stored vectors, ties broken by id."""
        vi = self._vi
        with vi.lock:
            if vi.index is None or len(vi) == 0:
                return np.full((len(ids), k), -1, np.int64)
            m = fetch_k(k, len(vi))
            vi.index.set_ef(max(vi.ef, m))
            lab, dist = vi.index.knn_query(vi.get_vectors(ids), k=m)
        return canonical_top(lab.astype(np.int64), 1.0 - dist, k)
