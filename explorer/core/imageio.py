"""Safe image decoding shared by indexing, queries and the GUI.

Every decode goes through ``load_image`` so that the same rules hold everywhere: EXIF
orientation applied, first frame of animations, RGB output, a bound on pixel count against
decompression bombs, and a ``BadImage`` with a short reason for anything that is not a
readable image. Large images are decoded at reduced size (JPEG draft mode) because every
model here works at 224-800 px; ``LoadedImage.scale`` maps boxes back to original pixels. RGB and
greyscale images are resized to the working size straight from the decoder's buffer, before they
are turned upright and made RGB, so no full-size copy is made (the pixels are those of
transpose-then-resize up to rounding; ``tests/test_decode_fast.py``).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import BadImage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

#: Refuse images with more pixels than this (about 16k x 16k); guards against decompression bombs.
MAX_PIXELS = 268_000_000
#: Decoded working size: the longest side handed to the models.
WORK_SIDE = 800
#: Refuse files larger than this before even opening them.
MAX_FILE_BYTES = 512 * 1024 * 1024

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = None  # we apply our own bound with a clear message


def is_image_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fsdecode(path))[1].lower() in IMAGE_EXTENSIONS


@dataclass
class LoadedImage:
    image: Image.Image  # RGB, longest side <= WORK_SIDE (unless max_side=None)
    width: int  # original width after EXIF orientation
    height: int

    @property
    def scale(self) -> float:
        """Multiply working-image coordinates by this to get original pixel coordinates."""
        return self.width / max(1, self.image.width)


def load_image(path: str | os.PathLike, max_side: int | None = WORK_SIDE) -> LoadedImage:
    """Decode ``path`` into an RGB image, or raise ``BadImage`` saying why not."""
    p = Path(os.fsdecode(path)) if not isinstance(path, bytes) else Path(os.fsdecode(path))
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise BadImage(f"file not found: {p}") from None
    except PermissionError:
        raise BadImage(f"permission denied: {p}") from None
    except OSError as e:
        raise BadImage(f"cannot read {p}: {e.strerror or e}") from None
    if not p.is_file():
        raise BadImage(f"not a regular file: {p}")
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise BadImage(f"file too large ({size // (1024 * 1024)} MB > {MAX_FILE_BYTES // (1024 * 1024)} MB)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise BadImage("image has no pixels")
                if w * h > MAX_PIXELS:
                    raise BadImage(f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > {MAX_PIXELS / 1e6:.0f} MP limit)")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                if max_side and im.format == "JPEG":
                    im.draft("RGB", (max_side, max_side))
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                rgb = _working_rgb(im, max_side, _TRANSPOSE.get(orientation))
    except BadImage:
        raise
    except PermissionError:
        raise BadImage(f"permission denied: {p}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image, or an unsupported format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        raise BadImage(f"corrupt or truncated image: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}") from None
    except MemoryError:
        raise BadImage("image too large to decode in memory") from None
    except Exception as e:  # noqa: BLE001 - decoders raise TypeError, KeyError, struct.error... on corrupt files
        raise BadImage(f"corrupt image ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no details'})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return LoadedImage(rgb, w, h)


#: EXIF orientation -> the transpose that shows the image upright (as ``ImageOps.exif_transpose``).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _fit(w: int, h: int, side: int) -> tuple[int, int]:
    """The size ``Image.thumbnail((side, side))`` gives a ``w`` x ``h`` image (aspect kept, same rounding)."""
    if w <= side and h <= side:
        return w, h
    aspect = w / h
    if aspect <= 1:  # the height is the long side
        return max(min(math.floor(side * aspect), math.ceil(side * aspect), key=lambda n: abs(aspect - n / side)), 1), side
    return side, max(min(math.floor(side / aspect), math.ceil(side / aspect),
                         key=lambda n: 0 if n == 0 else abs(aspect - side / n)), 1)


def _working_rgb(im: Image.Image, max_side: int | None, transpose: Image.Transpose | None) -> Image.Image:
    """The decoded ``im`` as an upright RGB image with longest side <= ``max_side``, in as few passes as can be.

    RGB and greyscale images are resized first and then turned upright and converted, so the
    transpose and the conversion touch the small image; every other mode (alpha, palette, 16-bit,
    CMYK...) is converted first, as before. The resize is the one ``Image.thumbnail`` does
    (bilinear, ``reducing_gap`` 2), to the same size; it returns a new image, so no copy is made
    of the file's pixels before it. Up to rounding, the result is that of
    ``_to_rgb(ImageOps.exif_transpose(im)).thumbnail(...)``.
    """
    small = im if im.mode in ("RGB", "L") else _to_rgb(im)
    if max_side and max(small.size) > max_side:
        w, h = small.size
        if transpose in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
                         Image.Transpose.ROTATE_90):
            size = _fit(h, w, max_side)[::-1]  # the size the upright image gets, in the stored orientation
        else:
            size = _fit(w, h, max_side)
        small = small.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if transpose is not None:
        small = small.transpose(transpose)
    if small.mode == "L":
        return small.convert("RGB")
    return small.copy() if small is im else small


def _to_rgb(im: Image.Image) -> Image.Image:
    """Normalise any mode (palette, LA, RGBA, 16-bit, CMYK) to RGB; transparency composites on white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(im, dtype=np.float32)
        # 16-bit data has a known range: map it as such, so a dark photo stays dark (the same as
        # its 8-bit twin); 32-bit integer data has none, so it is scaled to its brightest pixel
        hi = 65535.0 if im.mode.startswith("I;16") else (float(a.max()) or 1.0)
        return Image.fromarray(np.clip(a / hi * 255 + 0.5, 0, 255).astype("uint8")).convert("RGB")
    return im.convert("RGB")
