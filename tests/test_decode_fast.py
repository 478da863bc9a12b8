"""The cheaper decode in ``load_image`` against the previous one (``bench/decode_before.py``): on
every kind of file a gallery holds, the same working size and original size, pixels equal up to
rounding, and — on real photos, through the real default image encoder — image vectors with
cosine >= 0.999, so libraries indexed with the previous decode need no re-index.

Pixel bound: RGB files without an EXIF rotation, and every mode that is converted before the
resize (alpha, palette, 16-bit, CMYK), decode to the same bytes (max abs diff 0); an EXIF-rotated
image is resized before it is turned upright, which swaps the order of the two resize passes,
and a greyscale image is resized before it becomes RGB: at most 2 levels apart (``ROUNDING``:
each pass rounds to 8 bits with positive weights, so either order lands within 1 of the exact
value; measured: 1 for orientations 5-8, 0 for greyscale).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.core.imageio import WORK_SIDE, load_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from decode_before import load_image_before  # noqa: E402

#: max abs pixel difference allowed where only the order of resize and transpose/convert changed
ROUNDING = 2


def _photo(skimage_dir: Path, name: str, size: tuple[int, int]) -> Image.Image:
    with Image.open(skimage_dir / name) as im:
        return im.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def _files(tmp: Path, skimage_dir: Path) -> dict[str, tuple[Path, int]]:
    """Files of every kind, most larger than the working size so that the resize runs: name -> (path, bound)."""
    big = _photo(skimage_dir, "chelsea.png", (1500, 1100))
    out = {}

    def save(name, im, bound=0, **kw):
        p = tmp / name
        im.save(p, **kw)
        out[name] = (p, bound)

    save("rgb.jpg", big, quality=90)
    save("rgb-square-2000.jpg", _photo(skimage_dir, "astronaut.png", (2000, 1900)), quality=90)  # drafted to half
    save("rgb-wide-1700.jpg", _photo(skimage_dir, "astronaut.png", (1700, 1100)), quality=90)  # not drafted (1100 < 1600)
    save("rgb.png", big)
    save("small.png", _photo(skimage_dir, "coffee.png", (300, 200)))  # no resize: a copy
    save("grey.jpg", big.convert("L"), ROUNDING, quality=90)
    save("grey.png", big.convert("L"), ROUNDING)
    rgba = big.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(big.size))
    save("alpha.png", rgba)
    save("palette.png", big.convert("P", palette=Image.Palette.ADAPTIVE))
    pal = big.convert("P", palette=Image.Palette.ADAPTIVE)
    save("palette-transparent.png", pal, transparency=int(pal.getpixel((0, 0))))
    g16 = Image.fromarray((np.asarray(big.convert("L"), np.uint16) * 200).astype(np.uint16))
    save("grey16.png", g16)
    save("cmyk.jpg", big.convert("CMYK"), quality=90)
    save("anim.gif", big.convert("P"), save_all=True, append_images=[big.convert("P").rotate(90)])
    for o in range(2, 9):
        save(f"exif{o}.jpg", big, 0 if o in (2, 3, 4) else ROUNDING, quality=90, exif=_exif(o))
    save("exif6-small.jpg", big.resize((500, 300)), quality=90, exif=_exif(6))
    return out


def test_new_decode_matches_previous_on_every_kind_of_file(tmp_path, skimage_dir):
    worst = {}
    for name, (p, bound) in _files(tmp_path, skimage_dir).items():
        new, old = load_image(p), load_image_before(p)
        assert new.image.mode == "RGB", name
        assert (new.width, new.height) == (old.width, old.height), name
        assert new.image.size == old.image.size, name
        assert max(new.image.size) <= WORK_SIDE
        worst[name] = _diff(new.image, old.image)
        assert worst[name] <= bound, f"{name}: max abs pixel diff {worst[name]} > {bound}"
        # full size (max_side=None) is untouched by the working-size path
        assert _diff(load_image(p, max_side=None).image, load_image_before(p, max_side=None).image) == 0, name
    print("max abs pixel diff, new vs previous decode:", worst)


def test_new_decode_does_not_share_pixels_with_the_closed_file(tmp_path, skimage_dir):
    p = tmp_path / "small.png"
    _photo(skimage_dir, "coffee.png", (300, 200)).save(p)
    li = load_image(p)
    first = li.image.getpixel((0, 0))
    li.image.putpixel((0, 0), tuple(255 - c for c in first))  # writable, and a second decode is unaffected
    assert li.image.getpixel((0, 0)) == tuple(255 - c for c in first)
    assert load_image(p).image.getpixel((0, 0)) == first


@pytest.mark.slow
def test_image_vectors_of_new_and_previous_decode_agree_on_real_photos(tmp_path, sample_gallery, skimage_dir, loader):
    """The sample gallery (photos below the working size, crops, mirrors, dimmed copies) plus
    enlarged and EXIF-rotated photos (above it), among them JPEGs of 1650-1700 px whose draft
    scale is the risky case: drafting those to half size (the smallest DCT scale still covering
    800 px) moves the moon's vectors to cosine 0.998. Cosine >= 0.999 per image."""
    files = sorted(p for p in sample_gallery.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for name in ("moon.png", "rocket.jpg"):
        for size in ((1650, 1400), (1700, 1100), (1300, 1650)):
            p = tmp_path / f"{Path(name).stem}-{size[0]}x{size[1]}.jpg"
            _photo(skimage_dir, name, size).save(p, quality=90)
            files.append(p)
    for i, name in enumerate(("astronaut.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "brick.png", "grass.png")):
        if not (skimage_dir / name).is_file():
            continue
        big = _photo(skimage_dir, name, (1000 + 180 * i, 900 + 120 * i))
        for ext, kw in ((".jpg", {"quality": 88, "exif": _exif(6 if i % 2 else 1)}), (".png", {})):
            p = tmp_path / f"{Path(name).stem}{ext}"
            big.save(p, **kw)
            files.append(p)
    assert len(files) >= 20
    enc = loader.get("image")
    old = enc.embed_images([load_image_before(p).image for p in files])
    new = enc.embed_images([load_image(p).image for p in files])
    cos = (old * new).sum(1) / (np.linalg.norm(old, axis=1) * np.linalg.norm(new, axis=1))
    assert cos.min() >= 0.999, f"min cosine {cos.min():.5f} at {files[int(cos.argmin())].name}"
