"""int8 precision of the OpenVINO engine: names, one-line errors, the quantized-model cache, model
ids that record int8, agreement with f32 above a measured floor, and a library that switches."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from explorer.core.errors import ModelUnavailable
from explorer.core.models import engines, quantize

needs_int8 = pytest.mark.skipif(not (engines.has_openvino() and quantize.has_nncf()), reason="openvino and nncf are not installed")

#: real photos that are NOT in the calibration set (quantize.calibration_images uses samples.SOURCES)
HELD_OUT = ["horse.png", "cell.png", "color.png", "moon.png", "page.png", "microaneurysms.png", "clock_motion.png", "text.png"]
#: Lowest cosine int8 vs f32 of the image vector on HELD_OUT, measured before this floor was set
#: (EffNet-Lite0 whole-gem3-ms1-1.41, nncf 3.4.0, openvino 2026.4.1): 0.9421 (horse.png), median 0.9694.
#: The floor sits under it to catch a broken quantization (a wrong scale or a mis-fed calibration
#: gives cosines far lower), not to certify quality: that is measured by bench/int8_quality.py.
COSINE_FLOOR = 0.90


def test_precision_is_a_setting_with_env_and_cli(monkeypatch, tmp_path):
    from explorer.core.config import Settings

    assert Settings().engine_precision == "f32" and quantize.PRECISIONS == ("f32", "int8")
    monkeypatch.setenv("EXPLORER_ENGINE_PRECISION", "int8")
    assert Settings.load().engine_precision == "int8"
    from explorer import cli

    args = cli.build_parser().parse_args(["index", str(tmp_path), "--precision", "f32"])
    assert cli.settings_from(args).engine_precision == "f32"
    assert quantize.model_id("m@x", "f32") == "m@x" and quantize.model_id("m@x", "int8") == "m@x" + quantize.INT8_SUFFIX


def test_unknown_precision_is_one_line(tmp_path):
    from explorer.core.config import Settings
    from explorer.core.models.registry import ModelLoader

    with pytest.raises(ModelUnavailable) as e:
        ModelLoader(Settings(engine_precision="int4", engine="openvino")).get("detector")
    assert "unknown engine precision 'int4'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not engines.has_openvino(), reason="openvino is not installed")
def test_int8_without_nncf_or_openvino_is_a_clear_one_line_error(monkeypatch):
    from explorer.core.models.effnet import EffNetCore
    from explorer.core.models.ssd import SSDDetector

    monkeypatch.setattr(quantize, "has_nncf", lambda: False)
    for make in (lambda: EffNetCore("cpu", "openvino", "int8"), lambda: SSDDetector(0.4, "openvino", "int8")):
        with pytest.raises(ModelUnavailable) as e:
            make()
        msg = str(e.value)
        assert "needs nncf" in msg and quantize.NNCF_PIN in msg and "--precision f32" in msg and "\n" not in msg
    monkeypatch.undo()
    with pytest.raises(ModelUnavailable) as e:  # int8 only exists in OpenVINO: never a silent f32
        SSDDetector(0.4, "torch", "int8")
    assert "needs the OpenVINO engine" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@needs_int8
def test_quantized_model_is_cached_reused_and_remade_when_damaged(monkeypatch, tmp_path):
    from explorer.core.models.effnet import EffNetCore, _calibration_inputs, weights_file

    EffNetCore("cpu", "openvino")  # the f32 export, from the real engine cache
    digest = engines.weights_digest([weights_file()])
    src = engines.cached_file("effnet-lite0-features", digest)
    assert src.is_file()
    monkeypatch.setenv("EXPLORER_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quantize, "CALIBRATION_SIZE", 8)  # a small calibration keeps the test short
    calls = []

    def samples():
        calls.append(1)
        return _calibration_inputs()[:8]

    r1 = quantize.int8_runner("effnet-lite0-features", digest, lambda: src, samples, ["fmap"])
    xml = quantize.cached_path("effnet-lite0-features", digest)
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and len(calls) == 1
    assert digest in xml.name and "nncf" in xml.name and f"cal{quantize.CALIBRATION_VERSION}x8" in xml.name
    assert not list(xml.parent.glob(".*tmp*"))  # written under a temporary name, then renamed
    mtime = xml.stat().st_mtime_ns
    quantize.int8_runner("effnet-lite0-features", digest, lambda: src, samples, ["fmap"])
    assert len(calls) == 1 and xml.stat().st_mtime_ns == mtime  # reused, not quantized again
    xml.write_text("<not a model")  # a damaged cache file is quantized again, not fatal
    r3 = quantize.int8_runner("effnet-lite0-features", digest, lambda: src, samples, ["fmap"])
    assert len(calls) == 2
    x = np.zeros((1, 3, 224, 224), np.float32)
    assert r3.run({"x": x})[0].shape == (1, 1280, 7, 7)
    np.testing.assert_allclose(r1.run({"x": x})[0], r3.run({"x": x})[0], atol=1e-5)  # same calibration, same model


@pytest.fixture(scope="module")
def cores():
    from explorer.core.models.effnet import EffNetCore

    return EffNetCore("cpu", "openvino", "f32"), EffNetCore("cpu", "openvino", "int8")


@pytest.mark.slow
@needs_int8
def test_int8_model_ids_differ_and_vectors_stay_above_the_measured_floor(cores, skimage_dir):
    from explorer.core.models.effnet import EffNetClassifier, EffNetImageEncoder
    from explorer.core.models.ssd import SSDDetector

    c32, c8 = cores
    assert c8.engine == "openvino" and c8.precision == "int8"
    e32, e8 = EffNetImageEncoder(c32), EffNetImageEncoder(c8)
    assert e8.model_id == e32.model_id + quantize.INT8_SUFFIX
    assert EffNetClassifier(c8).model_id == EffNetClassifier(c32).model_id + quantize.INT8_SUFFIX
    d32, d8 = SSDDetector(0.4, "openvino", "f32"), SSDDetector(0.4, "openvino", "int8")
    assert d8.model_id == d32.model_id + quantize.INT8_SUFFIX
    ims = []
    for n in HELD_OUT:
        with Image.open(skimage_dir / n) as im:
            ims.append(im.convert("RGB"))
    a, b = e32.embed_images([im.copy() for im in ims]), e8.embed_images([im.copy() for im in ims])
    cos = np.sum(a * b, axis=1)
    assert cos.min() >= COSINE_FLOOR, dict(zip(HELD_OUT, cos.round(4)))
    assert cos.max() < 0.9999  # int8 really runs: the vectors are not the f32 ones
    dets = d8.detect([ims[0]])[0]  # the horse is found in int8 too
    assert any(d.label == "horse" for d in dets)


@pytest.mark.slow
@needs_int8
def test_switching_a_library_to_int8_re_embeds_images_once(tmp_path, sample_gallery, cores):
    import shutil

    from explorer.core.config import Settings
    from explorer.core.library import Library
    from explorer.core.models.registry import ModelLoader
    from explorer.core.pipeline import Indexer

    folder = tmp_path / "g"
    for d in ("cat", "coffee"):
        shutil.copytree(sample_gallery / d, folder / d)
    lib_dir = tmp_path / "lib"
    n = len(list(folder.rglob("*.jpg")))
    # the cat photos have person-written captions: their caption vectors must survive the switch
    from explorer.core.captions.user import CaptionsFile

    cats = {os.path.realpath(p): "my cat on a chair" for p in (folder / "cat").glob("*.jpg")}
    captions = CaptionsFile(cats, "test")

    def run(precision):
        st = Settings(library=str(lib_dir), engine="openvino", engine_precision=precision)
        lib = Library(lib_dir, st, loader=ModelLoader(st))
        try:
            s = Indexer(lib, captions_file=captions).run([folder])
            have = lib.catalog.ids_with_vector("image", lib.image_model.model_id)
            keys = lib.catalog.ok_path_keys()
            cat_ids = {keys[os.fsencode(p)] for p in cats}
            seqs = {r[0]: r[3] for r in lib.catalog.vectors_since("caption", lib.text_model.model_id, 0) if r[0] in cat_ids}
            return s, lib.image_model.model_id, len(have), seqs
        finally:
            lib.close()

    s, mid32, have, seqs32 = run("f32")
    assert s.indexed == n and have == n and len(seqs32) == len(cats) > 0
    s, mid8, have, seqs8 = run("int8")
    assert mid8 == mid32 + quantize.INT8_SUFFIX and have == n and s.unchanged == 0  # every image redone once
    assert seqs8 == seqs32  # person-written captions were not re-embedded
    s, _, have, _ = run("int8")
    assert s.unchanged == n and have == n  # and not again
