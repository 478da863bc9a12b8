"""The gallery sidebar: the folder tree (galleries and places) with index counts, and the image grid.

The tree starts from where a user's pictures are, not from the filesystem root: first the
*galleries* the user added (``Add gallery folder…``, a folder opened or indexed; kept in the
window's settings), then the *places* ``~/Pictures`` and the home folder. Folders are listed
lazily when expanded (hidden ones are skipped); the second column shows how many images under
each folder are indexed (and failed), from the catalog.

The sidebar owns what it shows: the current folder, the grid's rows and the throttled
refreshes while indexing. It talks through signals: ``queryRequested`` (search with an image),
``detailRequested`` (open an image), ``indexRequested`` (index a folder), ``folderChanged``.
"""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QFileIconProvider, QHBoxLayout, QHeaderView, QLabel,
                               QListView, QMenu, QPushButton, QSplitter, QTreeWidget, QTreeWidgetItem,
                               QTreeWidgetItemIterator, QVBoxLayout, QWidget)

from .context import AppContext
from .delegates import GridDelegate
from .models import GalleryModel, IdRole, PathRole

GALLERIES_KEY = "galleries/added"
FolderRole = Qt.ItemDataRole.UserRole + 1
LoadedRole = Qt.ItemDataRole.UserRole + 2
KindRole = Qt.ItemDataRole.UserRole + 3  # "gallery" or "place" for top-level items
GRID_HINT = "Double-click for details · drag onto the query to search"


def places() -> list[str]:
    """Where a user's pictures usually are: ~/Pictures (when it exists), then the home folder."""
    home = os.path.realpath(os.path.expanduser("~"))
    pics = os.path.join(home, "Pictures")
    return ([pics] if os.path.isdir(pics) else []) + ([home] if os.path.isdir(home) else [])


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class FolderTree(QTreeWidget):
    """Top-level galleries and places; sub-folders listed when expanded; column 1: indexed counts."""

    folderSelected = Signal(str)
    removeRequested = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.status: dict[str, tuple[int, int]] = {}
        self.icon = QFileIconProvider().icon(QFileIconProvider.IconType.Folder)
        self.setColumnCount(2)
        self.setHeaderLabels(["Folder", "Indexed"])
        hdr = self.header()
        hdr.setStretchLastSection(False)
        hdr.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        hdr.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        hdr.resizeSection(1, 90)
        self.setUniformRowHeights(True)
        self.setAnimated(False)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.itemExpanded.connect(self._populate)
        self.currentItemChanged.connect(lambda cur, _prev: cur is not None and self.folderSelected.emit(cur.data(0, FolderRole)))

    # -- items -----------------------------------------------------------------------------------
    def roots(self, kind: str | None = None) -> list[str]:
        items = (self.topLevelItem(i) for i in range(self.topLevelItemCount()))
        return [it.data(0, FolderRole) for it in items if kind is None or it.data(0, KindRole) == kind]

    def add_root(self, folder: str, kind: str) -> QTreeWidgetItem:
        """A top-level entry; galleries come before places."""
        n_gal = len(self.roots("gallery"))
        it = self._item(folder, os.path.basename(folder.rstrip(os.sep)) or folder)
        it.setData(0, KindRole, kind)
        if kind == "gallery":
            f = QFont(it.font(0))
            f.setBold(True)
            it.setFont(0, f)
            self.insertTopLevelItem(n_gal, it)
        else:
            if folder == os.path.realpath(os.path.expanduser("~")):
                it.setText(0, "Home")
            self.addTopLevelItem(it)
        return it

    def remove_root(self, folder: str) -> None:
        for i in range(self.topLevelItemCount()):
            if self.topLevelItem(i).data(0, FolderRole) == folder:
                self.takeTopLevelItem(i)
                return

    def _item(self, folder: str, label: str) -> QTreeWidgetItem:
        it = QTreeWidgetItem([label, ""])
        it.setData(0, FolderRole, folder)
        it.setToolTip(0, folder)
        it.setIcon(0, self.icon)
        it.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
        self._show_counts(it)
        return it

    def _populate(self, item: QTreeWidgetItem) -> None:
        if item.data(0, LoadedRole):
            return
        item.setData(0, LoadedRole, True)
        folder = item.data(0, FolderRole)
        try:
            names = sorted((e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)),
                           key=str.lower)
        except OSError:
            names = []
        for name in names:
            item.addChild(self._item(os.path.join(folder, name), name))
        if not names:
            item.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.DontShowIndicatorWhenChildless)

    def reveal(self, folder: str) -> bool:
        """Expand down to ``folder`` and select it; False when no entry leads there (without hidden folders)."""
        best = None
        for i in range(self.topLevelItemCount()):
            it = self.topLevelItem(i)
            root = it.data(0, FolderRole)
            if _under(folder, root) and (best is None or len(root) > len(best.data(0, FolderRole))):
                rel = os.path.relpath(folder, root)
                if rel == "." or not any(p.startswith(".") for p in rel.split(os.sep)):
                    best = it
        if best is None:
            return False
        it = best
        rel = os.path.relpath(folder, it.data(0, FolderRole))
        for part in ([] if rel == "." else rel.split(os.sep)):
            self._populate(it)
            it.setExpanded(True)
            nxt = next((it.child(j) for j in range(it.childCount()) if it.child(j).text(0) == part), None)
            if nxt is None:
                return False
            it = nxt
        if self.currentItem() is not it:
            self.setCurrentItem(it)
        self.scrollToItem(it, QAbstractItemView.ScrollHint.PositionAtCenter)
        return True

    def current_folder(self) -> str | None:
        it = self.currentItem()
        return it.data(0, FolderRole) if it is not None else None

    # -- counts ----------------------------------------------------------------------------------
    def set_status(self, status: dict[str, tuple[int, int]]) -> None:
        self.status = status
        it = QTreeWidgetItemIterator(self)
        while it.value():
            self._show_counts(it.value())
            it += 1

    def counts(self, folder: str) -> tuple[int, int]:
        return self.status.get(folder.rstrip(os.sep) or os.sep, (0, 0))

    def _show_counts(self, it: QTreeWidgetItem) -> None:
        ok, bad = self.counts(it.data(0, FolderRole))
        it.setText(1, "" if not ok and not bad else f"{ok:,}" + (f"  ·  {bad} ✗" if bad else ""))
        it.setToolTip(1, "not indexed" if not ok and not bad else f"{ok} images indexed, {bad} failed")
        it.setTextAlignment(1, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
        it.setForeground(1, QColor("#B3261E") if bad and not ok else QColor("#5F6B7A"))

    def _menu(self, pos) -> None:
        it = self.itemAt(pos)
        if it is None or it.parent() is not None or it.data(0, KindRole) != "gallery":
            return
        menu = QMenu(self)
        menu.addAction("Remove from galleries (keeps the index)", lambda f=it.data(0, FolderRole): self.removeRequested.emit(f))
        menu.exec(self.viewport().mapToGlobal(pos))


class GallerySidebar(QWidget):
    queryRequested = Signal(str)  # an image path
    detailRequested = Signal(int)  # an image id
    indexRequested = Signal(str)  # a folder
    folderChanged = Signal(str)

    def __init__(self, ctx: AppContext, thumbs, qsettings, parent=None):
        super().__init__(parent)
        self.ctx, self.qs = ctx, qsettings
        self.current_folder: str | None = None
        self._busy = self._dirty = False
        self._last_grid = self._last_status = 0.0
        self._build(thumbs)
        for g in self.galleries():
            self.tree.add_root(g, "gallery")
        for p in places():
            if p not in self.tree.roots():
                self.tree.add_root(p, "place")

    def _build(self, thumbs) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 4, 0)
        lay.setSpacing(6)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.setSpacing(4)
        head = QHBoxLayout()
        t = QLabel("GALLERIES")
        t.setObjectName("SectionTitle")
        self.add_button = QPushButton("Add gallery folder…")
        self.add_button.setToolTip("Add a folder of pictures to this list (then index it)")
        self.add_button.clicked.connect(self.ask_add_gallery)
        head.addWidget(t, 1)
        head.addWidget(self.add_button)
        self.tree = FolderTree()
        self.tree.folderSelected.connect(self._set_folder)
        self.tree.removeRequested.connect(self.remove_gallery)
        row = QHBoxLayout()
        self.index_button = QPushButton("Index folder")
        self.index_button.setObjectName("Primary")
        self.index_button.setToolTip("Index the selected folder (recursively): detect, caption and embed every image")
        self.index_button.clicked.connect(lambda: self.indexRequested.emit(self.selected_folder() or ""))
        self.folder_status = QLabel("")
        self.folder_status.setObjectName("SubHeader")
        self.folder_status.setWordWrap(True)
        row.addWidget(self.index_button)
        row.addWidget(self.folder_status, 1)
        tl.addLayout(head)
        tl.addWidget(self.tree, 1)
        tl.addLayout(row)

        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.setSpacing(4)
        self.grid_title = QLabel("IMAGES")
        self.grid_title.setObjectName("SectionTitle")
        self.gallery_model = GalleryModel(thumbs, self)
        v = self.gallery_view = QListView()
        v.setModel(self.gallery_model)
        v.setViewMode(QListView.ViewMode.IconMode)
        v.setUniformItemSizes(True)
        v.setMovement(QListView.Movement.Static)
        v.setResizeMode(QListView.ResizeMode.Adjust)
        v.setWrapping(True)
        v.setLayoutMode(QListView.LayoutMode.Batched)
        v.setBatchSize(2000)
        v.setGridSize(QSize(112, 132))
        v.setItemDelegate(GridDelegate(112, v))
        v.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        v.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        v.setDragEnabled(True)
        v.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        v.setMouseTracking(True)
        v.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        v.customContextMenuRequested.connect(self._grid_menu)
        v.doubleClicked.connect(lambda ix: ix.data(IdRole) is not None and self.detailRequested.emit(int(ix.data(IdRole))))
        self.grid_hint = QLabel(GRID_HINT)
        self.grid_hint.setObjectName("SubHeader")
        bl.addWidget(self.grid_title)
        bl.addWidget(v, 1)
        bl.addWidget(self.grid_hint)

        self.splitter.addWidget(top)
        self.splitter.addWidget(bottom)
        self.splitter.setSizes([300, 560])
        lay.addWidget(self.splitter)

    # -- galleries ---------------------------------------------------------------------------------
    def galleries(self) -> list[str]:
        """The galleries the user added (that still exist)."""
        val = self.qs.value(GALLERIES_KEY, [])
        val = [val] if isinstance(val, str) else list(val or [])
        return [g for g in dict.fromkeys(val) if g and os.path.isdir(g)]

    def add_gallery(self, folder: str) -> None:
        folder = os.path.realpath(folder)
        if folder in self.tree.roots("gallery"):
            return
        self.qs.setValue(GALLERIES_KEY, self.galleries() + [folder])
        self.tree.add_root(folder, "gallery")

    def remove_gallery(self, folder: str) -> None:
        self.qs.setValue(GALLERIES_KEY, [g for g in self.galleries() if g != folder])
        self.tree.remove_root(folder)

    def ask_add_gallery(self) -> None:
        p = QFileDialog.getExistingDirectory(self, "Add gallery folder", self.current_folder or (places() or [""])[0])
        if p:
            self.open_gallery(p, add=True)

    def open_gallery(self, folder: str, add: bool = False) -> None:
        """Show ``folder``: select it in the tree (adding it as a gallery when no entry leads there)."""
        folder = os.path.realpath(folder)
        if add or not any(_under(folder, g) for g in self.tree.roots("gallery")) and not self.tree.reveal(folder):
            self.add_gallery(folder)
        self.tree.reveal(folder)
        self._set_folder(folder)

    def note_indexed(self, folder: str) -> None:
        """A folder was indexed: list it as a gallery unless one already holds it."""
        folder = os.path.realpath(folder)
        if not any(_under(folder, g) for g in self.tree.roots("gallery")):
            self.add_gallery(folder)

    def selected_folder(self) -> str | None:
        return self.tree.current_folder() or self.current_folder

    def _set_folder(self, folder: str) -> None:
        if not folder or folder == self.current_folder:
            return
        self.current_folder = folder
        self.qs.setValue("last/gallery", folder)
        self._update_folder_label()
        self.refresh_gallery(force_reset=True)
        self.folderChanged.emit(folder)

    # -- refreshing ------------------------------------------------------------------------------
    def refresh_gallery(self, force_reset: bool = False) -> None:
        session = self.ctx.session
        if session is None:
            return
        if self._busy:
            self._dirty = True
            return
        self._busy = True
        self._last_grid = time.monotonic()
        prefix = self.current_folder

        def done(out):
            ids, paths = out
            if prefix == self.current_folder:
                if force_reset:
                    self.gallery_model.set_items([], [])
                self.gallery_model.set_items(ids, paths)
                where = os.path.basename(prefix.rstrip("/")) if prefix else "library"
                self.grid_title.setText(f"IMAGES IN {where.upper()} · {len(ids):,}")
                self.grid_hint.setText(GRID_HINT if ids else "No indexed images here yet: select a folder and click “Index folder”")

        def finished():
            self._busy = False
            if self._dirty:
                self._dirty = False
                self.refresh_gallery()

        self.ctx.tasks.start(session.gallery_items, prefix, on_result=done, on_error=self.ctx.notify.error,
                             on_finished=finished, name="gallery")

    def refresh_folder_status(self) -> None:
        session = self.ctx.session
        if session is None:
            return
        self._last_status = time.monotonic()

        def done(status):
            self.tree.set_status(status)
            self._update_folder_label()

        self.ctx.tasks.start(session.folder_status, on_result=done, on_error=self.ctx.notify.error, name="folder status")

    def refresh(self, force_reset: bool = False) -> None:
        """Grid and counts again (after indexing, or when another library was opened)."""
        self.refresh_gallery(force_reset=force_reset)
        self.refresh_folder_status()

    def on_index_progress(self, p) -> None:
        """While indexing: the grid fills in and the counts move, a few times a second at most."""
        if p.phase != "indexing":
            return
        now = time.monotonic()
        if now - self._last_grid > 1.5:
            self.refresh_gallery()
        if now - self._last_status > 4.0:
            self.refresh_folder_status()

    def set_indexing(self, busy: bool) -> None:
        self.index_button.setEnabled(not busy)
        if not busy:
            self.refresh()

    def _update_folder_label(self) -> None:
        f = self.current_folder
        if not f:
            self.folder_status.setText("Select a folder")
            return
        ok, bad = self.tree.counts(f)
        name = os.path.basename(f.rstrip("/")) or f
        if ok or bad:
            self.folder_status.setText(f"<b>{name}</b>: {ok:,} indexed" + (f", <span style='color:#B3261E'>{bad} failed</span>" if bad else ""))
        else:
            self.folder_status.setText(f"<b>{name}</b>: not indexed")

    def _grid_menu(self, pos) -> None:
        ix = self.gallery_view.indexAt(pos)
        if not ix.isValid():
            return
        menu = QMenu(self)
        menu.addAction("Search with this image", lambda p=ix.data(PathRole): self.queryRequested.emit(p))
        menu.addAction("Details and caption…", lambda i=ix.data(IdRole): self.detailRequested.emit(int(i)))
        menu.exec(self.gallery_view.viewport().mapToGlobal(pos))


__all__ = ["GallerySidebar", "FolderTree", "places", "GALLERIES_KEY"]
