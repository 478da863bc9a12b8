"""The small context that the gallery-wide views (per-query table, embedding map, duplicates)
get instead of the window: a task runner, the thumbnail loader, the current session and a
way to show an error. Views talk back only through their own signals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .thumbnails import ThumbnailLoader
from .workers import TaskRunner


@dataclass
class ViewContext:
    tasks: TaskRunner
    thumbs: ThumbnailLoader
    session: Callable[[], object | None]  # -> the window's current Session (or None)
    show_error: Callable[[str], None]
