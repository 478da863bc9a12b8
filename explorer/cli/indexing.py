"""Building and keeping a library: ``explorer index`` (local or Ray engine, resumable, Ctrl-C saves
what is done), ``explorer check`` (database vs indices, repairs), ``explorer whiten`` and
``explorer sample-gallery``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from ..core.errors import ExplorerError
from .common import (EXIT_CANCELLED, EXIT_FAILURES, EXIT_OK, ProgressBar, add_library_and_model_options, open_library,
                     say_waiting)


def parse_concurrency(text: str | None) -> dict[str, int]:
    """``detector=2,image=4`` -> {role: actors}; roles are the model roles."""
    from ..core.distributed.ray_engine import ROLES

    out: dict[str, int] = {}
    for part in filter(None, (text or "").split(",")):
        role, _, n = part.partition("=")
        if role.strip() not in ROLES or not n.strip().isdigit() or int(n) < 1:
            raise ExplorerError(f"--ray-concurrency: expected ROLE=N with ROLE in {', '.join(ROLES)}, got '{part}'")
        out[role.strip()] = int(n)
    return out


def cmd_index(args) -> int:
    from ..core.captions import CaptionsFile
    from ..core.pipeline import Indexer

    lib = open_library(args)
    captions = CaptionsFile.load(args.captions) if args.captions else None
    if args.index_engine == "ray":
        from ..core.distributed import RayIndexer, RayOptions

        if args.follow_symlinks:
            raise ExplorerError("--follow-symlinks is not supported with --index-engine ray")
        if not getattr(args, "verbose", False):
            logging.getLogger("ray").setLevel(logging.WARNING)  # Ray Data logs every operator's progress at INFO
        indexer = RayIndexer(lib, captions_file=captions, options=RayOptions(
            address=args.address, batch_size=args.batch_size, shard_size=args.shard_size,
            concurrency=parse_concurrency(args.ray_concurrency)))
    else:
        if args.address:
            raise ExplorerError("--address needs --index-engine ray")
        indexer = Indexer(lib, captions_file=captions, batch_size=args.batch_size, follow_symlinks=args.follow_symlinks)
    with lib.writing("indexing", wait=args.wait, on_wait=say_waiting):
        return _index(args, lib, indexer)


def _index(args, lib, indexer) -> int:
    cancel = threading.Event()

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        sys.stderr.write("\ncancelling: finishing the current batch and saving (Ctrl-C again to abort)...\n")

    old = signal.signal(signal.SIGINT, on_sigint)
    bar = ProgressBar(force=args.progress)
    try:
        summary = indexer.run(args.folders, progress=None if args.quiet else bar, cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, old)
        if not args.quiet:
            bar.close()
    lib.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(f"library: {lib.dir}")
        print(f"scanned {summary.scanned} images: {summary.indexed} indexed, {summary.unchanged} unchanged, "
              f"{summary.removed} removed, {len(summary.failures)} failed in {summary.elapsed:.1f} s")
        if summary.outside_links:
            print(f"skipped {summary.outside_links} symlinks that lead outside the indexed folders (--follow-symlinks to index them)")
        for f in summary.failures[:50]:
            print(f"  failed: {f.path}: {f.reason}")
        for f in summary.notes[:20]:
            print(f"  note: {f.path}: {f.reason}")
        if len(summary.notes) > 20:
            print(f"  ... and {len(summary.notes) - 20} more notes (use --json for all)")
        if len(summary.failures) > 50:
            print(f"  ... and {len(summary.failures) - 50} more (use --json for all)")
        if summary.whitening:
            print(summary.whitening)
        if summary.cancelled:
            print("cancelled: what was done is saved; run the same command again to continue")
    if summary.cancelled:
        return EXIT_CANCELLED
    return EXIT_FAILURES if summary.failures else EXIT_OK


def cmd_check(args) -> int:
    import contextlib

    from ..core.catalog import Catalog
    from ..core.modes import INDEXED

    lib = open_library(args, must_exist=True)
    # a writer saves its repairs; a library on read-only media is checked in memory
    ctx = contextlib.nullcontext() if lib.read_only else lib.writing("checking", wait=args.wait, on_wait=say_waiting)
    with ctx:
        report = lib.check(full=args.full, verify_db=True)
        lines = report.lines()
        print("\n".join(lines) if lines else "library is consistent: database and indices agree")
        if lines and not report.saved:
            print("read-only library: the repairs above were made in memory only")
        counts = Catalog(lib.store).status_counts()
        print(f"images: {counts.get('ok', 0)} indexed, {counts.get('error', 0)} with errors")
        what = "all vectors" if args.full else "a sample of vectors"
        print(f"database: {'integrity_check' if args.full else 'quick_check'} ok; {what} compared with the indices "
              f"({sum(report.compared.values())} in all)")
        for mode in INDEXED:
            print(f"index {mode}: {len(lib.index(mode))} vectors")
        lib.close()
    return EXIT_FAILURES if report.refused else EXIT_OK


def cmd_whiten(args) -> int:
    """Fit the library's whitening on its own image vectors (learned whitening with --gt)."""
    lib = open_library(args, must_exist=True)
    labels = None
    if args.gt:
        from ..core.evaluate import image_labels

        labels = image_labels(lib, args.gt)
    with lib.writing("fitting whitening", wait=args.wait, on_wait=say_waiting):
        w = lib.fit_whitening(labels)
        lib.sync_indices(save=True)
        lib.refresh_agreement()
        lib.sync_indices(save=True)
    st = w.stamp
    print(f"whitening {w.kind}: fitted on {st['n']} image vectors of {st['model_id']}, {w.in_dim} -> {w.out_dim} dims, "
          f"shrinkage {st['shrinkage']}; stored in {lib.whitening_path()}")
    if lib.settings.whitening == "none":
        print('not in use: whitening is "none" in the settings; set it to "pca" or "lw" (config file or --whitening) to use it')
    else:
        print("image and fused indices rebuilt with it")
    lib.close()
    return EXIT_OK


def cmd_sample_gallery(args) -> int:
    from ..core.samples import make_sample_gallery

    out = make_sample_gallery(args.out)
    print(out)
    return EXIT_OK


def add_wait_option(p) -> None:
    """``--wait``: the one way a writing command waits for another writer instead of failing."""
    p.add_argument("--wait", action="store_true", help="if another process is writing the library, wait for it instead of failing")


def add_index(sub) -> None:
    s = sub.add_parser("index", help="index gallery folders (incremental, resumable)")
    s.add_argument("folders", nargs="+", metavar="FOLDER")
    add_library_and_model_options(s)
    s.add_argument("--captions", metavar="FILE", help="user captions: JSON {path: caption} or COCO captions")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--progress", action="store_true", help="print progress lines even when stderr is not a terminal")
    add_wait_option(s)
    s.add_argument("--follow-symlinks", action="store_true",
                   help="also index files that symlinks inside the folders point to elsewhere (default: skip them)")
    g = s.add_argument_group("distributed indexing (optional extra [scale]; see README, Scaling out)")
    g.add_argument("--index-engine", dest="index_engine", choices=("local", "ray"), default="local",
                   help="local (default) or ray: the same pipeline on Ray Data")
    g.add_argument("--address", metavar="ADDR", help="Ray cluster address (ray://host:10001 or auto); default: start a local Ray")
    g.add_argument("--shard-size", dest="shard_size", type=int, default=64, help="images per Parquet shard (the unit of resuming)")
    g.add_argument("--ray-concurrency", dest="ray_concurrency", metavar="ROLE=N,...",
                   help="actors per model role, e.g. detector=2,image=4 (default 1 each)")
    s.set_defaults(func=cmd_index)


def add_check(sub) -> None:
    s = sub.add_parser("check", help="check and repair the library (database vs indices)")
    add_library_and_model_options(s)
    s.add_argument("--full", action="store_true", help="SQLite integrity_check and compare every index vector (slower)")
    add_wait_option(s)
    s.set_defaults(func=cmd_check)


def add_whiten(sub) -> None:
    s = sub.add_parser("whiten", help="fit the whitening of image vectors on this library (PCA; learned whitening with --gt)")
    add_library_and_model_options(s)
    s.add_argument("--gt", metavar="SPEC", help="ground-truth labels for supervised learned whitening (folders:DIR, csv:FILE, ...)")
    add_wait_option(s)
    s.set_defaults(func=cmd_whiten)


def add_sample_gallery(sub) -> None:
    s = sub.add_parser("sample-gallery", help="write the sample gallery (photos shipped by scikit-image) to a folder")
    s.add_argument("out", nargs="?", default="sample-gallery")
    s.set_defaults(func=cmd_sample_gallery)
