"""The open_clip backend, end to end with a tiny randomly initialised model saved to a temp folder.

The tiny model is loaded through ``ModelLoader`` exactly as real weights would be: a custom
architecture JSON in ``models/``, a checkpoint file, ``open_clip.create_model`` + strict loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from explorer.core.config import Settings  # noqa: E402
from explorer.core.errors import ModelUnavailable  # noqa: E402
from explorer.core.models.base import ImageEncoder, TextEncoder  # noqa: E402
from explorer.core.models.registry import ModelLoader, probe  # noqa: E402

ARCH = "tiny-test"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Same layer names, other shapes: a checkpoint "for a different architecture".
OTHER_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1},
}


def _build(name: str, cfg: dict, folder: Path, seed: int):
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """models/ with tiny-test.json, tiny.pt (its weights) and other.pt (weights of another arch)."""
    d = tmp_path_factory.mktemp("openclip-models")
    model = _build(ARCH, TINY_CFG, d, seed=0)
    torch.save(model.state_dict(), d / "tiny.pt")
    other_cfg_dir = tmp_path_factory.mktemp("other-arch")  # keep other.json out of models/
    other = _build("tiny-other", OTHER_CFG, other_cfg_dir, seed=1)
    torch.save(other.state_dict(), d / "other.pt")
    (d / "junk.pt").write_text("this is not a checkpoint\n")
    return d


@pytest.fixture
def models(tiny_dir, monkeypatch) -> Path:
    monkeypatch.setenv("EXPLORER_MODELS_DIR", str(tiny_dir))
    return tiny_dir


def _images():
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 255, (70, 40, 3), dtype=np.uint8))
    return a, b


def _assert_unit_rows(x: np.ndarray, dim: int, n: int):
    assert x.shape == (n, dim)
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_default_tokenizer_is_offline():
    """The CLIP BPE vocabulary ships inside the open_clip package: no download to tokenize."""
    from open_clip.tokenizer import default_bpe

    assert Path(default_bpe()).is_file()
    tok = open_clip.get_tokenizer("ViT-B-32")
    ids = tok(["a photo of a cat", ""])
    assert ids.shape == (2, 77)
    assert ids[0, 0].item() == 49406 and ids[1, 1].item() == 49407  # <start>, then <end> for ""


def test_one_model_serves_image_and_text(models):
    spec = f"open_clip:{ARCH}@tiny.pt"
    settings = Settings(image=spec, text=spec)
    loader = ModelLoader(settings)
    image = loader.get("image")
    text = loader.get("text")
    assert image is text
    assert isinstance(image, ImageEncoder) and isinstance(image, TextEncoder)
    assert image.dim == 32
    assert image.model_id == "open_clip:tiny-test@tiny.pt"
    assert image.shared_space_id == image.model_id == text.shared_space_id
    assert image.weights_path == str(models / "tiny.pt")

    a, b = _images()
    vecs = image.embed_images([a, b, a, b.convert("L")])
    _assert_unit_rows(vecs, 32, 4)
    assert np.array_equal(vecs[0], vecs[2])  # same image twice, same vector
    assert not np.allclose(vecs[0], vecs[1])
    again = image.embed_images([a, b, a, b.convert("L")])
    assert np.array_equal(vecs, again)  # deterministic across calls
    np.testing.assert_allclose(image.embed_images([a])[0], vecs[0], atol=1e-5)  # batch size does not matter

    t = text.embed_texts(["", "a photo of a cat", "a photo of a cat", "word " * 200])
    _assert_unit_rows(t, 32, 4)
    assert np.array_equal(t[1], t[2])
    assert text.embed_texts([]).shape == (0, 32)
    assert image.embed_images([]).shape == (0, 32)


def test_batching_matches_single(models):
    model = ModelLoader(Settings(image=f"open_clip:{ARCH}@tiny.pt")).get("image")
    model.batch_size = 2
    a, b = _images()
    batched = model.embed_images([a, b, a])
    single = np.concatenate([model.embed_images([im]) for im in (a, b, a)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_probe_checks_files_without_loading(models, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("probe must not build the model")

    monkeypatch.setattr(open_clip, "create_model", boom)
    ok = probe("image", Settings(image=f"open_clip:{ARCH}@tiny.pt"))
    assert ok.ready and ok.where == str(models / "tiny.pt")
    missing = probe("image", Settings(image=f"open_clip:{ARCH}@nope.pt"))
    assert not missing.ready and str(models / "nope.pt") in missing.hint


def test_absolute_checkpoint_path_and_json_arch(models, tmp_path):
    ckpt = tmp_path / "elsewhere.pt"
    ckpt.write_bytes((models / "tiny.pt").read_bytes())
    model = ModelLoader(Settings(image=f"open_clip:{models / 'tiny-test.json'}@{ckpt}")).get("image")
    assert model.model_id == "open_clip:tiny-test@elsewhere.pt"
    assert model.weights_path == str(ckpt)


def test_checkpoint_of_another_architecture(models):
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(image=f"open_clip:{ARCH}@other.pt")).get("image")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert "does not match architecture tiny-test" in msg and "other.pt" in msg
    assert "shape" in msg


def test_file_that_is_not_a_checkpoint(models):
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(image=f"open_clip:{ARCH}@junk.pt")).get("image")
    msg = str(err.value)
    assert "\n" not in msg and "does not match architecture tiny-test" in msg and "not a PyTorch or safetensors checkpoint" in msg


def test_missing_checkpoint_names_the_path(models):
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(image=f"open_clip:{ARCH}@missing.pt")).get("image")
    msg = str(err.value)
    assert "\n" not in msg and str(models / "missing.pt") in msg


def test_unknown_architecture(models):
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(image="open_clip:no-such-arch@tiny.pt")).get("image")
    assert "no-such-arch.json" in str(err.value)


def test_pretrained_tag_not_on_disk_says_what_to_put_where(models):
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(image="open_clip:ViT-B-32@laion2b_s34b_b79k")).get("image")
    msg = str(err.value)
    assert "\n" not in msg
    assert "open_clip_pytorch_model.bin" in msg and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert str(models / "ViT-B-32" / "laion2b_s34b_b79k") in msg
    assert "open_clip:ViT-B-32@path/to/file" in msg
    assert not probe("image", Settings(image="open_clip:ViT-B-32@laion2b_s34b_b79k")).ready


@pytest.fixture
def tiny_tag(monkeypatch):
    """Pretend open_clip knows a pretrained tag for the tiny architecture (hosted on the HF hub)."""
    from open_clip import pretrained

    monkeypatch.setitem(pretrained._PRETRAINED, ARCH, {"tinytag": {"hf_hub": "tinyorg/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}})


def test_pretrained_tag_found_under_models(models, tiny_tag):
    folder = models / ARCH / "tinytag"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "open_clip_pytorch_model.bin"
    target.write_bytes((models / "tiny.pt").read_bytes())
    try:
        assert probe("image", Settings(image=f"open_clip:{ARCH}@tinytag")).where == str(target)
        model = ModelLoader(Settings(image=f"open_clip:{ARCH}@tinytag")).get("image")
        assert model.model_id == "open_clip:tiny-test@tinytag"
        assert tuple(model.model.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)  # the tag's preprocessing
        _assert_unit_rows(model.embed_images(list(_images())), 32, 2)
    finally:
        target.unlink()


def test_pretrained_tag_found_in_hf_cache(models, tiny_tag, tmp_path, monkeypatch):
    """The tag's HF repo in the local Hugging Face cache (standard layout), read without network."""
    import huggingface_hub.constants as hf_constants
    from safetensors.torch import save_file

    snapshot = tmp_path / "hub" / "models--tinyorg--tiny-clip" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--tinyorg--tiny-clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--tinyorg--tiny-clip" / "refs" / "main").write_text("0123abc")
    sd = torch.load(models / "tiny.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snapshot / "open_clip_model.safetensors"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    model = ModelLoader(Settings(image=f"open_clip:{ARCH}@tinytag")).get("image")
    assert model.weights_path == str(snapshot / "open_clip_model.safetensors")
    _assert_unit_rows(model.embed_texts(["a cat"]), 32, 1)


def test_local_dir_with_open_clip_config(models, tmp_path):
    """The HF-hub layout: open_clip_config.json + open_clip_model.safetensors in one folder."""
    from safetensors.torch import save_file

    folder = tmp_path / "tiny-hub-model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.4, 0.4, 0.4]}}))
    sd = torch.load(models / "tiny.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "open_clip_model.safetensors"))

    spec = f"open_clip:{folder}"
    assert probe("image", Settings(image=spec)).ready
    model = ModelLoader(Settings(image=spec, text=spec)).get("text")
    assert model.dim == 32 and model.model_id == spec
    assert tuple(model.model.visual.preprocess_cfg["mean"]) == (0.4, 0.4, 0.4)
    reference = ModelLoader(Settings(image=f"open_clip:{ARCH}@tiny.pt")).get("image")
    np.testing.assert_allclose(model.embed_texts(["a red bag"]), reference.embed_texts(["a red bag"]), atol=1e-5)

    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match="no weights"):
        ModelLoader(Settings(image=spec)).get("image")


def test_arch_alone_needs_a_checkpoint(models):
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(image="open_clip:ViT-B-32")).get("image")
    msg = str(err.value)
    assert "open_clip:ViT-B-32@TAG" in msg and "laion2b_s34b_b79k" in msg and "\n" not in msg
