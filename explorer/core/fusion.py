"""How image and caption embeddings are fused into one global representation.

Score of gallery image *i* for a query *q* in the caption-fused mode::

    s(q, i) = (1 - b) * cos_image(q, i) + b * cos_caption(q, i),   b = alpha * w_q * w_i

``w`` is a caption's *weight* in [0, 1]: 1 for captions a person wrote (sidecar, captions
file, edited in the app, ground truth) and, for generated ones, the captioner's confidence
mapped through ``generated_weight``. A caption that says little therefore moves the score
little, and with w = 0 the fused score is exactly the image-only score: fusion cannot make a
ranking worse merely because a caption is vague.

For ANN search the gallery side is folded into one vector per image, with w_q = 1::

    separate spaces:  g_i = [ (1 - a_i) / sqrt(1 - alpha) * img_i ,  a_i / sqrt(alpha) * cap_i ],  a_i = alpha * w_i
                      q   = [ sqrt(1 - alpha) * img_q ,               sqrt(alpha) * cap_q ]
    so that q . g_i = (1 - a_i) cos_image + a_i cos_caption.
    shared space (CLIP): g_i = (1 - a_i) img_i + a_i cap_i and q = (1 - alpha) img_q + alpha cap_q, normalised.

The exact score above (with the query's own weight) is then computed on the candidates, so
the alpha slider re-ranks without re-encoding anything.
"""

from __future__ import annotations

import numpy as np

from .models.base import l2_normalise

#: Default fusion weight, chosen by the alpha sweep on Fashion-MNIST (see README, "Fusion").
DEFAULT_ALPHA = 0.3
USER_SOURCES = frozenset({"user-edited", "sidecar", "captions-file", "ground-truth"})
#: Generated captions below this confidence get no weight at all.
GENERATED_FLOOR = 0.5


def generated_weight(confidence: float) -> float:
    """Map a generated caption's confidence to a fusion weight: 0 below the floor, linear to 1."""
    return float(np.clip((confidence - GENERATED_FLOOR) / (1.0 - GENERATED_FLOOR), 0.0, 1.0))


def caption_weight(source: str | None, confidence: float | None) -> float:
    if not source:
        return 0.0
    if source in USER_SOURCES:
        return 1.0
    return generated_weight(1.0 if confidence is None else confidence)


def caption_weights(sources, confidences) -> np.ndarray:
    return np.array([caption_weight(s, c) for s, c in zip(sources, confidences)], dtype=np.float32)


def fused_scores(cos_image: np.ndarray, cos_caption: np.ndarray, alpha: float, w_query: float, w_gallery: np.ndarray) -> np.ndarray:
    """The exact fused score for one query against candidates (arrays of equal length)."""
    b = np.clip(alpha * w_query * np.asarray(w_gallery, np.float32), 0.0, 1.0)
    return ((1.0 - b) * cos_image + b * cos_caption).astype(np.float32)


def fuse_gallery(img: np.ndarray, cap: np.ndarray, alpha: float, weights: np.ndarray, shared: bool) -> np.ndarray:
    """Fold gallery image and caption vectors into one ANN vector each (see module docstring)."""
    a = (alpha * np.asarray(weights, np.float32))[:, None]
    if shared:
        return l2_normalise((1.0 - a) * img + a * cap)
    left = (1.0 - a) / np.sqrt(max(1.0 - alpha, 1e-6)) * img
    right = a / np.sqrt(max(alpha, 1e-6)) * cap
    return np.concatenate([left, right], axis=1).astype(np.float32)


def fuse_query(img: np.ndarray, cap: np.ndarray, alpha: float, shared: bool) -> np.ndarray:
    img = np.asarray(img, np.float32).reshape(-1)
    cap = np.asarray(cap, np.float32).reshape(-1)
    if shared:
        return l2_normalise((1.0 - alpha) * img + alpha * cap)
    return np.concatenate([np.sqrt(1.0 - alpha) * img, np.sqrt(alpha) * cap]).astype(np.float32)
