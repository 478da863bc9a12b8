"""Ground truth for retrieval evaluation: which gallery images are relevant to which query.

Specs understood by :func:`load_ground_truth`:

``folders:DIR`` (or a bare ``DIR``)
    One label per immediate sub-folder of DIR; its images are found recursively. Images lying
    directly in DIR have no label: they stay in the gallery as distractors. Leave-one-out:
    every labelled image is a query against all the others.
``csv:FILE``
    Header ``image,label`` (label-based, leave-one-out) or ``query,relevant`` (explicit
    pairs, several rows per query) with an optional third column ``ignore``: ``1`` marks the
    pair as junk (removed from that query's ranking), ``0`` or empty means relevant. Paths are
    relative to the CSV's folder unless absolute.
``coco:FILE``
    COCO-style JSON: ``images`` (id, file_name), ``categories`` (id, name), ``annotations``
    (image_id, category_id, bbox ``[x, y, w, h]``) and captions, either in a top-level
    ``captions`` list or as annotations with a ``caption`` key (COCO captions). **The label of
    an image is the category of its largest box** (area w*h; first in file order on ties);
    images without boxes are unlabelled distractors. Boxes (as ``x1, y1, x2, y2`` pixels) and
    captions are kept on the GroundTruth. Image paths are relative to the JSON's folder, or
    to an ``images/`` folder beside it when not found there.
``deepfashion2:DIR``
    DIR/image/*.jpg with DIR/annos/<same stem>.json (``source`` user|shop, ``pair_id``,
    ``item1``, ``item2``... each with ``style`` and ``category_name``). Consumer (user) images
    are the queries, shop images the gallery. Relevant: same pair_id and some garment style
    > 0 in both. Consumer images without any match are reported in ``warnings``.

Every problem in the input raises :class:`BadGroundTruth` with a one-line message naming the
file and the line (CSV) or entry (JSON) at fault.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import BadGroundTruth
from .relevance import DenseRelevance, LabelRelevance

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
SPEC_FORMS = "folders:DIR (or a bare DIR), csv:FILE, coco:FILE, deepfashion2:DIR"
ROLES = ("query", "gallery", "both")

Box = tuple[str, tuple[float, float, float, float]]


def _bad(msg: str) -> BadGroundTruth:
    return BadGroundTruth(" ".join(str(msg).split()))


@dataclass(frozen=True)
class GTItem:
    """One image of a ground truth. ``path`` is absolute and resolved."""

    path: Path
    label: str | None = None
    pair_id: int | None = None
    #: Styles of the garments in the image (DeepFashion2); 0 means "no style, never matches".
    styles: tuple[int, ...] = ()
    role: str = "both"

    @property
    def style(self) -> int | None:
        """The first style > 0, if any."""
        return next((s for s in self.styles if s > 0), None)


@dataclass
class GroundTruth:
    """Images, their labels / pairs, and the relevance rule that follows from them.

    The rule is chosen by the content: explicit ``pairs`` if given, else the DeepFashion2
    rule if items carry a ``pair_id``, else "same label".
    """

    name: str
    items: list[GTItem]
    pairs: dict[Path, set[Path]] | None = None
    ignore: dict[Path, set[Path]] | None = None
    captions: dict[Path, list[str]] = field(default_factory=dict)
    boxes: dict[Path, list[Box]] = field(default_factory=dict)
    #: Explicit query list (in order); when None, :meth:`queries` derives it.
    query_list: list[Path] | None = None
    #: Non-fatal findings (e.g. consumer images without a match), one line each.
    warnings: list[str] = field(default_factory=list)
    spec: str = ""
    _index: dict[Path, GTItem] | None = field(default=None, init=False, repr=False, compare=False)
    _index_n: int = field(default=-1, init=False, repr=False, compare=False)

    # -- lookups --------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        if self.pairs is not None:
            return "pairs"
        if any(it.pair_id is not None for it in self.items):
            return "deepfashion2"
        return "labels"

    def item(self, path) -> GTItem | None:
        if self._index is None or self._index_n != len(self.items):  # rebuilt if items were added
            self._index = {it.path: it for it in self.items}
            self._index_n = len(self.items)
        p = Path(path)
        it = self._index.get(p)
        if it is None:
            it = self._index.get(p.resolve())
        return it

    def _norm(self, path) -> Path:
        it = self.item(path)
        return it.path if it is not None else Path(path).resolve()

    def labels(self) -> list[str]:
        return sorted({it.label for it in self.items if it.label is not None})

    def queries(self) -> list[Path]:
        """Explicit queries, else consumer images (role "query"), else every labelled image."""
        if self.query_list is not None:
            return list(self.query_list)
        if self.pairs is not None:
            return list(self.pairs)
        if any(it.role == "query" for it in self.items):
            return [it.path for it in self.items if it.role == "query"]
        return [it.path for it in self.items if it.label is not None and it.role in ("query", "both")]

    def gallery(self) -> list[Path]:
        return [it.path for it in self.items if it.role in ("gallery", "both")]

    def describe(self) -> str:
        """One line, e.g. ``"pets: 1200 images, 37 labels, 1200 queries"``."""
        parts = [f"{len(self.items)} images"]
        if self.kind == "labels":
            parts.append(f"{len(self.labels())} labels")
        parts.append(f"{len(self.queries())} queries")
        parts.append(f"{len(self.gallery())} gallery")
        return f"{self.name}: " + ", ".join(parts)

    # -- relevance ------------------------------------------------------------------------

    def relevance(self, query_paths: Sequence, gallery_paths: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """``(relevant, ignore)`` boolean ``(nq, ng)`` matrices for these paths.

        A query is always ignored against itself (same path) and against its junk entries;
        ignored pairs are never relevant. Paths unknown to the ground truth are never relevant.
        """
        qp = [self._norm(p) for p in query_paths]
        gp = [self._norm(p) for p in gallery_paths]
        nq, ng = len(qp), len(gp)
        rel = np.zeros((nq, ng), bool)
        ign = np.zeros((nq, ng), bool)
        gpos: dict[Path, list[int]] = defaultdict(list)
        for j, p in enumerate(gp):
            gpos[p].append(j)
        for i, p in enumerate(qp):
            ign[i, gpos.get(p, [])] = True
            if self.ignore:
                for x in self.ignore.get(p, ()):
                    ign[i, gpos.get(x, [])] = True
        kind = self.kind
        if kind == "pairs":
            for i, p in enumerate(qp):
                for x in self.pairs.get(p, ()):
                    rel[i, gpos.get(x, [])] = True
        elif kind == "deepfashion2":
            tokens: dict[tuple[int, int], list[int]] = defaultdict(list)
            for j, p in enumerate(gp):
                for tok in _df2_tokens(self.item(p)):
                    tokens[tok].append(j)
            for i, p in enumerate(qp):
                for tok in _df2_tokens(self.item(p)):
                    rel[i, tokens.get(tok, [])] = True
        else:
            qc, gc = self._label_codes(qp, gp)
            rel = (qc[:, None] == gc[None, :]) & (qc[:, None] >= 0)
        rel &= ~ign
        return rel, ign

    def relevance_source(self, query_paths: Sequence, gallery_paths: Sequence):
        """Relevance for :func:`evaluate_embeddings` (``ignore`` included).

        For label ground truths without junk this is a :class:`LabelRelevance`, which never
        builds the ``nq x ng`` matrices (use it for large sets); otherwise a dense one.
        """
        if self.kind == "labels" and not self.ignore:
            qp = [self._norm(p) for p in query_paths]
            gp = [self._norm(p) for p in gallery_paths]
            qc, gc = self._label_codes(qp, gp)
            if len(set(gp)) == len(gp):
                return LabelRelevance(qc, gc, [str(p) for p in qp], [str(p) for p in gp])
        rel, ign = self.relevance(query_paths, gallery_paths)
        return DenseRelevance(rel, ign)

    def _label_codes(self, qp: list[Path], gp: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        codes = {lab: i for i, lab in enumerate(self.labels())}

        def code(p: Path) -> int:
            it = self.item(p)
            return codes.get(it.label, -1) if it is not None and it.label is not None else -1

        return (
            np.fromiter((code(p) for p in qp), np.int64, len(qp)),
            np.fromiter((code(p) for p in gp), np.int64, len(gp)),
        )


def _df2_tokens(item: GTItem | None) -> set[tuple[int, int]]:
    if item is None or item.pair_id is None:
        return set()
    return {(item.pair_id, s) for s in item.styles if s > 0}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_ground_truth(spec: str | os.PathLike) -> GroundTruth:
    """Parse a spec (see the module docstring) into a :class:`GroundTruth`."""
    s = str(spec).strip()
    if not s:
        raise _bad(f"empty ground-truth spec; expected {SPEC_FORMS}")
    prefix, sep, rest = s.partition(":")
    key = prefix.strip().lower()
    if sep and key in _LOADERS:
        path_s = rest.strip()
        if not path_s:
            raise _bad(f"ground-truth spec '{s}' has no path after '{prefix}:'; expected {SPEC_FORMS}")
        gt = _LOADERS[key](Path(path_s).expanduser())
        gt.spec = s
        return gt
    bare = Path(s).expanduser()
    if bare.is_dir():
        gt = _load_folders(bare)
        gt.spec = s
        return gt
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]+", prefix):
        raise _bad(f"unknown ground-truth format '{prefix}:' in '{s}'; expected {SPEC_FORMS}")
    if bare.is_file():
        raise _bad(f"ground-truth file '{s}' needs a format prefix; expected {SPEC_FORMS}")
    raise _bad(f"ground truth '{s}' not found; expected {SPEC_FORMS}")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def _images_under(d: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        for f in filenames:
            if not f.startswith(".") and _is_image(Path(f)):
                found.append(Path(dirpath) / f)
    return sorted(found)


def _load_folders(root: Path) -> GroundTruth:
    where = f"folders:{root}"
    if not root.exists():
        raise _bad(f"{where}: directory not found")
    if not root.is_dir():
        raise _bad(f"{where}: not a directory")
    root = root.resolve()
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise _bad(f"{where}: no class sub-folders (expected DIR/<label>/<images>)")
    items: list[GTItem] = []
    seen: set[Path] = set()
    for d in classes:
        imgs = _images_under(d)
        if not imgs:
            raise _bad(f"{where}: class folder '{d.name}' contains no images ({' '.join(sorted(IMAGE_EXTS))})")
        for p in imgs:
            rp = p.resolve()
            if rp not in seen:
                seen.add(rp)
                items.append(GTItem(rp, label=d.name))
    for p in sorted(root.iterdir()):
        if p.is_file() and _is_image(p) and not p.name.startswith(".") and p.resolve() not in seen:
            seen.add(p.resolve())
            items.append(GTItem(p.resolve(), label=None, role="gallery"))
    return GroundTruth(name=root.name, items=items)


def _resolve_file(raw: str, bases: Iterable[Path], where: str) -> Path:
    p = Path(raw.strip()).expanduser()
    tried = [p] if p.is_absolute() else [b / p for b in bases]
    for cand in tried:
        if cand.is_file():
            return cand.resolve()
    looked = " or ".join(str(c) for c in tried)
    raise _bad(f"{where}: image file not found: '{raw.strip()}' (looked for {looked})")


def _load_csv(path: Path) -> GroundTruth:
    if not path.is_file():
        raise _bad(f"csv:{path}: file not found")
    base = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise _bad(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise _bad(f"{path}: cannot read: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    expected = "'image,label' or 'query,relevant' (optionally ',ignore')"
    try:
        header = next((row for row in reader if any(c.strip() for c in row)), None)
        if header is None:
            raise _bad(f"{path}: empty file; expected a header {expected}")
        cols = [c.strip().lower() for c in header]
        if cols == ["image", "label"]:
            return _csv_labels(path, reader, cols, base)
        if cols in (["query", "relevant"], ["query", "relevant", "ignore"]):
            return _csv_pairs(path, reader, cols, base)
        raise _bad(f"{path}:{reader.line_num}: header must be {expected}, got '{','.join(header)}'")
    except csv.Error as e:
        raise _bad(f"{path}:{reader.line_num}: malformed CSV: {e}") from None


def _csv_rows(path: Path, reader, cols: list[str]):
    for row in reader:
        ln = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(cols):
            raise _bad(f"{path}:{ln}: expected {len(cols)} columns ({','.join(cols)}), got {len(row)}")
        for name, val in zip(cols, row):
            if name != "ignore" and not val.strip():
                raise _bad(f"{path}:{ln}: empty '{name}'")
        yield ln, [c.strip() for c in row]


def _csv_labels(path: Path, reader, cols, base: Path) -> GroundTruth:
    items: dict[Path, GTItem] = {}
    first_line: dict[Path, int] = {}
    for ln, (img, label) in _csv_rows(path, reader, cols):
        p = _resolve_file(img, [base], f"{path}:{ln}")
        old = items.get(p)
        if old is not None and old.label != label:
            raise _bad(f"{path}:{ln}: '{img}' already has label '{old.label}' (line {first_line[p]})")
        if old is None:
            items[p] = GTItem(p, label=label)
            first_line[p] = ln
    if not items:
        raise _bad(f"{path}: no rows after the header")
    return GroundTruth(name=path.stem, items=list(items.values()))


def _csv_pairs(path: Path, reader, cols, base: Path) -> GroundTruth:
    pairs: dict[Path, set[Path]] = {}
    junk: dict[Path, set[Path]] = {}
    order: list[Path] = []
    for ln, row in _csv_rows(path, reader, cols):
        q = _resolve_file(row[0], [base], f"{path}:{ln}")
        r = _resolve_file(row[1], [base], f"{path}:{ln}")
        flag = row[2] if len(row) > 2 else ""
        if flag not in ("", "0", "1"):
            raise _bad(f"{path}:{ln}: 'ignore' must be 1, 0 or empty, got '{flag}'")
        if q not in pairs:
            pairs[q] = set()
            order.append(q)
        if flag == "1":
            junk.setdefault(q, set()).add(r)
        else:
            pairs[q].add(r)
    if not pairs:
        raise _bad(f"{path}: no rows after the header")
    for q, js in junk.items():
        pairs[q] -= js
    qs = set(pairs)
    gs = {r for rs in pairs.values() for r in rs} | {r for rs in junk.values() for r in rs}
    items = []
    for p in order + sorted(gs - qs):
        role = "both" if p in qs and p in gs else "query" if p in qs else "gallery"
        items.append(GTItem(p, role=role))
    empty = sum(1 for q in order if not pairs[q])
    warnings = [f"{empty} of {len(order)} queries have no relevant image"] if empty else []
    return GroundTruth(
        name=path.stem, items=items, pairs=pairs, ignore=junk or None, query_list=order, warnings=warnings
    )


def _read_json(path: Path, where: str) -> Any:
    if not path.is_file():
        raise _bad(f"{where}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise _bad(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise _bad(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    except OSError as e:
        raise _bad(f"{path}: cannot read: {e.strerror or e}") from None


def _is_id(v) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _load_coco(path: Path) -> GroundTruth:
    data = _read_json(path, f"coco:{path}")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise _bad(f"{path}: expected a JSON object with an 'images' list")
    base = path.resolve().parent
    bases = [base, base / "images"]

    cats: dict[Any, str] = {}
    for i, c in enumerate(data.get("categories") or []):
        if not isinstance(c, dict) or "id" not in c:
            raise _bad(f"{path}: categories[{i}]: missing 'id'")
        if not _is_id(c["id"]):
            raise _bad(f"{path}: categories[{i}]: 'id' must be an integer or a string, got {c['id']!r}")
        cats[c["id"]] = str(c.get("name", c["id"]))

    images: dict[Any, Path] = {}
    order: list[Path] = []
    for i, im in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict):
            raise _bad(f"{where}: expected an object")
        for k in ("id", "file_name"):
            if k not in im:
                raise _bad(f"{where}: missing '{k}'")
        if not _is_id(im["id"]):
            raise _bad(f"{where}: 'id' must be an integer or a string, got {im['id']!r}")
        if im["id"] in images:
            raise _bad(f"{where}: duplicate image id {im['id']!r}")
        if not isinstance(im["file_name"], str) or not im["file_name"].strip():
            raise _bad(f"{where}: 'file_name' must be a non-empty string")
        p = _resolve_file(im["file_name"], bases, f"{where} (id {im['id']!r})")
        images[im["id"]] = p
        order.append(p)

    boxes: dict[Path, list[Box]] = defaultdict(list)
    best: dict[Path, tuple[float, str]] = {}
    captions: dict[Path, list[str]] = defaultdict(list)

    def caption(where: str, a: dict, p: Path) -> None:
        if not isinstance(a["caption"], str):
            raise _bad(f"{where}: 'caption' must be a string")
        captions[p].append(a["caption"].strip())

    for i, a in enumerate(data.get("annotations") or []):
        where = f"{path}: annotations[{i}]"
        if not isinstance(a, dict):
            raise _bad(f"{where}: expected an object")
        if not _is_id(a.get("image_id")) or a["image_id"] not in images:
            raise _bad(f"{where}: unknown image_id {a.get('image_id')!r}")
        p = images[a["image_id"]]
        if "caption" in a:
            caption(where, a, p)
        if "category_id" in a:
            if not _is_id(a["category_id"]) or a["category_id"] not in cats:
                raise _bad(f"{where}: unknown category_id {a['category_id']!r}")
            bb = a.get("bbox")
            if not (isinstance(bb, list) and len(bb) == 4 and all(_number(v) for v in bb) and bb[2] >= 0 and bb[3] >= 0):
                raise _bad(f"{where}: 'bbox' must be [x, y, width, height] with width, height >= 0, got {bb!r}")
            name = cats[a["category_id"]]
            x, y, w, h = (float(v) for v in bb)
            boxes[p].append((name, (x, y, x + w, y + h)))
            if p not in best or w * h > best[p][0]:
                best[p] = (w * h, name)
        elif "caption" not in a:
            raise _bad(f"{where}: neither 'category_id' nor 'caption'")
    for i, a in enumerate(data.get("captions") or []):
        where = f"{path}: captions[{i}]"
        if not isinstance(a, dict) or "caption" not in a:
            raise _bad(f"{where}: expected an object with 'image_id' and 'caption'")
        if not _is_id(a.get("image_id")) or a["image_id"] not in images:
            raise _bad(f"{where}: unknown image_id {a.get('image_id')!r}")
        caption(where, a, images[a["image_id"]])

    items = [GTItem(p, label=best[p][1] if p in best else None) for p in order]
    n_unlab = sum(1 for it in items if it.label is None)
    warnings = [f"{n_unlab} of {len(items)} images have no box and stay unlabelled distractors"] if n_unlab else []
    return GroundTruth(
        name=path.stem, items=items, captions=dict(captions), boxes=dict(boxes), warnings=warnings
    )


def _load_deepfashion2(root: Path) -> GroundTruth:
    where = f"deepfashion2:{root}"
    layout = "expected DIR/image/*.jpg and DIR/annos/*.json"
    if not root.is_dir():
        raise _bad(f"{where}: directory not found")
    img_dir, anno_dir = root / "image", root / "annos"
    for d in (img_dir, anno_dir):
        if not d.is_dir():
            raise _bad(f"{where}: missing '{d.name}' folder ({layout})")
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and _is_image(p))
    if not images:
        raise _bad(f"{where}: no images in {img_dir} ({layout})")
    items: list[GTItem] = []
    boxes: dict[Path, list[Box]] = {}
    for img in images:
        anno = anno_dir / f"{img.stem}.json"
        if not anno.is_file():
            raise _bad(f"{anno}: annotation missing for image {img.name}")
        data = _read_json(anno, str(anno))
        if not isinstance(data, dict):
            raise _bad(f"{anno}: expected a JSON object")
        source = data.get("source")
        if source not in ("user", "shop"):
            raise _bad(f"{anno}: 'source' must be 'user' or 'shop', got {source!r}")
        pair_id = data.get("pair_id")
        if not isinstance(pair_id, int) or isinstance(pair_id, bool):
            raise _bad(f"{anno}: 'pair_id' must be an integer, got {pair_id!r}")
        keys = sorted((k for k in data if re.fullmatch(r"item\d+", k)), key=lambda k: int(k[4:]))
        styles: list[int] = []
        img_boxes: list[Box] = []
        label, best = None, -1.0
        for k in keys:
            it = data[k]
            if not isinstance(it, dict):
                raise _bad(f"{anno}: '{k}' must be an object")
            style = it.get("style")
            if not isinstance(style, int) or isinstance(style, bool):
                raise _bad(f"{anno}: '{k}.style' must be an integer, got {style!r}")
            styles.append(style)
            cat = str(it.get("category_name", it.get("category_id", "unknown")))
            bb = it.get("bounding_box")
            if bb is not None:
                if not (isinstance(bb, list) and len(bb) == 4 and all(_number(v) for v in bb)):
                    raise _bad(f"{anno}: '{k}.bounding_box' must be [x1, y1, x2, y2], got {bb!r}")
                x1, y1, x2, y2 = (float(v) for v in bb)
                img_boxes.append((cat, (x1, y1, x2, y2)))
                area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            else:
                area = 0.0
            if area > best:
                label, best = cat, area
        p = img.resolve()
        if img_boxes:
            boxes[p] = img_boxes
        role = "query" if source == "user" else "gallery"
        items.append(GTItem(p, label=label, pair_id=pair_id, styles=tuple(styles), role=role))

    shop_tokens = set()
    for it in items:
        if it.role == "gallery":
            shop_tokens |= _df2_tokens(it)
    queries = [it for it in items if it.role == "query"]
    unmatched = sum(1 for it in queries if not (_df2_tokens(it) & shop_tokens))
    warnings = []
    if not queries:
        warnings.append("no consumer (source 'user') images: there are no queries")
    if unmatched:
        warnings.append(
            f"{unmatched} of {len(queries)} consumer images have no shop image with the same pair_id "
            "and style > 0; they count as queries without relevant items"
        )
    return GroundTruth(name=root.resolve().name, items=items, boxes=boxes, warnings=warnings)


_LOADERS = {
    "folders": _load_folders,
    "csv": _load_csv,
    "coco": _load_coco,
    "deepfashion2": _load_deepfashion2,
    "df2": _load_deepfashion2,
}
