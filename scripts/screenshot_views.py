"""Screenshots of the gallery-wide views: per-query table, embedding map, duplicates dialog.

    xvfb-run -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_views.py [--library DIR --gallery DIR]

By default uses the private library and sample gallery of ``scripts/screenshot.py``
(build/screenshot, indexed on first run by that script or by ``explorer index``).
Writes resources/views-per-query.png, views-map.png and views-duplicates.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def save(widget, out: Path, exact: bool = False) -> None:
    """PNG of a widget; a 256-colour palette keeps it small unless ``exact`` (the map's point colours)."""
    from PIL import Image

    img = widget.grab().toImage()
    tmp = out.with_suffix(".raw.png")
    img.save(str(tmp), "PNG")
    with Image.open(tmp) as im:
        if exact:  # octree keeps the few saturated point colours that median cut merges into the photos'
            im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, optimize=True)
        else:
            im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    tmp.unlink()
    print(f"saved {out} ({out.stat().st_size // 1024} KB, {img.width()}x{img.height()})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", default=str(ROOT / "build" / "screenshot" / "library"))
    ap.add_argument("--gallery", default=str(ROOT / "build" / "screenshot" / "sample-gallery"))
    ap.add_argument("--out-dir", default=str(ROOT / "resources"))
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()

    import numpy as np
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from explorer.core.modes import CAPTION, FUSED, IMAGE
    from explorer.core.config import Settings
    from explorer.core.samples import make_sample_gallery
    from explorer.ui.app import make_app, tune_threads_for_gui
    from explorer.ui.main_window import MainWindow

    out_dir = Path(args.out_dir)
    work = Path(args.library).parent
    os.environ.setdefault("EXPLORER_CONFIG", str(work / "config.json"))
    gallery = make_sample_gallery(args.gallery)
    settings = Settings(library=args.library)
    tune_threads_for_gui()
    app = make_app()
    qs = QSettings(str(work / "ui-views.ini"), QSettings.Format.IniFormat)
    qs.clear()
    win = MainWindow(settings, qsettings=qs, gallery=str(gallery))
    win.resize(1480, 920)
    win.show()

    def spin(cond, timeout=args.timeout):
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"timed out; last error: {win.notify.last_error}")

    def settle(seconds=3.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            app.processEvents()
            time.sleep(0.02)

    # index the gallery when needed and let the models warm up: the demo flow does both
    done = {"query": False}
    win.search_page.queryFinished.connect(lambda _r: done.__setitem__("query", True))
    win.start_demo(str(gallery))
    spin(lambda: done["query"])

    # 1. per-query table: caption-only against image-only (fused ties image-only on every query of this small set)
    pq = win.per_query_panel
    win.tabs.setCurrentWidget(win.eval_panel)
    win.eval_panel.start(f"folders:{gallery}", modes=(IMAGE, FUSED, CAPTION))
    spin(lambda: pq.comparison is not None and bool(pq.captions))
    pq.set_pair(IMAGE, CAPTION)
    win.eval_panel.sections.setSizes([330, 470])
    settle(4)
    win.banner.hide()
    save(win, out_dir / "views-per-query.png")

    # 2. embedding map, coloured by label, one point hovered, a lasso selection in the grid
    mp = win.map_panel
    win.tabs.setCurrentWidget(mp)
    got = {"m": None}
    mp.mapReady.connect(lambda m: got.__setitem__("m", m))
    mp.compute(IMAGE, method="pca")
    spin(lambda: got["m"] is not None)
    m = got["m"]
    settle(1)
    coffee = np.flatnonzero(np.array(m.labels) == "coffee")
    x0, y0 = m.xy[coffee].min(0)
    x1, y1 = m.xy[coffee].max(0)
    pad = 0.15 * max(x1 - x0, y1 - y0, 1e-3)
    mp.lasso_select([(x0 - pad, y0 - pad), (x1 + pad, y0 - pad), (x1 + pad, y1 + pad), (x0 - pad, y1 + pad)])
    cat = int(np.flatnonzero(np.array(m.labels) == "cat")[0])
    mp.hover_at(float(m.xy[cat, 0]), float(m.xy[cat, 1]))
    settle(3)
    mp.hover_at(float(m.xy[cat, 0]), float(m.xy[cat, 1]))  # again, now that its thumbnail is loaded
    settle(1)
    win.banner.hide()
    save(win, out_dir / "views-map.png", exact=True)

    # 3. duplicates dialog
    dlg = win.open_duplicates()
    dlg.resize(760, 640)
    rep = {"r": None}
    dlg.reportReady.connect(lambda r: rep.__setitem__("r", r))
    dlg.start()
    spin(lambda: rep["r"] is not None)
    settle(4)
    dlg.set_report(rep["r"])  # icons for thumbnails that arrived meanwhile
    settle(1)
    save(dlg, out_dir / "views-duplicates.png")
    dlg.close()
    win.close()
    QApplication.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
