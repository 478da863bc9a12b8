"""The main window: gallery browser on the left, query + side-by-side results and evaluation on the right.

Every slow call goes through ``self.tasks`` (see ``workers``); the window only ever does
cheap work on the GUI thread: re-ranking a cached candidate pool when α, k or reranking
change (``Searcher.rank_all`` is pure numpy over a few hundred candidates).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QByteArray, QModelIndex, QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QFrame, QGridLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QListView, QMainWindow, QMenu, QProgressBar, QPushButton,
                               QSlider, QSplitter, QTabWidget, QTreeView, QVBoxLayout, QWidget)

from ..core import fusion
from ..core.config import Settings
from ..core.errors import BadQuery, ExplorerError
from ..core.imageio import IMAGE_EXTENSIONS, is_image_path
from ..core.search import QuerySpec
from .delegates import GridDelegate
from .detail import DetailDialog, load_display
from .evaluation import EvaluationPanel
from .models import FolderModel, GalleryModel, IdRole, PathRole
from .results import ResultsPanel
from .session import Session
from .thumbnails import ThumbnailLoader
from .widgets import Banner, QueryDropZone, short_path
from .workers import TaskRunner

log = logging.getLogger(__name__)

ORG, APP = "RetrievalExplorer", "Retrieval Explorer"
POOL_K = 50
K_CHOICES = (5, 10, 20, 50)
SAMPLE_QUERY = ("coffee", "coffee.jpg")


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 60}:{s % 60:02d}"


class MainWindow(QMainWindow):
    queryFinished = Signal(object)  # SearchResult (after every re-rank too)
    indexFinished = Signal(object)  # IndexSummary, or None when it failed
    errorShown = Signal(str)
    captionSaved = Signal(int)
    warmedUp = Signal()

    def __init__(self, settings: Settings, library=None, loader=None, qsettings: QSettings | None = None,
                 gallery: str | None = None):
        super().__init__()
        self.settings = settings
        self.qs = qsettings or QSettings(ORG, APP)
        self.tasks = TaskRunner(max_threads=3, parent=self)
        self.session: Session | None = None
        self.last_error = ""
        self.result = None
        self.prepared = None
        self.pool = None
        self.searcher = None
        self.current_spec: QuerySpec | None = None
        self.base_path: str | None = None
        self.base_dets: list = []
        self._query_seq = 0
        self.index_worker = None
        self._after_index = None
        self._gallery_prefix: str | None = None
        self._gallery_busy = False
        self._gallery_dirty = False
        self._last_gallery_refresh = 0.0
        self._last_status_refresh = 0.0
        self._details: list[DetailDialog] = []
        self._tree_target: str | None = None
        self._index_summary = None
        self.warm = False

        self.setWindowTitle("Retrieval Explorer")
        self.resize(1400, 900)
        self.setMinimumSize(1000, 640)
        self.thumbs = ThumbnailLoader(os.path.join(settings.library, "thumbnails"), threads=2, parent=self)
        self._build()
        self._build_menus()
        try:
            self.session = Session(settings, library=library, loader=loader)
            self.thumbs.set_cache_dir(self.session.library.dir / "thumbnails")
        except ExplorerError as e:
            QTimer.singleShot(0, lambda m=str(e): self.show_error(m))
        self._restore_state()
        self._update_library_label()
        start = gallery or self.qs.value("last/gallery", "", type=str) or None
        if start and os.path.isdir(start):
            self.open_gallery(start)
        else:
            self.refresh_gallery()
        self.refresh_folder_status()
        self.warm_up()

    # ======================================================================================
    # construction
    def _build(self) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(10, 8, 10, 6)
        outer.setSpacing(6)
        self.banner = Banner()
        outer.addWidget(self.banner)
        self.main_split = QSplitter(Qt.Orientation.Horizontal)
        self.main_split.setChildrenCollapsible(False)
        self.main_split.addWidget(self._build_left())
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self._build_search(), "Search")
        self.eval_panel = EvaluationPanel(self)
        self.tabs.addTab(self.eval_panel, "Evaluate")
        self.main_split.addWidget(self.tabs)
        self.main_split.setStretchFactor(0, 0)
        self.main_split.setStretchFactor(1, 1)
        self.main_split.setSizes([380, 1000])
        outer.addWidget(self.main_split, 1)
        self.setCentralWidget(central)

        sb = self.statusBar()
        self.status_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel_index)
        self.library_label = QLabel("")
        self.library_label.setObjectName("SubHeader")
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)
        sb.addPermanentWidget(self.library_label)
        # the error text, also for tests (the banner hides itself after a while)
        self.error_label = self.banner.label

    def _build_left(self) -> QWidget:
        left = QWidget()
        lay = QVBoxLayout(left)
        lay.setContentsMargins(0, 0, 4, 0)
        lay.setSpacing(6)
        self.left_split = QSplitter(Qt.Orientation.Vertical)
        self.left_split.setChildrenCollapsible(False)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.setSpacing(4)
        t = QLabel("GALLERIES")
        t.setObjectName("SectionTitle")
        self.folder_model = FolderModel(self)
        self.folder_model.setRootPath("/")
        self.folder_view = QTreeView()
        self.folder_view.setModel(self.folder_model)
        self.folder_view.setRootIndex(self.folder_model.index("/"))
        for c in (2, 3):
            self.folder_view.hideColumn(c)
        hdr = self.folder_view.header()
        hdr.setStretchLastSection(False)
        hdr.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        hdr.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        hdr.resizeSection(1, 90)
        self.folder_view.setUniformRowHeights(True)
        self.folder_view.setAnimated(False)
        self.folder_view.selectionModel().currentChanged.connect(self._on_folder_changed)
        self.folder_model.directoryLoaded.connect(self._on_dir_loaded)
        row = QHBoxLayout()
        self.index_button = QPushButton("Index folder")
        self.index_button.setObjectName("Primary")
        self.index_button.setToolTip("Index the selected folder (recursively): detect, caption and embed every image")
        self.index_button.clicked.connect(lambda: self.index_folder())
        self.folder_status = QLabel("")
        self.folder_status.setObjectName("SubHeader")
        self.folder_status.setWordWrap(True)
        row.addWidget(self.index_button)
        row.addWidget(self.folder_status, 1)
        tl.addWidget(t)
        tl.addWidget(self.folder_view, 1)
        tl.addLayout(row)

        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.setSpacing(4)
        self.grid_title = QLabel("IMAGES")
        self.grid_title.setObjectName("SectionTitle")
        self.gallery_model = GalleryModel(self.thumbs, self)
        self.gallery_view = QListView()
        self.gallery_view.setModel(self.gallery_model)
        self.gallery_view.setViewMode(QListView.ViewMode.IconMode)
        self.gallery_view.setUniformItemSizes(True)
        self.gallery_view.setMovement(QListView.Movement.Static)
        self.gallery_view.setResizeMode(QListView.ResizeMode.Adjust)
        self.gallery_view.setWrapping(True)
        self.gallery_view.setLayoutMode(QListView.LayoutMode.Batched)
        self.gallery_view.setBatchSize(2000)
        self.gallery_view.setGridSize(QSize(112, 132))
        self.gallery_view.setItemDelegate(GridDelegate(112, self.gallery_view))
        self.gallery_view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.gallery_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.gallery_view.setDragEnabled(True)
        self.gallery_view.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.gallery_view.setMouseTracking(True)
        self.gallery_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.gallery_view.customContextMenuRequested.connect(self._grid_menu)
        self.gallery_view.doubleClicked.connect(lambda ix: self.open_detail(ix.data(IdRole)))
        self.grid_hint = QLabel("Double-click for details · drag onto the query to search")
        self.grid_hint.setObjectName("SubHeader")
        bl.addWidget(self.grid_title)
        bl.addWidget(self.gallery_view, 1)
        bl.addWidget(self.grid_hint)

        self.left_split.addWidget(top)
        self.left_split.addWidget(bottom)
        self.left_split.setSizes([300, 560])
        lay.addWidget(self.left_split)
        return left

    def _build_search(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.setContentsMargins(4, 6, 0, 0)
        self.search_split = QSplitter(Qt.Orientation.Vertical)
        self.search_split.setChildrenCollapsible(False)

        qbox = QFrame()
        qbox.setObjectName("Panel")
        ql = QHBoxLayout(qbox)
        ql.setContentsMargins(10, 10, 12, 10)
        ql.setSpacing(14)
        self.drop_zone = QueryDropZone()
        self.drop_zone.setMinimumWidth(300)
        self.drop_zone.fileDropped.connect(self.query_image)
        self.drop_zone.boxClicked.connect(self.query_object)
        ql.addWidget(self.drop_zone, 5)

        side = QWidget()
        g = QGridLayout(side)
        g.setContentsMargins(0, 0, 0, 0)
        g.setHorizontalSpacing(8)
        g.setVerticalSpacing(8)
        title = QLabel("Query")
        title.setObjectName("Header")
        self.query_info = QLabel("Drop an image, or type a text query.")
        self.query_info.setObjectName("SubHeader")
        self.query_info.setWordWrap(True)
        g.addWidget(title, 0, 0)
        g.addWidget(self.query_info, 0, 1, 1, 3)

        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("Text query, or how to change the dropped image (e.g. “the same in red”)")
        self.text_edit.setClearButtonEnabled(True)
        self.text_edit.returnPressed.connect(self.search_text)
        self.search_button = QPushButton("Search")
        self.search_button.setObjectName("Primary")
        self.search_button.clicked.connect(self.search_text)
        self.clear_button = QPushButton("Clear image")
        self.clear_button.setToolTip("Forget the query image (the text box becomes a plain text query)")
        self.clear_button.clicked.connect(self.clear_query)
        g.addWidget(QLabel("Text"), 1, 0)
        g.addWidget(self.text_edit, 1, 1)
        g.addWidget(self.search_button, 1, 2)
        g.addWidget(self.clear_button, 1, 3)

        self.caption_edit = QLineEdit()
        self.caption_edit.setPlaceholderText("the query's caption appears here; edit it and re-run")
        self.caption_edit.returnPressed.connect(self.rerun_with_caption)
        self.caption_button = QPushButton("Re-run")
        self.caption_button.setToolTip("Search again with this caption for the query image")
        self.caption_button.clicked.connect(self.rerun_with_caption)
        self.caption_source = QLabel("")
        self.caption_source.setObjectName("SubHeader")
        g.addWidget(QLabel("Caption"), 2, 0)
        g.addWidget(self.caption_edit, 2, 1)
        g.addWidget(self.caption_button, 2, 2)
        g.addWidget(self.caption_source, 2, 3)

        ctl = QHBoxLayout()
        ctl.setSpacing(8)
        self.alpha_slider = QSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0, 100)
        self.alpha_slider.setValue(round(fusion.DEFAULT_ALPHA * 100))
        self.alpha_slider.setMinimumWidth(160)
        self.alpha_slider.setToolTip("Caption fusion weight α: 0 = image only, 1 = caption only (re-ranks live)")
        self.alpha_value = QLabel("0.30")
        self.alpha_value.setMinimumWidth(32)
        self.alpha_slider.valueChanged.connect(self._on_alpha)
        self.k_combo = QComboBox()
        for k in K_CHOICES:
            self.k_combo.addItem(str(k), k)
        self.k_combo.setCurrentIndex(1)
        self.k_combo.currentIndexChanged.connect(lambda _: self.rerank())
        self.rerank_combo = QComboBox()
        self.rerank_combo.addItem("none", "none")
        self.rerank_combo.addItem("α-QE", "aqe")
        self.rerank_combo.addItem("SuperGlobal", "superglobal")
        self.rerank_combo.addItem("k-reciprocal", "kreciprocal")
        self.rerank_combo.setToolTip("Re-ranking: α-QE averages the query with its top neighbours; SuperGlobal refines the top 50 "
                                     "by their neighbourhoods; k-reciprocal compares reciprocal-neighbour sets")
        self.rerank_combo.currentIndexChanged.connect(lambda _: self.rerank())
        self.caption_check = QCheckBox("Caption-only")
        self.caption_check.setToolTip("Show a third column: caption-only retrieval (text to text)")
        self.caption_check.toggled.connect(self._on_caption_column)
        self.learned_check = QCheckBox("Learned")
        self.learned_check.setEnabled(False)
        self.learned_check.setToolTip("Load a trained fusion head (File ▸ Load fusion head…) to compare the learned-fused mode")
        self.learned_check.toggled.connect(self._on_learned_column)
        self.boxes_check = QCheckBox("Boxes")
        self.boxes_check.setChecked(True)
        self.boxes_check.setToolTip("Show detected objects on every image")
        self.boxes_check.toggled.connect(self._on_boxes)
        ctl.addWidget(QLabel("α"))
        ctl.addWidget(self.alpha_slider, 1)
        ctl.addWidget(self.alpha_value)
        ctl.addSpacing(8)
        ctl.addWidget(QLabel("k"))
        ctl.addWidget(self.k_combo)
        ctl.addSpacing(8)
        ctl.addWidget(QLabel("Rerank"))
        ctl.addWidget(self.rerank_combo)
        ctl.addSpacing(8)
        ctl.addWidget(self.caption_check)
        ctl.addWidget(self.learned_check)
        ctl.addWidget(self.boxes_check)
        g.addLayout(ctl, 3, 0, 1, 4)

        self.stats_label = QLabel("overlap@k and Spearman ρ between the columns appear here")
        self.stats_label.setObjectName("Stats")
        self.stats_label.setWordWrap(True)
        g.addWidget(self.stats_label, 4, 0, 1, 4)
        g.setRowStretch(5, 1)
        g.setColumnStretch(1, 1)
        ql.addWidget(side, 7)

        self.results = ResultsPanel(self.thumbs)
        self.results.activated.connect(self.open_detail)
        self.search_split.addWidget(qbox)
        self.search_split.addWidget(self.results)
        self.search_split.setSizes([280, 600])
        lay.addWidget(self.search_split)
        return page

    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        a = QAction("Open gallery folder…", self)
        a.setShortcut(QKeySequence.StandardKey.Open)
        a.triggered.connect(self._ask_gallery)
        m.addAction(a)
        a = QAction("Open query image…", self)
        a.triggered.connect(self._ask_query)
        m.addAction(a)
        a = QAction("Index selected folder", self)
        a.setShortcut(QKeySequence("Ctrl+I"))
        a.triggered.connect(lambda: self.index_folder())
        m.addAction(a)
        m.addSeparator()
        a = QAction("Load fusion head…", self)
        a.triggered.connect(self.choose_head)
        m.addAction(a)
        a = QAction("Settings…", self)
        a.setShortcut(QKeySequence("Ctrl+,"))
        a.triggered.connect(self.open_settings)
        m.addAction(a)
        m.addSeparator()
        a = QAction("Quit", self)
        a.setShortcut(QKeySequence.StandardKey.Quit)
        a.triggered.connect(self.close)
        m.addAction(a)
        v = self.menuBar().addMenu("&View")
        a = QAction("Detection boxes", self, checkable=True, checked=True)
        a.toggled.connect(self.boxes_check.setChecked)
        self.boxes_check.toggled.connect(a.setChecked)
        v.addAction(a)
        a = QAction("Caption-only column", self, checkable=True)
        a.toggled.connect(self.caption_check.setChecked)
        self.caption_check.toggled.connect(a.setChecked)
        v.addAction(a)

    # ======================================================================================
    # state persistence
    def _restore_state(self) -> None:
        geo = self.qs.value("window/geometry")
        if isinstance(geo, (QByteArray, bytes)) and geo:
            self.restoreGeometry(geo)
        st = self.qs.value("window/state")
        if isinstance(st, (QByteArray, bytes)) and st:
            self.restoreState(st)
        for name in ("main_split", "left_split", "search_split"):
            val = self.qs.value(f"splitters/{name}")
            if isinstance(val, (QByteArray, bytes)) and val:
                getattr(self, name).restoreState(val)
        val = self.qs.value("splitters/results")
        if isinstance(val, (QByteArray, bytes)) and val:
            self.results.splitter.restoreState(val)
        self.boxes_check.setChecked(self.qs.value("view/boxes", True, type=bool))
        self.caption_check.setChecked(self.qs.value("view/caption_column", False, type=bool))

    def save_state(self) -> None:
        self.qs.setValue("window/geometry", self.saveGeometry())
        self.qs.setValue("window/state", self.saveState())
        for name in ("main_split", "left_split", "search_split"):
            self.qs.setValue(f"splitters/{name}", getattr(self, name).saveState())
        self.qs.setValue("splitters/results", self.results.splitter.saveState())
        self.qs.setValue("view/boxes", self.boxes_check.isChecked())
        self.qs.setValue("view/caption_column", self.caption_check.isChecked())
        if self._gallery_prefix:
            self.qs.setValue("last/gallery", self._gallery_prefix)
        if self.session is not None:
            self.qs.setValue("last/library", str(self.session.library.dir))
        self.qs.sync()

    def closeEvent(self, e) -> None:  # noqa: N802
        self.save_state()
        for d in list(self._details):
            d.close()
        self.status_label.setText("finishing background work…")
        self.tasks.shutdown(60000)
        self.thumbs.stop()
        if self.session is not None:
            self.session.close()
        super().closeEvent(e)

    # ======================================================================================
    # messages
    def show_error(self, msg: str) -> None:
        """Show a problem without interrupting: banner + status bar (and ``last_error`` for tests)."""
        self.last_error = msg
        log.warning("%s", msg)
        self.banner.show_message(msg)
        self.statusBar().showMessage(msg, 15000)
        self.errorShown.emit(msg)

    def info(self, msg: str, timeout: int = 8000) -> None:
        self.statusBar().showMessage(msg, timeout)

    def _update_library_label(self) -> None:
        if self.session is None:
            self.library_label.setText("no library")
        else:
            self.library_label.setText(f"library: {short_path(str(self.session.library.dir), 3)}")
            self.library_label.setToolTip(str(self.session.library.dir))

    # ======================================================================================
    # models and galleries
    def warm_up(self, then=None) -> None:
        if self.session is None:
            return
        self.status_label.setText("Loading models…")
        session = self.session

        def done(repairs):
            self.warm = True
            self.status_label.setText("Ready")
            if repairs:
                self.info("consistency check repaired: " + "; ".join(repairs))
            self.warmedUp.emit()
            if then:
                then()

        def failed(msg):
            self.status_label.setText("Models unavailable: open Settings")
            self.show_error(msg)

        self.tasks.start(session.warm_up, on_result=done, on_error=failed, name="warm-up")

    def open_gallery(self, folder: str) -> None:
        folder = os.path.realpath(folder)
        self._set_gallery(folder)
        # QFileSystemModel lists folders lazily: reveal the gallery as its ancestors get loaded
        self._tree_target = folder
        self._reveal_folder(folder)
        QTimer.singleShot(30000, lambda: setattr(self, "_tree_target", None))

    def _reveal_folder(self, folder: str) -> None:
        ix = self.folder_model.index(folder)
        if not ix.isValid():
            return
        p = ix.parent()
        chain = []
        while p.isValid():
            chain.append(p)
            p = p.parent()
        for a in reversed(chain):
            self.folder_view.expand(a)
        if self.folder_view.currentIndex() != ix:
            self.folder_view.setCurrentIndex(ix)
        self.folder_view.scrollTo(ix, QAbstractItemView.ScrollHint.PositionAtCenter)

    def _on_dir_loaded(self, path: str) -> None:
        target = getattr(self, "_tree_target", None)
        if target and (target == path or target.startswith(path.rstrip("/") + "/")):
            self._reveal_folder(target)

    def _ask_gallery(self) -> None:
        p = QFileDialog.getExistingDirectory(self, "Open gallery folder", self._gallery_prefix or os.path.expanduser("~"))
        if p:
            self.open_gallery(p)

    def _ask_query(self) -> None:
        exts = " ".join(f"*{e}" for e in sorted(IMAGE_EXTENSIONS))
        p, _ = QFileDialog.getOpenFileName(self, "Query image", self._gallery_prefix or "", f"Images ({exts})")
        if p:
            self.query_image(p)

    def _on_folder_changed(self, current: QModelIndex, _prev=None) -> None:
        if current.isValid():
            if self._tree_target and self.folder_model.filePath(current) != self._tree_target:
                self._tree_target = None  # the user chose another folder: stop revealing ours
            self._set_gallery(self.folder_model.filePath(current))

    def _set_gallery(self, folder: str) -> None:
        if folder == self._gallery_prefix:
            return
        self._gallery_prefix = folder
        self.qs.setValue("last/gallery", folder)
        self._update_folder_label()
        self.refresh_gallery(force_reset=True)

    def selected_folder(self) -> str | None:
        ix = self.folder_view.currentIndex()
        return self.folder_model.filePath(ix) if ix.isValid() else self._gallery_prefix

    def refresh_gallery(self, force_reset: bool = False) -> None:
        if self.session is None:
            return
        if self._gallery_busy:
            self._gallery_dirty = True
            return
        self._gallery_busy = True
        self._last_gallery_refresh = time.monotonic()
        prefix = self._gallery_prefix
        session = self.session

        def done(out):
            ids, paths = out
            if prefix == self._gallery_prefix:
                if force_reset:
                    self.gallery_model.set_items([], [])
                self.gallery_model.set_items(ids, paths)
                where = os.path.basename(prefix.rstrip("/")) if prefix else "library"
                self.grid_title.setText(f"IMAGES IN {where.upper()} · {len(ids):,}")
                self.grid_hint.setText("Double-click for details · drag onto the query to search" if ids else
                                       "No indexed images here yet: select a folder and click “Index folder”")

        def finished():
            self._gallery_busy = False
            if self._gallery_dirty:
                self._gallery_dirty = False
                self.refresh_gallery()

        self.tasks.start(session.gallery_items, prefix, on_result=done, on_error=self.show_error, on_finished=finished,
                         name="gallery")

    def refresh_folder_status(self) -> None:
        if self.session is None:
            return
        self._last_status_refresh = time.monotonic()

        def done(status):
            self.folder_model.set_status(status)
            self.folder_view.viewport().update()
            self._update_folder_label()

        self.tasks.start(self.session.folder_status, on_result=done, on_error=self.show_error, name="folder status")

    def _update_folder_label(self) -> None:
        f = self._gallery_prefix
        if not f:
            self.folder_status.setText("Select a folder")
            return
        ok, bad = self.folder_model.counts(f)
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
        menu.addAction("Search with this image", lambda p=ix.data(PathRole): self.query_image(p))
        menu.addAction("Details and caption…", lambda i=ix.data(IdRole): self.open_detail(i))
        menu.exec(self.gallery_view.viewport().mapToGlobal(pos))

    # ======================================================================================
    # indexing
    def index_folder(self, folder: str | None = None, then=None) -> None:
        if self.session is None:
            self.show_error("no library is open: choose one in Settings")
            return
        folder = folder or self.selected_folder()
        if not folder:
            self.show_error("select a folder to index first")
            return
        if self.index_worker is not None:
            self.show_error("indexing is already running; cancel it first or wait for it to finish")
            return
        if not os.path.isdir(folder):
            self.show_error(f"not a folder: {folder}")
            return
        if not os.access(folder, os.R_OK | os.X_OK):
            self.show_error(f"folder is not readable (permission denied): {folder}")
            return
        from ..core.pipeline import Indexer

        lib = self.session.library

        def job(worker):
            return Indexer(lib).run([folder], progress=lambda p: worker.report(replace(p), key=p.phase), cancel=worker.cancel)

        self._after_index = then
        self.index_button.setEnabled(False)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        self.status_label.setText(f"Indexing {os.path.basename(folder) or folder}…")
        self.index_worker = self.tasks.start(job, pass_worker=True, on_result=self._on_indexed, on_error=self._on_index_failed,
                                             on_progress=self._on_index_progress, on_finished=self._on_index_finished,
                                             name="index")

    def cancel_index(self) -> None:
        if self.index_worker is not None:
            self.index_worker.cancel.set()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling: finishing the current batch and saving…")

    def _on_index_progress(self, p) -> None:
        if p.phase == "indexing" and p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
            fail = f" · {p.failed} failed" if p.failed else ""
            self.status_label.setText(f"Indexing {p.done:,}/{p.total:,} · {p.rate:.1f} img/s · ETA {_fmt_eta(p.eta)}{fail}")
            now = time.monotonic()
            if now - self._last_gallery_refresh > 1.5:
                self.refresh_gallery()
            if now - self._last_status_refresh > 4.0:
                self.refresh_folder_status()
        else:
            self.progress.setRange(0, 0)
            self.status_label.setText(f"{p.phase.capitalize()}…")

    def _on_indexed(self, summary) -> None:
        msg = (f"Indexed {summary.indexed:,} images ({summary.unchanged:,} unchanged, {summary.removed} removed, "
               f"{len(summary.failures)} failed) in {summary.elapsed:.1f} s")
        if summary.cancelled:
            msg = "Cancelled: " + msg + "; index again to continue"
        self.status_label.setText(msg)
        if summary.failures:
            f = summary.failures[0]
            more = f" (and {len(summary.failures) - 1} more)" if len(summary.failures) > 1 else ""
            self.show_error(f"{len(summary.failures)} file(s) could not be indexed: {os.path.basename(f.path)}: {f.reason}{more}")
        self._index_summary = summary

    def _on_index_failed(self, msg: str) -> None:
        self.status_label.setText("Indexing failed")
        self.show_error(msg)
        self._index_summary = None

    def _on_index_finished(self) -> None:
        """Last of a run's signals: reset the controls, refresh the views, then tell listeners."""
        self.index_worker = None
        self.index_button.setEnabled(True)
        self.progress.hide()
        self.cancel_button.hide()
        self.refresh_gallery()
        self.refresh_folder_status()
        summary, self._index_summary = getattr(self, "_index_summary", None), None
        then, self._after_index = self._after_index, None
        self.indexFinished.emit(summary)
        if then and summary is not None and not summary.cancelled:
            then()

    # ======================================================================================
    # queries
    def alpha(self) -> float:
        return self.alpha_slider.value() / 100.0

    def k(self) -> int:
        return int(self.k_combo.currentData())

    def modes(self) -> tuple[str, ...]:
        modes = ("image", "fused", "caption") if self.caption_check.isChecked() else ("image", "fused")
        if self.learned_check.isChecked() and self.prepared is not None and self.prepared.learned_vec is not None:
            modes += ("learned",)
        return modes

    def query_image(self, path: str) -> None:
        """An image dropped or chosen: image query, or composed with the text box as modifier."""
        if not path:
            return
        if os.path.isdir(path):
            self.show_error(f"{path} is a folder: select it in the gallery tree and click “Index folder” to add it")
            return
        if not is_image_path(path) and os.path.isfile(path):
            self.show_error(f"cannot use {os.path.basename(path)} as a query: not an image file "
                            f"(supported: {', '.join(sorted(IMAGE_EXTENSIONS))})")
            return
        modifier = self.text_edit.text().strip() or None
        self.run_query(QuerySpec(image=path, modifier=modifier), new_image=True)

    def query_object(self, i: int) -> None:
        if self.base_path is None or not (0 <= i < len(self.base_dets)):
            return
        label, _, box = self.base_dets[i]
        self.drop_zone.set_detections(self.base_dets, highlight=i)
        self.run_query(QuerySpec(image=self.base_path, box=tuple(box)), new_image=False, object_label=label)

    def search_text(self) -> None:
        text = self.text_edit.text().strip()
        if self.base_path is not None:
            self.run_query(QuerySpec(image=self.base_path, modifier=text or None), new_image=False)
        elif text:
            self.run_query(QuerySpec(text=text), new_image=True)
        else:
            self.show_error("type a text query, or drop an image")

    def rerun_with_caption(self) -> None:
        if self.current_spec is None:
            return
        cap = self.caption_edit.text().strip() or None
        if self.current_spec.image is None:
            self.text_edit.setText(cap or "")
            self.search_text()
            return
        self.run_query(replace(self.current_spec, caption=cap), new_image=False)

    def clear_query(self) -> None:
        self._query_seq += 1
        self.base_path, self.base_dets = None, []
        self.current_spec = self.prepared = self.pool = self.result = None
        self.drop_zone.clear()
        self.drop_zone.busy_text = ""
        self.caption_edit.clear()
        self.caption_source.clear()
        self.query_info.setText("Drop an image, or type a text query.")
        self.results.clear()
        self.stats_label.setText("overlap@k and Spearman ρ between the columns appear here")

    def run_query(self, spec: QuerySpec, new_image: bool = True, object_label: str | None = None) -> None:
        if self.session is None:
            self.show_error("no library is open: choose one in Settings")
            return
        self._query_seq += 1
        seq = self._query_seq
        session = self.session
        want_display = new_image and spec.image is not None

        def job():
            display = None
            if want_display:
                try:
                    display = load_display(spec.image)
                except ExplorerError as e:
                    raise BadQuery(f"cannot use {os.path.basename(spec.image)} as a query: {e}") from None
            searcher = session.searcher()
            pq = searcher.prepare(spec)
            pool = searcher.candidate_pool(pq, POOL_K)
            return searcher, pq, pool, display

        self.drop_zone.busy_text = "Searching…" + ("" if self.warm else " (loading models)")
        self.drop_zone.update()
        self.status_label.setText("Searching…")
        self.tasks.start(job, on_result=lambda out: self._on_prepared(seq, spec, out, new_image, object_label),
                         on_error=lambda msg: self._on_query_failed(seq, msg), name="query")

    def _on_query_failed(self, seq: int, msg: str) -> None:
        if seq != self._query_seq:
            return
        self.drop_zone.busy_text = ""
        self.drop_zone.update()
        self.status_label.setText("Query failed")
        self.show_error(msg)

    def _on_prepared(self, seq: int, spec: QuerySpec, out, new_image: bool, object_label: str | None) -> None:
        if seq != self._query_seq:
            return  # a newer query superseded this one
        searcher, pq, pool, display = out
        self.searcher, self.prepared, self.pool, self.current_spec = searcher, pq, pool, spec
        self.drop_zone.busy_text = ""
        if new_image:
            if display is not None:
                img, size = display
                self.drop_zone.set_image(img, size)
                self.base_path = spec.image
                self.base_dets = [(d.label, d.score, d.box) for d in pq.detections]
                self.drop_zone.set_detections(self.base_dets)
            else:
                self.base_path, self.base_dets = None, []
                self.drop_zone.clear()
        self.drop_zone.update()
        cap = pq.caption
        self.caption_edit.setText(cap.text if cap else "")
        self.caption_edit.setCursorPosition(0)
        if cap is not None:
            self.caption_source.setText(f"{cap.source} · weight {pq.caption_weight:.2f}")
            self.caption_source.setToolTip("where the query caption came from, and its weight in caption fusion")
        kind = spec.kind
        if kind == "object":
            info = f"<b>Object query</b>: {object_label or 'region'} — click another box, or the caption to edit"
        elif kind == "composed":
            info = f"<b>Composed query</b>: image + “{spec.modifier}”<br>target: <i>{pq.target_text}</i>"
        elif kind == "image":
            n = len(pq.detections)
            info = (f"<b>Image query</b> · {os.path.basename(spec.image)} · {n} object{'s' if n != 1 else ''} detected"
                    + (" — click a box to search for that object" if n else ""))
        else:
            info = f"<b>Text query</b>: “{spec.text}”"
        self.query_info.setText(info)
        t = pq.timings
        self.status_label.setText("Query ready in " + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()))
        self.banner.hide()
        self.rerank()

    def rerank(self) -> None:
        """Re-rank the cached pool (no model runs): α, k, reranking, or the caption column changed."""
        if self.prepared is None or self.pool is None or self.searcher is None:
            return
        try:
            res = self.searcher.rank_all(self.prepared, self.pool, self.modes(), self.k(), self.alpha(),
                                         self.rerank_combo.currentData())
        except ExplorerError as e:
            self.show_error(str(e))
            return
        self.result = res
        self.results.set_alpha(self.alpha(), composed=self.prepared.target_text is not None)
        self.results.set_result(res)
        self._show_stats(res)
        self.queryFinished.emit(res)

    def _show_stats(self, res) -> None:
        k = res.k
        if not res.comparisons:
            self.stats_label.setText("")
            return
        names = {"image": "image", "fused": "fused", "caption": "caption", "learned": "learned"}
        head, ov, rho = [], [], []
        for key, c in res.comparisons.items():
            a, b = key.split("_vs_")
            head.append(f"<th style='padding:0 18px 2px 0;text-align:left;white-space:nowrap'>{names[a]} ↔ {names[b]}</th>")
            ov.append(f"<td style='padding-right:18px'>{c['overlap_at_k']:.2f}</td>")
            r = "–" if c.get("spearman") is None else f"{c['spearman']:.2f}"
            rho.append(f"<td style='padding-right:18px'>{r}</td>")
        lab = "style='color:#5F6B7A;padding-right:12px'"
        self.stats_label.setText(
            "<table cellspacing='0'>"
            f"<tr><td></td>{''.join(head)}</tr>"
            f"<tr><td {lab}>overlap@{k}</td>{''.join(ov)}</tr>"
            f"<tr><td {lab}>Spearman ρ</td>{''.join(rho)}</tr></table>")

    def _on_alpha(self, v: int) -> None:
        self.alpha_value.setText(f"{v / 100:.2f}")
        self.results.set_alpha(v / 100, composed=bool(self.prepared and self.prepared.target_text))
        self.rerank()

    def _on_learned_column(self, on: bool) -> None:
        self.results.show_learned_column(on)
        self.rerank()

    def choose_head(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a trained fusion head", "models", "Fusion heads (*.safetensors)")
        if path:
            self.load_head(path)

    def load_head(self, path: str) -> None:
        """Load a head in a worker (it embeds the gallery), then show the learned column."""
        if self.session is None:
            self.show_error("no library is open: choose one in Settings")
            return
        self.status_label.setText(f"Loading fusion head {os.path.basename(path)}…")

        def done(name: str) -> None:
            self.learned_check.setEnabled(True)
            self.learned_check.setChecked(True)
            self.info(f"Fusion head {name} loaded: the learned-fused column compares it with image-only")
            if self.current_spec is not None:
                self.run_query(self.current_spec, new_image=False)

        self.tasks.start(self.session.load_head, path, on_result=done, on_error=self.show_error, name="load head")

    def _on_caption_column(self, on: bool) -> None:
        self.results.show_caption_column(on)
        self.rerank()

    def _on_boxes(self, on: bool) -> None:
        self.results.set_show_boxes(on)
        self.drop_zone.show_boxes = on
        self.drop_zone.update()

    # ======================================================================================
    # details and caption edits
    def open_detail(self, image_id) -> DetailDialog | None:
        if image_id is None or self.session is None:
            return None
        d = DetailDialog(self, int(image_id))
        d.searchRequested.connect(self.query_image)
        d.finished.connect(lambda _=0, d=d: self._details.remove(d) if d in self._details else None)
        self._details.append(d)
        d.show()
        return d

    def save_caption(self, image_id: int, text: str, on_done=None, on_error=None) -> None:
        from ..core.edits import set_user_caption

        session = self.session
        pq = self.prepared

        def job():
            set_user_caption(session.library, image_id, text)
            if pq is not None:  # refresh the candidates' vectors; the query itself need not be re-encoded
                searcher = session.searcher()
                return searcher.candidate_pool(pq, POOL_K)
            return None

        def done(pool):
            if pool is not None and pq is self.prepared:
                self.pool = pool
                self.rerank()
            self.info("Caption saved and re-embedded")
            self.captionSaved.emit(int(image_id))
            if on_done:
                on_done(image_id)

        def failed(msg):
            (on_error or self.show_error)(msg)

        self.tasks.start(job, on_result=done, on_error=failed, name="save caption")

    # ======================================================================================
    # settings
    def open_settings(self):
        from .settings_dialog import SettingsDialog

        d = SettingsDialog(self, self.session.settings if self.session else self.settings)
        d.saved.connect(self.apply_settings)
        d.show()
        return d

    def apply_settings(self, new: Settings) -> None:
        old = self.session.settings if self.session else self.settings
        if self.index_worker is not None:
            self.cancel_index()
        models_changed = any(new.spec(r) != old.spec(r) for r in ("image", "text", "captioner", "detector")) or \
            new.detector_labels != old.detector_labels or new.device != old.device
        lib_changed = os.path.realpath(os.path.expanduser(new.library)) != os.path.realpath(os.path.expanduser(old.library))
        self.settings = new
        if not models_changed and not lib_changed and self.session is not None:
            self.session.settings = new
            self.info("Settings saved")
            return
        loader = None if models_changed or self.session is None else self.session.loader
        try:
            from ..core.library import Library
            from ..core.models.registry import ModelLoader

            loader = loader or ModelLoader(new)
            session = Session(new, library=Library(new.library, new, loader=loader))
        except ExplorerError as e:
            self.show_error(str(e))
            return
        old_session, self.session = self.session, session
        self.clear_query()
        self.warm = False
        self.thumbs.set_cache_dir(session.library.dir / "thumbnails")
        self.qs.setValue("last/library", str(session.library.dir))
        self._update_library_label()
        self.refresh_gallery(force_reset=True)
        self.refresh_folder_status()
        self.warm_up()
        self.info("Settings saved; models and library reloaded")
        if old_session is not None and old_session.library is not session.library:
            # other workers may still hold it; it is closed when the window closes or it is collected
            pass

    # ======================================================================================
    # demo
    def start_demo(self, gallery: str) -> None:
        """Open the sample gallery, index it when needed, then run a sample query."""
        self.open_gallery(gallery)
        sample = os.path.join(gallery, *SAMPLE_QUERY)

        def run_sample():
            if os.path.isfile(sample):
                self.query_image(sample)

        if self.session is None:
            return
        session = self.session

        def needs_index():
            ok, bad = session.folder_counts(gallery)
            n = sum(1 for _, _, files in os.walk(gallery) for f in files if is_image_path(f))
            return ok + bad < n

        def decided(need):
            if need:
                self.index_folder(gallery, then=run_sample)
            elif self.warm:
                run_sample()
            else:
                self.warmedUp.connect(run_sample, Qt.ConnectionType.SingleShotConnection)

        self.tasks.start(needs_index, on_result=decided, on_error=self.show_error, name="demo check")


__all__ = ["MainWindow", "ORG", "APP", "Path"]
