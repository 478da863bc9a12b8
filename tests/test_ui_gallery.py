"""The gallery grid: a model over an id list that stays cheap at 100k rows, lazy thumbnails with a disk cache."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QSize, Qt  # noqa: E402
from PySide6.QtWidgets import QListView  # noqa: E402

from explorer.ui.delegates import GridDelegate  # noqa: E402
from explorer.ui.models import GalleryModel, IdRole, PathRole  # noqa: E402
from explorer.ui.thumbnails import ThumbnailLoader  # noqa: E402


class CountingLoader(ThumbnailLoader):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked: set[str] = set()

    def get(self, path):
        self.asked.add(path)
        return None  # never load: this test is about the model and the view


def test_grid_with_100k_images_only_touches_visible_rows(qtbot, tmp_path):
    thumbs = CountingLoader(tmp_path / "thumbs")
    model = GalleryModel(thumbs)
    n = 100_000
    ids = list(range(1, n + 1))
    paths = [f"/photos/{i // 1000:03d}/img{i:06d}.jpg" for i in ids]
    t0 = time.perf_counter()
    model.set_items(ids, paths)
    t_set = time.perf_counter() - t0
    view = QListView()
    view.setViewMode(QListView.ViewMode.IconMode)
    view.setUniformItemSizes(True)
    view.setGridSize(QSize(112, 132))
    view.setItemDelegate(GridDelegate(112, view))
    view.setModel(model)
    view.resize(800, 600)
    qtbot.addWidget(view)
    view.show()
    t0 = time.perf_counter()
    view.grab()
    t_paint = time.perf_counter() - t0
    view.scrollToBottom()
    view.grab()
    print(f"\n100k rows: set_items {t_set * 1000:.1f} ms, first paint {t_paint * 1000:.1f} ms, thumbnails asked {len(thumbs.asked)}")
    assert model.rowCount() == n
    assert t_set < 0.5
    assert len(thumbs.asked) < 500  # only what was on screen, never the 100k
    assert paths[-1] in thumbs.asked
    # appending (as indexing does) keeps the rows already there
    inserted = []
    model.rowsInserted.connect(lambda _p, a, b: inserted.append((a, b)))
    model.set_items(ids + [n + 1, n + 2], paths + ["/photos/x1.jpg", "/photos/x2.jpg"])
    assert inserted == [(n, n + 1)]
    assert model.index(n + 1).data(PathRole) == "/photos/x2.jpg" and model.index(0).data(IdRole) == 1
    # grid items drag as file URLs
    mime = model.mimeData([model.index(3)])
    assert [u.toLocalFile() for u in mime.urls()] == [paths[3]]


def test_thumbnails_load_async_and_are_cached_on_disk(qtbot, tmp_path, sample_gallery):
    cache = tmp_path / "thumbnails"
    loader = ThumbnailLoader(cache, threads=2)
    files = sorted(str(p) for p in sample_gallery.rglob("*.jpg"))[:6]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for f in files + [str(bad)]:
        assert loader.get(f) is None  # nothing yet: a placeholder is drawn
    qtbot.waitUntil(lambda: all(loader.get(f) is not None for f in files) and loader.failed(str(bad)) is not None, timeout=30_000)
    pm = loader.get(files[0])
    assert max(pm.width(), pm.height()) == loader.cache.side
    assert "not an image" in loader.failed(str(bad))
    written = list(cache.rglob("*.jpg"))
    assert len(written) == len(files)
    # the key follows path + mtime + size: touching a file gives it a new thumbnail
    k1 = loader.cache.file_for(files[0])
    assert k1.is_file()
    st = os.stat(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert loader.cache.file_for(files[0]) != k1
    finally:
        os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    loader.stop()


def test_dragging_a_grid_item_onto_the_query_runs_it(qtbot, tmp_path, indexed_sample, loader, sample_gallery):
    import shutil

    from PySide6.QtCore import QPointF, QSettings
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    from explorer.core.library import Library
    from explorer.ui.main_window import MainWindow

    dst = tmp_path / "lib"
    shutil.copytree(indexed_sample.dir, dst)
    lib = Library(dst, loader.settings.__class__(library=str(dst)), loader=loader)
    win = MainWindow(lib.settings, library=lib, qsettings=QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat),
                     gallery=str(sample_gallery / "motorcycle"))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.sidebar.gallery_model.rowCount() == 2, timeout=60_000)
    # thumbnails of the visible grid cells arrive and land in <library>/thumbnails
    qtbot.waitUntil(lambda: win.thumbs.get(win.sidebar.gallery_model.path(0)) is not None, timeout=60_000)
    assert list((dst / "thumbnails").rglob("*.jpg"))
    row = [win.sidebar.gallery_model.path(r) for r in range(2)].index(str(sample_gallery / "motorcycle" / "motorcycle_left.jpg"))
    mime = win.sidebar.gallery_model.mimeData([win.sidebar.gallery_model.index(row)])
    zone = win.search_page.drop_zone
    pos = QPointF(zone.width() / 2, zone.height() / 2)
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    zone.dragEnterEvent(enter)
    assert enter.isAccepted()
    with qtbot.waitSignal(win.search_page.queryFinished, timeout=60_000):
        zone.dropEvent(QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    assert os.path.basename(win.search_page.results.columns["image"].names()[0]) == "motorcycle_right.jpg"
