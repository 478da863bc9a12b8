"""Colours, fonts and the application style sheet (one place, so every view agrees)."""

from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#2F6FEB"
ACCENT_SOFT = "#E8F0FE"
TEXT = "#1F2328"
MUTED = "#5F6B7A"
BORDER = "#D7DCE2"
CARD = "#FFFFFF"
WINDOW = "#F4F6F8"
UP = "#1A7F37"
DOWN = "#CF222E"
NEW = "#8250DF"
ERROR_BG = "#FDECEA"
ERROR_FG = "#B3261E"

#: Box colours, by label (stable: the same label always gets the same colour).
BOX_COLOURS = ["#FF6B3D", "#2BB673", "#3D8BFF", "#F5B800", "#D14FE0", "#00B3C7", "#FF4F7B", "#8C6CFF"]


def box_colour(label: str) -> QColor:
    h = 0
    for ch in label:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    return QColor(BOX_COLOURS[h % len(BOX_COLOURS)])


STYLE_SHEET = f"""
QMainWindow, QDialog {{ background: {WINDOW}; }}
QWidget {{ color: {TEXT}; }}
QToolTip {{ background: #FFFFFF; color: {TEXT}; border: 1px solid {BORDER}; padding: 6px; }}
QLabel#Header {{ font-size: 14px; font-weight: 600; }}
QLabel#SubHeader {{ color: {MUTED}; font-size: 12px; }}
QLabel#SectionTitle {{ font-size: 11px; font-weight: 700; color: {MUTED}; letter-spacing: 1px; }}
QLabel#Note {{ color: {MUTED}; font-style: italic; }}
QLabel#Stats {{ color: {TEXT}; background: {ACCENT_SOFT}; border-radius: 6px; padding: 4px 10px; }}
QFrame#Panel {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 8px; }}
QFrame#Banner {{ background: {ERROR_BG}; border: 1px solid #F5C2C0; border-radius: 6px; }}
QLabel#BannerText {{ color: {ERROR_FG}; }}
QListView, QTreeView, QTableWidget {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 6px; }}
QListView#Results {{ background: {WINDOW}; border: none; }}
QHeaderView::section {{ background: {WINDOW}; border: none; border-bottom: 1px solid {BORDER}; padding: 4px 6px; color: {MUTED}; font-weight: 600; }}
QLineEdit, QPlainTextEdit, QComboBox, QSpinBox {{ background: #FFFFFF; border: 1px solid {BORDER}; border-radius: 5px; padding: 4px 6px; }}
QLineEdit:focus, QPlainTextEdit:focus, QComboBox:focus {{ border: 1px solid {ACCENT}; }}
QPushButton {{ background: #FFFFFF; border: 1px solid {BORDER}; border-radius: 5px; padding: 5px 12px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:disabled {{ color: #A0A7B0; }}
QPushButton#Primary {{ background: {ACCENT}; color: white; border: 1px solid {ACCENT}; font-weight: 600; }}
QPushButton#Primary:disabled {{ background: #9DB8F2; border-color: #9DB8F2; }}
QTabWidget::pane {{ border: none; }}
QTabBar::tab {{ padding: 6px 16px; border: none; color: {MUTED}; font-weight: 600; }}
QTabBar::tab:selected {{ color: {ACCENT}; border-bottom: 2px solid {ACCENT}; }}
QSplitter::handle {{ background: {WINDOW}; }}
QStatusBar {{ background: #FFFFFF; border-top: 1px solid {BORDER}; }}
QProgressBar {{ border: 1px solid {BORDER}; border-radius: 4px; background: #FFFFFF; text-align: center; height: 14px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QSlider::groove:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: #FFFFFF; border: 2px solid {ACCENT}; width: 12px; height: 12px; margin: -6px 0; border-radius: 8px; }}
"""


def apply_style(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = app.palette()
    pal.setColor(QPalette.ColorRole.Window, QColor(WINDOW))
    pal.setColor(QPalette.ColorRole.Base, QColor(CARD))
    pal.setColor(QPalette.ColorRole.Highlight, QColor(ACCENT))
    pal.setColor(QPalette.ColorRole.HighlightedText, QColor("#FFFFFF"))
    pal.setColor(QPalette.ColorRole.Text, QColor(TEXT))
    pal.setColor(QPalette.ColorRole.WindowText, QColor(TEXT))
    pal.setColor(QPalette.ColorRole.ToolTipBase, QColor("#FFFFFF"))
    pal.setColor(QPalette.ColorRole.ToolTipText, QColor(TEXT))
    app.setPalette(pal)
    f = app.font()
    if f.pointSizeF() < 10:
        f.setPointSizeF(10)
    app.setFont(f)
    app.setStyleSheet(STYLE_SHEET)


def bold(font: QFont, size_delta: float = 0) -> QFont:
    f = QFont(font)
    f.setBold(True)
    if size_delta:
        f.setPointSizeF(max(6.0, f.pointSizeF() + size_delta))
    return f
