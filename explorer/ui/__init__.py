"""PySide6 desktop UI of Retrieval Explorer.

Layout (after napari: item models and views apart, a small worker layer for everything slow,
actions declared outside the window):

- ``main_window``  builds the parts, wires their signals, holds menus and window state
- ``context``      ``AppContext`` (session, task runner, ``Notifier``): what pages and dialogs get
- ``gallery``      ``GallerySidebar``: galleries and places tree with index counts, the image grid
- ``search_page``  ``SearchPage``: owns the query, its pool, searcher and sequence guard; the results
- ``indexing``     ``IndexingController``: the background indexing run, progress and cancel
- ``actions``      the menus and their actions
- ``demo``         the ``--demo`` flow (open the sample gallery, index when needed, sample query)
- ``session``      one Library + ModelLoader + Catalog + Searcher per window, shared by the workers
- ``workers``      QRunnable workers with signals, progress throttling, cancel events, error wrapping
- ``thumbnails``   disk thumbnail cache and an async LIFO thumbnail loader
- ``models``       Qt item models: gallery images, result hits
- ``delegates``    painted grid cells and result cards (no per-item widgets)
- ``widgets``      image view with detection boxes, the query drop zone, the error banner
- ``results``      the side-by-side result columns
- ``detail``       the detail dialog with the editable caption
- ``evaluation``   the evaluation panel (PR curves, metrics table, exports)
- ``settings_dialog`` model backends per role with availability, library location
- ``qtdeps``       the system libraries Qt's X11 plugin needs (checked before a window opens)
- ``app``          ``run_app(settings, gallery=None, demo=False)``

House rules: no SQL here (ask ``explorer.core.catalog``); a page owns its state; dialogs get a
context, never the window; errors and notices go through the context's ``Notifier``.
"""
