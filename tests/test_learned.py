"""Learned fusion on real photos: cached box features, training, the α-fused start, safe save/load, k-fold proof."""

from __future__ import annotations

import dataclasses
import json
import pickle
import sqlite3
import struct
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from explorer.core.errors import ExplorerError  # noqa: E402
from explorer.core.learned import (  # noqa: E402
    box_feature_id,
    box_support,
    embed_gallery,
    embed_query,
    ensure_box_features,
    learned_vectors_for_eval,
    load_head,
    query_box_features,
    save_head,
    train_fusion,
)
from explorer.core.learned.features import BOX_DIM, BoxFeatures, BoxMetaRow, load_features  # noqa: E402
from explorer.core.learned.head import FusionHead, LossConfig  # noqa: E402
from explorer.core.learned.io import FORMAT  # noqa: E402
from explorer.core.learned.train import fit, labelled_features, make_head_config  # noqa: E402


@pytest.fixture(scope="module")
def lib(tmp_path_factory, indexed_sample, loader):
    """A writable copy of the indexed sample library (the session one is read-only), box features cached."""
    from explorer.core.library import Library

    dst = tmp_path_factory.mktemp("learned") / "lib"
    dst.mkdir()
    src = sqlite3.connect(indexed_sample.dir / "library.sqlite")
    out = sqlite3.connect(dst / "library.sqlite")
    src.backup(out)
    src.close()
    out.close()
    library = Library(dst, loader.settings.__class__(library=str(dst)), loader=loader)
    report = ensure_box_features(library)
    assert report.computed == library.store.count_images() and not report.failed
    return library


@pytest.fixture(scope="module")
def data(lib, sample_gallery):
    return labelled_features(lib, f"folders:{sample_gallery}", use_boxes=True)


@pytest.fixture(scope="module")
def trained(lib, sample_gallery, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "head.safetensors"
    report = train_fusion(lib, f"folders:{sample_gallery}", out, epochs=3, val_split=0.2, seed=0, patience=0)
    return report, out


# -- features ---------------------------------------------------------------------------------


def test_box_features_cached_in_db(lib):
    from sqlalchemy import select

    from explorer.core.store import VectorRow

    fid = box_feature_id(lib.image_model.model_id)
    assert fid.endswith("/roi-v1")
    again = ensure_box_features(lib)
    assert again.computed == 0 and again.cached == lib.store.count_images()  # training never re-runs the backbone
    with lib.store.session() as s:
        rows = s.scalars(select(VectorRow).where(VectorRow.kind == "boxes", VectorRow.model_id == fid)).all()
        metas = {m.image_id: m for m in s.scalars(select(BoxMetaRow).where(BoxMetaRow.feature_id == fid))}
    assert len(rows) == lib.store.count_images()
    n_with_boxes = 0
    for r in rows:
        a = r.array()
        assert a.ndim == 2 and a.shape[1] == BOX_DIM and a.shape[0] <= 8
        assert a.shape[0] == metas[r.image_id].n == len(json.loads(metas[r.image_id].labels))
        if len(a):
            n_with_boxes += 1
            np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
            scores = json.loads(metas[r.image_id].scores)
            assert scores == sorted(scores, reverse=True)
    assert n_with_boxes > 0  # the detector finds objects in these photos (astronaut, cat, motorcycle...)


def test_reindexed_image_gets_fresh_box_features(lib):
    from sqlalchemy import select

    from explorer.core.store import VectorRow

    with lib.store.Session.begin() as s:
        v = s.scalars(select(VectorRow).where(VectorRow.kind == "image")).first()
        v.seq = lib.store.next_seq(s)  # what re-indexing an image does
    assert ensure_box_features(lib).computed == 1
    assert ensure_box_features(lib).computed == 0


def test_features_and_query_path_agree(lib):
    fs, _ = load_features(lib, compute_missing=False)
    j = int(np.argmax(fs.box_mask.sum(1)))
    iid = int(fs.ids[j])
    from explorer.core.imageio import load_image
    from explorer.core.models.base import Detection
    from explorer.core.store import DetectionRow, ImageRow

    with lib.store.session() as s:
        row = s.get(ImageRow, iid)
        dets = [Detection(d.label, d.score, d.box) for d in s.query(DetectionRow).filter(DetectionRow.image_id == iid)]
        path = row.fs_path
    loaded = load_image(path)
    dets_work = [Detection(d.label, d.score, tuple(v / loaded.scale for v in d.box)) for d in dets]
    bf = query_box_features(lib, loaded.image, dets_work)
    k = int(fs.box_mask[j].sum())
    assert len(bf.feats) == k
    np.testing.assert_allclose(bf.feats, fs.boxes[j, :k], atol=1e-4)
    np.testing.assert_allclose(bf.geom, fs.geom[j, :k], atol=1e-3)


def test_other_image_encoders_disable_boxes_clearly():
    fake = SimpleNamespace(image_model=SimpleNamespace(model_id="open_clip:ViT-B-32@laion2b", dim=512))
    ok, why = box_support(fake)
    assert not ok and "EfficientNet" in why and "open_clip:ViT-B-32@laion2b" in why


# -- training ---------------------------------------------------------------------------------


def test_loss_decreases_on_real_photos(lib, data):
    fs, labels, _ = data
    cfg = make_head_config(lib, use_boxes=True)
    res = fit(fs, labels, None, None, cfg, LossConfig(), epochs=10, batch_size=64, seed=0)
    losses = [e.loss for e in res.history]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    for part in ("fused", "arcface", "nce", "box"):
        assert res.history[-1].parts[part] < res.history[0].parts[part], (part, res.history[0].parts, res.history[-1].parts)


def test_every_loss_term_can_be_switched_off(lib, data):
    fs, labels, _ = data
    for loss in (LossConfig(arcface=False), LossConfig(lambda_nce=0.0), LossConfig(lambda_box=0.0), LossConfig(lambda_fused=0.0)):
        res = fit(fs, labels, None, None, make_head_config(lib, use_boxes=True), loss, epochs=1, batch_size=64)
        on = set(res.history[0].parts)
        assert ("arcface" in on) == loss.arcface and ("nce" in on) == (loss.lambda_nce > 0) and ("box" in on) == (loss.lambda_box > 0)
        assert ("fused" in on) == (loss.lambda_fused > 0)
    with pytest.raises(ValueError, match="no loss term"):
        fit(fs, labels, None, None, make_head_config(lib, use_boxes=False), LossConfig(arcface=False, lambda_nce=0.0, lambda_fused=0.0),
            epochs=1)


def test_train_fusion_report_is_open_set_and_deterministic(lib, sample_gallery, trained, tmp_path):
    report, out = trained
    assert out.is_file() and report.out_path == str(out.resolve())
    # selection by inner folds over the labels: each inner fold validates on labels its head never saw
    assert report.val_labels and len(report.inner) == 5
    for f in report.inner:
        assert f["val_labels"] and not set(f["val_labels"]) & set(f["train_labels"])  # split by label
    assert sorted(lab for f in report.inner for lab in f["val_labels"]) == sorted(report.val_labels)  # each label once
    assert len(report.epochs) == 3 and all(e.val_map is not None for e in report.epochs)
    # epoch 0 is the start (exactly the α-fused mode): a trained epoch replaces it only with a val CI above 0
    assert 0 <= report.best_epoch <= 3
    sel = report.selection
    assert sel is not None and sel["n_pairs"] == report.n_val_images
    if report.best_epoch == 0:
        assert report.best_val_map == report.val_map_untrained
        assert any("ranks exactly like the α-fused mode" in n for n in report.notes)
    else:
        assert report.best_val_map == max(e.val_map for e in report.epochs) > report.val_map_untrained and sel["ci95"][0] > 0
    again = train_fusion(lib, f"folders:{sample_gallery}", None, epochs=3, val_split=0.2, seed=0, patience=0)
    assert [e.loss for e in again.epochs] == [e.loss for e in report.epochs]
    assert again.val_labels == report.val_labels


def test_bad_or_too_few_labels_are_refused(lib, sample_gallery, tmp_path):
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (one / "cat" / "chelsea.jpg").symlink_to(sample_gallery / "cat" / "chelsea.jpg")
    (one / "cat" / "mirror.jpg").symlink_to(sample_gallery / "cat" / "chelsea_mirror.jpg")
    with pytest.raises(ExplorerError, match="too few labels"):
        train_fusion(lib, f"folders:{one}", None, epochs=1)
    # classes with a single image each are not enough either
    singles = tmp_path / "singles"
    for lab in ("cat", "coffee", "rocket"):
        (singles / lab).mkdir(parents=True)
        src = next((sample_gallery / lab).iterdir())
        (singles / lab / src.name).symlink_to(src)
    with pytest.raises(ExplorerError, match="too few labels"):
        train_fusion(lib, f"folders:{singles}", None, epochs=1, val_split=0.0)
    # enough for training alone, but not for an unseen-label validation split
    with pytest.raises(ExplorerError, match="validation split by label"):
        train_fusion(lib, f"folders:{sample_gallery}", None, epochs=1, val_split=0.9)
    # images the library has never indexed
    other = tmp_path / "other"
    for lab in ("a", "b"):
        (other / lab).mkdir(parents=True)
        for i in range(2):
            (other / lab / f"{i}.jpg").write_bytes((sample_gallery / "cat" / "chelsea.jpg").read_bytes())
    with pytest.raises(ExplorerError, match="not in the library"):
        train_fusion(lib, f"folders:{other}", None, epochs=1)
    # pair-based ground truth has no labels to train on
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"query,relevant\n{sample_gallery / 'cat' / 'chelsea.jpg'},{sample_gallery / 'cat' / 'chelsea_mirror.jpg'}\n")
    with pytest.raises(ExplorerError, match="trains on labels"):
        train_fusion(lib, f"csv:{csv}", None, epochs=1)
    with pytest.raises(ExplorerError, match="nothing to train"):
        train_fusion(lib, f"folders:{sample_gallery}", None, arcface=False, lambda_nce=0.0, lambda_fused=0.0)


def test_cancel_stops_training_and_saves_nothing(lib, sample_gallery, tmp_path):
    import threading

    from explorer.core.errors import Cancelled

    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="nothing was saved"):
        train_fusion(lib, f"folders:{sample_gallery}", tmp_path / "h.safetensors", epochs=2, cancel=stop)
    assert not (tmp_path / "h.safetensors").exists()


# -- save / load ------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(lib, trained):
    _, out = trained
    head = load_head(out, lib)
    again = tmp = out.with_name("copy.safetensors")
    save_head(head, tmp, head.train_info)
    again = load_head(tmp, lib)
    assert again.cfg == head.cfg and again.cfg.to_dict() == head.cfg.to_dict()
    a, b = head.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.train_info == head.train_info and again.train_info["val_labels"]
    ids1, v1 = embed_gallery(head, lib)
    ids2, v2 = embed_gallery(again, lib)
    assert np.array_equal(ids1, ids2) and np.array_equal(v1, v2)
    assert v1.shape == (lib.store.count_images(), head.vector_dim) and head.vector_dim == 2 * 1280 + 384 + 256
    # ArcFace centres and the box classifier depend on the training labels: not saved
    assert not any(k.startswith(("arcface", "box_cls")) for k in a)


def test_file_is_plain_safetensors(trained):
    from safetensors import safe_open

    _, out = trained
    raw = out.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])  # the whole header is JSON
    assert header["__metadata__"]["format"] == FORMAT
    cfg = json.loads(header["__metadata__"]["config"])
    from explorer.core.models.effnet import MODEL_ID

    assert cfg["image_model_id"] == MODEL_ID and cfg["text_dim"] == 384  # the default descriptor's id
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == FORMAT and len(list(f.keys())) > 10


def test_unsafe_corrupt_or_missing_files_are_refused(lib, trained, tmp_path):
    _, out = trained
    pick = tmp_path / "evil.safetensors"
    with open(pick, "wb") as f:
        pickle.dump({"img_proj.weight": np.zeros((256, 1280), np.float32)}, f)
    with pytest.raises(ExplorerError, match="not a readable safetensors"):
        load_head(pick, lib)
    torch_pickle = tmp_path / "torch.safetensors"
    torch.save({"w": torch.zeros(3)}, torch_pickle)
    with pytest.raises(ExplorerError, match="not a readable safetensors"):
        load_head(torch_pickle, lib)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(ExplorerError, match="not a readable safetensors"):
        load_head(cut, lib)
    with pytest.raises(ExplorerError, match="not found"):
        load_head(tmp_path / "nope.safetensors", lib)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ExplorerError, match="not a fusion head"):
        load_head(foreign, lib)


def test_head_for_other_models_is_refused(lib, tmp_path):
    good = make_head_config(lib, use_boxes=True)
    load_head(save_head(FusionHead(good), tmp_path / "ok.safetensors"), lib)
    for over, what in ((dict(image_model_id="open_clip:ViT-B-32@laion2b", image_dim=512), "image encoder"),
                       (dict(image_dim=640), "image encoder"),
                       (dict(text_model_id="other-text-model"), "text encoder"),
                       (dict(text_dim=512), "text encoder"),
                       (dict(box_feature_id=good.box_feature_id.replace("roi-v1", "roi-v0")), "box features")):
        p = save_head(FusionHead(dataclasses.replace(good, **over)), tmp_path / "h.safetensors")
        load_head(p)  # readable on its own
        with pytest.raises(ExplorerError, match=f"trained for other models.*{what}"):
            load_head(p, lib)
    with pytest.raises(ExplorerError, match="safetensors"):
        save_head(FusionHead(good), tmp_path / "h.pt")


# -- inference --------------------------------------------------------------------------------


def test_query_path_equals_the_query_side_of_the_pair(lib, trained):
    from explorer.core.learned.train import embed_pair

    _, out = trained
    head = load_head(out, lib)
    fs, _ = load_features(lib, compute_missing=False)
    ids, gal = embed_gallery(head, lib)
    q_all, g_all = embed_pair(head, fs)
    assert np.array_equal(gal, g_all)
    for j in (0, int(np.argmax(fs.box_mask.sum(1)))):
        k = int(fs.box_mask[j].sum())
        q = embed_query(head, fs.image[j], fs.caption[j], BoxFeatures(fs.boxes[j, :k], fs.geom[j, :k], fs.box_labels[j]), float(fs.weight[j]))
        np.testing.assert_allclose(q, q_all[j], atol=1e-5)
    no_cap = embed_query(head, fs.image[0], None, None)
    assert no_cap.shape == (head.vector_dim,)
    # no caption: the base part is the image vector alone, no caption term
    np.testing.assert_array_equal(no_cap[:1280], fs.image[0])
    assert not no_cap[1280 : 2 * 1280 + 384].any()
    evq, evg = learned_vectors_for_eval(head, lib, ids[::-1].tolist())
    assert np.array_equal(evg, gal[::-1]) and np.array_equal(evq, q_all[::-1])
    with pytest.raises(ExplorerError, match="no image or caption vector"):
        learned_vectors_for_eval(head, lib, [10**9])
    with pytest.raises(ExplorerError, match="expects 1280"):
        embed_query(head, np.zeros(512, np.float32), fs.caption[0])


# -- the start point is exactly α-fusion --------------------------------------------------------


def test_untrained_head_scores_exactly_like_the_alpha_fused_mode(lib, captioned, tmp_path):
    """The head's start (gate 0) is the library's α-fused mode, generated-caption weights included."""
    from explorer.core.evaluate import run_evaluation

    fs, _ = load_features(lib, compute_missing=False)
    assert (fs.weight < 1).any() and (fs.weight > 0).any()  # generated captions: weights between 0 and 1 matter
    cfg = make_head_config(lib, use_boxes=True)
    head = FusionHead(cfg)  # random residual weights, gate exactly 0
    assert float(head.gate.detach()) == 0.0 and not head.block_scale.detach().any() and cfg.alpha == lib.fused_index_alpha
    path = save_head(head, tmp_path / "untrained.safetensors")
    head = load_head(path, lib)
    q, g = learned_vectors_for_eval(head, lib, fs.ids.tolist())
    from explorer.core import fusion

    for i in (0, 5, len(fs) - 1):
        ci, cc = fs.image @ fs.image[i], fs.caption @ fs.caption[i]
        want = fusion.fused_scores(ci, cc, lib.fused_index_alpha, float(fs.weight[i]), fs.weight)  # the formula's one home
        np.testing.assert_allclose(g @ q[i], want, atol=2e-6)
    gt = captioned[1]  # five broad labels over the sample photos (this library keeps its generated captions)
    rep = run_evaluation(lib, gt, modes=("image", "fused", "learned"), learned_head=head)
    by = {m.mode: m for m in rep.results}
    assert np.array_equal(by["learned"].ap, by["fused"].ap) and by["learned"].map == by["fused"].map
    assert by["fused"].map != by["image"].map  # the check has teeth: the two modes differ here
    # opening the gate departs from α-fusion
    with torch.no_grad():
        head.gate.fill_(0.5)
    rep2 = run_evaluation(lib, gt, modes=("fused", "learned"), learned_head=head)
    by2 = {m.mode: m for m in rep2.results}
    assert not np.array_equal(by2["learned"].ap, by2["fused"].ap)


LABEL_WORDS = {  # the sample photos regrouped into 5 broad labels, and captions that name each label in varied words
    "living": (["astronaut", "cameraman", "cat"], ["a living being", "someone alive, a creature", "portrait of a living thing",
                                                   "an animal or a person"]),
    "texture": (["brick", "grass", "gravel"], ["a texture", "close-up of a rough surface pattern", "textured material",
                                               "a repeating surface"]),
    "science": (["cells", "retina", "galaxy"], ["a scientific image", "microscope or telescope picture",
                                                "imagery from a science lab", "research imaging"]),
    "vehicle": (["motorcycle", "rocket"], ["a vehicle", "a machine for travelling", "transport", "something you ride or fly"]),
    "object": (["coffee", "coins"], ["an everyday object", "small things on a table", "household items", "a thing you can hold"]),
}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, lib, sample_gallery):
    """The sample library with user captions that name five broad labels in varied words, and that ground truth."""
    import os
    import shutil

    from sqlalchemy import select

    from explorer.core.edits import USER_MODEL_ID, USER_SOURCE, set_captions
    from explorer.core.library import Library
    from explorer.core.store import ImageRow

    root = tmp_path_factory.mktemp("broad")
    dst = root / "lib"
    shutil.copytree(lib.dir, dst)
    library = Library(dst, lib.settings.__class__(library=str(dst)), loader=lib.loader)
    gt = root / "gt"
    with library.store.session() as s:
        by_path = {os.fsdecode(p): i for i, p in s.execute(select(ImageRow.id, ImageRow.path_key))}
    items = []
    for label, (folders, words) in LABEL_WORDS.items():
        (gt / label).mkdir(parents=True)
        n = 0
        for folder in folders:
            for f in sorted((sample_gallery / folder).iterdir()):
                (gt / label / f.name).symlink_to(f)
                items.append((by_path[os.path.realpath(f)], words[n % len(words)]))
                n += 1
    set_captions(library, items, USER_SOURCE, USER_MODEL_ID, strict=True)
    return library, f"folders:{gt}"


def test_learned_beats_image_only_when_user_captions_name_the_label(captioned):
    """Fails with a head that starts from the image vectors (the earlier design): informative user
    captions must carry into the learned mode, on labels never seen in training (5-fold, open set)."""
    from explorer.core.learned.experiment import run_kfold

    library, gt = captioned
    rep = run_kfold(library, gt, folds=5, epochs=4, patience=0, n_boot=2000, seed=0)
    assert len(rep.folds) == 5 and sum(f.n_test for f in rep.folds) == len(rep.pooled("image"))
    for f in rep.folds:
        assert not set(f.test_labels) & (set(f.train_labels) | set(f.val_labels))
    c = rep.compare("image", "learned")
    assert c.ci_low > 0, (rep.map("image"), rep.map("learned"), c.to_dict())
    # and never below the training-free α-fusion
    assert rep.map("learned") >= rep.map("alpha-fused") - 0.002, (rep.map("alpha-fused"), rep.map("learned"))
    table = "\n".join(rep.table())
    assert "| pooled |" in table and "learned − α-fused" in table


def test_closed_set_protocol_keeps_labels_and_splits_images(captioned):
    from explorer.core.learned.experiment import run_kfold

    library, gt = captioned
    rep = run_kfold(library, gt, folds=3, closed_set=True, epochs=2, patience=0, n_boot=500)
    assert rep.closed_set and "closed-set" in rep.table()[0]
    seen = np.concatenate([f.ap["image"] for f in rep.folds])
    assert len(seen) == rep.n_images
    for f in rep.folds:
        assert set(f.test_labels) <= set(f.train_labels)  # same labels, new images
        for mode in ("image", "alpha-fused", "learned"):
            assert len(f.ap[mode]) == f.n_test and 0 <= np.nanmean(f.ap[mode]) <= 1


# -- selection: a validation gain must hold across labels -------------------------------------


def test_selection_needs_a_gain_that_holds_across_labels():
    """The earlier rule (query-resampled CI above zero) accepted a gain carried by one validation
    label; on unseen test labels such a head lost (Fashion-MNIST open-set). Labels are resampled now."""
    from explorer.core.evaluation import paired_comparison
    from explorer.core.learned.train import _justified, label_comparison

    rng = np.random.default_rng(0)
    start = rng.uniform(0.2, 0.6, 100)
    trained = start.copy()
    trained[:50] += 0.10 + rng.normal(0, 0.01, 50)  # label "a": a big gain
    trained[50:] -= 0.02 + np.abs(rng.normal(0, 0.005, 50))  # label "b": a loss
    labels = ["a"] * 50 + ["b"] * 50
    assert paired_comparison(start, trained, n_boot=2000).ci_low > 0  # queries resampled: "better"
    c = label_comparison(start, trained, labels, n_boot=2000)
    assert c["n_labels"] == 2 and c["labels_better"] == 1 and c["labels_worse"] == 1 and c["ci95"][0] < 0 < c["mean_diff"]
    assert not _justified(float(trained.mean()), float(start.mean()), c, require_ci=True)
    # a gain on every label passes
    both = start + 0.03 + rng.normal(0, 0.01, 100)
    many = [f"l{i % 5}" for i in range(100)]
    c2 = label_comparison(start, both, many, n_boot=2000)
    assert c2["ci95"][0] > 0 and c2["labels_better"] == 5
    assert _justified(float(both.mean()), float(start.mean()), c2, require_ci=True)
    # one label cannot show that a gain carries over to other labels
    c1 = label_comparison(start, both, ["x"] * 100, n_boot=200)
    assert c1["n_labels"] == 1 and not _justified(float(both.mean()), float(start.mean()), c1, require_ci=True)


NOISE_WORDS = ["a blue teapot", "an old map", "receipt from a bakery", "a pair of gloves", "sunset over a lake", "a violin",
               "stack of papers", "a wooden spoon"]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, lib, sample_gallery):
    """The sample library (13 labels) with user captions that say nothing about the label (random phrases, seeded)."""
    import shutil

    from explorer.core.edits import USER_MODEL_ID, USER_SOURCE, set_captions
    from explorer.core.library import Library

    dst = tmp_path_factory.mktemp("noisy") / "lib"
    shutil.copytree(lib.dir, dst)
    library = Library(dst, lib.settings.__class__(library=str(dst)), loader=lib.loader)
    fs, _ = load_features(library, compute_missing=False)
    rng = np.random.default_rng(1)
    set_captions(library, [(int(i), NOISE_WORDS[int(rng.integers(len(NOISE_WORDS)))]) for i in fs.ids.tolist()], USER_SOURCE,
                 USER_MODEL_ID, strict=True)
    return library, f"folders:{sample_gallery}"


def test_uninformative_captions_never_pull_the_head_below_alpha_fusion_on_unseen_labels(noisy):
    """Captions that carry nothing: the saved head must not fall below the α-fused mode on the
    held-out labels beyond noise. (On these photos, crops, mirrors and dimmed copies of one photo
    per label, what the head learns does carry over to unseen labels, on every label: measured
    +0.26 mAP with both the old and the new selection, every fold trained. So this is a guard, and
    a check that the label-resampled rule still trains where a gain holds across labels; the test
    that fails with the old rule is ``test_selection_needs_a_gain_that_holds_across_labels``.)"""
    from explorer.core.learned.experiment import run_kfold

    library, gt = noisy
    rep = run_kfold(library, gt, folds=5, epochs=6, patience=0, n_boot=2000, seed=0)
    for f in rep.folds:
        assert not set(f.test_labels) & (set(f.train_labels) | set(f.val_labels))
        sel = f.val_map["full"]["selection"]
        assert sel["unit"] == "label" and sel["n_labels"] == len(f.train_labels)  # every side label validated once
        if f.kept_epoch["learned"] == 0:
            assert np.array_equal(f.ap["learned"], f.ap["alpha-fused"])  # the start is exactly α-fusion
    c = rep.compare("alpha-fused", "learned")
    assert c.mean_diff >= -0.002, (rep.map("alpha-fused"), rep.map("learned"), [f.kept_epoch for f in rep.folds])
    assert any(f.kept_epoch["learned"] > 0 for f in rep.folds)  # the rule is not "always keep the start"
