"""Inference engines for the offline default models: torch eager, ONNX Runtime, OpenVINO.

This module owns the list of engine names, which engine a setting resolves to, the export
cache and the thin runners that execute an exported graph. It promises:

- **Export once.** A torch module is exported to ONNX (``torch.onnx.export``, opset 17, the
  TorchScript exporter, dynamic axes as the caller names them) into a cache folder outside
  the repository (``$EXPLORER_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/retrieval-explorer/onnx``,
  else ``~/.cache/retrieval-explorer/onnx``). The file name carries the source weights' hash,
  the torch version and ``EXPORTER_VERSION``, so new weights or a new exporter never reuse a
  stale file. Files are written to a temporary name and renamed, so a crash never leaves a
  half-written model that a later run would load; an unreadable cached file is re-exported.
- **Same vectors.** Engines run the same weights in float32 (OpenVINO is told f32 precision,
  as it would otherwise pick bf16 on CPUs that have it), so vectors agree with torch to
  cosine >= 0.999 (tested on real photos) and model ids do not change with the engine.
- **Few first-seen shapes.** OpenVINO's dynamic-shape path pays a one-off cost for every input
  shape it has not run yet; an ``OvRunner`` created with ``static_shapes`` also compiles static
  models for the shapes it is fed most (``STATIC_PROMOTE_AFTER`` uses, at most ``STATIC_MAX``,
  least recently used evicted), from whatever ``ov.Model`` it was given (any precision).
- **Threads that do not fight.** Each runner uses at most ``engine_threads()`` intra-op
  threads and never spins idle threads, so decode threads of the pipeline get the cores
  while a model waits for its next batch.

Engine names (``Settings.engine``, ``--engine``): ``auto`` (default: OpenVINO when the
optional ``fast`` extra is installed, else ONNX Runtime, else torch), ``torch``, ``onnx``,
``openvino``. The TF-graph detector has no ONNX path here (that needs TensorFlow to
convert): it runs in OpenVINO when the engine resolves to OpenVINO and in OpenCV's dnn
module otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelUnavailable

ENGINES = ("auto", "torch", "onnx", "openvino")
#: Bump when the export code changes in a way that changes the exported graphs.
EXPORTER_VERSION = "1"
OPSET = 17
#: OpenVINO runs in float32 so that its vectors match torch (bf16 gave cosine 0.9996).
OV_PRECISION = "f32"

_warned: set[str] = set()
_lock = threading.Lock()


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check_engine_name(name: str) -> str:
    n = (name or "auto").strip().lower()
    if n not in ENGINES:
        raise ModelUnavailable(f"unknown engine '{name}'; choose one of: {', '.join(ENGINES)}")
    return n


def resolve(requested: str) -> str:
    """The engine that runs the exportable encoders: ``torch``, ``onnx`` or ``openvino``.

    ``auto`` prefers OpenVINO, then ONNX Runtime, then torch (saying so once on stderr); an
    engine asked for by name that is not installed is a one-line ``ModelUnavailable``.
    """
    n = check_engine_name(requested)
    if n == "auto":
        if has_openvino():
            return "openvino"
        if has_onnxruntime():
            return "onnx"
        _warn_once("auto", "note: neither onnxruntime nor openvino is installed; models run in torch (slower): pip install onnxruntime==1.32.0")
        return "torch"
    if n == "onnx" and not has_onnxruntime():
        raise ModelUnavailable("engine 'onnx' needs onnxruntime: pip install onnxruntime==1.32.0 (or use --engine torch)")
    if n == "openvino" and not has_openvino():
        raise ModelUnavailable("engine 'openvino' needs openvino: pip install 'retrieval-explorer[fast]' or openvino==2026.4.1 (or use --engine onnx)")
    return n


def resolve_detector(requested: str) -> str:
    """The engine of the TF-graph SSD detector: ``openvino`` or ``cv2`` (OpenCV dnn)."""
    return "openvino" if resolve(requested) == "openvino" else "cv2"


def fall_back_or_raise(requested: str, error: Exception) -> None:
    """After an export or load failure: with ``auto``, say so in one line and let the caller use torch; else re-raise."""
    if check_engine_name(requested) != "auto":
        raise error
    _warn_once(str(error), f"note: {error}; running this model in torch instead")


def _warn_once(key: str, line: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    print(line, file=sys.stderr)


_thread_cap: int | None = None


def set_thread_cap(n: int | None) -> int | None:
    """Cap the intra-op threads of runners created from now on (the window leaves a core to the GUI); returns the old cap."""
    global _thread_cap
    old, _thread_cap = _thread_cap, (max(1, int(n)) if n else None)
    return old


def engine_threads() -> int:
    """Intra-op threads for an engine: ``$EXPLORER_ENGINE_THREADS``, else the cores this process may use, within the cap."""
    env = os.environ.get("EXPLORER_ENGINE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        n = int(env)
    else:
        try:
            n = max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            n = max(1, os.cpu_count() or 1)
    return min(n, _thread_cap) if _thread_cap else n


# ---------------------------------------------------------------------------------------
# the export cache


def cache_dir() -> Path:
    env = os.environ.get("EXPLORER_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retrieval-explorer" / "onnx"


_digests: dict[tuple, str] = {}


def weights_digest(paths: Sequence[str | os.PathLike]) -> str:
    """A content hash of the weight files (folders: every file below, by relative name); memoised per size+mtime."""
    files: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [(str(f.relative_to(p)), f) for f in sorted(p.rglob("*")) if f.is_file()]
        else:
            files.append((p.name, p))
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for _, f in files)
    with _lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.blake2b(digest_size=12)
    for name, f in files:
        h.update(name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    d = h.hexdigest()
    with _lock:
        _digests[key] = d
    return d


def cached_file(name: str, digest: str, suffix: str = ".onnx") -> Path:
    import torch

    tv = torch.__version__.split("+")[0]
    return cache_dir() / f"{name}-{digest}-torch{tv}-x{EXPORTER_VERSION}{suffix}"


#: seconds spent exporting in this process, per cached file name (first-run cost, for the bench)
export_seconds: dict[str, float] = {}


def export_onnx(
    name: str,
    digest: str,
    build: Callable[[], tuple],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict,
) -> Path:
    """The cached ONNX file for ``name``; exports it first when missing.

    ``build()`` returns ``(module, example_args)``; it is only called on a cache miss, so a
    warm start never builds the torch module for export.
    """
    path = cached_file(name, digest)
    if path.is_file() and path.stat().st_size > 0:
        return path
    import torch

    t = time.perf_counter()
    module, args = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about constants; agreement is tested instead
            torch.onnx.export(
                module.eval(), args, str(tmp), input_names=list(input_names), output_names=list(output_names),
                dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - any export failure is one clear line
        tmp.unlink(missing_ok=True)
        raise ModelUnavailable(f"cannot export {name} to ONNX: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''} (use --engine torch)") from None
    export_seconds[path.name] = time.perf_counter() - t
    return path


def error_line(e: BaseException) -> str:
    """An engine error in one line: the first line of its message (at most 200 characters), else its type's name."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def write_ir(xml: Path, make: Callable[[], object]) -> None:
    """Save the OpenVINO model that ``make()`` returns as float32 IR at ``xml``, atomically.

    It is written under a temporary name and renamed, ``.bin`` first and then ``.xml``, so a crash
    never leaves a half-written model that a later run would load (callers test for the ``.xml``
    and its ``.bin``). On any error the temporary files are removed and the error re-raised.
    """
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.{threading.get_ident()}.tmp.xml")
    try:
        ov.save_model(make(), str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# runners


class OrtRunner:
    """An ONNX Runtime CPU session: ``run({name: array}) -> [arrays]`` in ``output_names`` order."""

    engine = "onnx"

    def __init__(self, path: Path, output_names: Sequence[str] | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = engine_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle engine threads must not spin: the decode threads need those cores between batches
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.output_names = list(output_names) if output_names else [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)  # thread-safe in ONNX Runtime


_ov_core = None


def ov_core():
    """One OpenVINO core per process, with compiled-model caching in the cache folder."""
    global _ov_core
    with _lock:
        if _ov_core is None:
            import openvino as ov

            core = ov.Core()
            d = cache_dir() / "openvino-blobs"
            try:
                d.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(d)})
            except Exception:  # noqa: BLE001 - caching is an optimisation only
                pass
            _ov_core = core
        return _ov_core


#: Static per-shape models (``OvRunner(static_shapes=...)``): an input shape is compiled into
#: its own static model once it has been fed this many times (measured: a static call is about
#: 1-3.6 ms cheaper than the same call on the dynamic model, a compile costs 80 ms with a warm
#: ``CACHE_DIR`` and 240 ms cold, so a rare shape stays on the dynamic model).
STATIC_PROMOTE_AFTER = 32
#: At most this many static models per runner, least recently used evicted first: each holds
#: its own compiled graph, weights and buffers (measured: 54 EfficientNet-Lite0 static models
#: added 2.4 GB of peak RSS, about 44 MiB each), and photos of varied aspect give far more
#: shapes than any small cache holds, so only the few most used shapes are kept.
STATIC_MAX = 8


class OvRunner:
    """An OpenVINO CPU compiled model (f32, ``engine_threads()`` threads), same interface as ``OrtRunner``.

    The model may have dynamic input dimensions. With ``static_shapes`` > 0 the runner also
    keeps up to that many *static* compiled models, one per input shape that has been fed at
    least ``promote_after`` times (an LRU cache; an evicted shape starts counting again), and
    runs every other shape on the dynamic model: OpenVINO's dynamic path re-plans its kernels
    per call, a static model does not. Any ``ov.Model`` (f32 or quantized) or model file works.
    One call runs at a time (one core budget; callers in several threads queue on a lock); the
    call that promotes a shape compiles it first (80-240 ms, once per shape while it is kept).
    """

    engine = "openvino"

    def __init__(self, model, output_names: Sequence[str] | None = None, static_shapes: int = 0,
                 promote_after: int | None = None):
        from collections import OrderedDict

        core = ov_core()
        if isinstance(model, (str, Path)):
            model = core.read_model(str(model))
        self._config = {
            "INFERENCE_NUM_THREADS": engine_threads(),
            "INFERENCE_PRECISION_HINT": OV_PRECISION,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(model, "CPU", self._config)
        self._names = list(output_names) if output_names else None
        self.outputs = self._outputs_of(self.compiled)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, one caller at a time
        self.static_max = max(0, int(static_shapes))
        self.promote_after = max(1, int(STATIC_PROMOTE_AFTER if promote_after is None else promote_after))
        self._model = model if self.static_max else None  # kept only to reshape into static copies
        self._static: OrderedDict = OrderedDict()  # shape key -> (request, outputs), most recent last
        self._uses: dict = {}
        #: static models compiled by this runner and seconds spent compiling them (for the bench)
        self.static_compiled = 0
        self.static_compile_s = 0.0

    def _outputs_of(self, compiled) -> list:
        outs = compiled.outputs
        if not self._names:
            return list(outs)
        by_name = {n: o for o in outs for n in o.get_names()}
        return [by_name[n] for n in self._names]

    def static_shapes(self) -> list[tuple]:
        """The input shapes that have a static model now, least recently used first."""
        with self._lock:
            return list(self._static)

    def _request_for(self, feeds: dict[str, np.ndarray]):
        """The (request, outputs) to run ``feeds`` on: a static model for a frequent shape, else the dynamic one."""
        if not self.static_max:
            return self._request, self.outputs
        key = tuple((k, tuple(np.shape(v))) for k, v in sorted(feeds.items()))
        hit = self._static.get(key)
        if hit is not None:
            self._static.move_to_end(key)
            return hit
        if len(self._uses) > 4096:  # a stream of ever-new shapes: forget the counts, keep memory bounded
            self._uses.clear()
        n = self._uses[key] = self._uses.get(key, 0) + 1
        if n < self.promote_after:
            return self._request, self.outputs
        t = time.perf_counter()
        try:
            m = self._model.clone()
            m.reshape({k: list(shape) for k, shape in key})
            compiled = ov_core().compile_model(m, "CPU", self._config)
        except Exception:  # noqa: BLE001 - a shape that will not compile statically stays dynamic
            self._uses[key] = -(1 << 30)
            return self._request, self.outputs
        self.static_compile_s += time.perf_counter() - t
        self.static_compiled += 1
        while len(self._static) >= self.static_max:
            old, _ = self._static.popitem(last=False)
            self._uses.pop(old, None)
        self._uses.pop(key, None)
        hit = self._static[key] = (compiled.create_infer_request(), self._outputs_of(compiled))
        return hit

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            request, outputs = self._request_for(feeds)
            res = request.infer(feeds)
            return [np.array(res[o], copy=True) for o in outputs]


def load_exported(engine: str, name: str, digest: str, build: Callable[[], tuple], input_names: Sequence[str],
                  output_names: Sequence[str], dynamic_axes: dict, static_shapes: int = 0):
    """Export (once) and open a runner; an unreadable cached file is re-exported once.

    ``static_shapes``: for OpenVINO, how many static per-shape models the runner may keep (``OvRunner``).
    """
    for attempt in (0, 1):
        path = export_onnx(name, digest, build, input_names, output_names, dynamic_axes)
        try:
            return OvRunner(path, output_names, static_shapes) if engine == "openvino" else OrtRunner(path, output_names)
        except Exception as e:  # noqa: BLE001
            path.unlink(missing_ok=True)
            if attempt:
                raise ModelUnavailable(f"cannot load the exported model {path.name} in {engine}: {error_line(e)} (use --engine torch)") from None
