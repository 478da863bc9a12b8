"""``run_app``: the entry point of the desktop app (``main.py`` and ``explorer gui`` call it)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from ..core.config import Settings, default_library

log = logging.getLogger(__name__)


def demo_gallery_dir() -> Path:
    """Where ``--demo`` writes the sample gallery: the per-user data folder."""
    return default_library().parent / "sample-gallery"


def make_app(argv=None):
    from PySide6.QtWidgets import QApplication

    from .style import apply_style

    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv if argv is not None else sys.argv[:1]))
    app.setOrganizationName("RetrievalExplorer")
    app.setApplicationName("Retrieval Explorer")
    apply_style(app)
    return app


def resolve_settings(settings: Settings, qsettings) -> Settings:
    """Reopen the last library when none was asked for explicitly (the default is in force)."""
    last = qsettings.value("last/library", "", type=str)
    if last and settings.library == str(default_library()) and os.path.isdir(last) and last != settings.library:
        return replace(settings, library=last)
    return settings


def tune_threads_for_gui() -> dict:
    """Keep the GUI thread responsive while models run in workers; returns the previous values.

    - A Python worker thread holding the GIL delays the GUI thread by up to the switch interval
      (5 ms by default) each time it wants to run: make that shorter.
    - torch's intra-op threads default to one per core; on a small machine they keep every core
      busy and the GUI thread waits for the scheduler (measured: stalls of 50-140 ms on 2 cores).
      Leave one core free. On 2 busy cores this cost no indexing throughput.
    """
    old = {"switchinterval": sys.getswitchinterval()}
    sys.setswitchinterval(0.002)
    try:
        import torch

        old["torch_threads"] = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    except Exception:  # noqa: BLE001 - torch is optional for the UI itself
        pass
    from ..core.models import engines  # ONNX Runtime / OpenVINO runners made from now on: same cap

    old["engine_cap"] = engines.set_thread_cap(max(1, (os.cpu_count() or 2) - 1))
    return old


def restore_threads(old: dict) -> None:
    sys.setswitchinterval(old.get("switchinterval", 0.005))
    if "engine_cap" in old:
        from ..core.models import engines

        engines.set_thread_cap(old["engine_cap"])
    if "torch_threads" in old:
        import torch

        torch.set_num_threads(old["torch_threads"])


def run_app(settings: Settings, gallery: str | None = None, demo: bool = False) -> int:
    from PySide6.QtCore import QSettings

    from ..core.errors import ExplorerError
    from .main_window import APP, ORG, MainWindow
    from .qtdeps import problem

    missing = problem()
    if missing:  # one clear line instead of Qt's abort
        raise ExplorerError(missing)
    tune_threads_for_gui()
    app = make_app()
    qs = QSettings(ORG, APP)
    settings = resolve_settings(settings, qs)

    demo_dir = None
    if demo:
        from ..core.samples import make_sample_gallery

        try:
            demo_dir = str(make_sample_gallery(demo_gallery_dir()))
        except OSError:
            demo_dir = str(make_sample_gallery(Path.cwd() / "sample-gallery"))
        gallery = gallery or demo_dir

    win = MainWindow(settings, qsettings=qs, gallery=gallery)

    def excepthook(etype, value, tb):  # an exception in a slot: show it, keep the window alive
        log.error("internal error:\n%s", "".join(traceback.format_exception(etype, value, tb)))
        try:
            win.notify.error(f"internal error: {etype.__name__}: {value}")
        except Exception:  # noqa: BLE001
            pass

    sys.excepthook = excepthook
    win.show()
    if demo_dir:
        win.start_demo(demo_dir)
    return int(app.exec())
