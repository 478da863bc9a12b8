"""A library: one folder holding the database, the ANN indices and caches.

``Library.check`` (run by the indexer, the searcher and ``explorer check``) makes the indices
agree with the database: each index is synced against the stored vectors (adding what is
missing, deleting what is gone, rebuilding a missing or corrupt index file), and what was
repaired is reported.

**Whitening** (``explorer.core.whitening``): the library may hold a whitening of its image
vectors, fitted on its own vectors (``fit_whitening``; refitted at the end of an indexing run
when there is none or the gallery grew a lot). Stored raw vectors stay raw; every consumer of
image vectors here — the image and fused indices, ``gallery_vectors`` (evaluation, learned
fusion) and, through ``project_image``, queries — sees the whitened ones, so all modes and
evaluation agree. No whitening applies in a shared image-text space (text queries search the
image index there).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import or_, select, update

from . import fusion, whitening as wht
from .config import Settings
from .errors import ExplorerError
from .index import NO_INDEX_FILE, SyncReport, VectorIndex
from .models.registry import ModelLoader
from .store import CaptionRow, ImageRow, Meta, Store, VectorRow, caption_rank

log = logging.getLogger(__name__)


def slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]


@dataclass
class CheckReport:
    repairs: dict[str, SyncReport] = field(default_factory=dict)
    removed_orphans: int = 0

    def lines(self) -> list[str]:
        # an index that is merely not written yet (nothing stored for it) is not a repair
        out = [f"index {name}: {r}" for name, r in self.repairs.items()
               if r.added or r.deleted or (r.rebuilt and r.reason != NO_INDEX_FILE)]
        if self.removed_orphans:
            out.append(f"removed {self.removed_orphans} incomplete image rows")
        return out


class Library:
    """Database + indices for one set of models (image encoder, text encoder)."""

    def __init__(self, directory: str | Path, settings: Settings, loader: ModelLoader | None = None):
        self.dir = Path(directory).expanduser().resolve()
        self.settings = settings
        self.loader = loader or ModelLoader(settings)
        try:
            self.store = Store(self.dir)
        except Exception as e:  # noqa: BLE001 - e.g. a read-only folder or a corrupt database
            raise ExplorerError(f"cannot open library at {self.dir}: {str(e).splitlines()[0]}") from None
        self.alpha = fusion.DEFAULT_ALPHA
        self._indices: dict[str, VectorIndex] = {}
        self._indices_lock = threading.RLock()  # GUI workers may ask for an index at the same time
        self._whitening: tuple[str, wht.Whitening | None] | None = None  # (model id, loaded whitening)

    # model facts come from the loaded models, so they are loaded lazily
    @property
    def image_model(self):
        return self.loader.get("image")

    @property
    def text_model(self):
        return self.loader.get("text")

    @property
    def shared_space(self) -> bool:
        im, tx = self.image_model, self.text_model
        return im.shared_space_id is not None and im.shared_space_id == tx.shared_space_id

    # -- whitening ----------------------------------------------------------------------
    def whitening_path(self) -> Path:
        return self.dir / "whitening" / f"{slug(self.image_model.model_id)}.npz"

    @property
    def whitening(self) -> wht.Whitening | None:
        """The whitening in force for image vectors (None: raw vectors)."""
        if self.settings.whitening == "none" or self.shared_space:
            return None
        mid = self.image_model.model_id
        if self._whitening is None or self._whitening[0] != mid:
            path = self.whitening_path()
            w = None
            if path.is_file():
                try:
                    w = wht.Whitening.load(path)
                except ExplorerError as e:
                    log.warning("%s; image vectors are used unwhitened until it is refitted", e)
                if w is not None and (w.stamp.get("model_id") != mid or w.in_dim != self.image_model.dim):
                    w = None
            self._whitening = (mid, w)
        return self._whitening[1]

    @property
    def image_dim(self) -> int:
        w = self.whitening
        return w.out_dim if w is not None else self.image_model.dim

    def project_image(self, x: np.ndarray) -> np.ndarray:
        """Raw image vector(s) -> the vectors this library searches with (whitened when fitted)."""
        w = self.whitening
        return np.asarray(x, np.float32) if w is None else w.apply(x)

    def whitening_due(self) -> str | None:
        """Why the whitening should be refitted now (None: it is fine or cannot be fitted)."""
        st = self.settings
        if st.whitening != "pca" or self.shared_space:
            return None
        n = len(self.live_ids("image"))
        return wht.needs_refit(self.whitening, n, self.image_model.model_id, "pca", st.whitening_dim, st.whitening_shrinkage)

    def fit_whitening(self, labels: dict[int, str] | None = None) -> wht.Whitening:
        """Fit (PCA, or learned whitening when ``labels`` maps image ids to labels) on this
        library's own image vectors, store it, and drop the indices that depend on it."""
        if self.shared_space:
            raise ExplorerError("whitening is not used with a shared image-text space (text queries search the image index)")
        mid = self.image_model.model_id
        ids, mat = self.store.load_vectors("image", mid, None)
        st = self.settings
        stamp = {"model_id": mid, "ids": wht.ids_digest(ids)}
        if labels is not None:
            keep = [j for j, i in enumerate(ids.tolist()) if int(i) in labels]
            if len(keep) < wht.MIN_FIT:
                raise ExplorerError(f"learned whitening needs at least {wht.MIN_FIT} labelled indexed images, found {len(keep)}")
            w = wht.fit_lw(mat[keep], [labels[int(ids[j])] for j in keep], st.whitening_shrinkage, st.whitening_dim, stamp)
        else:
            if len(ids) < wht.MIN_FIT:
                raise ExplorerError(f"whitening needs at least {wht.MIN_FIT} indexed images, the library has {len(ids)}")
            w = wht.fit_pca(mat, st.whitening_shrinkage, st.whitening_dim, stamp)
        w.save(self.whitening_path())
        with self._indices_lock:
            self._whitening = (mid, w)
            self._indices.pop("image", None)
            self._indices.pop("fused", None)
        return w

    # -- indices ------------------------------------------------------------------------
    def index(self, mode: str) -> VectorIndex:
        """The ANN index of a mode: ``image``, ``caption`` or ``fused``."""
        with self._indices_lock:
            return self._index_locked(mode)

    def _index_locked(self, mode: str) -> VectorIndex:
        if mode not in self._indices:
            im, tx = self.image_model, self.text_model
            w = self.whitening
            wsrc = {"whitening": w.tag} if w is not None else {}
            if mode == "image":
                vi = VectorIndex(self.dir / "indices", f"image--{slug(im.model_id)}", self.image_dim, {"image": im.model_id, **wsrc})
            elif mode == "caption":
                vi = VectorIndex(self.dir / "indices", f"caption--{slug(tx.model_id)}", tx.dim, {"text": tx.model_id})
            elif mode == "fused":
                dim = im.dim if self.shared_space else self.image_dim + tx.dim
                src = {"image": im.model_id, "text": tx.model_id, "alpha": self.alpha, "weights": "agreement-v1",
                       "agreement_version": self.store.get_meta("agreement_version") or "0", **wsrc}
                vi = VectorIndex(self.dir / "indices", f"fused--{slug(im.model_id)}--{slug(tx.model_id)}", dim, src)
            else:
                raise ExplorerError(f"unknown index mode '{mode}'")
            self._indices[mode] = vi
        return self._indices[mode]

    def _changed(self, mode: str):
        im, tx = self.image_model.model_id, self.text_model.model_id

        def raw(kind: str, model_id: str):
            def changed(seq_high: int):
                with self.store.session() as s:
                    q = select(VectorRow.image_id, VectorRow.dim, VectorRow.data, VectorRow.seq).join(ImageRow).where(
                        VectorRow.kind == kind, VectorRow.model_id == model_id, ImageRow.status == "ok", VectorRow.seq > seq_high)
                    rows = s.execute(q).all()
                if not rows:
                    return np.zeros(0, np.int64), np.zeros((0, 1), np.float32), seq_high
                ids = np.array([r[0] for r in rows], np.int64)
                mat = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), rows[0][1])
                if kind == "image":
                    mat = self.project_image(mat)
                return ids, mat, max(r[3] for r in rows)
            return changed

        if mode == "image":
            return raw("image", im)
        if mode == "caption":
            return raw("caption", tx)

        def fused_changed(seq_high: int):
            with self.store.session() as s:
                q = select(VectorRow.image_id).join(ImageRow).where(
                    ImageRow.status == "ok", VectorRow.seq > seq_high,
                    or_((VectorRow.kind == "image") & (VectorRow.model_id == im), (VectorRow.kind == "caption") & (VectorRow.model_id == tx)))
                ids = sorted(set(s.scalars(q)))
                high = max([seq_high] + [v for v in s.scalars(select(VectorRow.seq).where(VectorRow.seq > seq_high))])
            if not ids:
                return np.zeros(0, np.int64), np.zeros((0, 1), np.float32), high
            gal = self.gallery_vectors(ids)
            vec = fusion.fuse_gallery(gal.image, gal.caption, self.alpha, gal.weights, self.shared_space)
            return gal.ids, vec, high

        return fused_changed

    def live_ids(self, mode: str) -> set[int]:
        im, tx = self.image_model.model_id, self.text_model.model_id
        with self.store.session() as s:
            def ids(kind, model_id):
                return set(s.scalars(select(VectorRow.image_id).join(ImageRow).where(
                    ImageRow.status == "ok", VectorRow.kind == kind, VectorRow.model_id == model_id)))
            if mode == "image":
                return ids("image", im)
            if mode == "caption":
                return ids("caption", tx)
            return ids("image", im) & ids("caption", tx)

    def sync_indices(self, save: bool = True) -> dict[str, SyncReport]:
        reports = {}
        for mode in ("image", "caption", "fused"):
            vi = self.index(mode)
            reports[vi.name] = vi.sync(self._changed(mode), self.live_ids(mode))
            if save:
                vi.save()
        return reports

    def query_agreement(self, image_vec, caption_vec, exclude: set[int] = frozenset()) -> float:
        """Agreement of a query's caption with its image, against this library's neighbourhoods."""
        k = fusion.AGREEMENT_K
        a = [i for i in self.index("image").search(image_vec, k + len(exclude))[0].tolist() if i not in exclude][:k]
        b = [i for i in self.index("caption").search(caption_vec, k + len(exclude))[0].tolist() if i not in exclude][:k]
        return float(fusion.neighbourhood_agreement([a], [b], k)[0])

    def refresh_agreement(self) -> int:
        """Recompute every image's caption agreement from the current indices.

        Neighbourhoods change as a library grows, so this runs at the end of an indexing run
        that changed anything. The fused index depends on it: bumping ``agreement_version``
        in the same transaction makes the next sync rebuild it, also after a crash.
        """
        img, cap = self.index("image"), self.index("caption")
        with img.lock, cap.lock:
            ids = np.array(sorted(img.live_ids() & cap.live_ids()), np.int64)
        if len(ids) < 2:
            return 0
        k = min(fusion.AGREEMENT_K + 1, len(ids))
        agreement = np.zeros(len(ids), np.float32)
        for s in range(0, len(ids), 2048):
            chunk = ids[s:s + 2048]
            with img.lock, cap.lock:
                img.index.set_ef(max(img.ef, k))
                cap.index.set_ef(max(cap.ef, k))
                ni = img.index.knn_query(img.get_vectors(chunk), k=k)[0]
                nc = cap.index.knn_query(cap.get_vectors(chunk), k=k)[0]
            a = [[x for x in row if x != iid][: k - 1] for row, iid in zip(ni.tolist(), chunk.tolist())]
            b = [[x for x in row if x != iid][: k - 1] for row, iid in zip(nc.tolist(), chunk.tolist())]
            agreement[s:s + len(chunk)] = fusion.neighbourhood_agreement(a, b, k - 1)
        with self.store.Session.begin() as s:
            s.execute(update(ImageRow), [{"id": int(i), "caption_agreement": float(a)} for i, a in zip(ids, agreement)])
            ver = int(s.get(Meta, "agreement_version").value) + 1 if s.get(Meta, "agreement_version") else 1
            s.merge(Meta(key="agreement_version", value=str(ver)))
        with self._indices_lock:
            self._indices.pop("fused", None)
        return len(ids)

    def check(self) -> CheckReport:
        """Make database and indices agree; report what had to be repaired."""
        report = CheckReport()
        report.repairs = self.sync_indices(save=True)
        for line in report.lines():
            log.info("consistency check: %s", line)
        return report

    # -- vectors for search and evaluation --------------------------------------------------
    def gallery_vectors(self, image_ids=None) -> "GalleryVectors":
        im, tx = self.image_model.model_id, self.text_model.model_id
        ids_i, mat_i = self.store.load_vectors("image", im, image_ids)
        ids_c, mat_c = self.store.load_vectors("caption", tx, image_ids)
        common = np.intersect1d(ids_i, ids_c)
        mat_i = self.project_image(mat_i[np.searchsorted(ids_i, common)]) if len(common) else np.zeros((0, self.image_dim), np.float32)
        mat_c = mat_c[np.searchsorted(ids_c, common)] if len(common) else np.zeros((0, self.text_model.dim), np.float32)
        weights = np.zeros(len(common), np.float32)
        if len(common):
            with self.store.session() as s:
                caps = {}
                for row in s.scalars(select(CaptionRow).where(CaptionRow.image_id.in_(common.tolist()))):
                    caps.setdefault(row.image_id, []).append(row)
                agreement = dict(s.execute(select(ImageRow.id, ImageRow.caption_agreement).where(ImageRow.id.in_(common.tolist()))).all()) \
                    if len(common) <= 20000 else dict(s.execute(select(ImageRow.id, ImageRow.caption_agreement)).all())
            for j, iid in enumerate(common.tolist()):
                best = min(caps.get(iid, []), key=lambda c: caption_rank(c.source), default=None)
                if best is not None:
                    weights[j] = fusion.caption_weight(best.source, best.confidence, agreement.get(iid))
        return GalleryVectors(common, mat_i, mat_c, weights)

    def close(self) -> None:
        for vi in self._indices.values():
            vi.save()
        self.store.close()


@dataclass
class GalleryVectors:
    ids: np.ndarray
    image: np.ndarray
    caption: np.ndarray
    weights: np.ndarray
