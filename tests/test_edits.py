"""explorer.core.edits: a user-edited caption is stored, re-embedded and used by retrieval at once."""

from __future__ import annotations


import numpy as np
import pytest
from sqlalchemy import select

from explorer.core.edits import active_caption, set_user_caption
from explorer.core.errors import ExplorerError
from explorer.core.library import Library
from explorer.core.search import QuerySpec, Searcher
from explorer.core.store import CaptionRow, ImageRow, VectorRow


@pytest.fixture
def lib(library_copy):
    return library_copy


def _image(lib, name):
    with lib.store.session() as s:
        return s.scalar(select(ImageRow).where(ImageRow.path.like(f"%/{name}")))


def _caption_vec(lib, image_id):
    tx = lib.loader.get("text").model_id
    with lib.store.session() as s:
        row = s.scalar(select(VectorRow).where(VectorRow.image_id == image_id, VectorRow.kind == "caption", VectorRow.model_id == tx))
        return row.array().copy(), row.seq


def test_set_user_caption_stores_reembeds_and_persists(lib, loader):
    img = _image(lib, "brick.jpg")
    before = active_caption(lib, img.id)
    assert before.source in ("generated", "filename")  # a machine caption, or the file name's words
    _, seq_before = _caption_vec(lib, img.id)
    text = "a red wall of bricks photographed by a zebra"
    set_user_caption(lib, img.id, text)

    cap = active_caption(lib, img.id)
    assert (cap.source, cap.text, cap.model_id, cap.confidence) == ("user-edited", text, "user", 1.0)
    vec, seq = _caption_vec(lib, img.id)
    assert seq > seq_before
    want = loader.get("text").embed_texts([text])[0]
    assert np.allclose(vec, want, atol=1e-5)
    # the index serves the new vector right away
    assert np.allclose(np.asarray(lib.index("caption").index.get_items([img.id]))[0], want, atol=1e-5)
    res = Searcher(lib).search(QuerySpec(text="zebra bricks"), modes=("caption",), k=3)
    assert res.modes["caption"].hits[0].image_id == img.id
    assert res.modes["caption"].hits[0].caption_source == "user-edited"

    # after reopening the library
    d = lib.dir
    lib.close()
    again = Library(d, lib.settings, loader=loader)
    try:
        cap = active_caption(again, img.id)
        assert cap.text == text and cap.source == "user-edited"
        assert np.allclose(_caption_vec(again, img.id)[0], want, atol=1e-5)
        again.check()
        res = Searcher(again).search(QuerySpec(text="zebra bricks"), modes=("caption", "fused"), k=3)
        assert res.modes["caption"].hits[0].image_id == img.id
    finally:
        again.close()


def test_empty_text_removes_the_edit_and_falls_back(lib, loader):
    img = _image(lib, "coins.jpg")
    before = active_caption(lib, img.id)  # the file name's words ("coins"), else the generated caption
    generated = before.text
    set_user_caption(lib, img.id, "something else entirely")
    set_user_caption(lib, img.id, "   ")
    cap = active_caption(lib, img.id)
    assert cap.source == before.source != "user-edited" and cap.text == generated
    with lib.store.session() as s:
        assert s.scalar(select(CaptionRow).where(CaptionRow.image_id == img.id, CaptionRow.source == "user-edited")) is None
    vec, _ = _caption_vec(lib, img.id)
    assert np.allclose(vec, loader.get("text").embed_texts([generated])[0], atol=1e-5)


def test_unknown_image_is_a_clear_error(lib):
    with pytest.raises(ExplorerError, match="not in the library"):
        set_user_caption(lib, 10**9, "x")
