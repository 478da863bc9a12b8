"""One Library, one ModelLoader and one Searcher per window, shared by every worker.

Nothing here touches Qt widgets: the methods are called from worker threads. The core's
models carry their own locks; the Searcher is created lazily (it syncs the indices, which
loads models) under a lock so that two workers never build two of them.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from ..core.config import Settings
from ..core.errors import ExplorerError
from ..core.library import Library
from ..core.models.registry import ModelLoader
from ..core.captions.sources import JOIN, caption_rank, compose
from ..core.store import CaptionRow, DetectionRow, ImageRow


@dataclass
class ImageInfo:
    """Everything the detail view shows about one library image."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    status: str
    error: str | None
    captions: list[tuple[str, str, float]] = field(default_factory=list)  # (source, text, confidence), most trusted first
    detections: list[tuple[str, float, tuple[float, float, float, float]]] = field(default_factory=list)
    #: the active caption's parts, (source, text), as ``captions.sources.compose`` joined them
    parts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def caption(self) -> str:
        if self.parts:
            return JOIN.join(t for _, t in self.parts)
        return self.captions[0][1] if self.captions else ""

    @property
    def caption_source(self) -> str:
        return self.captions[0][0] if self.captions else ""


class Session:
    def __init__(self, settings: Settings, library: Library | None = None, loader: ModelLoader | None = None):
        self.settings = settings
        if library is not None:
            self.library = library
            self.loader = library.loader
        else:
            self.loader = loader or ModelLoader(settings)
            self.library = Library(settings.library, settings, loader=self.loader)
        self._searcher = None
        self._lock = threading.Lock()
        self.head = None  # a trained fusion head, adding the "learned" mode

    # -- called from workers -----------------------------------------------------------------
    def warm_up(self) -> list[str]:
        """Load every model and make the indices agree with the database; returns repair lines."""
        self.loader.stack()
        if self.library.store.count_images() == 0:
            return []
        return self.searcher().repairs

    def searcher(self):
        from ..core.search import Searcher

        with self._lock:
            if self._searcher is None:
                self._searcher = Searcher(self.library, head=self.head)
            return self._searcher

    def load_head(self, path: str) -> str:
        """Load a fusion head and rebuild the searcher with it (embeds the gallery: run in a worker)."""
        from ..core.learned import load_head
        from ..core.search import Searcher

        head = load_head(path, self.library)
        searcher = Searcher(self.library, head=head)
        with self._lock:
            self.head, self._searcher = head, searcher
        return os.path.basename(path)

    def reset_searcher(self) -> None:
        with self._lock:
            self._searcher = None

    def gallery_items(self, prefix: str | None) -> tuple[list[int], list[str]]:
        """Ids and paths of indexed images under ``prefix`` (a folder), in indexing order."""
        with self.library.store.session() as s:
            q = select(ImageRow.id, ImageRow.path).where(ImageRow.status == "ok")
            if prefix:
                p = prefix.rstrip(os.sep) or os.sep
                if p == os.sep:
                    pass
                else:
                    q = q.where((ImageRow.folder == p) | ImageRow.folder.startswith(p + os.sep, autoescape=True))
            rows = s.execute(q.order_by(ImageRow.id)).all()
        return [r[0] for r in rows], [r[1] for r in rows]

    def folder_status(self) -> dict[str, tuple[int, int]]:
        """(indexed, failed) counts for every folder holding library images and all its ancestors."""
        with self.library.store.session() as s:
            rows = s.execute(select(ImageRow.folder, ImageRow.status, func.count()).group_by(ImageRow.folder, ImageRow.status)).all()
        agg: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for folder, status, n in rows:
            p = folder
            while True:
                slot = agg[p]
                slot[0 if status == "ok" else 1] += n
                parent = os.path.dirname(p)
                if not parent or parent == p:
                    break
                p = parent
        return {k: (v[0], v[1]) for k, v in agg.items()}

    def image_info(self, image_id: int) -> ImageInfo:
        with self.library.store.session() as s:
            row = s.get(ImageRow, int(image_id))
            if row is None:
                raise ExplorerError(f"image {image_id} is no longer in the library")
            caps = sorted(s.scalars(select(CaptionRow).where(CaptionRow.image_id == row.id)), key=lambda c: caption_rank(c.source))
            dets = list(s.scalars(select(DetectionRow).where(DetectionRow.image_id == row.id)))
            active = compose(caps)
            return ImageInfo(row.id, row.path, row.width, row.height, row.status, row.error,
                             [(c.source, c.text, c.confidence) for c in caps],
                             [(d.label, d.score, d.box) for d in dets],
                             list(active.parts) if active is not None else [])

    def image_id_for_path(self, path: str) -> int | None:
        real = os.path.realpath(path)
        with self.library.store.session() as s:
            return s.scalar(select(ImageRow.id).where(ImageRow.path_key == os.fsencode(real)))

    def folder_counts(self, folder: str) -> tuple[int, int]:
        st = self.folder_status()
        return st.get(os.path.realpath(folder), (0, 0))

    def close(self) -> None:
        try:
            self.library.close()
        except Exception:  # noqa: BLE001 - closing must not raise on exit
            pass


def library_has(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "library.sqlite").is_file()
