"""The window's parts on their own (no models needed), the catalog's path normalisation, the house
rules that keep the UI thin, and the searcher refresh that lets newly indexed images rank in the
learned column."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402

from explorer.core import fusion  # noqa: E402
from explorer.core.config import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUERY_TIMEOUT = 60_000


@pytest.fixture
def ctx(qtbot, tmp_path):
    from explorer.ui.context import AppContext

    c = AppContext(Settings(library=str(tmp_path / "lib")))
    yield c
    c.tasks.shutdown(10_000)


@pytest.fixture
def thumbs(tmp_path):
    from explorer.ui.thumbnails import ThumbnailLoader

    t = ThumbnailLoader(tmp_path / "thumbs", threads=1)
    yield t
    t.stop()


def test_alpha_label_says_what_the_slider_and_the_fused_column_say(qtbot, ctx, thumbs):
    from explorer.ui.search_page import SearchPage

    page = SearchPage(ctx, thumbs)
    qtbot.addWidget(page)
    expect = f"{fusion.DEFAULT_ALPHA:.2f}"
    assert page.alpha_slider.value() == round(fusion.DEFAULT_ALPHA * 100)
    assert page.alpha_value.text() == expect
    assert page.results.columns["fused"].header.text() == f"Caption-fused (α = {expect})"
    page.alpha_slider.setValue(37)
    assert page.alpha_value.text() == "0.37" and page.alpha() == 0.37
    assert page.results.columns["fused"].header.text() == "Caption-fused (α = 0.37)"


def test_folder_tree_starts_at_the_users_galleries_and_pictures_not_the_root(qtbot, ctx, thumbs, tmp_path, monkeypatch):
    from explorer.ui.gallery import GALLERIES_KEY, GallerySidebar

    home = tmp_path / "home"
    (home / "Pictures" / "holidays").mkdir(parents=True)
    (home / ".cache" / "x").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    shop = tmp_path / "shop"
    (shop / "bags").mkdir(parents=True)
    qs = QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat)
    qs.setValue(GALLERIES_KEY, [str(shop), str(tmp_path / "gone")])  # a gallery that no longer exists is dropped
    side = GallerySidebar(ctx, thumbs, qs)
    qtbot.addWidget(side)
    tree = side.tree
    assert tree.roots() == [str(shop), str(home / "Pictures"), str(home)]
    assert "/" not in tree.roots()
    assert [tree.topLevelItem(i).text(0) for i in range(3)] == ["shop", "Pictures", "Home"]
    assert side.add_button.text() == "Add gallery folder…"
    # folders are listed lazily, hidden ones skipped
    home_item = tree.topLevelItem(2)
    home_item.setExpanded(True)
    assert [home_item.child(j).text(0) for j in range(home_item.childCount())] == ["Pictures"]
    # a folder under a place is revealed there, not added
    side.open_gallery(str(home / "Pictures" / "holidays"))
    assert tree.current_folder() == str(home / "Pictures" / "holidays") == side.current_folder
    assert tree.roots("gallery") == [str(shop)]
    # a folder outside every entry becomes a gallery, remembered for the next start
    street = tmp_path / "street"
    street.mkdir()
    side.open_gallery(str(street))
    assert tree.roots("gallery") == [str(shop), str(street)] and tree.current_folder() == str(street)
    assert GallerySidebar(ctx, thumbs, qs).tree.roots("gallery") == [str(shop), str(street)]
    side.remove_gallery(str(shop))
    assert side.galleries() == [str(street)]
    # index counts per folder come from the catalog's folder status
    tree.set_status({str(shop / "bags"): (3, 1), str(shop): (3, 1)})
    side.add_gallery(str(shop))
    item = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount()) if tree.topLevelItem(i).text(0) == "shop")
    assert item.text(1) == "3  ·  1 ✗"


def test_dialogs_get_a_context_and_errors_go_through_the_notifier(qtbot, ctx):
    from explorer.ui.settings_dialog import SettingsDialog

    got = []
    ctx.notify.errorShown.connect(got.append)
    assert ctx.require_session() is None
    assert got == ["no library is open: choose one in Settings"] == [ctx.notify.last_error]
    d = SettingsDialog(ctx, ctx.settings)  # no window anywhere
    qtbot.addWidget(d)
    qtbot.waitUntil(lambda: d.probed, timeout=QUERY_TIMEOUT)


def test_the_ui_speaks_no_sql_and_the_window_stays_small():
    ui = ROOT / "explorer" / "ui"
    offenders = [p.name for p in ui.glob("*.py") if "sqlalchemy" in p.read_text()]
    assert offenders == []
    assert len((ui / "main_window.py").read_text().splitlines()) <= 300


def test_main_py_forwards_to_the_cli_gui_command():
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "explorer gui" in out.stdout and "--demo" in out.stdout and "--library" in out.stdout


def test_catalog_maps_any_spelling_of_a_path_to_its_image_id(indexed_sample, sample_gallery, tmp_path, monkeypatch):
    from explorer.core.catalog import Catalog, path_key

    cat = Catalog(indexed_sample.store)
    real = sample_gallery / "cat" / "chelsea.jpg"
    iid = cat.image_id(real)
    assert iid is not None
    link = tmp_path / "link"
    link.symlink_to(sample_gallery)
    monkeypatch.chdir(sample_gallery)
    assert cat.image_id(link / "cat" / "chelsea.jpg") == iid
    assert cat.image_id("cat/chelsea.jpg") == iid
    assert cat.image_id(os.fsencode(real)) == iid
    assert cat.image_id(tmp_path / "nope.jpg") is None
    assert cat.image_ids([real, link / "cat" / "chelsea.jpg", tmp_path / "nope.jpg"]) == {path_key(real): iid}
    assert cat.image_info(iid).path == str(real)
    ok, bad = cat.folder_counts(str(link / "cat"))
    assert ok == len(cat.gallery_items(str(sample_gallery / "cat"))[0]) > 0 and bad == 0


def test_images_indexed_after_a_head_is_loaded_rank_in_the_learned_column(qtbot, library_copy, sample_gallery, tmp_path):
    """Session.index_folder refreshes the searcher: the learned column sees the new images
    (before, the searcher kept the gallery embedded when the head was loaded, and new images
    scored -inf there)."""
    from explorer.core.learned import train_fusion
    from explorer.ui.main_window import MainWindow

    lib = library_copy
    head = tmp_path / "fusion-test.safetensors"
    train_fusion(lib, f"folders:{sample_gallery}", head, epochs=1, threads=1)
    win = MainWindow(lib.settings, library=lib, qsettings=QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat),
                     gallery=str(sample_gallery))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.ctx.warm, timeout=QUERY_TIMEOUT)
    page = win.search_page
    page.load_head(str(head))
    qtbot.waitUntil(lambda: page.learned_check.isChecked(), timeout=QUERY_TIMEOUT)

    new = tmp_path / "new-photos"
    new.mkdir()
    # same pixels and same name, so the same caption too (file-name words lead the caption)
    shutil.copy(sample_gallery / "cat" / "chelsea.jpg", new / "chelsea.jpg")
    with qtbot.waitSignal(win.indexing.finished, timeout=180_000) as blocker:
        win.index_folder(str(new))
    assert blocker.args[0] is not None and blocker.args[0].indexed == 1, win.notify.last_error
    new_id = win.ctx.session.catalog.image_id(new / "chelsea.jpg")
    assert new_id is not None

    with qtbot.waitSignal(page.queryFinished, timeout=QUERY_TIMEOUT):
        page.query_image(str(sample_gallery / "cat" / "chelsea.jpg"))
    learned = page.result.modes["learned"]
    ids = [h.image_id for h in learned.hits]
    assert new_id in ids, [os.path.basename(h.path) for h in learned.hits]
    # the very same pixels and caption as the query: it ranks at the top of the learned column
    assert ids.index(new_id) < 3
    assert all(h.score > -1e9 for h in learned.hits)


def test_missing_xcb_libraries_name_their_debian_packages_and_stop_the_gui_with_one_line(monkeypatch):
    from explorer.core.errors import ExplorerError
    from explorer.ui import app, qtdeps

    assert qtdeps.debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert qtdeps.debian_package("libxcb-keysyms.so.1") == "libxcb-keysyms1"
    assert qtdeps.debian_package("libxcb-shape.so.0") == "libxcb-shape0"
    assert qtdeps.debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert qtdeps.uses_xcb({"QT_QPA_PLATFORM": "xcb"}) and not qtdeps.uses_xcb({"QT_QPA_PLATFORM": "offscreen"})
    assert not qtdeps.uses_xcb({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"})
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert qtdeps.missing_packages() == []  # tests and offscreen runs never need X11 libraries
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(qtdeps, "missing_libraries", lambda: ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"])
    msg = qtdeps.problem()
    assert msg.endswith("install them with: sudo apt-get install -y libxcb-icccm4 libxcb-keysyms1") and "\n" not in msg
    with pytest.raises(ExplorerError, match="libxcb-icccm4 libxcb-keysyms1"):
        app.run_app(Settings())
