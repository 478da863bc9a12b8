"""Caption words from file and folder names, with camera and machine names recognised as empty.

``name_words(b"/photos/red_summer_dress.jpg")`` -> ``"red summer dress"``;
``IMG_1234.JPG``, ``DSC01234``, ``PXL_20240101_123456789``, ``Screenshot 2024-01-02 at 10.11.12``,
``WhatsApp Image 2024-…``, hex hashes, UUIDs and pure numbers give ``None``.

The rule: the name (without its extension) is split into chunks at anything that is not a
letter or digit; a chunk holding a digit (``1234``, ``DSC01234``, ``P1010123``, ``e29b``) is a
counter, date or hash and is dropped, and so is a chunk that is a known camera/app word
(``IMG``, ``DSC``, ``PXL``, ``Screenshot``…). Letter chunks are split at camelCase humps and
lower-cased; one-letter words are dropped. Whole names that are hex strings or UUIDs are empty.
"""

from __future__ import annotations

import os
import re

#: Words that camera firmware, phones, scanners and apps put into file names; they say nothing
#: about what the picture shows.
MACHINE_WORDS = frozenset("""
img image images dsc dscn dscf dsci dcim sam pxl mvimg vid mov mpi gopr gp dji insta360 pano hdr burst
screenshot screenshots screen shot capture scan scanned whatsapp wa signal telegram mmexport fb
photo photos pic pict pics picture pictures edited edit copy final untitled export exported version
jpg jpeg png tif tiff heic webp raw cr2 nef arw dng thumb thumbnail at am pm
""".split())

_HEX_NAME = re.compile(r"[0-9a-fA-F]{16,}|[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}")
_CHUNK = re.compile(r"[^\W_]+", re.UNICODE)
_HUMP = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[^\W\d_a-zA-Z]+", re.UNICODE)
MAX_WORDS = 16


def _text(name: bytes | str) -> str:
    return os.fsdecode(name) if isinstance(name, bytes) else name


def words_of(name: str) -> list[str]:
    """The meaningful words of one file or folder name (without extension handling)."""
    name = name.replace("\ufffd", " ").replace("\udcff", " ")
    if _HEX_NAME.fullmatch(name.strip()):
        return []
    out: list[str] = []
    for chunk in _CHUNK.findall(name):
        if any(ch.isdigit() for ch in chunk):
            continue  # counters, dates, serials, hashes
        if any(0xDC80 <= ord(ch) <= 0xDCFF for ch in chunk):
            continue  # undecodable bytes
        if chunk.lower() in MACHINE_WORDS:
            continue
        for w in (_HUMP.findall(chunk) if chunk.isascii() else [chunk]) or [chunk]:
            w = w.lower()
            if len(w) < 2 or w in MACHINE_WORDS:
                continue
            out.append(w)
    return out[:MAX_WORDS]


def name_words(path: bytes | str) -> str | None:
    """Words of a file's name (extension removed), or None when it carries nothing."""
    base = os.path.basename(_text(path))
    stem, ext = os.path.splitext(base)
    if not stem:  # ".jpg"
        stem = base
    words = words_of(stem)
    return " ".join(words) if words else None


def folder_words(path: bytes | str) -> str | None:
    """Words of the name of the folder holding a file, or None."""
    folder = os.path.basename(os.path.dirname(_text(path)))
    words = words_of(folder)
    return " ".join(words) if words else None
