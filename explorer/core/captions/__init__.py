"""Captions from where people already keep them, each with its provenance.

- ``sources``: the one list of caption source names, their trust, and how they combine into
  the active caption (``compose``);
- ``user``: sidecar text files and captions files (``--captions``);
- ``metadata``: XMP / IPTC / EXIF / PNG text and XMP sidecars;
- ``filenames``: words of file and folder names (camera and machine names carry nothing);
- ``ocr``: text in the image (optional, off by default).

``extract_cheap`` gives the sources that need no pixels for one file (metadata, file and
folder names); the indexer and ``explorer caption IMAGE`` both use it, so what the CLI prints
is what indexing stores.
"""

from __future__ import annotations

import os

from ..models.base import Caption
from .filenames import folder_words, name_words
from .metadata import MetadataCaption, read_metadata
from .sources import (
    CAPTION_PRIORITY,
    FILENAME,
    FOLDER,
    METADATA,
    DEFAULT_ENABLED,
    SOURCES,
    SWITCHABLE,
    USER_SOURCES,
    ComposedCaption,
    caption_rank,
    compose,
    parse_sources,
)
from .user import SIDECAR_MAX_BYTES, SIDECAR_SUFFIX, CaptionsFile, read_sidecar, sidecar_path

FILENAME_MODEL_ID = "filename-v1"
#: file-name words are exactly what the name says; the agreement decides their weight
FILENAME_CONFIDENCE = 1.0


def metadata_caption(path: bytes | str) -> tuple[Caption | None, MetadataCaption]:
    md = read_metadata(path)
    cap = Caption(md.text, METADATA, md.model_id, 1.0) if md.text else None
    return cap, md


def name_captions(path: bytes | str, enabled) -> dict[str, Caption]:
    """The ``filename`` and ``folder`` captions of one file, for the enabled sources."""
    out: dict[str, Caption] = {}
    if FILENAME in enabled:
        w = name_words(path)
        if w:
            out[FILENAME] = Caption(w, FILENAME, FILENAME_MODEL_ID, FILENAME_CONFIDENCE)
    if FOLDER in enabled:
        w = folder_words(path)
        if w:
            out[FOLDER] = Caption(w, FOLDER, FILENAME_MODEL_ID, FILENAME_CONFIDENCE)
    return out


__all__ = [
    "CAPTION_PRIORITY", "DEFAULT_ENABLED", "SOURCES", "SWITCHABLE", "USER_SOURCES", "ComposedCaption", "caption_rank",
    "compose", "parse_sources", "CaptionsFile", "read_sidecar", "sidecar_path", "SIDECAR_SUFFIX", "SIDECAR_MAX_BYTES",
    "read_metadata", "MetadataCaption", "name_words", "folder_words", "metadata_caption", "name_captions",
]
