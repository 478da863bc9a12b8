"""One Library, one ModelLoader, one Catalog and one Searcher per window, shared by every worker.

Nothing here touches Qt: the methods are called from worker threads. The core's models carry
their own locks; the Searcher is built and opened lazily (opening syncs the indices, which loads
models) under a lock so that two workers never build two of them. It is *refreshed* after the
library changes (indexing, caption edits): a searcher with a fusion head holds the gallery's
learned embeddings, and an image indexed after the head was loaded must rank in that mode too.

Read queries go through ``explorer.core.catalog.Catalog`` (no SQL here).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

from ..core.catalog import Catalog, ImageInfo
from ..core.config import Settings
from ..core.library import Library
from ..core.models.registry import ModelLoader

log = logging.getLogger(__name__)


class Session:
    def __init__(self, settings: Settings, library: Library | None = None, loader: ModelLoader | None = None):
        self.settings = settings
        if library is not None:
            self.library = library
            self.loader = library.loader
        else:
            self.loader = loader or ModelLoader(settings)
            self.library = Library(settings.library, settings, loader=self.loader)
        self.catalog = Catalog(self.library.store)
        self._searcher = None
        self._lock = threading.Lock()
        self.head = None  # a trained fusion head, adding the "learned" mode

    # -- called from workers -----------------------------------------------------------------
    def warm_up(self) -> list[str]:
        """Load every model and make the indices agree with the database; returns repair lines."""
        self.loader.stack()
        if self.catalog.count_images() == 0:
            return []
        return self.searcher().repairs

    def searcher(self):
        """The current searcher, opened (built on first use)."""
        from ..core.search import open_searcher

        with self._lock:
            if self._searcher is None:
                self._searcher = open_searcher(self.library, head=self.head)
            return self._searcher

    def load_head(self, path: str) -> str:
        """Load a fusion head and open a searcher with it (embeds the gallery: run in a worker)."""
        from ..core.learned import load_head
        from ..core.search import open_searcher

        head = load_head(path, self.library)
        searcher = open_searcher(self.library, head=head)
        with self._lock:
            self.head, self._searcher = head, searcher
        return os.path.basename(path)

    def refresh_searcher(self) -> None:
        """The library changed (images indexed or removed, a caption edited): open a new searcher.

        With a head this re-embeds the gallery, so run it in a worker. Without one the searcher is
        kept: its in-memory gallery notices the change by itself, and is re-read here (in the
        worker) so that the next query does not wait for it.
        """
        from ..core.search import open_searcher

        with self._lock:
            head, had, current = self.head, self._searcher is not None, self._searcher
        if not had:
            return
        if head is None:
            if self.catalog.count_images() == 0:
                self.reset_searcher()
            else:
                current.gallery()
            return
        if self.catalog.count_images() == 0:
            self.reset_searcher()
            return
        searcher = open_searcher(self.library, head=head)
        with self._lock:
            if self.head is head:  # another head may have been loaded meanwhile
                self._searcher = searcher

    def reset_searcher(self) -> None:
        with self._lock:
            self._searcher = None

    def index_folder(self, folder: str, progress=None, cancel=None, mode: str | None = None, worker=None):
        """Index one folder into the library, then refresh the searcher; returns the IndexSummary.

        ``mode`` (default ``indexing_worker.index_mode()``): ``process`` runs the pipeline in a
        worker process (no model work competes with the GUI thread for the GIL; this library then
        reopens the indices that process saved): in ``worker`` (an ``IndexingWorker``, which keeps
        its models between runs) when given, else in a one-shot one; ``thread`` runs it here, in
        the calling thread.
        """
        from ..core.indexing_worker import index_in_process, index_mode
        from ..core.pipeline import Indexer

        if (mode or index_mode()) == "thread":
            summary = Indexer(self.library).run([folder], progress=progress, cancel=cancel)
        else:
            settings = replace(self.library.settings, library=str(self.library.dir))
            try:
                summary = index_in_process(settings, [folder], progress=progress, cancel=cancel, worker=worker)
            finally:
                try:
                    self.library.reload()  # whatever the worker committed and saved, even when it failed
                except Exception:  # noqa: BLE001 - never mask the run's own error; the next search's check repairs
                    log.exception("reopening the indices after indexing failed")
                with self._lock:
                    if self.head is None:
                        self._searcher = None  # reopened (and checked) on the next search
        if summary.indexed or summary.removed:
            self.refresh_searcher()
        return summary

    def save_caption(self, image_id: int, text: str) -> None:
        """Store a user caption (re-embedded at once), then refresh the searcher."""
        from ..core.edits import set_user_caption

        set_user_caption(self.library, image_id, text)
        self.refresh_searcher()

    # -- reads (catalog) ---------------------------------------------------------------------
    def gallery_items(self, prefix: str | None) -> tuple[list[int], list[str]]:
        return self.catalog.gallery_items(prefix)

    def folder_status(self) -> dict[str, tuple[int, int]]:
        return self.catalog.folder_status()

    def image_info(self, image_id: int) -> ImageInfo:
        return self.catalog.image_info(image_id)

    def image_id_for_path(self, path: str) -> int | None:
        return self.catalog.image_id(path)

    def folder_counts(self, folder: str) -> tuple[int, int]:
        return self.catalog.folder_counts(folder)

    def close(self) -> None:
        try:
            self.library.close()
        except Exception:  # noqa: BLE001 - closing must not raise on exit
            pass


def library_has(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "library.sqlite").is_file()


__all__ = ["Session", "ImageInfo", "library_has"]
