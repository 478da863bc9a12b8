"""Retrieval Explorer desktop app: ``python main.py [--library DIR] [--gallery FOLDER] [--demo]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main.py", description="Retrieval Explorer: image-only vs caption-fused retrieval, side by side.")
    p.add_argument("--library", metavar="DIR", help="library folder (default: the last one opened, else $EXPLORER_LIBRARY or ~/.local/share/retrieval-explorer/library)")
    p.add_argument("--gallery", metavar="FOLDER", help="gallery folder to open")
    p.add_argument("--demo", action="store_true", help="open the sample gallery, index it if needed, and run a sample query")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from explorer.core.config import Settings
    from explorer.core.errors import ExplorerError

    try:
        settings = Settings.load({"library": args.library})
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from explorer.ui.app import run_app

    return run_app(settings, gallery=args.gallery, demo=args.demo)


if __name__ == "__main__":
    sys.exit(main())
