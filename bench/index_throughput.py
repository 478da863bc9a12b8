"""Indexing throughput: the full pipeline against the bare forward passes of the same models.

In one process this script

1. builds a folder of real photos (random crops of the scikit-image photos, resized so the
   longest side is 300-2000 px, saved as JPEG and PNG), or uses ``--folder``;
2. indexes it with ``explorer.core.pipeline.Indexer`` into a fresh library and reports
   images/s (the whole ``Indexer.run``: consistency check, scan, plan, hash, decode, models,
   database commits and the final index save);
3. decodes the same images in advance (``load_image``, as the pipeline does) and times the
   bare model work in the same batch size: ``detector.detect`` + ``captioner.caption(given
   detections)`` + ``image.embed_images`` + ``text.embed_texts`` (half of the images before
   step 2 and half after it, so a change in machine load affects both figures alike);
4. prints both rates, their ratio (target >= 0.85; also as CPU time per image, which is
   steadier on a shared machine) and the peak RSS of the process
   (``getrusage`` ``ru_maxrss``) and of the indexing step alone (Linux ``VmHWM`` after
   resetting it through ``/proc/self/clear_refs``).

Models are loaded before any timing starts, and each measurement starts with one warm-up
batch that is not counted, so neither number pays for model loading or first-call set-up.

    .venv/bin/python bench/index_throughput.py            # 200 images, batch size 16
    .venv/bin/python bench/index_throughput.py --n 60 --batch-size 8 --json
    .venv/bin/python bench/index_throughput.py --folder ~/Pictures/some-folder --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TARGET_RATIO = 0.85
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
          "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "brick.png", "grass.png", "gravel.png", "coins.png",
          "camera.png", "horse.png", "cell.png", "moon.png", "page.png"]


def make_photos(out: Path, n: int, seed: int = 0, min_side: int = 300, max_side: int = 2000) -> Path:
    """``n`` random crops of the scikit-image photos, longest side in [min_side, max_side], 2/3 JPEG, 1/3 PNG."""
    from PIL import Image

    from explorer.core.samples import skimage_data_dir

    rng = random.Random(seed)
    src = skimage_data_dir()
    photos = []
    for name in PHOTOS:
        if (src / name).is_file():
            with Image.open(src / name) as im:
                photos.append((Path(name).stem, im.convert("RGB")))
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stem, img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.45, 1.0)), int(h * rng.uniform(0.45, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        side = rng.randint(min_side, max_side)
        s = side / max(cw, ch)
        crop = crop.resize((max(1, round(cw * s)), max(1, round(ch * s))), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if i % 3 == 2:
            crop.save(out / f"{i:04d}_{stem}.png", optimize=False, compress_level=3)
        else:
            crop.save(out / f"{i:04d}_{stem}.jpg", quality=rng.randint(80, 95))
    return out


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's VmHWM (Linux >= 4.0) so a later read gives the peak of one step only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_mb() -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def image_files(folder: Path) -> list[Path]:
    from explorer.core.imageio import is_image_path

    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p.name))


def bench(folder: Path, batch_size: int, workdir: Path, profile: bool = False, engine: str = "auto") -> dict:
    from explorer.core.config import Settings
    from explorer.core.imageio import load_image
    from explorer.core.library import Library
    from explorer.core.models.registry import ModelLoader
    from explorer.core.pipeline import Indexer

    files = image_files(folder)
    lib_dir = workdir / "library"
    shutil.rmtree(lib_dir, ignore_errors=True)
    settings = Settings(library=str(lib_dir), engine=engine)
    loader = ModelLoader(settings)
    t = time.perf_counter()
    detector, captioner, image_enc, text_enc = (loader.get(r) for r in ("detector", "captioner", "image", "text"))
    load_s = time.perf_counter() - t

    def forward(ims):
        dets = detector.detect(ims)
        caps = captioner.caption(ims, dets)
        image_enc.embed_images(ims)
        text_enc.embed_texts([c.text for c in caps])

    # warm-up on images that are not part of the measurement (first calls set up kernels)
    warm = make_photos(workdir / "warmup", batch_size, seed=12345, max_side=800)
    forward([load_image(p).image for p in image_files(warm)])

    # The bare forward passes run on the first half of the images before the pipeline and on
    # the second half after it, so that a change in machine load during the run affects both
    # measurements alike. Images are decoded in advance (not timed), as the pipeline would.
    half = (len(files) // 2 // batch_size) * batch_size or len(files)
    bare = {"s": 0.0, "cpu": 0.0, "decode_s": 0.0, "n": 0}

    def bare_forward(paths):
        t = time.perf_counter()
        decoded = [load_image(p).image for p in paths]
        bare["decode_s"] += time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, len(decoded), batch_size):
            forward(decoded[i : i + batch_size])
        bare["s"] += time.perf_counter() - t
        bare["cpu"] += time.process_time() - c
        bare["n"] += len(decoded)

    bare_forward(files[:half])

    # -- the full pipeline on a fresh library -------------------------------------------------
    lib = Library(lib_dir, settings, loader=loader)
    hwm_ok = reset_peak()
    prof = cProfile.Profile() if profile else None
    t, c = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    summary = Indexer(lib, batch_size=batch_size).run([folder])
    if prof:
        prof.disable()
    pipe_s, pipe_cpu = time.perf_counter() - t, time.process_time() - c
    index_peak = vm_hwm_mb() if hwm_ok else None
    lib.close()
    if summary.failures:
        print(f"warning: {len(summary.failures)} failures, e.g. {summary.failures[0]}", file=sys.stderr)
    n_pipe = summary.indexed
    pipe_rate = n_pipe / pipe_s

    bare_forward(files[half:])
    bare_rate = bare["n"] / bare["s"]

    out = {
        "images": len(files),
        "indexed": n_pipe,
        "batch_size": batch_size,
        "model_load_s": round(load_s, 2),
        "pipeline_s": round(pipe_s, 2),
        "pipeline_img_per_s": round(pipe_rate, 2),
        "pipeline_cpu_s_per_img": round(pipe_cpu / max(n_pipe, 1), 3),
        "decode_in_advance_s": round(bare["decode_s"], 2),
        "bare_forward_s": round(bare["s"], 2),
        "bare_forward_img_per_s": round(bare_rate, 2),
        "bare_cpu_s_per_img": round(bare["cpu"] / bare["n"], 3),
        "ratio": round(pipe_rate / bare_rate, 3),
        "cpu_ratio": round((bare["cpu"] / bare["n"]) / (pipe_cpu / max(n_pipe, 1)), 3),
        "target_ratio": TARGET_RATIO,
        "peak_rss_mb": round(rss_peak_mb(), 1),
        "peak_rss_indexing_mb": round(index_peak, 1) if index_peak else None,
        "engine": engine,
        "engines_resolved": {r: getattr(m, "engine", getattr(getattr(m, "core", None), "engine", "torch"))
                             for r, m in (("detector", detector), ("image", image_enc), ("text", text_enc))},
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        out["profile"] = s.getvalue()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, help="index this folder instead of generating photos")
    ap.add_argument("--n", type=int, default=200, help="photos to generate (default 200)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="where to put the generated photos and the library (default: a temp dir)")
    ap.add_argument("--profile", action="store_true", help="cProfile the pipeline run and print the top entries")
    ap.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx", "openvino"),
                    help="inference engine of the offline default models (default auto)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="explorer-bench-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        folder = args.folder
        if folder is None:
            folder = workdir / "photos"
            if not folder.is_dir() or len(image_files(folder)) != args.n:
                shutil.rmtree(folder, ignore_errors=True)
                t = time.perf_counter()
                make_photos(folder, args.n, args.seed)
                print(f"made {args.n} photos in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        res = bench(folder.expanduser().resolve(), args.batch_size, workdir, args.profile, args.engine)
    finally:
        if tmp is not None:
            tmp.cleanup()
    profile = res.pop("profile", None)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"images            {res['images']} (indexed {res['indexed']}), batch size {res['batch_size']}, {res['cpus']} CPUs")
        print(f"engine            {res['engine']}: {res['engines_resolved']}")
        print(f"model load        {res['model_load_s']:.1f} s (not counted)")
        print(f"full pipeline     {res['pipeline_img_per_s']:6.2f} img/s  ({res['pipeline_s']:.1f} s; {res['pipeline_cpu_s_per_img']:.3f} CPU-s/img)")
        print(f"bare forward      {res['bare_forward_img_per_s']:6.2f} img/s  ({res['bare_forward_s']:.1f} s; {res['bare_cpu_s_per_img']:.3f} CPU-s/img;"
              f" decoding in advance took {res['decode_in_advance_s']:.1f} s, not counted)")
        verdict = "meets" if res["ratio"] >= TARGET_RATIO else "BELOW"
        print(f"ratio             {res['ratio']:.3f}  ({verdict} the {TARGET_RATIO} target; CPU-time ratio {res['cpu_ratio']:.3f})")
        print(f"peak RSS          {res['peak_rss_mb']:.0f} MB (process)"
              + (f", {res['peak_rss_indexing_mb']:.0f} MB during indexing" if res["peak_rss_indexing_mb"] else ""))
    if profile:
        print(profile, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
