"""Vector stores: one contract, backends chosen by name.

A *vector store* holds one float32 vector per image id and answers inner-product top-k
queries. The library keeps three of them (image, caption, fused) as rebuildable caches of the
vectors in its database; everything above the library (search, fused re-scoring, evaluation)
talks to the contract in :mod:`.base`, never to a backend.

Backends (``Settings.vector_store`` / ``$EXPLORER_VECTOR_STORE`` / ``--vector-store``):

- ``hnswlib`` (default): the in-process hnswlib indices of :mod:`explorer.core.index`, wrapped;
- ``milvus``: Milvus through ``pymilvus`` — embedded Milvus Lite in the library folder, or a
  Milvus server when ``Settings.vector_store_uri`` is an ``http(s)://`` address (optional extra
  ``[scale]``);
- ``hnswlib-pca<R>`` (e.g. ``hnswlib-pca256``): the memory-saving indices — an hnswlib index
  over the vectors projected onto their top ``R`` principal directions, with candidates re-scored
  exactly from full vectors kept in a memory-mapped file on disk (:mod:`.reduced`). All three
  indices (image 1280-d, caption 384-d, fused 1664-d) are reduced, each with its own projection:
  at 1M images the fused index alone would take ~6.5 GiB as plain hnswlib.
- ``hnswlib-pca<R>-caption<C>`` (e.g. ``hnswlib-pca256-caption128``): the same, with the caption
  index projected to ``C`` dimensions instead of ``R`` (384-d caption vectors keep ~98% of their
  energy in 128): at 1M images it holds ~0.5 GiB less, which brought the whole process's anonymous
  memory from 4.41 to 3.89 GB with caption recall@10 unchanged on validation queries
  (``bench/library_memory.py``, README "Scaling out").

This package owns the list of backend names (:data:`BACKENDS`) and the factory :func:`open_store`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ExplorerError
from ..modes import CAPTION, INDEXED
from .base import VectorStore

#: The backend names, the default first. ``hnswlib-pca<R>`` and ``hnswlib-pca<R>-caption<C>`` take any
#: R and C (see :data:`PCA_PATTERN`).
BACKENDS = ("hnswlib", "milvus", "hnswlib-pca256", "hnswlib-pca256-caption128")
DEFAULT_BACKEND = BACKENDS[0]
PCA_PATTERN = re.compile(r"^hnswlib-pca(\d+)(?:-caption(\d+))?$")

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "VectorStore", "open_store", "check_backend"]


def check_backend(backend: str) -> str:
    """The backend name if known, else a clear ExplorerError."""
    if backend in BACKENDS or PCA_PATTERN.match(backend or ""):
        return backend
    raise ExplorerError(f"unknown vector store '{backend}'; known: {', '.join(BACKENDS)} (hnswlib-pcaR[-captionC] for any R, C)")


def open_store(backend: str, directory: Path, name: str, dim: int, source: dict | None = None,
               uri: str = "", modes_reduced: tuple[str, ...] = INDEXED) -> VectorStore:
    """A (not yet loaded) store of ``backend`` for the index ``name`` of ``dim``-d vectors.

    ``directory`` is the library's ``indices`` folder: every backend keeps its manifest there.
    For ``hnswlib-pca<R>`` only indices whose name starts with one of ``modes_reduced`` (default:
    all three) and whose dimension exceeds ``R`` are reduced; the others use plain hnswlib.
    """
    backend = check_backend(backend or DEFAULT_BACKEND)
    if backend == "hnswlib":
        from .hnsw import HnswlibStore

        return HnswlibStore(directory, name, dim, source)
    if backend == "milvus":
        from .milvus import MilvusStore

        return MilvusStore(directory, name, dim, source, uri=uri)
    m = PCA_PATTERN.match(backend)
    r = int(m.group(2)) if m.group(2) and name.startswith(CAPTION + "--") else int(m.group(1))
    if not any(name.startswith(p + "--") for p in modes_reduced) or r >= dim:
        from .hnsw import HnswlibStore

        return HnswlibStore(directory, name, dim, source)
    from .reduced import ReducedStore

    return ReducedStore(directory, name, dim, r, source)
