"""The ``--demo`` flow: open the sample gallery, index it when the library lacks some of its
images, then drop a sample query. Wiring only: it asks the window's sidebar, indexing
controller and search page, and counts the gallery's images with the indexer's own scanner."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt

SAMPLE_QUERY = ("coffee", "coffee.jpg")


def count_images(folder: str) -> int:
    """How many image files the indexer would find under ``folder``."""
    from ..core.pipeline import scan

    return len(scan([os.fsencode(folder)]).files)


def start_demo(win, gallery: str) -> None:
    win.sidebar.open_gallery(gallery)
    sample = os.path.join(gallery, *SAMPLE_QUERY)
    ctx = win.ctx

    def run_sample():
        if os.path.isfile(sample):
            win.search_page.query_image(sample)

    session = ctx.session
    if session is None:
        return

    def needs_index():
        ok, bad = session.folder_counts(gallery)
        return ok + bad < count_images(gallery)

    def decided(need):
        if need:
            win.index_folder(gallery, then=run_sample)
        elif ctx.warm:
            run_sample()
        else:
            ctx.warmedUp.connect(run_sample, Qt.ConnectionType.SingleShotConnection)

    ctx.tasks.start(needs_index, on_result=decided, on_error=ctx.notify.error, name="demo check")


__all__ = ["start_demo", "count_images", "SAMPLE_QUERY"]
