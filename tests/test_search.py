"""Retrieval on real photos with the real offline default models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from explorer.core import fusion
from explorer.core.errors import BadQuery
from explorer.core.search import QuerySpec, Searcher, compare_rankings, edit_caption

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
          "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "brick.png", "grass.png", "camera.png"]


@pytest.fixture(scope="module")
def photo_library(tmp_path_factory, skimage_dir, loader):
    """The package's sample photos, copied as they are, indexed with the captioner's text: their
    file names are labels and proper nouns (chelsea, ihc), which would lead the captions as names
    a person typed (captions.sources), and these tests are about what the captioner's text does."""
    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer

    gal = tmp_path_factory.mktemp("photos") / "photos"
    gal.mkdir()
    for name in PHOTOS:
        shutil.copy(skimage_dir / name, gal / name)
    from dataclasses import replace

    lib = Library(tmp_path_factory.mktemp("lib") / "lib", replace(loader.settings, caption_sources=("metadata",)), loader=loader)
    assert Indexer(lib).run([gal]).ok
    return lib, gal


@pytest.fixture(scope="module")
def searcher(photo_library):
    return Searcher(photo_library[0])


def names(mode_result):
    return [h.path.rsplit("/", 1)[-1] for h in mode_result.hits]


def test_motorcycle_pair_rank_one_image_only(searcher, photo_library):
    _, gal = photo_library
    res = searcher.search(QuerySpec(image=str(gal / "motorcycle_left.png")), modes=("image",), k=5)
    assert names(res.modes["image"])[0] == "motorcycle_right.png"
    assert "motorcycle_left.png" not in names(res.modes["image"])  # the query itself is excluded


def test_text_a_cat_ranks_chelsea_first_in_caption_mode(searcher):
    res = searcher.search(QuerySpec(text="a cat"), modes=("caption",), k=3)
    assert names(res.modes["caption"])[0] == "chelsea.png"


def test_query_from_outside_gallery(searcher, skimage_dir, tmp_path):
    q = tmp_path / "my query.jpg"
    from PIL import Image

    Image.open(skimage_dir / "coffee.png").convert("RGB").resize((300, 200)).save(q)
    res = searcher.search(QuerySpec(image=str(q)), k=3)
    for mode in ("image", "fused"):
        assert names(res.modes[mode])[0] == "coffee.png"
    assert "cup" in res.query.caption.text
    assert any(d.label == "cup" for d in res.query.detections)


def test_alpha_reorders_by_formula(searcher, photo_library):
    _, gal = photo_library
    pq = searcher.prepare(QuerySpec(image=str(gal / "astronaut.png")))
    pool = searcher.candidate_pool(pq, 10)
    n = len(pool.ids)
    for alpha in (0.0, 0.5, 1.0):
        r = searcher.rank(pq, pool, "fused", n, alpha)
        b = np.clip(alpha * pq.caption_weight * pool.weights, 0, 1)
        expect = (1 - b) * pool.cos_img + b * pool.cos_cap
        by_id = dict(zip(pool.ids.tolist(), expect))
        got = [h.score for h in r.hits]
        assert np.allclose(got, [by_id[h.image_id] for h in r.hits], atol=1e-5)
        assert got == sorted(got, reverse=True)
    # alpha = 0 is exactly image-only
    r0 = searcher.rank(pq, pool, "fused", n, 0.0)
    ri = searcher.rank(pq, pool, "image", n, 0.0)
    assert [h.image_id for h in r0.hits] == [h.image_id for h in ri.hits]
    # a larger alpha gives the caption more say: the order changes away from image-only
    r1 = searcher.rank(pq, pool, "fused", n, 1.0)
    assert [h.image_id for h in r1.hits] != [h.image_id for h in ri.hits]


def test_composed_query_moves_toward_modifier(searcher, photo_library):
    _, gal = photo_library
    plain = searcher.search(QuerySpec(image=str(gal / "astronaut.png")), modes=("fused",), k=11)
    composed = searcher.search(QuerySpec(image=str(gal / "astronaut.png"), modifier="a cat instead of a person"), modes=("fused",), k=11)
    assert composed.query.target_text.startswith("a cat instead of a person")
    rank = lambda r: names(r.modes["fused"]).index("chelsea.png")  # noqa: E731
    assert rank(composed) < rank(plain)


def test_object_query_crops_box(searcher, photo_library):
    _, gal = photo_library
    res = searcher.search(QuerySpec(image=str(gal / "coffee.png"), box=(150, 20, 450, 250)), modes=("image",), k=3)
    assert res.query.spec.kind == "object"
    assert res.modes["image"].hits


def test_edit_caption_replaces_colours():
    t = edit_caption("a photo of a dress; colours: blue, white", "the same dress in red")
    assert t == "the same dress in red; a photo of a dress; colours: red"
    assert edit_caption("a blue dress", "in red") == "in red; a red dress"


def test_compare_rankings():
    c = compare_rankings([1, 2, 3, 4], [1, 2, 3, 4], 4)
    assert c["overlap_at_k"] == 1.0 and c["spearman"] == 1.0
    c = compare_rankings([1, 2, 3, 4], [5, 6, 7, 8], 4)
    assert c["overlap_at_k"] == 0.0 and c["spearman"] < 0


def test_hits_carry_other_ranks_and_details(searcher, photo_library):
    _, gal = photo_library
    res = searcher.search(QuerySpec(image=str(gal / "chelsea.png")), k=5)
    h = res.modes["fused"].hits[0]
    assert set(h.other_ranks) == {"image", "caption"}
    assert h.caption and h.caption_source == "generated"
    assert "image_vs_fused" in res.comparisons
    d = res.to_dict()
    assert d["schema"] == "retrieval-explorer/search/v1"
    json.dumps(d)


def test_bad_queries(searcher, tmp_path):
    with pytest.raises(BadQuery, match="empty query"):
        searcher.search(QuerySpec(text="   "))
    with pytest.raises(BadQuery, match="file not found"):
        searcher.search(QuerySpec(image=str(tmp_path / "missing.jpg")))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(BadQuery, match="not an image"):
        searcher.search(QuerySpec(image=str(bad)))
    with pytest.raises(BadQuery, match="alpha"):
        searcher.search(QuerySpec(text="cat"), alpha=1.5)


def test_unindexed_library_is_a_clear_error(tmp_path, loader):
    from explorer.core.library import Library

    with pytest.raises(BadQuery, match="no indexed images"):
        Searcher(Library(tmp_path / "empty", loader.settings, loader=loader)).open()


def test_cli_search_json_and_errors(photo_library, tmp_path):
    lib, gal = photo_library
    env_cmd = [sys.executable, "-m", "explorer", "search", "--library", str(lib.dir)]
    out = subprocess.run(env_cmd + ["--image", str(gal / "motorcycle_left.png"), "--mode", "image", "--k", "3", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["modes"]["image"]["hits"][0]["path"].endswith("motorcycle_right.png")
    err = subprocess.run(env_cmd + ["--text", ""], capture_output=True, text=True, timeout=300)
    assert err.returncode == 2 and err.stderr.strip().startswith("error:") and "Traceback" not in err.stderr
    err = subprocess.run([sys.executable, "-m", "explorer", "search", "--library", str(tmp_path / "nolib"), "--text", "cat"],
                         capture_output=True, text=True, timeout=300)
    assert err.returncode == 2 and "no library" in err.stderr


def test_caption_weight_rules():
    assert fusion.caption_weight("sidecar", 0.1, 0.0) == 1.0
    assert fusion.caption_weight("generated", 1.0, 0.0) == 0.0  # a caption unrelated to the image's neighbourhood
    assert fusion.caption_weight("generated", 1.0, 1.0) == 1.0
    assert fusion.caption_weight("generated", 0.0, 1.0) == 0.5
    assert fusion.caption_weight(None, None, None) == 0.0
    assert list(fusion.neighbourhood_agreement([[1, 2, 3, 4]], [[4, 3, 9, 8]], 4)) == [0.5]
