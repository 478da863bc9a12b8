"""Edits a user makes to a library from the app: their own caption for an image.

``set_user_caption`` stores the caption as the image's most trusted one (source
``user-edited``) and re-embeds it with the text encoder, so caption-only and caption-fused
retrieval use it at once. The caption row and the caption vector change in one transaction,
so the database never holds a caption whose vector belongs to another text. The text is
embedded *before* the transaction opens so that the write lock is held for milliseconds,
not for the duration of a model call (indexing may be writing at the same time).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, select

from .errors import ExplorerError
from .store import CaptionRow, ImageRow, VectorRow, caption_rank

USER_SOURCE = "user-edited"
USER_MODEL_ID = "user"
MAX_CAPTION_CHARS = 2000


def active_caption(library, image_id: int) -> CaptionRow | None:
    """The caption retrieval uses for ``image_id`` (the most trusted source), or None."""
    with library.store.session() as s:
        rows = list(s.scalars(select(CaptionRow).where(CaptionRow.image_id == int(image_id))))
    return min(rows, key=lambda c: caption_rank(c.source), default=None)


def set_user_caption(library, image_id: int, text: str) -> None:
    """Make ``text`` the caption of image ``image_id`` and re-embed it; empty text removes the edit.

    Removing the edit falls back to the next most trusted caption (sidecar, captions file,
    ground truth, generated), which is re-embedded too. Raises ``ExplorerError`` when the image
    is not in the library or is not indexed.
    """
    image_id = int(image_id)
    text = " ".join((text or "").split())
    if len(text) > MAX_CAPTION_CHARS:
        raise ExplorerError(f"caption too long ({len(text)} characters, at most {MAX_CAPTION_CHARS})")
    with library.store.session() as s:
        row = s.get(ImageRow, image_id)
        if row is None:
            raise ExplorerError(f"image {image_id} is not in the library at {library.dir}")
        if row.status != "ok":
            raise ExplorerError(f"{row.path} is not indexed ({row.error or row.status}); fix the file and index again")
        others = [c for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id == image_id)) if c.source != USER_SOURCE]
    if text:
        to_embed = text
    else:
        fallback = min(others, key=lambda c: caption_rank(c.source), default=None)
        to_embed = fallback.text if fallback is not None else None

    text_model = library.loader.get("text")
    vec = None
    if to_embed is not None:
        vec = np.ascontiguousarray(text_model.embed_texts([to_embed])[0], np.float32)

    store = library.store
    with store.Session.begin() as s:
        existing = s.scalar(select(CaptionRow).where(CaptionRow.image_id == image_id, CaptionRow.source == USER_SOURCE))
        if text:
            if existing is None:
                s.add(CaptionRow(image_id=image_id, source=USER_SOURCE, text=text, model_id=USER_MODEL_ID, confidence=1.0))
            else:
                existing.text, existing.model_id, existing.confidence = text, USER_MODEL_ID, 1.0
        elif existing is not None:
            s.delete(existing)
        cur = s.scalar(select(VectorRow).where(VectorRow.image_id == image_id, VectorRow.kind == "caption",
                                               VectorRow.model_id == text_model.model_id))
        if vec is None:
            if cur is not None:
                s.execute(delete(VectorRow).where(VectorRow.id == cur.id))
        else:
            seq = store.next_seq(s)
            if cur is None:
                s.add(VectorRow(image_id=image_id, kind="caption", model_id=text_model.model_id, dim=vec.size,
                                data=vec.tobytes(), seq=seq))
            else:
                cur.data, cur.dim, cur.seq = vec.tobytes(), vec.size, seq
    library.sync_indices()
