"""The image encoder's feed path: lookup-table preprocessing, power-of-two batches, static per-shape OpenVINO models."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from explorer.core.models import engines
from explorer.core.models.effnet import MEAN, STD, INPUT_SIZE, input_size, pow2_chunks, preprocess, preprocess_one

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "horse.png", "camera.png"]
needs_openvino = pytest.mark.skipif(not engines.has_openvino(), reason="openvino is not installed (the 'fast' extra)")


@pytest.fixture(scope="module")
def photos(open_photos):
    out = open_photos(PHOTOS)
    rgb = out[0].convert("RGB")
    out += [rgb.crop((40, 10, 500, 260)), rgb.crop((0, 0, 130, 400))]  # odd aspect ratios
    return out


def _formula(im: Image.Image, side: int, mode: str) -> np.ndarray:
    """The normalisation as written before the lookup table (the geometry from preprocess_one's own resize)."""
    rgb = im.convert("RGB")
    r = rgb.resize(input_size(rgb.width, rgb.height, side, mode), Image.Resampling.BILINEAR, reducing_gap=2.0)
    a = np.asarray(r, dtype=np.float32) / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1)


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_lookup_table_preprocessing_is_the_formula_bit_for_bit(photos):
    modes = {im.mode for im in photos}
    assert "RGB" in modes and modes != {"RGB"}  # camera.png is greyscale: the conversion path is covered
    for im in photos:
        for side in (INPUT_SIZE, int(round(INPUT_SIZE * 1.4142))):
            got = preprocess_one(im, side, "whole")
            assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(got, _formula(im, side, "whole"))
    batch = preprocess([photos[0], photos[0].copy()], INPUT_SIZE, "stretch")
    assert batch.flags["C_CONTIGUOUS"] and batch.shape == (2, 3, INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_array_equal(batch[1], preprocess_one(photos[0], INPUT_SIZE, "stretch"))
    with pytest.raises(ValueError, match="different input shapes"):
        preprocess([photos[0], photos[-1]], INPUT_SIZE, "whole")


def test_power_of_two_chunks_cover_the_group_in_order():
    for n in range(0, 40):
        for limit in (1, 16, 32):
            chunks = pow2_chunks(list(range(100, 100 + n)), limit)
            assert [i for c in chunks for i in c] == list(range(100, 100 + n))
            sizes = [len(c) for c in chunks]
            assert all(s & (s - 1) == 0 and 1 <= s <= limit for s in sizes)
            assert sizes == sorted(sizes, reverse=True)
            assert len(set(sizes)) == len(sizes) or limit in sizes  # only full-size chunks repeat


@pytest.fixture(scope="module")
def ov_core():
    from explorer.core.models.effnet import EffNetCore

    return EffNetCore("cpu", "openvino")


@pytest.fixture(scope="module")
def torch_core():
    from explorer.core.models.effnet import EffNetCore

    return EffNetCore("cpu", "torch")


@pytest.mark.slow
@needs_openvino
def test_static_models_are_bounded_lru_and_agree_with_the_dynamic_model(ov_core):
    model = ov_core._runner._model
    assert model is not None, "the encoder's OpenVINO runner keeps static per-shape models"
    dynamic = engines.OvRunner(model, ["fmap"])
    runner = engines.OvRunner(model, ["fmap"], static_shapes=2, promote_after=2)
    rng = np.random.default_rng(0)
    shapes = [(1, 3, 224, 224), (2, 3, 192, 256), (1, 3, 320, 160), (1, 3, 224, 224), (1, 3, 256, 320)]
    xs = {s: rng.standard_normal(s).astype(np.float32) for s in set(shapes)}
    ref = {s: dynamic.run({"x": x})[0] for s, x in xs.items()}
    key = lambda s: (("x", s),)  # noqa: E731
    for rnd in range(3):
        for s in shapes:
            got = runner.run({"x": xs[s]})[0]
            assert got.shape == ref[s].shape
            for i in range(s[0]):
                assert _cos(got[i], ref[s][i]) >= 0.9999
            assert len(runner.static_shapes()) <= 2
        if rnd == 0:
            # (1, 3, 224, 224) came twice in the first round: the only shape promoted so far
            assert runner.static_shapes() == [key((1, 3, 224, 224))]
    # each of the 4 shapes reached 2 uses; only 2 fit, so some were evicted and compiled again
    assert runner.static_compiled > 2
    assert runner.static_shapes()[-1] == key(shapes[-1])  # the most recently used is kept
    # a shape never seen before runs at once on the dynamic model
    x = rng.standard_normal((3, 3, 96, 416)).astype(np.float32)
    before = runner.static_compiled
    got, want = runner.run({"x": x})[0], dynamic.run({"x": x})[0]
    assert runner.static_compiled == before and got.shape == want.shape == (3, 1280, 3, 13)
    assert min(_cos(got[i], want[i]) for i in range(3)) >= 0.9999


@pytest.mark.slow
@needs_openvino
def test_static_feed_path_agrees_with_torch_on_real_photos(ov_core, torch_core, photos):
    runner = ov_core._runner
    old = runner.promote_after
    runner.promote_after = 1  # every shape static at first sight: the static models are what runs here
    try:
        ref = torch_core.analyse([im.copy() for im in photos])
        got = ov_core.analyse([im.copy() for im in photos])
        assert len(runner.static_shapes()) >= min(len(photos), engines.STATIC_MAX)
    finally:
        runner.promote_after = old
    for r, g in zip(ref, got):
        assert _cos(r.embedding, g.embedding) >= 0.999
        assert int(np.argmax(r.probs)) == int(np.argmax(g.probs))


@pytest.mark.slow
@needs_openvino
def test_feature_map_takes_numpy_and_channels_last_tensors(ov_core):
    import torch

    x = preprocess([Image.new("RGB", (300, 200), (200, 120, 40))], INPUT_SIZE, "whole")
    a = ov_core.feature_map(x)
    cl = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)  # channels-last memory
    assert not cl.is_contiguous()
    with torch.inference_mode():
        b = ov_core.feature_map(cl)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
@needs_openvino
def test_a_shared_runner_is_safe_across_threads(ov_core, photos):
    """The window's worker and the indexer share one core: concurrent callers, evictions and compiles."""
    model = ov_core._runner._model
    runner = engines.OvRunner(model, ["fmap"], static_shapes=2, promote_after=1)  # every call may compile or evict
    xs = [preprocess([im], INPUT_SIZE, "whole") for im in photos]
    dynamic = engines.OvRunner(model, ["fmap"])
    ref = [dynamic.run({"x": x})[0] for x in xs]
    errors, results = [], {}

    def work(k):
        try:
            for rep in range(3):
                for i in range(k, k + len(xs)):
                    j = i % len(xs)
                    results[(k, rep, j)] = runner.run({"x": xs[j]})[0]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4 * 3 * len(xs)
    for (_, _, j), got in results.items():
        assert _cos(got, ref[j]) >= 0.9999
    assert len(runner.static_shapes()) <= 2


@pytest.mark.slow
@needs_openvino
def test_compute_feeds_c_contiguous_numpy_in_power_of_two_batches(ov_core):
    """The engine gets numpy straight from preprocessing (no torch copy) and few distinct batch sizes."""
    from explorer.core.models.effnet import Pooling

    calls = []
    orig = ov_core.feature_map

    def spy(x):
        calls.append((type(x), x.flags["C_CONTIGUOUS"] if isinstance(x, np.ndarray) else None, tuple(x.shape)))
        return orig(x)

    ims = [Image.new("RGB", (400, 300), (10 * i, 100, 200)) for i in range(7)] + [Image.new("L", (300, 400), 90)]
    ov_core.feature_map = spy
    try:
        got = ov_core._compute(ims, Pooling("whole", (1.0,), 3.0))
    finally:
        ov_core.feature_map = orig
    assert all(t is np.ndarray and c for t, c, _ in calls)
    # seven 4:3 images -> batches of 4, 2, 1; the portrait greyscale one alone
    assert sorted(s[0] for _, _, s in calls) == [1, 1, 2, 4]
    assert got[0].shape == (8, 1280) and np.allclose(np.linalg.norm(got[0], axis=1), 1.0, atol=1e-5)
