"""The Search page: the query (drop zone, text, caption), the controls (α, k, rerank, columns) and
the side-by-side results.

The page owns the query's state: the current ``QuerySpec``, the prepared query, the candidate
pool, the searcher that made them and the sequence number that drops answers of superseded
queries. Slow work (preparing a query, gathering the pool, loading a fusion head) runs through
the context's task runner; re-ranking a cached pool when α, k or reranking change is cheap and
runs on the GUI thread (``Searcher.rank_all`` is numpy over a few hundred candidates).

It talks to the rest through signals: ``queryFinished`` after every ranking,
``detailRequested`` when a result is opened; errors and notices go to the context's notifier.
"""

from __future__ import annotations

import os
from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFrame, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QSlider, QSplitter, QVBoxLayout, QWidget)

from ..core import fusion
from ..core.errors import BadQuery, ExplorerError
from ..core.imageio import IMAGE_EXTENSIONS, is_image_path
from ..core.modes import CAPTION, FUSED, IMAGE, LEARNED
from ..core.captions.sources import sources_text
from ..core.search import QuerySpec
from .context import AppContext
from .detail import load_display
from ..core.rerank import METHODS as RERANK_METHODS, TITLES as RERANK_TITLES
from .results import TITLES, ResultsPanel
from .widgets import QueryDropZone

POOL_K = 50
K_CHOICES = (5, 10, 20, 50)
STATS_HINT = "overlap@k and Spearman ρ between the columns appear here"
QUERY_HINT = "Drop an image, or type a text query."


def alpha_text(alpha: float) -> str:
    """How the α label and the fused column's header write α."""
    return f"{alpha:.2f}"


class SearchPage(QWidget):
    queryFinished = Signal(object)  # SearchResult (after every re-rank too)
    detailRequested = Signal(int)  # image id

    def __init__(self, ctx: AppContext, thumbs, parent=None):
        super().__init__(parent)
        self.ctx = ctx
        self.result = None
        self.prepared = None
        self.pool = None
        self.searcher = None
        self.current_spec: QuerySpec | None = None
        self.base_path: str | None = None
        self.base_dets: list = []
        self._query_seq = 0
        self._build(thumbs)
        ctx.sessionChanged.connect(self._on_session_changed)
        ctx.captionSaved.connect(lambda _i: self.refresh_pool())

    # -- construction --------------------------------------------------------------------------
    def _build(self, thumbs) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 6, 0, 0)
        self.results = ResultsPanel(thumbs)  # first: the controls below act on it as they are set up
        self.results.activated.connect(self.detailRequested)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        qbox = QFrame()
        qbox.setObjectName("Panel")
        ql = QHBoxLayout(qbox)
        ql.setContentsMargins(10, 10, 12, 10)
        ql.setSpacing(14)
        self.drop_zone = QueryDropZone()
        self.drop_zone.setMinimumWidth(300)
        self.drop_zone.fileDropped.connect(self.query_image)
        self.drop_zone.boxClicked.connect(self.query_object)
        ql.addWidget(self.drop_zone, 5)
        ql.addWidget(self._build_side(), 7)
        self.results.set_alpha(self.alpha())  # the fused header says what the slider says
        self.splitter.addWidget(qbox)
        self.splitter.addWidget(self.results)
        self.splitter.setSizes([280, 600])
        lay.addWidget(self.splitter)

    def _build_side(self) -> QWidget:
        side = QWidget()
        g = QGridLayout(side)
        g.setContentsMargins(0, 0, 0, 0)
        g.setHorizontalSpacing(8)
        g.setVerticalSpacing(8)
        title = QLabel("Query")
        title.setObjectName("Header")
        self.query_info = QLabel(QUERY_HINT)
        self.query_info.setObjectName("SubHeader")
        self.query_info.setWordWrap(True)
        g.addWidget(title, 0, 0)
        g.addWidget(self.query_info, 0, 1, 1, 3)

        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("Text query, or how to change the dropped image (e.g. “the same in red”)")
        self.text_edit.setClearButtonEnabled(True)
        self.text_edit.returnPressed.connect(self.search_text)
        self.search_button = _button("Search", self.search_text, primary=True)
        self.clear_button = _button("Clear image", self.clear_query,
                                    tip="Forget the query image (the text box becomes a plain text query)")
        for col, w in enumerate((QLabel("Text"), self.text_edit, self.search_button, self.clear_button)):
            g.addWidget(w, 1, col)

        self.caption_edit = QLineEdit()
        self.caption_edit.setPlaceholderText("the query's caption appears here; edit it and re-run")
        self.caption_edit.returnPressed.connect(self.rerun_with_caption)
        self.caption_button = _button("Re-run", self.rerun_with_caption, tip="Search again with this caption for the query image")
        self.caption_source = QLabel("")
        self.caption_source.setObjectName("SubHeader")
        for col, w in enumerate((QLabel("Caption"), self.caption_edit, self.caption_button, self.caption_source)):
            g.addWidget(w, 2, col)

        ctl = QHBoxLayout()
        ctl.setSpacing(8)
        self.alpha_slider = QSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0, 100)
        self.alpha_slider.setValue(round(fusion.DEFAULT_ALPHA * 100))
        self.alpha_slider.setMinimumWidth(160)
        self.alpha_slider.setToolTip("Caption fusion weight α: 0 = image only, 1 = caption only (re-ranks live)")
        self.alpha_value = QLabel(alpha_text(self.alpha()))  # from the slider, never a literal of its own
        self.alpha_value.setMinimumWidth(32)
        self.alpha_slider.valueChanged.connect(self._on_alpha)
        self.k_combo = QComboBox()
        for k in K_CHOICES:
            self.k_combo.addItem(str(k), k)
        self.k_combo.setCurrentIndex(1)
        self.k_combo.currentIndexChanged.connect(lambda _: self.rerank())
        self.rerank_combo = QComboBox()
        for method in RERANK_METHODS:
            self.rerank_combo.addItem(RERANK_TITLES.get(method, method), method)
        self.rerank_combo.setToolTip("Re-ranking: α-QE averages the query with its top neighbours; SuperGlobal refines the top 50 "
                                     "by their neighbourhoods; k-reciprocal compares reciprocal-neighbour sets")
        self.rerank_combo.currentIndexChanged.connect(lambda _: self.rerank())
        self.caption_check = _check("Caption-only", self._on_caption_column, "Show a third column: caption-only retrieval (text to text)")
        self.learned_check = _check("Learned", self._on_learned_column,
                                    "Load a trained fusion head (File ▸ Load fusion head…) to compare the learned-fused mode")
        self.learned_check.setEnabled(False)
        self.boxes_check = _check("Boxes", self._on_boxes, "Show detected objects on every image")
        self.boxes_check.setChecked(True)
        for w in (QLabel("α"), (self.alpha_slider, 1), self.alpha_value, 8, QLabel("k"), self.k_combo, 8, QLabel("Rerank"),
                  self.rerank_combo, 8, self.caption_check, self.learned_check, self.boxes_check):
            if isinstance(w, int):
                ctl.addSpacing(w)
            elif isinstance(w, tuple):
                ctl.addWidget(*w)
            else:
                ctl.addWidget(w)
        g.addLayout(ctl, 3, 0, 1, 4)

        self.stats_label = QLabel(STATS_HINT)
        self.stats_label.setObjectName("Stats")
        self.stats_label.setWordWrap(True)
        g.addWidget(self.stats_label, 4, 0, 1, 4)
        g.setRowStretch(5, 1)
        g.setColumnStretch(1, 1)
        return side

    # -- state the controls hold ---------------------------------------------------------------
    def alpha(self) -> float:
        return self.alpha_slider.value() / 100.0

    def k(self) -> int:
        return int(self.k_combo.currentData())

    def modes(self) -> tuple[str, ...]:
        modes = (IMAGE, FUSED, CAPTION) if self.caption_check.isChecked() else (IMAGE, FUSED)
        if self.learned_check.isChecked() and self.prepared is not None and self.prepared.learned_vec is not None:
            modes += (LEARNED,)
        return modes

    # -- asking --------------------------------------------------------------------------------
    def query_image(self, path: str) -> None:
        """An image dropped or chosen: image query, or composed with the text box as modifier."""
        if not path:
            return
        if os.path.isdir(path):
            self.ctx.notify.error(f"{path} is a folder: select it in the gallery tree and click “Index folder” to add it")
            return
        if not is_image_path(path) and os.path.isfile(path):
            self.ctx.notify.error(f"cannot use {os.path.basename(path)} as a query: not an image file "
                                  f"(supported: {', '.join(sorted(IMAGE_EXTENSIONS))})")
            return
        modifier = self.text_edit.text().strip() or None
        self.run_query(QuerySpec(image=path, modifier=modifier), new_image=True)

    def query_object(self, i: int) -> None:
        if self.base_path is None or not (0 <= i < len(self.base_dets)):
            return
        label, _, box = self.base_dets[i]
        self.drop_zone.set_detections(self.base_dets, highlight=i)
        self.run_query(QuerySpec(image=self.base_path, box=tuple(box)), new_image=False, object_label=label)

    def search_text(self) -> None:
        text = self.text_edit.text().strip()
        if self.base_path is not None:
            self.run_query(QuerySpec(image=self.base_path, modifier=text or None), new_image=False)
        elif text:
            self.run_query(QuerySpec(text=text), new_image=True)
        else:
            self.ctx.notify.error("type a text query, or drop an image")

    def rerun_with_caption(self) -> None:
        if self.current_spec is None:
            return
        cap = self.caption_edit.text().strip() or None
        if self.current_spec.image is None:
            self.text_edit.setText(cap or "")
            self.search_text()
            return
        self.run_query(replace(self.current_spec, caption=cap), new_image=False)

    def rerun(self) -> None:
        """Prepare the current query again (e.g. with a newly loaded fusion head)."""
        if self.current_spec is not None:
            self.run_query(self.current_spec, new_image=False)

    def clear_query(self) -> None:
        self._query_seq += 1
        self.base_path, self.base_dets = None, []
        self.current_spec = self.prepared = self.pool = self.result = self.searcher = None
        self.drop_zone.clear()
        self.drop_zone.busy_text = ""
        self.caption_edit.clear()
        self.caption_source.clear()
        self.query_info.setText(QUERY_HINT)
        self.results.clear()
        self.stats_label.setText(STATS_HINT)

    def _on_session_changed(self, _session) -> None:
        """Another library or other models: the query and a loaded head belong to the old session."""
        self.clear_query()
        self.learned_check.setChecked(False)
        self.learned_check.setEnabled(False)

    def run_query(self, spec: QuerySpec, new_image: bool = True, object_label: str | None = None) -> None:
        session = self.ctx.require_session()
        if session is None:
            return
        self._query_seq += 1
        seq = self._query_seq
        want_display = new_image and spec.image is not None

        def job():
            display = None
            if want_display:
                try:
                    display = load_display(spec.image)
                except ExplorerError as e:
                    raise BadQuery(f"cannot use {os.path.basename(spec.image)} as a query: {e}") from None
            searcher = session.searcher()
            pool = searcher.candidate_pool(searcher.prepare(spec), POOL_K)
            return searcher, pool.query, pool, display  # the pool's query carries its caption weight

        self.drop_zone.busy_text = "Searching…" + ("" if self.ctx.warm else " (loading models)")
        self.drop_zone.update()
        self.ctx.notify.status("Searching…")
        self.ctx.tasks.start(job, on_result=lambda out: self._on_prepared(seq, spec, out, new_image, object_label),
                             on_error=lambda msg: self._on_query_failed(seq, msg), name="query")

    def refresh_pool(self) -> None:
        """The library changed under the current query (a caption was edited): gather its pool again
        with the session's (refreshed) searcher; the query itself need not be re-encoded."""
        session, pq, seq = self.ctx.session, self.prepared, self._query_seq
        if session is None or pq is None:
            return

        def job():
            searcher = session.searcher()
            return searcher, searcher.candidate_pool(pq, POOL_K)

        def done(out):
            if seq == self._query_seq and pq is self.prepared:
                self.searcher, self.pool = out
                self.prepared = self.pool.query
                self.rerank()

        self.ctx.tasks.start(job, on_result=done, on_error=self.ctx.notify.error, name="refresh pool")

    def _on_query_failed(self, seq: int, msg: str) -> None:
        if seq != self._query_seq:
            return
        self.drop_zone.busy_text = ""
        self.drop_zone.update()
        self.ctx.notify.status("Query failed")
        self.ctx.notify.error(msg)

    def _on_prepared(self, seq: int, spec: QuerySpec, out, new_image: bool, object_label: str | None) -> None:
        if seq != self._query_seq:
            return  # a newer query superseded this one
        searcher, pq, pool, display = out
        self.searcher, self.prepared, self.pool, self.current_spec = searcher, pq, pool, spec
        self.drop_zone.busy_text = ""
        if new_image:
            if display is not None:
                img, size = display
                self.drop_zone.set_image(img, size)
                self.base_path = spec.image
                self.base_dets = [(d.label, d.score, d.box) for d in pq.detections]
                self.drop_zone.set_detections(self.base_dets)
            else:
                self.base_path, self.base_dets = None, []
                self.drop_zone.clear()
        self.drop_zone.update()
        cap = pq.caption
        self.caption_edit.setText(cap.text if cap else "")
        self.caption_edit.setCursorPosition(0)
        if cap is not None:
            self.caption_source.setText(f"{sources_text(cap.source, getattr(cap, 'parts', ()))} · weight {pq.caption_weight:.2f}")
            self.caption_source.setToolTip("where the query caption came from, and its weight in caption fusion")
        self.query_info.setText(_query_info(spec, pq, object_label))
        t = pq.timings
        self.ctx.notify.status("Query ready in " + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()))
        self.ctx.notify.dismiss()
        self.rerank()

    # -- ranking (cheap, GUI thread) -------------------------------------------------------------
    def rerank(self) -> None:
        """Re-rank the cached pool (no model runs): α, k, reranking, or the caption column changed."""
        if self.prepared is None or self.pool is None or self.searcher is None:
            return
        try:
            res = self.searcher.rank_all(self.prepared, self.pool, self.modes(), self.k(), self.alpha(),
                                         self.rerank_combo.currentData())
        except ExplorerError as e:
            self.ctx.notify.error(str(e))
            return
        self.result = res
        self.results.set_alpha(self.alpha(), composed=self.prepared.target_text is not None)
        self.results.set_result(res)
        self.stats_label.setText(stats_html(res))
        self.queryFinished.emit(res)

    def _on_alpha(self, v: int) -> None:
        self.alpha_value.setText(alpha_text(v / 100))
        self.results.set_alpha(v / 100, composed=bool(self.prepared and self.prepared.target_text))
        self.rerank()

    def _on_caption_column(self, on: bool) -> None:
        self.results.show_caption_column(on)
        self.rerank()

    def _on_learned_column(self, on: bool) -> None:
        self.results.show_learned_column(on)
        self.rerank()

    def _on_boxes(self, on: bool) -> None:
        self.results.set_show_boxes(on)
        self.drop_zone.show_boxes = on
        self.drop_zone.update()

    # -- the learned mode ----------------------------------------------------------------------
    def load_head(self, path: str) -> None:
        """Load a head in a worker (it embeds the gallery), then show the learned column."""
        session = self.ctx.require_session()
        if session is None:
            return
        self.ctx.notify.status(f"Loading fusion head {os.path.basename(path)}…")

        def done(name: str) -> None:
            self.learned_check.setEnabled(True)
            self.learned_check.setChecked(True)
            self.ctx.notify.info(f"Fusion head {name} loaded: the learned-fused column compares it with image-only")
            self.rerun()

        self.ctx.tasks.start(session.load_head, path, on_result=done, on_error=self.ctx.notify.error, name="load head")


def _query_info(spec: QuerySpec, pq, object_label: str | None) -> str:
    kind = spec.kind
    if kind == "object":
        return f"<b>Object query</b>: {object_label or 'region'} — click another box, or the caption to edit"
    if kind == "composed":
        return f"<b>Composed query</b>: image + “{spec.modifier}”<br>target: <i>{pq.target_text}</i>"
    if kind == "image":
        n = len(pq.detections)
        return (f"<b>Image query</b> · {os.path.basename(spec.image)} · {n} object{'s' if n != 1 else ''} detected"
                + (" — click a box to search for that object" if n else ""))
    return f"<b>Text query</b>: “{spec.text}”"


def stats_html(res) -> str:
    """overlap@k and Spearman ρ for every pair of columns, as a small HTML table."""
    if not res.comparisons:
        return ""
    head, ov, rho = [], [], []
    for key, c in res.comparisons.items():
        a, b = key.split("_vs_")
        head.append(f"<th style='padding:0 18px 2px 0;text-align:left;white-space:nowrap'>{a} ↔ {b}</th>")
        ov.append(f"<td style='padding-right:18px'>{c['overlap_at_k']:.2f}</td>")
        r = "–" if c.get("spearman") is None else f"{c['spearman']:.2f}"
        rho.append(f"<td style='padding-right:18px'>{r}</td>")
    lab = "style='color:#5F6B7A;padding-right:12px'"
    return ("<table cellspacing='0'>"
            f"<tr><td></td>{''.join(head)}</tr>"
            f"<tr><td {lab}>overlap@{res.k}</td>{''.join(ov)}</tr>"
            f"<tr><td {lab}>Spearman ρ</td>{''.join(rho)}</tr></table>")


def _button(text: str, slot, tip: str = "", primary: bool = False) -> QPushButton:
    b = QPushButton(text)
    if primary:
        b.setObjectName("Primary")
    if tip:
        b.setToolTip(tip)
    b.clicked.connect(slot)
    return b


def _check(text: str, slot, tip: str) -> QCheckBox:
    c = QCheckBox(text)
    c.setToolTip(tip)
    c.toggled.connect(slot)
    return c


__all__ = ["SearchPage", "POOL_K", "K_CHOICES", "alpha_text", "stats_html", "TITLES"]
