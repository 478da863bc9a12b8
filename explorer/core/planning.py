"""The plan stage of indexing: what each scanned file needs, compared with the library.

Unchanged files are skipped (size + mtime, then the content hash when those disagree), changed
files are redone under the same image id so index entries are replaced, vanished files are
removed, and a model change only recomputes what that model produces; a file that failed before
is reported again without retrying it, unless it changed or the failure was about access
(permission, vanished file). Person-written captions (sidecar, captions file, embedded metadata)
and file/folder name words are read here on every run; a change of caption sources only
re-embeds captions. ``caption_to_embed`` decides the one caption text both indexing engines
(local and Ray) embed. User captions from files are bounded like edits (``MAX_CAPTION_CHARS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .captions import CaptionsFile, metadata_caption, name_captions, read_sidecar
from .captions.sources import COMPOSE_RULE, FILENAME, FOLDER, GENERATED, GROUND_TRUTH, METADATA, OCR, REREAD_USER_SOURCES, USER_EDITED, compose
from .edits import MAX_CAPTION_CHARS
from .models.base import Caption
from .scanning import Failure, ScanResult, display

#: Failures about access rather than content (a chmod or a file being replaced does not change the
#: size or mtime): such files are retried on every run, unlike files whose bytes are bad.
RETRY_ERRORS = ("permission denied", "cannot read", "file not found")


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
    for src in REREAD_USER_SOURCES + (FILENAME, FOLDER):
        merged.pop(src, None)
    if OCR not in sources:
        merged.pop(OCR, None)
    merged.update(work.user_captions)
    merged.update(work.extras)
    if generated is not None:
        merged[GENERATED] = generated
    if ocr is not None:
        merged[OCR] = ocr
    active = compose(merged)
    if active is None:
        return None
    old_active = compose(stored)
    if work.needs("text") or old_active is None or old_active.text != active.text:
        return active
    return None


class Planner:
    """Plans one indexing run of ``library`` with the caption ``sources`` on (and an optional captions file)."""

    def __init__(self, library, sources, captions_file: CaptionsFile | None = None):
        self.lib = library
        self.sources = tuple(sources)
        self.captions_file = captions_file
        self._notes: list[Failure] = []

    def user_captions(self, path: bytes, has_sidecar: bool) -> dict[str, Caption]:
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
        if METADATA in self.sources:
            cap, md = metadata_caption(path)
            if cap:
                out[METADATA] = _bounded(cap)
            for why in md.problems:
                self._notes.append(Failure(display(path), f"metadata: {why}"))
        return out

    def plan(self, result: ScanResult, roots: list[bytes], summary, models) -> list[Work]:
        """The work list of one run; ``models`` are the loaded (detector, captioner, image, text) models.
        Vanished files are removed from the library here; ``summary`` gets the counts, failures and notes."""
        detector, captioner, image_enc, text_enc = models
        seen = {p for p, _ in result.files}
        work: list[Work] = []
        catalog = self.lib.catalog
        # the rule that makes the active caption changed since this library was indexed
        # (captions.sources.COMPOSE_RULE): re-embed the captions, not the images
        rule_changed = self.lib.store.get_meta("caption_rule") != COMPOSE_RULE
        if rule_changed and catalog.count_images(None) == 0:  # a new library: nothing to redo
            self.lib.store.set_meta("caption_rule", COMPOSE_RULE)
            rule_changed = False
        rows = catalog.states_under(roots)
        # files reached through a symlink may resolve outside every root: look them up by path,
        # or they would be inserted a second time (the path is unique)
        rows.update(catalog.states_by_key([p for p in seen if p not in rows]))
        # vanished files (not below an unreadable folder) are removed
        blocked = [u.rstrip(b"/") + b"/" for u in result.unreadable]
        gone = [r for k, r in rows.items() if k not in seen and not any(k.startswith(b) for b in blocked)]
        if gone:
            self.lib.store.delete_images([r.image_id for r in gone])
        summary.removed = len(gone)
        ids = [r.image_id for k, r in rows.items() if r.status == "ok" and k in seen]
        have_img = catalog.ids_with_vector("image", image_enc.model_id)
        have_txt = catalog.ids_with_vector("caption", text_enc.model_id)
        caps = catalog.captions_by_source(ids)  # only this run's folders, not the whole library
        want_ocr = OCR in self.sources
        for path, st in result.files:
            users = self.user_captions(path, path in result.sidecars)
            extras = name_captions(path, self.sources)
            row = rows.get(path)
            if row is None:
                work.append(Work(path, st, None, user_captions=users, extras=extras, ocr=want_ocr and not users))
                continue
            same_stat = row.size == st.st_size and row.mtime_ns == st.st_mtime_ns
            if row.status != "ok" and (not same_stat or (row.error or "").startswith(RETRY_ERRORS)):
                work.append(Work(path, st, row.image_id, user_captions=users, extras=extras, ocr=want_ocr and not users))
                continue
            if row.status != "ok":
                summary.failures.append(Failure(row.path, f"{row.error} (unchanged since an earlier run)"))
                continue
            mine = caps.get(row.image_id, {})
            stored_users = {k: mine[k].text for k in REREAD_USER_SOURCES if k in mine}
            rows_changed = stored_users != {k: c.text for k, c in users.items()}
            old_user = compose([mine[k] for k in REREAD_USER_SOURCES if k in mine])
            new_user = compose(users)
            user_changed = (old_user.text if old_user else None) != (new_user.text if new_user else None)
            extras_changed = {k: mine[k].text for k in (FILENAME, FOLDER) if k in mine} != {k: c.text for k, c in extras.items()}
            user = compose(users) if users else None
            w = Work(path, st, row.image_id, full=False, user_captions=users, extras=extras, rows=rows_changed)
            w.ocr = want_ocr and user is None and OCR not in mine
            ocr_dropped = not want_ocr and OCR in mine
            if not same_stat:
                w.verify_hash = row.content_hash or ""
            w.detect = row.detector_model != detector.model_id
            gen = mine.get(GENERATED)
            has_override = user is not None or USER_EDITED in mine or GROUND_TRUTH in mine
            w.caption = not has_override and (gen is None or gen.model_id != captioner.model_id or w.detect)
            w.image = row.image_id not in have_img
            w.text = row.image_id not in have_txt or user_changed or w.caption or extras_changed or ocr_dropped or rule_changed
            if w.detect or w.caption or w.image or w.text or w.ocr or w.rows or w.verify_hash is not None:
                work.append(w)
            else:
                summary.unchanged += 1
        summary.failures.extend(result.problems)
        summary.notes.extend(self._notes)
        self._notes = []
        return work


def _bounded(cap: Caption | None) -> Caption | None:
    """A user caption from a file, bounded like an edit: whitespace collapsed, at most MAX_CAPTION_CHARS."""
    if cap is None:
        return None
    text = " ".join(cap.text.split())
    if len(text) > MAX_CAPTION_CHARS:
        text = text[:MAX_CAPTION_CHARS].rsplit(" ", 1)[0] if " " in text[:MAX_CAPTION_CHARS] else text[:MAX_CAPTION_CHARS]
    return Caption(text, cap.source, cap.model_id, cap.confidence) if text else None


__all__ = ["RETRY_ERRORS", "Planner", "Work", "caption_to_embed"]
