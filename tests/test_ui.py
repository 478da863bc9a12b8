"""The desktop UI, headless (pytest-qt, offscreen), on the real sample gallery with the real offline models."""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import select

pytest.importorskip("PySide6")

from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402

from explorer.core import fusion  # noqa: E402
from explorer.core.library import Library  # noqa: E402
from explorer.core.store import ImageRow  # noqa: E402
from explorer.ui.main_window import MainWindow  # noqa: E402

QUERY_TIMEOUT = 60_000


@pytest.fixture
def lib(library_copy):
    return library_copy


@pytest.fixture
def qsettings(tmp_path):
    return QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, lib, qsettings, sample_gallery):
    win = MainWindow(lib.settings, library=lib, qsettings=qsettings, gallery=str(sample_gallery))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.ctx.warm, timeout=QUERY_TIMEOUT)
    return win


def drop_file(widget, path) -> None:
    """What the file manager does: drag enter, then drop (Qt 6 only delivers a Drop to the current drag
    target, so the handlers are called directly)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    widget.dragEnterEvent(enter)
    assert enter.isAccepted()
    ev = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(ev)
    assert ev.isAccepted()


def names(col) -> list[str]:
    return [os.path.basename(p) for p in col.names()]


def run_drop(qtbot, win, path):
    with qtbot.waitSignal(win.search_page.queryFinished, timeout=QUERY_TIMEOUT):
        drop_file(win.search_page.drop_zone, path)
    return win.search_page.result


def test_drop_runs_query_and_fills_both_columns(qtbot, window, sample_gallery):
    res = run_drop(qtbot, window, sample_gallery / "coffee" / "coffee.jpg")
    img, fused = window.search_page.results.columns["image"], window.search_page.results.columns["fused"]
    assert img.model.rowCount() == window.search_page.k() == 10
    assert fused.model.rowCount() == 10
    assert names(img)[0].startswith("coffee_") and names(fused)[0].startswith("coffee_")
    assert "coffee.jpg" not in names(img)  # the query itself is excluded
    # a result card drags out as its file, e.g. onto the query zone
    mime = fused.model.mimeData([fused.model.index(0)])
    assert [u.toLocalFile() for u in mime.urls()] == [fused.names()[0]]
    assert window.search_page.results.columns["caption"].isHidden()
    # the query view shows the image and its detections; the caption is editable
    assert window.search_page.drop_zone.image is not None and window.search_page.drop_zone.detections
    # the query is a library image: its stored active caption shows (its file name's words here)
    assert window.search_page.caption_edit.text() == window.search_page.prepared.caption.text == "coffee"
    assert "overlap@10" in window.search_page.stats_label.text() and "Spearman" in window.search_page.stats_label.text()
    assert window.search_page.results.columns["fused"].header.text() == f"Caption-fused (α = {fusion.DEFAULT_ALPHA:.2f})"
    # rank-change badges come from the other column
    hit = fused.model.hits[0]
    assert hit.other_ranks.get("image") is not None
    # caption-only column on request
    window.search_page.caption_check.setChecked(True)
    assert not window.search_page.results.columns["caption"].isHidden()
    assert window.search_page.results.columns["caption"].model.rowCount() == 10
    assert "caption" in res.modes or "caption" in window.search_page.result.modes


def test_alpha_slider_reranks_fused_column_live(qtbot, window, sample_gallery):
    run_drop(qtbot, window, sample_gallery / "coffee" / "coffee.jpg")
    fused = window.search_page.results.columns["fused"]
    image_before = window.search_page.results.columns["image"].names()
    prepared = window.search_page.prepared
    window.search_page.alpha_slider.setValue(0)  # synchronous: no worker, no re-encoding
    before = fused.names()
    assert before == image_before  # alpha 0 is image-only
    window.search_page.alpha_slider.setValue(100)
    after = fused.names()
    assert window.search_page.prepared is prepared
    assert after != before
    expect = window.search_page.searcher.rank(window.search_page.prepared, window.search_page.pool, "fused", window.search_page.k(), 1.0)
    assert after == [h.path for h in expect.hits]
    assert window.search_page.results.columns["image"].names() == image_before
    assert window.search_page.results.columns["fused"].header.text() == "Caption-fused (α = 1.00)"
    # k selector
    window.search_page.k_combo.setCurrentIndex(window.search_page.k_combo.findData(5))
    assert fused.model.rowCount() == 5


def test_clicking_a_detection_box_runs_an_object_query(qtbot, window, sample_gallery):
    run_drop(qtbot, window, sample_gallery / "coffee" / "coffee.jpg")
    view = window.search_page.drop_zone
    # a box whose centre selects itself (the smallest box under the cursor wins)
    target = None
    for i in range(len(view.detections)):
        c = view.widget_rect_for_box(i).center()
        if view.box_at(c) == i:
            target, centre = i, c
            break
    assert target is not None
    label, _, box = view.detections[target]
    with qtbot.waitSignal(window.search_page.queryFinished, timeout=QUERY_TIMEOUT):
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=centre.toPoint())
    spec = window.search_page.current_spec
    assert spec.kind == "object" and spec.box == tuple(box)
    assert "Object query" in window.search_page.query_info.text() and label in window.search_page.query_info.text()
    assert view.highlight == target
    assert window.search_page.results.columns["image"].model.rowCount() > 0


def test_query_caption_edit_reruns_with_the_edited_caption(qtbot, window, sample_gallery):
    run_drop(qtbot, window, sample_gallery / "coffee" / "coffee.jpg")
    window.search_page.caption_edit.setText("a tabby cat sitting")
    with qtbot.waitSignal(window.search_page.queryFinished, timeout=QUERY_TIMEOUT):
        window.search_page.caption_button.click()
    assert window.search_page.current_spec.caption == "a tabby cat sitting"
    assert window.search_page.prepared.caption.source == "user-edited"


def test_caption_edit_in_detail_view_persists(qtbot, window, lib, loader, sample_gallery):
    with lib.store.session() as s:
        row = s.scalar(select(ImageRow).where(ImageRow.path.like("%/gravel.jpg")))
    dlg = window.open_detail(row.id)
    qtbot.waitUntil(lambda: dlg.info is not None, timeout=QUERY_TIMEOUT)
    assert dlg.view.image is not None
    assert dlg.caption_edit.toPlainText() == dlg.info.caption != ""
    dlg.caption_edit.setPlainText("grey pebbles on a mountain path")
    with qtbot.waitSignal(window.ctx.captionSaved, timeout=QUERY_TIMEOUT):
        dlg.save_button.click()
    qtbot.waitUntil(lambda: dlg.info is not None and dlg.info.caption_source == "user-edited", timeout=QUERY_TIMEOUT)

    from explorer.core.edits import active_caption

    assert active_caption(lib, row.id).text == "grey pebbles on a mountain path"
    again = Library(lib.dir, lib.settings, loader=loader)
    try:
        cap = active_caption(again, row.id)
        assert (cap.text, cap.source) == ("grey pebbles on a mountain path", "user-edited")
    finally:
        again.store.close()
    # a text query finds it through the new caption
    window.search_page.text_edit.setText("pebbles on a mountain path")
    with qtbot.waitSignal(window.search_page.queryFinished, timeout=QUERY_TIMEOUT):
        window.search_page.search_button.click()
    assert os.path.basename(window.search_page.results.columns["fused"].names()[0]) == "gravel.jpg"
    dlg.close()


def test_bad_dropped_files_show_an_error_and_the_window_stays_usable(qtbot, window, tmp_path, sample_gallery):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    drop_file(window.search_page.drop_zone, txt)
    assert "not an image file" in window.notify.last_error
    assert window.banner.isVisible()

    fake = tmp_path / "broken.jpg"
    fake.write_bytes(b"this is not a jpeg at all")
    with qtbot.waitSignal(window.notify.errorShown, timeout=QUERY_TIMEOUT) as blocker:
        drop_file(window.search_page.drop_zone, fake)
    assert "broken.jpg" in blocker.args[0] and "not an image" in blocker.args[0]
    assert window.banner.label.text() == blocker.args[0]

    drop_file(window.search_page.drop_zone, tmp_path)
    assert "is a folder" in window.notify.last_error

    missing_dir = tmp_path / "nope"
    window.index_folder(str(missing_dir))
    assert "not a folder" in window.notify.last_error

    # still usable
    run_drop(qtbot, window, sample_gallery / "cat" / "chelsea.jpg")
    assert names(window.search_page.results.columns["image"])[0].startswith("chelsea_")
    assert not window.banner.isVisible()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_shows_an_error(qtbot, window, tmp_path):
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0)
    try:
        window.index_folder(str(d))
        assert "permission denied" in window.notify.last_error
    finally:
        d.chmod(0o755)


def test_evaluation_panel_runs_and_exports(qtbot, window, sample_gallery, tmp_path):
    panel = window.eval_panel
    window.tabs.setCurrentWidget(panel)
    with qtbot.waitSignal(panel.finished, timeout=QUERY_TIMEOUT) as blocker:
        panel.start(f"folders:{sample_gallery}", modes=("image", "fused", "caption"))
    report = blocker.args[0]
    assert [r.mode for r in report.results] == ["image", "fused", "caption"]
    assert panel.canvas is not None and panel.table.columnCount() == 3
    assert panel.table.item(0, 0).text() == f"{report.results[0].map:.3f}"  # mAP of image-only
    assert panel.export_plot_button.isEnabled()

    out = {}
    for suffix in ("png", "svg", "pdf"):
        p = tmp_path / f"pr.{suffix}"
        with qtbot.waitSignal(panel.exported, timeout=QUERY_TIMEOUT):
            panel.export_plot(str(p))
        out[suffix] = p
    for suffix in ("json", "csv"):
        p = tmp_path / f"metrics.{suffix}"
        with qtbot.waitSignal(panel.exported, timeout=QUERY_TIMEOUT):
            panel.export_metrics(str(p))
        out[suffix] = p
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(out["svg"]).getroot().tag.endswith("svg")
    pdf = out["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
    doc = json.loads(out["json"].read_text())
    assert set(doc["modes"]) == {"image", "fused", "caption"}
    rows = list(csv.reader(out["csv"].open()))
    assert rows[0] == ["mode", "metric", "value"] and any(r[1] == "map" for r in rows[1:])

    # a bad ground truth is a message, not a crash
    with qtbot.waitSignal(panel.failed, timeout=QUERY_TIMEOUT) as blocker:
        panel.start(f"csv:{tmp_path / 'missing.csv'}")
    assert "missing.csv" in blocker.args[0]
    assert window.notify.last_error == blocker.args[0]


def test_settings_dialog_shows_availability(qtbot, window):
    d = window.open_settings()
    qtbot.waitUntil(lambda: d.probed, timeout=QUERY_TIMEOUT)
    for role in ("image", "text", "captioner", "detector"):
        assert "ready" in d.states[role].text(), d.states[role].text()
    d.combos["captioner"].setCurrentText("hf:/nonexistent/captioner")
    d.run_probe()
    qtbot.waitUntil(lambda: "missing" in d.states["captioner"].text(), timeout=QUERY_TIMEOUT)
    d.combos["captioner"].setCurrentText("structured")
    d.save()  # same specs and library: nothing to reload
    assert window.ctx.session.loader is window.ctx.session.library.loader
    d.close()


def test_window_state_and_last_gallery_persist(qtbot, lib, qsettings, sample_gallery):
    win = MainWindow(lib.settings, library=lib, qsettings=qsettings, gallery=str(sample_gallery / "cat"))
    qtbot.addWidget(win)
    win.show()
    win.resize(1234, 777)
    win.main_split.setSizes([300, 934])
    sizes = win.main_split.sizes()
    qtbot.waitUntil(lambda: win.sidebar.gallery_model.rowCount() == 4, timeout=QUERY_TIMEOUT)
    win.close()
    assert qsettings.value("last/gallery") == str(sample_gallery / "cat")
    assert qsettings.value("last/library") == str(lib.dir)

    lib2 = Library(lib.dir, lib.settings, loader=lib.loader)
    win2 = MainWindow(lib2.settings, library=lib2, qsettings=qsettings)
    qtbot.addWidget(win2)
    win2.show()
    # (the offscreen platform clamps window sizes to its virtual screen, so compare what was restored)
    assert qsettings.value("window/geometry") and win2.restoreGeometry(qsettings.value("window/geometry"))
    assert win2.main_split.sizes()[0] == sizes[0]
    assert win2.sidebar.current_folder == str(sample_gallery / "cat")
    qtbot.waitUntil(lambda: win2.sidebar.gallery_model.rowCount() == 4, timeout=QUERY_TIMEOUT)


def test_worker_errors_are_wrapped(qtbot, caplog):
    from explorer.core.errors import BadQuery
    from explorer.ui.workers import TaskRunner, format_error

    assert format_error(BadQuery("empty query")) == "empty query"
    assert format_error(ValueError("boom\nmore")) == "internal error: ValueError: boom"
    runner = TaskRunner()
    got = []

    def bad():
        raise KeyError("nope")

    with qtbot.waitSignal(runner.busyChanged, check_params_cb=lambda busy: not busy, timeout=10_000):
        runner.start(bad, on_error=got.append, on_result=lambda r: got.append(("result", r)))
    assert got == ["internal error: KeyError: 'nope'"]
    assert "Traceback" in caplog.text


def test_indexing_can_be_cancelled(qtbot, tmp_path, loader, gallery_copy):
    lib_dir = tmp_path / "fresh"
    lib = Library(lib_dir, loader.settings.__class__(library=str(lib_dir)), loader=loader)
    win = MainWindow(lib.settings, library=lib, qsettings=QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat),
                     gallery=str(gallery_copy))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.ctx.warm, timeout=QUERY_TIMEOUT)
    worker_cancel = []

    def on_progress(p):
        if p.phase == "indexing" and not worker_cancel:
            worker_cancel.append(win.indexing.worker.cancel)
            win.indexing.cancel_button.click()

    with qtbot.waitSignal(win.indexing.finished, timeout=180_000) as blocker:
        win.index_folder(str(gallery_copy))
        win.indexing.worker.signals.progress.connect(on_progress)
    summary = blocker.args[0]
    assert worker_cancel and worker_cancel[0].is_set()  # the very Event handed to Indexer.run
    assert summary.cancelled and 0 < summary.indexed < 50
    assert "Cancelled" in win.status_label.text()
    assert win.sidebar.index_button.isEnabled() and win.indexing.worker is None
    qtbot.waitUntil(lambda: win.sidebar.gallery_model.rowCount() == summary.indexed, timeout=30_000)


def test_learned_column_after_loading_a_fusion_head(qtbot, window, lib, sample_gallery, tmp_path):
    from explorer.core.learned import train_fusion

    head = tmp_path / "fusion-test.safetensors"
    train_fusion(lib, f"folders:{sample_gallery}", head, epochs=1, threads=1)
    assert not window.search_page.learned_check.isEnabled()
    run_drop(qtbot, window, sample_gallery / "cat" / "chelsea.jpg")
    window.search_page.load_head(str(head))  # loads in a worker, then re-runs the current query with the head
    learned = window.search_page.results.columns["learned"]
    qtbot.waitUntil(lambda: learned.model.rowCount() == window.search_page.k(), timeout=QUERY_TIMEOUT)
    assert window.search_page.learned_check.isChecked() and not learned.isHidden()
    assert names(learned)[0].startswith("chelsea_")
    assert "learned" in window.search_page.result.modes and "image_vs_learned" in window.search_page.result.comparisons
