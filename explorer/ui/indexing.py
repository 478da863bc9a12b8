"""The indexing controller: one background indexing run at a time, with its progress and cancel.

It owns the worker (``worker``: the running one, or None), the progress bar and the cancel
button (the window puts both in its status bar), and says what happens through signals:
``busyChanged`` when a run starts or ends, ``progressed`` with each ``Progress`` (for views
that refresh while images arrive) and ``finished`` with the ``IndexSummary`` (None when the run
failed) after everything else. The run goes through ``Session.index_folder``, which runs the
pipeline in the window's long-lived, low-priority indexing process (``ctx.index_worker``, see
``explorer.core.indexing_worker``: the GUI thread never competes with model work, and the models
stay loaded between runs) and refreshes the library and the searcher afterwards, so newly indexed
images rank in every mode (the learned one too). ``worker`` is the pool thread that waits for
that process; its ``cancel`` event reaches the process, which stops after its current batch.
"""

from __future__ import annotations

import os
from dataclasses import replace

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QProgressBar, QPushButton

from .context import AppContext


def fmt_eta(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 60}:{s % 60:02d}"


class IndexingController(QObject):
    busyChanged = Signal(bool)
    progressed = Signal(object)  # pipeline Progress
    finished = Signal(object)  # IndexSummary, or None when the run failed

    def __init__(self, ctx: AppContext, parent=None):
        super().__init__(parent)
        self.ctx = ctx
        self.worker = None
        self._summary = None
        self._then = None
        self.progress = QProgressBar()
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current batch; what is indexed so far is kept")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def index_folder(self, folder: str | None, then=None) -> None:
        """Index ``folder`` (recursively) in a worker; ``then()`` runs after a run that was not cancelled."""
        notify = self.ctx.notify
        session = self.ctx.require_session()
        if session is None:
            return
        if not folder:
            notify.error("select a folder to index first")
            return
        if self.worker is not None:
            notify.error("indexing is already running; cancel it first or wait for it to finish")
            return
        if not os.path.isdir(folder):
            notify.error(f"not a folder: {folder}")
            return
        if not os.access(folder, os.R_OK | os.X_OK):
            notify.error(f"folder is not readable (permission denied): {folder}")
            return

        index_worker = self.ctx.index_worker

        def job(worker):
            return session.index_folder(folder, progress=lambda p: worker.report(replace(p), key=p.phase), cancel=worker.cancel,
                                        worker=index_worker)

        self._then = then
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        notify.status(f"Indexing {os.path.basename(folder) or folder}…")
        self.worker = self.ctx.tasks.start(job, pass_worker=True, on_result=self._on_done, on_error=self._on_failed,
                                           on_progress=self._on_progress, on_finished=self._on_finished, name="index")
        self.busyChanged.emit(True)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()
            self.cancel_button.setEnabled(False)
            self.ctx.notify.status("Cancelling: finishing the current batch and saving…")

    def _on_progress(self, p) -> None:
        if p.phase == "indexing" and p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
            fail = f" · {p.failed} failed" if p.failed else ""
            self.ctx.notify.status(f"Indexing {p.done:,}/{p.total:,} · {p.rate:.1f} img/s · ETA {fmt_eta(p.eta)}{fail}")
        else:
            self.progress.setRange(0, 0)
            self.ctx.notify.status(f"{p.phase.capitalize()}…")
        self.progressed.emit(p)

    def _on_done(self, summary) -> None:
        msg = (f"Indexed {summary.indexed:,} images ({summary.unchanged:,} unchanged, {summary.removed} removed, "
               f"{len(summary.failures)} failed) in {summary.elapsed:.1f} s")
        if summary.cancelled:
            msg = "Cancelled: " + msg + "; index again to continue"
        self.ctx.notify.status(msg)
        if summary.failures:
            f = summary.failures[0]
            more = f" (and {len(summary.failures) - 1} more)" if len(summary.failures) > 1 else ""
            self.ctx.notify.error(f"{len(summary.failures)} file(s) could not be indexed: {os.path.basename(f.path)}: {f.reason}{more}")
        self._summary = summary

    def _on_failed(self, msg: str) -> None:
        self.ctx.notify.status("Indexing failed")
        self.ctx.notify.error(msg)
        self._summary = None

    def _on_finished(self) -> None:
        """Last of a run's signals: reset the controls, then tell listeners."""
        self.worker = None
        self.progress.hide()
        self.cancel_button.hide()
        summary, self._summary = self._summary, None
        then, self._then = self._then, None
        self.busyChanged.emit(False)
        self.finished.emit(summary)
        if then and summary is not None and not summary.cancelled:
            then()


__all__ = ["IndexingController", "fmt_eta"]
