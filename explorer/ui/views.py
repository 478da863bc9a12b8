"""Wires the gallery-wide views into the main window (one call, so the window keeps a few lines).

- Evaluate tab: the per-query table (``PerQueryPanel``) under the metrics; a row opens its
  query in the Search tab with both compared modes shown.
- Map tab: ``EmbeddingMapPanel``; a click runs that query in the Search tab.
- Gallery menu ▸ Find duplicates…: ``DuplicatesDialog``; its exclusions go to the evaluation panel.

The views get a :class:`ViewContext`; only this module knows the window's attribute names.
"""

from __future__ import annotations

from PySide6.QtGui import QAction

from ..core.modes import CAPTION, LEARNED
from .duplicates import DuplicatesDialog
from .embedding_map import EmbeddingMapPanel
from .per_query import PerQueryPanel
from .view_context import ViewContext


def view_context(window) -> ViewContext:
    ctx = window.ctx
    return ViewContext(tasks=ctx.tasks, thumbs=window.thumbs, session=lambda: ctx.session, show_error=ctx.notify.error)


def open_query_in_search(window, path: str, modes=()) -> None:
    """Show the Search tab with a column for each of ``modes`` and run ``path`` as the query."""
    page = window.search_page
    base = {m.split("+")[0] for m in modes}
    if CAPTION in base:
        page.caption_check.setChecked(True)
    if LEARNED in base and page.learned_check.isEnabled():
        page.learned_check.setChecked(True)
    if any(m.endswith("+aqe") for m in modes):
        page.rerank_combo.setCurrentIndex(page.rerank_combo.findData("aqe"))
    window.tabs.setCurrentWidget(page)
    page.query_image(path)


def install_views(window) -> None:
    ctx = view_context(window)
    window.per_query_panel = PerQueryPanel(ctx)
    window.eval_panel.add_section(window.per_query_panel)
    window.eval_panel.finished.connect(window.per_query_panel.set_report)
    window.per_query_panel.queryRequested.connect(lambda path, modes: open_query_in_search(window, path, modes))

    window.map_panel = EmbeddingMapPanel(ctx)
    window.tabs.addTab(window.map_panel, "Map")
    window.map_panel.queryRequested.connect(lambda path: open_query_in_search(window, path))

    def open_duplicates():
        dlg = getattr(window, "duplicates_dialog", None)
        if dlg is None:
            dlg = window.duplicates_dialog = DuplicatesDialog(ctx, window)
            dlg.exclusionsChanged.connect(window.eval_panel.set_exclusions)
            dlg.queryRequested.connect(lambda path: open_query_in_search(window, path))
            dlg.failed.connect(window.ctx.notify.error)
        dlg.show()
        dlg.raise_()
        return dlg

    window.open_duplicates = open_duplicates
    menu = window.menuBar().addMenu("&Gallery")
    a = QAction("Find duplicates…", window)
    a.setStatusTip("Exact and near-duplicate images of the library, with the option to exclude them from evaluation")
    a.triggered.connect(open_duplicates)
    menu.addAction(a)
    a = QAction("Embedding map", window)
    a.triggered.connect(lambda: window.tabs.setCurrentWidget(window.map_panel))
    menu.addAction(a)
