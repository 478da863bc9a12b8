"""The in-memory gallery's arrays on disk, so that a new process (a one-shot ``explorer search``,
a second window) opens them instead of reading the whole gallery from SQL.

**What is stored.** ``LIBRARY/cache/gallery-<dtype>-<digest>/``: one ``.npy`` file per array of a
``GalleryArrays`` (``gallery_arrays``) and ``manifest.json``. Vectors and caption weights are
the arrays themselves; the display metadata is *columnar*: every text column is one bytes blob
plus an ``int64`` offsets array (``StrColumn``), repeated short strings (caption sources and
model ids, detection labels) are codes into a small vocabulary (``CodedColumn``), and the path
key and content hash look-ups are sorted columns searched by bisection (``SortedLookup``).
Everything is opened with ``np.load(mmap_mode="r")``, so opening costs a few milliseconds
whatever the size, and what is resident is only the pages that re-scoring and result display
touch (the candidates' rows). Nothing is turned into Python objects until a row is asked for.

**Validity is exact.** The directory's name is a digest of its ``key`` (``cache_key``) and the
manifest holds the key itself, compared in full on reading. The key is: this format's version,
the library's id, the persistent gallery generation (``Store.gallery_generation``: moved by
triggers on every write to the tables the gallery reads, in the writing transaction), the
whitening tag, the image and text model ids, the vector dtype and the caption-weight rule
(``fusion.WEIGHT_RULE``). A library without a generation (read-only, made before the triggers)
gets no cache. ``GalleryArrays.open`` reads the generation before and after reading the gallery
from SQL and writes the cache only when the two agree, so a commit that lands during the read can
never be stored under the older generation.

**Written atomically**: into ``cache/.gallery-tmp-<pid>-<random>/``, every file synced to disk,
manifest last, then the directory is renamed into place (so a crash never leaves a valid-looking
cache with unwritten contents); the vector files are then evicted from the page cache, and
readers map them with ``MADV_RANDOM``, so that what becomes resident is the pages of the rows
re-scoring touches (read-ahead, or the writer's large page-cache folios, would map most of the
file); another process that finished the same key first wins, and the
other caches of the same dtype are removed afterwards (a process still using one keeps its
mapping: on POSIX an unlinked file stays readable). A cache that cannot be written (read-only
media, a full disk) is skipped with a debug log line, never an error. Readers (search, without
the writer lock) write it too: it is derived data, written whole or not at all and never read
unless its key matches, so it needs no lock; it is the only file a search may write.

**A damaged cache is rebuilt, never an error**: a missing or unreadable manifest or array file,
a wrong dtype, shape or file size (truncation), or a CRC-32 mismatch in any metadata array
(checked on opening by reading those files, a few MB per 100k images) gives one warning line,
the directory is removed and the gallery is read from SQL again. The vector files are checked by
size and header only: a flipped byte inside them is not detected (checking it would read the
whole file, 6.6 GB at 1M images, which is what memory-mapping avoids).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import mmap
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from .captions.sources import ComposedCaption
from .modes import CAPTION, IMAGE

log = logging.getLogger(__name__)

#: bump when what is stored, or how it is computed, changes
FORMAT = 1
PREFIX = "gallery-"
TMP_PREFIX = ".gallery-tmp-"
MANIFEST = "manifest.json"
#: arrays checked by size and header only (everything else also by CRC-32)
UNCHECKED = (IMAGE, CAPTION)
#: a temporary directory older than this is a crashed writer's and is removed
STALE_TMP_S = 3600.0


# -- columns: what the metadata looks like when opened ---------------------------------------------


class StrColumn:
    """Texts (``str``, or ``bytes`` with ``raw``) stored as one blob and ``n + 1`` offsets."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray, raw: bool = False):
        self.offsets = offsets
        self.blob = blob
        self.raw = raw

    @staticmethod
    def encode(values, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, blob)`` of ``values`` (``str``, or ``bytes`` with ``raw``)."""
        data = list(values) if raw else [v.encode("utf-8", "surrogatepass") for v in values]
        offsets = np.zeros(len(data) + 1, np.int64)
        if data:
            np.cumsum(np.fromiter((len(d) for d in data), np.int64, len(data)), out=offsets[1:])
        return offsets, np.frombuffer(b"".join(data), np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw_item(self, i: int) -> bytes:
        return self.blob[int(self.offsets[i]):int(self.offsets[i + 1])].tobytes()

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        b = self.raw_item(i % len(self))
        return b if self.raw else b.decode("utf-8", "surrogatepass")


class CodedColumn:
    """Repeated strings: one ``int32`` code per row into a small vocabulary."""

    def __init__(self, codes: np.ndarray, vocab: StrColumn):
        self.codes = codes
        self.vocab = [vocab[i] for i in range(len(vocab))]

    @staticmethod
    def encode(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes, vocabulary offsets, vocabulary blob)``."""
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int32)
        return (codes, *StrColumn.encode(list(index)))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> str:
        return self.vocab[int(self.codes[i])]


class CaptionColumn:
    """The active caption of every row (``captions.sources.ComposedCaption``, or None)."""

    def __init__(self, index, text: StrColumn, source: CodedColumn, model_id: CodedColumn, confidence, parts: StrColumn):
        #: per row, its caption's position in the other columns (-1: no caption)
        self.index, self.text, self.source, self.model_id = index, text, source, model_id
        self.confidence, self.parts = confidence, parts

    @staticmethod
    def encode(captions) -> dict[str, np.ndarray]:
        """Arrays of ``captions`` (``ComposedCaption`` or None each). ``parts`` is stored as JSON
        only where it is not the one part ``(source, text)``."""
        present = np.array([c is not None for c in captions], bool)
        cs = [c for c in captions if c is not None]
        out = {"cap_index": np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)}
        out["cap_text_off"], out["cap_text"] = StrColumn.encode([c.text for c in cs])
        out["cap_source"], out["cap_source_voff"], out["cap_source_vocab"] = CodedColumn.encode([c.source for c in cs])
        out["cap_model"], out["cap_model_voff"], out["cap_model_vocab"] = CodedColumn.encode([c.model_id for c in cs])
        out["cap_conf"] = np.array([float(c.confidence) for c in cs], np.float64)
        parts = []
        for c in cs:
            p = tuple(tuple(x) for x in getattr(c, "parts", ()) or ())
            parts.append("" if p == ((c.source, c.text),) else json.dumps([list(x) for x in p], ensure_ascii=False))
        out["cap_parts_off"], out["cap_parts"] = StrColumn.encode(parts)
        return out

    @classmethod
    def open(cls, a: dict) -> "CaptionColumn":
        return cls(a["cap_index"], StrColumn(a["cap_text_off"], a["cap_text"]),
                   CodedColumn(a["cap_source"], StrColumn(a["cap_source_voff"], a["cap_source_vocab"])),
                   CodedColumn(a["cap_model"], StrColumn(a["cap_model_voff"], a["cap_model_vocab"])),
                   a["cap_conf"], StrColumn(a["cap_parts_off"], a["cap_parts"]))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> ComposedCaption | None:
        j = int(self.index[int(row)])
        if j < 0:
            return None
        text, source = self.text[j], self.source[j]
        raw = self.parts[j]
        parts = ((source, text),) if raw == "" else tuple(tuple(x) for x in json.loads(raw))
        return ComposedCaption(text, source, self.model_id[j], float(self.confidence[j]), parts)


class SortedLookup:
    """``get(key)``: the id stored for ``key`` (bytes or str), by bisection over a sorted column."""

    def __init__(self, keys: StrColumn, ids: np.ndarray):
        self.keys, self.ids = keys, ids

    @staticmethod
    def encode(pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offsets, blob, ids)`` for ``(key bytes, id)`` pairs; where a key repeats, the smallest id."""
        best: dict[bytes, int] = {}
        for k, i in pairs:
            if k not in best or i < best[k]:
                best[k] = i
        keys = sorted(best)
        return (*StrColumn.encode(keys, raw=True), np.array([best[k] for k in keys], np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, key, default=None):
        if key is None:
            return default
        k = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else bytes(key)
        pos = bisect.bisect_left(_Keys(self.keys), k)
        if pos < len(self.ids) and self.keys.raw_item(pos) == k:
            return int(self.ids[pos])
        return default


class _Keys:
    """A ``StrColumn`` as a sequence of bytes, for ``bisect``."""

    def __init__(self, col: StrColumn):
        self.col = col

    def __len__(self) -> int:
        return len(self.col)

    def __getitem__(self, i: int) -> bytes:
        return self.col.raw_item(i)


class CompactMeta:
    """The display metadata of the gallery's rows, read from columns (``gallery_arrays``): paths,
    sizes (-1 where unknown), active captions and detections (image ``r``'s are
    ``det_*[det_start[r]:det_end[r]]``)."""

    def __init__(self, a: dict):
        self.arrays = a
        self.ids = a["ids"]
        self.paths = StrColumn(a["path_off"], a["path"])
        self.width, self.height = a["width"], a["height"]
        self.captions = CaptionColumn.open(a)
        self.det_start, self.det_end = a["det_start"], a["det_end"]
        self.det_label = CodedColumn(a["det_label"], StrColumn(a["det_label_voff"], a["det_label_vocab"]))
        self.det_score, self.det_box = a["det_score"], a["det_box"]

    @staticmethod
    def encode(meta) -> dict[str, np.ndarray]:
        """The metadata arrays of ``meta`` (``catalog.GalleryMeta`` of the gallery's rows)."""
        out = {}
        out["path_off"], out["path"] = StrColumn.encode(meta.paths)
        out["width"], out["height"] = np.asarray(meta.width, np.int32), np.asarray(meta.height, np.int32)
        out.update(CaptionColumn.encode(meta.captions))
        out["det_start"], out["det_end"] = np.asarray(meta.det_start, np.int64), np.asarray(meta.det_end, np.int64)
        out["det_label"], out["det_label_voff"], out["det_label_vocab"] = CodedColumn.encode(meta.det_label)
        out["det_score"] = np.asarray(meta.det_score, np.float64)
        out["det_box"] = np.asarray(meta.det_box, np.float64).reshape(-1, 4)
        return out

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for k, v in self.arrays.items() if k.startswith(("path", "width", "height", "cap_", "det_"))))

    def detections(self, row: int) -> list[tuple[str, float, tuple[float, float, float, float]]]:
        """``(label, score, box)`` of the image in ``row``, in stored order."""
        s, e = int(self.det_start[row]), int(self.det_end[row])
        return [(self.det_label[j], float(self.det_score[j]), tuple(float(v) for v in self.det_box[j])) for j in range(s, e)]


# -- the cache directory --------------------------------------------------------------------------


def cache_key(library, dtype: str) -> dict | None:
    """What a cached gallery of ``library`` depends on (module docstring); None: no cache possible."""
    from . import fusion

    gen = library.store.gallery_generation()
    if gen is None:
        return None
    w = library.whitening
    return {"format": FORMAT, "library": library.store.library_id, "generation": gen, "whitening": w.tag if w is not None else None,
            "image_model": library.image_model.model_id, "text_model": library.text_model.model_id, "dtype": dtype,
            "weight_rule": fusion.WEIGHT_RULE}


def cache_root(library) -> Path:
    return Path(library.dir) / "cache"


def cache_dir(root: Path, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return root / f"{PREFIX}{key['dtype']}-{digest}"


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _random_access(arr: np.memmap) -> None:
    """Tell the kernel that ``arr``'s pages are read at random (no read-ahead): re-scoring touches a
    few hundred scattered rows, and read-ahead would make most of the file resident."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except OSError:
            pass


def _drop_cached(fd: int) -> None:
    """Evict a just-written (and synced) file from the page cache: the writer's large page-cache
    folios would otherwise be mapped whole by readers, making far more than the touched rows resident."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(root: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays cached under ``key`` (memory-mapped), or None: none there, or damaged (one
    warning line, and the directory is removed)."""
    d = cache_dir(root, key)
    if not d.is_dir():
        return None
    try:
        man = json.loads((d / MANIFEST).read_text())
        if man.get("key") != key:
            raise ValueError("its manifest is for another key")
        out = {}
        for name, spec in man["arrays"].items():
            p = d / f"{name}.npy"
            shape = tuple(spec["shape"])
            if int(np.prod(shape)) == 0:
                arr = np.load(p, allow_pickle=False)
            else:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
                if p.stat().st_size != arr.offset + arr.nbytes:
                    raise ValueError(f"{p.name} is {p.stat().st_size} bytes, expected {arr.offset + arr.nbytes}")
                _random_access(arr)
            if arr.dtype.str != spec["dtype"] or arr.shape != shape:
                raise ValueError(f"{p.name} holds {arr.dtype.str} {arr.shape}, expected {spec['dtype']} {shape}")
            if name not in UNCHECKED and _crc(p) != spec["crc32"]:
                raise ValueError(f"{p.name} fails its checksum")
            out[name] = arr
        return out
    except Exception as e:  # noqa: BLE001 - any damage means: rebuild from the database
        log.warning("gallery cache %s is damaged (%s): reading the gallery from the database and rebuilding it",
                    d, str(e).splitlines()[0] if str(e) else type(e).__name__)
        shutil.rmtree(d, ignore_errors=True)
        return None


def write(root: Path, key: dict, arrays: dict[str, np.ndarray]) -> Path | None:
    """Store ``arrays`` under ``key`` atomically; returns the directory, or None where it could not
    be written (logged at debug level). Removes the other caches of the same dtype."""
    final = cache_dir(root, key)
    tmp = root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        specs = {}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            p = tmp / f"{name}.npy"
            with open(p, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it valid
                if name in UNCHECKED:
                    _drop_cached(f.fileno())
            specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape),
                           "crc32": None if name in UNCHECKED else _crc(p)}
        with open(tmp / MANIFEST, "w") as f:
            f.write(json.dumps({"key": key, "arrays": specs, "written": time.time()}, indent=1))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, final)
            _fsync_dir(root)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same key first
    except OSError as e:
        log.debug("gallery cache not written to %s: %s", root, e)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    prune(root, keep=final, dtype=key["dtype"])
    return final


def prune(root: Path, keep: Path, dtype: str) -> None:
    """Remove the caches of ``dtype`` other than ``keep``, and temporary directories left by crashed writers."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    now = time.time()
    for p in entries:
        try:
            if p.name.startswith(f"{PREFIX}{dtype}-") and p != keep:
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(TMP_PREFIX) and now - p.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


__all__ = ["CaptionColumn", "CodedColumn", "CompactMeta", "SortedLookup", "StrColumn", "cache_key", "read", "write"]
