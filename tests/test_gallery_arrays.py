"""The in-memory query path (``explorer.core.gallery_arrays``): re-scoring and result metadata
come from numpy arrays equal to what the database and the indices hold, no SQL runs per query,
the arrays follow edits and indexing (stale arrays are never used), and nothing is written into
a prepared query."""

from __future__ import annotations

import dataclasses
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from sqlalchemy import event

from explorer.core import fusion
from explorer.core.catalog import Catalog
from explorer.core.errors import ExplorerError
from explorer.core.gallery_arrays import FLOAT16_MAX_ERROR, GalleryArrays
from explorer.core.search import QuerySpec, Searcher


def photos(lib):
    ids, paths = Catalog(lib.store).gallery_items(None)
    return dict(zip(paths, ids))


@contextmanager
def count_sql(store):
    """Every SQL statement the library's engine executes inside the block."""
    seen: list[str] = []

    def on_execute(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", on_execute)


def sql_path_pool(lib, pq, ids):
    """What the search path computed before the arrays: vectors from the ANN indices and metadata,
    caption weights from the database (``Catalog.result_meta``), per candidate."""
    ids = np.asarray(ids, np.int64)
    gi, gc = lib.index("image").get_vectors(ids), lib.index("caption").get_vectors(ids)
    meta = Catalog(lib.store).result_meta(ids.tolist())
    weights = []
    for i in ids.tolist():
        c = meta[i]["caption"]
        weights.append(fusion.caption_weight(c.source, c.confidence, meta[i]["agreement"]) if c is not None else 0.0)
    return (gi @ pq.image_vec if pq.image_vec is not None else None), gc @ pq.caption_vec, np.array(weights, np.float32), meta


def test_rescore_from_arrays_equals_the_sql_path(library_copy, sample_gallery, tmp_path, skimage_dir):
    lib = library_copy
    searcher = Searcher(lib).open()
    gal = searcher.gallery()
    # the arrays are exactly what evaluation reads
    ev = lib.gallery_vectors()
    assert np.array_equal(gal.ids, ev.ids) and np.array_equal(gal.image, ev.image)
    assert np.array_equal(gal.caption, ev.caption) and np.array_equal(gal.weights, ev.weights)
    outside = tmp_path / "outside.jpg"
    from PIL import Image

    Image.open(skimage_dir / "coffee.png").convert("RGB").resize((320, 240)).save(outside)
    inside = sorted(photos(lib))[0]
    for spec in (QuerySpec(image=str(outside)), QuerySpec(image=inside), QuerySpec(text="a cup of coffee")):
        pool = searcher.candidate_pool(searcher.prepare(spec), 10)
        pq = pool.query
        assert len(pool.ids) > 0
        want_img, want_cap, want_w, meta = sql_path_pool(lib, pq, pool.ids)
        if pq.image_vec is not None:
            assert np.allclose(pool.cos_img, want_img, atol=1e-5)
        assert np.allclose(pool.cos_cap, want_cap, atol=1e-5)
        assert np.array_equal(pool.weights, want_w)
        res = searcher.rank_all(pq, pool, ("image", "fused", "caption"), len(pool.ids), lib.fused_index_alpha)
        for mode in res.modes.values():
            for h in mode.hits:
                m = meta[h.image_id]
                c = m["caption"]
                assert (h.path, h.width, h.height) == (m["path"], m["w"], m["h"])
                assert (h.caption, h.caption_source) == ((c.text, c.source) if c else ("", ""))
                assert h.detections == [{"label": lab, "score": round(s, 4), "box": [round(v, 1) for v in box]}
                                        for lab, s, box in m["detections"]]
        if spec.image == inside:
            assert pq.library_id == photos(lib)[inside]
            assert pq.library_id not in {h.image_id for m in res.modes.values() for h in m.hits}


def test_a_warm_query_runs_no_sql(library_copy, tmp_path, skimage_dir):
    lib = library_copy
    searcher = Searcher(lib).open()
    outside = tmp_path / "q.png"
    shutil.copy(skimage_dir / "chelsea.png", outside)  # same bytes as a library photo? matched by hash if so
    inside = sorted(photos(lib))[1]
    for spec in (QuerySpec(image=inside), QuerySpec(image=str(outside)), QuerySpec(text="a cat")):
        searcher.search(spec, k=5, rerank="aqe")  # warm
        with count_sql(lib.store) as seen:
            res = searcher.search(spec, k=5, rerank="aqe")
        assert res.modes["fused"].hits
        assert seen == [], seen
    with count_sql(lib.store) as seen:  # the hook does see the library's SQL
        Catalog(lib.store).count_images()
    assert len(seen) == 1


def test_arrays_follow_a_caption_edit_made_by_another_connection(library_copy, loader):
    from explorer.core.edits import set_user_caption
    from explorer.core.library import Library

    lib = library_copy
    searcher = Searcher(lib).open()
    path, iid = sorted(photos(lib).items())[2]
    before = searcher.gallery()
    loads = searcher._gallery.loads
    assert searcher.gallery() is before and searcher._gallery.loads == loads  # nothing changed: no reload
    other = Library(lib.dir, lib.settings, loader=loader)  # another connection (as another process would be)
    try:
        with other.writing("edit"):
            set_user_caption(other, iid, "a purple elephant on roller skates")
    finally:
        other.close()
    res = searcher.search(QuerySpec(text="a purple elephant on roller skates"), modes=("caption",), k=3)
    top = res.modes["caption"].hits[0]
    assert top.image_id == iid and top.caption == "a purple elephant on roller skates" and top.caption_source == "user-edited"
    after = searcher.gallery()
    assert after is not before and searcher._gallery.loads == loads + 1
    row = int(after.rows([iid])[0])
    assert after.weights[row] == 1.0  # a person's caption has weight 1
    assert np.array_equal(after.caption, lib.gallery_vectors().caption)


def test_arrays_follow_indexing_and_removal(library_copy, gallery_copy, skimage_dir):
    from explorer.core.pipeline import Indexer

    lib = library_copy
    searcher = Searcher(lib).open()
    n0 = len(searcher.gallery())
    new_dir = gallery_copy / "new"
    new_dir.mkdir()
    shutil.copy(skimage_dir / "rocket.jpg", new_dir / "a_new_rocket.jpg")
    with lib.writing("index"):
        assert Indexer(lib).run([gallery_copy]).ok
    gal = searcher.gallery()
    assert len(gal) >= n0 + 1
    iid = gal.image_id(new_dir / "a_new_rocket.jpg")
    assert iid is not None and int(gal.rows([iid])[0]) >= 0
    res = searcher.search(QuerySpec(image=str(new_dir / "a_new_rocket.jpg")), modes=("image",), k=3)
    assert res.query.library_id == iid  # recognised as the library image it now is
    (new_dir / "a_new_rocket.jpg").unlink()
    with lib.writing("index"):
        Indexer(lib).run([gallery_copy])
    gal = searcher.gallery()
    assert gal.image_id(new_dir / "a_new_rocket.jpg") is None and iid not in set(gal.ids.tolist())
    res = searcher.search(QuerySpec(text="a rocket"), modes=("caption",), k=len(gal))
    assert iid not in {h.image_id for h in res.modes["caption"].hits}


def test_float16_scores_stay_within_the_stated_bound(library_copy):
    lib = library_copy
    s32, s16 = Searcher(lib).open(), Searcher(lib, vector_dtype="float16").open()
    g32, g16 = s32.gallery(), s16.gallery()
    assert g16.image.dtype == np.float16 and g16.image.nbytes * 2 == g32.image.nbytes
    spec = QuerySpec(image=sorted(photos(lib))[0])
    p32 = s32.candidate_pool(s32.prepare(spec), 10)
    p16 = s16.candidate_pool(s16.prepare(spec), 10)
    assert np.array_equal(p32.ids, p16.ids)
    err = max(np.abs(p32.cos_img - p16.cos_img).max(), np.abs(p32.cos_cap - p16.cos_cap).max())
    assert 0 < err <= FLOAT16_MAX_ERROR
    with pytest.raises(ExplorerError, match="search vectors must be one of float32, float16"):
        GalleryArrays.load(lib, dtype="int8")
    with pytest.raises(ExplorerError, match="search_vectors"):
        Searcher(lib, vector_dtype="double")
    assert Searcher(lib).vector_dtype == "float32"  # the setting's default


def test_nothing_is_written_into_the_prepared_query(library_copy, tmp_path, skimage_dir):
    from explorer.core.search import use_library_captions

    lib = library_copy
    searcher = Searcher(lib).open()
    q = tmp_path / "outside.jpg"
    from PIL import Image

    Image.open(skimage_dir / "astronaut.png").convert("RGB").resize((256, 256)).save(q)
    pq = searcher.prepare(QuerySpec(image=str(q)))
    before = dataclasses.replace(pq)
    pool = searcher.candidate_pool(pq, 10)
    assert pq.caption_weight == before.caption_weight == 0.0 and pq.learned_vec is None
    assert pool.query is not pq and pool.query.caption_weight > 0.0
    inside = sorted(photos(lib))[0]
    raw = dataclasses.replace(pq, spec=QuerySpec(image=inside), library_id=None)
    out = use_library_captions(lib, raw, searcher.gallery())
    assert raw.library_id is None and out.library_id == photos(lib)[inside]
    assert out.caption_weight == float(searcher.gallery().weights[int(searcher.gallery().rows([out.library_id])[0])])
