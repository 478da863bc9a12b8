"""Take the README screenshot: the window in --demo mode after a sample query.

    xvfb-run -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py [--out resources/screenshot.png]

Uses a private library and sample gallery under build/screenshot (indexed on first run), and a
private QSettings file, so the user's own state is never touched.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "resources" / "screenshot.png"))
    ap.add_argument("--work", default=str(ROOT / "build" / "screenshot"))
    ap.add_argument("--query", default="cat/chelsea.jpg", help="sample query, relative to the sample gallery")
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from explorer.core.config import Settings
    from explorer.core.samples import make_sample_gallery
    from explorer.ui.app import make_app, tune_threads_for_gui
    from explorer.ui.main_window import MainWindow

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["EXPLORER_CONFIG"] = str(work / "config.json")
    gallery = make_sample_gallery(work / "sample-gallery")
    settings = Settings(library=str(work / "library"))
    tune_threads_for_gui()
    app = make_app()
    qs = QSettings(str(work / "ui.ini"), QSettings.Format.IniFormat)
    qs.clear()
    win = MainWindow(settings, qsettings=qs, gallery=str(gallery))
    win.resize(1480, 920)
    win.show()

    def spin(cond, timeout):
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"timed out; last error: {win.notify.last_error}")

    done = {"query": False}
    win.search_page.queryFinished.connect(lambda _r: done.__setitem__("query", True))
    win.start_demo(str(gallery))  # indexes when needed, then drops the sample query
    spin(lambda: done["query"], args.timeout)
    query = str(gallery / args.query)
    if win.search_page.current_spec is None or win.search_page.current_spec.image != query:
        done["query"] = False
        win.search_page.query_image(query)
        spin(lambda: done["query"], args.timeout)
    win.search_page.alpha_slider.setValue(int(round(args.alpha * 100)))
    win.search_page.caption_check.setChecked(True)
    # let every thumbnail arrive
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4:
        app.processEvents()
        time.sleep(0.02)
    win.banner.hide()
    img = win.grab().toImage()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".raw.png")
    img.save(str(tmp), "PNG")
    from PIL import Image

    with Image.open(tmp) as im:  # a 256-colour palette keeps the README image small
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    tmp.unlink()
    print(f"saved {out} ({out.stat().st_size // 1024} KB, {img.width()}x{img.height()})")
    win.close()
    QApplication.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
