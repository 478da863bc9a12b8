"""Where the indexing pipeline's CPU goes besides the models: CPU time per image of each part.

One ``Indexer.run`` over the same real photos as ``bench/index_throughput.py`` (generated, or
``--folder``), after a warm-up run on other photos, with the pipeline's parts wrapped to add up
the CPU time of the thread that runs them (``time.thread_time``) and their wall time: the model
calls (``detect``, ``caption``, ``embed_images``, ``embed_texts``), ``load_image`` and
``content_hash`` (in the decode pool), the per-batch ``_commit`` (SQLite), ``plan`` and the end of
run (``save_run``: index sync, whitening, agreement). The inference engines' own worker threads
are not in the per-part CPU figures (only in the process total), so the model parts are a lower
bound and everything else is exact. Also times ``load_image`` against the previous decode
(``bench/decode_before.py``) on the same files, interleaved, splits it into its steps per format,
and prints the non-model share the run would have had with the previous decode.

    .venv/bin/python bench/index_cpu_parts.py --n 96
    .venv/bin/python bench/index_cpu_parts.py --n 96 --decode previous   # the pipeline with the previous decode
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


def decode_steps(files: list[Path], rounds: int = 3) -> dict[str, dict[str, float]]:
    """CPU ms per image of ``load_image``, of the previous decode (``decode_before.py``) timed on
    the same files interleaved with it, and of the current decode's steps, per file type (one thread)."""
    from PIL import Image

    from decode_before import load_image_before
    from explorer.core.imageio import _TRANSPOSE, WORK_SIDE, _working_rgb, load_image

    out = {}
    for ext in sorted({f.suffix.lower() for f in files}):
        sub = [f for f in files if f.suffix.lower() == ext]
        t = defaultdict(float)
        for r in range(rounds):
            for f in sub:
                for name, fn in ((("load_image", load_image), ("previous load_image", load_image_before))[::1 if r % 2 else -1]):
                    c = time.process_time()
                    fn(f)
                    t[name] += time.process_time() - c
        for f in sub:
            with Image.open(f) as im:
                c = time.process_time()
                if im.format == "JPEG":
                    im.draft("RGB", (WORK_SIDE, WORK_SIDE))
                im.load()
                t["open + decode"] += (time.process_time() - c) * rounds
                c = time.process_time()
                _working_rgb(im, WORK_SIDE, _TRANSPOSE.get(im.getexif().get(0x0112, 1)))
                t["resize, turn upright, RGB"] += (time.process_time() - c) * rounds
        out[f"{ext} ({len(sub)})"] = {k: v / len(sub) / rounds * 1000 for k, v in t.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx", "openvino"))
    ap.add_argument("--decode", default="current", choices=("current", "previous"),
                    help="the pipeline decodes with load_image (current) or the previous decode (bench/decode_before.py)")
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
        if args.decode == "previous":
            from decode_before import load_image_before

            pipeline.load_image = load_image_before
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
        print(f"decode: {args.decode}; {summary.indexed} images, load average {os.getloadavg()[0]:.1f}: {total_wall:.1f} s wall, "
              f"process CPU {total_cpu / n * 1000:.0f} ms per image")
        print(f"  {'part':26s} {'CPU ms/img':>10s} {'wall ms/img':>11s}")
        for k in sorted(cpu, key=lambda k: -cpu[k]):
            print(f"  {k:26s} {cpu[k] / n * 1000:10.1f} {wall[k] / n * 1000:11.1f}")
        print("load_image vs the previous decode (interleaved, same files) and its steps, CPU ms per image (one thread):")
        steps = decode_steps(image_files(folder))
        for fmt, st in steps.items():
            print(f"  {fmt}: " + ", ".join(f"{k} {v:.1f}" for k, v in st.items()))
        # what the run's non-model share would have been with the previous decode (same files, same run)
        count = {fmt: int(fmt.split("(")[1].rstrip(")")) for fmt in steps}
        per_img = {k: sum(st[k] * count[f] for f, st in steps.items()) / sum(count.values())
                   for k in ("load_image", "previous load_image")}
        # the measured parts besides the models (exact; the models' figure is only a lower bound)
        other = sum(v for k, v in cpu.items() if not k.startswith("model:")) / n * 1000
        total = total_cpu / n * 1000
        extra = per_img["previous load_image"] - per_img["load_image"]
        print(f"decode per image (this mix): {per_img['load_image']:.1f} ms now vs {per_img['previous load_image']:.1f} ms "
              f"with the previous decode; measured parts besides the models {other:.1f} ms = {other / total:.1%} of the "
              f"process CPU now, {(other + extra) / (total + extra):.1%} with the previous decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
