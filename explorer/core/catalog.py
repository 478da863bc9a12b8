"""The catalog: named read queries over a library's database, with one path normalisation.

Only the catalog and the store speak SQL. Code outside them (the window, the CLI, search,
evaluation) asks the catalog a question by name and gets plain Python values back, never
ORM rows or sessions. Every write is a named method of ``Store``. One method per question,
each with a docstring line; the indexer, edits, ground-truth import, the library's index sync
and caption explanations read through here too.

**One path normalisation.** The library stores every image under ``path_key``: the real path
(symlinks resolved) as OS bytes, exactly as the indexer's scanner finds it. ``path_key(p)``
turns any path a user gives (``~``, relative, through a symlink, non-UTF-8 names) into that key,
and ``image_id(path)`` / ``image_ids(paths)`` are the one way from a file path to an image id.

Folder prefixes (``gallery_items``, ``folder_status``) use the display form stored in
``ImageRow.folder``.

For the searcher's in-memory gallery (``explorer.core.gallery_arrays``): ``gallery_meta`` reads
every ok image's display metadata in one go (``GalleryMeta``), and ``ChangeCounter`` tells cheaply
whether anything was committed since (SQLite's ``data_version``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, or_, select

from .errors import ExplorerError
from .models.base import Caption
from .captions.sources import JOIN, caption_rank, compose
from .store import BoxMetaRow, CaptionRow, DetectionRow, ImageRow, Store, VectorRow


def path_key(path: str | bytes | os.PathLike) -> bytes:
    """The library's key of a file path: its real path as OS bytes (how the indexer stores it)."""
    p = os.fsencode(path)
    return os.path.realpath(os.path.expanduser(p))


def real_folder(path: str | os.PathLike) -> str:
    """A folder as the catalog's folder prefixes name it (real path, display form)."""
    return os.fsdecode(path_key(path))


@dataclass(frozen=True)
class ImageState:
    """One library image's stored file facts, as the indexer plans with them (no captions, no vectors)."""

    image_id: int
    path_key: bytes
    path: str
    status: str
    error: str | None
    size: int
    mtime_ns: int
    content_hash: str | None
    detector_model: str | None
    caption_agreement: float | None


_STATE_COLUMNS = (ImageRow.id, ImageRow.path_key, ImageRow.path, ImageRow.status, ImageRow.error, ImageRow.size,
                  ImageRow.mtime_ns, ImageRow.content_hash, ImageRow.detector_model, ImageRow.caption_agreement)


def _state(r) -> ImageState:
    return ImageState(*r)


@dataclass
class ImageInfo:
    """Everything the detail view shows about one library image."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    status: str
    error: str | None
    captions: list[tuple[str, str, float]] = field(default_factory=list)  # (source, text, confidence), most trusted first
    detections: list[tuple[str, float, tuple[float, float, float, float]]] = field(default_factory=list)
    #: the active caption's parts, (source, text), as ``captions.sources.compose`` joined them
    parts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def caption(self) -> str:
        if self.parts:
            return JOIN.join(t for _, t in self.parts)
        return self.captions[0][1] if self.captions else ""

    @property
    def caption_source(self) -> str:
        return self.captions[0][0] if self.captions else ""


class Catalog:
    """Read queries over one ``Store``. Thread-safe as the store's sessions are (one per call)."""

    def __init__(self, store: Store):
        self.store = store

    # -- file path -> image id ---------------------------------------------------------------
    def image_id(self, path: str | bytes | os.PathLike) -> int | None:
        """The id of the library image at ``path`` (any spelling of it), or None."""
        with self.store.session() as s:
            return s.scalar(select(ImageRow.id).where(ImageRow.path_key == path_key(path)))

    def image_ids(self, paths) -> dict[bytes, int]:
        """``{path_key: image id}`` for those of ``paths`` that are in the library."""
        keys = list({path_key(p) for p in paths})
        out: dict[bytes, int] = {}
        with self.store.session() as s:
            for i in range(0, len(keys), 500):
                for k, iid in s.execute(select(ImageRow.path_key, ImageRow.id).where(ImageRow.path_key.in_(keys[i:i + 500]))):
                    out[k] = iid
        return out

    def image_statuses(self, paths) -> dict[bytes, tuple[int, str]]:
        """``{path_key: (image id, status)}`` for those of ``paths`` that are in the library, indexed or failed."""
        keys = list({path_key(p) for p in paths})
        out: dict[bytes, tuple[int, str]] = {}
        with self.store.session() as s:
            for i in range(0, len(keys), 500):
                q = select(ImageRow.path_key, ImageRow.id, ImageRow.status).where(ImageRow.path_key.in_(keys[i:i + 500]))
                for k, iid, status in s.execute(q):
                    out[k] = (iid, status)
        return out

    def image_state(self, path: str | bytes | os.PathLike) -> ImageState | None:
        """The stored facts of the library image at ``path`` (any spelling of it), or None."""
        with self.store.session() as s:
            r = s.execute(select(*_STATE_COLUMNS).where(ImageRow.path_key == path_key(path))).first()
        return _state(r) if r is not None else None

    # -- what the indexer plans with -----------------------------------------------------------
    def states_under(self, roots: list[bytes]) -> dict[bytes, ImageState]:
        """``{path_key: state}`` of every library image below the real folders ``roots`` (OS bytes)."""
        out: dict[bytes, ImageState] = {}
        with self.store.session() as s:
            for root in roots:
                prefix = root.rstrip(b"/") + b"/"
                q = select(*_STATE_COLUMNS).where(ImageRow.path_key >= prefix, ImageRow.path_key < prefix[:-1] + b"0")
                out.update({r[1]: _state(r) for r in s.execute(q)})
        return out

    def states_by_key(self, keys) -> dict[bytes, ImageState]:
        """``{path_key: state}`` for those of the path keys ``keys`` (already real, OS bytes) in the library."""
        keys = list(keys)
        out: dict[bytes, ImageState] = {}
        with self.store.session() as s:
            for i in range(0, len(keys), 500):
                out.update({r[1]: _state(r) for r in s.execute(select(*_STATE_COLUMNS).where(ImageRow.path_key.in_(keys[i:i + 500])))})
        return out

    def states_by_id(self, ids) -> dict[int, ImageState]:
        """``{image id: state}`` for those of ``ids`` in the library."""
        ids = [int(i) for i in ids]
        out: dict[int, ImageState] = {}
        with self.store.session() as s:
            for i in range(0, len(ids), 500):
                out.update({r[0]: _state(r) for r in s.execute(select(*_STATE_COLUMNS).where(ImageRow.id.in_(ids[i:i + 500])))})
        return out

    def ok_path_keys(self) -> dict[bytes, int]:
        """``{path_key: image id}`` of every indexed (status ok) image."""
        with self.store.session() as s:
            return {pk: iid for iid, pk in s.execute(select(ImageRow.id, ImageRow.path_key).where(ImageRow.status == "ok"))}

    def ids_with_vector(self, kind: str, model_id: str) -> set[int]:
        """Ids of the images (any status) that have a stored vector of ``kind`` made by ``model_id``."""
        with self.store.session() as s:
            return set(s.scalars(select(VectorRow.image_id).where(VectorRow.kind == kind, VectorRow.model_id == model_id)))

    def captions_by_source(self, ids) -> dict[int, dict[str, Caption]]:
        """``{image id: {source: Caption}}`` of the stored caption rows of ``ids`` (images without any are absent)."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Caption]] = {}
        with self.store.session() as s:
            for i in range(0, len(ids), 500):
                for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id.in_(ids[i:i + 500]))):
                    out.setdefault(c.image_id, {})[c.source] = Caption(c.text, c.source, c.model_id, c.confidence)
        return out

    # -- what the library's index sync and caption agreement read --------------------------------
    def ok_vector_ids(self, kind: str, model_id: str) -> set[int]:
        """Ids of the indexed (status ok) images with a vector of ``kind`` made by ``model_id``."""
        with self.store.session() as s:
            return set(s.scalars(select(VectorRow.image_id).join(ImageRow).where(
                ImageRow.status == "ok", VectorRow.kind == kind, VectorRow.model_id == model_id)))

    def vectors_since(self, kind: str, model_id: str, seq_high: int) -> list[tuple[int, int, bytes, int]]:
        """``(image id, dim, data, seq)`` of the ok images' ``kind`` vectors of ``model_id`` written after ``seq_high``."""
        with self.store.session() as s:
            q = select(VectorRow.image_id, VectorRow.dim, VectorRow.data, VectorRow.seq).join(ImageRow).where(
                VectorRow.kind == kind, VectorRow.model_id == model_id, ImageRow.status == "ok", VectorRow.seq > seq_high)
            return [tuple(r) for r in s.execute(q).all()]

    def pair_ids_since(self, image_model: str, text_model: str, seq_high: int) -> list[int]:
        """Sorted ids of the ok images whose image vector (``image_model``) or caption vector
        (``text_model``) was written after ``seq_high``."""
        with self.store.session() as s:
            q = select(VectorRow.image_id).join(ImageRow).where(
                ImageRow.status == "ok", VectorRow.seq > seq_high,
                or_((VectorRow.kind == "image") & (VectorRow.model_id == image_model),
                    (VectorRow.kind == "caption") & (VectorRow.model_id == text_model)))
            return sorted(set(s.scalars(q)))

    def highest_seq_since(self, seq_high: int) -> int:
        """The highest vector seq in the library above ``seq_high`` (any kind, model or status), else ``seq_high``."""
        with self.store.session() as s:
            return max([seq_high] + [v for v in s.scalars(select(VectorRow.seq).where(VectorRow.seq > seq_high))])

    def pair_vector_seqs(self, image_model: str, text_model: str) -> list[tuple[int, str, int]]:
        """``(image id, kind, seq)`` of every ok image's image vector (``image_model``) and caption vector
        (``text_model``), ordered by image id then kind: what caption agreement is computed from."""
        with self.store.session() as s:
            return [tuple(r) for r in s.execute(select(VectorRow.image_id, VectorRow.kind, VectorRow.seq).join(ImageRow).where(
                ImageRow.status == "ok", or_((VectorRow.kind == "image") & (VectorRow.model_id == image_model),
                                            (VectorRow.kind == "caption") & (VectorRow.model_id == text_model)))
                .order_by(VectorRow.image_id, VectorRow.kind)).all()]

    def path_keys(self, ids) -> dict[int, bytes]:
        """``{image id: path_key}`` for ``ids`` (above 20,000 ids: of the whole library, one scan)."""
        ids = [int(i) for i in ids]
        with self.store.session() as s:
            if len(ids) <= 20000:
                return dict(s.execute(select(ImageRow.id, ImageRow.path_key).where(ImageRow.id.in_(ids))).all())
            return dict(s.execute(select(ImageRow.id, ImageRow.path_key)).all())

    def caption_agreements(self, ids) -> dict[int, float | None]:
        """``{image id: caption agreement}`` for ``ids`` (above 20,000 ids: of the whole library, one scan)."""
        ids = [int(i) for i in ids]
        with self.store.session() as s:
            if len(ids) <= 20000:
                return dict(s.execute(select(ImageRow.id, ImageRow.caption_agreement).where(ImageRow.id.in_(ids))).all())
            return dict(s.execute(select(ImageRow.id, ImageRow.caption_agreement)).all())

    # -- browsing ----------------------------------------------------------------------------
    def count_images(self, status: str | None = "ok") -> int:
        return self.store.count_images(status)

    def status_counts(self) -> dict[str, int]:
        """``{status: number of images}`` over the whole library (``ok``, ``error``)."""
        with self.store.session() as s:
            return {st: int(n) for st, n in s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all()}

    def result_meta(self, ids) -> dict[int, dict]:
        """What a result list shows of each of ``ids`` that is in the library: ``{id: {"path", "w", "h",
        "agreement", "caption", "detections"}}``; ``caption`` is the active ``ComposedCaption`` or None,
        ``detections`` a list of ``(label, score, box)``."""
        ids = [int(i) for i in ids]
        out: dict[int, dict] = {}
        if not ids:
            return out
        with self.store.session() as s:
            for iid, path, w, h, agreement in s.execute(select(ImageRow.id, ImageRow.path, ImageRow.width, ImageRow.height,
                                                               ImageRow.caption_agreement).where(ImageRow.id.in_(ids))):
                out[iid] = {"path": path, "w": w, "h": h, "agreement": agreement, "caption": None, "detections": []}
            caps: dict[int, list[CaptionRow]] = {}
            for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id.in_(ids))):
                caps.setdefault(c.image_id, []).append(c)
            for iid, cs in caps.items():
                if iid in out:
                    out[iid]["caption"] = compose(cs)
            for d in s.scalars(select(DetectionRow).where(DetectionRow.image_id.in_(ids))):
                if d.image_id in out:
                    out[d.image_id]["detections"].append((d.label, d.score, d.box))
        return out

    def gallery_items(self, prefix: str | None) -> tuple[list[int], list[str]]:
        """Ids and paths of indexed images under the folder ``prefix`` (all when None), in indexing order."""
        with self.store.session() as s:
            q = select(ImageRow.id, ImageRow.path).where(ImageRow.status == "ok")
            if prefix:
                p = prefix.rstrip(os.sep) or os.sep
                if p != os.sep:
                    q = q.where((ImageRow.folder == p) | ImageRow.folder.startswith(p + os.sep, autoescape=True))
            rows = s.execute(q.order_by(ImageRow.id)).all()
        return [r[0] for r in rows], [r[1] for r in rows]

    def folder_status(self) -> dict[str, tuple[int, int]]:
        """(indexed, failed) counts for every folder holding library images and all its ancestors."""
        with self.store.session() as s:
            rows = s.execute(select(ImageRow.folder, ImageRow.status, func.count()).group_by(ImageRow.folder, ImageRow.status)).all()
        agg: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for folder, status, n in rows:
            p = folder
            while True:
                slot = agg[p]
                slot[0 if status == "ok" else 1] += n
                parent = os.path.dirname(p)
                if not parent or parent == p:
                    break
                p = parent
        return {k: (v[0], v[1]) for k, v in agg.items()}

    def folder_counts(self, folder: str) -> tuple[int, int]:
        """(indexed, failed) under one folder (recursively)."""
        return self.folder_status().get(real_folder(folder), (0, 0))

    def image_info(self, image_id: int) -> ImageInfo:
        """Path, size, status, captions (most trusted first) and detections of one image."""
        with self.store.session() as s:
            row = s.get(ImageRow, int(image_id))
            if row is None:
                raise ExplorerError(f"image {image_id} is no longer in the library")
            caps = sorted(s.scalars(select(CaptionRow).where(CaptionRow.image_id == row.id)), key=lambda c: caption_rank(c.source))
            dets = list(s.scalars(select(DetectionRow).where(DetectionRow.image_id == row.id)))
            active = compose(caps)
            return ImageInfo(row.id, row.path, row.width, row.height, row.status, row.error,
                             [(c.source, c.text, c.confidence) for c in caps],
                             [(d.label, d.score, d.box) for d in dets],
                             list(active.parts) if active is not None else [])

    def ok_image_by_path_or_hash(self, path: str | bytes | os.PathLike, digest_of=None) -> int | None:
        """The ok library image at ``path``, else (``digest_of(path)`` given) the first with the same content hash."""
        key = path_key(path)
        with self.store.session() as s:
            iid = s.scalar(select(ImageRow.id).where(ImageRow.path_key == key, ImageRow.status == "ok"))
            if iid is not None or digest_of is None:
                return iid
            try:
                digest = digest_of(key)
            except OSError:
                return None
            if not digest:
                return None
            return s.scalar(select(ImageRow.id).where(ImageRow.content_hash == digest, ImageRow.status == "ok").order_by(ImageRow.id).limit(1))

    def active_caption(self, image_id: int):
        """The active (composed) caption of an image, or None."""
        with self.store.session() as s:
            return compose(list(s.scalars(select(CaptionRow).where(CaptionRow.image_id == int(image_id)))))

    # -- learned fusion's box-feature cache --------------------------------------------------
    @staticmethod
    def _box_cache_state(s, model_id: str, feature_id: str, image_ids) -> tuple[dict[int, int], set[int]]:
        q = select(VectorRow.image_id, VectorRow.seq).join(ImageRow).where(
            VectorRow.kind == "image", VectorRow.model_id == model_id, ImageRow.status == "ok")
        wanted = None if image_ids is None else {int(i) for i in image_ids}
        seqs = {r[0]: r[1] for r in s.execute(q).all() if wanted is None or r[0] in wanted}
        meta = {r.image_id: (r.image_seq, r.detector_model) for r in s.scalars(select(BoxMetaRow).where(BoxMetaRow.feature_id == feature_id))}
        have_vec = set(s.scalars(select(VectorRow.image_id).where(VectorRow.kind == "boxes", VectorRow.model_id == feature_id)))
        det = dict(s.execute(select(ImageRow.id, ImageRow.detector_model)).all())
        valid = {i for i, seq in seqs.items()
                 if i in meta and i in have_vec and meta[i][0] == seq and meta[i][1] == det.get(i)}
        return seqs, valid

    def box_cache_plan(self, model_id: str, feature_id: str, image_ids=None) -> tuple[dict[int, int], set[int], dict[int, tuple]]:
        """For the ok images with an image vector of ``model_id`` (those of ``image_ids`` when given):
        ``(seqs, valid, files)``: ``{id: image vector seq}``, the ids whose cached box features
        ``feature_id`` are current, and ``{id: (path_key, size, mtime_ns, detector_model)}`` of the others."""
        with self.store.session() as s:
            seqs, valid = self._box_cache_state(s, model_id, feature_id, image_ids)
            need = set(seqs) - valid
            files = {}
            if need:
                q = select(ImageRow.id, ImageRow.path_key, ImageRow.size, ImageRow.mtime_ns, ImageRow.detector_model).where(ImageRow.status == "ok")
                files = {r[0]: (r[1], r[2], r[3], r[4]) for r in s.execute(q).all() if r[0] in need}
        return seqs, valid, files

    def box_cache_entries(self, model_id: str, feature_id: str, image_ids) -> tuple[dict[int, tuple[int, str, str, str]], list[tuple[int, bytes]]]:
        """The current cached box features of ``image_ids``: ``({id: (n, labels_json, scores_json,
        boxes_json)}, [(id, vector bytes)])`` (the vector list may hold ids without current metadata)."""
        ids = [int(i) for i in image_ids]
        pos = set(ids)
        with self.store.session() as s:
            _seqs, valid = self._box_cache_state(s, model_id, feature_id, ids)
            metas = {r.image_id: (r.n, r.labels, r.scores, r.boxes)
                     for r in s.scalars(select(BoxMetaRow).where(BoxMetaRow.feature_id == feature_id)) if r.image_id in valid and r.image_id in pos}
            q = select(VectorRow.image_id, VectorRow.data).where(VectorRow.kind == "boxes", VectorRow.model_id == feature_id)
            if len(pos) <= 20000:
                q = q.where(VectorRow.image_id.in_(ids))
            vecs = [(r[0], r[1]) for r in s.execute(q).all()]
        return metas, vecs

    def detections(self, image_ids) -> dict[int, list[tuple[str, float, tuple[float, float, float, float]]]]:
        """``{id: [(label, score, box)]}`` for each of ``image_ids`` (an empty list where none)."""
        ids = [int(i) for i in image_ids]
        out: dict[int, list] = {i: [] for i in ids}
        if ids:
            with self.store.session() as s:
                for r in s.scalars(select(DetectionRow).where(DetectionRow.image_id.in_(ids))):
                    out[r.image_id].append((r.label, r.score, r.box))
        return out

    # -- the gallery in memory (explorer.core.gallery_arrays) ---------------------------------
    def gallery_meta(self) -> "GalleryMeta":
        """Display metadata of every ok image, ordered by id: path key, path, content hash, size,
        stored caption agreement, active caption (``compose``) and detections (in stored order)."""
        from .models.base import Caption

        with self.store.session() as s:
            imgs = s.execute(select(ImageRow.id, ImageRow.path_key, ImageRow.path, ImageRow.content_hash, ImageRow.width,
                                    ImageRow.height, ImageRow.caption_agreement)
                             .where(ImageRow.status == "ok").order_by(ImageRow.id)).all()
            caps: dict[int, list] = {}
            for iid, text, source, model_id, conf in s.execute(select(CaptionRow.image_id, CaptionRow.text, CaptionRow.source,
                                                                      CaptionRow.model_id, CaptionRow.confidence).order_by(CaptionRow.id)):
                caps.setdefault(iid, []).append(Caption(text, source, model_id, conf))
            dets = s.execute(select(DetectionRow.image_id, DetectionRow.label, DetectionRow.score, DetectionRow.x1, DetectionRow.y1,
                                    DetectionRow.x2, DetectionRow.y2).order_by(DetectionRow.image_id, DetectionRow.id)).all()
        ids = np.fromiter((r[0] for r in imgs), np.int64, len(imgs))
        det_ids = np.fromiter((r[0] for r in dets), np.int64, len(dets))
        keep = np.isin(det_ids, ids)
        det_ids = det_ids[keep]
        dets = [d for d, k in zip(dets, keep.tolist()) if k]
        return GalleryMeta(
            ids=ids, keys=[r[1] for r in imgs], paths=[r[2] for r in imgs], hashes=[r[3] for r in imgs],
            width=np.array([-1 if r[4] is None else r[4] for r in imgs], np.int64),
            height=np.array([-1 if r[5] is None else r[5] for r in imgs], np.int64),
            agreement=[r[6] for r in imgs], captions=[compose(caps[i]) if i in caps else None for i in ids.tolist()],
            det_start=np.searchsorted(det_ids, ids, "left"), det_end=np.searchsorted(det_ids, ids, "right"),
            det_label=[d[1] for d in dets], det_score=np.array([d[2] for d in dets], np.float64),
            det_box=np.array([d[3:7] for d in dets], np.float64).reshape(-1, 4))


__all__ = ["Catalog", "ImageInfo", "ImageState", "path_key", "real_folder"]


@dataclass
class GalleryMeta:
    """Per-image display metadata of the gallery (``Catalog.gallery_meta``), as arrays and lists in id order.

    Detections are stored flat: image ``r``'s are ``det_*[det_start[r]:det_end[r]]``. ``width`` and
    ``height`` are -1 where unknown; ``agreement`` keeps None where none is stored."""

    ids: np.ndarray
    keys: list
    paths: list
    hashes: list
    width: np.ndarray
    height: np.ndarray
    agreement: list
    captions: list
    det_start: np.ndarray
    det_end: np.ndarray
    det_label: list
    det_score: np.ndarray
    det_box: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.width.nbytes + self.height.nbytes + self.det_start.nbytes + self.det_end.nbytes
                   + self.det_score.nbytes + self.det_box.nbytes)

    def take(self, rows) -> "GalleryMeta":
        """The metadata of ``rows`` (positions), in that order (detections shared, not copied)."""
        rows = np.asarray(rows, np.int64)
        pick = rows.tolist()
        return GalleryMeta(self.ids[rows], [self.keys[r] for r in pick], [self.paths[r] for r in pick],
                           [self.hashes[r] for r in pick], self.width[rows], self.height[rows],
                           [self.agreement[r] for r in pick], [self.captions[r] for r in pick],
                           self.det_start[rows], self.det_end[rows], self.det_label, self.det_score, self.det_box)

    def detections(self, row: int) -> list[tuple[str, float, tuple[float, float, float, float]]]:
        """``(label, score, box)`` of the image in ``row``, in stored order."""
        s, e = int(self.det_start[row]), int(self.det_end[row])
        return [(self.det_label[j], float(self.det_score[j]), tuple(float(v) for v in self.det_box[j])) for j in range(s, e)]


class ChangeCounter:
    """Tells whether the library database changed: SQLite's ``PRAGMA data_version`` on a connection
    of its own, which never writes. The value changes whenever any other connection (this process's
    pool or another process) commits; reading it costs a PRAGMA on an open connection. Only values
    of one counter compare."""

    def __init__(self, store: Store):
        self.store = store
        self._conn = None
        self._release = None
        self._opened = 0
        self._lock = threading.Lock()

    def value(self) -> tuple[int, int]:
        """``(connection number, data_version)``: values from different connections never compare equal."""
        with self._lock:
            if self._conn is None:
                self._conn = self.store.engine.raw_connection()
                self._release = weakref.finalize(self, self._conn.close)  # back to the pool when dropped unclosed
                self._opened += 1
            cur = self._conn.cursor()
            try:
                cur.execute("PRAGMA data_version")
                return self._opened, int(cur.fetchone()[0])
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            if self._release is not None:
                self._release()
            self._conn = self._release = None


__all__ += ["ChangeCounter", "GalleryMeta"]
