"""One background task at a time behind a start button, a cancel button, a progress bar and a status line.

The panels that run a long core function (the evaluation, the embedding map, the duplicate
finder) share this: ``start_task`` disables the start button, shows the progress bar and starts
the job on the context's task runner; progress arrives as ``(message, fraction)``; cancel sets
the worker's event (the core function stops at its next check); when the task ends, for any
reason, the buttons and the bar return to rest. Each panel keeps its own result and error
handlers. The panel provides ``ctx`` (with ``tasks``), ``cancel_button``, ``progress`` (range
0..1000) and ``status``.
"""

from __future__ import annotations


class TaskPanelMixin:
    worker = None
    _start_button = None

    def start_task(self, job, on_result, on_error, start_button, name: str) -> None:
        """Run ``job(worker)`` in the background; ``start_button`` is disabled until it ends."""
        self._start_button = start_button
        start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.show()
        self.status.setText("starting…")
        self.worker = self.ctx.tasks.start(job, pass_worker=True, on_result=on_result, on_error=on_error,
                                           on_progress=self._on_progress, on_finished=self._on_finished, name=name)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()
            self.status.setText("cancelling…")

    def _on_progress(self, value) -> None:
        msg, frac = value
        self.progress.setValue(int(max(0.0, min(1.0, float(frac))) * 1000))
        self.status.setText(f"{msg}…" if msg != "done" else "done")

    def _on_finished(self) -> None:
        self.worker = None
        if self._start_button is not None:
            self._start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.hide()
