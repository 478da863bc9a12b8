"""The ``explorer`` command line: every core capability, headless.

This package assembles the parser and holds the entry point (``main``; the ``explorer`` console
script and ``python -m explorer.cli``). Each subcommand is a thin shell over ``explorer.core``
and lives with its group:

- ``common``: shared options, settings, opening a library, exit codes, progress, errors
- ``models``: ``models`` (and ``models fetch``)
- ``indexing``: ``index``, ``check``, ``whiten``, ``sample-gallery``
- ``gui``: ``gui`` (``main.py`` and ``./run.sh`` forward here; the only door to ``explorer.ui``)
- ``search``: ``search``, ``caption``
- ``evaluation``: ``eval``, ``import-gt``, ``train-fusion``
- ``views``: ``duplicates``, ``map``

Command modules import ``common`` and never this package (no import cycle). User errors
(``ExplorerError``) and storage failures print one line and exit with status 2; nothing here
imports Qt except ``gui`` when it runs.
"""

from __future__ import annotations

import argparse

from . import evaluation, gui, indexing, models, search, views
from .common import (EXIT_CANCELLED, EXIT_FAILURES, EXIT_OK, EXIT_USAGE, ProgressBar, add_library_option, add_model_options,
                     open_library, run_command, settings_from, storage_error)
from .indexing import parse_concurrency

#: the subcommands, in the order ``explorer --help`` lists them
COMMANDS = (
    models.add_models,
    indexing.add_index,
    indexing.add_check,
    indexing.add_whiten,
    indexing.add_sample_gallery,
    gui.add_gui,
    evaluation.add_train_fusion,
    search.add_caption,
    evaluation.add_import_gt,
    evaluation.add_eval,
    search.add_search,
    views.add_duplicates,
    views.add_map,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explorer", description="Retrieval Explorer: image-only vs caption-fused retrieval on your own images.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks) to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args)


__all__ = ["main", "build_parser", "COMMANDS", "settings_from", "open_library", "add_library_option", "add_model_options",
           "parse_concurrency", "storage_error", "ProgressBar", "EXIT_OK", "EXIT_FAILURES", "EXIT_USAGE", "EXIT_CANCELLED"]
