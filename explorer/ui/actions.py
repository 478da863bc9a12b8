"""The window's menus and actions, declared apart from the window class (as napari does).

Each entry names its menu, its text, an optional shortcut and what it triggers on the window's
parts; checkable view entries stay in step with the check box they mirror.
"""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog

from ..core.imageio import IMAGE_EXTENSIONS

SEPARATOR = None


def ask_query_image(win) -> None:
    exts = " ".join(f"*{e}" for e in sorted(IMAGE_EXTENSIONS))
    p, _ = QFileDialog.getOpenFileName(win, "Query image", win.sidebar.current_folder or "", f"Images ({exts})")
    if p:
        win.search_page.query_image(p)


def ask_fusion_head(win) -> None:
    path, _ = QFileDialog.getOpenFileName(win, "Load a trained fusion head", "models", "Fusion heads (*.safetensors)")
    if path:
        win.search_page.load_head(path)


def file_actions(win) -> list:
    """(text, shortcut, slot) of the File menu, None for a separator."""
    return [
        ("Add gallery folder…", QKeySequence.StandardKey.Open, win.sidebar.ask_add_gallery),
        ("Open query image…", None, lambda: ask_query_image(win)),
        ("Index selected folder", QKeySequence("Ctrl+I"), lambda: win.index_folder()),
        SEPARATOR,
        ("Load fusion head…", None, lambda: ask_fusion_head(win)),
        ("Settings…", QKeySequence("Ctrl+,"), win.open_settings),
        SEPARATOR,
        ("Quit", QKeySequence.StandardKey.Quit, win.close),
    ]


def view_toggles(win) -> list:
    """(text, the check box the entry mirrors) of the View menu."""
    page = win.search_page
    return [("Detection boxes", page.boxes_check), ("Caption-only column", page.caption_check)]


def build_menus(win) -> None:
    m = win.menuBar().addMenu("&File")
    for entry in file_actions(win):
        if entry is SEPARATOR:
            m.addSeparator()
            continue
        text, shortcut, slot = entry
        a = QAction(text, win)
        if shortcut is not None:
            a.setShortcut(shortcut)
        a.triggered.connect(lambda _checked=False, slot=slot: slot())
        m.addAction(a)
    v = win.menuBar().addMenu("&View")
    for text, check in view_toggles(win):
        a = QAction(text, win, checkable=True, checked=check.isChecked())
        a.toggled.connect(check.setChecked)
        check.toggled.connect(a.setChecked)
        v.addAction(a)


__all__ = ["build_menus", "file_actions", "view_toggles", "ask_query_image", "ask_fusion_head"]
