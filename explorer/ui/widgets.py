"""Small widgets: an image view with clickable detection boxes, the query drop zone, the error banner."""

from __future__ import annotations

import os

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QCursor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from . import style
from .delegates import draw_detections, fit_rect, norm_dets


class ImageView(QWidget):
    """Shows an image scaled to fit, with detection boxes in original pixel coordinates.

    ``boxClicked(i)`` is emitted when the user clicks inside detection ``i`` (the smallest
    box under the cursor wins, so a cup on a table is reachable).
    """

    boxClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None, placeholder: str = ""):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 120)
        self.image: QImage | None = None
        self.orig_size: tuple[int, int] = (0, 0)
        self.detections: list = []
        self.highlight: int | None = None
        self._hover: int | None = None
        self.show_boxes = True
        self.interactive = True
        self.placeholder = placeholder
        self.busy_text = ""

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(360, 260)

    def set_image(self, image: QImage | None, orig_size: tuple[int, int] | None = None) -> None:
        self.image = image
        if image is not None and orig_size is None:
            orig_size = (image.width(), image.height())
        self.orig_size = orig_size or (0, 0)
        self.update()

    def set_detections(self, dets, highlight: int | None = None) -> None:
        self.detections = norm_dets(dets)
        self.highlight = highlight
        self._hover = None
        self.update()

    def clear(self) -> None:
        self.image, self.detections, self.highlight = None, [], None
        self.update()

    # -- geometry ---------------------------------------------------------------------------------
    def image_rect(self) -> QRectF:
        if self.image is None:
            return QRectF()
        return fit_rect(self.image.size(), QRectF(self.rect()).adjusted(8, 8, -8, -8))

    def widget_rect_for_box(self, i: int) -> QRectF:
        """Where detection ``i`` is drawn, in widget coordinates."""
        ir = self.image_rect()
        ow, oh = self.orig_size
        if ir.isNull() or not ow or not oh:
            return QRectF()
        x1, y1, x2, y2 = self.detections[i][2]
        sx, sy = ir.width() / ow, ir.height() / oh
        return QRectF(ir.x() + x1 * sx, ir.y() + y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy)

    def box_at(self, pos: QPointF) -> int | None:
        if not self.show_boxes:
            return None
        best, best_area = None, None
        for i in range(len(self.detections)):
            r = self.widget_rect_for_box(i)
            if r.contains(pos):
                a = r.width() * r.height()
                if best_area is None or a < best_area:
                    best, best_area = i, a
        return best

    # -- events -----------------------------------------------------------------------------------
    def mouseMoveEvent(self, e) -> None:  # noqa: N802
        if self.interactive:
            i = self.box_at(e.position())
            if i != self._hover:
                self._hover = i
                self.setCursor(QCursor(Qt.CursorShape.PointingHandCursor if i is not None else Qt.CursorShape.ArrowCursor))
                self.setToolTip(f"Search for this {self.detections[i][0]}" if i is not None else "")
                self.update()
        super().mouseMoveEvent(e)

    def leaveEvent(self, e) -> None:  # noqa: N802
        if self._hover is not None:
            self._hover = None
            self.update()
        super().leaveEvent(e)

    def mousePressEvent(self, e) -> None:  # noqa: N802
        if self.interactive and e.button() == Qt.MouseButton.LeftButton:
            i = self.box_at(e.position())
            if i is not None:
                self.boxClicked.emit(i)
                e.accept()
                return
        super().mousePressEvent(e)

    def paintEvent(self, _e) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self._paint_background(p)
        if self.image is not None and not self.image.isNull():
            ir = self.image_rect()
            p.drawImage(ir, self.image)
            if self.show_boxes:
                draw_detections(p, ir, self.orig_size[0], self.orig_size[1], self.detections, labels=True,
                                highlight=self.highlight, hover=self._hover, font=self.font())
        elif self.placeholder:
            p.setPen(QColor(style.MUTED))
            p.drawText(QRectF(self.rect()).adjusted(16, 16, -16, -16), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
        if self.busy_text:
            f = QFont(self.font())
            f.setBold(True)
            p.setFont(f)
            r = QRectF(0, self.height() - 30, self.width(), 30)
            p.fillRect(r, QColor(255, 255, 255, 215))
            p.setPen(QColor(style.ACCENT))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, self.busy_text)
        p.end()

    def _paint_background(self, p: QPainter) -> None:
        p.fillRect(self.rect(), QColor("#FFFFFF"))


class QueryDropZone(ImageView):
    """The query image: accepts image files dropped from the file manager or from the app's own views."""

    fileDropped = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, placeholder="Drop an image here\nfrom your file manager or the gallery\n\n"
                                             "then click a detected object to search for it")
        self.setAcceptDrops(True)
        self._drag_over = False
        self.setMinimumSize(240, 180)

    @staticmethod
    def _paths(mime) -> list[str]:
        if mime is None or not mime.hasUrls():
            return []
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]

    def dragEnterEvent(self, e) -> None:  # noqa: N802
        if self._paths(e.mimeData()):
            e.setDropAction(Qt.DropAction.CopyAction)
            e.accept()
            self._drag_over = True
            self.update()
        else:
            e.ignore()

    def dragMoveEvent(self, e) -> None:  # noqa: N802
        if self._paths(e.mimeData()):
            e.setDropAction(Qt.DropAction.CopyAction)
            e.accept()
        else:
            e.ignore()

    def dragLeaveEvent(self, e) -> None:  # noqa: N802
        self._drag_over = False
        self.update()

    def dropEvent(self, e) -> None:  # noqa: N802
        self._drag_over = False
        self.update()
        paths = self._paths(e.mimeData())
        if not paths:
            e.ignore()
            return
        e.setDropAction(Qt.DropAction.CopyAction)
        e.accept()
        self.fileDropped.emit(paths[0])

    def _paint_background(self, p: QPainter) -> None:
        r = QRectF(self.rect()).adjusted(1, 1, -1, -1)
        p.setBrush(QColor(style.ACCENT_SOFT if self._drag_over else "#FFFFFF"))
        pen = QPen(QColor(style.ACCENT if self._drag_over else "#B9C3CE"), 1.5)
        if self.image is None:
            pen.setStyle(Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawRoundedRect(r, 8, 8)


class Banner(QFrame):
    """A non-modal error message at the top of the window, with a close button."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("Banner")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 6, 6)
        icon = QLabel("⚠")
        icon.setObjectName("BannerText")
        self.label = QLabel()
        self.label.setObjectName("BannerText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Dismiss")
        close.setFlat(True)
        close.clicked.connect(self.hide)
        lay.addWidget(icon)
        lay.addWidget(self.label, 1)
        lay.addWidget(close)
        self.hide()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.hide)

    def show_message(self, text: str, timeout_ms: int = 20000) -> None:
        self.label.setText(text)
        self.show()
        self._timer.start(timeout_ms)


def short_path(path: str, keep: int = 2) -> str:
    parts = os.path.normpath(path).split(os.sep)
    return os.sep.join(parts[-keep:]) if len(parts) > keep else path
