"""The side-by-side result columns: image-only on the left, caption-fused on the right, caption-only on request."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QLabel, QListView, QSplitter, QVBoxLayout, QWidget

from ..core import fusion
from ..core.modes import ALL, CAPTION, COMPARE, FUSED, LEARNED, TITLES
from .delegates import ResultDelegate
from .models import IdRole, ResultsModel
from .thumbnails import ThumbnailLoader



class ResultColumn(QWidget):
    activated = Signal(int)  # image id

    def __init__(self, mode: str, thumbs: ThumbnailLoader, delegate: ResultDelegate, parent=None):
        super().__init__(parent)
        self.mode = mode
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        lay.setSpacing(2)
        self.header = QLabel(TITLES[mode])
        self.header.setObjectName("Header")
        self.sub = QLabel(f"rank change vs {TITLES[COMPARE[mode]].lower()}")
        self.sub.setObjectName("SubHeader")
        self.note = QLabel()
        self.note.setObjectName("Note")
        self.note.setWordWrap(True)
        self.note.hide()
        self.model = ResultsModel(mode, COMPARE[mode], thumbs, self)
        self.view = QListView()
        self.view.setObjectName("Results")
        self.view.setModel(self.model)
        self.view.setItemDelegate(delegate)
        self.view.setUniformItemSizes(True)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.view.setMouseTracking(True)
        self.view.setDragEnabled(True)
        self.view.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.doubleClicked.connect(self._on_double)
        self.view.activated.connect(self._on_double)
        lay.addWidget(self.header)
        lay.addWidget(self.sub)
        lay.addWidget(self.note)
        lay.addWidget(self.view, 1)

    def _on_double(self, index: QModelIndex) -> None:
        iid = index.data(IdRole)
        if iid is not None:
            self.activated.emit(int(iid))

    def set_result(self, mode_result) -> None:
        self.model.set_hits(mode_result.hits if mode_result else [])
        note = mode_result.note if mode_result else None
        self.note.setText(note or "")
        self.note.setVisible(bool(note))

    def names(self) -> list[str]:
        return [h.path for h in self.model.hits]


class ResultsPanel(QWidget):
    activated = Signal(int)

    def __init__(self, thumbs: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.delegate = ResultDelegate(self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setChildrenCollapsible(False)
        self.columns: dict[str, ResultColumn] = {}
        for mode in ALL:
            col = ResultColumn(mode, thumbs, self.delegate)
            col.activated.connect(self.activated)
            self.columns[mode] = col
            self.splitter.addWidget(col)
        self.columns[CAPTION].hide()  # shown on request
        self.columns[LEARNED].hide()  # shown with a fusion head
        lay.addWidget(self.splitter)
        self.set_alpha(fusion.DEFAULT_ALPHA)

    def set_alpha(self, alpha: float, composed: bool = False) -> None:
        if composed:
            self.columns[FUSED].header.setText(f"{TITLES[FUSED]} (composed: modifier weight 0.50)")
        else:
            self.columns[FUSED].header.setText(f"{TITLES[FUSED]} (α = {alpha:.2f})")

    def show_caption_column(self, on: bool) -> None:
        self.columns[CAPTION].setVisible(on)

    def show_learned_column(self, on: bool) -> None:
        self.columns[LEARNED].setVisible(on)

    def set_show_boxes(self, on: bool) -> None:
        self.delegate.show_boxes = on
        for c in self.columns.values():
            c.view.viewport().update()

    def set_result(self, result) -> None:
        for mode, col in self.columns.items():
            col.set_result(result.modes.get(mode) if result is not None else None)

    def clear(self) -> None:
        self.set_result(None)
