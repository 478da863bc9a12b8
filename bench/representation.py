"""Representation bench: image-only mAP of each step of the global descriptor, with paired CIs.

Steps, each on top of the previous one (the README's table):

1. ``crop``: the old descriptor (shorter side 224, centre crop, single-scale GeM p=3);
2. ``whole``: the whole image, aspect kept (``effnet.Pooling(preprocess="whole", scales=(1,))``);
3. ``multi-scale``: GeM at scales 1/sqrt2, 1, sqrt2, averaged and normalised (the new descriptor);
4. ``+ whitening``: PCA-whitening with shrinkage fitted on the set's own vectors (unsupervised);
5. ``+ rerank``: each reranking of ``explorer.core.rerank`` on the whitened vectors.

Protocol: leave-one-out over every image (image-only mode), labels = class folders, metrics and
paired bootstrap CIs from ``explorer.core.evaluation``. Choices (whitening shrinkage, dimension,
reranking) are read on a *validation* half of the queries (fixed seed) and reported on the other
half and on all queries. Query-time cost per step: the extra encode time of one query image
(single image, one call) and the reranking's time per query against the whole set.

Usage::

    python bench/representation.py embed /tmp/fmnist-set /tmp/icons-set   # caches descriptors
    python bench/representation.py report /tmp/fmnist-set /tmp/icons-set
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if "report" in sys.argv:  # numpy's BLAS threads thrash on these shared 2-core machines (10x slower eigh)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = Path("/tmp/representation-bench")
EXT = {".png", ".jpg", ".jpeg"}


def listing(root: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXT and p.parent != root)
    return paths, [p.parent.name for p in paths]


def embed(root: Path, out: Path) -> None:
    from explorer.core.imageio import load_image
    from explorer.core.models.base import l2_normalise
    from explorer.core.models.effnet import Pooling, shared_core

    core = shared_core("cpu")
    paths, labels = listing(root)
    images = [load_image(p).image for p in paths]
    configs = {
        "crop": Pooling("crop", (1.0,)),
        "whole": Pooling("whole", (1.0,)),
        "whole_s0.7071": Pooling("whole", (0.7071,)),
        "whole_s1.4142": Pooling("whole", (1.4142,)),
    }
    vecs, secs = {}, {}
    for name, pool in configs.items():
        t0 = time.perf_counter()
        vecs[name] = np.concatenate([np.stack([a.embedding for a in core.analyse(images[s:s + 64], pool)])
                                     for s in range(0, len(images), 64)]).astype(np.float32)
        print(f"{root.name} {name}: {len(images)} images in {time.perf_counter() - t0:.1f}s", flush=True)
    # the multi-scale descriptor is the normalised mean of the per-scale ones (tests/test_representation.py
    # checks that the app's code path computes exactly this); checked here on the first images
    ms = l2_normalise((vecs["whole_s0.7071"] + vecs["whole"] + vecs["whole_s1.4142"]) / 3)
    check = np.stack([a.embedding for a in core.analyse(images[:8], Pooling("whole", (0.7071, 1.0, 1.4142)))])
    assert np.allclose(check, ms[:8], atol=1e-4), "multi-scale descriptor differs from the app's"
    vecs["multiscale"] = ms
    # single-query encode cost, interleaved (so machine load hits every config alike): 3 rounds x 8 images
    ms_pool = Pooling("whole", (0.7071, 1.0, 1.4142))
    timed = {"crop": configs["crop"], "whole": configs["whole"], "multiscale": ms_pool}
    acc = {k: 0.0 for k in timed}
    for _ in range(3):
        for name, pool in timed.items():
            for im in images[8:16]:
                c = im.copy()
                t1 = time.perf_counter()
                core.analyse([c], pool)
                acc[name] += time.perf_counter() - t1
    secs = {k: v / 24 for k, v in acc.items()}
    print(f"{root.name} single-query encode ms: " + ", ".join(f"{k} {v * 1000:.0f}" for k, v in secs.items()), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, labels=np.array(labels), paths=np.array([str(p) for p in paths]), **vecs)
    out.with_suffix(".json").write_text(json.dumps({"encode_s": secs}))


SHRINKAGES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
DIMS = (0, 256, 128)


def _ap(vecs: np.ndarray, labels, method: str = "none") -> np.ndarray:
    """Per-query AP, leave-one-out, image-only; reranked through the evaluation's own code."""
    from explorer.core import rerank as rr
    from explorer.core.evaluate import score_matrix
    from explorer.core.evaluation import LabelRelevance, evaluate_embeddings, evaluate_scores

    rel = LabelRelevance.leave_one_out(list(labels))
    if method == "none":
        return evaluate_embeddings(vecs, vecs, rel).ap
    v = rr.Vectors({"image": vecs})
    S = score_matrix(rr.Scorer("dot", "image"), v, v, np.arange(len(vecs)), method)
    return evaluate_scores(S, rel).ap


def _rerank_ms(vecs: np.ndarray, method: str, pool: int = 600, reps: int = 30) -> float:
    """One query's reranking time against a search-sized candidate pool (ms)."""
    from explorer.core import rerank as rr

    sc = rr.Scorer("dot", "image")
    g = rr.Vectors({"image": vecs[:pool]})
    t0 = time.perf_counter()
    for i in range(reps):
        q = rr.Vectors({"image": vecs[i : i + 1]})
        base = sc(q, g)
        base[0, i] = -np.inf
        rr.rerank(method, sc, q, g, base)
    return (time.perf_counter() - t0) / reps * 1000


def _whiten_ms(w, vec: np.ndarray, reps: int = 200) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        w.apply(vec)
    return (time.perf_counter() - t0) / reps * 1000


SCALE_SETS = {"1": ("whole",), "√2": ("whole_s1.4142",), "1/√2, 1, √2": ("whole_s0.7071", "whole", "whole_s1.4142"),
              "1, √2": ("whole", "whole_s1.4142")}


def _ms(z, names) -> np.ndarray:
    from explorer.core.models.base import l2_normalise

    return l2_normalise(np.mean([z[n] for n in names], axis=0))


def report(root: Path, cache: Path) -> dict:
    from explorer.core import rerank as rr
    from explorer.core import whitening as wht
    from explorer.core.config import Settings
    from explorer.core.evaluation import paired_comparison

    st = Settings()
    z = np.load(cache)
    labels = z["labels"]
    enc = json.loads(cache.with_suffix(".json").read_text())["encode_s"]
    n = len(labels)
    rng = np.random.default_rng(0)
    val = np.zeros(n, bool)
    val[rng.permutation(n)[: n // 2]] = True  # validation half of the queries; the rest is the test half
    mean = lambda ap, m=None: float(np.nanmean(ap if m is None else ap[m]))  # noqa: E731
    ci = lambda c: f"{c['mean_diff']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"  # noqa: E731
    rows = []

    def add(step, ap, prev_ap, cost):
        c_prev = ci(paired_comparison(prev_ap, ap).to_dict()) if prev_ap is not None else "—"
        c_first = ci(paired_comparison(rows[0]["ap"], ap).to_dict()) if rows else "—"
        rows.append({"step": step, "ap": ap, "map": mean(ap), "val": mean(ap, val), "test": mean(ap, ~val),
                     "vs_prev": c_prev, "vs_crop": c_first, "cost": cost})

    enc_ms = lambda k: f"encode {enc[k] * 1000:.0f} ms ({enc[k] / enc['crop']:.1f}x crop)"  # noqa: E731
    ap_crop = _ap(z["crop"], labels)
    add("crop: shorter side 224, centre crop, GeM p=3 (before)", ap_crop, None, enc_ms("crop"))
    ap_whole = _ap(z["whole"], labels)
    add("whole image, aspect kept (~224² px)", ap_whole, ap_crop, enc_ms("whole"))
    scale_aps = {k: _ap(_ms(z, v), labels) for k, v in SCALE_SETS.items()}
    named = {(0.7071, 1.0, 1.4142): "1/√2, 1, √2", (1.0, 1.4142): "1, √2", (1.0,): "1", (1.4142,): "√2"}
    default_scales = named.get(tuple(round(float(x), 4) for x in st.image_scales))
    if default_scales is None:
        raise SystemExit(f"add the default scales {st.image_scales} to SCALE_SETS")
    ms = _ms(z, SCALE_SETS[default_scales])
    ap_ms = scale_aps[default_scales]
    cost = enc_ms("multiscale") if default_scales == "1/√2, 1, √2" else (
        f"encode ≈{enc['multiscale'] / enc['crop'] * 3 / 3.5:.1f}x crop (3x the pixels; the 3-scale set measured "
        f"{enc['multiscale'] / enc['crop']:.1f}x for 3.5x)")
    add(f"multi-scale GeM ({default_scales}; the default)", ap_ms, ap_whole, cost)
    # whitening: the default setting, and the grid read on the validation half
    grid = {}
    for sh in SHRINKAGES:
        for d in DIMS:
            grid[(sh, d)] = _ap(wht.fit_pca(ms, sh, d).apply(ms), labels)
    best = max(grid, key=lambda k: mean(grid[k], val))
    w_def = wht.fit_pca(ms, st.whitening_shrinkage, st.whitening_dim)
    ap_w = grid.get((st.whitening_shrinkage, st.whitening_dim))
    if ap_w is None:
        ap_w = _ap(w_def.apply(ms), labels)
    add(f"+ PCA-whitening, shrinkage {st.whitening_shrinkage} ({'on' if st.whitening == 'pca' else 'off'} by default)", ap_w, ap_ms,
        f"+{_whiten_ms(w_def, ms[0]):.2f} ms")
    wb = f"{best[0]}/{best[1] or ms.shape[1]}"
    add(f"+ PCA-whitening, best on validation (shrinkage/dim {wb})", grid[best], ap_ms, "")
    base_vecs = w_def.apply(ms) if st.whitening == "pca" else ms
    ap_base = ap_w if st.whitening == "pca" else ap_ms
    base_name = "whitened" if st.whitening == "pca" else "multi-scale, unwhitened"
    for m in rr.METHODS[1:]:
        add(f"+ rerank {m} (on the {base_name} vectors)", _ap(base_vecs, labels, m), ap_base,
            f"+{_rerank_ms(base_vecs, m):.1f} ms / query (600-candidate pool)")
    other_vecs = ms if st.whitening == "pca" else w_def.apply(ms)
    other = {m: _ap(other_vecs, labels, m) for m in rr.METHODS[1:]}
    # the new defaults against the old descriptor, on the held-out test half of the queries
    ap_def = ap_base
    c_test = paired_comparison(ap_crop[~val], ap_def[~val]).to_dict()
    c_all = paired_comparison(ap_crop, ap_def).to_dict()
    defaults = {"map": mean(ap_def), "test": mean(ap_def, ~val), "ci_test": ci(c_test), "ci_all": ci(c_all)}
    # learned whitening (labels): 2-fold over the classes, each fold evaluated on the classes it did not see
    classes = np.unique(labels)
    half = set(classes[rng.permutation(len(classes))[: len(classes) // 2]].tolist())
    in_a = np.array([lab in half for lab in labels])
    lw_ap, pca_ap, raw_ap = [], [], []
    for fit_mask in (in_a, ~in_a):
        ev = ~fit_mask
        lw = wht.fit_lw(ms[fit_mask], labels[fit_mask], best[0], 0)
        lw_ap.append(_ap(lw.apply(ms[ev]), labels[ev]))
        pca_ap.append(_ap(wht.fit_pca(ms[ev], st.whitening_shrinkage, 0).apply(ms[ev]), labels[ev]))
        raw_ap.append(_ap(ms[ev], labels[ev]))
    lw_ap, pca_ap, raw_ap = np.concatenate(lw_ap), np.concatenate(pca_ap), np.concatenate(raw_ap)
    print(f"\n## {root.name}: {n} images, leave-one-out, image-only "
          f"(validation half {int(val.sum())} / test half {int((~val).sum())} queries)\n")
    print("| step | mAP (all) | val | test | Δ vs previous step [95% CI] | Δ vs crop [95% CI] | query-time cost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['map']:.4f} | {r['val']:.4f} | {r['test']:.4f} | {r['vs_prev']} | {r['vs_crop']} | {r['cost']} |")
    print(f"\n**new defaults** ({default_scales} multi-scale, whitening {st.whitening}, no reranking) vs crop: "
          f"mAP {defaults['map']:.4f} vs {mean(ap_crop):.4f}; Δ on the test half {defaults['ci_test']}, on all queries {defaults['ci_all']}")
    print(f"reranking on the {'unwhitened' if st.whitening == 'pca' else 'whitened'} vectors instead (all / val mAP): " + ", ".join(
        f"{m}: {mean(v):.4f} / {mean(v, val):.4f}" for m, v in other.items()))
    print("\nscale sets (val / all mAP): " + ", ".join(f"{k}: {mean(v, val):.4f} / {mean(v):.4f}" for k, v in scale_aps.items()))
    print("whitening grid (shrinkage/dim: val / all mAP): " + ", ".join(
        f"{k[0]}/{k[1] or ms.shape[1]}: {mean(v, val):.4f} / {mean(v):.4f}" for k, v in grid.items()))
    print(f"learned whitening, 2-fold over the classes, evaluated on the unseen classes ({len(lw_ap)} queries): "
          f"raw {mean(raw_ap):.4f}, PCA {mean(pca_ap):.4f}, LW {mean(lw_ap):.4f}; "
          f"LW - raw {ci(paired_comparison(raw_ap, lw_ap).to_dict())}, LW - PCA {ci(paired_comparison(pca_ap, lw_ap).to_dict())}")
    out = {"set": root.name, "n": n, "rows": [{k: v for k, v in r.items() if k != "ap"} for r in rows], "defaults": defaults}
    cache.with_name(cache.stem + "-report.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("embed", "report"))
    ap.add_argument("sets", nargs="+", type=Path)
    ap.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    for root in args.sets:
        out = args.cache / f"{root.name}.npz"
        if args.stage == "embed":
            embed(root, out)
        else:
            report(root, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
