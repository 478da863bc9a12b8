"""The gallery-wide views: ``explorer duplicates`` (exact and near-duplicate groups) and
``explorer map`` (a 2-D embedding map as CSV); ``explorer eval --per-query`` lives with ``eval``."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import ExplorerError
from ..core.modes import LEARNED
from .common import add_library_and_model_options, open_library, percent_progress


def cmd_duplicates(args) -> int:
    from ..core.duplicates import find_duplicates

    lib = open_library(args, must_exist=True)
    report = find_duplicates(lib, threshold=args.threshold, k=args.k, near=not args.exact_only,
                             progress=percent_progress(args.quiet or args.json))
    print(report.to_json() if args.json else "\n".join(report.summary_lines()))
    return 0


def cmd_map(args) -> int:
    import csv

    from ..core.projection import gallery_map

    lib = open_library(args, must_exist=True)
    head = None
    if args.representation == LEARNED:
        if not args.head:
            raise ExplorerError("the learned map needs --head models/fusion-NAME.safetensors")
        from ..core.learned.io import load_head

        head = load_head(args.head, lib)
    m = gallery_map(lib, args.representation, method=args.method, head=head, use_cache=not args.no_cache,
                    progress=None if args.quiet else percent_progress(False))
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["image_id", "x", "y", "label", "caption_source", "caption_weight", "cluster", "path"])
        for i in range(len(m)):
            w.writerow([int(m.ids[i]), f"{m.xy[i, 0]:.5f}", f"{m.xy[i, 1]:.5f}", m.labels[i], m.caption_sources[i],
                        f"{m.weights[i]:.4f}", int(m.clusters[i]), m.paths[i]])
    finally:
        if args.out:
            out.close()
    print(f"{len(m)} points, {m.method.upper()} of the {m.representation} vectors, "
          f"{'from the cache' if m.cached else 'computed'} in {m.elapsed_s:.2f} s", file=sys.stderr)
    return 0


def add_duplicates(sub) -> None:
    from ..core.duplicates import DEFAULT_K, DEFAULT_THRESHOLD

    s = sub.add_parser("duplicates", help="groups of exact (same content) and near-duplicate (similar image vector) images",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Exact duplicates share a content hash; near duplicates have image-vector cosine "
                                   "similarity >= --threshold (k nearest neighbours from the image index, joined into groups).\n"
                                   "Exclude them from an evaluation with: explorer eval --exclude-duplicates [T] ...")
    add_library_and_model_options(s)
    s.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help=f"cosine similarity (default {DEFAULT_THRESHOLD})")
    s.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours looked at per image (default {DEFAULT_K})")
    s.add_argument("--exact-only", action="store_true", help="only identical files (no models needed)")
    s.add_argument("--json", action="store_true", help="JSON output (schema retrieval-explorer/duplicates/v1)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_duplicates)


def add_map(sub) -> None:
    from ..core.projection import METHODS, REPRESENTATIONS

    s = sub.add_parser("map", help="2-D embedding map of the library as CSV (PCA, or UMAP when umap-learn is installed)")
    add_library_and_model_options(s)
    s.add_argument("--representation", default="image", choices=REPRESENTATIONS)
    s.add_argument("--method", choices=METHODS, help="default: umap when installed, else pca")
    s.add_argument("--head", metavar="FILE", help="a trained fusion head (for --representation learned)")
    s.add_argument("--out", metavar="FILE", help="CSV file (default: stdout)")
    s.add_argument("--no-cache", action="store_true", help="recompute even if a cached map is up to date")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_map)
