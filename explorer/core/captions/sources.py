"""The one list of caption sources: their names, how far each is trusted, and how they combine.

Every caption stored in a library carries the name of the source it came from. This module is
the single home of those names (the store, fusion, the pipeline, search, the CLI and the UI
import them from here) and of the rule that turns an image's stored captions into the one
*active* caption that is embedded and fused:

- **person-written sources** (``USER_SOURCES``): an edit in the app, a sidecar text file, a
  captions file, ground truth, and embedded photo metadata (XMP/IPTC/EXIF/PNG text written by
  a person or their photo software). The most trusted one present is the active caption, and
  its fusion weight is 1 (``fusion.caption_weight``).
- **machine sources** (``MACHINE_SOURCES``): the captioner's output, the words of the file
  name (and optionally the folder name), and text read in the image (OCR). When no
  person-written caption exists they are *joined* into one caption, in this list's order
  (``"a photo of a dress; red summer dress"``); it keeps the label of its first part
  (``generated`` when the captioner ran) and gets the agreement-based weight, as generated
  text always did. Its confidence is the highest of its parts' confidences.

Some sources can be turned on or off (``SWITCHABLE``; setting ``caption_sources``, CLI flag
``--caption-sources``, Settings dialog). Turning one on or off re-embeds captions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import ExplorerError
from ..models.base import Caption


@dataclass(frozen=True)
class CaptionSource:
    name: str
    #: ``user`` (written by a person: weight 1) or ``machine`` (joined, agreement-based weight)
    kind: str
    #: words for people (CLI, UI)
    label: str
    #: True when a setting turns it on or off
    switchable: bool = False
    #: on when the user did not choose (switchable sources only)
    default_on: bool = False
    #: read again from the files on every indexing run (so it disappears when the file does)
    reread: bool = False


#: the source names, for code that names one source (everything else iterates ``SOURCES``)
USER_EDITED, SIDECAR, CAPTIONS_FILE, GROUND_TRUTH, METADATA = "user-edited", "sidecar", "captions-file", "ground-truth", "metadata"
GENERATED, FILENAME, FOLDER, OCR = "generated", "filename", "folder", "ocr"

#: Most trusted first. The active caption is the most trusted person-written one, else the
#: join of the machine sources present, in this order.
SOURCES: tuple[CaptionSource, ...] = (
    CaptionSource(USER_EDITED, "user", "edited in the app"),
    CaptionSource(SIDECAR, "user", "sidecar text file (photo.jpg.txt)", reread=True),
    CaptionSource(CAPTIONS_FILE, "user", "captions file (--captions)", reread=True),
    CaptionSource(GROUND_TRUTH, "user", "ground truth"),
    CaptionSource(METADATA, "user", "photo metadata (XMP, IPTC, EXIF, PNG text, XMP sidecar)",
                  switchable=True, default_on=True, reread=True),
    CaptionSource(GENERATED, "machine", "captioner"),
    CaptionSource(FILENAME, "machine", "file name words", switchable=True, default_on=True),
    CaptionSource(FOLDER, "machine", "folder name words", switchable=True, default_on=False),
    CaptionSource(OCR, "machine", "text in the image (OCR)", switchable=True, default_on=False),
)

BY_NAME = {s.name: s for s in SOURCES}
CAPTION_PRIORITY: tuple[str, ...] = tuple(s.name for s in SOURCES)
USER_SOURCES = frozenset(s.name for s in SOURCES if s.kind == "user")
MACHINE_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.kind == "machine")
SWITCHABLE: tuple[str, ...] = tuple(s.name for s in SOURCES if s.switchable)
DEFAULT_ENABLED: tuple[str, ...] = tuple(s.name for s in SOURCES if s.switchable and s.default_on)
#: person-written sources read from files on every run (the row goes when the file's text goes)
REREAD_USER_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.kind == "user" and s.reread)
#: machine sources besides the captioner, computed by explorer.core.captions.extract
EXTRA_SOURCES: tuple[str, ...] = tuple(s for s in MACHINE_SOURCES if s != GENERATED)
JOIN = "; "


def caption_rank(source: str) -> int:
    """Lower is more trusted; unknown sources rank last."""
    return CAPTION_PRIORITY.index(source) if source in CAPTION_PRIORITY else len(CAPTION_PRIORITY)


def is_user_source(source: str | None) -> bool:
    return source in USER_SOURCES


def parse_sources(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate a choice of switchable sources: ``"metadata,filename"``, a list, ``"none"`` or ``""``."""
    if value is None:
        return DEFAULT_ENABLED
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    items = [s for s in items if s and s != "none"]
    if "all" in items:
        return SWITCHABLE
    bad = [s for s in items if s not in SWITCHABLE]
    if bad:
        raise ExplorerError(f"unknown caption source(s) {bad}; choose from {', '.join(SWITCHABLE)} (or none, all)")
    return tuple(s for s in SWITCHABLE if s in items)


@dataclass(frozen=True)
class ComposedCaption(Caption):
    """The active caption with the parts it was made of: ``((source, text), ...)``."""

    parts: tuple[tuple[str, str], ...] = ()


def compose(captions: Mapping[str, Any] | Iterable[Any]) -> ComposedCaption | None:
    """The active caption of one image from its captions (``{source: caption}`` or a list of
    objects with ``source``, ``text``, ``model_id``, ``confidence``: ``Caption`` or ``CaptionRow``)."""
    items = list(captions.values()) if isinstance(captions, Mapping) else list(captions)
    items = [c for c in items if c is not None and (c.text or "").strip()]
    if not items:
        return None
    users = [c for c in items if c.source in USER_SOURCES]
    if users:
        best = min(users, key=lambda c: caption_rank(c.source))
        return ComposedCaption(best.text, best.source, best.model_id, float(best.confidence), ((best.source, best.text),))
    machine = sorted((c for c in items if c.source in MACHINE_SOURCES), key=lambda c: caption_rank(c.source))
    if not machine:  # only unknown sources: keep the old rule (the first one)
        c = items[0]
        return ComposedCaption(c.text, c.source, c.model_id, float(c.confidence), ((c.source, c.text),))
    first = machine[0]
    text = JOIN.join(c.text.strip() for c in machine)
    conf = max(float(c.confidence) for c in machine)
    return ComposedCaption(text, first.source, first.model_id, conf, tuple((c.source, c.text.strip()) for c in machine))
