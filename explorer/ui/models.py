"""Qt item models (no widgets here): gallery images and result hits."""

from __future__ import annotations

import os

from PySide6.QtCore import QAbstractListModel, QMimeData, QModelIndex, QPersistentModelIndex, Qt, QUrl, Slot

from ..core.search import Hit
from .thumbnails import ThumbnailLoader

PathRole = Qt.ItemDataRole.UserRole + 1
IdRole = Qt.ItemDataRole.UserRole + 2
HitRole = Qt.ItemDataRole.UserRole + 3
FailedRole = Qt.ItemDataRole.UserRole + 4
CompareRole = Qt.ItemDataRole.UserRole + 5


def _file_urls_mime(paths: list[str]) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(p) for p in paths])
    mime.setText("\n".join(paths))
    return mime


class _DragsFiles:
    """Items drag out as file URLs (onto the query zone, or to other apps); needs ``path_at(row)``."""

    def flags(self, index):
        f = super().flags(index)
        return f | Qt.ItemFlag.ItemIsDragEnabled if index.isValid() else f

    def mimeTypes(self):  # noqa: N802
        return ["text/uri-list"]

    def mimeData(self, indexes):  # noqa: N802
        return _file_urls_mime([self.path_at(i.row()) for i in indexes if i.isValid()])


class GalleryModel(_DragsFiles, QAbstractListModel):
    """The library's images under a folder: a model over an id list (cheap at 100k rows).

    Thumbnails are asked for only when a view paints a row (``DecorationRole``), so only the
    visible cells are ever loaded. New images found while indexing are appended with
    ``beginInsertRows`` (the id order is the indexing order), so the view keeps its scroll
    position and selection.
    """

    def __init__(self, thumbs: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.thumbs = thumbs
        self._ids: list[int] = []
        self._paths: list[str] = []
        self._rows: dict[str, int] = {}
        thumbs.ready.connect(self._on_thumb)

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._ids)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        r = index.row()
        if not index.isValid() or r >= len(self._ids):
            return None
        if role == Qt.ItemDataRole.DecorationRole:
            return self.thumbs.get(self._paths[r])
        if role == Qt.ItemDataRole.DisplayRole:
            return os.path.basename(self._paths[r])
        if role in (PathRole, Qt.ItemDataRole.ToolTipRole):
            return self._paths[r]
        if role == IdRole:
            return self._ids[r]
        if role == FailedRole:
            return self.thumbs.failed(self._paths[r])
        return None

    def path_at(self, row: int) -> str:
        return self._paths[row]

    def supportedDragActions(self):  # noqa: N802
        return Qt.DropAction.CopyAction

    def set_items(self, ids: list[int], paths: list[str]) -> None:
        n = len(self._ids)
        if n and len(ids) >= n and ids[:n] == self._ids and paths[:n] == self._paths:
            if len(ids) > n:
                self.beginInsertRows(QModelIndex(), n, len(ids) - 1)
                self._ids, self._paths = list(ids), list(paths)
                for i in range(n, len(ids)):
                    self._rows[self._paths[i]] = i
                self.endInsertRows()
            return
        self.beginResetModel()
        self._ids, self._paths = list(ids), list(paths)
        self._rows = {p: i for i, p in enumerate(self._paths)}
        self.endResetModel()

    def path(self, row: int) -> str:
        return self._paths[row]

    def image_id(self, row: int) -> int:
        return self._ids[row]

    @Slot(str)
    def _on_thumb(self, path: str) -> None:
        r = self._rows.get(path)
        if r is not None:
            ix = self.index(r)
            self.dataChanged.emit(ix, ix, [Qt.ItemDataRole.DecorationRole])


class ResultsModel(_DragsFiles, QAbstractListModel):
    """The hits of one retrieval mode; ``compare_to`` names the mode whose ranks give the ▲/▼ badge."""

    def __init__(self, mode: str, compare_to: str, thumbs: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.mode = mode
        self.compare_to = compare_to
        self.thumbs = thumbs
        self.hits: list[Hit] = []
        thumbs.ready.connect(self._on_thumb)

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.hits)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        r = index.row()
        if not index.isValid() or r >= len(self.hits):
            return None
        h = self.hits[r]
        if role == HitRole:
            return h
        if role == Qt.ItemDataRole.DecorationRole:
            return self.thumbs.get(h.path)
        if role == Qt.ItemDataRole.DisplayRole:
            return os.path.basename(h.path)
        if role == Qt.ItemDataRole.ToolTipRole:
            src = f" ({h.caption_source})" if h.caption_source else ""
            return f"<b>{_esc(os.path.basename(h.path))}</b><br>{_esc(h.path)}<br><br>{_esc(h.caption) or '<i>no caption</i>'}{_esc(src)}<br><br>score {h.score:.4f}"
        if role == PathRole:
            return h.path
        if role == IdRole:
            return h.image_id
        if role == CompareRole:
            return rank_change(h, self.compare_to)
        if role == FailedRole:
            return self.thumbs.failed(h.path)
        return None

    def path_at(self, row: int) -> str:
        return self.hits[row].path

    def set_hits(self, hits: list[Hit]) -> None:
        self.beginResetModel()
        self.hits = list(hits)
        self.endResetModel()

    def paths(self) -> list[str]:
        return [h.path for h in self.hits]

    @Slot(str)
    def _on_thumb(self, path: str) -> None:
        for r, h in enumerate(self.hits):
            if h.path == path:
                ix = self.index(r)
                self.dataChanged.emit(ix, ix, [Qt.ItemDataRole.DecorationRole])


def rank_change(hit: Hit, other: str) -> tuple[str, int | None]:
    """("up", n) / ("down", n) / ("same", 0) / ("new", None) against the other mode's ranking."""
    if other not in hit.other_ranks:
        return ("none", None)
    o = hit.other_ranks.get(other)
    if o is None:
        return ("new", None)
    d = o - hit.rank
    if d > 0:
        return ("up", d)
    if d < 0:
        return ("down", -d)
    return ("same", 0)


def _esc(s: str) -> str:
    return (s or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


__all__ = ["GalleryModel", "ResultsModel", "rank_change", "PathRole", "IdRole", "HitRole",
           "FailedRole", "CompareRole", "QPersistentModelIndex"]
