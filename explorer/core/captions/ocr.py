"""Text in the image, read by an offline OCR whose models ship inside a registry package.

Backend: ``rapidocr_onnxruntime`` (PP-OCRv4 detection + recognition ONNX models inside the
wheel, run by onnxruntime on the CPU; nothing is downloaded). It is an optional dependency
(extra ``ocr``) and the ``ocr`` caption source is off by default: it costs about a second
per image on these CPUs (``bench/ocr_speed.py``). Lines read with a score below
``MIN_SCORE`` or without a letter are dropped; the rest is joined in reading order.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import ExplorerError
from ..models.base import Caption
from .sources import OCR

MIN_SCORE = 0.6
MAX_CHARS = 300
#: longest side given to the OCR (it is slow on large images; text smaller than this is lost)
MAX_SIDE = 960


class OcrReader:
    """Lazily loads the OCR engine once; ``read`` is thread-safe (one image at a time)."""

    def __init__(self) -> None:
        self._engine = None
        self._lock = threading.Lock()
        self.model_id = "rapidocr-onnx:PP-OCRv4"

    @staticmethod
    def available() -> bool:
        try:
            import rapidocr_onnxruntime  # noqa: F401
        except Exception:  # noqa: BLE001
            return False
        return True

    def _load(self):
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except Exception as e:  # noqa: BLE001
                raise ExplorerError(f"the ocr caption source needs rapidocr_onnxruntime (pip install 'retrieval-explorer[ocr]'): {e}") from None
            self._engine = RapidOCR()
            try:
                from importlib.metadata import version

                self.model_id = f"rapidocr-onnx-{version('rapidocr_onnxruntime')}:PP-OCRv4"
            except Exception:  # noqa: BLE001
                pass
        return self._engine

    def read(self, image) -> Caption:
        """The text read in one PIL image (an empty text when there is none)."""
        with self._lock:
            engine = self._load()
            im = image.convert("RGB")
            if max(im.size) > MAX_SIDE:
                s = MAX_SIDE / max(im.size)
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))))
            arr = np.asarray(im)[:, :, ::-1].copy()  # BGR, as OpenCV-based engines expect
            result, _ = engine(arr)
        lines = []
        scores = []
        for box, text, score in result or []:
            text = str(text).strip()
            if float(score) >= MIN_SCORE and any(ch.isalpha() for ch in text):
                lines.append(text)
                scores.append(float(score))
        text = " ".join(lines)[:MAX_CHARS].strip()
        conf = float(np.mean(scores)) if scores else 0.0
        return Caption(text, OCR, self.model_id, conf)
