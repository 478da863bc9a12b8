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
