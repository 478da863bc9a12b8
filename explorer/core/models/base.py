"""One small interface per model role.

The four roles are image encoder, text encoder, captioner and detector. Every method is a
batch method: pipelines call them with lists and the backends decide how to batch on the
device. Encoders return L2-normalised float32 arrays of shape (n, dim) and carry a stable
``model_id`` so that stored vectors can always be tied to the model that made them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One detected object. The box is in pixels of the (EXIF-oriented) image: x1, y1, x2, y2."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4), "box": [round(float(v), 1) for v in self.box]}


@dataclass(frozen=True)
class Caption:
    """A caption and where it came from.

    ``source`` is one of ``generated``, ``sidecar``, ``captions-file``, ``user-edited``.
    ``confidence`` in [0, 1] says how much the caption can be trusted; caption fusion uses it
    so that a vague generated caption cannot drag retrieval below image-only.
    """

    text: str
    source: str
    model_id: str
    confidence: float = 1.0


@dataclass(frozen=True)
class ClassScore:
    label: str
    score: float


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ModelBackend(ABC):
    """Common facts every backend reports."""

    #: Stable id, e.g. ``effnet-lite0-gem@imagenet`` or ``open_clip:ViT-B-32@laion2b``.
    model_id: str = ""
    #: Where the weights came from (a path), for ``explorer models``.
    weights_path: str = ""


class ImageEncoder(ModelBackend):
    dim: int = 0
    #: True when ``embed_images`` shares a space with a TextEncoder of the same model (CLIP).
    shared_space_id: str | None = None

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""


class TextEncoder(ModelBackend):
    dim: int = 0
    shared_space_id: str | None = None

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""


class Captioner(ModelBackend):
    @abstractmethod
    def caption(self, images: Sequence[Image.Image], detections: Sequence[Sequence[Detection]] | None = None) -> list[Caption]:
        """One caption per image. Detections, when the pipeline already has them, may be reused."""


class Detector(ModelBackend):
    @abstractmethod
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Detections per image, boxes in pixel coordinates of that image."""


@dataclass
class ModelStack:
    """The four roles, resolved. ``image`` and ``text`` may be one shared-space model (CLIP)."""

    image: ImageEncoder
    text: TextEncoder
    captioner: Captioner
    detector: Detector
    extra: dict = field(default_factory=dict)

    @property
    def shared_space(self) -> bool:
        return self.image.shared_space_id is not None and self.image.shared_space_id == self.text.shared_space_id
