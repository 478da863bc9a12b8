"""The on-disk gallery cache (``explorer.core.gallery_cache``) and the persistent gallery
generation behind its validity (``Store.gallery_generation``): a second searcher or process opens
the cache instead of reading the gallery from SQL and ranks exactly alike; every kind of write
moves the generation, so a stale cache is never used; a damaged cache is rebuilt, never an error;
a commit during the read is never stored under the older generation."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from explorer.core import gallery_arrays as ga_mod
from explorer.core import gallery_cache
from explorer.core.catalog import Catalog
from explorer.core.gallery_arrays import GalleryArrays
from explorer.core.library import Library
from explorer.core.search import QuerySpec, Searcher

ROOT = Path(__file__).resolve().parents[1]


def reopen(lib: Library, **settings) -> Library:
    """The same library folder opened again (as another process would), optionally with other settings."""
    return Library(lib.dir, replace(lib.settings, **settings), loader=lib.loader)


def cache_dirs(lib: Library) -> list[Path]:
    root = gallery_cache.cache_root(lib)
    return sorted(p for p in root.glob(f"{gallery_cache.PREFIX}*")) if root.is_dir() else []


def assert_equals_database(g: GalleryArrays, lib: Library) -> None:
    """``g`` holds exactly what the database holds now: vectors and weights as evaluation reads
    them (bit for bit), and every row's metadata and every look-up as the catalog answers them."""
    ev = lib.gallery_vectors()
    assert np.array_equal(g.ids, ev.ids) and g.image.dtype == np.float32
    assert np.array_equal(g.image, ev.image) and np.array_equal(g.caption, ev.caption) and np.array_equal(g.weights, ev.weights)
    meta = Catalog(lib.store).gallery_meta()
    rows = np.searchsorted(meta.ids, g.ids)
    assert np.array_equal(meta.ids[rows], g.ids)
    for r, m in enumerate(rows.tolist()):
        assert g.meta.paths[r] == meta.paths[m]
        assert (int(g.meta.width[r]), int(g.meta.height[r])) == (int(meta.width[m]), int(meta.height[m]))
        assert g.meta.captions[r] == meta.captions[m]
        assert g.meta.detections(r) == meta.detections(m)
    for key, iid, h in zip(meta.keys, meta.ids.tolist(), meta.hashes):
        assert g.id_by_key.get(key) == iid
        assert g.id_by_hash.get(h) == min(i for i, hh in zip(meta.ids.tolist(), meta.hashes) if hh == h)
    assert g.id_by_key.get(b"/no/such/file.jpg") is None and g.id_by_hash.get("0" * 32) is None


def hits(res) -> dict:
    return {m: [(h.image_id, h.score, h.path, h.caption, h.detections) for h in r.hits] for m, r in res.modes.items()}


def fresh_open(lib: Library) -> GalleryArrays:
    """The gallery as a new process would open it, checked against the database; then opened once
    more, which must come from the cache just written and hold the same."""
    other = reopen(lib)
    try:
        g = GalleryArrays.open(other)
        assert g.source == "sql+cache", g.source  # never a stale cache
        assert_equals_database(g, other)
        again = GalleryArrays.open(other)
        assert again.source == "cache" and again.mapped
        assert np.array_equal(again.image, g.image) and np.array_equal(again.ids, g.ids)
        return g
    finally:
        other.close()


# -- reuse ---------------------------------------------------------------------------------------------


def test_a_second_searcher_opens_the_cache_and_ranks_exactly_alike(library_copy, tmp_path, skimage_dir):
    lib = library_copy
    first = Searcher(lib).open()
    g1 = first.gallery()
    assert g1.source == "sql+cache" and g1.mapped and len(cache_dirs(lib)) == 1
    assert_equals_database(g1, lib)
    other = reopen(lib)
    calls = []
    real = ga_mod.read_arrays
    try:
        ga_mod.read_arrays = lambda *a, **k: calls.append(1) or real(*a, **k)
        second = Searcher(other).open()
        g2 = second.gallery()
    finally:
        ga_mod.read_arrays = real
    assert g2.source == "cache" and calls == []  # the gallery was not read from the database
    assert_equals_database(g2, other)
    outside = tmp_path / "outside.jpg"
    from PIL import Image

    Image.open(skimage_dir / "coffee.png").convert("RGB").resize((320, 240)).save(outside)
    inside = sorted(Catalog(lib.store).gallery_items(None)[1])[3]
    for spec in (QuerySpec(image=str(outside)), QuerySpec(image=inside), QuerySpec(text="a cup of coffee")):
        r1 = first.search(spec, k=8, rerank="aqe")
        r2 = second.search(spec, k=8, rerank="aqe")
        assert hits(r1) == hits(r2) and r1.query.library_id == r2.query.library_id
    uncached = Searcher(reopen(lib), gallery_cache=False).open()
    g3 = uncached.gallery()
    assert g3.source == "sql" and not g3.mapped
    assert hits(uncached.search(QuerySpec(image=str(outside)), k=8)) == hits(first.search(QuerySpec(image=str(outside)), k=8))
    for s in (first, second, uncached):
        s.close()
    other.close()


CLI_SCRIPT = """
import json, sys
from explorer import cli
from explorer.core import gallery_arrays as ga
reads, sources = [], []
real_read, real_open = ga.read_arrays, ga.GalleryArrays.open.__func__
ga.read_arrays = lambda *a, **k: reads.append(1) or real_read(*a, **k)
def opened(cls, *a, **k):
    g = real_open(cls, *a, **k)
    sources.append(g.source)
    return g
ga.GalleryArrays.open = classmethod(opened)
rc = cli.main(["search", "--text", "a rocket on a launch pad", "--library", sys.argv[1], "--k", "5", "--json"])
print("GALLERY " + json.dumps({"rc": rc, "sql_reads": len(reads), "sources": sources}), file=sys.stderr)
"""


def test_cli_search_twice_reads_the_gallery_from_sql_once(library_copy):
    lib_dir = str(library_copy.dir)
    library_copy.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", CLI_SCRIPT, lib_dir], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        info = json.loads(next(line for line in r.stderr.splitlines() if line.startswith("GALLERY "))[len("GALLERY "):])
        runs.append((info, json.loads(r.stdout)))
    (first, res1), (second, res2) = runs
    assert first == {"rc": 0, "sql_reads": 1, "sources": ["sql+cache"]}
    assert second == {"rc": 0, "sql_reads": 0, "sources": ["cache"]}  # the second process opened the cache
    assert res1["modes"] == res2["modes"] and res1["modes"]["fused"]["hits"]


# -- validity: every kind of write --------------------------------------------------------------------------


def test_every_write_to_the_gallery_tables_moves_the_generation(library_copy):
    lib = library_copy
    store = lib.store
    seen = [store.gallery_generation()]

    def moved():
        g = store.gallery_generation()
        assert g is not None and g not in seen, (g, seen)
        seen.append(g)

    ids = Catalog(store).gallery_items(None)[0]
    store.write_agreement([ids[0]], [0.25], "test")  # images (update)
    moved()
    store.write_captions("sidecar", "test", lib.text_model.model_id, [(ids[1], "a note", np.ones(lib.text_model.dim, np.float32) / lib.text_model.dim ** 0.5)])
    moved()
    store.replace_detections("test-detector", {ids[2]: [("cat", (1.0, 2.0, 3.0, 4.0))]})
    moved()
    store.delete_images([ids[3]])  # images, captions, detections, vectors (cascade)
    moved()
    db = sqlite3.connect(store.path)  # another program, without this code: the triggers live in the database
    db.execute("UPDATE vectors SET seq = seq WHERE image_id = ?", (ids[4],))
    db.commit()
    db.close()
    moved()
    store.set_meta("unrelated", "x")  # not a gallery table
    assert store.gallery_generation() == seen[-1]
    assert int(seen[-1].split(".")[0]) > int(seen[0].split(".")[0])


def test_a_library_made_before_the_triggers_gets_them(library_copy):
    path = library_copy.store.path
    library_copy.close()
    db = sqlite3.connect(path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    db.execute("DELETE FROM meta WHERE key = 'gallery_generation'")
    db.commit()
    db.close()
    from explorer.core.store import Store

    s = Store(path.parent)
    g0 = s.gallery_generation()
    assert g0 is not None
    s.delete_images([Catalog(s).gallery_items(None)[0][0]])
    assert s.gallery_generation() != g0
    s.close()


def test_caption_edit_invalidates_the_cache(library_copy):
    from explorer.core.edits import set_user_caption

    lib = library_copy
    fresh_open(lib)
    iid = Catalog(lib.store).gallery_items(None)[0][5]
    with lib.writing("edit"):
        set_user_caption(lib, iid, "a purple elephant on roller skates")
    g = fresh_open(lib)
    assert g.meta.captions[int(g.rows([iid])[0])].text == "a purple elephant on roller skates"
    assert len(cache_dirs(lib)) == 1  # the stale one was replaced


def test_new_image_changed_file_and_deletion_invalidate_the_cache(library_copy, gallery_copy, skimage_dir):
    from PIL import Image

    from explorer.core.pipeline import Indexer

    lib = library_copy
    with lib.writing("index"):  # the library now indexes the copied gallery (same files, other paths)
        assert Indexer(lib).run([gallery_copy]).ok
    g0 = fresh_open(lib)
    # a new image
    new = gallery_copy / "new"
    new.mkdir()
    shutil.copy(skimage_dir / "rocket.jpg", new / "a_new_rocket.jpg")
    with lib.writing("index"):
        assert Indexer(lib).run([gallery_copy]).ok
    g1 = fresh_open(lib)
    iid = g1.image_id(new / "a_new_rocket.jpg")
    assert iid is not None and len(g1) == len(g0) + 1
    # the same file changed: re-indexed, new vectors under the same path
    old_vec = g1.image[int(g1.rows([iid])[0])].copy()
    Image.open(skimage_dir / "astronaut.png").convert("RGB").save(new / "a_new_rocket.jpg", "JPEG")
    with lib.writing("index"):
        assert Indexer(lib).run([gallery_copy]).ok
    g2 = fresh_open(lib)
    iid2 = g2.image_id(new / "a_new_rocket.jpg")
    assert not np.array_equal(g2.image[int(g2.rows([iid2])[0])], old_vec)
    # deleted
    (new / "a_new_rocket.jpg").unlink()
    with lib.writing("index"):
        Indexer(lib).run([gallery_copy])
    g3 = fresh_open(lib)
    assert g3.image_id(new / "a_new_rocket.jpg") is None and len(g3) == len(g0)


def test_whitening_and_model_changes_invalidate_the_cache(library_copy):
    from explorer.core.models.registry import ModelLoader

    lib = library_copy
    fresh_open(lib)
    white = reopen(lib, whitening="pca")
    white.fit_whitening()
    key_w = gallery_cache.cache_key(white, "float32")
    g = GalleryArrays.open(white)
    assert g.source == "sql+cache" and key_w["whitening"] is not None
    assert_equals_database(g, white)
    assert g.image.shape[1] == white.image_dim and not np.array_equal(g.image, GalleryArrays.load(lib).image)
    assert GalleryArrays.open(white).source == "cache"
    # another image model (a different GeM power changes the image model id): the cache of the
    # old model is not used; the stored vectors of the old model do not count for the new one
    settings = replace(lib.settings, gem_p=2.0)
    other = Library(lib.dir, settings, loader=ModelLoader(settings))
    try:
        assert other.image_model.model_id != lib.image_model.model_id
        g = GalleryArrays.open(other)
        assert g.source == "sql+cache"
        assert_equals_database(g, other)
    finally:
        other.close()
    white.close()


# -- a damaged cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate vectors", "flip a metadata byte", "garbage manifest", "missing file"])
def test_a_damaged_cache_is_rebuilt_with_the_same_results(library_copy, damage, caplog):
    lib = library_copy
    s1 = Searcher(lib).open()
    spec = QuerySpec(text="a cat lying on a sofa")
    want = hits(s1.search(spec, k=10))
    s1.close()
    (d,) = cache_dirs(lib)
    if damage == "truncate vectors":
        p = d / "image.npy"
        p.write_bytes(p.read_bytes()[:-100])
    elif damage == "flip a metadata byte":
        p = d / "path.npy"
        data = bytearray(p.read_bytes())
        data[-3] ^= 0x20
        p.write_bytes(bytes(data))
    elif damage == "garbage manifest":
        (d / gallery_cache.MANIFEST).write_text("{not json")
    else:
        (d / "weights.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="explorer.core.gallery_cache"):
        s2 = Searcher(reopen(lib)).open()
        g = s2.gallery()
    assert g.source == "sql+cache"
    assert [r.message for r in caplog.records if "damaged" in r.message and str(d) in r.message]
    assert hits(s2.search(spec, k=10)) == want
    assert_equals_database(g, s2.lib)
    assert Searcher(reopen(lib)).open().gallery().source == "cache"  # rebuilt, and good again
    s2.close()


def test_a_commit_during_the_read_is_not_stored_under_the_older_generation(library_copy, monkeypatch):
    from explorer.core.edits import set_user_caption

    lib = library_copy
    iid = Catalog(lib.store).gallery_items(None)[0][0]
    real = ga_mod.read_arrays

    def read_then_edit(library, dtype):
        out = real(library, dtype)
        writer = reopen(lib)
        with writer.writing("edit"):
            set_user_caption(writer, iid, "written while the gallery was being read")
        writer.close()
        return out

    monkeypatch.setattr(ga_mod, "read_arrays", read_then_edit)
    g = GalleryArrays.open(lib)
    assert g.source == "sql" and cache_dirs(lib) == []  # not stored: it may mix two generations
    monkeypatch.setattr(ga_mod, "read_arrays", real)
    g = fresh_open(lib)
    assert g.meta.captions[int(g.rows([iid])[0])].text == "written while the gallery was being read"


def test_an_unwritable_cache_folder_is_no_error(library_copy):
    lib = library_copy
    root = gallery_cache.cache_root(lib)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the cache folder would be")
    g = Searcher(lib).open().gallery()
    assert g.source == "sql" and not g.mapped
    assert_equals_database(g, lib)
