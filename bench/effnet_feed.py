"""The EfficientNet-Lite0 encoder's feed path in OpenVINO: the path before this change vs now, in one run.

The encoder alone (``EffNetCore._compute``: preprocessing, backbone, GeM, classifier head) on
the same pre-decoded real photos, in batches of 16 as the indexer gives them, with the default
representation (``whole``, two scales). Variants:

* ``old`` - the feed path before this change, rebuilt here: per scale the image converted to
  RGB and normalised in three float passes, ``np.stack(...).astype``, batches of any size per
  input shape, a channels-last torch tensor made contiguous by torch, the dynamic model only;
* ``dynamic`` - today's feed path (lookup-table normalisation into C-contiguous numpy, no
  torch round trip, power-of-two batches) on the dynamic model only;
* ``dynamic-b1`` - as ``dynamic`` but every image alone (batch 1: fewest distinct input shapes);
* ``static`` - today's default: as ``dynamic``, plus static per-shape models for shapes fed
  ``STATIC_PROMOTE_AFTER`` times (at most ``STATIC_MAX``);
* ``static-eager`` - every shape compiled statically on first sight (``promote_after=1``, no
  bound), to show what static models give and what compiling (and keeping) them costs.

Each variant runs in its own process (OpenVINO/oneDNN keep per-process kernel caches, so a
fresh process is the honest "first time these shapes are seen"), in the order
A B C D E E D C B A so that a drift in machine load hits all alike; each process makes three
passes over the photos: pass 1 is cold (first-seen shapes, compiles), passes 2-3 warm.
Wall-clock and CPU time per image are printed; ratios are within this run.

    .venv/bin/python bench/effnet_feed.py                   # /tmp/r5/photos or 200 new photos
    .venv/bin/python bench/effnet_feed.py --photos DIR --n 100 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("old", "dynamic", "dynamic-b1", "static", "static-eager")
BATCH = 16


def _old_compute(core, images, pooling):
    """``EffNetCore._compute`` as it was before this change (kept here for the comparison only)."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    from explorer.core.models.base import l2_normalise
    from explorer.core.models.effnet import BATCH as OLD_BATCH
    from explorer.core.models.effnet import INPUT_SIZE, MEAN, STD, gem, input_size

    def preprocess_one(im, side, mode):
        rgb = im.convert("RGB")
        w, h = rgb.size
        r = rgb.resize(input_size(w, h, side, mode), Image.Resampling.BILINEAR, reducing_gap=2.0)
        a = np.asarray(r, dtype=np.float32) / 255.0
        return ((a - MEAN) / STD).transpose(2, 0, 1)

    def feature_map(x):
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(core._runner.run({"x": a})[0]).to(x.device)

    n = len(images)
    acc = np.zeros((n, 1280), np.float32)
    probs = np.zeros((n, 1000), np.float32)
    prob_scale = min(range(len(pooling.scales)), key=lambda j: abs(math.log(pooling.scales[j])))
    for j, scale in enumerate(pooling.scales):
        side = int(round(INPUT_SIZE * scale))
        groups = {}
        for i, im in enumerate(images):
            groups.setdefault(input_size(im.width, im.height, side, pooling.preprocess), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), OLD_BATCH):
                chunk = idx[start : start + OLD_BATCH]
                x = torch.from_numpy(np.stack([preprocess_one(images[i], side, pooling.preprocess) for i in chunk]).astype(np.float32))
                with torch.inference_mode():
                    fmap = feature_map(x)
                    g = gem(fmap.float(), pooling.gem_p).cpu().numpy()
                    if j == prob_scale:
                        probs[chunk] = torch.softmax(core.classify(fmap), dim=1).float().cpu().numpy()
                acc[chunk] += l2_normalise(g)
    return l2_normalise(acc / len(pooling.scales)), probs


def run_variant(variant: str, photos: Path, n: int) -> dict:
    """One variant in this process: three passes over the photos; returns per-pass ms per image."""
    from index_throughput import image_files

    from explorer.core.imageio import load_image
    from explorer.core.models import effnet, engines
    from explorer.core.models.effnet import EffNetCore, Pooling

    ims = [load_image(p).image for p in image_files(photos)[:n]]
    core = EffNetCore("cpu", "openvino")
    r = core._runner
    if variant in ("old", "dynamic", "dynamic-b1"):
        r.static_max = 0
    if variant == "dynamic-b1":
        effnet.BATCH = 1
    elif variant == "static-eager":
        r.promote_after, r.static_max = 1, 4096  # no eviction: every shape keeps its static model
    pooling = Pooling()
    compute = (lambda b: _old_compute(core, b, pooling)) if variant == "old" else (lambda b: core._compute(b, pooling))
    out = {"variant": variant, "images": len(ims), "passes": []}
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, len(ims), BATCH):
            compute(ims[i : i + BATCH])
        out["passes"].append({"wall_ms": 1000 * (time.perf_counter() - t) / len(ims), "cpu_ms": 1000 * (time.process_time() - c) / len(ims)})
    out["static_compiled"] = r.static_compiled
    out["static_compile_s"] = round(r.static_compile_s, 2)
    out["static_kept"] = len(r.static_shapes())
    out["engine_threads"] = engines.engine_threads()
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def preprocess_compare(photos: Path, n: int) -> dict:
    """Preprocessing alone, old formula vs lookup table, interleaved, and their largest difference."""
    import numpy as np
    from PIL import Image

    from index_throughput import image_files

    from explorer.core.imageio import load_image
    from explorer.core.models.effnet import INPUT_SIZE, MEAN, STD, Pooling, input_size, preprocess

    ims = [load_image(p).image for p in image_files(photos)[:n]]
    sides = [int(round(INPUT_SIZE * s)) for s in Pooling().scales]

    def old(im, side):
        r = im.convert("RGB").resize(input_size(im.width, im.height, side, "whole"), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.stack([((np.asarray(r, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)]).astype(np.float32)

    def resize_only(im, side):
        return im.resize(input_size(im.width, im.height, side, "whole"), Image.Resampling.BILINEAR, reducing_gap=2.0)

    tot = {"old": 0.0, "new": 0.0, "resize": 0.0}
    diff = 0.0
    for rnd in range(4):
        for name in (("old", "new", "resize") if rnd % 2 == 0 else ("resize", "new", "old")):
            t = time.perf_counter()
            for im in ims:
                for side in sides:
                    if name == "old":
                        old(im, side)
                    elif name == "new":
                        preprocess([im], side, "whole")
                    else:
                        resize_only(im, side)
            tot[name] += time.perf_counter() - t
    for im in ims[:40]:
        for side in sides:
            diff = max(diff, float(np.abs(old(im, side) - preprocess([im], side, "whole")).max()))
    ms = {k: round(1000 * v / (4 * len(ims)), 2) for k, v in tot.items()}
    return {"ms_per_image_two_scales": ms, "max_abs_diff": diff}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=Path, default=Path("/tmp/r5/photos"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(args.child, args.photos, args.n)))
        return 0
    if not args.photos.is_dir() or not any(args.photos.iterdir()):
        from index_throughput import make_photos

        args.photos = Path(tempfile.mkdtemp(prefix="effnet-feed-")) / "photos"
        make_photos(args.photos, args.n)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    load0 = os.getloadavg()[0]
    pre = preprocess_compare(args.photos, min(args.n, 100))
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for v in variants + variants[::-1]:
        p = subprocess.run([sys.executable, __file__, "--child", v, "--photos", str(args.photos), "--n", str(args.n)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        if p.returncode:
            print(p.stderr, file=sys.stderr)
            return 1
        runs[v].append(json.loads(p.stdout.strip().splitlines()[-1]))
        if not args.json:
            r = runs[v][-1]
            print(f"  {v:13s} " + "  ".join(f"pass{i + 1} {q['wall_ms']:.1f} ms ({q['cpu_ms']:.1f} cpu)" for i, q in enumerate(r["passes"]))
                  + f"  static compiled {r['static_compiled']} in {r['static_compile_s']} s; peak RSS {r.get('peak_rss_mib')} MiB", flush=True)
    summary = {}
    for v, rs in runs.items():
        cold = [r["passes"][0] for r in rs]
        warm = [q for r in rs for q in r["passes"][1:]]
        summary[v] = {
            "cold_wall_ms": round(sum(q["wall_ms"] for q in cold) / len(cold), 2),
            "cold_cpu_ms": round(sum(q["cpu_ms"] for q in cold) / len(cold), 2),
            "warm_wall_ms": round(sum(q["wall_ms"] for q in warm) / len(warm), 2),
            "warm_cpu_ms": round(sum(q["cpu_ms"] for q in warm) / len(warm), 2),
            "static_compiled": rs[0]["static_compiled"], "static_compile_s": rs[0]["static_compile_s"],
            "peak_rss_mib": max(r.get("peak_rss_mib", 0) for r in rs),
        }
    result = {"photos": str(args.photos), "images": args.n, "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
              "preprocess": pre, "encoder_ms_per_image": summary}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"preprocessing, two scales, ms per image: {pre['ms_per_image_two_scales']} (max abs diff {pre['max_abs_diff']})")
        print(f"encoder alone, ms per image (mean of {len(next(iter(runs.values())))} processes; load {result['load_before']} -> {result['load_after']}):")
        base = summary.get("old")
        for v, s in summary.items():
            rel = f"  warm speed-up vs old {base['warm_wall_ms'] / s['warm_wall_ms']:.2f}x wall, {base['warm_cpu_ms'] / s['warm_cpu_ms']:.2f}x cpu; cold {base['cold_wall_ms'] / s['cold_wall_ms']:.2f}x" if base else ""
            print(f"  {v:13s} cold {s['cold_wall_ms']:.1f} ms ({s['cold_cpu_ms']:.1f} cpu)  warm {s['warm_wall_ms']:.1f} ms ({s['warm_cpu_ms']:.1f} cpu){rel}; peak RSS {s['peak_rss_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
