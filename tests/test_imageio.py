"""``load_image``: every format a gallery may hold decodes to RGB with the right size and
orientation, and everything else is refused with a ``BadImage`` saying why (never another
exception, never a hang or a huge allocation). No models are needed here."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.core import imageio
from explorer.core.errors import BadImage
from explorer.core.imageio import is_image_path, load_image

# ---------------------------------------------------------------------------------------
# helpers that craft files (shared with test_pipeline.py)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small valid PNG whose IHDR (with a correct CRC) claims ``width`` x ``height`` pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    ihdr = bytearray(data[16:29])
    struct.pack_into(">II", ihdr, 0, width, height)
    data[8:33] = png_chunk(b"IHDR", bytes(ihdr))
    return bytes(data)


def png16_rgb_bytes(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these) from a (h, w, 3) uint16 array."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def tiff_missing_dims_bytes() -> bytes:
    """A TIFF whose second IFD has no dimensions: Pillow raises TypeError (not OSError) on it."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    off = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, off)[0]
    next_ptr = off + 2 + 12 * n
    if len(data) % 2:
        data += b"\0"
    new = len(data)
    data += struct.pack("<H", 1) + struct.pack("<HHII", 254, 4, 1, 0) + struct.pack("<I", 0)
    struct.pack_into("<I", data, next_ptr, new)
    return bytes(data)


def halves(size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size, right)
    im.paste(Image.new("RGB", (w // 2, h), left), (0, 0))
    return im


def exif_rotated_jpeg(path: Path, size=(40, 20), orientation: int = 6) -> None:
    """A JPEG stored ``size`` (left half red, right half blue) with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    halves(size).save(path, quality=95, exif=exif.tobytes())


def photo(skimage_dir: Path, name: str = "chelsea.png") -> Image.Image:
    with Image.open(skimage_dir / name) as im:
        return im.convert("RGB")


def near(px, colour, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(px, colour))


# ---------------------------------------------------------------------------------------
# good files of every kind


def test_is_image_path_accepts_bytes_and_any_case():
    assert is_image_path("a/B.JPG") and is_image_path(b"caf\xe9.jpeg") and is_image_path("x.TiFF")
    assert is_image_path("x.webp") and is_image_path("x.gif") and is_image_path("x.bmp")
    assert not is_image_path("photo.jpg.txt") and not is_image_path(b"notes") and not is_image_path("x.heic")


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif"), ("GIF", "gif")])
def test_formats_decode_to_rgb(tmp_path, skimage_dir, fmt, ext):
    src = photo(skimage_dir).resize((300, 200))
    p = tmp_path / f"x.{ext}"
    src.save(p, fmt)
    li = load_image(p)
    assert li.image.mode == "RGB"
    assert (li.width, li.height) == (300, 200) and li.image.size == (300, 200)
    diff = np.abs(np.asarray(li.image, np.int16) - np.asarray(src, np.int16)).mean()
    assert diff < (25 if fmt == "GIF" else 8), f"{fmt} decoded far from the original (mean abs diff {diff:.1f})"


def test_bytes_and_str_paths(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGB", (5, 4), "red").save(p)
    assert load_image(os.fsencode(p)).image.size == load_image(str(p)).image.size == (5, 4)


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(p).n_frames == 3
    li = load_image(p)
    assert li.image.mode == "RGB" and near(li.image.getpixel((8, 8)), (255, 0, 0), 5)


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    im = Image.new("CMYK", (32, 24), (0, 255, 255, 0))  # red in CMYK
    im.save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    li = load_image(p)
    assert li.image.mode == "RGB" and li.image.size == (32, 24)
    assert near(li.image.getpixel((10, 10)), (255, 0, 0))


def test_16bit_gray_png_keeps_its_brightness(tmp_path):
    """16-bit values map to 8 bits by their range (v / 65535), not stretched to the brightest pixel:
    a dark 16-bit photo stays as dark as its 8-bit twin."""
    ramp = np.tile(np.linspace(0, 32768, 64).astype(np.uint16), (16, 1))  # at most half brightness
    p = tmp_path / "g16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I;16")
    li = load_image(p)
    a = np.asarray(li.image, np.int16)
    assert li.image.mode == "RGB" and li.image.size == (64, 16)
    assert np.all(np.diff(a[0, :, 0]) >= 0), "the ramp must stay monotone"
    assert abs(int(a[0, -1, 0]) - 128) <= 2 and a[0, 0, 0] == 0


def test_16bit_rgb_png(tmp_path):
    arr = np.zeros((10, 12, 3), np.uint16)
    arr[..., 0] = 65535  # red
    arr[:, 6:, 0], arr[:, 6:, 2] = 0, 40000
    p = tmp_path / "rgb16.png"
    p.write_bytes(png16_rgb_bytes(arr))
    li = load_image(p)
    assert li.image.mode == "RGB" and li.image.size == (12, 10)
    assert near(li.image.getpixel((1, 1)), (255, 0, 0), 2)
    assert near(li.image.getpixel((10, 5)), (0, 0, 155), 3)


def test_rgba_and_palette_transparency_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (10, 10), (255, 0, 0, 255)), (0, 0))
    p = tmp_path / "rgba.png"
    rgba.save(p)
    li = load_image(p)
    assert li.image.mode == "RGB"
    assert near(li.image.getpixel((2, 5)), (255, 0, 0), 0) and near(li.image.getpixel((15, 5)), (255, 255, 255), 0)
    pal = rgba.convert("P")
    pal.info["transparency"] = pal.getpixel((15, 5))
    p2 = tmp_path / "pal.png"
    pal.save(p2, transparency=pal.getpixel((15, 5)))
    li2 = load_image(p2)
    assert near(li2.image.getpixel((15, 5)), (255, 255, 255), 0) and near(li2.image.getpixel((2, 5)), (255, 0, 0), 0)
    la = Image.new("LA", (8, 8), (0, 0))
    p3 = tmp_path / "la.png"
    la.save(p3)
    assert near(load_image(p3).image.getpixel((4, 4)), (255, 255, 255), 0)


@pytest.mark.parametrize("orientation,expect_size,top_colour", [(1, (40, 20), None), (6, (20, 40), (255, 0, 0)), (8, (20, 40), (0, 0, 255)), (3, (40, 20), None)])
def test_exif_orientation_applied(tmp_path, orientation, expect_size, top_colour):
    p = tmp_path / f"o{orientation}.jpg"
    exif_rotated_jpeg(p, orientation=orientation)
    li = load_image(p)
    assert (li.width, li.height) == expect_size and li.image.size == expect_size
    if top_colour:  # orientation 6: the stored left (red) half is displayed on top; 8: the right half
        assert near(li.image.getpixel((10, 5)), top_colour)
    elif orientation == 3:  # upside down: the stored left half shows on the right
        assert near(li.image.getpixel((35, 10)), (255, 0, 0))


def test_large_jpeg_is_decoded_small_with_original_size_and_scale(tmp_path, skimage_dir):
    p = tmp_path / "big.jpg"
    photo(skimage_dir).resize((2400, 1600)).save(p, quality=85)
    li = load_image(p)
    assert (li.width, li.height) == (2400, 1600)
    assert max(li.image.size) <= imageio.WORK_SIDE
    assert li.scale == pytest.approx(2400 / li.image.width)
    full = load_image(p, max_side=None)
    assert full.image.size == (2400, 1600)


def test_large_exif_rotated_jpeg_reports_displayed_size(tmp_path, skimage_dir):
    p = tmp_path / "bigrot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(skimage_dir).resize((1800, 1200)).save(p, quality=85, exif=exif.tobytes())
    li = load_image(p)
    assert (li.width, li.height) == (1200, 1800)
    assert li.image.height > li.image.width and max(li.image.size) <= imageio.WORK_SIDE


# ---------------------------------------------------------------------------------------
# bad files: BadImage with a reason, nothing else


def _bad(path, *words):
    with pytest.raises(BadImage) as ei:
        load_image(path)
    msg = str(ei.value)
    assert any(w in msg for w in words), f"{path}: unexpected reason {msg!r}"
    assert "\n" not in msg
    return msg


def test_corrupt_bytes_named_jpg(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _bad(p, "not an image")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not a picture\n" * 20)
    _bad(p, "not an image")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _bad(p, "empty file")


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")])
def test_truncated(tmp_path, skimage_dir, fmt, ext):
    buf = io.BytesIO()
    photo(skimage_dir).save(buf, fmt)
    data = buf.getvalue()
    for frac in (0.5, 0.05):
        p = tmp_path / f"trunc{frac}.{ext}"
        p.write_bytes(data[: int(len(data) * frac)])
        _bad(p, "corrupt or truncated", "not an image")


def test_decompression_bomb_header(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb_bytes())
    assert Image.open(p).size == (100_000, 100_000)  # the header really claims 10 gigapixels
    msg = _bad(p, "too large")
    assert "100000x100000" in msg


def test_max_pixels_bound(tmp_path, monkeypatch):
    p = tmp_path / "ok.png"
    Image.new("RGB", (100, 100)).save(p)
    load_image(p)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 5_000)
    _bad(p, "too large")


def test_max_file_bytes_bound(tmp_path, monkeypatch):
    p = tmp_path / "ok.png"
    Image.new("RGB", (100, 100)).save(p)
    monkeypatch.setattr(imageio, "MAX_FILE_BYTES", 10)
    _bad(p, "file too large")


def test_tiff_that_makes_pillow_raise_typeerror(tmp_path):
    p = tmp_path / "twoifd.tif"
    p.write_bytes(tiff_missing_dims_bytes())
    _bad(p, "corrupt", "not an image")


def test_missing_file_and_folder(tmp_path):
    _bad(tmp_path / "nope.jpg", "file not found")
    d = tmp_path / "folder.jpg"
    d.mkdir()
    _bad(d, "not a regular file")


def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(p)
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as root: chmod 000 does not block reads (test_pipeline simulates it instead)")
        _bad(p, "permission denied")
    finally:
        p.chmod(0o644)


def test_random_corruption_never_escapes_as_another_exception(tmp_path, skimage_dir):
    """Bytes flipped at random in files of every format: decoded or BadImage, nothing else."""
    rng = np.random.default_rng(7)
    src = photo(skimage_dir).resize((64, 48))
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")):
        buf = io.BytesIO()
        src.save(buf, fmt)
        clean = buf.getvalue()
        for i in range(60):
            data = bytearray(clean)
            if i % 3 == 0:
                data = data[: rng.integers(1, len(data))]
            else:
                for pos in rng.integers(0, len(data), rng.integers(1, 10)):
                    data[pos] = rng.integers(0, 256)
            p = tmp_path / f"f.{ext}"
            p.write_bytes(bytes(data))
            try:
                li = load_image(p)
            except BadImage:
                continue
            assert li.image.mode == "RGB" and li.width > 0 and li.height > 0
