"""Captions that people (or their photo software) already wrote into the file: embedded metadata.

Read with Pillow's own readers (EXIF, IPTC-IIM, PNG text chunks, the raw XMP packet) and
``defusedxml`` for XMP, never by hand-written byte parsing of the container:

- XMP (in the file, or a sidecar ``photo.xmp`` / ``photo.jpg.xmp`` as written by darktable,
  digiKam and Lightroom): ``dc:title``, ``photoshop:Headline``, ``dc:description``,
  ``dc:subject`` keywords, Lightroom ``lr:hierarchicalSubject`` (the leaf of each path);
- IPTC-IIM: headline (2:105), caption/abstract (2:120), keywords (2:25);
- EXIF: ``ImageDescription``, ``UserComment``, Windows ``XPTitle``/``XPSubject``/``XPComment``/``XPKeywords``;
- PNG text chunks: ``Title``, ``Description``, ``Comment`` (and ``Subject``).

Camera boilerplate ("OLYMPUS DIGITAL CAMERA", "SONY DSC", the camera's make or model, empty
or whitespace strings, text without a letter) is not a caption, and neither are software tags
such as ``darktable|format|jpg``. The parts are de-duplicated and joined
``title; headline; description; keywords`` into one caption of at most ``MAX_CHARS``.

Bad metadata never raises: a truncated or malformed XMP packet, undecodable bytes, oversized
fields (XMP over ``MAX_XMP_BYTES``, more than ``MAX_KEYWORDS`` keywords) and XML with a DTD
(entity bombs, external entities: refused by defusedxml before anything is expanded or
loaded) give a one-line reason in ``MetadataCaption.problems`` and are otherwise ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from PIL import Image, IptcImagePlugin

MAX_XMP_BYTES = 2 * 1024 * 1024
MAX_FIELD_CHARS = 2000
MAX_KEYWORDS = 64
MAX_CHARS = 1000
MODEL_ID = "metadata-v1"

NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
#: (field name, XMP property, kind)
XMP_FIELDS = (
    ("title", "dc:title", "alt"),
    ("headline", "photoshop:Headline", "text"),
    ("description", "dc:description", "alt"),
    ("keywords", "dc:subject", "bag"),
    ("keywords", "lr:hierarchicalSubject", "hier"),
)
EXIF_TAGS = {270: "description", 0x9C9B: "title", 0x9C9F: "headline", 0x9C9C: "description", 0x9C9E: "keywords"}
EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769
IPTC_FIELDS = {(2, 105): "headline", (2, 120): "description", (2, 25): "keywords"}
PNG_KEYS = {"title": "title", "subject": "headline", "description": "description", "comment": "description"}
ORDER = ("title", "headline", "description", "keywords")

#: Text that cameras and software write by default; compared case-insensitively after
#: collapsing whitespace.
BOILERPLATE = re.compile(
    r"(olympus|sony|samsung|konica minolta|kodak|nikon|canon|fujifilm|panasonic|pentax|ricoh|casio|sanyo|"
    r"minolta|leica|sigma|huawei|xiaomi|apple|lg|htc|motorola|google)?\s*"
    r"(digital (still )?camera|dsc|camera|digital|image|picture|photo|exif_jpeg_picture|"
    r"default|untitled|no description|none|null|n/?a|sample|dcim|\d+)?\s*\.?|"
    r"created with (the )?gimp|lead technologies.*|.*\bappmark\b.*|ducky|adobe imageready|"
    r"screenshot|binary comment|charset=\w+|\?+",
    re.I,
)
SOFTWARE_TAG = re.compile(r"^(darktable|digikam|lightroom|exif|xmp|photoshop|mylio|acdsee)\|", re.I)


@dataclass
class MetadataCaption:
    text: str | None
    #: ((field, where, text), ...), e.g. ("title", "xmp dc:title", "Red dress")
    parts: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        where = sorted({w for _, w, _ in self.parts})
        return (MODEL_ID + ":" + ",".join(where))[:200]


def _clean(text: str) -> str:
    text = text.replace("\x00", " ")
    return re.sub(r"\s+", " ", text).strip()[:MAX_FIELD_CHARS]


def is_boilerplate(text: str, camera: set[str] = frozenset()) -> bool:
    t = _clean(text)
    if not t or not any(ch.isalpha() for ch in t):
        return True
    if t.lower() in camera:
        return True
    return BOILERPLATE.fullmatch(t) is not None


def _decode_bytes(raw: bytes) -> str:
    for enc in ("utf-8", "cp1252"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _xp(value) -> str:
    """Windows XP* tags: UTF-16LE bytes (sometimes a tuple of byte values)."""
    if isinstance(value, tuple):
        value = bytes(value)
    if isinstance(value, bytes):
        return value.decode("utf-16-le", "replace").rstrip("\x00")
    return str(value)


def _user_comment(value, big_endian: bool) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        return ""
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        order = ("utf-16-be", "utf-16-le") if big_endian else ("utf-16-le", "utf-16-be")
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", "replace")
        for enc in order:
            try:
                return body.decode(enc)
            except UnicodeDecodeError:
                continue
        return ""
    if code.startswith(b"JIS"):
        return body.decode("shift_jis", "replace")
    return _decode_bytes(body)


class _Reader:
    def __init__(self) -> None:
        self.found: dict[str, list[tuple[str, str]]] = {k: [] for k in ORDER}
        self.problems: list[str] = []
        self.camera: set[str] = set()

    def add(self, fld: str, where: str, text) -> None:
        if text is None:
            return
        if isinstance(text, bytes):
            text = _decode_bytes(text)
        text = _clean(str(text))
        if text:
            self.found[fld].append((where, text))

    # -- XMP ----------------------------------------------------------------------------------
    def xmp(self, packet, where: str) -> None:
        from defusedxml import DefusedXmlException
        from defusedxml.ElementTree import fromstring

        if isinstance(packet, str):
            packet = packet.encode("utf-8", "replace")
        if not packet:
            return
        if len(packet) > MAX_XMP_BYTES:
            self.problems.append(f"{where}: XMP packet of {len(packet) // 1024} KB is over the {MAX_XMP_BYTES // 1024} KB limit; ignored")
            return
        packet = packet.rstrip(b"\x00 \t\r\n")
        try:
            root = fromstring(packet, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except DefusedXmlException as e:
            self.problems.append(f"{where}: XMP refused ({type(e).__name__}: DTDs and entities are never loaded); ignored")
            return
        except Exception as e:  # noqa: BLE001 - ParseError, ValueError, encoding errors: bad input
            self.problems.append(f"{where}: XMP is not well-formed ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); ignored")
            return
        descs = root.iter(f"{{{NS['rdf']}}}Description")
        for d in descs:
            for fld, prop, kind in XMP_FIELDS:
                pre, local = prop.split(":")
                qname = f"{{{NS[pre]}}}{local}"
                label = f"{where} {prop}"
                if qname in d.attrib:  # simple property written as an attribute
                    self.add(fld, label, d.attrib[qname])
                for el in d.findall(qname):
                    items = el.findall(".//rdf:li", NS)
                    if not items:
                        self.add(fld, label, "".join(el.itertext()))
                        continue
                    if kind == "alt":
                        default = [li for li in items if li.get(f"{{{NS['xml']}}}lang") == "x-default"]
                        self.add(fld, label, "".join((default or items)[0].itertext()))
                        continue
                    if len(items) > MAX_KEYWORDS:
                        self.problems.append(f"{label}: {len(items)} keywords, only the first {MAX_KEYWORDS} are used")
                    for li in items[:MAX_KEYWORDS]:
                        t = "".join(li.itertext())
                        if SOFTWARE_TAG.match(t.strip()):
                            continue
                        if kind == "hier":
                            t = t.split("|")[-1]
                        self.add(fld, label, t)

    # -- the file ------------------------------------------------------------------------------
    def image(self, path: str) -> None:
        try:
            im = Image.open(path)
        except Exception as e:  # noqa: BLE001 - the decoder reports unreadable images; here we only skip
            self.problems.append(f"metadata not read: {type(e).__name__}")
            return
        with im:
            for step in (self._exif, self._iptc, self._png, self._xmp_embedded):
                try:
                    step(im)
                except Exception as e:  # noqa: BLE001 - one bad block must not hide the others
                    self.problems.append(f"{step.__name__.strip('_')}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}; ignored")

    def _exif(self, im) -> None:
        if im.format == "PNG" and "exif" not in im.info:
            return  # Pillow would decode the whole PNG looking for an eXIf chunk after the pixels
        exif = im.getexif()
        if not exif:
            return
        for tag in (271, 272):
            v = exif.get(tag)
            if isinstance(v, str) and v.strip():
                self.camera.add(_clean(v).lower())
        if len(self.camera) == 2:
            self.camera.add(" ".join(sorted(self.camera)))
        for tag, fld in EXIF_TAGS.items():
            v = exif.get(tag)
            if v is None:
                continue
            text = _xp(v) if tag >= 0x9C9B else v
            if fld == "keywords":
                for k in str(text).split(";")[:MAX_KEYWORDS]:
                    self.add(fld, "exif XPKeywords", k)
            else:
                self.add(fld, f"exif {'XP' if tag >= 0x9C9B else ''}{ {270: 'ImageDescription', 0x9C9B: 'Title', 0x9C9F: 'Subject', 0x9C9C: 'Comment'}[tag]}", text)
        uc = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        if uc is not None:
            big = getattr(exif, "endian", "<") == ">"
            self.add("description", "exif UserComment", _user_comment(uc, big))

    def _iptc(self, im) -> None:
        if im.format not in ("JPEG", "TIFF"):
            return
        info = IptcImagePlugin.getiptcinfo(im)
        if not info:
            return
        utf8 = info.get((1, 90)) in (b"\x1b%G",)
        for key, fld in IPTC_FIELDS.items():
            v = info.get(key)
            if v is None:
                continue
            values = v if isinstance(v, list) else [v]
            if fld == "keywords" and len(values) > MAX_KEYWORDS:
                self.problems.append(f"iptc: {len(values)} keywords, only the first {MAX_KEYWORDS} are used")
            for x in values[:MAX_KEYWORDS]:
                self.add(fld, f"iptc {key[0]}:{key[1]}", x.decode("utf-8", "replace") if utf8 and isinstance(x, bytes) else x)

    def _png(self, im) -> None:
        if im.format != "PNG":
            return
        # the chunks before the pixels (where writers put them); ``im.text`` would decode the image
        for k, v in im.info.items():
            fld = PNG_KEYS.get(str(k).lower())
            if fld and isinstance(v, str):
                self.add(fld, f"png {k}", v)

    def _xmp_embedded(self, im) -> None:
        packet = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
        if packet is None and im.format == "TIFF":
            packet = getattr(im, "tag_v2", {}).get(700)
        if packet:
            self.xmp(packet, "xmp")

    def sidecars(self, path: str) -> None:
        stem = os.path.splitext(path)[0]
        for side in dict.fromkeys((stem + ".xmp", stem + ".XMP", path + ".xmp")):
            try:
                if not os.path.isfile(side):
                    continue
                size = os.path.getsize(side)
                if size > MAX_XMP_BYTES:
                    self.problems.append(f"{os.path.basename(side)}: XMP sidecar of {size // 1024} KB is over the {MAX_XMP_BYTES // 1024} KB limit; ignored")
                    continue
                with open(side, "rb") as f:
                    data = f.read(MAX_XMP_BYTES + 1)
            except OSError as e:
                self.problems.append(f"{os.path.basename(side)}: cannot read ({e.strerror}); ignored")
                continue
            self.xmp(data, "xmp-sidecar")

    def result(self) -> MetadataCaption:
        parts: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for fld in ORDER:
            for where, text in self.found[fld]:
                key = text.lower()
                if key in seen or is_boilerplate(text, self.camera):
                    continue
                seen.add(key)
                parts.append((fld, where, text))
        chunks = []
        for fld in ORDER:
            vals = [t for f, _, t in parts if f == fld]
            if vals:
                chunks.append(", ".join(vals) if fld == "keywords" else "; ".join(vals))
        text = "; ".join(chunks)[:MAX_CHARS].strip() or None
        return MetadataCaption(text, parts, self.problems)


def read_metadata(path: str | bytes | os.PathLike) -> MetadataCaption:
    """The person-written caption embedded in (or kept beside) one image file. Never raises."""
    p = os.fsdecode(os.fspath(path))
    r = _Reader()
    r.image(p)
    r.sidecars(p)
    return r.result()
