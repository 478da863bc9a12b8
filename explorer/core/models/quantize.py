"""int8 precision of the OpenVINO engine: post-training quantization with NNCF, cached.

This module owns the list of engine precisions, the calibration set, the int8 model-id suffix
and the quantized-model cache. It promises:

- **Precision is data.** ``PRECISIONS`` (``Settings.engine_precision``, ``--precision``):
  ``f32`` (default: the exported models run in float32 and agree with torch) or ``int8``
  (the image encoder's backbone and the SSD detector are quantized to int8 by NNCF and run in
  OpenVINO). int8 needs the OpenVINO engine and the ``nncf`` package (both in the ``fast``
  extra); asking for it without them is a one-line ``ModelUnavailable``, never a silent f32.
- **Model ids record int8.** int8 changes the vectors (cosine to f32 well under 0.999, see the
  README), so ``model_id(base, precision)`` appends ``INT8_SUFFIX`` for int8: a library indexed
  in f32 re-embeds its images (and re-detects, hence re-captions) once on a switch and never
  mixes vectors of the two precisions. The text encoder stays in f32, so person-written
  captions keep their vectors; generated captions are re-made (the detector changed) and re-embedded.
- **Quantize once.** A quantized model is cached in the engine cache (``engines.cache_dir()``)
  as OpenVINO IR whose file name carries the source model's weights hash, the NNCF and OpenVINO
  versions and ``CALIBRATION_VERSION`` with the calibration size; it is written under a temporary name and
  renamed (``.bin`` first, then ``.xml``), so a crash never leaves a half-written model. A
  cached file that OpenVINO cannot read or compile is removed and quantized again, once.
- **Calibration data ships with the app's dependencies:** ``calibration_images`` are the
  scikit-image photos of the sample gallery (``explorer.core.samples``), each with its crop,
  mirror and dimmed variants and its two halves; never an evaluation or dev set.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelUnavailable

PRECISIONS = ("f32", "int8")
INT8_SUFFIX = "+int8"
#: Bump when ``calibration_images`` or the quantization call changes (2: the SSD's box decoding stays f32).
CALIBRATION_VERSION = "2"
#: At most this many calibration samples per model (NNCF's ``subset_size``).
CALIBRATION_SIZE = 100
NNCF_PIN = "nncf==3.4.0"

#: seconds spent quantizing in this process, per cached file name (first-run cost, for the bench)
quantize_seconds: dict[str, float] = {}
_lock = threading.Lock()


def has_nncf() -> bool:
    return importlib.util.find_spec("nncf") is not None


def check_precision(name: str) -> str:
    n = (name or "f32").strip().lower()
    if n not in PRECISIONS:
        raise ModelUnavailable(f"unknown engine precision '{name}'; choose one of: {', '.join(PRECISIONS)}")
    return n


def model_id(base: str, precision: str) -> str:
    """The model id of a model whose base id is ``base``, run at ``precision`` (the one home of the suffix)."""
    return base + INT8_SUFFIX if check_precision(precision) == "int8" else base


def require_int8(engine: str, what: str) -> None:
    """Raise a one-line ``ModelUnavailable`` unless ``engine`` (resolved) can run ``what`` in int8."""
    if engine != "openvino":
        raise ModelUnavailable(f"precision int8 needs the OpenVINO engine, but {what} would run in '{engine}': "
                               "pip install 'retrieval-explorer[fast]' and use --engine openvino (or --precision f32)")
    if not has_nncf():
        raise ModelUnavailable(f"precision int8 needs nncf: pip install 'retrieval-explorer[fast]' or {NNCF_PIN} (or use --precision f32)")


def calibration_images():
    """The calibration photos (PIL, RGB): every scikit-image photo of the sample gallery, its
    crop / mirror / dimmed variants and its left and right halves, in a fixed order."""
    from PIL import Image

    from ..samples import SOURCES, skimage_data_dir, variants

    out = []
    src = skimage_data_dir()
    for files in SOURCES.values():
        for name in files:
            with Image.open(src / name) as im:
                img = im.convert("RGB")
            w, h = img.size
            out += [img, *variants(img).values(), img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))]
    return out


def cached_path(name: str, digest: str) -> Path:
    """Where the int8 IR of ``name`` is cached: named by the source weights' hash, the NNCF and
    OpenVINO versions (the IR is converted and saved by OpenVINO), the calibration version and size."""
    import nncf
    import openvino as ov

    from . import engines

    ovv = ov.__version__.split("-")[0]
    return engines.cache_dir() / f"{name}-int8-{digest}-nncf{nncf.__version__}-ov{ovv}-cal{CALIBRATION_VERSION}x{CALIBRATION_SIZE}.xml"


def quantized_model(name: str, digest: str, source: Callable[[], object], samples: Callable[[], Sequence[np.ndarray]],
                    keep_f32: Sequence[str] = ()) -> Path:
    """The cached int8 IR for ``name`` (``digest``: the source weights' hash); quantizes it first when missing.

    ``source()`` returns the f32 ``openvino.Model`` (or a path to one) and ``samples()`` the
    calibration inputs (one array per inference); both are only called on a cache miss.
    ``keep_f32``: regular expressions of operation names NNCF must leave in float32 (arithmetic
    that is no network layer, e.g. the SSD's box decoding, whose 8-bit outputs would move boxes).
    """
    import nncf

    from . import engines

    xml = cached_path(name, digest)
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    with _lock:  # two threads loading the same model quantize it once
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            return xml
        t = time.perf_counter()

        def quantized():
            model = source()
            if isinstance(model, (str, Path)):
                model = engines.ov_core().read_model(str(model))
            data = list(samples())[:CALIBRATION_SIZE]
            nncf.set_log_level(40)  # errors only
            print(f"note: quantizing {name} to int8 once ({len(data)} calibration photos)", file=sys.stderr)
            with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars never reach stdout (--json)
                ignored = nncf.IgnoredScope(patterns=list(keep_f32), validate=False) if keep_f32 else None
                return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), ignored_scope=ignored)

        try:
            engines.write_ir(xml, quantized)
        except Exception as e:  # noqa: BLE001 - any quantization failure is one clear line
            raise ModelUnavailable(f"cannot quantize {name} to int8: {engines.error_line(e)} (use --precision f32)") from None
        quantize_seconds[xml.name] = time.perf_counter() - t
        return xml


def int8_runner(name: str, digest: str, source: Callable[[], object], samples: Callable[[], Sequence[np.ndarray]],
                output_names: Sequence[str] | None = None, keep_f32: Sequence[str] = (), static_shapes: int = 0):
    """An ``engines.OvRunner`` on the cached int8 model (``static_shapes`` as for ``OvRunner``); a cached file
    that does not load is quantized again once."""
    from . import engines

    for attempt in (0, 1):
        xml = quantized_model(name, digest, source, samples, keep_f32)
        try:
            return engines.OvRunner(xml, output_names, static_shapes)
        except Exception as e:  # noqa: BLE001
            xml.unlink(missing_ok=True)
            xml.with_suffix(".bin").unlink(missing_ok=True)
            if attempt:
                raise ModelUnavailable(f"cannot load the int8 model {xml.name}: {engines.error_line(e)} (use --precision f32)") from None
