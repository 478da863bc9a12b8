"""Time per image of the OCR caption source (rapidocr_onnxruntime, PP-OCRv4 ONNX on the CPU).

Prints the load time and the per-image time on photos with and without text, next to the
structured captioner's time on the same images in the same run, so the ratio is meaningful
on a shared machine. Usage: python bench/ocr_speed.py [--n 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

from PIL import Image, ImageDraw, ImageFont


def images(n: int):
    from explorer.core.samples import skimage_data_dir

    src = skimage_data_dir()
    names = ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "coins.png"]
    out = []
    for i in range(n):
        with Image.open(src / names[i % len(names)]) as im:
            im = im.convert("RGB").resize((640, 480))
        if i % 2:
            ImageDraw.Draw(im).text((30, 30), "SUMMER SALE 50%", fill="white", font=ImageFont.load_default(size=48))
        out.append(im)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    args = ap.parse_args()
    from explorer.core.captions.ocr import OcrReader
    from explorer.core.config import Settings
    from explorer.core.models.registry import ModelLoader

    ims = images(args.n)
    reader = OcrReader()
    t0 = time.perf_counter()
    reader._load()
    load = time.perf_counter() - t0
    loader = ModelLoader(Settings())
    det, cap = loader.get("detector"), loader.get("captioner")
    ocr_t, cap_t, found = [], [], 0
    for im in ims:
        t0 = time.perf_counter()
        c = reader.read(im)
        ocr_t.append(time.perf_counter() - t0)
        found += bool(c.text)
        t0 = time.perf_counter()
        cap.caption([im], [det.detect([im])[0]])
        cap_t.append(time.perf_counter() - t0)
    print(f"OCR engine load: {load:.2f} s")
    print(f"OCR per image (640x480): median {statistics.median(ocr_t) * 1000:.0f} ms, mean {statistics.mean(ocr_t) * 1000:.0f} ms "
          f"({found}/{len(ims)} images gave text; half carry text)")
    print(f"detect + structured caption per image, same run: median {statistics.median(cap_t) * 1000:.0f} ms")
    print(f"ratio OCR / (detect + caption): {statistics.median(ocr_t) / statistics.median(cap_t):.2f}")


if __name__ == "__main__":
    main()
