"""The one list of caption sources: their names, how far each is trusted, and how they combine.

Every caption stored in a library carries the name of the source it came from. This module is
the single home of those names (the store, fusion, the pipeline, search, the CLI and the UI
import them from here), of each source's *trust* (the fusion weight it gets, see
``fusion.caption_weight``) and of the rule that turns an image's stored captions into the one
*active* caption that is embedded and fused. Three kinds of source, most trusted first:

- **person-written captions** (kind ``user``, ``USER_SOURCES``): an edit in the app, a sidecar
  text file, a captions file, ground truth, and embedded photo metadata (XMP/IPTC/EXIF/PNG text
  written by a person or their photo software). The most trusted one present is the active
  caption, and its weight is 1.
- **names a person typed** (kind ``name``, ``NAME_SOURCES``): the words of the file name (and,
  when switched on, of the folder name) that survive the camera/machine-name filter
  (``captions.filenames``: ``IMG_1234`` gives nothing). A person chose them for this picture, so
  without a person-written caption they are the active caption on their own (joined in this
  list's order: ``"red summer dress; holiday"``), ahead of anything a model generated, with a
  fixed trust ``NAME_TRUST`` below 1: a name is terse and may name a project rather than the
  picture. Generated text is *not* appended: joined into one sentence, a wrong machine caption
  dilutes the name's meaning in the sentence embedding (README, *Caption sources*).
- **machine text** (kind ``machine``, ``MACHINE_SOURCES``): the captioner's output and text read
  in the image (OCR). With neither a person-written caption nor name words they are joined
  (``"a photo of a dress; SALE"``); the join keeps the label of its first part (``generated``
  when the captioner ran), its confidence is the highest of its parts', and its weight is the
  agreement-based weight of generated text.

Some sources can be turned on or off (``SWITCHABLE``; setting ``caption_sources``, CLI flag
``--caption-sources``, Settings dialog). Turning one on or off re-embeds captions only; so does
a change of this rule (``COMPOSE_RULE``, recorded in the library).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import ExplorerError
from ..models.base import Caption


@dataclass(frozen=True)
class CaptionSource:
    name: str
    #: ``user`` (written by a person: weight 1), ``name`` (a name a person typed: ``NAME_TRUST``)
    #: or ``machine`` (joined, agreement-based weight)
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

#: The fusion weight of a caption made of names a person typed (file, folder). A name is text a
#: person chose for the picture, so it is trusted like a person's caption, but less: with
#: ``b = alpha * w_q * w_i`` two images captioned by their names give the caption half the share
#: that two person-written captions give it (``NAME_TRUST ** 2 = 1/2``). Fixed by that rule, not
#: fitted to any data set (README, *Caption sources*, has the measurements).
NAME_TRUST = math.sqrt(0.5)
#: Version of the rule in ``compose``: stored in a library (``Meta caption_rule``); when it differs,
#: indexing re-embeds the captions (not the images) of the folders it indexes.
COMPOSE_RULE = "tiers-v2"

#: Most trusted first. The active caption is the most trusted person-written one, else the join
#: of the names present, else the join of the machine sources present, in this order.
SOURCES: tuple[CaptionSource, ...] = (
    CaptionSource(USER_EDITED, "user", "edited in the app"),
    CaptionSource(SIDECAR, "user", "sidecar text file (photo.jpg.txt)", reread=True),
    CaptionSource(CAPTIONS_FILE, "user", "captions file (--captions)", reread=True),
    CaptionSource(GROUND_TRUTH, "user", "ground truth"),
    CaptionSource(METADATA, "user", "photo metadata (XMP, IPTC, EXIF, PNG text, XMP sidecar)",
                  switchable=True, default_on=True, reread=True),
    CaptionSource(FILENAME, "name", "file name words", switchable=True, default_on=True),
    CaptionSource(FOLDER, "name", "folder name words", switchable=True, default_on=False),
    CaptionSource(GENERATED, "machine", "captioner"),
    CaptionSource(OCR, "machine", "text in the image (OCR)", switchable=True, default_on=False),
)

BY_NAME = {s.name: s for s in SOURCES}
CAPTION_PRIORITY: tuple[str, ...] = tuple(s.name for s in SOURCES)
USER_SOURCES = frozenset(s.name for s in SOURCES if s.kind == "user")
NAME_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.kind == "name")
MACHINE_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.kind == "machine")
SWITCHABLE: tuple[str, ...] = tuple(s.name for s in SOURCES if s.switchable)
DEFAULT_ENABLED: tuple[str, ...] = tuple(s.name for s in SOURCES if s.switchable and s.default_on)
#: person-written sources read from files on every run (the row goes when the file's text goes)
REREAD_USER_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.kind == "user" and s.reread)
#: the sources besides person-written ones and the captioner (names, OCR), computed by the indexer
EXTRA_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.kind != "user" and s.name != GENERATED)
#: fixed fusion weight of each kind that has one; ``machine`` text gets the agreement-based weight
KIND_TRUST = {"user": 1.0, "name": NAME_TRUST}
JOIN = "; "


def caption_rank(source: str) -> int:
    """Lower is more trusted; unknown sources rank last."""
    return CAPTION_PRIORITY.index(source) if source in CAPTION_PRIORITY else len(CAPTION_PRIORITY)


def is_user_source(source: str | None) -> bool:
    return source in USER_SOURCES


def source_trust(source: str | None) -> float | None:
    """The fixed fusion weight of a caption led by ``source`` (1 for person-written captions,
    ``NAME_TRUST`` for names), or None where the weight comes from agreement (machine text and
    unknown sources). ``fusion.caption_weight`` applies it."""
    s = BY_NAME.get(source or "")
    return None if s is None else KIND_TRUST.get(s.kind)


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


def sources_text(source: str | None, parts=()) -> str:
    """Every source of a caption, as the results panel and query bar show it: ``"generated + ocr"``
    for a composed caption's parts (``(source, text)`` pairs or source names), else ``source``."""
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in parts or ()]
    return " + ".join(names) if names else (source or "")


@dataclass(frozen=True)
class ComposedCaption(Caption):
    """The active caption with the parts it was made of: ``((source, text), ...)``."""

    parts: tuple[tuple[str, str], ...] = ()


def compose(captions: Mapping[str, Any] | Iterable[Any]) -> ComposedCaption | None:
    """The active caption of one image from its captions (``{source: caption}`` or a list of
    objects with ``source``, ``text``, ``model_id``, ``confidence``: ``Caption`` or ``CaptionRow``):
    the most trusted person-written caption, else the names joined, else the machine text joined
    (see the module docstring)."""
    items = list(captions.values()) if isinstance(captions, Mapping) else list(captions)
    items = [c for c in items if c is not None and (c.text or "").strip()]
    if not items:
        return None
    users = [c for c in items if c.source in USER_SOURCES]
    if users:
        best = min(users, key=lambda c: caption_rank(c.source))
        return ComposedCaption(best.text, best.source, best.model_id, float(best.confidence), ((best.source, best.text),))
    for tier in (NAME_SOURCES, MACHINE_SOURCES):
        parts = sorted((c for c in items if c.source in tier), key=lambda c: caption_rank(c.source))
        if parts:
            first = parts[0]
            text = JOIN.join(c.text.strip() for c in parts)
            conf = max(float(c.confidence) for c in parts)
            return ComposedCaption(text, first.source, first.model_id, conf, tuple((c.source, c.text.strip()) for c in parts))
    c = items[0]  # only unknown sources: keep the old rule (the first one)
    return ComposedCaption(c.text, c.source, c.model_id, float(c.confidence), ((c.source, c.text),))
