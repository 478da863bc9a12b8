"""What every ``explorer`` subcommand shares: the model and library options, turning them into
:class:`Settings`, opening a library, the exit codes, the progress bar, and the one rule for
errors (an ``ExplorerError`` or a storage failure prints one line and exits with status 2).

Imports nothing from its parent package or its siblings, so command modules can all import it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..core.config import Settings
from ..core.errors import ExplorerError
from ..core.models.engines import ENGINES
from ..core.models.quantize import PRECISIONS
from ..core.models.registry import CAPTIONER, DETECTOR, IMAGE_ENCODER, TEXT_ENCODER

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

#: the option (argparse ``dest``) that names each model role's backend
ROLE_OPTIONS = {IMAGE_ENCODER: "image_encoder", TEXT_ENCODER: "text_encoder", CAPTIONER: "captioner", DETECTOR: "detector"}


# ---------------------------------------------------------------------------------------
# shared options


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (spec strings; see `explorer models`)")
    g.add_argument("--image-encoder", dest=ROLE_OPTIONS[IMAGE_ENCODER], metavar="SPEC", help="e.g. effnet-lite0, open_clip:ViT-B-32@FILE")
    g.add_argument("--text-encoder", dest=ROLE_OPTIONS[TEXT_ENCODER], metavar="SPEC", help="e.g. minilm, open_clip:ViT-B-32@FILE")
    g.add_argument("--captioner", dest=ROLE_OPTIONS[CAPTIONER], metavar="SPEC",
                   help="e.g. structured, hf:Salesforce/blip-image-captioning-base")
    g.add_argument("--detector", dest=ROLE_OPTIONS[DETECTOR], metavar="SPEC", help="e.g. ssd-mobilenet, hf-detr:facebook/detr-resnet-50")
    g.add_argument("--detector-labels", metavar="L1,L2", help="labels for open-vocabulary detectors")
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda")
    g.add_argument("--caption-sources", dest="caption_sources", metavar="S1,S2",
                   help="caption sources to use besides the captioner: metadata, filename, folder, ocr, all or none "
                        "(default: metadata,filename); a change re-embeds captions only")
    g.add_argument("--engine", choices=ENGINES,
                   help="inference engine of the offline default models (default auto: openvino if installed, else onnx)")
    g.add_argument("--precision", dest="engine_precision", choices=PRECISIONS,
                   help="precision of the OpenVINO engine: f32 (default) or int8 (quantized image encoder and detector; "
                        "needs nncf; a switch re-embeds images once)")
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


def add_library_and_model_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that opens a library."""
    add_library_option(p)
    add_model_options(p)


def settings_from(args) -> Settings:
    keys = {**ROLE_OPTIONS, "detector_labels": "detector_labels", "device": "device", "library": "library",
            "caption_sources": "caption_sources", "engine": "engine", "engine_precision": "engine_precision", "vector_store": "vector_store",
            "vector_store_uri": "vector_store_uri",
            **{k: k for k in ("image_preprocess", "image_scales", "gem_p", "whitening", "whitening_dim", "whitening_shrinkage")}}
    return Settings.load({k: getattr(args, a, None) for k, a in keys.items()})


def open_library(args, settings: Settings | None = None, must_exist: bool = False):
    from ..core.library import Library

    settings = settings or settings_from(args)
    path = os.path.expanduser(settings.library)
    if must_exist and not os.path.isfile(os.path.join(path, "library.sqlite")):
        raise ExplorerError(f"no library at {path}: index a folder first with `explorer index FOLDER --library {path}`")
    return Library(path, settings)


def say_waiting(message: str) -> None:
    """``on_wait`` of ``Library.writing``: another process holds the writer lock."""
    print(message, file=sys.stderr, flush=True)


def percent_progress(quiet: bool):
    """A ``progress(message, fraction)`` callback printing ``[ 42.0%] message`` lines on stderr."""

    def progress(msg, frac):
        if not quiet:
            print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr)

    return progress


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
# errors and exit codes


def storage_error(e: BaseException) -> str | None:
    """One line for a storage failure (full disk, read-only media, damaged database), else None."""
    import errno

    from ..core.store import database_error_line

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


def run_command(args) -> int:
    """Run the parsed command ``args.func(args)``: user errors and storage failures print one line
    (``error: ...``) and give :data:`EXIT_USAGE`; Ctrl-C gives :data:`EXIT_CANCELLED`; with
    ``--verbose`` they raise (traceback)."""
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
