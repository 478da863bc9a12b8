"""The previous round's ``load_image`` (before the decode was made cheaper), its decode steps kept
verbatim (the file checks and error messages shortened), as the baseline that ``bench/decode_speed.py`` times against the current one and that
``tests/test_decode_fast.py`` compares pixels and image vectors with.

It differs from ``explorer.core.imageio.load_image`` only in the decode steps: JPEG draft mode
asked for an 800 x 800 box (so a 2000 x 1500 photo was decoded at full size), the EXIF transpose
and the RGB conversion each copied the full decoded image, and the resize to the working size
came last. Only the decode steps matter here; use ``load_image`` for anything else.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from explorer.core.errors import BadImage
from explorer.core.imageio import MAX_FILE_BYTES, MAX_PIXELS, WORK_SIDE, LoadedImage, _to_rgb


def load_image_before(path: str | os.PathLike, max_side: int | None = WORK_SIDE) -> LoadedImage:
    """Decode ``path`` into an RGB image, or raise ``BadImage`` saying why not (the previous decode)."""
    p = Path(os.fsdecode(path))
    try:
        size = p.stat().st_size
    except OSError as e:
        raise BadImage(f"cannot read {p}: {e.strerror or e}") from None
    if not p.is_file() or size == 0 or size > MAX_FILE_BYTES:
        raise BadImage(f"not a readable image file: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                w, h = im.size
                if w <= 0 or h <= 0 or w * h > MAX_PIXELS:
                    raise BadImage("image has no pixels or too many")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                if max_side and im.format == "JPEG":
                    im.draft("RGB", (max_side, max_side))
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                rgb = _to_rgb(ImageOps.exif_transpose(im))
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, EOFError) as e:
        raise BadImage(f"corrupt image: {e}") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return LoadedImage(rgb, w, h)
