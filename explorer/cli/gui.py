"""``explorer gui``: open the desktop app. Its options are the GUI's only parser: ``main.py``
(and ``./run.sh``) forward to this command. The only CLI module that reaches into ``explorer.ui``
(imported when the command runs, so the rest of the CLI never loads Qt)."""

from __future__ import annotations

from .common import add_library_and_model_options, settings_from


def cmd_gui(args) -> int:
    from ..ui.app import run_app

    return run_app(settings_from(args), gallery=args.gallery, demo=args.demo)


def add_gui(sub) -> None:
    s = sub.add_parser("gui", help="open the desktop app")
    add_library_and_model_options(s)
    s.add_argument("--gallery", metavar="FOLDER", help="gallery folder to open")
    s.add_argument("--demo", action="store_true", help="open the sample gallery, indexing it first if needed")
    s.set_defaults(func=cmd_gui)
