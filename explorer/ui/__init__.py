"""PySide6 desktop UI of Retrieval Explorer.

Layout (after napari: item models and views apart, a small worker layer for everything slow):

- ``workers``      QRunnable workers with signals, progress throttling, cancel events, error wrapping
- ``session``      one Library + ModelLoader + Searcher per window, shared by the workers
- ``thumbnails``   disk thumbnail cache and an async LIFO thumbnail loader
- ``models``       Qt item models: gallery images, result hits, folders with index status
- ``delegates``    painted grid cells and result cards (no per-item widgets)
- ``widgets``      image view with detection boxes, the query drop zone, the error banner
- ``results``      the side-by-side result columns
- ``detail``       the detail dialog with the editable caption
- ``evaluation``   the evaluation panel (PR curves, metrics table, exports)
- ``settings_dialog`` model backends per role with availability, library location
- ``main_window``  the window that wires it all
- ``app``          ``run_app(settings, gallery=None, demo=False)``
"""
