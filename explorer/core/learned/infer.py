"""Inference with a trained fusion head: gallery vectors, query vectors, evaluation matrices.

A query image is embedded from the same inputs as a gallery image (global vector, caption
vector and weight, box features), into the *query* side of the head's pair (``head`` module
docstring): its base part is the α-fused query vector with the query's own caption weight, and
its residual is scaled by the gate. Scores are dot products ``query . gallery``; with the gate
at zero they equal the α-fused mode's scores exactly.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import ExplorerError
from ..models.base import Detection
from .features import BoxEncoder, BoxFeatures, load_features
from .train import embed_features, embed_pair


def embed_gallery(head, library, image_ids: Sequence[int] | None = None, compute_missing: bool = True,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of every ok image (or of ``image_ids``) that has image and caption vectors.

    Missing box features are computed first (the backbone runs only for those images) unless
    ``compute_missing=False``, in which case images without cached boxes get none.
    """
    from .io import check_compatible

    check_compatible(head.cfg, library)
    fs, _ = load_features(library, image_ids, use_boxes=head.cfg.use_boxes, max_boxes=head.cfg.max_boxes,
                          compute_missing=compute_missing, progress=progress, cancel=cancel)
    return fs.ids, embed_features(head, fs)


def learned_vectors_for_eval(head, library, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(query vectors, gallery vectors)``, each ``(len(image_ids), D)`` in the order of ``image_ids``
    (for ``evaluate_embeddings``: each image as a query with its own caption weight)."""
    from .io import check_compatible

    check_compatible(head.cfg, library)
    want = np.asarray([int(i) for i in image_ids], np.int64)
    fs, _ = load_features(library, want.tolist(), use_boxes=head.cfg.use_boxes, max_boxes=head.cfg.max_boxes)
    pos = {int(i): j for j, i in enumerate(fs.ids.tolist())}
    lacking = [int(i) for i in want.tolist() if int(i) not in pos]
    if lacking:
        raise ExplorerError(f"{len(lacking)} images have no image or caption vector for the library's models "
                            f"(e.g. image id {lacking[0]}): re-index the library")
    q, g = embed_pair(head, fs)
    rows = [pos[int(i)] for i in want.tolist()]
    return q[rows], g[rows]


def query_box_features(library, image: Image.Image, detections: Sequence[Detection], max_boxes: int | None = None) -> BoxFeatures | None:
    """Box features of a query image (``detections`` in pixels of ``image``); None if the encoder cannot make them."""
    from .features import MAX_BOXES, box_support

    ok, _ = box_support(library)
    if not ok:
        return None
    return BoxEncoder(library.image_model).for_query(image, detections, max_boxes or MAX_BOXES)


def embed_query(head, image_vec, caption_vec, box_feats: BoxFeatures | None = None, caption_weight: float = 1.0) -> np.ndarray:
    """One query vector ``(D,)`` (the query side of the pair). ``caption_vec=None`` (no caption)
    masks the caption token and gives the base no caption term (weight 0)."""
    import torch

    cfg = head.cfg
    img = np.asarray(image_vec, np.float32).reshape(1, -1)
    if img.shape[1] != cfg.image_dim:
        raise ExplorerError(f"query image vector has {img.shape[1]} dimensions, the fusion head expects {cfg.image_dim}")
    if caption_vec is None:
        cap, w = np.zeros((1, cfg.text_dim), np.float32), 0.0
    else:
        cap, w = np.asarray(caption_vec, np.float32).reshape(1, -1), float(caption_weight)
        if cap.shape[1] != cfg.text_dim:
            raise ExplorerError(f"query caption vector has {cap.shape[1]} dimensions, the fusion head expects {cfg.text_dim}")
    b = cfg.max_boxes if cfg.use_boxes else 0
    boxes = np.zeros((1, b, cfg.box_dim), np.float32)
    mask = np.zeros((1, b), bool)
    geom = np.zeros((1, b, cfg.geom_dim), np.float32)
    if b and box_feats is not None and len(box_feats.feats):
        k = min(b, len(box_feats.feats))
        boxes[0, :k], mask[0, :k], geom[0, :k] = box_feats.feats[:k], True, box_feats.geom[:k]
    head.eval()
    with torch.inference_mode():
        t = [torch.from_numpy(x) for x in (img, cap, np.array([w], np.float32), boxes, mask, geom)]
        if caption_vec is None:
            r = head.encode(head.tokens(*t), caption_on=False)[0]
        else:
            r = head(*t)
    bq, bg = head.base_pair(img, cap, np.array([w], np.float32))
    return head.compose(bq, bg, r.numpy())[0][0].astype(np.float32)
