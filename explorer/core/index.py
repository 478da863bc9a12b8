"""hnswlib indices as rebuildable caches of the vectors in the database.

Each index lives in ``DIR/indices/<name>.hnsw`` with a JSON manifest beside it. The manifest
records the highest vector ``seq`` the index contains and the labels it has deleted. Files
are written to a temporary name and renamed, index first and manifest second, so after a
crash the manifest can only be *older* than the index; syncing again is idempotent because
adding an existing label replaces its vector. ``sync`` brings an index up to date with the
database: it adds what is newer than ``seq_high`` and deletes labels whose image is gone.
Labels are image ids.

Index files are checked before hnswlib sees them (hnswlib trusts its input and crashes the
process on a garbled file): a small ``<name>.hnsw.sum`` beside each index records its size,
element count and CRC-32, and a file that does not match (or has no sum) is rebuilt from
the stored vectors instead of loaded. A save writes the index to a temporary file, walks its
structure to verify that every byte hnswlib meant to write is there (hnswlib ignores write
errors, so a full disk leaves a short file), checksums it, and only then renames it over the
old one; ``ENOSPC``/``EROFS`` and friends become an ``IndexSaveError`` with one clear line,
and the old files stay. An index saves only when it changed since it was loaded or saved.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hnswlib
import numpy as np

from .errors import ExplorerError

log = logging.getLogger(__name__)

M = 16
EF_CONSTRUCTION = 200
DEFAULT_EF = 128
NO_INDEX_FILE = "no index file yet"
_HEADER = struct.Struct("<6QiI3QdQ")  # hnswlib 0.8 HierarchicalNSW::saveIndex header (96 bytes)


class IndexSaveError(ExplorerError):
    """An index could not be written (full disk, read-only media...); the previous files are kept."""


def file_crc(path: Path) -> tuple[int, int]:
    """(size, CRC-32) of a file, read in chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def check_hnsw_file(path: Path, dim: int) -> int:
    """Walk an hnswlib index file and return its element count; ``ValueError`` says what is wrong.

    Checks the header against ``dim`` and that the file holds exactly the level-0 block and the
    upper-level link lists the header announces: a short (or long) file is refused."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise ValueError(f"{size} bytes, shorter than an index header")
        (off0, max_el, count, per_el, label_off, off_data, max_level, enter, max_m, max_m0, m, _mult, _efc) = _HEADER.unpack(head)
        links0 = max_m0 * 4 + 4
        if off0 != 0 or off_data != links0 or label_off != links0 + 4 * dim or per_el != label_off + 8:
            raise ValueError("header does not describe an index of this dimension")
        if count > max_el or max_m0 != 2 * m or max_m != m or not 0 <= max_level < 64 or (count and enter >= count):
            raise ValueError("implausible header")
        pos = _HEADER.size + count * per_el
        if pos > size:
            raise ValueError(f"truncated: {size} bytes, the vectors alone need {pos}")
        f.seek(pos)
        rest = f.read()
    per_level = max_m * 4 + 4
    i, n = 0, len(rest)
    for _ in range(count):
        if i + 4 > n:
            raise ValueError("truncated in the link lists")
        (ln,) = struct.unpack_from("<I", rest, i)
        if ln % per_level or ln // per_level > max_level:
            raise ValueError("corrupt link list")
        i += 4 + ln
    if i != n:
        raise ValueError(f"truncated or padded: {size} bytes, expected {pos + i}")
    return count


def _os_problem(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


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
    #: image id -> why its stored vector was not used (NaN, wrong length)
    refused: dict = field(default_factory=dict)

    def __str__(self) -> str:
        out = (f"rebuilt from stored vectors ({self.reason}): {self.added} vectors" if self.rebuilt
               else f"added/updated {self.added}, removed {self.deleted}")
        if self.refused:
            first = next(iter(self.refused.items()))
            out += (f"; refused {len(self.refused)} damaged stored vectors (image {first[0]}: {first[1]}); "
                    "run `explorer check --full`")
        return out


class VectorIndex:
    """One hnswlib inner-product index whose labels are image ids."""

    #: the container of the searchable labels (a subclass may keep them leaner, e.g. as a bitmap)
    live_type = set

    def __init__(self, directory: Path, name: str, dim: int, source: dict | None = None):
        self.directory = Path(directory)
        self.name = name
        self.dim = dim
        self.path = self.directory / f"{name}.hnsw"
        self.manifest_path = self.directory / f"{name}.json"
        self.manifest = Manifest(name, dim, source=source or {})
        self.index: hnswlib.Index | None = None
        #: searchable labels, kept up to date by upsert/delete (hnswlib can only list all labels, O(n))
        self._live: set[int] = self.live_type()
        self.lock = threading.RLock()
        self.ef = DEFAULT_EF
        #: changed since loaded or saved
        self.dirty = False
        #: start from empty on the next sync instead of loading the file (set by ``reset``)
        self._fresh = False

    @property
    def sum_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sum")

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
            want = json.loads(self.sum_path.read_text())
            size, crc = file_crc(self.path)
        except FileNotFoundError:
            return "index file has no checksum"
        except (OSError, ValueError) as e:
            return f"unreadable checksum ({e})"
        if not isinstance(want, dict) or want.get("size") != size or want.get("crc32") != crc:
            return "index file does not match its checksum (damaged or half written)"
        try:
            if check_hnsw_file(self.path, self.dim) != want.get("count"):
                return "index file does not match its checksum"
        except (OSError, ValueError) as e:
            return f"damaged index file ({e})"
        try:
            idx = hnswlib.Index(space="ip", dim=self.dim)
            idx.load_index(str(self.path), max_elements=0)
            idx.set_ef(self.ef)
        except Exception as e:  # noqa: BLE001 - a corrupt cache is simply rebuilt
            return f"unreadable index file ({e})"
        self.index, self.manifest = idx, manifest
        live = self.live_type(idx.get_ids_list())
        live.difference_update(manifest.deleted)
        self._live = live
        self.dirty = False
        return None

    def save(self, force: bool = False) -> bool:
        """Write the index (if changed, or ``force``); returns whether it wrote.

        Order: index, checksum, manifest, each complete and verified in a temporary file before
        it is renamed into place. A crash between the renames leaves either a manifest older
        than the index (sync re-adds what it misses) or an index that fails its checksum
        (rebuilt); never a garbled file that gets loaded. Raises ``IndexSaveError`` (old files
        kept, temporary files removed) when the disk is full or not writable."""
        with self.lock:
            if self.index is None or not (self.dirty or force):
                return False
            tmp = self.path.with_name(self.path.name + ".tmp")
            stmp = self.sum_path.with_name(self.sum_path.name + ".tmp")
            mtmp = self.manifest_path.with_name(self.manifest_path.name + ".tmp")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.index.save_index(str(tmp))
                try:
                    count = check_hnsw_file(tmp, self.dim)
                except ValueError as e:
                    count, why = -1, str(e)
                if count != self.index.get_current_count():  # hnswlib does not report failed writes
                    if _free_bytes(self.directory) < (1 << 20):
                        raise OSError(errno.ENOSPC, "no space left on device")
                    raise OSError(errno.EIO, f"the written index file is incomplete ({why if count < 0 else 'wrong count'})")
                size, crc = file_crc(tmp)
                _write_verified(stmp, json.dumps({"size": size, "crc32": crc, "count": count}))
                _write_verified(mtmp, self.manifest.to_json())
                _fsync_file(tmp, strict=True)
                os.replace(tmp, self.path)
                os.replace(stmp, self.sum_path)
                os.replace(mtmp, self.manifest_path)
                _fsync_dir(self.directory)
            except OSError as e:
                for t in (tmp, stmp, mtmp):
                    try:
                        t.unlink()
                    except OSError:
                        pass
                raise IndexSaveError(f"cannot save index {self.name} in {self.directory}: {_os_problem(e)} "
                                     "(the previous index files are kept)") from None
            self.dirty = False
            return True

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
            self.dirty = True
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
                self.dirty = True
            self.manifest.deleted = sorted(deleted)
        return n

    def reset(self, report: SyncReport, reason: str) -> None:
        """Forget the loaded index (in memory only): the next sync rebuilds it from the stored vectors."""
        with self.lock:
            report.rebuilt, report.reason = True, reason
            self.index = None
            self.manifest.seq_high, self.manifest.deleted = 0, []
            self._live = self.live_type()
            self.dirty = True
            self._fresh = True

    def sync(self, changed: Callable, live: set[int], db_seq_high: int | None = None) -> SyncReport:
        """Bring the index up to date.

        ``changed(seq_high)`` returns (ids, vectors, new_seq_high) of everything newer than
        ``seq_high``, optionally with a fourth item ``{id: reason}`` of refused (damaged)
        vectors; ``live`` is the set of ids that should be searchable. An index that claims a
        higher ``seq`` than the database ever wrote (``db_seq_high``, e.g. the database was
        restored from a backup) is rebuilt.
        """
        with self.lock:
            report = SyncReport()
            if self.index is None and not self._fresh:
                reason = self.load()
                if not reason and db_seq_high is not None and self.manifest.seq_high > db_seq_high:
                    reason = "index is newer than the database"
                if reason:
                    self.reset(report, reason)
            res = changed(self.manifest.seq_high)
            ids, vecs, high = res[:3]
            refused = dict(res[3]) if len(res) > 3 else {}
            if len(ids):
                self.upsert(ids, vecs)
                report.added = len(ids)
            live = live - set(refused)
            stale = self._live - live
            if stale:
                report.deleted = self.delete(stale)
            missing = live - self._live
            if missing:  # only after a lost manifest update; re-add from the source
                res2 = changed(-1)
                ids2, vecs2 = res2[0], res2[1]
                refused.update(res2[3] if len(res2) > 3 else {})
                sel = np.isin(ids2, np.fromiter(missing, np.int64))
                self.upsert(ids2[sel], vecs2[sel])
                report.added += int(sel.sum())
            report.refused = refused
            if high > self.manifest.seq_high:
                self.manifest.seq_high = high
                self.dirty = True
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


def _free_bytes(d: Path) -> int:
    try:
        st = os.statvfs(d)
        return st.f_bavail * st.f_frsize
    except OSError:
        return 1 << 62


def _write_verified(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and read it back (a short write on a full disk raises ``OSError``)."""
    data = text.encode()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if path.read_bytes() != data:
        raise OSError(errno.EIO, f"{path.name} did not read back as written")


def _fsync_file(p: Path, strict: bool = False) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if strict:
            raise


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
