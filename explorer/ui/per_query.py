"""Where captions help or hurt: the per-query table of an evaluation (Evaluate tab).

``PerQueryPanel.set_report(report)`` loads the queries' captions in a worker and shows one
row per query (thumbnail, caption, caption weight, AP of two chosen modes, their difference,
first-relevant ranks), sortable by any column (numeric sort on a ``SortRole``), with summary
chips (better / worse / tied and the mean caption weight of each group) and CSV export.
Clicking a row emits ``queryRequested(path, (mode_a, mode_b))``; the window opens that query
in the Search tab with both modes shown. All numbers come from ``explorer.core.per_query``.
"""

from __future__ import annotations

import math
import os

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSize, QSortFilterProxyModel, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QTableView, QVBoxLayout, QWidget)

from ..core.per_query import GROUPS, QueryComparison, compare_queries, default_pair
from . import style
from .view_context import ViewContext

SortRole = Qt.ItemDataRole.UserRole + 10
PathRole = Qt.ItemDataRole.UserRole + 11
COLUMNS = ("", "query", "caption", "weight", "AP a", "AP b", "ΔAP", "1st a", "1st b")
HEADER_TIPS = {3: "caption weight of the query (0 = the caption is not trusted, 1 = a user caption)",
               6: "AP of the second mode minus AP of the first", 7: "rank of the first relevant result, first mode",
               8: "rank of the first relevant result, second mode"}
ICON = 48


def _fmt(v: float, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


class PerQueryModel(QAbstractTableModel):
    def __init__(self, thumbs, parent=None):
        super().__init__(parent)
        self.thumbs = thumbs
        self.cmp: QueryComparison | None = None
        self._row_of: dict[str, int] = {}
        self._icons: dict = {}  # path -> thumbnail scaled to the row height
        thumbs.ready.connect(self._on_thumb)

    def set_comparison(self, cmp: QueryComparison | None) -> None:
        self.beginResetModel()
        self.cmp = cmp
        self._row_of = {r.path: i for i, r in enumerate(cmp.rows)} if cmp else {}
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() or self.cmp is None else len(self.cmp.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS.get(section)
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        name = COLUMNS[section]
        if self.cmp is not None:
            name = name.replace(" a", f" {self.cmp.mode_a}").replace(" b", f" {self.cmp.mode_b}")
        return name

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or self.cmp is None:
            return None
        r = self.cmp.rows[index.row()]
        c = index.column()
        if role == PathRole:
            return r.path
        if role == Qt.ItemDataRole.DecorationRole and c == 0:
            return self._icon(r.path)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{r.path}\n{r.caption_source}: {r.caption}"
        values = (None, os.path.basename(r.path), r.caption, r.weight, r.ap_a, r.ap_b, r.diff, r.first_a, r.first_b)
        v = values[c]
        if role == SortRole:
            if c in (1, 2):
                return v
            if c == 0:
                return index.row()
            v = float(v)
            if c in (7, 8) and v < 0:
                return math.inf  # no relevant item: sorts after every rank
            return v if math.isfinite(v) else -math.inf
        if role == Qt.ItemDataRole.DisplayRole:
            if c in (0,):
                return None
            if c in (1, 2):
                return v
            if c in (7, 8):
                return "–" if v < 0 else str(v)
            return _fmt(float(v), signed=(c == 6))
        if role == Qt.ItemDataRole.ForegroundRole and c == 6 and math.isfinite(r.diff) and r.diff != 0:
            from PySide6.QtGui import QColor

            return QColor(style.UP if r.diff > 0 else style.DOWN)
        if role == Qt.ItemDataRole.TextAlignmentRole and c >= 3:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _icon(self, path: str):
        pm = self._icons.get(path)
        if pm is None:
            full = self.thumbs.get(path)
            if full is None:
                return None
            pm = self._icons[path] = full.scaled(ICON, ICON, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        return pm

    def _on_thumb(self, path: str) -> None:
        self._icons.pop(path, None)
        row = self._row_of.get(path)
        if row is not None:
            ix = self.index(row, 0)
            self.dataChanged.emit(ix, ix, [Qt.ItemDataRole.DecorationRole])


class PerQueryPanel(QWidget):
    """The per-query comparison table; ``set_report`` after an evaluation."""

    queryRequested = Signal(str, tuple)  # query image path, (mode_a, mode_b)
    comparisonChanged = Signal(object)  # QueryComparison
    exported = Signal(str)

    def __init__(self, context: ViewContext, parent=None):
        super().__init__(parent)
        self.ctx = context
        self.report = None
        self.captions: dict[int, tuple[str, str]] = {}
        self.comparison: QueryComparison | None = None

        title = QLabel("PER QUERY")
        title.setObjectName("SectionTitle")
        title.setToolTip("Where captions help or hurt: each query's AP in two modes")
        self.combo_a = QComboBox()
        self.combo_b = QComboBox()
        for cb in (self.combo_a, self.combo_b):
            cb.setMinimumWidth(110)
            cb.currentIndexChanged.connect(lambda _=0: self._rebuild())
        self.chips = {g: QLabel("") for g in GROUPS}
        for g, lab in self.chips.items():
            lab.setObjectName("Stats")
            lab.setToolTip(f"queries where the second mode's AP is {'higher' if g == 'better' else 'lower' if g == 'worse' else 'equal'}, "
                           "and the mean caption weight of those queries")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._ask_export)
        top = QHBoxLayout()
        top.addWidget(title)
        top.addSpacing(12)
        top.addWidget(QLabel("compare"))
        top.addWidget(self.combo_b)
        top.addWidget(QLabel("against"))
        top.addWidget(self.combo_a)
        top.addSpacing(12)
        for lab in self.chips.values():
            top.addWidget(lab)
        top.addStretch(1)
        top.addWidget(self.export_button)

        self.model = PerQueryModel(context.thumbs, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SortRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setIconSize(QSize(ICON, ICON))
        self.table.verticalHeader().setDefaultSectionSize(ICON + 6)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        hdr = self.table.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hdr.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        hdr.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        hdr.resizeSection(1, 170)
        hdr.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        hdr.resizeSection(0, ICON + 12)
        self.table.clicked.connect(self._on_clicked)
        self.table.activated.connect(self._on_clicked)
        self.hint = QLabel("Run an evaluation with at least two modes; click a row to open that query in the Search tab.")
        self.hint.setObjectName("SubHeader")

        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 4, 8, 4)
        lay.setSpacing(6)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.hint)

    # -- data ------------------------------------------------------------------------------------
    def set_report(self, report) -> None:
        """Show a finished evaluation (captions are read in a worker)."""
        self.report = report
        session = self.ctx.session()
        modes = [r.mode for r in report.results]
        for cb in (self.combo_a, self.combo_b):
            cb.blockSignals(True)
            cb.clear()
            cb.addItems(modes)
            cb.blockSignals(False)
        pair = default_pair(modes)
        if pair is not None:
            self.combo_a.setCurrentText(pair[0])
            self.combo_b.setCurrentText(pair[1])
        if session is None:
            self._rebuild()
            return
        self.ctx.tasks.start(session.library.store.active_captions, on_result=self._on_captions, on_error=self.ctx.show_error,
                             name="per-query captions")

    def _on_captions(self, captions) -> None:
        self.captions = captions
        self._rebuild()

    def set_pair(self, mode_a: str, mode_b: str) -> None:
        self.combo_a.setCurrentText(mode_a)
        self.combo_b.setCurrentText(mode_b)

    def _rebuild(self) -> None:
        a, b = self.combo_a.currentText(), self.combo_b.currentText()
        if self.report is None or not a or not b:
            return
        self.comparison = compare_queries(self.report, a, b, self.captions)
        self.model.set_comparison(self.comparison)
        s = self.comparison.summary()
        arrows = {"better": "▲", "worse": "▼", "tied": "="}
        for g, lab in self.chips.items():
            w = s[g]["mean_weight"]
            lab.setText(f"{arrows[g]} {g} {s[g]['count']}" + (f" · w̄ {w:.2f}" if s[g]["count"] else ""))
        self.export_button.setEnabled(True)
        if a == b:
            self.hint.setText("Choose two different modes to compare.")
        else:
            self.hint.setText(f"{len(self.comparison.rows)} queries · sorted by ΔAP ({b} − {a}): worst first · "
                              "click a row to open that query in the Search tab")
        self.table.sortByColumn(6, Qt.SortOrder.AscendingOrder)
        self.comparisonChanged.emit(self.comparison)

    # -- actions -----------------------------------------------------------------------------------
    def path_at(self, view_row: int) -> str:
        return self.proxy.index(view_row, 0).data(PathRole)

    def _on_clicked(self, index) -> None:
        if not index.isValid() or self.comparison is None:
            return
        self.queryRequested.emit(index.data(PathRole), (self.comparison.mode_a, self.comparison.mode_b))

    def _ask_export(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "Export per-query table", os.path.expanduser("~/per-query.csv"), "CSV table (*.csv)")
        if p:
            self.export_csv(p)

    def export_csv(self, path: str) -> None:
        if self.comparison is None:
            self.ctx.show_error("run an evaluation first")
            return
        cmp = self.comparison
        self.ctx.tasks.start(lambda: str(cmp.write_csv(path)), on_result=self.exported.emit, on_error=self.ctx.show_error,
                             name="export per-query")
