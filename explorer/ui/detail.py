"""The detail view of one library image: the full image with every box, and its editable caption.

It gets the app's context (session, task runner, notifier), never the window."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSplitter, QVBoxLayout,
                               QWidget)

from ..core.captions.sources import GENERATED, USER_EDITED
from ..core.imageio import load_image
from .context import NO_LIBRARY
from .thumbnails import pil_to_qimage
from .widgets import ImageView

DISPLAY_SIDE = 1400


def load_display(path: str, max_side: int = DISPLAY_SIDE):
    """(QImage for display, (original width, height)); runs in a worker. Raises BadImage."""
    loaded = load_image(path, max_side=max_side)
    return pil_to_qimage(loaded.image), (loaded.width, loaded.height)


class DetailDialog(QDialog):
    """Non-modal. ``save`` stores the caption as user-edited and re-embeds it (``AppContext.save_caption``)."""

    searchRequested = Signal(str)

    def __init__(self, ctx, image_id: int, parent=None):
        super().__init__(parent)
        self.ctx = ctx
        self.image_id = int(image_id)
        self.info = None
        self.setWindowTitle("Image details")
        self.setModal(False)
        self.resize(1100, 720)

        self.view = ImageView(self, placeholder="loading…")
        self.view.interactive = False
        self.path_label = QLabel()
        self.path_label.setObjectName("Header")
        self.path_label.setWordWrap(True)
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.meta_label = QLabel()
        self.meta_label.setObjectName("SubHeader")
        self.meta_label.setWordWrap(True)
        cap_title = QLabel("CAPTION")
        cap_title.setObjectName("SectionTitle")
        self.source_label = QLabel()
        self.source_label.setObjectName("SubHeader")
        self.caption_edit = QPlainTextEdit()
        self.caption_edit.setPlaceholderText("Write what this image shows; it is used by caption-fused and caption-only retrieval.")
        self.caption_edit.setMinimumHeight(110)
        self.save_button = QPushButton("Save caption")
        self.save_button.setObjectName("Primary")
        self.save_button.setToolTip("Store as a user-edited caption and re-embed it: retrieval uses it immediately")
        self.revert_button = QPushButton("Remove my edit")
        self.revert_button.setToolTip("Go back to the previous caption (generated, sidecar, ...)")
        self.search_button = QPushButton("Search with this image")
        self.status = QLabel()
        self.status.setObjectName("SubHeader")
        self.status.setWordWrap(True)
        det_title = QLabel("DETECTED OBJECTS")
        det_title.setObjectName("SectionTitle")
        self.det_label = QLabel()
        self.det_label.setWordWrap(True)
        self.det_label.setTextFormat(Qt.TextFormat.RichText)

        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(12, 4, 4, 4)
        sl.setSpacing(6)
        sl.addWidget(self.path_label)
        sl.addWidget(self.meta_label)
        sl.addSpacing(8)
        sl.addWidget(cap_title)
        sl.addWidget(self.source_label)
        sl.addWidget(self.caption_edit)
        row = QHBoxLayout()
        row.addWidget(self.save_button)
        row.addWidget(self.revert_button)
        row.addStretch(1)
        sl.addLayout(row)
        sl.addWidget(self.status)
        sl.addSpacing(8)
        sl.addWidget(det_title)
        sl.addWidget(self.det_label)
        sl.addStretch(1)
        sl.addWidget(self.search_button)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.view)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 10, 10, 10)
        lay.addWidget(split)

        self.save_button.clicked.connect(self.save)
        self.revert_button.clicked.connect(self.revert)
        self.search_button.clicked.connect(lambda: self.info and self.searchRequested.emit(self.info.path))
        self._set_busy(True)
        self.reload()

    # -- loading ---------------------------------------------------------------------------------
    def reload(self) -> None:
        session = self.ctx.session
        if session is None:
            self._on_error(NO_LIBRARY)
            return

        def job():
            info = session.image_info(self.image_id)
            try:
                img = load_display(info.path)
            except Exception as e:  # noqa: BLE001 - show the metadata even when the file went away
                img = (None, str(e))
            return info, img

        self.ctx.tasks.start(job, on_result=self._on_loaded, on_error=self._on_error, name="detail")

    def _on_loaded(self, out) -> None:
        info, (img, size) = out
        self.info = info
        if img is not None:
            self.view.set_image(img, size)
        else:
            self.view.placeholder = f"cannot show the image: {size}"
            self.view.update()
        self.view.set_detections(info.detections)
        self.path_label.setText(os.path.basename(info.path))
        dims = f"{info.width} × {info.height} px" if info.width else ""
        self.meta_label.setText(f"{info.path}\n{dims}")
        self.caption_edit.setPlainText(info.caption)
        self._show_source(info)
        if info.detections:
            self.det_label.setText(", ".join(f"{lab} <span style='color:#5F6B7A'>{s:.2f}</span>" for lab, s, _ in info.detections))
        else:
            self.det_label.setText("<span style='color:#5F6B7A'>none</span>")
        self._set_busy(False)

    def _show_source(self, info) -> None:
        self.source_label.setText(source_text(info))
        self.revert_button.setEnabled(info.caption_source == USER_EDITED)

    def _on_error(self, msg: str) -> None:
        self._set_busy(False)
        self.status.setText(msg)
        self.ctx.notify.error(msg)

    def _set_busy(self, busy: bool) -> None:
        for w in (self.save_button, self.revert_button, self.caption_edit):
            w.setEnabled(not busy)

    # -- editing ---------------------------------------------------------------------------------
    def save(self) -> None:
        self._submit(self.caption_edit.toPlainText())

    def revert(self) -> None:
        self._submit("")

    def _submit(self, text: str) -> None:
        self._set_busy(True)
        self.status.setText("saving and re-embedding…")
        self.ctx.save_caption(self.image_id, text, on_done=self._on_saved, on_error=self._on_error)

    def _on_saved(self, _=None) -> None:
        self.status.setText("saved: caption-fused and caption-only retrieval now use this caption")
        self.reload()


def source_text(info) -> str:
    """Which source each part of the caption came from, e.g. "source: captioner + file name words"."""
    from ..core.captions.sources import BY_NAME

    if not info.captions:
        return "no caption yet"

    def label(src: str) -> str:
        return BY_NAME[src].label if src in BY_NAME else src

    parts = info.parts or [(info.captions[0][0], info.captions[0][1])]
    conf = {s: c for s, _, c in info.captions}
    head = "source: " + " + ".join(label(s) for s, _ in parts)
    if parts[0][0] == GENERATED:
        head += f", confidence {conf.get(GENERATED, 0.0):.2f}"
    lines = [head]
    if len(parts) > 1:
        lines += [f"  {label(s)}: {t}" for s, t in parts]
    used = {s for s, _ in parts}
    older = [label(s) for s, _, _ in info.captions if s not in used]
    if older:
        lines.append("also stored: " + ", ".join(older))
    return "\n".join(lines)
