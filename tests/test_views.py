"""Gallery-wide views: duplicates, the embedding map, per-query comparison (core, CLI and pytest-qt UI).

The UI tests run the real window on the sample gallery indexed with the real offline models.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from explorer.core.duplicates import DEFAULT_THRESHOLD, find_duplicates, group_pairs, near_duplicate_pairs
from explorer.core.evaluation.metrics import evaluate_scores
from explorer.core.index import VectorIndex
from explorer.core.per_query import compare_queries
from explorer.core.projection import gallery_map, kmeans, pca

QUERY_TIMEOUT = 60_000
VARIANTS = ("crop", "mirror", "dim")


def family(path: str) -> str:
    """The photo a sample-gallery file was made from (motorcycle_left/right are two photos)."""
    stem = Path(path).stem
    for v in VARIANTS:
        stem = stem.removesuffix(f"_{v}")
    return stem


# -- core ---------------------------------------------------------------------------------------

def test_near_duplicates_match_brute_force_on_planted_pairs(tmp_path):
    rng = np.random.default_rng(3)
    n, d = 1500, 64
    X = rng.normal(size=(n, d)).astype(np.float32)
    # plant chains of near copies: i -> i + 1 -> i + 2 for a few i
    for i in range(0, 300, 30):
        X[i + 1] = X[i] + 0.15 * rng.normal(size=d)
        X[i + 2] = X[i + 1] + 0.15 * rng.normal(size=d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    vi = VectorIndex(tmp_path, "t", d)
    vi.upsert(ids, X)
    t = 0.9
    a, b, sim = near_duplicate_pairs(vi, ids, t, k=10)
    got = group_pairs(ids, a, b, sim)
    S = X @ X.T
    np.fill_diagonal(S, -1)
    ii, jj = np.nonzero(np.triu(S >= t))
    want = group_pairs(ids, ids[ii], ids[jj], S[ii, jj])
    assert [m for m, _ in got] == [m for m, _ in want]
    assert len(got) == 10 and all(len(m) == 3 for m, _ in got)


def test_sample_gallery_variants_are_grouped_with_their_originals(indexed_sample):
    rep = find_duplicates(indexed_sample, threshold=DEFAULT_THRESHOLD)
    groups = [set(g.paths) for g in rep.groups]
    catalog = [p for _, p, _, _ in indexed_sample.store.image_catalog()]
    originals = [p for p in catalog if Path(p).stem == family(p) and "motorcycle" not in p]
    assert len(originals) == 12
    for orig in originals:
        mine = [g for g in groups if orig in g]
        assert len(mine) == 1, f"{orig} is in no duplicate group"
        expected = {str(Path(orig).with_name(f"{family(orig)}_{v}.jpg")) for v in VARIANTS} | {orig}
        assert expected <= mine[0]
    # and no group mixes different photos (the two motorcycle photos show the same motorcycle)
    for g in groups:
        fams = {family(p) for p in g}
        assert len(fams) == 1 or fams == {"motorcycle_left", "motorcycle_right"}, fams
    assert len(rep.exclusions()) == sum(len(g) - 1 for g in groups)


def test_exact_duplicates_and_json_cli(library_copy, tmp_path, sample_gallery, capsys):
    from explorer.cli import main
    from explorer.core.pipeline import Indexer

    extra = tmp_path / "copies"
    extra.mkdir()
    shutil.copy(sample_gallery / "coffee" / "coffee.jpg", extra / "coffee-again.jpg")
    assert Indexer(library_copy).run([extra]).ok
    rep = find_duplicates(library_copy, near=False)
    assert [(g.kind, sorted(os.path.basename(p) for p in g.paths)) for g in rep.groups] == [("exact", ["coffee-again.jpg", "coffee.jpg"])]
    assert main(["duplicates", "--library", str(library_copy.dir), "--exact-only", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "retrieval-explorer/duplicates/v1" and out["n_groups"] == 1 and out["n_excluded"] == 1
    assert main(["duplicates", "--library", str(library_copy.dir), "--threshold", "1.5"]) == 2


def test_first_relevant_rank_matches_a_stable_sort():
    rng = np.random.default_rng(1)
    for _ in range(30):
        S = rng.integers(0, 6, (7, 40)).astype(np.float32)  # many ties
        R = rng.random((7, 40)) < 0.15
        I = rng.random((7, 40)) < 0.1
        m = evaluate_scores(S, R, I)
        for q in range(7):
            idx = np.flatnonzero(~I[q])
            order = idx[np.lexsort((idx, -S[q, idx]))]
            rel = R[q, order]
            assert m.first_relevant_rank[q] == (int(np.argmax(rel)) + 1 if rel.any() else -1)


def test_per_query_comparison_matches_the_sign_test_and_exports(indexed_sample, sample_gallery, tmp_path):
    from explorer.core.evaluate import run_evaluation

    report = run_evaluation(indexed_sample, f"folders:{sample_gallery}", modes=("image", "caption"))
    cmp = compare_queries(report, "image", "caption", indexed_sample.store.active_captions())
    c = report.comparisons["image_vs_caption"]
    s = cmp.summary()
    assert (s["better"]["count"], s["worse"]["count"], s["tied"]["count"]) == (c["wins"], c["losses"], c["ties"])
    assert s["worse"]["count"] > 0  # caption-only loses somewhere on this gallery
    worse = [r.weight for r in cmp.rows if r.group == "worse"]
    assert math.isclose(s["worse"]["mean_weight"], float(np.mean(worse)))
    assert all(r.caption for r in cmp.rows) and all(r.first_a >= 1 for r in cmp.rows)
    diffs = [r.diff for r in cmp.sorted_rows("diff")]
    assert diffs == sorted(diffs)
    out = cmp.write_csv(tmp_path / "pq.csv")
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == len(report.query_paths) and "ap_caption" in rows[0] and "first_relevant_image" in rows[0]


def test_exclusions_leave_duplicates_out_of_evaluation(indexed_sample, sample_gallery):
    from explorer.core.evaluate import run_evaluation

    rep = find_duplicates(indexed_sample)
    report = run_evaluation(indexed_sample, f"folders:{sample_gallery}", modes=("image", "fused"), exclude_ids=rep.exclusions())
    assert report.meta["n_queries"] == 50 - len(rep.exclusions())
    assert any("excluded" in w for w in report.warnings)
    assert "no query with relevant items" in "\n".join(report.summary_lines())


def test_pca_matches_svd_and_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 20)) * np.linspace(5, 0.1, 20)
    Y = pca(X, 2)
    Xc = X - X.mean(0)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    for j in range(2):
        assert abs(np.corrcoef(Y[:, j], U[:, j] * S[j])[0, 1]) > 0.9999
    blobs = np.concatenate([rng.normal(c, 0.1, size=(100, 3)) for c in (0, 5, 10)])
    lab = kmeans(blobs, 3)
    assert sorted(np.bincount(lab).tolist()) == [100, 100, 100]


def test_gallery_map_is_cached_until_the_gallery_changes(library_copy):
    m1 = gallery_map(library_copy, "image", method="pca")
    assert len(m1) == 50 and m1.xy.shape == (50, 2) and not m1.cached
    assert set(m1.labels) == {"astronaut", "cat", "coffee", "motorcycle", "rocket", "galaxy", "cells", "retina", "brick",
                              "grass", "gravel", "coins", "cameraman"}
    m2 = gallery_map(library_copy, "image", method="pca")
    assert m2.cached and np.allclose(m1.xy, m2.xy)
    fused = gallery_map(library_copy, "fused", method="pca")
    assert not fused.cached and not np.allclose(fused.xy, m1.xy)
    from explorer.core.edits import set_user_caption

    set_user_caption(library_copy, int(m1.ids[0]), "a completely different caption")
    assert not gallery_map(library_copy, "fused", method="pca").cached


# -- UI -----------------------------------------------------------------------------------------

@pytest.fixture
def window(qtbot, library_copy, tmp_path, sample_gallery):
    pytest.importorskip("pyqtgraph")
    from PySide6.QtCore import QSettings

    from explorer.ui.main_window import MainWindow

    qs = QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat)
    win = MainWindow(library_copy.settings, library=library_copy, qsettings=qs, gallery=str(sample_gallery))
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitUntil(lambda: win.ctx.warm, timeout=QUERY_TIMEOUT)
    return win


def test_per_query_table_sorts_and_a_row_opens_the_query_with_both_modes(qtbot, window, sample_gallery):
    from PySide6.QtCore import Qt

    panel = window.per_query_panel
    window.tabs.setCurrentWidget(window.eval_panel)
    with qtbot.waitSignal(panel.comparisonChanged, timeout=QUERY_TIMEOUT):
        window.eval_panel.start(f"folders:{sample_gallery}", modes=("image", "caption"))
    qtbot.waitUntil(lambda: bool(panel.captions), timeout=QUERY_TIMEOUT)
    n = panel.proxy.rowCount()
    assert n == 50
    panel.table.sortByColumn(6, Qt.SortOrder.DescendingOrder)  # ΔAP, best first
    diffs = [float(panel.proxy.index(r, 6).data()) for r in range(n)]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > diffs[-1]
    panel.table.sortByColumn(3, Qt.SortOrder.AscendingOrder)  # caption weight
    weights = [float(panel.proxy.index(r, 3).data()) for r in range(n)]
    assert weights == sorted(weights)
    assert all(lab.text() for lab in panel.chips.values())
    # clicking the worst row opens it in the Search tab with image and caption columns
    panel.table.sortByColumn(6, Qt.SortOrder.AscendingOrder)
    path = panel.path_at(0)
    rect = panel.table.visualRect(panel.proxy.index(0, 1))
    with qtbot.waitSignal(window.search_page.queryFinished, timeout=QUERY_TIMEOUT):
        qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.tabs.currentWidget() is window.search_page
    assert window.search_page.current_spec.image == path
    cols = window.search_page.results.columns
    assert cols["image"].isVisible() and cols["caption"].isVisible()
    assert cols["image"].model.rowCount() > 0 and cols["caption"].model.rowCount() > 0


def test_map_renders_a_click_runs_a_query_and_a_lasso_selects(qtbot, window):
    from PySide6.QtCore import QPoint, Qt

    panel = window.map_panel
    window.tabs.setCurrentWidget(panel)
    with qtbot.waitSignal(panel.mapReady, timeout=QUERY_TIMEOUT):
        panel.compute("image", method="pca")
    m = panel.map
    assert len(m) == 50
    assert sum(len(it.data) for it in panel._items) == 50  # every point drawn, once
    qtbot.wait(50)
    img = panel.plot.grab().toImage()
    # the point colours are on screen
    row = int(np.flatnonzero(np.array(m.labels) == "coffee")[0])
    pos = panel.view_pos_of(row)
    colours = {img.pixelColor(pos.x() + dx, pos.y() + dy).name() for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    assert colours - {"#ffffff"}, "no point drawn where the coffee photo is"
    # hover shows the thumbnail card with the caption
    assert panel.hover_at(float(m.xy[row, 0]), float(m.xy[row, 1])) == row
    assert panel.card.isVisible() and os.path.basename(m.paths[row]) in panel.card_text.text()
    # a click on a point runs that image as the query
    asked = []
    panel.queryRequested.connect(asked.append)
    with qtbot.waitSignal(window.search_page.queryFinished, timeout=QUERY_TIMEOUT):
        qtbot.mouseClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)
        assert asked == [m.paths[row]], (asked, window.notify.last_error)
    assert window.search_page.current_spec.image == m.paths[row]
    # lasso: drag a polygon around the coffee family
    window.tabs.setCurrentWidget(panel)
    panel.lasso_check.setChecked(True)
    coffee = np.flatnonzero(np.array(m.labels) == "coffee")
    pts = [panel.view_pos_of(int(i)) for i in coffee]
    x0, x1 = min(p.x() for p in pts) - 6, max(p.x() for p in pts) + 6
    y0, y1 = min(p.y() for p in pts) - 6, max(p.y() for p in pts) + 6
    vp = panel.plot.viewport()
    corners = [QPoint(int(x0), int(y0)), QPoint(int(x1), int(y0)), QPoint(int(x1), int(y1)), QPoint(int(x0), int(y1))]
    with qtbot.waitSignal(panel.selectionChanged, timeout=5000) as sig:
        qtbot.mousePress(vp, Qt.MouseButton.LeftButton, pos=corners[0])
        for c in corners[1:] + [corners[0]]:
            for t in np.linspace(0, 1, 6)[1:]:
                qtbot.mouseMove(vp, pos=c)
                qtbot.wait(5)
        qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, pos=corners[0])
    ids, paths = sig.args
    # exactly the points inside the dragged rectangle (in pixels) are selected
    inside = []
    for i in range(len(m)):
        p = panel.view_pos_of(i)
        if x0 < p.x() < x1 and y0 < p.y() < y1:
            inside.append(int(m.ids[i]))
    assert set(int(m.ids[i]) for i in coffee) <= set(ids)
    assert sorted(ids) == sorted(inside)
    assert panel.sel_model.rowCount() == len(ids)
    # recolouring keeps every point
    panel.colour_combo.setCurrentText("caption weight")
    assert sum(len(it.data) for it in panel._items) == 50


def test_duplicates_dialog_groups_and_excludes_from_evaluation(qtbot, window):
    dlg = window.open_duplicates()
    with qtbot.waitSignal(dlg.reportReady, timeout=QUERY_TIMEOUT) as sig:
        dlg.start(DEFAULT_THRESHOLD)
    rep = sig.args[0]
    assert dlg.tree.topLevelItemCount() == len(rep.groups) >= 12
    dlg.exclude_check.setChecked(True)
    assert window.eval_panel.exclude_ids == rep.exclusions()
    dlg.exclude_check.setChecked(False)
    assert window.eval_panel.exclude_ids == set()
    dlg.close()


def test_big_maps_draw_as_one_raster_and_zoom_back_to_points(qtbot, tmp_path):
    """Level of detail: above LOD_POINTS points in view the map is one raster image; zoomed in, scatter points."""
    pytest.importorskip("pyqtgraph")
    from PySide6.QtGui import QColor

    from explorer.core.projection import GalleryMap
    from explorer.ui.embedding_map import LOD_POINTS, EmbeddingMapPanel, rasterize
    from explorer.ui.thumbnails import ThumbnailLoader
    from explorer.ui.view_context import ViewContext
    from explorer.ui.workers import TaskRunner

    img = rasterize(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32), [(QColor("#ff0000"), np.array([0])), (QColor("#0000ff"), np.array([1]))],
                    (-0.5, -0.5, 1.5, 1.5), 20, 20)
    assert tuple(img[5, 5]) == (255, 0, 0, 255) and tuple(img[15, 15]) == (0, 0, 255, 255) and img[10, 10, 3] == 0
    errors = []
    ctx = ViewContext(TaskRunner(), ThumbnailLoader(tmp_path / "thumbs"), lambda: None, errors.append)
    panel = EmbeddingMapPanel(ctx)
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    n = 20 * LOD_POINTS
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(n, 2)).astype(np.float32)
    m = GalleryMap("image", "pca", np.arange(n, dtype=np.int64), xy, [f"/x/{i}.jpg" for i in range(n)], ["a", "b"] * (n // 2),
                   ["generated"] * n, [""] * n, rng.random(n).astype(np.float32), np.zeros(n, np.int64))
    panel.set_map(m)
    assert panel.lod_active and panel.raster.isVisible() and not panel._items
    panel.vb.setRange(xRange=(-0.05, 0.05), yRange=(-0.05, 0.05), padding=0)
    panel.update_lod()
    assert not panel.lod_active and not panel.raster.isVisible()
    shown = sum(len(it.data) for it in panel._items)
    inside = np.count_nonzero((np.abs(xy[:, 0]) <= 0.05) & (np.abs(xy[:, 1]) <= 0.05))
    assert 0 < inside <= shown < n
    # hover and click still find points through the raster (nearest point, not the items)
    j = int(np.flatnonzero((np.abs(xy[:, 0]) <= 0.05) & (np.abs(xy[:, 1]) <= 0.05))[0])
    assert panel.nearest(float(xy[j, 0]), float(xy[j, 1])) == j
    panel.vb.setRange(xRange=(-4, 4), yRange=(-4, 4), padding=0)
    panel.update_lod()
    assert panel.lod_active and panel.nearest(float(xy[j, 0]), float(xy[j, 1])) == j
    assert not errors


def test_eval_cli_per_query_csv(indexed_sample, sample_gallery, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "pq.csv"
    r = subprocess.run([sys.executable, "-m", "explorer", "eval", "--library", str(indexed_sample.dir), "--gt", f"folders:{sample_gallery}",
                        "--modes", "image,caption", "--quiet", "--per-query", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    import re

    sign = re.search(r"\((\d+) better, (\d+) worse, (\d+) tied\)", r.stdout)
    per_query = re.search(r"caption vs image, per query: better (\d+).*worse (\d+).*tied (\d+)", r.stdout)
    assert sign and per_query and sign.groups() == per_query.groups()  # the chips count what the sign test counts
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 50 and {"ap_image", "ap_caption", "first_relevant_caption", "caption_weight"} <= set(rows[0])
    assert [sum(r["group"] == g for r in rows) for g in ("better", "worse", "tied")] == [int(v) for v in sign.groups()]
    assert int(sign.group(2)) > 0
