"""Incremental, crash-safe indexing of gallery folders.

Stages, overlapped so the models never wait on the disk:

1. **scan** the folders (bytes paths, so any file name works; symlink loops and unreadable
   folders are recorded, never followed twice or fatal). A symlink that leads outside the
   folders being indexed is skipped (and counted) unless ``follow_symlinks``: a gallery stays
   inside its roots by default;
2. **plan** against the database: unchanged files are skipped (size + mtime, then the
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
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from sqlalchemy import delete, select

from .captions import CaptionsFile, metadata_caption, name_captions, read_sidecar
from .captions.sources import COMPOSE_RULE, EXTRA_SOURCES, REREAD_USER_SOURCES, compose
from .edits import MAX_CAPTION_CHARS
from .errors import BadImage, ExplorerError
from .imageio import LoadedImage, is_image_path, load_image
from .library import Library
from .models.base import Caption, Detection
from .store import CaptionRow, DetectionRow, ImageRow, ModelRow, RunRow, VectorRow

HASH_CHUNK = 1 << 20
#: Failures about access rather than content (a chmod or a file being replaced does not change the
#: size or mtime): such files are retried on every run, unlike files whose bytes are bad.
RETRY_ERRORS = ("permission denied", "cannot read", "file not found")
MAX_NAME_DISPLAY = 4096


def content_hash(path: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def display(path: bytes) -> str:
    return path.decode("utf-8", "replace")[:MAX_NAME_DISPLAY]


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
class Failure:
    path: str
    reason: str


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
# scanning


@dataclass
class ScanResult:
    files: list[tuple[bytes, os.stat_result]] = field(default_factory=list)
    sidecars: set[bytes] = field(default_factory=set)
    problems: list[Failure] = field(default_factory=list)
    #: folders that could not be listed: files below them must not be treated as deleted
    unreadable: list[bytes] = field(default_factory=list)
    #: symlinks not followed because they lead outside every root
    outside_links: list[bytes] = field(default_factory=list)


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


def resolve_roots(folders) -> list[bytes]:
    """The folders to index as real paths (OS bytes); a missing or unreadable one is a one-line error."""
    roots = []
    for f in folders:
        b = os.fsencode(os.path.realpath(os.path.expanduser(os.fsdecode(f) if isinstance(f, bytes) else str(f))))
        if not os.path.isdir(b):
            raise ExplorerError(f"not a folder: {display(b)}")
        if not os.access(b, os.R_OK | os.X_OK):
            raise ExplorerError(f"folder is not readable (permission denied): {display(b)}")
        roots.append(b)
    return roots


def _inside(path: bytes, roots: list[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def scan(roots: list[bytes], cancel: threading.Event | None = None, follow_symlinks: bool = False) -> ScanResult:
    """Walk ``roots`` recursively; follows symlinks (files and folders) but never visits a folder
    twice. Unless ``follow_symlinks``, a symlink whose target lies outside every root is skipped
    and listed in ``outside_links``: indexing a folder never pulls in files from elsewhere."""
    res = ScanResult()
    real_roots = [os.path.realpath(r) for r in roots]
    seen_dirs: set[tuple[int, int]] = set()
    stack = list(reversed(roots))
    while stack:
        if cancel is not None and cancel.is_set():
            break
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError as e:
            res.problems.append(Failure(display(d), f"cannot open folder: {e.strerror}"))
            res.unreadable.append(d)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue  # a symlink loop or a second link to the same folder
        seen_dirs.add(key)
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            res.problems.append(Failure(display(d), f"cannot list folder: {e.strerror}"))
            res.unreadable.append(d)
            continue
        names = {e.name for e in entries}
        subdirs = []
        for e in sorted(entries, key=lambda e: e.name):
            try:
                if not follow_symlinks and e.is_symlink() and not _inside(os.path.realpath(e.path), real_roots):
                    if e.is_dir(follow_symlinks=True) or is_image_path(e.name):
                        res.outside_links.append(e.path)
                    continue
                if e.is_dir(follow_symlinks=True):
                    subdirs.append(e.path)
                    continue
                if not is_image_path(e.name):
                    continue
                st = e.stat(follow_symlinks=True)
                if not stat.S_ISREG(st.st_mode):
                    continue
            except OSError as err:
                if is_image_path(e.name):
                    res.problems.append(Failure(display(e.path), f"cannot stat file: {err.strerror}"))
                continue
            res.files.append((os.path.realpath(e.path), st))
            if e.name + b".txt" in names:
                res.sidecars.add(os.path.realpath(e.path))
        stack.extend(reversed(subdirs))
    # the same file reached through two links is indexed once
    uniq = {}
    for p, st in res.files:
        uniq.setdefault(p, st)
    res.files = list(uniq.items())
    return res


# ---------------------------------------------------------------------------------------
# planning


@dataclass
class Work:
    """One file to (re)process. ``full`` means everything is recomputed (new or changed content);
    otherwise only the parts whose model changed. ``verify_hash`` is the stored hash of a file whose
    size or mtime changed: the decode step hashes it and decides whether the content really changed."""

    path: bytes
    st: os.stat_result
    image_id: int | None
    full: bool = True
    verify_hash: str | None = None
    detect: bool = False
    caption: bool = False
    image: bool = False
    text: bool = False
    #: person-written captions read from files this run (sidecar, captions file, metadata) by source
    user_captions: dict[str, Caption] = field(default_factory=dict)
    #: machine captions that need no pixels (file and folder names) by source
    extras: dict[str, Caption] = field(default_factory=dict)
    #: run OCR on this image (the source is on and it has not been read yet)
    ocr: bool = False
    #: stored caption rows differ from what the files say now (rows are rewritten; the caption is
    #: re-embedded only when the active caption changes)
    rows: bool = False

    @property
    def user_caption(self) -> Caption | None:
        """The most trusted person-written caption read this run."""
        return compose(self.user_captions) if self.user_captions else None

    def needs(self, part: str) -> bool:
        return self.full or getattr(self, part)

    @property
    def needs_pixels(self) -> bool:
        return self.full or self.detect or self.caption or self.image or self.ocr


def caption_to_embed(work: Work, stored: dict[str, Caption], generated: Caption | None, ocr: Caption | None,
                     sources) -> Caption | None:
    """The caption to embed for one image after this run: ``compose`` of its stored captions
    (``{source: caption}``) updated with what this run read or computed (person-written captions
    from files, name words, the captioner's and OCR's output; sources read again every run, and a
    switched-off OCR, drop out). None when there is no caption, or when the stored caption vector
    stays valid (the active text did not change and ``work`` does not need its text redone).
    Both indexing engines (local and Ray) call this, so they embed the same text."""
    merged = dict(stored)
    for src in REREAD_USER_SOURCES + ("filename", "folder"):
        merged.pop(src, None)
    if "ocr" not in sources:
        merged.pop("ocr", None)
    merged.update(work.user_captions)
    merged.update(work.extras)
    if generated is not None:
        merged["generated"] = generated
    if ocr is not None:
        merged["ocr"] = ocr
    active = compose(merged)
    if active is None:
        return None
    old_active = compose(stored)
    if work.needs("text") or old_active is None or old_active.text != active.text:
        return active
    return None


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
        self._notes: list[Failure] = []
        self.follow_symlinks = follow_symlinks

    # -- the models ------------------------------------------------------------------------
    def _models(self):
        ld = self.lib.loader
        return ld.get("detector"), ld.get("captioner"), ld.get("image"), ld.get("text")

    def _user_captions(self, path: bytes, has_sidecar: bool) -> dict[str, Caption]:
        """Every person-written caption kept in files for this image, by source."""
        out: dict[str, Caption] = {}
        if has_sidecar:
            cap = read_sidecar(Path(os.fsdecode(path)))
            if cap:
                out[cap.source] = _bounded(cap)
        if self.captions_file is not None:
            cap = self.captions_file.get(Path(os.fsdecode(path)))
            if cap:
                out[cap.source] = _bounded(cap)
        if "metadata" in self.sources:
            cap, md = metadata_caption(path)
            if cap:
                out["metadata"] = _bounded(cap)
            for why in md.problems:
                self._notes.append(Failure(display(path), f"metadata: {why}"))
        return out

    def _ocr_reader(self):
        if self._ocr is None:
            from .captions.ocr import OcrReader

            self._ocr = OcrReader()
        return self._ocr

    # -- planning ----------------------------------------------------------------------------
    def plan(self, result: ScanResult, roots: list[bytes], summary: IndexSummary) -> list[Work]:
        detector, captioner, image_enc, text_enc = self._models()
        seen = {p for p, _ in result.files}
        work: list[Work] = []
        # the rule that makes the active caption changed since this library was indexed
        # (captions.sources.COMPOSE_RULE): re-embed the captions, not the images
        rule_changed = self.lib.store.get_meta("caption_rule") != COMPOSE_RULE
        if rule_changed and self.lib.store.count_images(None) == 0:  # a new library: nothing to redo
            self.lib.store.set_meta("caption_rule", COMPOSE_RULE)
            rule_changed = False
        with self.lib.store.Session.begin() as s:
            rows: dict[bytes, ImageRow] = {}
            for root in roots:
                prefix = root.rstrip(b"/") + b"/"
                q = select(ImageRow).where(ImageRow.path_key >= prefix, ImageRow.path_key < prefix[:-1] + b"0")
                rows.update({r.path_key: r for r in s.scalars(q)})
            # files reached through a symlink may resolve outside every root: look them up by path,
            # or they would be inserted a second time (the path is unique)
            outside = [p for p in seen if p not in rows]
            for i in range(0, len(outside), 500):
                rows.update({r.path_key: r for r in s.scalars(select(ImageRow).where(ImageRow.path_key.in_(outside[i:i + 500])))})
            # vanished files (not below an unreadable folder) are removed
            blocked = [u.rstrip(b"/") + b"/" for u in result.unreadable]
            gone = [r for k, r in rows.items() if k not in seen and not any(k.startswith(b) for b in blocked)]
            for r in gone:
                s.delete(r)
            summary.removed = len(gone)
            ids = [r.id for r in rows.values() if r.status == "ok"]
            have_img = set(s.scalars(select(VectorRow.image_id).where(VectorRow.kind == "image", VectorRow.model_id == image_enc.model_id)))
            have_txt = set(s.scalars(select(VectorRow.image_id).where(VectorRow.kind == "caption", VectorRow.model_id == text_enc.model_id)))
            caps: dict[int, dict[str, CaptionRow]] = {}
            for i in range(0, len(ids), 500):  # only this run's folders, not the whole library
                for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id.in_(ids[i:i + 500]))):
                    caps.setdefault(c.image_id, {})[c.source] = c
            want_ocr = "ocr" in self.sources
            for path, st in result.files:
                users = self._user_captions(path, path in result.sidecars)
                extras = name_captions(path, self.sources)
                row = rows.get(path)
                if row is None:
                    work.append(Work(path, st, None, user_captions=users, extras=extras, ocr=want_ocr and not users))
                    continue
                same_stat = row.size == st.st_size and row.mtime_ns == st.st_mtime_ns
                if row.status != "ok" and (not same_stat or (row.error or "").startswith(RETRY_ERRORS)):
                    work.append(Work(path, st, row.id, user_captions=users, extras=extras, ocr=want_ocr and not users))
                    continue
                if row.status != "ok":
                    summary.failures.append(Failure(row.path, f"{row.error} (unchanged since an earlier run)"))
                    continue
                mine = caps.get(row.id, {})
                stored_users = {k: mine[k].text for k in REREAD_USER_SOURCES if k in mine}
                rows_changed = stored_users != {k: c.text for k, c in users.items()}
                old_user = compose([mine[k] for k in REREAD_USER_SOURCES if k in mine])
                new_user = compose(users)
                user_changed = (old_user.text if old_user else None) != (new_user.text if new_user else None)
                extras_changed = {k: mine[k].text for k in ("filename", "folder") if k in mine} != {k: c.text for k, c in extras.items()}
                user = compose(users) if users else None
                w = Work(path, st, row.id, full=False, user_captions=users, extras=extras, rows=rows_changed)
                w.ocr = want_ocr and user is None and "ocr" not in mine
                ocr_dropped = not want_ocr and "ocr" in mine
                if not same_stat:
                    w.verify_hash = row.content_hash or ""
                w.detect = row.detector_model != detector.model_id
                gen = mine.get("generated")
                has_override = user is not None or "user-edited" in mine or "ground-truth" in mine
                w.caption = not has_override and (gen is None or gen.model_id != captioner.model_id or w.detect)
                w.image = row.id not in have_img
                w.text = row.id not in have_txt or user_changed or w.caption or extras_changed or ocr_dropped or rule_changed
                if w.detect or w.caption or w.image or w.text or w.ocr or w.rows or w.verify_hash is not None:
                    work.append(w)
                else:
                    summary.unchanged += 1
        summary.failures.extend(result.problems)
        summary.notes.extend(self._notes)
        self._notes = []
        return work

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
            summary.cancelled = cancel.is_set()
            emit(Progress("saving", prog.done, prog.total, prog.failed, prog.skipped, prog.elapsed))
            try:
                save_run(self.lib, summary)
            except BaseException:
                failed = True
                raise
            finally:
                summary.elapsed = time.monotonic() - t0
                self._finish_run(run_id, summary, failed)
        emit(Progress("done", prog.done, prog.total, prog.failed, prog.skipped, prog.elapsed))
        return summary

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
        if "ocr" in self.sources:
            need_ocr = [(id(d), d.loaded.image) for d in pix if d.work.user_caption is None and (d.work.ocr or d.work.full)]
            if need_ocr:
                reader = self._ocr_reader()
                for (key, _), c in zip(need_ocr, guarded(lambda ims: [reader.read(im) for im in ims], need_ocr, "ocr")):
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
        out: dict[int, list[Detection]] = {}
        with self.lib.store.session() as s:
            for r in s.scalars(select(DetectionRow).where(DetectionRow.image_id.in_(ids))):
                out.setdefault(r.image_id, []).append(Detection(r.label, r.score, r.box))
        return out

    def _stored_captions(self, ids: list[int]) -> dict[int, dict[str, Caption]]:
        if not ids:
            return {}
        out: dict[int, dict[str, Caption]] = {}
        with self.lib.store.session() as s:
            for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id.in_(ids))):
                out.setdefault(c.image_id, {})[c.source] = Caption(c.text, c.source, c.model_id, c.confidence)
        return out

    def _commit(self, batch, errors, dets, caps, img_vecs, texts, txt_vecs, summary, det_id, img_id, txt_id, ocrs=None) -> None:
        ocrs = ocrs or {}
        store = self.lib.store
        with store.Session.begin() as s:
            seq = store.next_seq(s)
            for d in batch:
                w, key = d.work, id(d)
                row = s.get(ImageRow, w.image_id) if w.image_id is not None else None
                if row is None:
                    row = ImageRow(path_key=w.path, path=display(w.path), folder=display(os.path.dirname(w.path)))
                    s.add(row)
                row.size, row.mtime_ns = w.st.st_size, w.st.st_mtime_ns
                row.indexed_at = time.time()
                err = d.error or errors.get(key)
                if err:
                    row.status, row.error = "error", err
                    summary.failures.append(Failure(display(w.path), err))
                    s.flush()
                    s.execute(delete(VectorRow).where(VectorRow.image_id == row.id))
                    continue
                row.status, row.error = "ok", None
                if d.digest:
                    row.content_hash = d.digest
                if d.loaded is not None:
                    row.width, row.height = d.loaded.width, d.loaded.height
                s.flush()
                if key in dets:
                    scale = d.loaded.scale
                    s.execute(delete(DetectionRow).where(DetectionRow.image_id == row.id, DetectionRow.model_id != "ground-truth"))
                    for det in dets[key]:
                        x1, y1, x2, y2 = (v * scale for v in det.box)
                        s.add(DetectionRow(image_id=row.id, model_id=det_id, label=det.label, score=det.score, x1=x1, y1=y1, x2=x2, y2=y2))
                    row.detector_model = det_id
                write = [("generated", caps.get(key)), ("ocr", ocrs.get(key))] + list(w.user_captions.items()) + list(w.extras.items())
                for source, cap in write:
                    if cap is None:
                        continue
                    existing = s.scalar(select(CaptionRow).where(CaptionRow.image_id == row.id, CaptionRow.source == source))
                    if existing is None:
                        s.add(CaptionRow(image_id=row.id, source=source, text=cap.text, model_id=cap.model_id, confidence=cap.confidence))
                    else:
                        existing.text, existing.model_id, existing.confidence = cap.text, cap.model_id, cap.confidence
                # person-written captions and file-name words whose file text went away, and switched-off sources
                gone = [src for src in REREAD_USER_SOURCES if src not in w.user_captions]
                gone += [src for src in EXTRA_SOURCES if src != "ocr" and src not in w.extras]
                if "ocr" not in self.sources:
                    gone.append("ocr")
                s.execute(delete(CaptionRow).where(CaptionRow.image_id == row.id, CaptionRow.source.in_(gone)))
                for kind, model_id, vec in (("image", img_id, img_vecs.get(key)), ("caption", txt_id, txt_vecs.get(key))):
                    if vec is None:
                        continue
                    v = np.ascontiguousarray(vec, np.float32)
                    existing = s.scalar(select(VectorRow).where(VectorRow.image_id == row.id, VectorRow.kind == kind, VectorRow.model_id == model_id))
                    if existing is None:
                        s.add(VectorRow(image_id=row.id, kind=kind, model_id=model_id, dim=v.size, data=v.tobytes(), seq=seq))
                    else:
                        existing.data, existing.dim, existing.seq = v.tobytes(), v.size, seq
                    seq += 1
                if w.full or key in dets or key in caps or key in img_vecs or key in txt_vecs or key in ocrs:
                    summary.indexed += 1
                else:  # e.g. touched: the hash showed the same bytes, nothing was recomputed
                    summary.unchanged += 1

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _record_models(self) -> None:
        with self.lib.store.Session.begin() as s:
            for role in ("image", "text", "captioner", "detector"):
                m = self.lib.loader.get(role)
                if s.get(ModelRow, m.model_id) is None:
                    s.add(ModelRow(model_id=m.model_id, role=role, dim=getattr(m, "dim", None), weights=getattr(m, "weights_path", None)))

    def _start_run(self, roots: list[bytes]) -> int:
        with self.lib.store.Session.begin() as s:
            # a run still marked running was killed: say so
            for r in s.scalars(select(RunRow).where(RunRow.status == "running")):
                r.status = "crashed"
            run = RunRow(folders=json.dumps([display(r) for r in roots]), settings=json.dumps(self.lib.settings.to_dict()))
            s.add(run)
            s.flush()
            return run.id

    def _finish_run(self, run_id: int, summary: IndexSummary, failed: bool = False) -> None:
        try:
            with self.lib.store.Session.begin() as s:
                run = s.get(RunRow, run_id)
                run.finished = time.time()
                run.status = "cancelled" if summary.cancelled else "failed" if failed else "done"
                run.n_indexed, run.n_skipped = summary.indexed, summary.unchanged
                run.n_failed, run.n_removed = len(summary.failures), summary.removed
        except Exception:  # noqa: BLE001 - e.g. a full disk: the next writer marks the run interrupted
            if not failed:
                raise


def _bounded(cap: Caption | None) -> Caption | None:
    """A user caption from a file, bounded like an edit: whitespace collapsed, at most MAX_CAPTION_CHARS."""
    if cap is None:
        return None
    text = " ".join(cap.text.split())
    if len(text) > MAX_CAPTION_CHARS:
        text = text[:MAX_CAPTION_CHARS].rsplit(" ", 1)[0] if " " in text[:MAX_CAPTION_CHARS] else text[:MAX_CAPTION_CHARS]
    return Caption(text, cap.source, cap.model_id, cap.confidence) if text else None

