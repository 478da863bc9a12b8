"""Learned fusion: a small head trained on frozen, cached features (global image vector,
RoI-pooled box features, caption embedding) that outputs one retrieval embedding.

Public API::

    train_fusion(library, gt_spec, out_path, epochs=30, val_split=1/3, seed=0, ...) -> TrainReport
    load_head(path, library=None) -> FusionHead          # safetensors only, checked against the library
    save_head(head, path, train_info=None) -> Path
    embed_gallery(head, library, image_ids=None) -> (ids, vectors)
    embed_query(head, image_vec, caption_vec, box_feats=None, caption_weight=1.0) -> vector
    query_box_features(library, pil_image, detections) -> BoxFeatures | None
    learned_vectors_for_eval(head, library, image_ids) -> (query matrix, gallery matrix)
    ensure_box_features(library, image_ids=None, progress=None, cancel=None) -> CacheReport

Torch is imported lazily (inside functions), so importing this package stays cheap.
"""

from .features import BoxFeatures, CacheReport, box_feature_id, box_support, ensure_box_features, load_features
from .infer import embed_gallery, embed_query, learned_vectors_for_eval, query_box_features
from .io import check_compatible, load_head, save_head
from .train import TrainProgress, TrainReport, train_fusion

__all__ = [
    "BoxFeatures", "CacheReport", "TrainProgress", "TrainReport", "box_feature_id", "box_support", "check_compatible",
    "embed_gallery", "embed_query", "ensure_box_features", "learned_vectors_for_eval", "load_features", "load_head",
    "query_box_features", "save_head", "train_fusion",
]
