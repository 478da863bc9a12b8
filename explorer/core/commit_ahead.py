"""Batch commits that overlap the next batch's model work: one writer thread, at most one batch behind.

The indexing pipeline (``pipeline.Indexer``) computes a batch (detect, caption, embed) and then
commits it in one transaction. The commit is Python work (the ORM) that uses one core while the
other idles; the inference engines release the GIL, so committing batch *k* on a writer thread
while the models run batch *k + 1* fills that idle core.

``CommitAhead`` promises:

- batches are committed in the order submitted, each in the one call it was given (so each is
  still one transaction: a kill leaves every image committed or untouched, as before);
- at most one commit is pending: ``submit`` first waits for the previous one, so a failed commit
  raises in the caller by the next batch at the latest, and memory holds one batch more at most;
- ``close`` waits for the pending commit and raises its error; ``close(quiet=True)`` (used on a
  path that is already failing) waits and only logs it;
- with ``enabled=False`` every commit runs at once in the caller (the pipeline before this).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

log = logging.getLogger(__name__)


class CommitAhead:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="commit") if enabled else None
        self._pending: Future | None = None

    def submit(self, fn: Callable, *args, **kwargs) -> None:
        """Commit ``fn(*args, **kwargs)``: on the writer thread once the previous commit is done (or here)."""
        if self._pool is None:
            fn(*args, **kwargs)
            return
        self.wait()
        self._pending = self._pool.submit(fn, *args, **kwargs)

    def wait(self) -> None:
        """Block until the pending commit is done; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, quiet: bool = False) -> None:
        try:
            self.wait()
        except BaseException:
            if not quiet:
                raise
            log.exception("a batch commit failed while the indexing run was already ending in an error")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


__all__ = ["CommitAhead"]
