"""Retrieval Explorer desktop app: ``python main.py [--library DIR] [--gallery FOLDER] [--demo]``.

The same as ``explorer gui ...``: this file forwards to the CLI's ``gui`` command (``explorer/cli/gui.py``), which owns
the options (``python main.py --help`` lists them). ``./run.sh`` runs ``main.py --demo``.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # -v is an option of the `explorer` command itself, not of its `gui` subcommand
    verbose = [a for a in argv if a in ("-v", "--verbose")]
    rest = [a for a in argv if a not in ("-v", "--verbose")]
    from explorer.cli import main as cli_main

    return cli_main(verbose + ["gui"] + rest)


if __name__ == "__main__":
    sys.exit(main())
