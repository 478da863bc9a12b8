"""Learned fusion on real photos: cached box features, training, safe save/load, open-set proof."""

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
    for part in ("arcface", "nce", "box"):
        assert res.history[-1].parts[part] < res.history[0].parts[part], (part, res.history[0].parts, res.history[-1].parts)


def test_every_loss_term_can_be_switched_off(lib, data):
    fs, labels, _ = data
    for loss in (LossConfig(arcface=False), LossConfig(lambda_nce=0.0), LossConfig(lambda_box=0.0)):
        res = fit(fs, labels, None, None, make_head_config(lib, use_boxes=True), loss, epochs=1, batch_size=64)
        on = set(res.history[0].parts)
        assert ("arcface" in on) == loss.arcface and ("nce" in on) == (loss.lambda_nce > 0) and ("box" in on) == (loss.lambda_box > 0)
    with pytest.raises(ValueError, match="no loss term"):
        fit(fs, labels, None, None, make_head_config(lib, use_boxes=False), LossConfig(arcface=False, lambda_nce=0.0), epochs=1)


def test_train_fusion_report_is_open_set_and_deterministic(lib, sample_gallery, trained, tmp_path):
    report, out = trained
    assert out.is_file() and report.out_path == str(out.resolve())
    assert report.val_labels and not set(report.val_labels) & set(report.train_labels)  # split by label
    assert len(report.epochs) == 3 and all(e.val_map is not None for e in report.epochs)
    # epoch 0 is the initial head (PCA of the image vectors): training has to beat it on unseen labels
    assert 0 <= report.best_epoch <= 3
    assert report.best_val_map == max([report.val_map_untrained] + [e.val_map for e in report.epochs])
    assert (report.best_epoch == 0) == any("initial head" in n for n in report.notes)
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
        train_fusion(lib, f"folders:{sample_gallery}", None, arcface=False, lambda_nce=0.0)


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
    assert v1.shape == (lib.store.count_images(), 256)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
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


def test_query_embedding_equals_gallery_embedding(lib, trained):
    _, out = trained
    head = load_head(out, lib)
    fs, _ = load_features(lib, compute_missing=False)
    ids, gal = embed_gallery(head, lib)
    for j in (0, int(np.argmax(fs.box_mask.sum(1)))):
        k = int(fs.box_mask[j].sum())
        q = embed_query(head, fs.image[j], fs.caption[j], BoxFeatures(fs.boxes[j, :k], fs.geom[j, :k], fs.box_labels[j]), float(fs.weight[j]))
        np.testing.assert_allclose(q, gal[j], atol=1e-5)
    no_cap = embed_query(head, fs.image[0], None, None)
    assert no_cap.shape == (256,) and abs(np.linalg.norm(no_cap) - 1) < 1e-5
    ev = learned_vectors_for_eval(head, lib, ids[::-1].tolist())
    assert np.array_equal(ev, gal[::-1])
    with pytest.raises(ExplorerError, match="no image or caption vector"):
        learned_vectors_for_eval(head, lib, [10**9])
    with pytest.raises(ExplorerError, match="expects 1280"):
        embed_query(head, np.zeros(512, np.float32), fs.caption[0])


# -- proof ------------------------------------------------------------------------------------


def test_open_set_experiment_reports_all_modes_with_ci(lib, sample_gallery):
    from explorer.core.learned.experiment import run_experiment

    rep = run_experiment(lib, f"folders:{sample_gallery}", test_fraction=0.4, epochs=2, ablation=False, n_boot=500)
    s = rep.splits[0]
    assert not set(s.test_labels) & (set(s.train_labels) | set(s.val_labels))
    assert not set(s.val_labels) & set(s.train_labels)
    for mode in ("image", "alpha-fused", "learned"):
        assert len(rep.pooled(mode)) == s.n_test and 0 <= rep.map(mode) <= 1
    c = rep.compare("image", "learned")
    assert c.n_pairs == s.n_test and c.ci_low <= c.mean_diff <= c.ci_high
    md = rep.markdown()
    assert "| learned |" in md and "Δ vs image-only" in md
