"""The main window: builds the parts, wires their signals, holds the menus and the window state.

The parts own their state and talk through signals (attribute, module):

- ``sidebar``, ``GallerySidebar`` (gallery.py): galleries and folders with index counts, the grid;
- ``search_page``, ``SearchPage`` (search_page.py): the query, its pool and searcher, the results;
- ``eval_panel``, ``EvaluationPanel`` (evaluation.py): ground truth in, metrics and PR curves out;
- ``indexing``, ``IndexingController`` (indexing.py): the indexing run, its progress and cancel;
- ``ctx``, ``AppContext`` (context.py): the session, the task runner and the ``Notifier``
  (``notify``) through which every error and notice reaches the banner and the status bar.
  Dialogs get the context, never the window.

Menus are declared in ``actions``; the ``--demo`` flow is in ``demo``.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtWidgets import QLabel, QMainWindow, QSplitter, QTabWidget, QVBoxLayout, QWidget

from ..core.config import Settings
from .actions import build_menus
from .context import AppContext, Notifier
from .detail import DetailDialog
from .evaluation import EvaluationPanel
from .gallery import GallerySidebar
from .indexing import IndexingController
from .search_page import SearchPage
from .views import install_views
from .thumbnails import ThumbnailLoader
from .widgets import Banner, short_path
from .workers import TaskRunner

ORG, APP = "RetrievalExplorer", "Retrieval Explorer"
SPLITTERS = ("main_split", "left_split", "search_split", "results_split")


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, library=None, loader=None, qsettings: QSettings | None = None,
                 gallery: str | None = None):
        super().__init__()
        self.qs = qsettings or QSettings(ORG, APP)
        self.notify = Notifier(self)
        self.tasks = TaskRunner(max_threads=3, parent=self)
        self.ctx = AppContext(settings, self.tasks, self.notify, self)
        self.thumbs = ThumbnailLoader(os.path.join(settings.library, "thumbnails"), threads=2, parent=self)
        self._details: list[DetailDialog] = []
        self.setWindowTitle("Retrieval Explorer")
        self.resize(1400, 900)
        self.setMinimumSize(1000, 640)

        self.sidebar = GallerySidebar(self.ctx, self.thumbs, self.qs)
        self.search_page = SearchPage(self.ctx, self.thumbs)
        self.eval_panel = EvaluationPanel(self.ctx, alpha=self.search_page.alpha)
        self.indexing = IndexingController(self.ctx, self)
        self._build()
        build_menus(self)
        self._wire()
        install_views(self)  # per-query table, embedding map tab, duplicates dialog

        if self.ctx.open(library=library, loader=loader):
            self.thumbs.set_cache_dir(self.ctx.session.library.dir / "thumbnails")
        self.ctx.sessionChanged.connect(self._on_session_changed)
        self._restore_state()
        self._update_library_label()
        start = gallery or self.qs.value("last/gallery", "", type=str) or None
        if start and os.path.isdir(start):
            self.sidebar.open_gallery(start)
        else:
            self.sidebar.refresh_gallery()
        self.sidebar.refresh_folder_status()
        self.ctx.warm_up()

    # -- construction ------------------------------------------------------------------------------
    def _build(self) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(10, 8, 10, 6)
        outer.setSpacing(6)
        self.banner = Banner()
        outer.addWidget(self.banner)
        self.main_split = QSplitter(Qt.Orientation.Horizontal)
        self.main_split.setChildrenCollapsible(False)
        self.main_split.addWidget(self.sidebar)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.search_page, "Search")
        self.tabs.addTab(self.eval_panel, "Evaluate")
        self.main_split.addWidget(self.tabs)
        self.main_split.setStretchFactor(0, 0)
        self.main_split.setStretchFactor(1, 1)
        self.main_split.setSizes([380, 1000])
        outer.addWidget(self.main_split, 1)
        self.setCentralWidget(central)
        # the splitters whose positions persist
        self.left_split, self.search_split = self.sidebar.splitter, self.search_page.splitter
        self.results_split = self.search_page.results.splitter

        sb = self.statusBar()
        self.status_label = QLabel("")
        self.library_label = QLabel("")
        self.library_label.setObjectName("SubHeader")
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.indexing.progress)
        sb.addPermanentWidget(self.indexing.cancel_button)
        sb.addPermanentWidget(self.library_label)

    def _wire(self) -> None:
        n = self.notify
        n.errorShown.connect(self._show_error)
        n.errorDismissed.connect(self.banner.hide)
        n.infoShown.connect(lambda msg, ms: self.statusBar().showMessage(msg, ms))
        n.statusChanged.connect(self.status_label.setText)
        side, page, ix = self.sidebar, self.search_page, self.indexing
        side.queryRequested.connect(page.query_image)
        side.detailRequested.connect(self.open_detail)
        side.indexRequested.connect(self.index_folder)
        page.detailRequested.connect(self.open_detail)
        ix.busyChanged.connect(side.set_indexing)
        ix.progressed.connect(side.on_index_progress)

    # -- what the parts ask of the window ------------------------------------------------------------
    def _show_error(self, msg: str) -> None:
        """Show a problem without interrupting: the banner and the status bar."""
        self.banner.show_message(msg)
        self.statusBar().showMessage(msg, 15000)

    def index_folder(self, folder: str | None = None, then=None) -> None:
        folder = folder or self.sidebar.selected_folder()
        if folder and os.path.isdir(folder) and self.ctx.session is not None and not self.indexing.busy:
            self.sidebar.note_indexed(folder)
        self.indexing.index_folder(folder, then=then)

    def open_detail(self, image_id) -> DetailDialog | None:
        if image_id is None or self.ctx.session is None:
            return None
        d = DetailDialog(self.ctx, int(image_id), parent=self)
        d.searchRequested.connect(self.search_page.query_image)
        d.finished.connect(lambda _=0, d=d: self._details.remove(d) if d in self._details else None)
        self._details.append(d)
        d.show()
        return d

    def open_settings(self):
        from .settings_dialog import SettingsDialog

        session = self.ctx.session
        d = SettingsDialog(self.ctx, session.settings if session else self.ctx.settings, parent=self)
        d.saved.connect(self.apply_settings)
        d.show()
        return d

    def apply_settings(self, new: Settings) -> None:
        if self.indexing.busy:
            self.indexing.cancel()
        self.ctx.apply_settings(new)

    def start_demo(self, gallery: str) -> None:
        from .demo import start_demo

        start_demo(self, gallery)

    def _on_session_changed(self, session) -> None:
        if session is not None:
            self.thumbs.set_cache_dir(session.library.dir / "thumbnails")
            self.qs.setValue("last/library", str(session.library.dir))
        self._update_library_label()
        self.sidebar.refresh(force_reset=True)

    def _update_library_label(self) -> None:
        session = self.ctx.session
        if session is None:
            self.library_label.setText("no library")
        else:
            self.library_label.setText(f"library: {short_path(str(session.library.dir), 3)}")
            self.library_label.setToolTip(str(session.library.dir))

    # -- window state --------------------------------------------------------------------------------
    def _restore_state(self) -> None:
        def restore(key, fn):
            val = self.qs.value(key)
            if isinstance(val, (QByteArray, bytes)) and val:
                fn(val)

        restore("window/geometry", self.restoreGeometry)
        restore("window/state", self.restoreState)
        for name in SPLITTERS:
            restore(f"splitters/{_key(name)}", getattr(self, name).restoreState)
        page = self.search_page
        page.boxes_check.setChecked(self.qs.value("view/boxes", True, type=bool))
        page.caption_check.setChecked(self.qs.value("view/caption_column", False, type=bool))

    def save_state(self) -> None:
        self.qs.setValue("window/geometry", self.saveGeometry())
        self.qs.setValue("window/state", self.saveState())
        for name in SPLITTERS:
            self.qs.setValue(f"splitters/{_key(name)}", getattr(self, name).saveState())
        self.qs.setValue("view/boxes", self.search_page.boxes_check.isChecked())
        self.qs.setValue("view/caption_column", self.search_page.caption_check.isChecked())
        if self.sidebar.current_folder:
            self.qs.setValue("last/gallery", self.sidebar.current_folder)
        if self.ctx.session is not None:
            self.qs.setValue("last/library", str(self.ctx.session.library.dir))
        self.qs.sync()

    def closeEvent(self, e) -> None:  # noqa: N802
        self.save_state()
        for d in list(self._details):
            d.close()
        self.status_label.setText("finishing background work…")
        self.ctx.close(60000)
        self.thumbs.stop()
        super().closeEvent(e)


def _key(name: str) -> str:
    """The settings key of a splitter (names kept from before the window was split up)."""
    return "results" if name == "results_split" else name


__all__ = ["MainWindow", "ORG", "APP"]
