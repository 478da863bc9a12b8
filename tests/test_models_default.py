"""The offline default models are real models: checked on real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from explorer.core.config import Settings
from explorer.core.errors import ExplorerError, ModelUnavailable
from explorer.core.imageio import load_image
from explorer.core.models.registry import ModelLoader, probe

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def photos(skimage_dir):
    return {n: load_image(skimage_dir / f"{n}.png").image for n in ("chelsea", "coffee", "astronaut", "motorcycle_left")}


def test_imagenet_labels_of_chelsea_include_a_cat(loader, photos):
    top = loader.get("classifier", "effnet-classifier").top_labels([photos["chelsea"]], k=3)[0]
    assert CAT_CLASSES & {c.label for c in top}, top


def test_detector_finds_cat_and_cup(loader, photos):
    dets = loader.get("detector").detect([photos["chelsea"], photos["coffee"]])
    assert any(d.label == "cat" and d.score > 0.5 for d in dets[0]), dets[0]
    assert any(d.label == "cup" and d.score > 0.5 for d in dets[1]), dets[1]
    w, h = photos["coffee"].size
    for d in dets[1]:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_structured_caption_of_coffee_names_a_cup(loader, photos):
    cap = loader.get("captioner").caption([photos["coffee"]])[0]
    assert "cup" in cap.text and cap.text.startswith("a photo of")
    assert cap.source == "generated" and 0 < cap.confidence <= 1


def test_minilm_cat_kitten_car(loader):
    v = loader.get("text").embed_texts(["a cat", "a kitten", "a car"])
    assert v.dtype == np.float32 and v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_image_encoder_is_normalised_and_tells_similar_photos(loader, photos, skimage_dir):
    enc = loader.get("image")
    right = load_image(skimage_dir / "motorcycle_right.png").image
    v = enc.embed_images([photos["motorcycle_left"], right, photos["coffee"]])
    assert v.shape == (3, 1280) and v.dtype == np.float32 and enc.model_id
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_every_default_role_is_ready():
    s = Settings()
    for role in ("image", "text", "captioner", "detector"):
        av = probe(role, s)
        assert av.ready and os.path.exists(av.where.split(" ")[0]) or av.where.startswith("built in"), (role, av)


def test_settings_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"captioner": "hf:from-file", "detector": "hf-detr:from-file"}))
    monkeypatch.setenv("EXPLORER_CONFIG", str(cfg))
    monkeypatch.setenv("EXPLORER_DETECTOR", "hf-owlvit:from-env")
    s = Settings.load({"image": "open_clip:from-flag"})
    assert (s.captioner, s.detector, s.image, s.text) == ("hf:from-file", "hf-owlvit:from-env", "open_clip:from-flag", "minilm")
    cfg.write_text("{not json")
    with pytest.raises(ExplorerError, match="not valid JSON"):
        Settings.load()
    cfg.write_text(json.dumps({"colour": "blue"}))
    with pytest.raises(ExplorerError, match="unknown keys"):
        Settings.load()


def test_unknown_backend_and_missing_weights_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ExplorerError, match="unknown image backend 'nope'"):
        ModelLoader(Settings(image="nope")).get("image")
    with pytest.raises(ModelUnavailable) as e:
        ModelLoader(Settings(captioner="hf:someone/missing-captioner")).get("captioner")
    assert "\n" not in str(e.value) and "models" in str(e.value)


def test_cli_models_reports_ready_and_missing(tmp_path):
    env = {**os.environ, "EXPLORER_CONFIG": str(tmp_path / "c.json"), "EXPLORER_MODELS_DIR": str(tmp_path / "models")}
    ok = subprocess.run([sys.executable, "-m", "explorer", "models", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    d = json.loads(ok.stdout)
    assert d["ready"] and [r["role"] for r in d["roles"]] == ["image", "text", "captioner", "detector"]
    bad = subprocess.run([sys.executable, "-m", "explorer", "models", "--captioner", "hf:Salesforce/blip-image-captioning-base"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1
    assert "MISSING" in bad.stdout and "Salesforce--blip-image-captioning-base" in bad.stdout
    err = subprocess.run([sys.executable, "-m", "explorer", "index", str(tmp_path), "--library", str(tmp_path / "lib"),
                          "--image-encoder", "open_clip:ViT-B-32@nowhere.pt"], capture_output=True, text=True, env=env, timeout=300)
    assert err.returncode == 2 and err.stderr.startswith("error: ") and "Traceback" not in err.stderr
    assert len(err.stderr.strip().splitlines()) == 1
