"""Inference engines: every exported model agrees with torch on real photos; missing engines fail in one line."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.core.errors import ExplorerError, ModelUnavailable
from explorer.core.models import engines

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
          "rocket.jpg", "horse.png", "camera.png", "hubble_deep_field.jpg", "coins.png"]
EXPORTED = [e for e, ok in (("onnx", engines.has_onnxruntime()), ("openvino", engines.has_openvino())) if ok]


@pytest.fixture(scope="module")
def photos(open_photos):
    out = open_photos(PHOTOS, "RGB")
    # a crop at an odd aspect ratio, so that not every input is a centred skimage photo
    out.append(out[0].crop((40, 10, 500, 260)))
    return out


@pytest.fixture(scope="module")
def torch_core():
    from explorer.core.models.effnet import EffNetCore

    return EffNetCore("cpu", "torch")


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
@pytest.mark.parametrize("engine", EXPORTED)
def test_effnet_vectors_labels_and_feature_maps_agree_with_torch(engine, photos, torch_core):
    from explorer.core.models.effnet import EffNetCore
    from explorer.core.models.structured_captioner import LABEL_MIN

    core = EffNetCore("cpu", engine)
    assert core.engine == engine
    ref = torch_core.analyse([im.copy() for im in photos])
    got = core.analyse([im.copy() for im in photos])
    for r, g in zip(ref, got):
        assert _cos(r.embedding, g.embedding) >= 0.999
        assert int(np.argmax(r.probs)) == int(np.argmax(g.probs))
        # the labels a caption would name: same set, probabilities close
        assert set(np.nonzero(r.probs >= LABEL_MIN)[0]) == set(np.nonzero(g.probs >= LABEL_MIN)[0])
        assert np.abs(r.probs - g.probs).max() < 1e-2
    # the feature maps box features are pooled from, on the same real photos
    import torch

    from explorer.core.models.effnet import INPUT_SIZE, preprocess

    for im in photos:
        x = torch.from_numpy(preprocess([im], INPUT_SIZE, "whole"))
        with torch.inference_mode():
            a, b = torch_core.feature_map(x).float().numpy(), core.feature_map(x).float().numpy()
        assert _cos(a.ravel(), b.ravel()) >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("engine", EXPORTED)
def test_effnet_export_has_dynamic_batch_height_and_width(engine, torch_core):
    """The multi-scale pooling calls feature_map at several sizes: the exported graph must take them."""
    import torch

    from explorer.core.models.effnet import EffNetCore

    core = EffNetCore("cpu", engine)
    g = torch.Generator().manual_seed(0)
    for n, h, w in ((1, 224, 224), (3, 320, 256), (2, 160, 288)):
        x = torch.randn(n, 3, h, w, generator=g)
        with torch.inference_mode():
            ref = torch_core.feature_map(x)
            got = core.feature_map(x)
        assert isinstance(got, torch.Tensor) and got.shape == ref.shape
        for i in range(n):
            assert _cos(ref[i].numpy(), got[i].numpy()) >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("engine", EXPORTED)
def test_minilm_agrees_with_sentence_transformers(engine):
    from explorer.core.models.minilm import MiniLMTextEncoder

    texts = ["a photo of a cat", "espresso", "a photo of two people and a large dog on the left; top labels: tabby; colours: orange, brown",
             "the same dress in red; a photo of a dress; colours: red", "x " * 400, "Grüße, 東京 🙂"]
    ref = MiniLMTextEncoder("cpu", "torch").embed_texts(texts)
    enc = MiniLMTextEncoder("cpu", engine)
    assert enc.engine == engine
    got = enc.embed_texts(texts)  # one padded batch of very different lengths
    assert got.shape == ref.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (ref * got).sum(1).min() >= 0.999
    one = np.stack([enc.embed_texts([t])[0] for t in texts])  # unpadded: same vectors
    assert (one * got).sum(1).min() >= 0.999


@pytest.mark.slow
@pytest.mark.skipif(not engines.has_openvino(), reason="openvino is not installed (the 'fast' extra)")
def test_ssd_in_openvino_matches_opencv_dnn(photos):
    from explorer.core.models.ssd import SSDDetector, box_iou

    ref = SSDDetector(0.4, "torch")
    assert ref.engine == "cv2"
    ov = SSDDetector(0.4, "openvino")
    assert ov.engine == "openvino"
    a, b = ref.detect(photos), ov.detect(photos)
    assert sum(len(x) for x in a) >= 8  # the photos do contain objects
    for da, db in zip(a, b):
        assert sorted(d.label for d in da) == sorted(d.label for d in db)
        for d in da:
            best = max((box_iou(d.box, e.box) for e in db if e.label == d.label), default=0.0)
            assert best >= 0.9
            match = max((e for e in db if e.label == d.label), key=lambda e: box_iou(d.box, e.box))
            assert abs(match.score - d.score) < 0.02


def test_engine_names_and_missing_engines_are_one_line_errors(monkeypatch, capsys):
    monkeypatch.setattr(engines, "has_onnxruntime", lambda: False)
    monkeypatch.setattr(engines, "has_openvino", lambda: False)
    for name in ("onnx", "openvino"):
        with pytest.raises(ModelUnavailable) as e:
            engines.resolve(name)
        assert "\n" not in str(e.value) and "pip install" in str(e.value)
    with pytest.raises(ModelUnavailable) as e:
        engines.resolve("tensorrt")
    assert "\n" not in str(e.value) and "onnx" in str(e.value)
    monkeypatch.setattr(engines, "_warned", set())
    assert engines.resolve("auto") == "torch"  # falls back, saying so once in one line
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "onnxruntime" in err
    assert engines.resolve("torch") == "torch" and engines.resolve_detector("torch") == "cv2"
    monkeypatch.setattr(engines, "has_onnxruntime", lambda: True)
    assert engines.resolve("auto") == "onnx" and engines.resolve_detector("auto") == "cv2"
    monkeypatch.setattr(engines, "has_openvino", lambda: True)
    assert engines.resolve("auto") == "openvino" and engines.resolve_detector("auto") == "openvino"


def test_engine_setting_from_env_and_cli(monkeypatch, tmp_path):
    from explorer.core.config import Settings

    assert Settings().engine == "auto"
    monkeypatch.setenv("EXPLORER_ENGINE", "torch")
    assert Settings.load().engine == "torch"
    assert Settings.load({"engine": "onnx"}).engine == "onnx"
    from explorer import cli

    args = cli.build_parser().parse_args(["index", str(tmp_path), "--engine", "openvino"])
    assert cli.settings_from(args).engine == "openvino"


@pytest.mark.slow
@pytest.mark.skipif(not engines.has_onnxruntime(), reason="onnxruntime is not installed")
def test_export_cache_is_keyed_reused_and_heals(monkeypatch, tmp_path):
    from explorer.core.models.effnet import EffNetCore

    monkeypatch.setenv("EXPLORER_ENGINE_CACHE", str(tmp_path / "cache"))
    EffNetCore("cpu", "onnx")
    files = sorted((tmp_path / "cache").glob("effnet-lite0-features-*.onnx"))
    assert len(files) == 1 and engines.EXPORTER_VERSION in files[0].name
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # written under a temp name, then renamed
    mtime = files[0].stat().st_mtime_ns
    EffNetCore("cpu", "onnx")
    assert files[0].stat().st_mtime_ns == mtime  # reused, not exported again
    files[0].write_bytes(b"not an onnx file")  # a damaged cache file is re-exported, not fatal
    core = EffNetCore("cpu", "onnx")
    assert files[0].stat().st_size > 1000
    import torch

    with torch.inference_mode():
        assert core.feature_map(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_cli_unknown_engine_is_rejected(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "explorer.cli", "models", "--engine", "tensorrt"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_config_file_engine_is_checked_when_loading(monkeypatch):
    from explorer.core.config import Settings
    from explorer.core.models.registry import ModelLoader

    loader = ModelLoader(Settings(engine="tensorrt"))
    with pytest.raises(ExplorerError) as e:
        loader.get("image")
    assert "unknown engine 'tensorrt'" in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(not engines.has_onnxruntime(), reason="onnxruntime is not installed")
def test_a_failed_export_falls_back_to_torch_under_auto_and_is_one_line_otherwise(monkeypatch, tmp_path, capsys):
    from explorer.core.models.effnet import EffNetCore

    monkeypatch.setenv("EXPLORER_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "has_openvino", lambda: False)

    def broken(*a, **k):
        raise RuntimeError("exporter exploded\nsecond line")

    import torch

    monkeypatch.setattr(torch.onnx, "export", broken)
    monkeypatch.setattr(engines, "_warned", set())
    core = EffNetCore("cpu", "auto")
    assert core.engine == "torch" and core._runner is None
    err = capsys.readouterr().err.strip()
    assert "exporter exploded" in err and "torch" in err and "second line" not in err
    with pytest.raises(ModelUnavailable) as e:
        EffNetCore("cpu", "onnx")
    assert "\n" not in str(e.value) and "--engine torch" in str(e.value)


@pytest.mark.skipif(not engines.has_openvino(), reason="openvino is not installed")
def test_a_damaged_ssd_ir_is_removed_and_other_cached_models_are_left(monkeypatch, tmp_path):
    """A cached SSD IR that OpenVINO cannot load is deleted (the next start converts again) and,
    under ``auto``, the detector runs in OpenCV; a cached int8 SSD beside it is not touched."""
    from explorer.core.models import ssd

    monkeypatch.setenv("EXPLORER_ENGINE_CACHE", str(tmp_path))
    xml = ssd._ir_path(ssd.model_files()[0])
    assert xml.parent == tmp_path
    xml.write_text("<not a model")
    xml.with_suffix(".bin").write_bytes(b"\0" * 16)
    int8 = tmp_path / f"ssd-mobilenet-v2-int8-{xml.stem.split('-')[3]}-nncf0-ov0-cal1x1.xml"
    int8.write_text("<a cached int8 model>")
    det = ssd.SSDDetector(0.5, engine="auto")
    assert det.engine == "cv2"
    assert not xml.exists() and not xml.with_suffix(".bin").exists()
    assert int8.read_text() == "<a cached int8 model>"
