"""How image and caption embeddings are fused into one global representation.

Score of gallery image *i* for a query *q* in the caption-fused mode::

    s(q, i) = (1 - b) * cos_image(q, i) + b * cos_caption(q, i),   b = alpha * w_q * w_i

``w`` is a caption's *weight* in [0, 1]. Captions a person wrote (sidecar, captions file,
edited in the app, ground truth, photo metadata) get 1; a caption made of names a person typed
(file and folder name words) gets the fixed ``NAME_TRUST`` = 0.71 (both from
``captions.sources.source_trust``). Machine text (the captioner's, OCR) gets::

    w = agreement * (1/2 + confidence/2)

- ``agreement``: the fraction of the image's ``AGREEMENT_K`` nearest neighbours in image space
  that are also among its ``AGREEMENT_K`` nearest neighbours in caption space. A caption whose
  neighbourhood has nothing to do with what the image looks like (vague, or wrong) gets ~0.
- ``confidence``: the captioner's own evidence (detector and classifier scores for the
  structured captioner, token probability for neural captioners).

So a caption that says little moves the score little, and with w = 0 the fused score is
exactly the image-only score. Measured on Fashion-MNIST (README, "Fusion"): a fixed alpha on
raw generated captions lowered mAP below image-only; with these weights fused mAP >= image-only
for every alpha in the sweep.

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

#: Default fusion weight, chosen by the alpha sweep on Fashion-MNIST (see README, "Fusion"):
#: with agreement weights mAP is flat-to-rising in alpha; 0.5 keeps half the weight on the image
#: even for fully trusted (user) captions.
DEFAULT_ALPHA = 0.5
from .captions.sources import NAME_TRUST, USER_SOURCES, source_trust  # noqa: E402,F401  (the one list of caption sources)
AGREEMENT_K = 10
#: names the weight rule in evaluation reports (changes when ``caption_weight`` does)
WEIGHT_RULE = f"agreement-v1, names {NAME_TRUST:.3f}"


def caption_weight(source: str | None, confidence: float | None, agreement: float | None) -> float:
    """The fusion weight of one caption (see the module docstring)."""
    if not source:
        return 0.0
    trust = source_trust(source)
    if trust is not None:  # person-written (1) or names a person typed (NAME_TRUST)
        return float(trust)
    conf = 1.0 if confidence is None else float(np.clip(confidence, 0.0, 1.0))
    return float(np.clip((agreement or 0.0) * (0.5 + 0.5 * conf), 0.0, 1.0))


def neighbourhood_agreement(image_neighbours, caption_neighbours, k: int = AGREEMENT_K) -> np.ndarray:
    """Per row: |image-kNN ∩ caption-kNN| / k, for two sequences of neighbour-id lists."""
    return np.array([len(set(a) & set(b)) / max(1, k) for a, b in zip(image_neighbours, caption_neighbours)], np.float32)


def fused_scores(cos_image: np.ndarray, cos_caption: np.ndarray, alpha: float, w_query: float, w_gallery: np.ndarray) -> np.ndarray:
    """The exact fused score for one query against candidates (arrays of equal length)."""
    b = np.clip(alpha * w_query * np.asarray(w_gallery, np.float32), 0.0, 1.0)
    return ((1.0 - b) * cos_image + b * cos_caption).astype(np.float32)


def fused_matrices(q, g, alpha: float, w_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact fused score of many queries as one dot product: ``(Q, G)`` with ``Q[i] . G[j] =
    (1 - b) cos_image + b cos_caption``, ``b = alpha * w_q[i] * g.weights[j]``. ``q`` and ``g`` have
    ``image``, ``caption`` (row-normalised matrices) and ``g`` also ``weights`` (``library.GalleryVectors``)."""
    aw = (alpha * w_q)[:, None]
    Q = np.concatenate([q.image, aw * q.caption, -aw * q.image], axis=1)
    G = np.concatenate([g.image, g.weights[:, None] * g.caption, g.weights[:, None] * g.image], axis=1)
    return Q.astype(np.float32), G.astype(np.float32)


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
