"""The duplicates dialog (Gallery ▸ Find duplicates…): exact and near-duplicate groups.

Runs ``explorer.core.duplicates.find_duplicates`` in a worker (progress, cancel) at the
threshold the user sets, and lists the groups with thumbnails. "Exclude from evaluation"
emits ``exclusionsChanged(ids)`` with every member except each group's representative (an
empty set when unticked); the window hands it to the evaluation panel.
Double-clicking an image emits ``queryRequested(path)``.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (QCheckBox, QDialog, QDoubleSpinBox, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout)

from .task_panel import TaskPanelMixin
from ..core.duplicates import DEFAULT_K, DEFAULT_THRESHOLD, DuplicateReport, find_duplicates
from .view_context import ViewContext

PathRole = Qt.ItemDataRole.UserRole + 21
ICON = 56


class DuplicatesDialog(TaskPanelMixin, QDialog):
    reportReady = Signal(object)  # DuplicateReport
    exclusionsChanged = Signal(object)  # set[int]
    queryRequested = Signal(str)
    failed = Signal(str)

    def __init__(self, context: ViewContext, parent=None):
        super().__init__(parent)
        self.ctx = context
        self.report: DuplicateReport | None = None
        self.worker = None
        self._items: dict[str, QTreeWidgetItem] = {}
        self.setWindowTitle("Duplicates")
        self.resize(760, 620)

        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.5, 1.0)
        self.threshold.setSingleStep(0.01)
        self.threshold.setDecimals(3)
        self.threshold.setValue(DEFAULT_THRESHOLD)
        self.threshold.setToolTip("Near duplicates: cosine similarity of the image vectors at least this (1.0 = identical vectors)")
        self.find_button = QPushButton("Find duplicates")
        self.find_button.setObjectName("Primary")
        self.find_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(False)
        self.progress.hide()
        row = QHBoxLayout()
        row.addWidget(QLabel("Near-duplicate similarity ≥"))
        row.addWidget(self.threshold)
        row.addWidget(self.find_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress)
        row.addStretch(1)
        self.status = QLabel("Exact duplicates share their file content; near duplicates have very similar image vectors "
                             "(crops, mirror images, light changes, re-encodings).")
        self.status.setObjectName("SubHeader")
        self.status.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["image", "folder"])
        self.tree.setIconSize(QSize(ICON, ICON))
        self.tree.setColumnWidth(0, 360)
        self.tree.itemDoubleClicked.connect(self._on_double_click)
        self.exclude_check = QCheckBox("Exclude duplicates from evaluation (keep one image of each group)")
        self.exclude_check.setEnabled(False)
        self.exclude_check.toggled.connect(self._on_exclude)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        bottom = QHBoxLayout()
        bottom.addWidget(self.exclude_check)
        bottom.addStretch(1)
        bottom.addWidget(close)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(self.tree, 1)
        lay.addLayout(bottom)
        context.thumbs.ready.connect(self._on_thumb)

    def start(self, threshold: float | None = None) -> None:
        if threshold is not None:
            self.threshold.setValue(threshold)
        session = self.ctx.session()
        if session is None:
            self._fail("no library is open")
            return
        t = self.threshold.value()

        def job(worker):
            return find_duplicates(session.library, threshold=t, k=DEFAULT_K,
                                   progress=lambda msg, frac: worker.report((msg, frac), key=msg), cancel=worker.cancel)

        self.start_task(job, self.set_report, self._fail, self.find_button, "duplicates")

    def _fail(self, msg: str) -> None:
        self.status.setText(msg)
        self.failed.emit(msg)

    def set_report(self, report: DuplicateReport) -> None:
        self.report = report
        self.tree.clear()
        self._items = {}
        for g in report.groups:
            top = QTreeWidgetItem([f"{g.kind} duplicates · {len(g.ids)} images" +
                                   ("" if g.kind == "exact" else f" · similarity ≥ {g.min_similarity:.3f}"), ""])
            f = top.font(0)
            f.setBold(True)
            top.setFont(0, f)
            self.tree.addTopLevelItem(top)
            top.setFirstColumnSpanned(True)
            for k, (iid, path) in enumerate(zip(g.ids, g.paths)):
                it = QTreeWidgetItem([os.path.basename(path) + ("  (kept)" if k == 0 else ""), os.path.dirname(path)])
                it.setData(0, PathRole, path)
                it.setToolTip(0, path)
                pm = self.ctx.thumbs.get(path)
                if pm is not None:
                    it.setIcon(0, QIcon(pm))
                top.addChild(it)
                self._items[path] = it
            top.setExpanded(True)
        c = report.counts()
        self.status.setText(f"{report.n_images:,} images: {c['exact']} exact and {c['near']} near-duplicate groups "
                            f"(similarity ≥ {report.threshold:.3f}) · {len(report.exclusions())} images would be excluded · "
                            f"{report.elapsed_s:.1f} s")
        self.exclude_check.setEnabled(bool(report.groups))
        if self.exclude_check.isChecked():
            self.exclusionsChanged.emit(report.exclusions())
        self.reportReady.emit(report)

    def _on_exclude(self, on: bool) -> None:
        self.exclusionsChanged.emit(self.report.exclusions() if (on and self.report is not None) else set())

    def _on_double_click(self, item, _col) -> None:
        path = item.data(0, PathRole)
        if path:
            self.queryRequested.emit(path)

    def _on_thumb(self, path: str) -> None:
        it = self._items.get(path)
        if it is not None:
            pm = self.ctx.thumbs.get(path)
            if pm is not None:
                it.setIcon(0, QIcon(pm))
