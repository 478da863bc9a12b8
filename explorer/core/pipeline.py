"""Incremental, crash-safe indexing of gallery folders.

Stages, overlapped so the models never wait on the disk:

1. **scan** (``explorer.core.scanning``) the folders (bytes paths, so any file name works; symlink loops and unreadable
   folders are recorded, never followed twice or fatal). A symlink that leads outside the
   folders being indexed is skipped (and counted) unless ``follow_symlinks``: a gallery stays
   inside its roots by default;
2. **plan** (``explorer.core.planning``) against the database: unchanged files are skipped (size + mtime, then the
   content hash when those disagree), changed files are redone under the same image id so
   index entries are replaced, vanished files are removed, and a model change only
   recomputes what that model produces; a file that failed before is reported again without
   retrying it, unless it changed or the failure was about access (permission, vanished file);
3. **decode** in a thread pool (hash + safe decode), a bounded window ahead of the models;
   any failure there is recorded against the file and never stops the run;
4. **model** batches in the calling thread: detect, caption (and OCR when that source is on),
   embed image, embed caption. Captions come from every enabled source
   (``explorer.core.captions``): sidecar, captions file and embedded metadata (person-written,
   read in the plan on every run), file and folder names (plan), the captioner and OCR
   (pixels). Each is stored as its own row with its source; the active caption that is
   embedded is ``captions.sources.compose`` of them. A change of sources (setting
   ``caption_sources``) only re-embeds captions: images are not decoded again unless OCR
   has to read them;
5. **commit** one transaction per batch (rows, captions, detections, vectors together) and
   sync the hnswlib indices every few seconds and at the end.

A process killed anywhere leaves every image either fully committed or untouched; the next
``Library.check`` makes the indices agree with the database again. A run holds the library's
writer lock from start to end (a second writer gets ``LibraryBusy``); a run that ends in an
error is recorded as ``failed``, and one killed outright is marked ``interrupted`` by the next
writer. User captions from files are bounded like edits (``MAX_CAPTION_CHARS``).

This module owns the run (stages 3 to 5, the writer lock, the run record) and re-exports the
scan and plan names it used to hold (``scan``, ``Work``, ``caption_to_embed``...).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .captions import CaptionsFile
from .captions.sources import COMPOSE_RULE, EXTRA_SOURCES, GENERATED, OCR, REREAD_USER_SOURCES
from .errors import BadImage
from .imageio import LoadedImage, load_image
from .library import Library
from .models.base import Caption, Detection
from .planning import RETRY_ERRORS, Planner, Work, caption_to_embed
from .scanning import MAX_NAME_DISPLAY, Failure, ScanResult, display, resolve_roots, scan
from .store import IndexedImage

HASH_CHUNK = 1 << 20


def content_hash(path: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# progress and results


@dataclass
class Progress:
    phase: str  # scanning, indexing, saving, done
    done: int = 0
    total: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    current: str = ""

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass
class IndexSummary:
    scanned: int = 0
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    failures: list[Failure] = field(default_factory=list)
    cancelled: bool = False
    elapsed: float = 0.0
    repairs: list[str] = field(default_factory=list)
    #: things that did not stop an image from being indexed, e.g. malformed metadata that was ignored
    notes: list[Failure] = field(default_factory=list)
    #: symlinks skipped because they lead outside the indexed folders (see ``follow_symlinks``)
    outside_links: int = 0
    #: set when this run (re)fitted the library's whitening: why and what
    whitening: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and not self.cancelled

    def to_dict(self) -> dict:
        return {
            "scanned": self.scanned, "indexed": self.indexed, "unchanged": self.unchanged, "removed": self.removed,
            "failed": len(self.failures), "cancelled": self.cancelled, "elapsed_s": round(self.elapsed, 2),
            "failures": [f.__dict__ for f in self.failures], "repairs": self.repairs,
            "notes": [f.__dict__ for f in self.notes],
            "outside_links": self.outside_links,
            "whitening": self.whitening,
        }


# ---------------------------------------------------------------------------------------
# the end of a run


def save_run(lib, summary: "IndexSummary") -> None:
    """The end of an indexing run (local or Ray): save the indices, refit the whitening when it is
    due, and refresh caption agreement when neighbourhoods changed (or a kill interrupted the last
    refresh); ``summary.whitening`` says what was refitted."""
    lib.sync_indices(save=True)
    refit = None if summary.cancelled else lib.whitening_due()
    if refit:  # whitening is fitted on the library's own vectors (explorer.core.whitening)
        w = lib.fit_whitening()
        summary.whitening = f"whitening refitted ({refit}): {w.kind}, {w.stamp['n']} vectors, {w.out_dim}-d"
        lib.sync_indices(save=True)
    if summary.indexed or summary.removed or refit or lib.agreement_stale():
        lib.refresh_agreement()
        lib.sync_indices(save=True)
    if not summary.cancelled and lib.store.get_meta("caption_rule") != COMPOSE_RULE:
        lib.store.set_meta("caption_rule", COMPOSE_RULE)  # this run's folders were re-embedded under the rule


@dataclass
class Decoded:
    work: Work
    loaded: LoadedImage | None = None
    digest: str | None = None
    error: str | None = None


class Indexer:
    """Indexes folders into a ``Library``. ``run`` is blocking; call it from a worker thread in the GUI."""

    def __init__(
        self,
        library: Library,
        captions_file: CaptionsFile | None = None,
        batch_size: int = 16,
        decode_workers: int | None = None,
        sync_every_s: float = 20.0,
        follow_symlinks: bool = False,
    ):
        self.lib = library
        self.captions_file = captions_file
        self.batch_size = batch_size
        self.decode_workers = decode_workers or max(2, min(4, os.cpu_count() or 2))
        self.sync_every_s = sync_every_s
        self.sources = tuple(library.settings.caption_sources)
        self._ocr = None
        self.follow_symlinks = follow_symlinks

    # -- the models ------------------------------------------------------------------------
    def _models(self):
        ld = self.lib.loader
        return ld.get("detector"), ld.get("captioner"), ld.get("image"), ld.get("text")

    def _ocr_reader(self):
        if self._ocr is None:
            from .captions.ocr import OcrReader

            self._ocr = OcrReader()
        return self._ocr

    # -- planning ----------------------------------------------------------------------------
    def plan(self, result: ScanResult, roots: list[bytes], summary: IndexSummary) -> list[Work]:
        """What to (re)do for each scanned file (``planning.Planner``); removes vanished files."""
        return Planner(self.lib, self.sources, self.captions_file).plan(result, roots, summary, self._models())

    # -- decoding --------------------------------------------------------------------------------
    @staticmethod
    def decode(w: Work) -> Decoded:
        """Hash (new or touched files) and decode (when any model needs pixels); runs in the pool."""
        d = Decoded(w)
        try:
            if w.full or w.verify_hash is not None:
                d.digest = content_hash(w.path)
            if w.verify_hash is not None and d.digest != w.verify_hash:
                w.full = True  # the content really changed: redo everything under the same id
            if w.needs_pixels:
                d.loaded = load_image(w.path)
        except BadImage as e:
            d.error = str(e)
        except PermissionError:
            d.error = "permission denied"
        except OSError as e:
            d.error = f"cannot read file: {e.strerror or e}"
        except Exception as e:  # noqa: BLE001 - one unreadable file must never stop the run
            d.error = f"cannot decode: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return d

    # -- running -------------------------------------------------------------------------------------
    def run(
        self,
        folders: list[str | os.PathLike],
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        wait: bool | float = False,
    ) -> IndexSummary:
        """Index ``folders`` holding the library's writer lock (``LibraryBusy`` if another process
        writes, unless ``wait``)."""
        with self.lib.writing("indexing", wait=wait):
            return self._run(folders, progress, cancel)

    def _run(self, folders, progress, cancel) -> IndexSummary:
        t0 = time.monotonic()
        cancel = cancel or threading.Event()
        summary = IndexSummary()
        emit = progress or (lambda p: None)
        roots = resolve_roots(folders)
        emit(Progress("loading models"))
        detector, captioner, image_enc, text_enc = self._models()
        self._record_models()
        summary.repairs = self.lib.check().lines()
        emit(Progress("scanning", elapsed=time.monotonic() - t0))
        result = scan(roots, cancel, self.follow_symlinks)
        summary.scanned = len(result.files)
        summary.outside_links = len(result.outside_links)
        run_id = self._start_run(roots)
        todo = self.plan(result, roots, summary)
        prog = Progress("indexing", total=len(todo), skipped=summary.unchanged, failed=len(summary.failures))
        last_sync = time.monotonic()
        t_index = time.monotonic()
        failed = True
        try:
            for batch in self._decoded_batches(todo, cancel):
                self._process(batch, summary, detector, captioner, image_enc, text_enc)
                prog.done += len(batch)
                prog.failed = len(summary.failures)
                prog.elapsed = time.monotonic() - t_index
                prog.current = display(batch[-1].work.path)
                emit(prog)
                if time.monotonic() - last_sync > self.sync_every_s:
                    self.lib.sync_indices(save=True)
                    last_sync = time.monotonic()
                if cancel.is_set():
                    break
            failed = False
        finally:
            self._end_run(run_id, summary, prog, emit, cancel.is_set(), t0, failed)
        emit(Progress("done", prog.done, prog.total, prog.failed, prog.skipped, prog.elapsed))
        return summary

    def _end_run(self, run_id, summary: "IndexSummary", prog: "Progress", emit, cancelled: bool, t0: float, failed: bool) -> None:
        """The end of a run, whatever stopped it (this indexer's or the Ray engine's): ``save_run``,
        then the run record with the elapsed time; a save that fails marks the run failed."""
        summary.cancelled = cancelled
        emit(Progress("saving", prog.done, prog.total, prog.failed, prog.skipped, prog.elapsed))
        try:
            save_run(self.lib, summary)
        except BaseException:
            failed = True
            raise
        finally:
            summary.elapsed = time.monotonic() - t0
            self._finish_run(run_id, summary, failed)

    def _decoded_batches(self, todo: list[Work], cancel: threading.Event) -> Iterator[list[Decoded]]:
        """Decode ahead in a pool, yield batches in order; the window bounds memory."""
        window = self.batch_size * 3
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode") as pool:
            pending: deque[Future] = deque()
            it = iter(todo)
            batch: list[Decoded] = []
            while True:
                while len(pending) < window and not cancel.is_set():
                    w = next(it, None)
                    if w is None:
                        break
                    pending.append(pool.submit(self.decode, w))
                if not pending:
                    break
                batch.append(pending.popleft().result())
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
                    if cancel.is_set():
                        for f in pending:
                            f.cancel()
                        return
            if batch:
                yield batch

    def _process(self, batch: list[Decoded], summary: IndexSummary, detector, captioner, image_enc, text_enc) -> None:
        good = [d for d in batch if d.error is None]
        pix = [d for d in good if d.loaded is not None]
        errors: dict[int, str] = {}

        def guarded(fn, items, what):
            """Run a model on a batch; if the batch fails, retry image by image to isolate the bad one."""
            if not items:
                return []
            try:
                return fn([x for _, x in items])
            except Exception:  # noqa: BLE001 - a model failure on one image must not stop the run
                out = []
                for key, x in items:
                    try:
                        out.append(fn([x])[0])
                    except Exception as e:  # noqa: BLE001
                        errors[key] = f"{what} failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                        out.append(None)
                return out

        dets: dict[int, list[Detection]] = {}
        need_det = [(id(d), d.loaded.image) for d in pix if d.work.needs("detect")]
        for (key, _), r in zip(need_det, guarded(detector.detect, need_det, "detector")):
            if r is not None:
                dets[key] = r
        caps: dict[int, Caption] = {}
        need_cap = [d for d in pix if d.work.user_caption is None and d.work.needs("caption")]
        if need_cap:
            stored = self._stored_detections([d for d in need_cap if id(d) not in dets])
            items = [(id(d), d.loaded.image) for d in need_cap]
            # stored boxes are in original pixels; the captioner works on the decoded (smaller) image
            det_lists = [dets[id(d)] if id(d) in dets else
                         [Detection(x.label, x.score, tuple(v / d.loaded.scale for v in x.box)) for x in stored.get(d.work.image_id, [])]
                         for d in need_cap]
            try:
                res = captioner.caption([x for _, x in items], det_lists)
            except Exception:  # noqa: BLE001
                res = guarded(lambda ims: captioner.caption(ims, None), items, "captioner")
            for (key, _), c in zip(items, res):
                if c is not None:
                    caps[key] = c
        ocrs: dict[int, Caption] = {}
        if OCR in self.sources:
            need_ocr = [(id(d), d.loaded.image) for d in pix if d.work.user_caption is None and (d.work.ocr or d.work.full)]
            if need_ocr:
                reader = self._ocr_reader()
                for (key, _), c in zip(need_ocr, guarded(lambda ims: [reader.read(im) for im in ims], need_ocr, OCR)):
                    if c is not None:
                        ocrs[key] = c
        img_vecs: dict[int, np.ndarray] = {}
        need_img = [(id(d), d.loaded.image) for d in pix if d.work.needs("image")]
        if need_img:
            res = guarded(lambda ims: list(image_enc.embed_images(ims)), need_img, "image encoder")
            for (key, _), v in zip(need_img, res):
                if v is not None:
                    img_vecs[key] = v
        # the caption to embed is the most trusted one after this batch's changes
        texts: dict[int, Caption] = {}
        stored_caps = self._stored_captions([d.work.image_id for d in good if d.work.image_id is not None])
        for d in good:
            if id(d) in errors:
                continue
            active = caption_to_embed(d.work, stored_caps.get(d.work.image_id, {}), caps.get(id(d)), ocrs.get(id(d)), self.sources)
            if active is not None:
                texts[id(d)] = active
        txt_vecs: dict[int, np.ndarray] = {}
        if texts:
            keys = list(texts)
            res = guarded(lambda ts: list(text_enc.embed_texts(ts)), [(k, texts[k].text) for k in keys], "text encoder")
            for k, v in zip(keys, res):
                if v is not None:
                    txt_vecs[k] = v
        self._commit(batch, errors, dets, caps, img_vecs, texts, txt_vecs, summary, detector.model_id, image_enc.model_id, text_enc.model_id, ocrs)

    def _stored_detections(self, decoded: list[Decoded]) -> dict[int, list[Detection]]:
        ids = [d.work.image_id for d in decoded if d.work.image_id is not None]
        if not ids:
            return {}
        return {iid: [Detection(label, score, box) for label, score, box in dets]
                for iid, dets in self.lib.catalog.detections(ids).items() if dets}

    def _stored_captions(self, ids: list[int]) -> dict[int, dict[str, Caption]]:
        if not ids:
            return {}
        return self.lib.catalog.captions_by_source(ids)

    def _commit(self, batch, errors, dets, caps, img_vecs, texts, txt_vecs, summary, det_id, img_id, txt_id, ocrs=None) -> None:
        """Write a batch in one transaction (``Store.write_index_batch``) and count it in ``summary``."""
        ocrs = ocrs or {}
        items: list[IndexedImage] = []
        for d in batch:
            w, key = d.work, id(d)
            it = IndexedImage(w.image_id, w.path, display(w.path), display(os.path.dirname(w.path)), w.st.st_size, w.st.st_mtime_ns)
            items.append(it)
            err = d.error or errors.get(key)
            if err:
                it.error = err
                summary.failures.append(Failure(display(w.path), err))
                continue
            it.content_hash = d.digest
            if d.loaded is not None:
                it.width, it.height = d.loaded.width, d.loaded.height
            if key in dets:
                scale = d.loaded.scale
                it.detector_model = det_id
                it.detections = [(det.label, det.score, tuple(v * scale for v in det.box)) for det in dets[key]]
            write = [(GENERATED, caps.get(key)), (OCR, ocrs.get(key))] + list(w.user_captions.items()) + list(w.extras.items())
            it.captions = [(source, cap.text, cap.model_id, cap.confidence) for source, cap in write if cap is not None]
            # person-written captions and file-name words whose file text went away, and switched-off sources
            gone = [src for src in REREAD_USER_SOURCES if src not in w.user_captions]
            gone += [src for src in EXTRA_SOURCES if src != OCR and src not in w.extras]
            if OCR not in self.sources:
                gone.append(OCR)
            it.drop_sources = gone
            it.vectors = [(kind, model_id, vec) for kind, model_id, vec in
                          (("image", img_id, img_vecs.get(key)), ("caption", txt_id, txt_vecs.get(key))) if vec is not None]
            if w.full or key in dets or key in caps or key in img_vecs or key in txt_vecs or key in ocrs:
                summary.indexed += 1
            else:  # e.g. touched: the hash showed the same bytes, nothing was recomputed
                summary.unchanged += 1
        self.lib.store.write_index_batch(items)

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _record_models(self) -> None:
        models = [self.lib.loader.get(role) for role in ("image", "text", "captioner", "detector")]
        self.lib.store.record_models([(m.model_id, role, getattr(m, "dim", None), getattr(m, "weights_path", None))
                                      for role, m in zip(("image", "text", "captioner", "detector"), models)])

    def _start_run(self, roots: list[bytes]) -> int:
        return self.lib.store.start_run(json.dumps([display(r) for r in roots]), json.dumps(self.lib.settings.to_dict()))

    def _finish_run(self, run_id: int, summary: IndexSummary, failed: bool = False) -> None:
        status = "cancelled" if summary.cancelled else "failed" if failed else "done"
        try:
            self.lib.store.finish_run(run_id, status, summary.indexed, summary.unchanged, len(summary.failures), summary.removed)
        except Exception:  # noqa: BLE001 - e.g. a full disk: the next writer marks the run interrupted
            if not failed:
                raise


__all__ = ["HASH_CHUNK", "MAX_NAME_DISPLAY", "RETRY_ERRORS", "Decoded", "Failure", "IndexSummary", "Indexer", "Progress",
           "ScanResult", "Work", "caption_to_embed", "content_hash", "display", "resolve_roots", "save_run", "scan"]
