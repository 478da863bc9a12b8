"""The vector-store contract that every backend fulfils.

A store maps image ids (int64) to float32 vectors of one dimension and answers inner-product
top-k queries. It is a *cache* of the library database: ``sync`` brings it up to date from the
stored vectors (the manifest records the highest vector ``seq`` it holds), so a lost or corrupt
store is rebuilt, never trusted. The promises:

- ``upsert(ids, vecs)`` adds or replaces (an id is never held twice); ``delete(ids)`` removes;
- ``search(q, k)`` returns at most ``k`` (ids, inner products), best first, only live ids;
- ``candidates(q, m)`` returns about the ``m`` best live ids, in no promised order, for a caller
  that re-scores them exactly itself (the library's candidate pool): a backend that re-scores
  inside ``search`` (the reduced stores) skips that work here; the default is ``search``'s ids;
- ``neighbours(ids, k)`` returns the top-k labels of stored vectors (for caption agreement), with
  ties broken by id (:func:`canonical_top`), so that every backend gives the same neighbourhoods
  even where vectors are identical (recurring structured captions);
- ``live_ids()``, ``len()``, ``get_vectors(ids)`` (full-dimension vectors, in the order asked);
- ``load()`` returns ``None`` or the reason the stored copy is unusable; ``save()`` is atomic
  with respect to the manifest (the manifest is written last, so it can only be older);
- ``lock`` is a re-entrant lock callers may hold around several calls.

:class:`ManifestSync` implements ``sync`` once for backends that keep their own live-id set.
"""

from __future__ import annotations

import abc
import json
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..index import DEFAULT_EF, NO_INDEX_FILE, Manifest, SyncReport, _fsync_file


#: scores equal to this many decimals count as tied (backends differ in the last float bits)
TIE_DECIMALS = 5


def canonical_top(labels: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of (labels, scores) -> the top ``k`` labels ordered by (score desc, id asc), padded with -1.

    Callers ask the index for more than ``k`` (:func:`fetch_k`) so that a tie group crossing
    position ``k`` is seen whole, and the cut no longer depends on a backend's internal order.
    """
    labels, scores = np.atleast_2d(labels), np.atleast_2d(scores)
    out = np.full((len(labels), k), -1, np.int64)
    for j, (lab, sc) in enumerate(zip(labels, scores)):
        ok = lab >= 0
        lab, sc = lab[ok], np.round(sc[ok].astype(np.float64), TIE_DECIMALS)
        order = np.lexsort((lab, -sc))[:k]
        out[j, :len(order)] = lab[order]
    return out


def fetch_k(k: int, n: int) -> int:
    return min(n, 2 * k + 10)


class VectorStore(abc.ABC):
    name: str
    dim: int
    lock: threading.RLock
    ef: int

    @abc.abstractmethod
    def load(self) -> str | None: ...

    @abc.abstractmethod
    def save(self) -> None: ...

    @abc.abstractmethod
    def live_ids(self) -> set[int]: ...

    def __len__(self) -> int:
        return len(self.live_ids())

    def ids(self) -> np.ndarray:
        """The live ids, sorted."""
        return np.array(sorted(self.live_ids()), np.int64)

    @abc.abstractmethod
    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abc.abstractmethod
    def delete(self, ids) -> int: ...

    @abc.abstractmethod
    def get_vectors(self, ids) -> np.ndarray: ...

    @abc.abstractmethod
    def search(self, query: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def candidates(self, query: np.ndarray, m: int) -> np.ndarray:
        """About the ``m`` best live ids for ``query``, unordered; the caller re-scores them."""
        return self.search(query, m)[0]

    def neighbours(self, ids: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` labels (rows padded with -1) for the stored vectors of ``ids``."""
        with self.lock:
            vecs = self.get_vectors(ids)
            out = np.full((len(ids), k), -1, np.int64)
            m = fetch_k(k, len(self))
            for j, v in enumerate(vecs):
                lab, sc = self.search(v, m)
                out[j] = canonical_top(lab, sc, k)[0]
            return out

    @abc.abstractmethod
    def sync(self, changed: Callable[[int], tuple], live: set[int], db_seq_high: int | None = None) -> SyncReport: ...

    @abc.abstractmethod
    def reset(self, report: SyncReport, reason: str) -> None:
        """Forget what is stored (in memory only): the next ``sync`` rebuilds from the database."""


class ManifestSync(VectorStore):
    """``sync`` and the JSON manifest for backends other than the wrapped hnswlib index."""

    def __init__(self, directory: Path, name: str, dim: int, source: dict | None, suffix: str):
        self.directory = Path(directory)
        self.name, self.dim = name, dim
        self.manifest_path = self.directory / f"{name}.{suffix}.json"
        self.manifest = Manifest(name, dim, source=source or {})
        self.lock = threading.RLock()
        self.ef = DEFAULT_EF
        self._live: set[int] = set()
        self._loaded = False

    def _read_manifest(self) -> tuple[Manifest | None, str | None]:
        if not self.manifest_path.is_file():
            return None, NO_INDEX_FILE
        try:
            m = Manifest(**json.loads(self.manifest_path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            return None, f"unreadable manifest ({e})"
        if m.dim != self.dim or (self.manifest.source and m.source != self.manifest.source):
            return None, "index was built for other vectors"
        return m, None

    def _write_manifest(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_name(self.manifest_path.name + ".tmp")
        tmp.write_text(self.manifest.to_json())
        _fsync_file(tmp)
        os.replace(tmp, self.manifest_path)

    def live_ids(self) -> set[int]:
        return self._live

    def __len__(self) -> int:
        return len(self._live)

    @abc.abstractmethod
    def _reset(self) -> None:
        """Drop everything stored (before a rebuild)."""

    def reset(self, report: SyncReport, reason: str) -> None:
        """Forget what is stored (in memory): the next sync rebuilds from the stored vectors."""
        with self.lock:
            report.rebuilt, report.reason = True, reason
            self._reset()
            self.manifest.seq_high, self.manifest.deleted = 0, []
            self._loaded = True

    def sync(self, changed, live: set[int], db_seq_high: int | None = None) -> SyncReport:
        """As ``VectorIndex.sync``: ``changed`` may add a fourth item ``{id: reason}`` of refused
        vectors, which are left out; an index claiming more than ``db_seq_high`` is rebuilt."""
        with self.lock:
            report = SyncReport()
            if not self._loaded:
                reason = self.load()
                if reason:
                    self._reset()
                    report.rebuilt, report.reason = True, reason
                    self.manifest.seq_high, self.manifest.deleted = 0, []
                self._loaded = True
            if db_seq_high is not None and self.manifest.seq_high > db_seq_high:
                self._reset()
                report.rebuilt, report.reason = True, "the index holds vectors the database never wrote"
                self.manifest.seq_high, self.manifest.deleted = 0, []
            res = changed(self.manifest.seq_high)
            ids, vecs, high = res[:3]
            refused = dict(res[3]) if len(res) > 3 else {}
            live = live - set(refused)
            if refused:
                keep = ~np.isin(ids, np.fromiter(refused, np.int64))
                ids, vecs = ids[keep], vecs[keep]
                report.refused = refused
            if len(ids):
                self.upsert(ids, vecs)
                report.added = len(ids)
            stale = self._live - live
            if stale:
                report.deleted = self.delete(stale)
            missing = live - self._live
            if missing:
                ids2, vecs2 = changed(-1)[:2]
                sel = np.isin(ids2, np.fromiter(missing, np.int64))
                self.upsert(ids2[sel], vecs2[sel])
                report.added += int(sel.sum())
            self.manifest.seq_high = max(self.manifest.seq_high, high)
            return report
