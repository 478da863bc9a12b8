"""The global representation: whole-image geometry, multi-scale GeM, whitening, reranking
(and that search and evaluation give the same reranked scores)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from explorer.core import rerank as rr
from explorer.core import whitening as wht
from explorer.core.config import Settings
from explorer.core.errors import ExplorerError
from explorer.core.models.base import l2_normalise
from explorer.core.models.effnet import LEGACY_MODEL_ID, LEGACY_POOLING, MEAN, STD, Pooling, input_size, preprocess_one


def _wide_image() -> Image.Image:
    """448 x 112: red bands on the far left and right, green in the middle."""
    a = np.zeros((112, 448, 3), np.uint8)
    a[:, :, 1] = 200
    a[:, :64] = (220, 0, 0)
    a[:, -64:] = (220, 0, 0)
    return Image.fromarray(a)


def _red_fraction(x: np.ndarray, cols: slice) -> float:
    rgb = x.transpose(1, 2, 0) * STD + MEAN
    part = rgb[:, cols]
    return float(np.mean((part[..., 0] > 0.6) & (part[..., 1] < 0.3)))


def test_whole_image_keeps_the_sides_of_a_wide_image():
    im = _wide_image()
    crop = preprocess_one(im, 224, "crop")
    whole = preprocess_one(im, 224, "whole")
    stretch = preprocess_one(im, 224, "stretch")
    assert crop.shape == (3, 224, 224) and stretch.shape == (3, 224, 224)
    assert _red_fraction(crop, slice(None)) == 0.0  # the centre crop cut the sides off
    h, w = whole.shape[1:]
    assert w > 2 * h and w % 32 == 0 and h % 32 == 0  # aspect kept, stride-aligned
    for x in (whole, stretch):
        width = x.shape[2]
        assert _red_fraction(x, slice(0, width // 10)) > 0.9  # left band present
        assert _red_fraction(x, slice(width - width // 10, width)) > 0.9  # right band present
    assert abs(w * h - 224 * 224) / (224 * 224) < 0.3  # about the same number of pixels as 224^2
    assert input_size(100, 100, 224, "whole") == (224, 224)
    assert input_size(5000, 10, 224, "whole") == (448, 32)  # longer side capped at 2x, shorter at one stride


def test_pooling_settings_name_the_model():
    assert LEGACY_POOLING.model_id == LEGACY_MODEL_ID  # the old descriptor keeps its id
    ids = {Pooling().model_id, Pooling("crop").model_id, Pooling(gem_p=4).model_id, Pooling(scales=(1.0,)).model_id}
    assert len(ids) == 4 and LEGACY_MODEL_ID not in ids
    s = Settings.load({"image_scales": "1, 1.5", "gem_p": 2.5})
    assert Pooling.from_settings(s) == Pooling("whole", (1.0, 1.5), 2.5)
    with pytest.raises(ExplorerError, match="preprocessing"):
        Pooling("centre")
    with pytest.raises(ExplorerError, match="scales"):
        Pooling(scales=())
    with pytest.raises(ExplorerError, match="image_scales"):
        Settings.load({"image_scales": "one,two"})


def test_multiscale_gem_is_the_normalised_mean_of_the_scales(loader):
    from explorer.core.models.effnet import shared_core

    core = shared_core(loader.settings.device)
    ims = [_wide_image(), Image.new("RGB", (90, 120), (30, 60, 200))]
    calls = []
    orig = core.feature_map

    def counting(x):
        calls.append(tuple(x.shape[2:]))
        return orig(x)

    core.feature_map = counting
    try:
        ms = Pooling("whole", (0.7071, 1.0, 1.4142), 3.0)
        emb = np.stack([a.embedding for a in core.analyse(ims, ms)])
        # one backbone call per scale and input shape (the two images differ in aspect)
        assert len(calls) == 6 and len(set(calls)) == 6
        per = [np.stack([a.embedding for a in core.analyse(ims, Pooling("whole", (s,), 3.0))]) for s in ms.scales]
    finally:
        core.feature_map = orig
    np.testing.assert_allclose(emb, l2_normalise(np.mean(per, axis=0)), atol=1e-5)
    assert not np.allclose(per[0], per[2], atol=1e-3)  # the scales do see different things


# -- whitening ---------------------------------------------------------------------------


def _anisotropic(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10, 0.1, d)
    return (rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 3).astype(np.float32)


def test_pca_whitening_fit_apply_persist(tmp_path):
    x = _anisotropic()
    w = wht.fit_pca(x, shrinkage=0.0, stamp={"model_id": "m"})
    z = (x - w.mean) @ w.proj
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(16), atol=1e-3)  # whitened: identity covariance
    y = w.apply(x)
    assert y.shape == (2000, 16) and np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(w.apply(x[3]), y[3], atol=1e-5)
    small = wht.fit_pca(x, shrinkage=0.5, dim=4)
    assert small.apply(x).shape == (2000, 4) and small.out_dim == 4 and small.tag != w.tag
    # shrinkage pulls the eigenvalues towards their mean: the whitened scales are less extreme
    lam = np.var((x - w.mean) @ np.linalg.eigh(np.cov(x.T))[1], axis=0)
    assert lam.max() / lam.min() > 1e3
    shr = wht.fit_pca(x, shrinkage=0.5)
    sv = np.linalg.svd(shr.proj, compute_uv=False)
    assert sv.max() / sv.min() < np.sqrt(lam.max() / lam.min())
    p = w.save(tmp_path / "w" / "white.npz")
    back = wht.Whitening.load(p)
    assert back.stamp["model_id"] == "m" and back.tag == w.tag
    np.testing.assert_array_equal(back.apply(x), y)
    (tmp_path / "bad.npz").write_bytes(b"not a whitening")
    with pytest.raises(ExplorerError, match="whitening file"):
        wht.Whitening.load(tmp_path / "bad.npz")
    with pytest.raises(ExplorerError, match="dimension"):
        wht.fit_pca(x, dim=17)
    with pytest.raises(ExplorerError, match="expects 16-d"):
        w.apply(np.zeros(5, np.float32))


def test_learned_whitening_from_labels_separates_classes():
    rng = np.random.default_rng(1)
    d, k = 12, 6
    centres = rng.normal(size=(k, d)) * np.r_[np.full(3, 0.3), np.full(d - 3, 0.0)]  # classes differ in 3 dims only
    labels = np.repeat(np.arange(k), 80)
    nuisance = rng.normal(size=(len(labels), d)) * np.r_[np.full(3, 0.2), np.full(d - 3, 3.0)]  # big noise elsewhere
    x = (centres[labels] + nuisance).astype(np.float32)

    def nn_acc(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return float(np.mean(labels[s.argmax(1)] == labels))

    lw = wht.fit_lw(x, labels.astype(str), shrinkage=0.0)
    assert lw.kind == "lw" and lw.stamp["labels"] == k
    assert nn_acc(lw.apply(x)) > nn_acc(l2_normalise(x)) + 0.2
    with pytest.raises(ExplorerError, match="two labels"):
        wht.fit_lw(x, np.zeros(len(x)))


def test_refit_policy():
    w = wht.fit_pca(_anisotropic(100), 0.1, stamp={"model_id": "m"})
    assert wht.needs_refit(None, 10, "m", "pca", 0, 0.1) is None  # too few vectors to fit
    assert wht.needs_refit(None, 100, "m", "pca", 0, 0.1) == "no whitening fitted yet"
    assert wht.needs_refit(w, 140, "m", "pca", 0, 0.1) is None
    assert "grew" in wht.needs_refit(w, 150, "m", "pca", 0, 0.1)
    assert wht.needs_refit(w, 100, "other", "pca", 0, 0.1) == "fitted for another image model"
    assert wht.needs_refit(w, 100, "m", "pca", 8, 0.1) == "settings changed"
    assert wht.needs_refit(w, 100, "m", "pca", 0, 0.3) == "settings changed"


def test_library_whitening_feeds_indices_gallery_and_queries(library_copy, sample_gallery):
    from explorer.core.search import QuerySpec, Searcher

    lib = type(library_copy)(library_copy.dir, replace(library_copy.settings, whitening="pca"), loader=library_copy.loader)
    assert lib.whitening_due() == "no whitening fitted yet"
    w = lib.fit_whitening()
    assert lib.whitening_due() is None
    assert w.stamp["model_id"] == lib.image_model.model_id and w.stamp["n"] == 50
    assert lib.whitening_path().is_file()
    lib.check()
    ids, raw = lib.store.load_vectors("image", lib.image_model.model_id)
    np.testing.assert_allclose(lib.index("image").get_vectors(ids), w.apply(raw), atol=1e-6)
    gal = lib.gallery_vectors()
    np.testing.assert_allclose(gal.image, w.apply(raw[np.searchsorted(ids, gal.ids)]), atol=1e-6)
    # a query of a library image scores itself (excluded) and the rest with whitened vectors
    query = sorted((sample_gallery / "coffee").iterdir())[0]
    hits = Searcher(lib).search(QuerySpec(image=str(query)), modes=("image",), k=5).modes["image"].hits
    row = {int(i): j for j, i in enumerate(ids.tolist())}
    self_id = next(i for i, p in zip(*_paths(lib)) if p == str(query.resolve()))
    qv = w.apply(raw[row[self_id]])
    for h in hits:
        assert abs(h.score - float(w.apply(raw[row[h.image_id]]) @ qv)) < 1e-4
    # stored vectors stay raw; with whitening off the library searches raw vectors again
    off = type(lib)(lib.dir, replace(lib.settings, whitening="none"), loader=lib.loader)
    assert off.whitening is None and off.image_dim == 1280
    np.testing.assert_array_equal(off.gallery_vectors().image, raw[np.searchsorted(ids, gal.ids)])
    # a refit with a smaller output dimension rebuilds the indices at that dimension
    small = type(lib)(lib.dir, replace(lib.settings, whitening_dim=32), loader=lib.loader)
    assert small.whitening.out_dim == 1280 and small.whitening_due() == "settings changed"  # used until refitted
    assert small.fit_whitening().out_dim == 32
    small.check()
    assert small.index("image").dim == 32 and small.index("image").live_ids() == set(ids.tolist())
    assert small.gallery_vectors().image.shape[1] == 32
    lib.close()
    off.close()
    small.close()


def _paths(lib):
    import os

    from sqlalchemy import select

    from explorer.core.store import ImageRow

    with lib.store.session() as s:
        rows = s.execute(select(ImageRow.id, ImageRow.path_key)).all()
    return [r[0] for r in rows], [os.fsdecode(r[1]) for r in rows]


# -- reranking -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", [m for m in rr.METHODS if m != "none"])
@pytest.mark.parametrize("mode", ["image", "fused", "caption"])
def test_rerank_scores_are_the_same_in_search_and_evaluation(indexed_sample, sample_gallery, mode, method):
    from explorer.core.evaluate import query_scores
    from explorer.core.search import QuerySpec, Searcher

    q_paths, g_paths, S = query_scores(indexed_sample, f"folders:{sample_gallery}", mode, method)
    searcher = _searcher(indexed_sample)
    for qi in (0, 17, 33):
        res = searcher.search(QuerySpec(image=str(q_paths[qi])), modes=(mode,), k=10, rerank=method).modes[mode]
        assert res.rerank == method
        row = S[qi]
        want = {str(p): float(v) for p, v in zip(g_paths, row)}
        assert len(res.hits) == 10
        for h in res.hits:  # every hit has the evaluation's score for that image ...
            assert abs(h.score - want[h.path]) < 1e-5, (h.path, h.score, want[h.path])
        # ... and the hits are the evaluation's top 10 (as a set of scores: ties may list in another order)
        np.testing.assert_allclose([h.score for h in res.hits], np.sort(row)[::-1][:10], atol=1e-5)


_SEARCHERS = {}


def _searcher(lib):
    from explorer.core.search import Searcher

    if id(lib) not in _SEARCHERS:
        _SEARCHERS[id(lib)] = Searcher(lib)
    return _SEARCHERS[id(lib)]


def test_rerank_methods_are_one_home_and_keep_excluded_items_out():
    rng = np.random.default_rng(0)
    g = l2_normalise(rng.normal(size=(120, 24)).astype(np.float32))
    sc = rr.Scorer("dot", "image")
    q, G = rr.Vectors({"image": g[:4]}), rr.Vectors({"image": g})
    base = sc(q, G)
    base[np.arange(4), np.arange(4)] = -np.inf
    for m in rr.METHODS:
        S = rr.rerank(m, sc, q, G, base)
        assert S.shape == base.shape and np.all(np.isneginf(S[np.arange(4), np.arange(4)]))
        assert np.isfinite(S).sum() == 4 * 119
        if m in ("superglobal", "kreciprocal"):  # only the top is reordered; the rest keeps its order below it
            top = np.argsort(-base[0])[: rr.SG_K if m == "superglobal" else rr.KR_K]
            rest = np.setdiff1d(np.arange(1, 120), top)
            assert S[0, rest].max() < S[0, top].min()
            np.testing.assert_array_equal(np.argsort(-S[0, rest], kind="stable"), np.argsort(-base[0, rest], kind="stable"))
    # aqe with the old parameters: query + sum of s^3 * top-5 neighbours
    top = np.argsort(-base[1])[:5]
    qx = l2_normalise(g[1] + ((np.clip(base[1, top], 0, None) ** 3)[:, None] * g[top]).sum(0))
    got = rr.rerank("aqe", sc, q, G, base)[1]
    keep = np.arange(120) != 1
    np.testing.assert_allclose(got[keep], (g @ qx)[keep], atol=1e-6)
    with pytest.raises(ExplorerError, match="unknown rerank"):
        rr.rerank("diffusion", sc, q, G, base)


# -- re-indexing after the descriptor changed -----------------------------------------------


def test_new_descriptor_reembeds_images_once_and_keeps_captions_and_detections(tmp_path, skimage_dir, loader, monkeypatch):
    from sqlalchemy import select

    from explorer.core.library import Library
    from explorer.core.models.effnet import MODEL_ID
    from explorer.core.models.registry import ModelLoader
    from explorer.core.pipeline import Indexer
    from explorer.core.store import CaptionRow, DetectionRow, VectorRow

    g = tmp_path / "g"
    g.mkdir()
    for name in ("coffee.png", "chelsea.png", "motorcycle_left.png"):
        Image.open(skimage_dir / name).convert("RGB").save(g / name.replace(".png", ".jpg"))
    lib_dir = tmp_path / "lib"
    old_settings = Settings(image_preprocess="crop", image_scales=(1.0,), library=str(lib_dir))
    old_loader = ModelLoader(old_settings)
    for role in ("text", "captioner", "detector"):
        loader.get(role)
    # reuse the session's loaded models; only the image encoder differs
    old_loader._cache.update({k: v for k, v in loader._cache.items() if not k.startswith("effnet-lite0:")})
    old = Library(lib_dir, old_settings, loader=old_loader)
    assert old.image_model.model_id == LEGACY_MODEL_ID
    assert Indexer(old).run([g]).indexed == 3
    old.close()

    def snapshot(lib):
        with lib.store.session() as s:
            caps = sorted((c.image_id, c.source, c.text, c.model_id) for c in s.scalars(select(CaptionRow)))
            dets = sorted((d.image_id, d.label, round(d.score, 6), d.x1, d.y1, d.x2, d.y2) for d in s.scalars(select(DetectionRow)))
            vecs = {(v.image_id, v.kind, v.model_id): v.seq for v in s.scalars(select(VectorRow))}
        return caps, dets, vecs

    caps0, dets0, vecs0 = snapshot(Library(lib_dir, old_settings, loader=old_loader))
    new = Library(lib_dir, Settings(library=str(lib_dir)), loader=loader)
    assert new.image_model.model_id == MODEL_ID != LEGACY_MODEL_ID
    used = []
    for role, meth in (("detector", "detect"), ("captioner", "caption")):
        m = loader.get(role)
        real = getattr(m, meth)
        monkeypatch.setattr(m, meth, lambda *a, _r=real, _n=meth, **k: used.append(_n) or _r(*a, **k))
    s = Indexer(new).run([g])
    assert s.ok and s.indexed == 3 and not used, f"only the image encoder may run, ran {used}"
    caps1, dets1, vecs1 = snapshot(new)
    assert caps1 == caps0 and dets1 == dets0  # captions and detections kept
    assert sorted(k for k in vecs1 if k[2] == MODEL_ID) == sorted((i, "image", MODEL_ID) for i, _, _ in
                                                                   [k for k in vecs0 if k[1] == "image"])
    assert all(vecs1[k] == seq for k, seq in vecs0.items())  # old vectors untouched
    assert Indexer(new).run([g]).unchanged == 3  # once: a second run has nothing to do
    new.close()


def test_rerank_is_stable_to_query_reencoding_and_pool_order():
    """A search re-encodes its query (float noise ~1e-7) and scores a pool in id order; with many
    identical gallery vectors (identical captions) the chosen neighbours must not depend on either."""
    rng = np.random.default_rng(0)
    distinct = l2_normalise(rng.normal(size=(6, 16)).astype(np.float32))
    g = distinct[rng.integers(0, 6, size=60)]
    ids = np.arange(60) * 3 + 7
    sc = rr.Scorer("dot", "caption")
    for m in rr.METHODS[1:]:
        for j in range(0, 60, 7):
            q = g[j : j + 1]
            G = rr.Vectors({"caption": g}, ids=ids)
            base = sc(rr.Vectors({"caption": q}), G)
            base[0, j] = -np.inf
            want = rr.rerank(m, sc, rr.Vectors({"caption": q}), G, base)[0]
            perm = rng.permutation(60)
            qn = l2_normalise(q + rng.normal(size=q.shape).astype(np.float32) * 1e-7)
            Gp = rr.Vectors({"caption": g[perm]}, ids=ids[perm])
            bp = sc(rr.Vectors({"caption": qn}), Gp)
            bp[0, perm == j] = -np.inf
            got = rr.rerank(m, sc, rr.Vectors({"caption": qn}), Gp, bp)[0]
            ok = np.isfinite(want[perm])
            assert np.array_equal(ok, np.isfinite(got))
            np.testing.assert_allclose(got[ok], want[perm][ok], atol=1e-5, err_msg=m)


def test_whiten_cli_fits_learned_whitening_from_labels(library_copy, sample_gallery):
    import subprocess
    import sys

    lib_dir = str(library_copy.dir)
    library_copy.close()
    cmd = [sys.executable, "-m", "explorer", "whiten", "--library", lib_dir, "--gt", f"folders:{sample_gallery}", "--whitening", "lw"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "whitening lw: fitted on 50 image vectors" in r.stdout and "rebuilt" in r.stdout
    w = wht.Whitening.load(next((library_copy.dir / "whitening").glob("*.npz")))
    assert w.kind == "lw" and w.stamp["labels"] == 13
    bad = subprocess.run([sys.executable, "-m", "explorer", "whiten", "--library", lib_dir, "--whitening-shrinkage", "2"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "shrinkage must be in [0, 1]" in bad.stderr
