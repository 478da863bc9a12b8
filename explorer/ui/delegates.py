"""Painted cells: gallery grid thumbnails and result cards (no per-item widgets, so 100k rows stay smooth)."""

from __future__ import annotations

import os

from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen, QPixmap, QTextLayout, QTextOption
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from ..core.captions.sources import USER_EDITED, sources_text
from . import style
from .models import CompareRole, FailedRole, HitRole


def norm_dets(dets) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """Detections as (label, score, box) from core Detection objects, hit dicts or tuples."""
    out = []
    for d in dets or []:
        if isinstance(d, dict):
            out.append((d["label"], float(d["score"]), tuple(float(v) for v in d["box"])))
        elif hasattr(d, "label"):
            out.append((d.label, float(d.score), tuple(float(v) for v in d.box)))
        else:
            out.append((d[0], float(d[1]), tuple(float(v) for v in d[2])))
    return out


def fit_rect(src: QSize, area: QRectF) -> QRectF:
    """The largest rect of ``src``'s aspect ratio centred in ``area``."""
    if src.width() <= 0 or src.height() <= 0:
        return QRectF(area)
    s = min(area.width() / src.width(), area.height() / src.height())
    w, h = src.width() * s, src.height() * s
    return QRectF(area.x() + (area.width() - w) / 2, area.y() + (area.height() - h) / 2, w, h)


def draw_detections(p: QPainter, target: QRectF, orig_w: float, orig_h: float, dets, labels: bool = True,
                    highlight: int | None = None, hover: int | None = None, font: QFont | None = None,
                    line_width: float = 2.0, compact: bool = False) -> None:
    """Draw boxes (in original pixel coordinates of an ``orig_w`` x ``orig_h`` image) onto ``target``."""
    if not dets or not orig_w or not orig_h:
        return
    sx, sy = target.width() / orig_w, target.height() / orig_h
    p.save()
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    p.setClipRect(target.adjusted(-1, -1, 1, 1))
    f = QFont(font) if font is not None else QFont(p.font())
    f.setPointSizeF(max(6.0, f.pointSizeF() - (2.5 if compact else 1)))
    f.setBold(not compact)
    fm = QFontMetrics(f)
    p.setFont(f)
    for i, (label, score, (x1, y1, x2, y2)) in enumerate(dets):
        r = QRectF(target.x() + x1 * sx, target.y() + y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy)
        c = style.box_colour(label)
        emph = i == highlight or i == hover
        if i == highlight:
            fill = QColor(c)
            fill.setAlpha(60)
            p.fillRect(r, fill)
        pen = QPen(c, line_width * (1.8 if emph else 1.0))
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(r)
        if labels:
            text = label if compact else f"{label} {score:.2f}"
            pad = 4 if compact else 8
            tw, th = fm.horizontalAdvance(text) + pad, fm.height() + (0 if compact else 2)
            ty = r.y() - th if r.y() - th >= target.y() else r.y()
            tag = QRectF(r.x(), ty, min(tw, max(r.width(), tw if not compact else r.width())), th)
            bg = QColor(c)
            if compact:
                bg.setAlpha(200)
            p.fillRect(tag, bg)
            p.setPen(QColor("#FFFFFF"))
            p.drawText(tag, Qt.AlignmentFlag.AlignCenter, text)
    p.restore()


def _placeholder(p: QPainter, r: QRectF, text: str, failed: bool = False) -> None:
    p.save()
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#FDECEA") if failed else QColor("#E9EDF1"))
    p.drawRoundedRect(r, 4, 4)
    p.setPen(QColor(style.ERROR_FG if failed else "#9AA4AF"))
    f = QFont(p.font())
    f.setPointSizeF(max(7.0, f.pointSizeF() - 1))
    p.setFont(f)
    p.drawText(r, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)
    p.restore()


class GridDelegate(QStyledItemDelegate):
    """A thumbnail with its file name under it; a grey placeholder while it loads."""

    def __init__(self, cell: int = 132, parent=None):
        super().__init__(parent)
        self.cell = cell

    def sizeHint(self, option, index) -> QSize:  # noqa: N802
        return QSize(self.cell, self.cell + 20)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index) -> None:
        r = QRectF(option.rect).adjusted(4, 4, -4, -4)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hover = bool(option.state & QStyle.StateFlag.State_MouseOver)
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if selected or hover:
            p.setPen(QPen(QColor(style.ACCENT), 2) if selected else Qt.PenStyle.NoPen)
            p.setBrush(QColor(style.ACCENT_SOFT))
            p.drawRoundedRect(r, 6, 6)
        img_area = QRectF(r.x() + 4, r.y() + 4, r.width() - 8, r.height() - 26)
        pm = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pm, QPixmap) and not pm.isNull():
            tr = fit_rect(pm.size(), img_area)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawPixmap(tr, pm, QRectF(pm.rect()))
        else:
            failed = index.data(FailedRole)
            _placeholder(p, img_area, "cannot read" if failed else "…", bool(failed))
        name = index.data(Qt.ItemDataRole.DisplayRole) or ""
        fm = QFontMetrics(option.font)
        text_r = QRectF(r.x() + 2, r.bottom() - 20, r.width() - 4, 18)
        p.setPen(QColor(style.TEXT if selected else style.MUTED))
        p.setFont(option.font)
        p.drawText(text_r, Qt.AlignmentFlag.AlignCenter, fm.elidedText(name, Qt.TextElideMode.ElideMiddle, int(text_r.width())))
        p.restore()


class ResultDelegate(QStyledItemDelegate):
    """A result card: rank, thumbnail with detection overlays, score, rank change, file name and caption."""

    HEIGHT = 132
    THUMB = 116

    def __init__(self, parent=None):
        super().__init__(parent)
        self.show_boxes = True

    def sizeHint(self, option, index) -> QSize:  # noqa: N802
        return QSize(320, self.HEIGHT)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index) -> None:
        hit = index.data(HitRole)
        if hit is None:
            return
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hover = bool(option.state & QStyle.StateFlag.State_MouseOver)
        card = QRectF(option.rect).adjusted(2, 3, -6, -3)
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(QPen(QColor(style.ACCENT if selected else ("#B9C3CE" if hover else style.BORDER)), 1.5 if selected else 1))
        p.setBrush(QColor(style.ACCENT_SOFT if selected else style.CARD))
        p.drawRoundedRect(card, 8, 8)

        base = QFont(option.font)
        # rank
        rank_r = QRectF(card.x() + 6, card.y() + 8, 30, 24)
        p.setFont(style.bold(base, 3))
        p.setPen(QColor(style.MUTED))
        p.drawText(rank_r, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, str(hit.rank))

        # thumbnail + boxes
        area = QRectF(card.x() + 38, card.y() + (card.height() - self.THUMB) / 2, self.THUMB, self.THUMB)
        pm = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pm, QPixmap) and not pm.isNull():
            tr = fit_rect(pm.size(), area)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawPixmap(tr, pm, QRectF(pm.rect()))
            if self.show_boxes and hit.detections and hit.width and hit.height:
                draw_detections(p, tr, hit.width, hit.height, norm_dets(hit.detections), labels=True, font=base,
                                line_width=1.2, compact=True)
        else:
            failed = index.data(FailedRole)
            _placeholder(p, area, "cannot read" if failed else "loading…", bool(failed))

        # text column
        x = area.right() + 12
        w = card.right() - x - 10
        y = card.y() + 8
        p.setFont(style.bold(base, 1))
        p.setPen(QColor(style.TEXT))
        score_text = f"{hit.score:.3f}"
        fm_b = QFontMetrics(p.font())
        p.drawText(QRectF(x, y, w, fm_b.height()), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, score_text)
        # rank change badge
        kind, n = index.data(CompareRole) or ("none", None)
        badge = {"up": (f"▲{n}", style.UP), "down": (f"▼{n}", style.DOWN), "new": ("new", style.NEW), "same": ("=", style.MUTED)}.get(kind)
        if badge:
            text, col = badge
            sf = QFont(base)
            sf.setBold(True)
            sf.setPointSizeF(max(7.0, base.pointSizeF() - 1))
            fm_s = QFontMetrics(sf)
            bw, bh = fm_s.horizontalAdvance(text) + 12, fm_s.height() + 2
            br = QRectF(x + fm_b.horizontalAdvance(score_text) + 10, y + (fm_b.height() - bh) / 2, bw, bh)
            bg = QColor(col)
            bg.setAlpha(28)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(bg)
            p.drawRoundedRect(br, bh / 2, bh / 2)
            p.setPen(QColor(col))
            p.setFont(sf)
            p.drawText(br, Qt.AlignmentFlag.AlignCenter, text)
        y += fm_b.height() + 4

        # file name
        p.setFont(base)
        fm = QFontMetrics(base)
        p.setPen(QColor(style.TEXT))
        name = os.path.basename(hit.path)
        folder = os.path.basename(os.path.dirname(hit.path))
        p.drawText(QRectF(x, y, w, fm.height()), Qt.AlignmentFlag.AlignLeft,
                   fm.elidedText(f"{folder}/{name}" if folder else name, Qt.TextElideMode.ElideMiddle, int(w)))
        y += fm.height() + 3

        # caption, up to three lines, elided
        cf = QFont(base)
        cf.setPointSizeF(max(7.0, base.pointSizeF() - 0.5))
        fmc = QFontMetrics(cf)
        p.setFont(cf)
        p.setPen(QColor(style.MUTED))
        src_h = fmc.height()
        lines_avail = max(1, int((card.bottom() - 8 - src_h - y) // fmc.lineSpacing()))
        self._draw_wrapped(p, hit.caption or "(no caption)", cf, QRectF(x, y, w, lines_avail * fmc.lineSpacing()), min(3, lines_avail))
        # caption source
        if hit.caption_source:
            sf = QFont(cf)
            sf.setItalic(True)
            p.setFont(sf)
            p.setPen(QColor("#8A94A0") if hit.caption_source != USER_EDITED else QColor(style.ACCENT))
            p.drawText(QRectF(x, card.bottom() - 6 - src_h, w, src_h), Qt.AlignmentFlag.AlignLeft,
                       fmc.elidedText(sources_text(hit.caption_source, hit.caption_sources), Qt.TextElideMode.ElideRight, int(w)))
        p.restore()

    @staticmethod
    def _draw_wrapped(p: QPainter, text: str, font: QFont, rect: QRectF, max_lines: int) -> None:
        fm = QFontMetrics(font)
        layout = QTextLayout(text, font)
        opt = QTextOption()
        opt.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        layout.setTextOption(opt)
        layout.beginLayout()
        lines = []
        while len(lines) < max_lines:
            line = layout.createLine()
            if not line.isValid():
                break
            line.setLineWidth(rect.width())
            lines.append((line.textStart(), line.textLength()))
        layout.endLayout()
        y = rect.y()
        for i, (start, length) in enumerate(lines):
            seg = text[start:start + length]
            if i == len(lines) - 1 and start + length < len(text):
                seg = fm.elidedText(text[start:], Qt.TextElideMode.ElideRight, int(rect.width()))
            p.drawText(QPointF(rect.x(), y + fm.ascent()), seg.rstrip())
            y += fm.lineSpacing()


__all__ = ["GridDelegate", "ResultDelegate", "draw_detections", "fit_rect", "norm_dets", "QRect"]
