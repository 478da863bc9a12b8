"""Hugging Face object detectors, loaded only from local files.

``hf-detr:REF``
    a closed-vocabulary detector (DETR, Conditional/Deformable DETR, RT-DETR, YOLOS...) through
    ``AutoModelForObjectDetection``; label names come from the model's ``config.id2label``.
``hf-owlvit:REF``
    an open-vocabulary OWL-ViT (or OWLv2) detector through ``AutoModelForZeroShotObjectDetection``;
    it looks for ``settings.detector_labels`` (queried as "a photo of a LABEL").

REF is a Hugging Face repo id or folder, resolved like the ``hf`` captioner's (``models/`` or the
local Hugging Face cache; nothing is downloaded). Scores below ``settings.detector_threshold`` are
dropped, boxes are clipped to the image, in its pixels, and overlapping boxes of one label are
reduced by non-maximum suppression (IoU 0.5).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..config import Settings
from ..errors import ModelUnavailable
from .base import Detection, Detector
from .hf_captioner import model_type_of, probe_model_dir, resolve_model_dir, rgb, short_error

NMS_IOU = 0.5
MAX_DETECTIONS = 100
MIN_BOX_SIDE = 1.0  # pixels; thinner boxes (after clipping) are noise
OWL_PROMPT = "a photo of a {}"
OWL_TYPES = ("owlvit", "owlv2")


def _nms_and_convert(boxes, scores, labels, names, width: int, height: int) -> list[Detection]:
    """Clip to the image, drop boxes thinner than a pixel, per-label NMS, best first."""
    import torch
    from torchvision.ops import batched_nms

    if boxes.numel() == 0:
        return []
    boxes = boxes.float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    scores = scores.float()
    ok = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE) & torch.isfinite(scores)
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if boxes.numel() == 0:
        return []
    keep = batched_nms(boxes, scores, labels, NMS_IOU)[:MAX_DETECTIONS]  # sorted by score, descending
    out = []
    for i in keep.tolist():
        label = names(int(labels[i]))
        out.append(Detection(label=label, score=float(scores[i]), box=tuple(float(v) for v in boxes[i].tolist())))
    return out


class _HFDetectorBase(Detector):
    batch_size = 4

    def __init__(self, device, threshold: float):
        self.device = device
        self.threshold = float(threshold)
        self._lock = threading.Lock()
        if device.type == "cuda":
            self.batch_size = 16

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        import torch

        results: list[list[Detection]] = []
        if len(images) == 0:
            return results
        with self._lock, torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                results.extend(self._detect_batch(rgb(images[i:i + self.batch_size])))
        return results

    def _detect_batch(self, batch: list[Image.Image]) -> list[list[Detection]]:
        raise NotImplementedError


class HFDetrDetector(_HFDetectorBase):
    def __init__(self, name: str, folder: Path, device, threshold: float):
        super().__init__(device, threshold)
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.model_id = f"hf-detr:{name}"
        self.weights_path = str(folder)
        try:
            self.processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForObjectDetection.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            kind = model_type_of(folder) or "unknown"
            raise ModelUnavailable(f"cannot load an object detector from {folder} (model type '{kind}'): {short_error(e)}") from None
        if not hasattr(self.processor, "post_process_object_detection"):
            raise ModelUnavailable(f"the image processor in {folder} cannot post-process object detections")
        self.model = model.eval().to(device)
        id2label = dict(getattr(self.model.config, "id2label", {}) or {})
        self._names = lambda i: str(id2label.get(i, id2label.get(str(i), f"class {i}")))

    def _detect_batch(self, batch: list[Image.Image]) -> list[list[Detection]]:
        inputs = self.processor(images=batch, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if hasattr(v, "to")}
        outputs = self.model(**inputs)
        sizes = [(im.height, im.width) for im in batch]
        processed = self.processor.post_process_object_detection(outputs, threshold=self.threshold, target_sizes=sizes)
        return [
            _nms_and_convert(r["boxes"].cpu(), r["scores"].cpu(), r["labels"].cpu(), self._names, im.width, im.height)
            for r, im in zip(processed, batch)
        ]


def labels_hash(labels: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(labels).encode("utf-8")).hexdigest()[:8]


class HFOwlDetector(_HFDetectorBase):
    def __init__(self, name: str, folder: Path, device, threshold: float, labels: Sequence[str]):
        super().__init__(device, threshold)
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.labels = tuple(str(label).strip() for label in labels if str(label).strip())
        if not self.labels:
            raise ModelUnavailable("hf-owlvit needs labels to look for: set detector_labels (e.g. person,bag,shoe)")
        self.model_id = f"hf-owlvit:{name}[{labels_hash(self.labels)}]"
        self.weights_path = str(folder)
        self.model_type = model_type_of(folder)
        if self.model_type not in OWL_TYPES:
            raise ModelUnavailable(f"{folder} holds a '{self.model_type or 'unknown'}' model; hf-owlvit needs an OWL-ViT or OWLv2 detector")
        try:
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForZeroShotObjectDetection.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"cannot load the OWL-ViT detector in {folder}: {short_error(e)}") from None
        self.image_processor = processor.image_processor
        self.model = model.eval().to(device)
        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 16))
        queries = [OWL_PROMPT.format(label) for label in self.labels]
        text = processor.tokenizer(queries, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        self._input_ids = text["input_ids"].to(device)
        self._attention_mask = text["attention_mask"].to(device)

    def _detect_batch(self, batch: list[Image.Image]) -> list[list[Detection]]:
        n = len(batch)
        pixel_values = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
        outputs = self.model(
            input_ids=self._input_ids.repeat(n, 1),
            attention_mask=self._attention_mask.repeat(n, 1),
            pixel_values=pixel_values,
        )
        if self.model_type == "owlv2":  # OWLv2 pads to a square at the bottom/right; boxes are relative to it
            sizes = [(max(im.size),) * 2 for im in batch]
        else:
            sizes = [(im.height, im.width) for im in batch]
        processed = self.image_processor.post_process_object_detection(outputs, threshold=self.threshold, target_sizes=sizes)
        names = lambda i: self.labels[i] if 0 <= i < len(self.labels) else f"query {i}"  # noqa: E731
        return [
            _nms_and_convert(r["boxes"].cpu(), r["scores"].cpu(), r["labels"].cpu(), names, im.width, im.height)
            for r, im in zip(processed, batch)
        ]


def load_detr(argument: str, loader) -> HFDetrDetector:
    from .device import configure_cpu_threads, pick_device

    folder = resolve_model_dir(argument, "object detector")
    configure_cpu_threads()
    settings = loader.settings
    return HFDetrDetector(argument.strip(), folder, pick_device(settings.device), settings.detector_threshold)


def probe_detr(argument: str, settings: Settings):
    return probe_model_dir(argument, "object detector")


def load_owlvit(argument: str, loader) -> HFOwlDetector:
    from .device import configure_cpu_threads, pick_device

    folder = resolve_model_dir(argument, "OWL-ViT detector")
    configure_cpu_threads()
    settings = loader.settings
    return HFOwlDetector(argument.strip(), folder, pick_device(settings.device), settings.detector_threshold, settings.detector_labels)


def probe_owlvit(argument: str, settings: Settings):
    availability = probe_model_dir(argument, "OWL-ViT detector")
    if availability.ready and not any(str(label).strip() for label in settings.detector_labels):
        from .registry import Availability

        return Availability(False, availability.where, "hf-owlvit needs labels to look for: set detector_labels")
    return availability
