"""The ``explorer`` command line: every core capability, headless.

Each subcommand is a thin shell over ``explorer.core``; user errors (``ExplorerError``)
print one line and exit with status 2, and nothing here imports Qt except ``gui``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from .core.config import Settings
from .core.errors import ExplorerError

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


# ---------------------------------------------------------------------------------------
# shared options


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (spec strings; see `explorer models`)")
    g.add_argument("--image-encoder", dest="image_encoder", metavar="SPEC", help="e.g. effnet-lite0, open_clip:ViT-B-32@FILE")
    g.add_argument("--text-encoder", dest="text_encoder", metavar="SPEC", help="e.g. minilm, open_clip:ViT-B-32@FILE")
    g.add_argument("--captioner", metavar="SPEC", help="e.g. structured, hf:Salesforce/blip-image-captioning-base")
    g.add_argument("--detector", metavar="SPEC", help="e.g. ssd-mobilenet, hf-detr:facebook/detr-resnet-50")
    g.add_argument("--detector-labels", metavar="L1,L2", help="labels for open-vocabulary detectors")
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda")
    g.add_argument("--caption-sources", dest="caption_sources", metavar="S1,S2",
                   help="caption sources to use besides the captioner: metadata, filename, folder, ocr, all or none "
                        "(default: metadata,filename); a change re-embeds captions only")
    g.add_argument("--engine", choices=("auto", "torch", "onnx", "openvino"),
                   help="inference engine of the offline default models (default auto: openvino if installed, else onnx)")
    g.add_argument("--image-preprocess", dest="image_preprocess", choices=("whole", "stretch", "crop"),
                   help="EfficientNet input geometry (default whole: the whole image, aspect kept)")
    g.add_argument("--image-scales", dest="image_scales", metavar="S1,S2", help="multi-scale GeM scales (default 1,1.4142)")
    g.add_argument("--gem-p", dest="gem_p", type=float, metavar="P", help="GeM power (default 3)")
    g.add_argument("--whitening", choices=("pca", "lw", "none"), help="whitening of image vectors (default pca)")
    g.add_argument("--whitening-dim", dest="whitening_dim", type=int, metavar="N", help="whitened dimension (0 = all)")
    g.add_argument("--whitening-shrinkage", dest="whitening_shrinkage", type=float, metavar="X", help="covariance shrinkage in [0, 1]")


def add_library_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", metavar="DIR", help="library folder (default: $EXPLORER_LIBRARY or ~/.local/share/retrieval-explorer/library)")
    p.add_argument("--vector-store", dest="vector_store", metavar="NAME",
                   help="vector-store backend: hnswlib (default), milvus, hnswlib-pca256 (see README, Scaling out)")
    p.add_argument("--vector-store-uri", dest="vector_store_uri", metavar="URI",
                   help="milvus: a server address (http://host:19530); default: embedded Milvus Lite in the library")


def settings_from(args) -> Settings:
    keys = {"image": "image_encoder", "text": "text_encoder", "captioner": "captioner", "detector": "detector",
            "detector_labels": "detector_labels", "device": "device", "library": "library", "caption_sources": "caption_sources",
            "engine": "engine", "vector_store": "vector_store", "vector_store_uri": "vector_store_uri",
            **{k: k for k in ("image_preprocess", "image_scales", "gem_p", "whitening", "whitening_dim", "whitening_shrinkage")}}
    return Settings.load({k: getattr(args, a, None) for k, a in keys.items()})


def open_library(args, settings: Settings | None = None, must_exist: bool = False):
    from .core.library import Library

    settings = settings or settings_from(args)
    path = os.path.expanduser(settings.library)
    if must_exist and not os.path.isfile(os.path.join(path, "library.sqlite")):
        raise ExplorerError(f"no library at {path}: index a folder first with `explorer index FOLDER --library {path}`")
    return Library(path, settings)


class ProgressBar:
    """A one-line progress bar on stderr with images/s and ETA; silent when stderr is not a terminal
    unless ``force`` (then it prints a line every few seconds)."""

    def __init__(self, stream=sys.stderr, force: bool = False):
        self.stream = stream
        self.tty = stream.isatty()
        self.force = force
        self.last = 0.0

    def __call__(self, p) -> None:
        now = time.monotonic()
        if p.phase != "indexing":
            if self.tty or self.force:
                self._write(f"{p.phase}...", end="\n" if not self.tty else "")
            return
        if not self.tty and now - self.last < 5 and p.done < p.total:
            return
        self.last = now
        width = 30
        frac = p.done / p.total if p.total else 1.0
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        eta = f"{int(p.eta // 60)}:{int(p.eta % 60):02d}" if p.eta is not None else "--:--"
        self._write(f"[{bar}] {p.done}/{p.total}  {p.rate:5.1f} img/s  ETA {eta}  failed {p.failed}", end="" if self.tty else "\n")

    def _write(self, text: str, end: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + end)
        else:
            self.stream.write(text + end)
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


# ---------------------------------------------------------------------------------------
# subcommands


def cmd_fetch(args) -> int:
    from .core.models.fetch import fetch_model

    if not args.spec:
        raise ExplorerError("usage: explorer models fetch SPEC (e.g. hf:Salesforce/blip-image-captioning-base)")
    tty = sys.stderr.isatty()
    state = {"last": 0.0, "file": None}

    def progress(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if name == state["file"] and now - state["last"] < (0.2 if tty else 5) and done < total:
            return
        state["last"], state["file"] = now, name
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        line = f"[{bar}] {done / 1e6:8.1f} / {total / 1e6:.1f} MB  {name[-40:]}"
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()

    res = fetch_model(args.spec, dest=args.dest, endpoint=args.endpoint, revision=args.revision,
                      progress=None if args.quiet else progress)
    if not args.quiet and tty:
        sys.stderr.write("\n")
    print(f"{res.repo}@{res.revision[:12]}: {len(res.files)} files in {res.folder} "
          f"({res.downloaded_bytes / 1e6:.1f} MB downloaded, {len(res.already_there)} already there"
          + (f", resumed {len(res.resumed)}" if res.resumed else "") + "); checksums verified")
    print(f"use it with: {res.use_hint(args.spec)}")
    return EXIT_OK


def cmd_models(args) -> int:
    from .core.models.registry import ROLES, entries, entry_for, probe

    if getattr(args, "action", None) == "fetch":
        return cmd_fetch(args)

    settings = settings_from(args)
    rows = []
    all_ready = True
    for role in ROLES:
        spec = settings.spec(role)
        try:
            entry = entry_for(role, spec)
            av = probe(role, settings)
        except ExplorerError as e:
            rows.append({"role": role, "backend": spec, "ready": False, "where": "", "missing": str(e)})
            all_ready = False
            continue
        rows.append({"role": role, "backend": spec, "summary": entry.summary, "ready": av.ready, "where": av.where, "missing": av.hint})
        all_ready &= av.ready
    from .core.models import engines

    try:
        engine = {"setting": settings.engine, "encoders": engines.resolve(settings.engine),
                  "detector": engines.resolve_detector(settings.engine), "cache": str(engines.cache_dir())}
    except ExplorerError as e:
        engine = {"setting": settings.engine, "error": str(e)}
        all_ready = False
    if args.json:
        print(json.dumps({"roles": rows, "ready": all_ready, "engine": engine, "available": [e.__dict__ for e in entries()]}, indent=2, default=list))
        return EXIT_OK if all_ready else EXIT_FAILURES
    if "error" in engine:
        print(f"engine     {engine['setting']:<28} MISSING\n{'':<10} to fix: {engine['error']}")
    else:
        print(f"engine     {engine['setting']:<28} encoders: {engine['encoders']}, SSD detector: {engine['detector']}; exports cached in {engine['cache']}")
    for r in rows:
        state = "ready" if r["ready"] else "MISSING"
        print(f"{r['role']:<10} {r['backend']:<28} {state}")
        if r.get("summary"):
            print(f"{'':<10} {r['summary']}")
        if r["ready"]:
            print(f"{'':<10} weights: {r['where']}")
        else:
            print(f"{'':<10} to fix: {r['missing']}")
    print("\nother backends:")
    for e in entries():
        if e.name not in {r["backend"].split(':')[0] for r in rows} and "classifier" not in e.roles:
            print(f"  {e.name:<14} ({', '.join(e.roles)}) {e.summary}")
    print("\nall roles ready" if all_ready else "\nsome roles are missing weights (see 'to fix')")
    return EXIT_OK if all_ready else EXIT_FAILURES


def parse_concurrency(text: str | None) -> dict[str, int]:
    """``detector=2,image=4`` -> {role: actors}; roles are the model roles."""
    from .core.distributed.ray_engine import ROLES

    out: dict[str, int] = {}
    for part in filter(None, (text or "").split(",")):
        role, _, n = part.partition("=")
        if role.strip() not in ROLES or not n.strip().isdigit() or int(n) < 1:
            raise ExplorerError(f"--ray-concurrency: expected ROLE=N with ROLE in {', '.join(ROLES)}, got '{part}'")
        out[role.strip()] = int(n)
    return out


def cmd_index(args) -> int:
    from .core.captions import CaptionsFile
    from .core.pipeline import Indexer

    lib = open_library(args)
    captions = CaptionsFile.load(args.captions) if args.captions else None
    if args.index_engine == "ray":
        from .core.distributed import RayIndexer, RayOptions

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
    with lib.writing("indexing", wait=args.wait, on_wait=lambda m: print(m, file=sys.stderr, flush=True)):
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

    lib = open_library(args, must_exist=True)
    # a writer saves its repairs; a library on read-only media is checked in memory
    ctx = contextlib.nullcontext() if lib.read_only else \
        lib.writing("checking", wait=args.wait, on_wait=lambda m: print(m, file=sys.stderr, flush=True))
    with ctx:
        report = lib.check(full=args.full, verify_db=True)
        lines = report.lines()
        print("\n".join(lines) if lines else "library is consistent: database and indices agree")
        if lines and not report.saved:
            print("read-only library: the repairs above were made in memory only")
        from .core.catalog import Catalog

        counts = Catalog(lib.store).status_counts()
        print(f"images: {counts.get('ok', 0)} indexed, {counts.get('error', 0)} with errors")
        what = "all vectors" if args.full else "a sample of vectors"
        print(f"database: {'integrity_check' if args.full else 'quick_check'} ok; {what} compared with the indices "
              f"({sum(report.compared.values())} in all)")
        for mode in ("image", "caption", "fused"):
            print(f"index {mode}: {len(lib.index(mode))} vectors")
        lib.close()
    return EXIT_FAILURES if report.refused else EXIT_OK


def cmd_whiten(args) -> int:
    """Fit the library's whitening on its own image vectors (learned whitening with --gt)."""
    lib = open_library(args, must_exist=True)
    labels = None
    if args.gt:
        from .core.evaluate import image_labels

        labels = image_labels(lib, args.gt)
    with lib.writing("fitting whitening", wait=args.wait, on_wait=lambda m: print(m, file=sys.stderr, flush=True)):
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


def cmd_demo_gallery(args) -> int:
    from .core.samples import make_sample_gallery

    out = make_sample_gallery(args.out)
    print(out)
    return EXIT_OK


def cmd_gui(args) -> int:
    from .ui.app import run_app

    return run_app(settings_from(args), gallery=args.gallery, demo=args.demo)


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explorer", description="Retrieval Explorer: image-only vs caption-fused retrieval on your own images.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks) to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list model roles, chosen backends, where weights were found, what is missing")
    add_model_options(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("action", nargs="?", choices=["fetch"], help="fetch: download a real model into models/ (only on request)")
    s.add_argument("spec", nargs="?", metavar="SPEC", help="what to fetch: hf:ORG/NAME, hf-detr:..., hf-owlvit:..., open_clip:ORG/NAME")
    s.add_argument("--endpoint", metavar="URL", help="model hub URL (default $HF_ENDPOINT or the Hugging Face hub)")
    s.add_argument("--revision", default="main", help="branch, tag or commit to fetch (default main)")
    s.add_argument("--dest", metavar="DIR", help="folder to put the files in (default models/ORG--NAME)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("index", help="index gallery folders (incremental, resumable)")
    s.add_argument("folders", nargs="+", metavar="FOLDER")
    add_library_option(s)
    add_model_options(s)
    s.add_argument("--captions", metavar="FILE", help="user captions: JSON {path: caption} or COCO captions")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--progress", action="store_true", help="print progress lines even when stderr is not a terminal")
    s.add_argument("--wait", action="store_true", help="if another process is writing the library, wait for it instead of failing")
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

    s = sub.add_parser("check", help="check and repair the library (database vs indices)")
    add_library_option(s)
    add_model_options(s)
    s.add_argument("--full", action="store_true", help="SQLite integrity_check and compare every index vector (slower)")
    s.add_argument("--wait", action="store_true", help="if another process is writing the library, wait for it")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("whiten", help="fit the whitening of image vectors on this library (PCA; learned whitening with --gt)")
    add_library_option(s)
    add_model_options(s)
    s.add_argument("--gt", metavar="SPEC", help="ground-truth labels for supervised learned whitening (folders:DIR, csv:FILE, ...)")
    s.add_argument("--wait", action="store_true", help="if another process is writing the library, wait for it")
    s.set_defaults(func=cmd_whiten)

    s = sub.add_parser("sample-gallery", help="write the sample gallery (photos shipped by scikit-image) to a folder")
    s.add_argument("out", nargs="?", default="sample-gallery")
    s.set_defaults(func=cmd_demo_gallery)

    s = sub.add_parser("gui", help="open the desktop app")
    add_library_option(s)
    add_model_options(s)
    s.add_argument("--gallery", metavar="FOLDER", help="gallery folder to open")
    s.add_argument("--demo", action="store_true", help="open the sample gallery, indexing it first if needed")
    s.set_defaults(func=cmd_gui)

    from . import cli_search

    cli_search.register(sub, add_library_option, add_model_options)
    from . import cli_views

    cli_views.register(sub, add_library_option, add_model_options)
    return p


def storage_error(e: BaseException) -> str | None:
    """One line for a storage failure (full disk, read-only media, damaged database), else None."""
    import errno

    from .core.store import database_error_line

    first = database_error_line(e)
    if first is not None:
        if "malformed" in first or "not a database" in first:
            return f"the library database is damaged ({first}); run `explorer check --full`, restore library.sqlite from a backup"
        if "full" in first or "readonly" in first or "disk I/O" in first or "unable to open" in first:
            return f"cannot write the library database ({first}); nothing was lost, the last committed state is kept"
        return None
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ExplorerError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - storage trouble (full disk, damaged database) gets one line too
        msg = storage_error(e)
        if msg is None or args.verbose:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
