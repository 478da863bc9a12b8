"""User-supplied captions from sidecar text files and captions files (they win over generated ones).

Two sources:
- a sidecar text file next to the image: ``photo.jpg.txt`` (UTF-8; first non-empty paragraph);
- a captions file given on the command line: a JSON mapping ``{"relative/or/abs/path.jpg": "caption"}``
  or COCO captions format (``images`` with ``id``/``file_name`` and ``annotations`` with
  ``image_id``/``caption``; several captions of one image are joined with " / ").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ExplorerError
from ..models.base import Caption
from .sources import CAPTIONS_FILE, SIDECAR

SIDECAR_SUFFIX = ".txt"
SIDECAR_MAX_BYTES = 64 * 1024


def sidecar_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.name + SIDECAR_SUFFIX)


def read_sidecar(image_path: Path) -> Caption | None:
    p = sidecar_path(image_path)
    try:
        if not p.is_file() or p.stat().st_size > SIDECAR_MAX_BYTES:
            return None
        text = p.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    text = text.split("\n\n")[0].replace("\n", " ").strip()
    return Caption(text, SIDECAR, "user", 1.0) if text else None


def _is_id(v) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


class CaptionsFile:
    """A user captions file, resolved to absolute paths."""

    def __init__(self, mapping: dict[str, str], origin: str):
        self.mapping = mapping
        self.origin = origin

    def get(self, image_path: Path) -> Caption | None:
        text = self.mapping.get(os.path.realpath(image_path))
        return Caption(text, CAPTIONS_FILE, "user", 1.0) if text else None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionsFile":
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExplorerError(f"captions file not found: {p}") from None
        except (OSError, ValueError) as e:
            raise ExplorerError(f"captions file {p} is not valid JSON: {e}") from None
        base = p.parent
        mapping: dict[str, list[str]] = {}

        def add(name: str, text: str, where: str) -> None:
            if not isinstance(name, str) or not isinstance(text, str):
                raise ExplorerError(f"captions file {p}: {where} needs a file name and a caption string")
            full = os.path.realpath(name if os.path.isabs(name) else base / name)
            mapping.setdefault(full, []).append(text.strip())

        if isinstance(data, dict) and "annotations" in data and "images" in data:
            if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
                raise ExplorerError(f"captions file {p}: COCO 'images' and 'annotations' must be lists")
            names = {}
            for i, im in enumerate(data["images"]):
                if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                    raise ExplorerError(f"captions file {p}: images[{i}] needs to be an object with 'id' and 'file_name'")
                if not _is_id(im["id"]):
                    raise ExplorerError(f"captions file {p}: images[{i}]: 'id' must be an integer or a string, got {im['id']!r}")
                names[im["id"]] = im["file_name"]
            for i, ann in enumerate(data["annotations"]):
                if not isinstance(ann, dict):
                    raise ExplorerError(f"captions file {p}: annotations[{i}] must be an object")
                if "caption" not in ann:
                    continue
                if not _is_id(ann.get("image_id")) or ann.get("image_id") not in names:
                    raise ExplorerError(f"captions file {p}: annotations[{i}] names unknown image_id {ann.get('image_id')!r}")
                add(names[ann["image_id"]], ann["caption"], f"annotations[{i}]")
        elif isinstance(data, dict):
            for k, v in data.items():
                add(k, v, f"entry {k!r}")
        else:
            raise ExplorerError(f"captions file {p}: expected a JSON object (path -> caption) or COCO captions")
        return cls({k: " / ".join(t for t in v if t) for k, v in mapping.items()}, str(p))
