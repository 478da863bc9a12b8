"""Distributed indexing: the local pipeline's plan and commit, with the model work on Ray Data.

:class:`RayIndexer` (``explorer index FOLDER --index-engine ray [--address ADDR]``) plans with the local
indexer, runs decode and the four model roles on a Ray cluster (a local one when no address is
given), writes the results as Parquet shards in the library folder and ingests each shard in one
transaction through the local indexer's commit. Ray is an optional extra (``[scale]``); nothing
else in the app imports it.
"""

from .ray_engine import RayIndexer, RayOptions  # noqa: F401
