"""The evaluation panel: ground truth + modes in, PR curves + metrics table out, with exports.

Runs ``explorer.core.evaluate.run_evaluation`` in a worker with progress and cancel; the
figure is built in the worker too (the core uses ``matplotlib.figure.Figure``, never pyplot)
and embedded with ``FigureCanvasQTAgg``. The panel gets the app's context (session, task runner,
notifier) and a function giving the α to evaluate with, never the window.
"""

from __future__ import annotations

import math
import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QFrame, QGridLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QSizePolicy, QSplitter,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from .task_panel import TaskPanelMixin
from ..core.fusion import DEFAULT_ALPHA
from ..core.modes import BASE, title as mode_title

GT_FORMATS = [
    ("folders", "Folders (one sub-folder per label)", "dir"),
    ("csv", "CSV (image,label or query,relevant)", "file"),
    ("coco", "COCO JSON", "file"),
    ("deepfashion2", "DeepFashion2 folder", "dir"),
]
TABLE_KS = (1, 5, 10)


def _fmt(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


class EvaluationPanel(TaskPanelMixin, QWidget):
    finished = Signal(object)  # the EvaluationReport
    failed = Signal(str)
    exported = Signal(list)  # paths written

    def __init__(self, ctx, alpha=lambda: DEFAULT_ALPHA, parent=None):
        """``ctx``: the app's context (session, task runner, notifier); ``alpha()``: the α to evaluate with."""
        super().__init__(parent)
        self.ctx = ctx
        self.alpha = alpha
        self.report = None
        self.worker = None
        self.canvas = None
        self.exclude_ids: set[int] = set()  # images left out (duplicates), see set_exclusions

        # -- inputs
        form = QFrame()
        form.setObjectName("Panel")
        grid = QGridLayout(form)
        grid.setContentsMargins(14, 12, 14, 12)
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(8)
        title = QLabel("Evaluate retrieval against ground truth")
        title.setObjectName("Header")
        grid.addWidget(title, 0, 0, 1, 4)
        self.format_combo = QComboBox()
        for key, label, _ in GT_FORMATS:
            self.format_combo.addItem(label, key)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("folder or file with the ground truth (its images must be indexed)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        grid.addWidget(QLabel("Ground truth"), 1, 0)
        grid.addWidget(self.format_combo, 1, 1)
        grid.addWidget(self.path_edit, 1, 2)
        grid.addWidget(browse, 1, 3)
        grid.addWidget(QLabel("Modes"), 2, 0)
        modes_row = QHBoxLayout()
        self.mode_checks = {}
        for m in BASE:
            cb = QCheckBox(mode_title(m))
            cb.setChecked(True)
            self.mode_checks[m] = cb
            modes_row.addWidget(cb)
        modes_row.addSpacing(16)
        modes_row.addWidget(QLabel("Reranking"))
        self.rerank_combo = QComboBox()
        self.rerank_combo.addItems(["none", "aqe", "both", "superglobal", "kreciprocal", "none,aqe,superglobal,kreciprocal"])
        modes_row.addWidget(self.rerank_combo)
        self.sweep_check = QCheckBox("α sweep")
        self.sweep_check.setToolTip("Also evaluate caption-fused retrieval at α = 0, 0.1, …, 1")
        modes_row.addWidget(self.sweep_check)
        modes_row.addStretch(1)
        grid.addLayout(modes_row, 2, 1, 1, 3)
        self.run_button = QPushButton("Run evaluation")
        self.run_button.setObjectName("Primary")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setMaximumWidth(220)
        self.progress.hide()
        self.status = QLabel("")
        self.status.setObjectName("SubHeader")
        self.status.setWordWrap(True)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.progress)
        run_row.addWidget(self.status, 1)
        grid.addLayout(run_row, 3, 0, 1, 4)
        grid.setColumnStretch(2, 1)

        # -- outputs
        self.plot_holder = QFrame()
        self.plot_holder.setObjectName("Panel")
        self.plot_layout = QVBoxLayout(self.plot_holder)
        self.plot_layout.setContentsMargins(8, 8, 8, 8)
        self.plot_placeholder = QLabel("Precision-recall curves appear here")
        self.plot_placeholder.setObjectName("SubHeader")
        self.plot_placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot_layout.addWidget(self.plot_placeholder)

        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        t = QLabel("METRICS")
        t.setObjectName("SectionTitle")
        # one column per mode, one row per metric: legible in a narrow pane
        self.metric_rows = ["mAP"] + [f"P@{k}" for k in TABLE_KS] + [f"R@{k}" for k in TABLE_KS] + ["queries"]
        self.table = QTableWidget(len(self.metric_rows), 0)
        self.table.setVerticalHeaderLabels(self.metric_rows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(28)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.comparisons = QLabel("")
        self.comparisons.setWordWrap(True)
        self.comparisons.setObjectName("SubHeader")
        self.footer = QLabel("")
        self.footer.setWordWrap(True)
        self.footer.setObjectName("SubHeader")
        self.footer.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        exp = QHBoxLayout()
        self.export_plot_button = QPushButton("Export plot…")
        self.export_plot_button.setToolTip("PNG, SVG or PDF")
        self.export_metrics_button = QPushButton("Export metrics…")
        self.export_metrics_button.setToolTip("CSV or JSON")
        for b in (self.export_plot_button, self.export_metrics_button):
            b.setEnabled(False)
            exp.addWidget(b)
        exp.addStretch(1)
        rl.addWidget(t)
        rl.addWidget(self.table, 1)
        rl.addWidget(self.comparisons)
        rl.addWidget(self.footer)
        rl.addLayout(exp)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plot_holder)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.splitter = split

        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.setSpacing(8)
        lay.addWidget(form)
        self.sections = QSplitter(Qt.Orientation.Vertical)  # more views of the report go below (add_section)
        self.sections.setChildrenCollapsible(False)
        self.sections.addWidget(split)
        lay.addWidget(self.sections, 1)

        self.run_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.export_plot_button.clicked.connect(self._ask_export_plot)
        self.export_metrics_button.clicked.connect(self._ask_export_metrics)

    # -- inputs ----------------------------------------------------------------------------------
    def spec(self) -> str:
        path = self.path_edit.text().strip()
        return f"{self.format_combo.currentData()}:{path}" if path else ""

    def set_spec(self, spec: str) -> None:
        kind, _, path = spec.partition(":")
        i = self.format_combo.findData(kind)
        if i >= 0 and path:
            self.format_combo.setCurrentIndex(i)
            self.path_edit.setText(path)
        else:
            self.format_combo.setCurrentIndex(0)
            self.path_edit.setText(spec)

    def modes(self) -> tuple[str, ...]:
        return tuple(m for m, cb in self.mode_checks.items() if cb.isChecked())

    def _browse(self) -> None:
        kind = next(k for k in GT_FORMATS if k[0] == self.format_combo.currentData())
        if kind[2] == "dir":
            p = QFileDialog.getExistingDirectory(self, "Ground-truth folder", self.path_edit.text())
        else:
            filt = "CSV files (*.csv)" if kind[0] == "csv" else "JSON files (*.json)"
            p, _ = QFileDialog.getOpenFileName(self, "Ground-truth file", self.path_edit.text(), filt)
        if p:
            self.path_edit.setText(p)

    # -- running ---------------------------------------------------------------------------------
    def start(self, spec: str | None = None, modes=None) -> None:
        if spec is not None:
            self.set_spec(spec)
        if modes is not None:
            for m, cb in self.mode_checks.items():
                cb.setChecked(m in modes)
        spec = self.spec()
        modes = self.modes()
        if not spec:
            self._fail("choose the ground truth first (a folder with one sub-folder per label, or a CSV/COCO file)")
            return
        if not modes:
            self._fail("choose at least one mode to evaluate")
            return
        if self.ctx.session is None:
            self._fail("no library is open")
            return
        try:
            from ..core.evaluate import run_evaluation
        except ImportError as e:
            self._fail(f"evaluation is not available in this build ({e})")
            return
        session = self.ctx.session
        alpha = self.alpha()
        rerank = self.rerank_combo.currentText()
        sweep = self.sweep_check.isChecked()
        exclude = set(self.exclude_ids) or None

        def job(worker):
            session.loader.get("image"), session.loader.get("text")
            report = run_evaluation(session.library, spec, modes=modes, alpha=alpha, rerank=rerank, alpha_sweep=sweep, exclude_ids=exclude,
                                    progress=lambda msg, frac: worker.report((msg, frac), key=msg), cancel=worker.cancel)
            return report, report.figure()

        self.start_task(job, self._on_done, self._fail, self.run_button, "evaluate")

    def add_section(self, widget) -> None:
        """Add a view of the report under the plot and metrics (e.g. the per-query table)."""
        self.sections.addWidget(widget)
        self.sections.setStretchFactor(self.sections.count() - 1, 1)

    def set_exclusions(self, ids) -> None:
        """Images to leave out of the next evaluations (e.g. duplicates); empty = none."""
        self.exclude_ids = set(int(i) for i in ids)
        self.status.setText(f"{len(self.exclude_ids)} duplicate images will be left out of the evaluation"
                            if self.exclude_ids else "all images are evaluated")

    def _fail(self, msg: str) -> None:
        self.status.setText(msg)
        self.ctx.notify.error(msg)
        self.failed.emit(msg)

    def _on_done(self, out) -> None:
        report, fig = out
        self.report = report
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        if self.canvas is not None:
            self.plot_layout.removeWidget(self.canvas)
            self.canvas.setParent(None)
            self.canvas.deleteLater()
        self.plot_placeholder.hide()
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumSize(360, 280)
        self.plot_layout.addWidget(self.canvas)
        self.canvas.draw_idle()

        self.table.setColumnCount(len(report.results))
        self.table.setHorizontalHeaderLabels([mode_title(r.mode) for r in report.results])
        for j, r in enumerate(report.results):
            vals = [_fmt(r.map)] + [_fmt(r.precision_at_k.get(k)) for k in TABLE_KS] + \
                   [_fmt(r.recall_at_k.get(k)) for k in TABLE_KS] + [str(r.n_queries)]
            for i, v in enumerate(vals):
                it = QTableWidgetItem(v)
                it.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if i == 0:
                    f = it.font()
                    f.setBold(True)
                    it.setFont(f)
                self.table.setItem(i, j, it)
        lines = []
        for name, c in report.comparisons.items():
            try:
                lo, hi = c["ci95"]
                lines.append(f"{name.replace('_', ' ')}: ΔAP {c['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                             f"sign test p = {c['sign_test_p']:.3g} ({c['wins']}↑ {c['losses']}↓ {c['ties']}=)")
            except (KeyError, TypeError, ValueError):
                lines.append(f"{name}: {c}")
        if report.sweep:
            best = max(report.sweep, key=lambda t: (t[1] if math.isfinite(t[1]) else -1))
            lines.append("α sweep (fused mAP): " + "  ".join(f"{a:.1f}: {_fmt(m)}" for a, m in report.sweep) + f"  — best α = {best[0]:.1f}")
        for w in report.warnings:
            lines.append(f"⚠ {w}")
        self.comparisons.setText("\n".join(lines))
        self.footer.setText(report.footer)
        self.export_plot_button.setEnabled(True)
        self.export_metrics_button.setEnabled(True)
        self.status.setText(f"done: {report.gt_description}")
        self.finished.emit(report)

    # -- exports ---------------------------------------------------------------------------------
    def _ask_export_plot(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "Export plot", os.path.expanduser("~/pr-curves.png"),
                                           "PNG image (*.png);;SVG vector (*.svg);;PDF document (*.pdf)")
        if p:
            self.export_plot(p)

    def _ask_export_metrics(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "Export metrics", os.path.expanduser("~/metrics.csv"),
                                           "CSV table (*.csv);;JSON (*.json)")
        if p:
            self.export_metrics(p)

    def export_plot(self, path: str) -> None:
        self._export(lambda r: r.write_plot(path), "plot")

    def export_metrics(self, path: str) -> None:
        self._export(lambda r: r.write_metrics(path), "metrics")

    def _export(self, fn, what: str) -> None:
        report = self.report
        if report is None:
            self._fail("run an evaluation first")
            return

        def job():
            out = fn(report)
            return [str(p) for p in (out if isinstance(out, (list, tuple)) else [out])]

        def done(paths):
            self.status.setText(f"{what} written: " + ", ".join(paths))
            self.ctx.notify.info(f"{what} written: " + ", ".join(paths))
            self.exported.emit(paths)

        self.ctx.tasks.start(job, on_result=done, on_error=self._fail, name=f"export {what}")
