"""Edits a user makes to a library from the app: their own caption for an image.

``set_user_caption`` stores the caption as the image's most trusted one (source
``user-edited``) and re-embeds it with the text encoder, so caption-only and caption-fused
retrieval use it at once. The caption row and the caption vector change in one transaction,
so the database never holds a caption whose vector belongs to another text. The text is
embedded *before* the transaction opens so that the write lock is held for milliseconds,
not for the duration of a model call (indexing may be writing at the same time).
"""

from __future__ import annotations

from .errors import ExplorerError
from .captions.sources import USER_EDITED, compose
from .models.base import Caption

USER_SOURCE = USER_EDITED
USER_MODEL_ID = "user"
MAX_CAPTION_CHARS = 2000


def active_caption(library, image_id: int):
    """The caption retrieval uses for ``image_id`` (``captions.sources.compose``: the most trusted
    person-written one, else the names a person typed, else the machine parts joined), or None."""
    return library.catalog.active_caption(image_id)


def set_user_caption(library, image_id: int, text: str) -> None:
    """Make ``text`` the caption of image ``image_id`` and re-embed it; empty text removes the edit.

    Removing the edit falls back to the next most trusted caption (sidecar, captions file,
    ground truth, generated), which is re-embedded too. Raises ``ExplorerError`` when the image
    is not in the library or is not indexed.
    """
    text = " ".join((text or "").split())
    if len(text) > MAX_CAPTION_CHARS:
        raise ExplorerError(f"caption too long ({len(text)} characters, at most {MAX_CAPTION_CHARS})")
    set_captions(library, [(int(image_id), text)], USER_SOURCE, USER_MODEL_ID, strict=True)


def set_captions(library, items, source: str, model_id: str, strict: bool = False, batch: int = 64) -> int:
    """Store captions of one ``source`` for many images and re-embed each image's active caption.

    ``items`` are ``(image_id, text)``; empty text removes that source's caption. The active
    caption (most trusted source) is what gets embedded, so a ground-truth import does not
    override a user's edit. Images not indexed are skipped, or raise with ``strict``.
    Returns how many images were updated.
    """
    with library.writing(f"storing {source} captions"):  # one writer at a time (see lock.py)
        return _set_captions(library, items, source, model_id, strict, batch)


def _set_captions(library, items, source: str, model_id: str, strict: bool, batch: int) -> int:
    text_model = library.loader.get("text")
    items = [(int(i), " ".join((t or "").split())) for i, t in items]
    done = 0
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        ids = [i for i, _ in chunk]
        rows = library.catalog.states_by_id(ids)
        caps = library.catalog.captions_by_source(ids)
        plan = []
        for image_id, text in chunk:
            row = rows.get(image_id)
            if row is None or row.status != "ok":
                if strict:
                    why = "is not in the library at " + str(library.dir) if row is None else \
                        f"is not indexed ({row.error or row.status}); fix the file and index again"
                    raise ExplorerError(f"{'image ' + str(image_id) if row is None else row.path} {why}")
                continue
            after = {src: c for src, c in caps.get(image_id, {}).items() if src != source}
            if text:
                after[source] = Caption(text, source, model_id, 1.0)
            composed = compose(after)
            active = composed.text if composed is not None else None
            plan.append((image_id, text, active))
        to_embed = [a for _, _, a in plan if a is not None]
        vecs = iter(text_model.embed_texts(to_embed)) if to_embed else iter(())
        done += library.store.write_captions(source, model_id, text_model.model_id,
                                             [(image_id, text, next(vecs) if active is not None else None) for image_id, text, active in plan])
    library.sync_indices()
    return done
