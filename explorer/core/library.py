"""A library: one folder holding the database, the ANN indices and caches.

``Library.check`` (run by the indexer, the searcher and ``explorer check``) makes the indices
agree with the database: each index is synced against the stored vectors (adding what is
missing, deleting what is gone, rebuilding a missing, damaged or foreign index file), a
sample of each index's vectors is compared with the stored ones (all of them with ``full``),
and what was repaired is reported. Damaged stored vectors (NaN, wrong length) are refused
with a reason, and ``verify_db`` runs SQLite's own ``quick_check`` / ``integrity_check``.

**Writers and readers.** Only the holder of the writer lock (``Library.writing``, see
``lock.py``) writes: repairs made by a reader (search, evaluation) stay in memory, so a
library on read-only media can be searched. ``writing`` also marks run rows left ``running``
by a killed writer as ``interrupted``.

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
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import fusion, whitening as wht
from .config import Settings
from .errors import ExplorerError, LibraryCorrupt
from .index import NO_INDEX_FILE, SyncReport
from .modes import CAPTION, FUSED, IMAGE, INDEXED
from .lock import LibraryBusy, LibraryReadOnly, WriterLock
from .models.registry import ModelLoader
from .captions.sources import compose
from .catalog import Catalog
from .store import Store, valid_vector_rows

#: vectors per index compared with the database by every check (``full`` compares all)
CHECK_SAMPLE = 32
#: up to this many images, caption agreement uses exact neighbours (above: ANN candidates re-scored exactly)
EXACT_AGREEMENT_MAX = 5000
from .vectorstore import VectorStore, check_backend, open_store
from .vectorstore.base import canonical_top, fetch_k

log = logging.getLogger(__name__)


def slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]


@dataclass
class CheckReport:
    repairs: dict[str, SyncReport] = field(default_factory=dict)
    removed_orphans: int = 0
    #: vectors compared with the database, per index name
    compared: dict[str, int] = field(default_factory=dict)
    #: whether the repairs were saved (only a writer saves; a reader repairs in memory)
    saved: bool = False

    def lines(self) -> list[str]:
        # an index that is merely not written yet (nothing stored for it) is not a repair
        out = [f"index {name}: {r}" for name, r in self.repairs.items()
               if r.added or r.deleted or r.refused or (r.rebuilt and r.reason != NO_INDEX_FILE)]
        if self.removed_orphans:
            out.append(f"removed {self.removed_orphans} incomplete image rows")
        return out

    @property
    def refused(self) -> int:
        return sum(len(r.refused) for r in self.repairs.values())


class Library:
    """Database + indices for one set of models (image encoder, text encoder)."""

    def __init__(self, directory: str | Path, settings: Settings, loader: ModelLoader | None = None):
        self.dir = Path(directory).expanduser().resolve()
        self.settings = settings
        self.loader = loader or ModelLoader(settings)
        check_backend(settings.vector_store)
        try:
            self.store = Store(self.dir)
        except Exception as e:  # noqa: BLE001 - e.g. a read-only folder or a corrupt database
            raise ExplorerError(f"cannot open library at {self.dir}: {str(e).splitlines()[0]}") from None
        self.catalog = Catalog(self.store)
        self._indices: dict[str, VectorStore] = {}
        self._indices_lock = threading.RLock()  # GUI workers may ask for an index at the same time
        self.writer_lock = WriterLock(self.dir)
        self._whitening: tuple[str, wht.Whitening | None] | None = None  # (model id, loaded whitening)

    # -- writing ----------------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return self.store.read_only

    @property
    def is_writer(self) -> bool:
        """Whether this process holds the library's writer lock (only then is anything saved)."""
        return self.writer_lock.held

    @contextmanager
    def writing(self, purpose: str = "writing", wait: bool | float = False, on_wait=None):
        """Hold the writer lock for a block (re-entrant); ``LibraryBusy`` if another process writes."""
        if self.read_only:
            raise LibraryReadOnly(f"library at {self.dir} is read-only: it can be searched but not changed")
        first = not self.writer_lock.held
        self.writer_lock.acquire(purpose, wait, on_wait)
        try:
            if first:
                self._mark_interrupted_runs()
            yield self
        finally:
            self.writer_lock.release()

    def _mark_interrupted_runs(self) -> None:
        """No other writer is alive now, so a run row still ``running`` belongs to a killed process."""
        self.store.mark_running_runs("interrupted")

    # -- the fused index's build alpha -------------------------------------------------------
    @property
    def fused_index_alpha(self) -> float:
        """The α the fused ANN index is built with (``fusion.DEFAULT_ALPHA``; fixed, read-only).

        It decides the stored fused vectors and so which candidates a fused search fetches;
        a query's own α (the slider) only re-scores those candidates exactly. Changing it means
        rebuilding the index: the value is part of the index's source stamp."""
        return fusion.DEFAULT_ALPHA

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
        n = len(self.live_ids(IMAGE))
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
            self._indices.pop(FUSED, None)
        return w

    # -- indices ------------------------------------------------------------------------
    def index(self, mode: str) -> VectorStore:
        """The ANN index of a mode: ``image``, ``caption`` or ``fused`` (backend: ``settings.vector_store``)."""
        with self._indices_lock:
            return self._index_locked(mode)

    def _index_locked(self, mode: str) -> VectorStore:
        if mode not in self._indices:
            im, tx = self.image_model, self.text_model

            def store(directory, name, dim, source):  # the configured backend's store
                return open_store(self.settings.vector_store, directory, name, dim, source, uri=self.settings.vector_store_uri)

            lib_id = self.store.library_id  # an index built for another library, or before the counters, is rebuilt
            w = self.whitening
            wsrc = {"whitening": w.tag} if w is not None else {}
            if mode == IMAGE:
                vi = store(self.dir / "indices", f"image--{slug(im.model_id)}", self.image_dim, {"image": im.model_id, "library": lib_id, **wsrc})
            elif mode == CAPTION:
                vi = store(self.dir / "indices", f"caption--{slug(tx.model_id)}", tx.dim, {"text": tx.model_id, "library": lib_id})
            elif mode == FUSED:
                dim = im.dim if self.shared_space else self.image_dim + tx.dim
                src = {"image": im.model_id, "text": tx.model_id, "alpha": self.fused_index_alpha, "weights": fusion.WEIGHT_RULE,
                       "agreement_version": self.store.get_meta("agreement_version") or "0", "library": lib_id, **wsrc}
                vi = store(self.dir / "indices", f"fused--{slug(im.model_id)}--{slug(tx.model_id)}", dim, src)
            else:
                raise ExplorerError(f"unknown index mode '{mode}'")
            self._indices[mode] = vi
        return self._indices[mode]

    def _changed(self, mode: str):
        im, tx = self.image_model.model_id, self.text_model.model_id

        def raw(kind: str, model_id: str, dim: int):
            def changed(seq_high: int):
                rows = self.catalog.vectors_since(kind, model_id, seq_high)
                high = max([seq_high] + [r[3] for r in rows])
                rows, refused = valid_vector_rows(rows, dim)
                if not rows:
                    return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), high, refused
                ids = np.array([r[0] for r in rows], np.int64)
                mat = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), dim)
                if kind == "image":
                    mat = self.project_image(mat)
                return ids, mat, high, refused
            return changed

        if mode == IMAGE:
            return raw("image", im, self.image_model.dim)
        if mode == CAPTION:
            return raw("caption", tx, self.text_model.dim)

        def fused_changed(seq_high: int):
            ids = self.catalog.pair_ids_since(im, tx, seq_high)
            high = self.catalog.highest_seq_since(seq_high)
            if not ids:
                return np.zeros(0, np.int64), np.zeros((0, 1), np.float32), high
            gal = self.gallery_vectors(ids)
            vec = fusion.fuse_gallery(gal.image, gal.caption, self.fused_index_alpha, gal.weights, self.shared_space)
            # images with both vectors stored whose image or caption vector was refused as damaged
            lost = (set(ids) - set(gal.ids.tolist())) & self.live_ids(FUSED) if len(gal.ids) < len(ids) else set()
            refused = {int(i): "a damaged image or caption vector" for i in lost}
            return gal.ids, vec, high, refused

        return fused_changed

    def live_ids(self, mode: str) -> set[int]:
        im, tx = self.image_model.model_id, self.text_model.model_id
        ids = self.catalog.ok_vector_ids
        if mode == IMAGE:
            return ids("image", im)
        if mode == CAPTION:
            return ids("caption", tx)
        return ids("image", im) & ids("caption", tx)

    def reload(self) -> None:
        """Another process wrote this library (the window's indexing worker): drop the indices and the
        whitening held in memory and open what that process saved, synced with the database (a
        reader's sync: nothing is written). Other threads asking for an index meanwhile wait."""
        with self._indices_lock:
            self._indices.clear()
            self._whitening = None
            self.sync_indices(save=False)

    def sync_indices(self, save: bool = True) -> dict[str, SyncReport]:
        """Sync the three indices with the database; ``save`` writes changed ones, but only when
        this process is the writer (a reader's repairs stay in memory)."""
        reports = {}
        db_high = self.store.seq_high()
        for mode in INDEXED:
            vi = self.index(mode)
            reports[vi.name] = vi.sync(self._changed(mode), self.live_ids(mode), db_high)
        if save:
            self.save_indices()
        return reports

    def save_indices(self) -> bool:
        """Write changed indices when this process holds the writer lock; returns whether it may save."""
        if not self.is_writer:
            return False
        for vi in list(self._indices.values()):
            vi.save()
        return True

    def compare_index(self, mode: str, sample: int | None = CHECK_SAMPLE) -> tuple[int, int]:
        """Compare an index's vectors with what the database says they should be.

        Returns (compared, differing). ``sample=None`` compares every vector. A deleted image's id
        handed to a new image, or a garbled index that still loads, shows up here."""
        vi = self.index(mode)
        with vi.lock:
            ids = np.array(sorted(vi.live_ids()), np.int64)
        if not len(ids):  # also a reset (not yet rebuilt) index
            return 0, 0
        if sample is not None and len(ids) > sample:
            rng = np.random.default_rng(int(self.store.seq_high()))
            ids = np.sort(rng.choice(ids, sample, replace=False))
        differ = compared = 0
        for s in range(0, len(ids), 4096):
            chunk = ids[s:s + 4096]
            if mode == FUSED:
                gal = self.gallery_vectors(chunk.tolist())
                want_ids, want = gal.ids, fusion.fuse_gallery(gal.image, gal.caption, self.fused_index_alpha, gal.weights, self.shared_space)
            else:
                kind, model = ("image", self.image_model.model_id) if mode == IMAGE else ("caption", self.text_model.model_id)
                want_ids, want = self.store.load_vectors(kind, model, chunk.tolist())
                if mode == IMAGE and len(want_ids):
                    want = self.project_image(np.asarray(want, np.float32))  # the index holds whitened vectors
            if not len(want_ids):
                continue
            have = vi.get_vectors(want_ids)
            bad = ~np.isclose(have, np.asarray(want, np.float32), rtol=1e-4, atol=1e-5).all(axis=1)
            differ += int(bad.sum()) + len(chunk) - len(want_ids)
            compared += len(chunk)
        return compared, differ

    def query_agreement(self, image_vec, caption_vec, exclude: set[int] = frozenset()) -> float:
        """Agreement of a query's caption with its image, against this library's neighbourhoods."""
        k = fusion.AGREEMENT_K

        def top(index, vec):  # ties broken by id, so every vector-store backend gives the same list
            m = k + len(exclude)
            return [i for i in canonical_top(*index.search(vec, fetch_k(m, len(index))), m)[0].tolist()
                    if i >= 0 and i not in exclude][:k]

        a, b = top(self.index(IMAGE), image_vec), top(self.index(CAPTION), caption_vec)
        return float(fusion.neighbourhood_agreement([a], [b], k)[0])

    def agreement_stamp(self) -> str:
        """A digest of everything caption agreement is computed from (which images, which image
        and caption vectors, which models, k). Stored with the agreement values in one transaction:
        when it differs, the stored agreement is stale (e.g. a kill inside ``refresh_agreement``)."""
        im, tx = self.image_model.model_id, self.text_model.model_id
        crc = zlib.crc32(f"{im}\0{tx}\0{fusion.AGREEMENT_K}\0v2".encode())
        rows = self.catalog.pair_vector_seqs(im, tx)
        arr = np.array([(r[0], 0 if r[1] == "image" else 1, r[2]) for r in rows], np.int64)
        return f"{zlib.crc32(arr.tobytes(), crc):08x}-{len(rows)}"

    def agreement_stale(self) -> bool:
        return self.store.get_meta("agreement_stamp") != self.agreement_stamp()

    def _ordered_neighbours(self, vi: VectorStore, ids: np.ndarray, tie_rank: np.ndarray, k: int) -> list[list[int]]:
        """Each id's ``k`` nearest other ids, deterministic: scores are exact inner products of the
        stored vectors rounded to 1e-5, ties broken by path order (so equal captions give the
        same neighbours whatever the index's insertion order). Exact over all images up to
        ``EXACT_AGREEMENT_MAX``; above, over ANN candidates (4k per image) re-scored exactly."""
        out: list[list[int]] = []
        n = len(ids)
        exact = n <= EXACT_AGREEMENT_MAX
        with vi.lock:
            allv = vi.get_vectors(ids) if exact else None
        for s in range(0, n, 1024):
            chunk = ids[s:s + 1024]
            if exact:
                scores = allv[s:s + len(chunk)] @ allv.T
                cand = np.broadcast_to(np.arange(n), scores.shape)
            else:
                kk = min(n, 4 * k + 1)
                with vi.lock:
                    cand_ids = vi.neighbours(chunk, kk).astype(np.int64)  # any backend; rows padded with -1
                    cand_ids = np.where(cand_ids < 0, chunk[:, None], cand_ids)  # padding -> self, dropped below
                    q = vi.get_vectors(chunk)
                    cv = vi.get_vectors(cand_ids.reshape(-1)).reshape(len(chunk), kk, -1)
                scores = np.einsum("nd,nkd->nk", q, cv)
                cand = np.searchsorted(ids, cand_ids)
            scores = np.round(scores.astype(np.float64), 5)
            for r in range(len(chunk)):
                row, c = scores[r], cand[r]
                keep = c != s + r
                row, c = row[keep], c[keep]
                order = np.lexsort((tie_rank[c], -row))[:k]
                out.append(ids[c[order]].tolist())
        return out

    def refresh_agreement(self) -> int:
        """Recompute every image's caption agreement from the current indices.

        Neighbourhoods change as a library grows, so this runs at the end of an indexing run
        that changed anything, and whenever ``agreement_stale`` says its inputs changed since it
        was last computed. The fused index depends on it: bumping ``agreement_version`` (and the
        stamp) in the same transaction makes the next sync rebuild it, also after a crash.
        """
        img, cap = self.index(IMAGE), self.index(CAPTION)
        stamp = self.agreement_stamp()
        with img.lock, cap.lock:
            ids = np.array(sorted(img.live_ids() & cap.live_ids()), np.int64)
        if len(ids) < 2:
            return 0
        keys = self.catalog.path_keys(ids.tolist())
        by_path = sorted(range(len(ids)), key=lambda j: keys.get(int(ids[j]), b""))
        tie_rank = np.empty(len(ids), np.int64)
        tie_rank[by_path] = np.arange(len(ids))
        k = min(fusion.AGREEMENT_K, len(ids) - 1)
        a = self._ordered_neighbours(img, ids, tie_rank, k)
        b = self._ordered_neighbours(cap, ids, tie_rank, k)
        agreement = fusion.neighbourhood_agreement(a, b, k)
        self.store.write_agreement(ids, agreement, stamp)
        with self._indices_lock:
            self._indices.pop(FUSED, None)
        return len(ids)

    def check(self, full: bool = False, verify_db: bool = False, sample: int | None = CHECK_SAMPLE,
              save: bool = True) -> CheckReport:
        """Make database and indices agree; report what had to be repaired.

        ``verify_db`` first runs SQLite's ``quick_check`` (``integrity_check`` with ``full``) and
        raises ``LibraryCorrupt`` (changing nothing) if the database is damaged. Each index is
        synced, then ``sample`` of its vectors (all with ``full``) are compared with the stored
        ones; an index that differs is rebuilt. With ``save`` the repairs are written, taking the
        writer lock for that if no other process holds it; readers (search) pass ``save=False``
        and repair in memory only, as does any check of a read-only or busy library.
        """
        if verify_db:
            problems = self.store.integrity_check(full)
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise LibraryCorrupt(f"the library database {self.store.path} is damaged: {problems[0]}{more}; "
                                     "indices were left as they are. Restore library.sqlite from a backup")
        report = CheckReport()
        report.repairs = self.sync_indices(save=False)
        for mode in INDEXED:
            vi = self.index(mode)
            compared, differ = self.compare_index(mode, None if full else sample)
            report.compared[vi.name] = compared
            if differ:
                r = report.repairs[vi.name]
                vi.reset(r, f"{differ} of {compared} compared vectors differ from the database")
                again = vi.sync(self._changed(mode), self.live_ids(mode))
                r.added, r.deleted, r.refused = again.added, 0, again.refused
        if save and not self.read_only:
            try:
                with self.writing("checking"):
                    report.saved = self.save_indices()
            except LibraryBusy as e:
                log.info("repairs kept in memory: %s", e)
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
            caps = self.catalog.captions_by_source(common.tolist())
            agreement = self.catalog.caption_agreements(common.tolist())
            for j, iid in enumerate(common.tolist()):
                best = compose(caps.get(iid, {}))
                if best is not None:
                    weights[j] = fusion.caption_weight(best.source, best.confidence, agreement.get(iid))
        return GalleryVectors(common, mat_i, mat_c, weights)

    def close(self) -> None:
        """Save changed indices if this process is the writer; a reader writes nothing."""
        try:
            self.save_indices()
        finally:
            self.store.close()


@dataclass
class GalleryVectors:
    ids: np.ndarray
    image: np.ndarray
    caption: np.ndarray
    weights: np.ndarray
