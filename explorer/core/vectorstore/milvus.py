"""Milvus backend (``pymilvus``): embedded Milvus Lite in the library folder, or a Milvus server.

- **Embedded** (default): ``LIBRARY/indices/milvus.db`` is a Milvus Lite database (milvus-lite 3.x:
  pure Python in this process, a local gRPC server thread, FAISS indices); one client per file is
  shared by the three indices of a process. Milvus Lite locks its data folder: a second process
  opening the same file is refused, so the window and a CLI indexing run cannot share an embedded
  library at the same time (use a server for that).
- **Server**: ``Settings.vector_store_uri = "http://host:19530"`` (token in ``$MILVUS_TOKEN``);
  collection names then carry a hash of the library folder, so several libraries can share one
  server.

Each index is one collection ``(id INT64 primary key, vector FLOAT_VECTOR(dim))`` with an HNSW
index (M=16, efConstruction=200, the same as the hnswlib backend) and the inner-product metric.
``upsert`` replaces by primary key, so an id is never held twice. The manifest (highest vector
``seq``, source models) is a JSON file beside the other indices' manifests; a collection without
a matching manifest is dropped and rebuilt from the database, exactly like a corrupt hnswlib file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..errors import ExplorerError
from ..index import EF_CONSTRUCTION, M, NO_INDEX_FILE
from .base import ManifestSync, canonical_top, fetch_k

#: rows per insert request (1280-d float32 rows: ~10 MB per request, under gRPC's limit)
CHUNK = 2000
#: URI schemes of a Milvus server; anything else without a scheme is a Milvus Lite file
SERVER_SCHEMES = ("http://", "https://", "tcp://")
#: seconds to wait for a server to answer before the one-line error
CONNECT_TIMEOUT_S = 10.0
_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def _problem(e: Exception) -> str:
    """The first line of a pymilvus error, without its ``<MilvusException: (code=..., message=...)>`` wrapper."""
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return str(msg).strip().splitlines()[0][:300]


def is_server_uri(uri: str) -> bool:
    """Whether ``uri`` names a Milvus server (``http(s)://host:port``, ``tcp://``) rather than a Lite file."""
    return uri.startswith(SERVER_SCHEMES)


def _client(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ExplorerError("the milvus vector store needs pymilvus and milvus-lite: pip install 'retrieval-explorer[scale]'") from None
    with _clients_lock:
        if uri not in _clients:
            try:
                _clients[uri] = MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""), timeout=CONNECT_TIMEOUT_S) \
                    if is_server_uri(uri) else MilvusClient(uri)
            except Exception as e:  # noqa: BLE001 - an unreachable server, or a Lite file held by another process
                what = "cannot reach the Milvus server at" if is_server_uri(uri) else "cannot open Milvus at"
                raise ExplorerError(f"{what} {uri}: {_problem(e)}") from None
        return _clients[uri]


def close_clients() -> None:
    """Close every cached client (tests, and before a process hands a Lite file to another)."""
    with _clients_lock:
        for c in _clients.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        _clients.clear()


def collection_name(name: str, scope: str = "") -> str:
    """A valid Milvus collection name (letters, digits, underscores) unique for ``name`` (and ``scope``)."""
    h = hashlib.blake2b((scope + "\0" + name).encode(), digest_size=6).hexdigest()
    return ("re_" + re.sub(r"[^A-Za-z0-9_]+", "_", name)[:80] + "_" + h)


class MilvusStore(ManifestSync):
    def __init__(self, directory: Path, name: str, dim: int, source: dict | None = None, uri: str = ""):
        super().__init__(directory, name, dim, source, suffix="milvus")
        if "://" in uri and not is_server_uri(uri):
            raise ExplorerError(f"unsupported Milvus URI '{uri}': use http(s)://host:port for a server, or a file path for Milvus Lite")
        self.server = is_server_uri(uri)
        self.uri = uri if self.server else str(Path(uri) if uri else Path(directory) / "milvus.db")
        self.collection = collection_name(name, str(Path(directory).resolve()) if self.server else "")

    @property
    def client(self):
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        return _client(self.uri)

    # -- life cycle ----------------------------------------------------------------------
    def _create(self) -> None:
        from pymilvus import DataType

        c = self.client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = c.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                         params={"M": M, "efConstruction": EF_CONSTRUCTION})
        c.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")

    def _reset(self) -> None:
        with self.lock:
            c = self.client
            if c.has_collection(self.collection):
                c.drop_collection(self.collection)
            self._create()
            self._live = set()

    def load(self) -> str | None:
        with self.lock:
            manifest, reason = self._read_manifest()
            if reason:
                return reason
            c = self.client
            if not c.has_collection(self.collection):
                return NO_INDEX_FILE
            try:
                c.load_collection(self.collection)
                live: set[int] = set()
                it = c.query_iterator(self.collection, batch_size=10000, output_fields=["id"])
                while True:
                    rows = it.next()
                    if not rows:
                        break
                    live.update(int(r["id"]) for r in rows)
                it.close()
            except Exception as e:  # noqa: BLE001 - an unusable collection is rebuilt
                return f"unreadable collection ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
            self.manifest, self._live, self._loaded = manifest, live, True
            return None

    def _ensure(self) -> None:
        if not self._loaded:
            if self.load():
                self._reset()
                self.manifest.seq_high, self.manifest.deleted = 0, []
            self._loaded = True

    def save(self) -> None:
        with self.lock:
            if not self._loaded:
                return
            try:
                self.client.flush(self.collection)
            except Exception:  # noqa: BLE001 - Milvus Lite persists on write; flush is advisory there
                pass
            self._write_manifest()

    # -- contents --------------------------------------------------------------------------
    def upsert(self, ids, vectors) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, np.float32).reshape(len(ids), self.dim)
        with self.lock:
            self._ensure()
            # one id twice in a request would be ambiguous: the last one wins, as in hnswlib
            _, last = np.unique(ids[::-1], return_index=True)
            keep = np.sort(len(ids) - 1 - last)
            ids, vecs = ids[keep], vecs[keep]
            for s in range(0, len(ids), CHUNK):
                rows = [{"id": int(i), "vector": v} for i, v in zip(ids[s:s + CHUNK], vecs[s:s + CHUNK])]
                self.client.upsert(self.collection, rows)
            self._live.update(int(i) for i in ids)

    def delete(self, ids) -> int:
        with self.lock:
            self._ensure()
            todo = [int(i) for i in ids if int(i) in self._live]
            for s in range(0, len(todo), CHUNK):
                self.client.delete(self.collection, ids=todo[s:s + CHUNK])
            self._live.difference_update(todo)
            return len(todo)

    def get_vectors(self, ids) -> np.ndarray:
        ids = [int(i) for i in ids]
        out = np.zeros((len(ids), self.dim), np.float32)
        if not ids:
            return out
        with self.lock:
            self._ensure()
            got: dict[int, np.ndarray] = {}
            for s in range(0, len(ids), CHUNK):
                for r in self.client.get(self.collection, ids=sorted(set(ids[s:s + CHUNK])), output_fields=["vector"]):
                    got[int(r["id"])] = np.asarray(r["vector"], np.float32)
        missing = [i for i in ids if i not in got]
        if missing:
            raise KeyError(f"{self.name}: ids not stored: {missing[:5]}")
        for j, i in enumerate(ids):
            out[j] = got[i]
        return out

    # -- search ------------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int, ef: int | None) -> list:
        return self.client.search(
            self.collection, data=[q for q in np.asarray(queries, np.float32)], limit=k, output_fields=["id"],
            search_params={"metric_type": "IP", "params": {"ef": max(ef or self.ef, k)}})

    def search(self, query, k, ef=None):
        with self.lock:
            self._ensure()
            n = len(self._live)
            if n == 0 or k <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            hits = self._search(np.asarray(query, np.float32).reshape(1, -1), min(k, n), ef)[0]
        return (np.array([int(h["id"]) for h in hits], np.int64),
                np.array([float(h["distance"]) for h in hits], np.float32))

    def neighbours(self, ids, k):
        with self.lock:
            self._ensure()
            out = np.full((len(ids), k), -1, np.int64)
            if not len(self._live) or not len(ids):
                return out
            m = fetch_k(k, len(self._live))
            res = self._search(self.get_vectors(ids), m, None)
        for j, hits in enumerate(res):
            lab = np.full(m, -1, np.int64)
            sc = np.full(m, -np.inf)
            lab[:len(hits)] = [int(h["id"]) for h in hits]
            sc[:len(hits)] = [float(h["distance"]) for h in hits]
            out[j] = canonical_top(lab, sc, k)[0]
        return out
