"""Where the indexing pipeline's CPU goes besides the models: CPU time per image of each part.

One ``Indexer.run`` over the same real photos as ``bench/index_throughput.py`` (generated, or
``--folder``), after a warm-up run on other photos, with the pipeline's parts wrapped to add up
the CPU time of the thread that runs them (``time.thread_time``) and their wall time: the model
calls (``detect``, ``caption``, ``embed_images``, ``embed_texts``), ``load_image`` and
``content_hash`` (in the decode pool), the per-batch ``_commit`` (SQLite), ``plan`` and the end of
run (``save_run``: index sync, whitening, agreement). The inference engines' own worker threads
are not in the per-part CPU figures (only in the process total), so the model parts are a lower
bound and everything else is exact. Also splits ``load_image`` into its steps per format.

    .venv/bin/python bench/index_cpu_parts.py --n 96
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from index_throughput import image_files, make_photos  # noqa: E402


def decode_steps(files: list[Path]) -> dict[str, dict[str, float]]:
    """CPU ms per image of ``load_image`` and of its steps, per file type (one thread)."""
    from PIL import Image, ImageOps

    from explorer.core.imageio import WORK_SIDE, load_image

    out = {}
    for ext in sorted({f.suffix.lower() for f in files}):
        sub = [f for f in files if f.suffix.lower() == ext]
        t = defaultdict(float)
        for f in sub:
            c = time.process_time()
            load_image(f)
            t["load_image"] += time.process_time() - c
            with Image.open(f) as im:
                c = time.process_time()
                if im.format == "JPEG":
                    im.draft("RGB", (WORK_SIDE, WORK_SIDE))
                im.load()
                t["open + decode"] += time.process_time() - c
                c = time.process_time()
                a = ImageOps.exif_transpose(im)
                t["exif_transpose (a copy)"] += time.process_time() - c
                c = time.process_time()
                b = a.copy()
                t["RGB copy"] += time.process_time() - c
                c = time.process_time()
                b.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
                t["thumbnail to 800"] += time.process_time() - c
        out[f"{ext} ({len(sub)})"] = {k: v / len(sub) * 1000 for k, v in t.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx", "openvino"))
    args = ap.parse_args(argv)

    from explorer.core import pipeline
    from explorer.core.config import Settings
    from explorer.core.library import Library
    from explorer.core.models.registry import ModelLoader
    from explorer.core.pipeline import Indexer

    cpu, wall = defaultdict(float), defaultdict(float)
    lock = threading.Lock()

    def wrap(obj, name, key):
        f = getattr(obj, name)

        def timed(*a, **k):
            c, t = time.thread_time(), time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                with lock:
                    cpu[key] += time.thread_time() - c
                    wall[key] += time.perf_counter() - t

        setattr(obj, name, timed)

    with tempfile.TemporaryDirectory(prefix="explorer-parts-") as tmp:
        tmp = Path(tmp)
        folder = args.folder or make_photos(tmp / "photos", args.n)
        warm = make_photos(tmp / "warmup", 16, seed=12345, max_side=800)
        settings = Settings(library=str(tmp / "lib"), engine=args.engine)
        loader = ModelLoader(settings)
        det, cap, im, tx = (loader.get(r) for r in ("detector", "captioner", "image", "text"))
        for obj, name, key in ((pipeline, "content_hash", "hash (decode pool)"), (pipeline, "load_image", "decode (decode pool)"),
                               (Indexer, "_commit", "commit (SQLite)"), (Indexer, "plan", "plan"),
                               (pipeline, "save_run", "end of run (save_run)"),
                               (det, "detect", "model: detect"), (cap, "caption", "model: caption"),
                               (im, "embed_images", "model: embed_images"), (tx, "embed_texts", "model: embed_texts")):
            wrap(obj, name, key)
        lib = Library(tmp / "lib", settings, loader=loader)
        Indexer(lib).run([warm])
        cpu.clear()
        wall.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        summary = Indexer(lib).run([folder])
        total_cpu, total_wall = time.process_time() - c0, time.perf_counter() - t0
        lib.close()
        n = max(1, summary.indexed)
        print(f"{summary.indexed} images, load average {os.getloadavg()[0]:.1f}: {total_wall:.1f} s wall, "
              f"process CPU {total_cpu / n * 1000:.0f} ms per image")
        print(f"  {'part':26s} {'CPU ms/img':>10s} {'wall ms/img':>11s}")
        for k in sorted(cpu, key=lambda k: -cpu[k]):
            print(f"  {k:26s} {cpu[k] / n * 1000:10.1f} {wall[k] / n * 1000:11.1f}")
        print("load_image steps, CPU ms per image (one thread):")
        for fmt, steps in decode_steps(image_files(folder)).items():
            print(f"  {fmt}: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
