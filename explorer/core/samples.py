"""The sample gallery: real photos that scikit-image ships, arranged as a small labelled set.

Each photo gives a class folder holding the photo and a few honest variants (crops, a
mirror image, a change of light), as a user's gallery of the same object would. The
motorcycle folder holds scikit-image's two different views of the same motorcycle.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

# class folder -> scikit-image files
SOURCES = {
    "astronaut": ["astronaut.png"],
    "cat": ["chelsea.png"],
    "coffee": ["coffee.png"],
    "motorcycle": ["motorcycle_left.png", "motorcycle_right.png"],
    "rocket": ["rocket.jpg"],
    "galaxy": ["hubble_deep_field.jpg"],
    "cells": ["ihc.png"],
    "retina": ["retina.jpg"],
    "brick": ["brick.png"],
    "grass": ["grass.png"],
    "gravel": ["gravel.png"],
    "coins": ["coins.png"],
    "cameraman": ["camera.png"],
}


def skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.origin:
        raise FileNotFoundError("scikit-image is not installed; the README's set-up installs it")
    return Path(spec.origin).parent / "data"


def variants(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    return {
        "crop": img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9))),
        "mirror": ImageOps.mirror(img),
        "dim": ImageEnhance.Brightness(img).enhance(0.7),
    }


def make_sample_gallery(out: str | Path, with_variants: bool = True) -> Path:
    """Write the gallery to ``out`` (idempotent: existing files are left as they are)."""
    out = Path(out)
    src = skimage_data_dir()
    for label, files in SOURCES.items():
        d = out / label
        d.mkdir(parents=True, exist_ok=True)
        for name in files:
            stem = Path(name).stem
            target = d / f"{stem}.jpg"
            if target.exists():
                continue
            with Image.open(src / name) as im:
                img = im.convert("RGB")
            img.save(target, quality=92)
            if with_variants and len(files) == 1:
                for suffix, v in variants(img).items():
                    v.save(d / f"{stem}_{suffix}.jpg", quality=92)
    return out


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def fashion_mnist_available() -> bool:
    return (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


def make_fashion_mnist(out: str | Path, per_class: int = 100, offset: int = 0) -> Path:
    """Write ``per_class`` Fashion-MNIST test images per label into label folders under ``out``.

    The images come from Debian's ``dataset-fashion-mnist`` package (MIT): 28x28 grey product
    photos. ``offset`` skips that many images of each class first, so disjoint subsets can be made.
    """
    import gzip

    import numpy as np

    if not fashion_mnist_available():
        raise FileNotFoundError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    out = Path(out)
    for c, name in enumerate(FASHION_MNIST_LABELS):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(labels == c)[offset : offset + per_class]
        for i in idx:
            # the file name carries no word: file names are a caption source, and the label in
            # every name would leak the ground truth into caption-fused evaluation
            p = d / f"{i:05d}.png"
            if not p.exists():
                Image.fromarray(images[i]).save(p)
    return out
