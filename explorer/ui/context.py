"""What pages and dialogs get instead of the window: the session, the task runner, one notifier.

- ``Notifier``: the one place errors and notices go. Pages and dialogs call ``error`` / ``info``
  / ``status``; the window shows them (banner, status bar). ``last_error`` is kept for tests.
- ``AppContext``: the current ``Session`` (it changes when settings change: listen to
  ``sessionChanged``), the ``TaskRunner`` every slow call goes through, and library edits that
  every page must hear about (``captionSaved``). It owns the session's lifecycle: opening it,
  warming the models up, rebuilding it when the settings change, closing it; and the window's
  long-lived indexing process (``index_worker``, ``core.indexing_worker.IndexingWorker``: it
  starts at the first indexing run, outlives session changes, reloads its models when their
  settings change, and ends with ``close``).

Nothing here knows about widgets.
"""

from __future__ import annotations

import logging
import os

from PySide6.QtCore import QObject, Signal

from ..core.config import Settings
from ..core.errors import ExplorerError
from ..core.indexing_worker import IndexingWorker
from ..core.models.registry import ROLES
from .session import Session
from .workers import TaskRunner

log = logging.getLogger(__name__)

NO_LIBRARY = "no library is open: choose one in Settings"


class Notifier(QObject):
    """Errors (shown until dismissed or replaced), notices (a few seconds) and the current status line."""

    errorShown = Signal(str)
    errorDismissed = Signal()
    infoShown = Signal(str, int)  # message, milliseconds
    statusChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.last_error = ""

    def error(self, msg: str) -> None:
        self.last_error = msg
        log.warning("%s", msg)
        self.errorShown.emit(msg)

    def dismiss(self) -> None:
        """The problem shown last is over (e.g. a query succeeded after a bad one)."""
        self.errorDismissed.emit()

    def info(self, msg: str, timeout: int = 8000) -> None:
        self.infoShown.emit(msg, timeout)

    def status(self, msg: str) -> None:
        self.statusChanged.emit(msg)


class AppContext(QObject):
    sessionChanged = Signal(object)  # the new Session (or None)
    warmedUp = Signal()
    captionSaved = Signal(int)  # image id

    def __init__(self, settings: Settings, tasks: TaskRunner | None = None, notify: Notifier | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings
        self.tasks = tasks or TaskRunner(max_threads=3, parent=self)
        self.notify = notify or Notifier(self)
        self.session: Session | None = None
        self.warm = False
        self.index_worker = IndexingWorker()  # no process until the first indexing run

    # -- the session ---------------------------------------------------------------------------
    def open(self, library=None, loader=None) -> bool:
        """Open the session for ``self.settings`` (or the given library); a failure is shown, not raised."""
        try:
            self.set_session(Session(self.settings, library=library, loader=loader))
            return True
        except ExplorerError as e:
            self.notify.error(str(e))
            return False

    def set_session(self, session: Session | None) -> None:
        self.session = session
        self.warm = False
        self.sessionChanged.emit(session)

    def require_session(self) -> Session | None:
        """The session, or None after telling the user that no library is open."""
        if self.session is None:
            self.notify.error(NO_LIBRARY)
        return self.session

    def warm_up(self) -> None:
        """Load the models and check the library in a worker; ``warmedUp`` when done."""
        session = self.session
        if session is None:
            return
        self.notify.status("Loading models…")

        def done(repairs):
            if session is not self.session:
                return
            self.warm = True
            self.notify.status("Ready")
            if repairs:
                self.notify.info("consistency check repaired: " + "; ".join(repairs))
            self.warmedUp.emit()

        def failed(msg):
            self.notify.status("Models unavailable: open Settings")
            self.notify.error(msg)

        self.tasks.start(session.warm_up, on_result=done, on_error=failed, name="warm-up")

    def apply_settings(self, new: Settings) -> bool:
        """Use new settings; rebuild the session when models or the library changed. True when rebuilt."""
        old = self.session.settings if self.session else self.settings
        models_changed = any(new.spec(r) != old.spec(r) for r in ROLES) or \
            new.detector_labels != old.detector_labels or new.device != old.device
        lib_changed = os.path.realpath(os.path.expanduser(new.library)) != os.path.realpath(os.path.expanduser(old.library))
        self.settings = new
        if not models_changed and not lib_changed and self.session is not None:
            self.session.settings = new
            self.notify.info("Settings saved")
            return False
        loader = None if models_changed or self.session is None else self.session.loader
        try:
            from ..core.library import Library
            from ..core.models.registry import ModelLoader

            loader = loader or ModelLoader(new)
            session = Session(new, library=Library(new.library, new, loader=loader))
        except ExplorerError as e:
            self.notify.error(str(e))
            return False
        # the old session's library may still be read by running workers: it is closed with the app
        self.set_session(session)
        self.warm_up()
        self.notify.info("Settings saved; models and library reloaded")
        return True

    # -- library edits every page hears about ----------------------------------------------------
    def save_caption(self, image_id: int, text: str, on_done=None, on_error=None) -> None:
        """Store a user caption in a worker (re-embedded, searcher refreshed), then ``captionSaved``."""
        session = self.require_session()
        if session is None:
            return

        def done(_):
            self.notify.info("Caption saved and re-embedded")
            self.captionSaved.emit(int(image_id))
            if on_done:
                on_done(image_id)

        self.tasks.start(session.save_caption, int(image_id), text, on_result=done,
                         on_error=on_error or self.notify.error, name="save caption")

    def close(self, wait_ms: int = 60000) -> None:
        self.tasks.shutdown(wait_ms)
        self.index_worker.close()
        if self.session is not None:
            self.session.close()


__all__ = ["AppContext", "Notifier", "NO_LIBRARY"]
