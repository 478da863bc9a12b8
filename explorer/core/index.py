"""hnswlib indices as rebuildable caches of the vectors in the database.

Each index lives in ``DIR/indices/<name>.hnsw`` with a JSON manifest beside it. The manifest
records the highest vector ``seq`` the index contains and the labels it has deleted. Files
are written to a temporary name and renamed, index first and manifest second, so after a
crash the manifest can only be *older* than the index; syncing again is idempotent because
adding an existing label replaces its vector. ``sync`` brings an index up to date with the
database: it adds what is newer than ``seq_high`` and deletes labels whose image is gone.
Labels are image ids.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hnswlib
import numpy as np

log = logging.getLogger(__name__)

M = 16
EF_CONSTRUCTION = 200
DEFAULT_EF = 128
NO_INDEX_FILE = "no index file yet"


@dataclass
class Manifest:
    name: str
    dim: int
    seq_high: int = 0
    deleted: list[int] = field(default_factory=list)
    source: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)


@dataclass
class SyncReport:
    added: int = 0
    deleted: int = 0
    rebuilt: bool = False
    reason: str = ""

    def __str__(self) -> str:
        if self.rebuilt:
            return f"rebuilt from stored vectors ({self.reason}): {self.added} vectors"
        return f"added/updated {self.added}, removed {self.deleted}"


class VectorIndex:
    """One hnswlib inner-product index whose labels are image ids."""

    def __init__(self, directory: Path, name: str, dim: int, source: dict | None = None):
        self.directory = Path(directory)
        self.name = name
        self.dim = dim
        self.path = self.directory / f"{name}.hnsw"
        self.manifest_path = self.directory / f"{name}.json"
        self.manifest = Manifest(name, dim, source=source or {})
        self.index: hnswlib.Index | None = None
        #: searchable labels, kept up to date by upsert/delete (hnswlib can only list all labels, O(n))
        self._live: set[int] = set()
        self.lock = threading.RLock()
        self.ef = DEFAULT_EF

    # -- life cycle -------------------------------------------------------------
    def _new(self, capacity: int) -> hnswlib.Index:
        idx = hnswlib.Index(space="ip", dim=self.dim)
        idx.init_index(max_elements=max(capacity, 1024), ef_construction=EF_CONSTRUCTION, M=M)
        idx.set_ef(self.ef)
        return idx

    def load(self) -> str | None:
        """Load from disk; returns a reason string when the files are missing or unusable."""
        if not self.path.is_file() or not self.manifest_path.is_file():
            return NO_INDEX_FILE
        try:
            m = json.loads(self.manifest_path.read_text())
            manifest = Manifest(**m)
        except (OSError, ValueError, TypeError) as e:
            return f"unreadable manifest ({e})"
        if manifest.dim != self.dim or (self.manifest.source and manifest.source != self.manifest.source):
            return "index was built for other vectors"
        try:
            idx = hnswlib.Index(space="ip", dim=self.dim)
            idx.load_index(str(self.path), max_elements=0)
            idx.set_ef(self.ef)
        except Exception as e:  # noqa: BLE001 - a corrupt cache is simply rebuilt
            return f"unreadable index file ({e})"
        self.index, self.manifest = idx, manifest
        self._live = set(idx.get_ids_list()) - set(manifest.deleted)
        return None

    def save(self) -> None:
        with self.lock:
            if self.index is None:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.index.save_index(str(tmp))
            _fsync_file(tmp)
            os.replace(tmp, self.path)
            mtmp = self.manifest_path.with_name(self.manifest_path.name + ".tmp")
            mtmp.write_text(self.manifest.to_json())
            _fsync_file(mtmp)
            os.replace(mtmp, self.manifest_path)

    # -- contents -----------------------------------------------------------------
    def live_ids(self) -> set[int]:
        """The searchable labels (the index's own set: do not modify it)."""
        return self._live

    def __len__(self) -> int:
        return len(self._live)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        with self.lock:
            if len(ids) == 0:
                return
            if self.index is None:
                self.index = self._new(len(ids) * 2)
            need = self.index.get_current_count() + len(ids)
            if need > self.index.get_max_elements():
                self.index.resize_index(max(need, int(self.index.get_max_elements() * 1.5)))
            self.index.add_items(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64), num_threads=1)
            self._live.update(int(i) for i in ids)
            if self.manifest.deleted:
                back = set(int(i) for i in ids)
                self.manifest.deleted = [d for d in self.manifest.deleted if d not in back]

    def delete(self, ids) -> int:
        n = 0
        with self.lock:
            if self.index is None:
                return 0
            deleted = set(self.manifest.deleted)
            for i in ids:
                i = int(i)
                if i in deleted:
                    continue
                try:
                    self.index.mark_deleted(i)
                    n += 1
                except RuntimeError:
                    pass  # already deleted or never added: the goal holds either way
                deleted.add(i)
                self._live.discard(i)
            self.manifest.deleted = sorted(deleted)
        return n

    def sync(self, changed: Callable[[int], tuple[np.ndarray, np.ndarray, int]], live: set[int]) -> SyncReport:
        """Bring the index up to date.

        ``changed(seq_high)`` returns (ids, vectors, new_seq_high) of everything newer than
        ``seq_high``; ``live`` is the set of ids that should be searchable.
        """
        with self.lock:
            report = SyncReport()
            if self.index is None:
                reason = self.load()
                if reason:
                    report.rebuilt, report.reason = True, reason
                    self.manifest.seq_high, self.manifest.deleted = 0, []
                    self._live = set()
            ids, vecs, high = changed(self.manifest.seq_high)
            if len(ids):
                self.upsert(ids, vecs)
                report.added = len(ids)
            stale = self._live - live
            if stale:
                report.deleted = self.delete(stale)
            missing = live - self._live
            if missing:  # only after a lost manifest update; re-add from the source
                ids2, vecs2, _ = changed(-1)
                sel = np.isin(ids2, np.fromiter(missing, np.int64))
                self.upsert(ids2[sel], vecs2[sel])
                report.added += int(sel.sum())
            self.manifest.seq_high = max(self.manifest.seq_high, high)
            return report

    def get_vectors(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` (under the lock: indexing may resize the index meanwhile)."""
        with self.lock:
            return np.asarray(self.index.get_items(np.asarray(ids, np.int64)), np.float32).reshape(len(ids), self.dim)

    # -- search ---------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (ids, inner-product scores) for one query vector."""
        with self.lock:
            n = len(self) if self.index is not None else 0
            if n == 0 or k <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            k = min(k, n)
            self.index.set_ef(max(ef or self.ef, k))
            labels, dist = self.index.knn_query(np.asarray(query, np.float32).reshape(1, -1), k=k, num_threads=1)
            return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)


def _fsync_file(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
