"""Settings: which backend serves each model role, and where the library lives.

Precedence, lowest first: built-in defaults, the config file, environment variables, CLI
flags. The config file is JSON at ``$EXPLORER_CONFIG`` or ``~/.config/retrieval-explorer/config.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .captions.sources import DEFAULT_ENABLED, parse_sources
from .errors import ExplorerError

DEFAULT_SPECS = {
    "image": "effnet-lite0",
    "text": "minilm",
    "captioner": "structured",
    "detector": "ssd-mobilenet",
}

ENV_VARS = {
    "image": "EXPLORER_IMAGE_ENCODER",
    "text": "EXPLORER_TEXT_ENCODER",
    "captioner": "EXPLORER_CAPTIONER",
    "detector": "EXPLORER_DETECTOR",
    "library": "EXPLORER_LIBRARY",
    "caption_sources": "EXPLORER_CAPTION_SOURCES",
    "engine": "EXPLORER_ENGINE",
    "engine_precision": "EXPLORER_ENGINE_PRECISION",
    "vector_store": "EXPLORER_VECTOR_STORE",
    "vector_store_uri": "EXPLORER_VECTOR_STORE_URI",
    "search_vectors": "EXPLORER_SEARCH_VECTORS",
}


def default_library() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "retrieval-explorer" / "library"


def config_path() -> Path:
    env = os.environ.get("EXPLORER_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "retrieval-explorer" / "config.json"


@dataclass(frozen=True)
class Settings:
    image: str = DEFAULT_SPECS["image"]
    text: str = DEFAULT_SPECS["text"]
    captioner: str = DEFAULT_SPECS["captioner"]
    detector: str = DEFAULT_SPECS["detector"]
    #: Open-vocabulary detectors (OWL-ViT) search for these labels.
    detector_labels: tuple[str, ...] = ("person", "bag", "shoe", "dress", "shirt", "car", "dog", "cat", "cup")
    detector_threshold: float = 0.4
    library: str = field(default_factory=lambda: str(default_library()))
    device: str = "auto"
    #: Switchable caption sources that are on (``captions.sources.SWITCHABLE``): embedded photo
    #: metadata, file-name words, folder-name words, OCR. Changing them re-embeds captions only.
    caption_sources: tuple[str, ...] = DEFAULT_ENABLED
    #: Inference engine of the offline default models: auto, torch, onnx, openvino (see models/engines.py).
    engine: str = "auto"
    #: Precision of the OpenVINO engine: f32 (default) or int8 (NNCF-quantized image encoder and
    #: detector, see models/quantize.py). int8 changes their model ids: images are re-embedded once.
    engine_precision: str = "f32"
    #: Vector-store backend of the library's indices (see ``explorer.core.vectorstore.BACKENDS``)
    #: and, for ``milvus``, a server address (empty: embedded Milvus Lite in the library folder).
    vector_store: str = "hnswlib"
    vector_store_uri: str = ""
    #: EfficientNet descriptor (``explorer.core.models.effnet.Pooling``): input geometry
    #: (whole | stretch | crop), scales of the multi-scale GeM (1 = 224 px), GeM power.
    #: Changing any of them changes the image model id: images are re-embedded once.
    image_preprocess: str = "whole"
    image_scales: tuple[float, ...] = (1.0, 1.4142)
    gem_p: float = 3.0
    #: Learned whitening of image vectors (``explorer.core.whitening``): pca | none; output
    #: dimension (0 = keep all); shrinkage of the covariance towards its mean eigenvalue.
    whitening: str = "none"
    whitening_dim: int = 0
    whitening_shrinkage: float = 0.1
    #: How the searcher's in-memory gallery keeps its vectors (``explorer.core.gallery_arrays``):
    #: float32 (exact, search equals evaluation) or float16 (half the memory, scores within 2**-11).
    search_vectors: str = "float32"

    def spec(self, role: str) -> str:
        return getattr(self, role)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detector_labels"] = list(self.detector_labels)
        d["caption_sources"] = list(self.caption_sources)
        d["image_scales"] = list(self.image_scales)
        return d

    @classmethod
    def load(cls, overrides: dict | None = None) -> "Settings":
        """Defaults, then the config file, then environment, then ``overrides`` (CLI flags)."""
        values: dict = {}
        path = config_path()
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ExplorerError(f"config file {path} is not valid JSON: {e}") from None
            known = {f.name for f in fields(cls)}
            unknown = set(data) - known
            if unknown:
                raise ExplorerError(f"config file {path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
            values.update(data)
        for key, var in ENV_VARS.items():
            if os.environ.get(var):
                values[key] = os.environ[var]
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        if "detector_labels" in values and isinstance(values["detector_labels"], str):
            values["detector_labels"] = tuple(s.strip() for s in values["detector_labels"].split(",") if s.strip())
        elif "detector_labels" in values:
            values["detector_labels"] = tuple(values["detector_labels"])
        if "caption_sources" in values:
            values["caption_sources"] = parse_sources(values["caption_sources"])
        if "image_scales" in values:
            raw = values["image_scales"]
            try:
                parts = raw.split(",") if isinstance(raw, str) else list(raw)
                values["image_scales"] = tuple(float(x) for x in parts if str(x).strip())
            except (TypeError, ValueError):
                raise ExplorerError(f"image_scales must be numbers like 0.7071,1,1.4142, got {raw!r}") from None
        return replace(cls(), **values)

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, path)
        return path
