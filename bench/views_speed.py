"""Speed of the gallery-wide views at 100k images: map projection, map frame time, duplicate search.

Synthetic vectors (no model runs): a mixture of ``--clusters`` Gaussian clusters in
``--dim`` dimensions, unit-normalised, with ``--dup-frac`` of the images given a planted
near copy (the original plus small noise), so the duplicate search has something to find.

- **projection**: ``explorer.core.projection`` PCA (2-D map + 32-D for clustering) and k-means,
  the work ``gallery_map`` does after loading vectors (and UMAP when installed and ``--umap``);
- **frame time**: the real ``EmbeddingMapPanel`` (pyqtgraph) offscreen, 100k points coloured
  by cluster; each frame pans the view and repaints synchronously; also the nearest-point
  look-up that hover and click do on every mouse move;
- **duplicates**: an hnswlib index (M=16, ef_construction=200, as the library builds) of the
  vectors, then ``near_duplicate_pairs`` + ``group_pairs`` (k=10) as ``find_duplicates`` runs
  them; reports how many planted copies were found.

Usage: python bench/views_speed.py [--n 100000] [--dim 1280] [--frames 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic(n: int, dim: int, clusters: int, dup_frac: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    lab = rng.integers(0, clusters, n)
    X = np.empty((n, dim), np.float32)
    for s in range(0, n, 10000):
        e = min(n, s + 10000)
        X[s:e] = centres[lab[s:e]] + 1.2 * rng.normal(size=(e - s, dim)).astype(np.float32)
    n_dup = int(n * dup_frac)
    src = rng.choice(n - n_dup, n_dup, replace=False)
    dst = np.arange(n - n_dup, n)
    X[dst] = X[src] + 0.25 * rng.normal(size=(n_dup, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, lab, src, dst


def bench_projection(X, umap_too: bool):
    from explorer.core.projection import CLUSTER_DIMS, kmeans, pca, project, umap_available

    t0 = time.perf_counter()
    P = pca(X, CLUSTER_DIMS)
    t1 = time.perf_counter()
    cl = kmeans(P, 10)
    t2 = time.perf_counter()
    out = {"pca_s": t1 - t0, "kmeans_s": t2 - t1, "total_s": t2 - t0}
    if umap_too and umap_available():
        t3 = time.perf_counter()
        project(X, "umap")
        out["umap_s"] = time.perf_counter() - t3
    return P[:, :2].copy(), cl, out


def bench_frames(xy, clusters, frames: int):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from explorer.core.projection import GalleryMap
    from explorer.ui.embedding_map import EmbeddingMapPanel
    from explorer.ui.thumbnails import ThumbnailLoader
    from explorer.ui.view_context import ViewContext
    from explorer.ui.workers import TaskRunner

    app = QApplication.instance() or QApplication([])
    n = len(xy)
    ctx = ViewContext(TaskRunner(), ThumbnailLoader("/tmp/views-bench-thumbs"), lambda: None, print)
    panel = EmbeddingMapPanel(ctx)
    panel.resize(1200, 800)
    panel.show()
    m = GalleryMap("image", "pca", np.arange(n, dtype=np.int64), xy.astype(np.float32), [f"/x/{i}.jpg" for i in range(n)],
                   [f"label {c}" for c in clusters.tolist()], ["generated"] * n, [""] * n,
                   np.random.default_rng(0).random(n).astype(np.float32), clusters.astype(np.int64))
    panel.colour_combo.setCurrentText("cluster")
    t0 = time.perf_counter()
    panel.set_map(m)
    app.processEvents()
    vp = panel.plot.viewport()
    vp.repaint()
    first = time.perf_counter() - t0
    times, lod = [], []
    for f in range(frames):
        panel.vb.translateBy(x=(0.01 if f % 2 else -0.01) * float(np.ptp(xy[:, 0])))
        t = time.perf_counter()
        vp.repaint()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        panel.update_lod()  # what the debounced range-change timer runs after a pan
        vp.repaint()
        lod.append(time.perf_counter() - t)
    # zoomed in so that the scatter items draw (fewer than LOD_POINTS points in view)
    from explorer.ui.embedding_map import LOD_POINTS

    cx, cy = (float(v) for v in np.median(xy, axis=0))
    half = [float(v) for v in 0.5 * np.ptp(xy, axis=0)]
    f = 1.0
    while True:
        inview = np.count_nonzero((np.abs(xy[:, 0] - cx) <= half[0] * f) & (np.abs(xy[:, 1] - cy) <= half[1] * f))
        if inview <= LOD_POINTS * 0.5 or f < 1e-3:
            break
        f *= 0.8
    panel.vb.setRange(xRange=(cx - half[0] * f, cx + half[0] * f), yRange=(cy - half[1] * f, cy + half[1] * f), padding=0)
    t = time.perf_counter()
    panel.update_lod()
    vp.repaint()
    zoom_build = time.perf_counter() - t
    ztimes = []
    for k in range(frames):
        panel.vb.translateBy(x=(0.02 if k % 2 else -0.02) * half[0] * f)
        t = time.perf_counter()
        vp.repaint()
        ztimes.append(time.perf_counter() - t)
    assert not panel.lod_active
    # recolour (caption weight: 10 bins) and repaint
    t = time.perf_counter()
    panel.colour_combo.setCurrentText("caption weight")
    vp.repaint()
    recolour = time.perf_counter() - t
    rng = np.random.default_rng(1)
    pts = xy[rng.integers(0, n, 200)]
    t = time.perf_counter()
    for x, y in pts:
        panel.nearest(float(x), float(y))
    hover = (time.perf_counter() - t) / len(pts)
    panel.close()
    return {"first_paint_s": first, "frame_ms_median": 1000 * float(np.median(times)), "frame_ms_p90": 1000 * float(np.percentile(times, 90)),
            "raster_and_paint_ms_median": 1000 * float(np.median(lod)),
            "zoomed_points": int(inview), "zoomed_build_and_paint_s": zoom_build,
            "zoomed_frame_ms_median": 1000 * float(np.median(ztimes)), "recolour_and_paint_s": recolour, "nearest_ms": 1000 * hover}


def bench_duplicates(X, src, dst, threads: int):
    import hnswlib

    from explorer.core.duplicates import DEFAULT_K, group_pairs, near_duplicate_pairs
    from explorer.core.index import EF_CONSTRUCTION, M, VectorIndex

    n, dim = X.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    t0 = time.perf_counter()
    idx = hnswlib.Index(space="ip", dim=dim)
    idx.init_index(max_elements=n, ef_construction=EF_CONSTRUCTION, M=M)
    idx.add_items(X, ids, num_threads=threads)
    build = time.perf_counter() - t0
    vi = VectorIndex(Path("/tmp"), "bench-dups", dim)
    vi.index, vi._live = idx, set(ids.tolist())
    # threshold: below the planted copies' similarity, above the clusters' (printed for the record)
    sim_planted = np.einsum("ij,ij->i", X[src], X[dst])
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, n, 20000), rng.integers(0, n, 20000)
    a, b = a[a != b], b[a != b]
    sim_random = np.einsum("ij,ij->i", X[a], X[b])
    threshold = float(np.percentile(sim_planted, 1))
    out = {"build_s": build, "threads": threads, "threshold": threshold, "planted_sim_p1": threshold,
           "random_pair_sim_max": float(sim_random.max())}
    for nt in sorted({1, threads}):
        t1 = time.perf_counter()
        pa, pb, ps = near_duplicate_pairs(vi, ids, threshold, k=DEFAULT_K, num_threads=nt)
        t2 = time.perf_counter()
        groups = group_pairs(ids, pa, pb, ps)
        t3 = time.perf_counter()
        out[f"search_s_{nt}thr"] = t2 - t1
        out[f"group_s_{nt}thr"] = t3 - t2
    planted = set(zip((src + 1).tolist(), (dst + 1).tolist()))
    found = set(zip(pa.tolist(), pb.tolist()))
    out["planted"] = len(planted)
    out["planted_found"] = len(planted & found)
    out["pairs"] = len(pa)
    out["groups"] = len(groups)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--dup-frac", type=float, default=0.01)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--umap", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of projection,frames,duplicates to skip")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    t = time.perf_counter()
    X, lab, src, dst = synthetic(args.n, args.dim, args.clusters, args.dup_frac)
    print(f"synthetic: {args.n} x {args.dim} float32, {args.clusters} clusters, {len(src)} planted near copies "
          f"({time.perf_counter() - t:.1f} s); load average {os.getloadavg()[0]:.1f}", flush=True)
    xy, cl = None, None
    if "projection" not in skip:
        xy, cl, p = bench_projection(X, args.umap)
        print("projection: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()), flush=True)
    if "frames" not in skip:
        if xy is None:
            from explorer.core.projection import pca

            xy, cl = pca(X, 2), lab
        f = bench_frames(xy, cl, args.frames)
        print("map frames: " + ", ".join(f"{k} {v:.3f}" for k, v in f.items()), flush=True)
    if "duplicates" not in skip:
        d = bench_duplicates(X, src, dst, args.threads)
        print("duplicates: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
