"""The embedding map tab: the whole gallery as a 2-D scatter plot for one representation.

The map (``explorer.core.projection.gallery_map``: PCA, or UMAP when installed; cached in the
library) is computed in a worker with progress and cancel. Points are drawn by pyqtgraph's
``ScatterPlotItem`` (one item per colour group, one brush each, so 100k points stay smooth);
they are coloured by ground-truth label (folder), caption source, caption weight or cluster.

- hover: the nearest point within a few pixels shows its thumbnail and caption;
- click: ``queryRequested(path)`` (the window runs that query in the Search tab);
- lasso (toggle "Lasso", then drag): the enclosed points become the selection, shown in the
  grid beside the map and emitted as ``selectionChanged(ids, paths)``.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFrame, QHBoxLayout, QLabel, QListView, QProgressBar, QPushButton,
                               QSplitter, QVBoxLayout, QWidget)

from .task_panel import TaskPanelMixin
from ..core.projection import COLOUR_BY, REPRESENTATIONS, GalleryMap, gallery_map, umap_available
from .delegates import GridDelegate
from .models import GalleryModel, PathRole
from .view_context import ViewContext

#: categorical palette (Tableau 10, then distinct extras)
PALETTE = ["#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7", "#9C755F", "#BAB0AC",
           "#17BECF", "#7F3C8D", "#11A579", "#E73F74", "#3969AC", "#80BA5A", "#E68310", "#008695", "#CF1C90", "#4B4B8F"]
MAX_CATEGORIES = len(PALETTE)
WEIGHT_BINS = 10
POINT_SIZE = 7
HOVER_PX = 8
#: above this many points in view, the map is drawn as one raster image (level of detail)
LOD_POINTS = 1000
#: selections larger than this are listed in the grid but not outlined on the map (keeps frames fast)
MAX_OUTLINED = 5000
#: pixel offsets of a point's disc in the raster (radius 2 px)
DISC = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3) if dx * dx + dy * dy <= 5 and (dx or dy)]


def rasterize(xy: np.ndarray, groups, rect: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """RGBA image ``(width, height, 4)`` (x-major, y up, as pyqtgraph's ImageItem takes it) of the points.

    ``groups``: [(QColor, row indices)], later groups drawn over earlier ones. Each point sets
    one pixel to its group's code (one pass over the points); the code image is then dilated
    into small discs with whole-image slices and mapped through a colour table, so the cost
    is O(points + pixels), whatever the overlap.
    """
    x0, y0, x1, y1 = rect
    codes = np.zeros((width, height), np.uint8)
    sx = width / max(x1 - x0, 1e-12)
    sy = height / max(y1 - y0, 1e-12)
    lut = np.zeros((min(len(groups), 254) + 1, 4), np.uint8)
    for g, (colour, rows) in enumerate(groups[:254], start=1):
        lut[g] = (colour.red(), colour.green(), colour.blue(), 255)
        px = ((xy[rows, 0] - x0) * sx).astype(np.int64)
        py = ((xy[rows, 1] - y0) * sy).astype(np.int64)
        ok = (px >= 0) & (px < width) & (py >= 0) & (py < height)
        codes[px[ok], py[ok]] = g
    out = codes.copy()
    for dx, dy in DISC:
        dst = out[max(dx, 0):width + min(dx, 0), max(dy, 0):height + min(dy, 0)]
        src = codes[max(-dx, 0):width + min(-dx, 0), max(-dy, 0):height + min(-dy, 0)]
        np.maximum(dst, src, out=dst)
    # gather 4-byte pixels (one uint32 per colour), then view them as RGBA bytes
    return lut.view(np.uint32).ravel()[out].view(np.uint8).reshape(width, height, 4)


def weight_colour(w: float) -> QColor:
    """Caption weight 0 -> grey-blue, 1 -> orange (a simple two-stop ramp)."""
    a, b = np.array([0x9C, 0xA8, 0xB8]), np.array([0xE8, 0x6A, 0x17])
    c = a + (b - a) * float(np.clip(w, 0, 1))
    return QColor(int(c[0]), int(c[1]), int(c[2]))


class MapViewBox(pg.ViewBox):
    """Pan/zoom as usual; in lasso mode a left drag draws a polygon instead; clicks are reported."""

    def __init__(self, owner: "EmbeddingMapPanel"):
        super().__init__()
        self.owner = owner
        self.lasso_mode = False
        self._lasso: list[QPointF] = []

    def mouseClickEvent(self, ev):  # noqa: N802
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.owner.click_at(self.mapSceneToView(ev.scenePos()))
        else:
            super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802
        if not self.lasso_mode or ev.button() != Qt.MouseButton.LeftButton:
            return super().mouseDragEvent(ev, axis)
        ev.accept()
        p = self.mapSceneToView(ev.scenePos())
        if ev.isStart():
            self._lasso = [self.mapSceneToView(ev.buttonDownScenePos())]
        self._lasso.append(p)
        self.owner.show_lasso(self._lasso)
        if ev.isFinish():
            self.owner.lasso_select([(q.x(), q.y()) for q in self._lasso])
            self._lasso = []


class EmbeddingMapPanel(TaskPanelMixin, QWidget):
    queryRequested = Signal(str)  # image path
    selectionChanged = Signal(list, list)  # ids, paths
    mapReady = Signal(object)  # GalleryMap
    failed = Signal(str)

    def __init__(self, context: ViewContext, parent=None):
        super().__init__(parent)
        self.ctx = context
        self.map: GalleryMap | None = None
        self.worker = None
        self.selected = np.zeros(0, np.int64)  # row indices into self.map
        self._items: list[pg.ScatterPlotItem] = []
        self._built_rect = None
        self._hover_row = -1
        self._pending_hover: QPointF | None = None

        # -- controls
        self.rep_combo = QComboBox()
        self.rep_combo.addItems(list(REPRESENTATIONS))
        self.method_combo = QComboBox()
        self.method_combo.addItem("PCA", "pca")
        self.method_combo.addItem("UMAP" if umap_available() else "UMAP (pip install umap-learn)", "umap")
        if not umap_available():
            self.method_combo.model().item(1).setEnabled(False)
        else:
            self.method_combo.setCurrentIndex(1)
        self.colour_combo = QComboBox()
        self.colour_combo.addItems(list(COLOUR_BY))
        self.colour_combo.currentIndexChanged.connect(lambda _=0: self._draw())
        self.compute_button = QPushButton("Compute map")
        self.compute_button.setObjectName("Primary")
        self.compute_button.clicked.connect(lambda: self.compute())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.lasso_check = QCheckBox("Lasso")
        self.lasso_check.setToolTip("Drag to draw around a group of points; they are shown in the grid")
        self.lasso_check.toggled.connect(self._on_lasso_mode)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.status = QLabel("Compute a map of the library: PCA (or UMAP) of the chosen representation.")
        self.status.setObjectName("SubHeader")
        row = QHBoxLayout()
        for w in (QLabel("Representation"), self.rep_combo, QLabel("Projection"), self.method_combo, QLabel("Colour by"),
                  self.colour_combo, self.compute_button, self.cancel_button, self.lasso_check, self.progress):
            row.addWidget(w)
        row.addStretch(1)

        # -- plot
        self.vb = MapViewBox(self)
        self.plot = pg.PlotWidget(viewBox=self.vb, background="w")
        self.plot.setAspectLocked(False)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.setMenuEnabled(False)
        # the legend is a label beside the plot, so it never hides (or catches clicks on) points
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.sel_item = pg.ScatterPlotItem(size=POINT_SIZE + 4, pen=pg.mkPen("#1F2328", width=1.5), brush=None, pxMode=True)
        self.sel_item.setZValue(10)
        self.lasso_item = pg.PlotCurveItem(pen=pg.mkPen("#2F6FEB", width=1.5, style=Qt.PenStyle.DashLine))
        self.lasso_item.setZValue(20)
        self.plot.addItem(self.sel_item)
        self.raster = pg.ImageItem()
        self.raster.setZValue(-1)
        self.raster.hide()
        self.plot.addItem(self.raster)
        self.lod_active = False
        self._groups: list = []
        self._lod_timer = QTimer(self)
        self._lod_timer.setSingleShot(True)
        self._lod_timer.setInterval(15)
        self._lod_timer.timeout.connect(self.update_lod)
        self.vb.sigRangeChanged.connect(lambda *_: self._lod_timer.start())
        self.vb.sigResized.connect(lambda *_: self._lod_timer.start())
        self.plot.addItem(self.lasso_item)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self._hover_timer = QTimer(self)
        self._hover_timer.setSingleShot(True)
        self._hover_timer.setInterval(30)
        self._hover_timer.timeout.connect(self._do_hover)

        # hover card (a child of the plot: no top-level tooltip window)
        self.card = QFrame(self.plot)
        self.card.setObjectName("Panel")
        cl = QVBoxLayout(self.card)
        cl.setContentsMargins(6, 6, 6, 6)
        self.card_image = QLabel()
        self.card_image.setFixedSize(128, 128)
        self.card_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.card_text = QLabel()
        self.card_text.setWordWrap(True)
        self.card_text.setFixedWidth(220)
        cl.addWidget(self.card_image, 0, Qt.AlignmentFlag.AlignHCenter)
        cl.addWidget(self.card_text)
        self.card.hide()
        context.thumbs.ready.connect(self._on_thumb)

        # -- selection grid
        self.sel_title = QLabel("SELECTION")
        self.sel_title.setObjectName("SectionTitle")
        self.sel_model = GalleryModel(context.thumbs, self)
        self.sel_view = QListView()
        self.sel_view.setModel(self.sel_model)
        self.sel_view.setViewMode(QListView.ViewMode.IconMode)
        self.sel_view.setUniformItemSizes(True)
        self.sel_view.setMovement(QListView.Movement.Static)
        self.sel_view.setResizeMode(QListView.ResizeMode.Adjust)
        self.sel_view.setGridSize(QSize(112, 132))
        self.sel_view.setItemDelegate(GridDelegate(112, self.sel_view))
        self.sel_view.setDragEnabled(True)
        self.sel_view.doubleClicked.connect(lambda ix: self.queryRequested.emit(ix.data(PathRole)))
        sel_hint = QLabel("Turn on Lasso and draw around points · double-click an image to search with it")
        sel_hint.setObjectName("SubHeader")
        sel_hint.setWordWrap(True)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        legend_title = QLabel("COLOURS")
        legend_title.setObjectName("SectionTitle")
        sl.addWidget(legend_title)
        sl.addWidget(self.legend)
        sl.addSpacing(8)
        sl.addWidget(self.sel_title)
        sl.addWidget(self.sel_view, 1)
        sl.addWidget(sel_hint)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plot)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([760, 260])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(split, 1)

    # -- computing -------------------------------------------------------------------------------
    def compute(self, representation: str | None = None, method: str | None = None, use_cache: bool = True) -> None:
        if representation is not None:
            self.rep_combo.setCurrentText(representation)
        if method is not None:
            self.method_combo.setCurrentIndex(self.method_combo.findData(method))
        session = self.ctx.session()
        if session is None:
            self._fail("no library is open")
            return
        rep, method = self.rep_combo.currentText(), self.method_combo.currentData()
        head = session.head

        def job(worker):
            return gallery_map(session.library, rep, method=method, head=head, use_cache=use_cache,
                               progress=lambda msg, frac: worker.report((msg, frac), key=msg), cancel=worker.cancel)

        self.start_task(job, self.set_map, self._fail, self.compute_button, "map")

    def _fail(self, msg: str) -> None:
        self.status.setText(msg)
        self.ctx.show_error(msg)
        self.failed.emit(msg)

    # -- drawing ---------------------------------------------------------------------------------
    def set_map(self, m: GalleryMap) -> None:
        self.map = m
        self.selected = np.zeros(0, np.int64)
        self.sel_model.set_items([], [])
        self.sel_title.setText("SELECTION")
        if len(m):
            lo, hi = m.xy.min(axis=0), m.xy.max(axis=0)
            self.vb.setRange(xRange=(float(lo[0]), float(hi[0])), yRange=(float(lo[1]), float(hi[1])), padding=0.05)
        self._draw()
        self.status.setText(f"{len(m):,} images · {m.method.upper()} of the {m.representation} vectors · "
                            f"{'cached' if m.cached else f'computed in {m.elapsed_s:.1f} s'} · hover for details, click to search")
        self.mapReady.emit(m)

    def colour_groups(self) -> list[tuple[str, QColor, np.ndarray]]:
        """(legend name, colour, row indices) per drawn group for the current colouring."""
        m = self.map
        if m is None:
            return []
        by = self.colour_combo.currentText()
        if by == "caption weight":
            bins = np.minimum((np.clip(m.weights, 0, 1) * WEIGHT_BINS).astype(int), WEIGHT_BINS - 1)
            out = []
            for b in range(WEIGHT_BINS):
                rows = np.flatnonzero(bins == b)
                if rows.size:
                    out.append((f"w {b / WEIGHT_BINS:.1f}–{(b + 1) / WEIGHT_BINS:.1f}", weight_colour((b + 0.5) / WEIGHT_BINS), rows))
            return out
        names, codes = m.categories(by)
        counts = np.bincount(codes, minlength=len(names))
        order = np.argsort(-counts, kind="stable")
        out = []
        other = []
        for rank, c in enumerate(order.tolist()):
            rows = np.flatnonzero(codes == c)
            if rank < MAX_CATEGORIES - 1 or len(names) <= MAX_CATEGORIES:
                out.append((names[c], QColor(PALETTE[rank % len(PALETTE)]), rows))
            else:
                other.append(rows)
        if other:
            out.append((f"{len(other)} more", QColor("#C8CDD3"), np.concatenate(other)))
        return out

    def _clear_items(self) -> None:
        for it in self._items:
            self.plot.removeItem(it)
        self._items = []
        self._built_rect = None

    def _draw(self) -> None:
        self._clear_items()
        m = self.map
        if m is None:
            self.legend.setText("")
            return
        groups = self.colour_groups()
        self._groups = [(c, rows) for _, c, rows in groups]
        import html

        self.legend.setText("<br>".join(f"<span style='color:{c.name()}'>●</span> {html.escape(name)} "
                                        f"<span style='color:#5F6B7A'>({rows.size:,})</span>" for name, c, rows in groups))
        self._draw_selection()
        self.update_lod()

    def _build_items(self, rect) -> None:
        """Scatter items for the points inside ``rect`` (x0, y0, x1, y1), one item per colour group."""
        self._clear_items()
        m = self.map
        x0, y0, x1, y1 = rect
        inside = (m.xy[:, 0] >= x0) & (m.xy[:, 0] <= x1) & (m.xy[:, 1] >= y0) & (m.xy[:, 1] <= y1)
        for colour, rows in self._groups:
            rows = rows[inside[rows]]
            if not rows.size:
                continue
            it = pg.ScatterPlotItem(x=m.xy[rows, 0], y=m.xy[rows, 1], size=POINT_SIZE, pen=None,
                                    brush=pg.mkBrush(colour), pxMode=True)
            # a click on a point reaches the item first: route it to the same nearest-point logic
            it.sigClicked.connect(lambda _item, _pts, ev: self.click_at(self.vb.mapSceneToView(ev.scenePos())))
            self.plot.addItem(it)
            self._items.append(it)
        self._built_rect = rect

    def update_lod(self) -> None:
        """Many points in view: draw one raster image instead of the scatter items (and back)."""
        m = self.map
        if m is None:
            return
        (x0, x1), (y0, y1) = self.vb.viewRange()
        inview = int(np.count_nonzero((m.xy[:, 0] >= x0) & (m.xy[:, 0] <= x1) & (m.xy[:, 1] >= y0) & (m.xy[:, 1] <= y1)))
        lod = inview > LOD_POINTS
        if lod:
            w, h = max(1, int(self.vb.width())), max(1, int(self.vb.height()))
            self.raster.setImage(rasterize(m.xy, self._groups, (x0, y0, x1, y1), w, h), autoLevels=False, levels=(0, 255))
            from PySide6.QtCore import QRectF

            self.raster.setRect(QRectF(x0, y0, x1 - x0, y1 - y0))
        else:
            b = self._built_rect
            if b is None or x0 < b[0] or y0 < b[1] or x1 > b[2] or y1 > b[3]:
                # points around the view too (half a view each side), so small pans reuse the items
                dx, dy = (x1 - x0) / 2, (y1 - y0) / 2
                self._build_items((x0 - dx, y0 - dy, x1 + dx, y1 + dy))
        self.lod_active = lod
        self.raster.setVisible(lod)
        for it in self._items:
            it.setVisible(not lod)

    def _draw_selection(self) -> None:
        if self.map is None or self.selected.size == 0 or self.selected.size > MAX_OUTLINED:
            self.sel_item.setData([], [])
        else:
            xy = self.map.xy[self.selected]
            self.sel_item.setData(x=xy[:, 0], y=xy[:, 1])

    # -- interaction -----------------------------------------------------------------------------
    def nearest(self, x: float, y: float, radius_px: float = HOVER_PX) -> int:
        """Row of the point nearest to data position (x, y) within ``radius_px`` pixels, else -1."""
        m = self.map
        if m is None or len(m) == 0:
            return -1
        px = self.vb.viewPixelSize()  # data units per pixel (x, y)
        sx, sy = max(px[0], 1e-12), max(px[1], 1e-12)
        d2 = ((m.xy[:, 0] - x) / sx) ** 2 + ((m.xy[:, 1] - y) / sy) ** 2
        i = int(np.argmin(d2))
        return i if d2[i] <= radius_px ** 2 else -1

    def click_at(self, pos: QPointF) -> None:
        i = self.nearest(pos.x(), pos.y())
        if i >= 0:
            self.queryRequested.emit(self.map.paths[i])

    def view_pos_of(self, row: int):
        """The pixel position (QPoint, viewport coordinates) of a point (for tests and the hover card)."""
        sp = self.vb.mapViewToScene(QPointF(float(self.map.xy[row, 0]), float(self.map.xy[row, 1])))
        return self.plot.mapFromScene(sp)

    def _on_lasso_mode(self, on: bool) -> None:
        self.vb.lasso_mode = on
        self.vb.setMouseEnabled(x=not on, y=not on)

    def show_lasso(self, pts: list[QPointF]) -> None:
        xs = [p.x() for p in pts] + [pts[0].x()]
        ys = [p.y() for p in pts] + [pts[0].y()]
        self.lasso_item.setData(xs, ys)

    def lasso_select(self, polygon: list[tuple[float, float]]) -> np.ndarray:
        """Select the points inside ``polygon`` (data coordinates); returns their rows."""
        self.lasso_item.setData([], [])
        m = self.map
        if m is None or len(polygon) < 3:
            return np.zeros(0, np.int64)
        from matplotlib.path import Path as MplPath

        inside = MplPath(np.asarray(polygon, float)).contains_points(m.xy.astype(float))
        self.set_selection(np.flatnonzero(inside))
        return self.selected

    def set_selection(self, rows) -> None:
        m = self.map
        self.selected = np.asarray(rows, np.int64)
        ids = [int(m.ids[i]) for i in self.selected.tolist()]
        paths = [m.paths[i] for i in self.selected.tolist()]
        self.sel_model.set_items([], [])
        self.sel_model.set_items(ids, paths)
        self.sel_title.setText(f"SELECTION · {len(ids):,} IMAGES")
        self._draw_selection()
        self.selectionChanged.emit(ids, paths)

    def _on_mouse_moved(self, scene_pos) -> None:
        self._pending_hover = scene_pos
        if not self._hover_timer.isActive():
            self._hover_timer.start()

    def _do_hover(self) -> None:
        if self._pending_hover is None or self.map is None:
            return
        p = self.vb.mapSceneToView(self._pending_hover)
        self.hover_at(p.x(), p.y())

    def hover_at(self, x: float, y: float) -> int:
        i = self.nearest(x, y)
        self._hover_row = i
        if i < 0:
            self.card.hide()
            return i
        m = self.map
        self._fill_card(i)
        pos = self.view_pos_of(i)
        cx = int(pos.x()) + 14
        cy = int(pos.y()) + 14
        self.card.adjustSize()
        if cx + self.card.width() > self.plot.width():
            cx = int(pos.x()) - 14 - self.card.width()
        if cy + self.card.height() > self.plot.height():
            cy = max(0, int(pos.y()) - 14 - self.card.height())
        self.card.move(max(0, cx), max(0, cy))
        self.card.show()
        self.card.raise_()
        return i

    def _fill_card(self, i: int) -> None:
        m = self.map
        pm = self.ctx.thumbs.get(m.paths[i])
        if pm is not None:
            self.card_image.setPixmap(pm.scaled(128, 128, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
        else:
            self.card_image.setText("…")
        import html
        import os

        self.card_text.setText(f"<b>{html.escape(os.path.basename(m.paths[i]))}</b> · {html.escape(m.labels[i])}<br>"
                               f"<i>{html.escape(m.captions[i][:160])}</i><br>"
                               f"<span style='color:#5F6B7A'>{m.caption_sources[i]} · weight {m.weights[i]:.2f} · cluster {m.clusters[i]}</span>")

    def _on_thumb(self, path: str) -> None:
        if self._hover_row >= 0 and self.map is not None and self.card.isVisible() and self.map.paths[self._hover_row] == path:
            self._fill_card(self._hover_row)
