"""int8 vs f32 OpenVINO engine: retrieval quality on validation sets, and agreement of the models.

For each set (a folder of class sub-folders; folder = label) this script indexes the set twice
with the app's own ``Indexer``, each into a fresh library: ``--engine openvino --precision f32``
and ``--precision int8`` (models loaded once per precision). It then reports

- **retrieval** through the app's evaluate path (``explorer.core.evaluate.run_evaluation``,
  leave-one-out over every image, ground truth ``folders:SET``): mAP and P@10 per mode
  (``image`` = image-only, ``fused`` = caption-fused at the library's alpha), f32 and int8, and
  the paired AP difference int8 - f32 with its bootstrap 95% CI (``evaluation.paired_comparison``);
- **image vectors**: cosine of each image's stored int8 vector to its stored f32 vector
  (min / 1st percentile / median);
- **ImageNet top-1**: share of images whose classifier top-1 label is the same in both
  precisions (the classifier that writes the structured captions, run on the decoded images);
- **detector**: images where either precision detects something; of those, the share with the
  same label multiset; of the f32 detections, the share matched by an int8 detection of the same
  label with IoU >= 0.9; and the share of images whose generated caption text is unchanged.

Nothing here is tuned: the int8 models are the cached ones the app uses (calibrated on the
scikit-image sample photos, ``models/quantize.py``), and the sets are validation data that
neither calibration nor any model choice saw. ``/tmp/fmnist-set`` has the class in every file
name, so it is indexed without the file-name caption source (``--sources``; otherwise the
caption-fused mode reads the label from the name).

    nice -n 10 .venv/bin/python bench/int8_quality.py            # the default sets
    .venv/bin/python bench/int8_quality.py /tmp/icons-set /tmp/val-src/adwaita --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # numpy BLAS threads thrash on the shared 2-core machines

import numpy as np  # noqa: E402

#: default sets: path -> caption sources ("" = the app's default)
DEFAULT_SETS = {
    "/tmp/icons-set": "",
    "/tmp/fmnist-set": "metadata",  # file names carry the class
    "/tmp/val-src/fmnist": "",
    "/tmp/val-src/adwaita": "",
}
MODES = ("image", "fused")
PRECISION_NAMES = ("f32", "int8")
IOU_MATCH = 0.9


def _settings(lib: Path, precision: str, sources: str):
    from explorer.core.config import Settings

    over = {"library": str(lib), "engine": "openvino", "engine_precision": precision}
    if sources:
        over["caption_sources"] = sources
    return Settings.load(over)


def _vectors(lib, kind: str, model_id: str) -> dict[int, np.ndarray]:
    return {r[0]: np.frombuffer(r[2], np.float32) for r in lib.catalog.vectors_since(kind, model_id, 0)}


def _det_agreement(d32: dict, d8: dict, ids) -> dict:
    from explorer.core.models.ssd import box_iou

    either = same_labels = 0
    n32 = matched = 0
    for i in ids:
        a, b = d32.get(i, []), d8.get(i, [])
        if not a and not b:
            continue
        either += 1
        same_labels += sorted(x[0] for x in a) == sorted(x[0] for x in b)
        used: set[int] = set()
        for lab, _, box in a:
            n32 += 1
            for j, (lab8, _, box8) in enumerate(b):
                if j not in used and lab8 == lab and box_iou(box, box8) >= IOU_MATCH:
                    used.add(j)
                    matched += 1
                    break
    return {"images_with_detections": either, "same_label_set": round(same_labels / either, 4) if either else None,
            "f32_detections": n32, "matched_iou>=0.9": round(matched / n32, 4) if n32 else None}


def run_set(root: Path, sources: str, workdir: Path, loaders: dict) -> dict:
    from explorer.core.evaluate import run_evaluation
    from explorer.core.evaluation import paired_comparison
    from explorer.core.imageio import load_image
    from explorer.core.library import Library
    from explorer.core.models.registry import ModelLoader
    from explorer.core.pipeline import Indexer

    out: dict = {"set": str(root), "caption_sources": sources or "default"}
    libs, reports, index_s = {}, {}, {}
    for p in PRECISION_NAMES:
        d = workdir / f"lib-{root.name}-{p}"
        shutil.rmtree(d, ignore_errors=True)
        st = _settings(d, p, sources)
        if p not in loaders:
            loaders[p] = ModelLoader(st)
        lib = Library(d, st, loader=loaders[p])
        t = time.perf_counter()
        summary = Indexer(lib, batch_size=16).run([root])
        index_s[p] = round(time.perf_counter() - t, 1)
        out[f"indexed_{p}"] = summary.indexed
        reports[p] = run_evaluation(lib, f"folders:{root}", modes=MODES)
        libs[p] = lib
    out["index_s"] = index_s
    # retrieval, per mode
    for m in MODES:
        r32 = next(r for r in reports["f32"].results if r.mode == m)
        r8 = next(r for r in reports["int8"].results if r.mode == m)
        row = {"queries": r32.n_queries}
        for p, r in (("f32", r32), ("int8", r8)):
            row[f"map_{p}"] = round(float(r.map), 4)
            row[f"p@10_{p}"] = round(float(r.precision_at_k[10]), 4)
        # same queries in the same order? (paths) then a paired comparison
        if reports["f32"].query_paths == reports["int8"].query_paths:
            c = paired_comparison(r32.ap, r8.ap)  # diff = int8 - f32
            row["ap_diff_int8_minus_f32"] = round(float(c.mean_diff), 4)
            row["ci95"] = [round(float(c.ci_low), 4), round(float(c.ci_high), 4)]
            row["wins_losses_ties"] = [c.wins, c.losses, c.ties]
        out[m] = row
    # stored image vectors, same image by path
    l32, l8 = libs["f32"], libs["int8"]
    p32, p8 = l32.catalog.ok_path_keys(), l8.catalog.ok_path_keys()
    v32 = _vectors(l32, "image", l32.image_model.model_id)
    v8 = _vectors(l8, "image", l8.image_model.model_id)
    pairs = [(p32[k], p8[k]) for k in p32 if k in p8 and p32[k] in v32 and p8[k] in v8]
    cos = np.array([float(v32[a] @ v8[b]) / (np.linalg.norm(v32[a]) * np.linalg.norm(v8[b])) for a, b in pairs])
    out["image_models"] = [l32.image_model.model_id, l8.image_model.model_id]
    out["cosine"] = {"n": len(cos), "min": round(float(cos.min()), 4), "p1": round(float(np.percentile(cos, 1)), 4),
                     "median": round(float(np.median(cos)), 4), "share>=0.999": round(float(np.mean(cos >= 0.999)), 4)}
    # detections and generated captions, same image by path
    d32 = l32.catalog.detections([a for a, _ in pairs])
    d8 = l8.catalog.detections([b for _, b in pairs])
    d8 = {a: d8.get(b, []) for a, b in pairs}  # keyed by the f32 id
    out["detector"] = _det_agreement(d32, d8, [a for a, _ in pairs])
    c32 = l32.catalog.captions_by_source([a for a, _ in pairs])
    c8 = l8.catalog.captions_by_source([b for _, b in pairs])
    gen = [(c32.get(a, {}).get("generated"), c8.get(b, {}).get("generated")) for a, b in pairs]
    gen = [(x.text, y.text) for x, y in gen if x is not None and y is not None]
    out["generated_caption_unchanged"] = round(float(np.mean([x == y for x, y in gen])), 4) if gen else None
    # ImageNet top-1 of the classifier, on the decoded images (fresh objects: no cache hits)
    paths = sorted(Path(os.fsdecode(k)) for k in p32 if k in p8)
    cls = {p: loaders[p].get("classifier", "effnet-classifier") for p in PRECISION_NAMES}
    same = total = 0
    for i in range(0, len(paths), 16):
        ims = [load_image(q).image for q in paths[i : i + 16]]
        t32 = cls["f32"].top_labels([im.copy() for im in ims], k=1)
        t8 = cls["int8"].top_labels([im.copy() for im in ims], k=1)
        same += sum(a[0].label == b[0].label for a, b in zip(t32, t8))
        total += len(ims)
    out["imagenet_top1_same"] = round(same / total, 4) if total else None
    for lib in libs.values():
        lib.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="*", help="set folders (default: the dev and validation sets in /tmp)")
    ap.add_argument("--sources", default=None, help="caption sources for every given set (default: the app's)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON results here")
    args = ap.parse_args(argv)
    sets = {s: (args.sources or "") for s in args.sets} if args.sets else {k: v for k, v in DEFAULT_SETS.items() if Path(k).is_dir()}
    tmp = tempfile.TemporaryDirectory(prefix="explorer-int8-bench-")
    workdir = args.workdir or Path(tmp.name)
    loaders: dict = {}
    results = []
    load = os.getloadavg()[0]
    try:
        for s, src in sets.items():
            results.append(run_set(Path(s), src, workdir, loaders))
            if not args.json:
                _print(results[-1])
    finally:
        tmp.cleanup()
    doc = {"load_avg_start": round(load, 1), "load_avg_end": round(os.getloadavg()[0], 1), "sets": results}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


def _print(r: dict) -> None:
    print(f"== {r['set']} (caption sources {r['caption_sources']}; {r['indexed_f32']} / {r['indexed_int8']} images indexed, "
          f"{r['index_s']['f32']} / {r['index_s']['int8']} s)")
    for m in MODES:
        x = r[m]
        diff = f"; int8 - f32 AP {x['ap_diff_int8_minus_f32']:+.4f} [{x['ci95'][0]:+.4f}, {x['ci95'][1]:+.4f}], " \
               f"{x['wins_losses_ties'][0]} better / {x['wins_losses_ties'][1]} worse / {x['wins_losses_ties'][2]} tied" \
            if "ci95" in x else ""
        print(f"  {m:<6} mAP f32 {x['map_f32']:.4f} int8 {x['map_int8']:.4f}   P@10 f32 {x['p@10_f32']:.4f} int8 {x['p@10_int8']:.4f}{diff}")
    c = r["cosine"]
    print(f"  image vectors int8 vs f32 cosine: min {c['min']:.4f}, p1 {c['p1']:.4f}, median {c['median']:.4f} "
          f"(>= 0.999: {c['share>=0.999']:.1%} of {c['n']})")
    print(f"  ImageNet top-1 same: {r['imagenet_top1_same']:.1%}; generated caption unchanged: "
          f"{r['generated_caption_unchanged'] if r['generated_caption_unchanged'] is None else format(r['generated_caption_unchanged'], '.1%')}")
    d = r["detector"]
    print(f"  detector: {d['images_with_detections']} images with detections; same label set {d['same_label_set']}; "
          f"f32 detections matched (same label, IoU >= 0.9) {d['matched_iou>=0.9']} of {d['f32_detections']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
