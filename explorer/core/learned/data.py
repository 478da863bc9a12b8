"""The training data of the learned fusion head and the measures its selection uses.

Owns: reproducible seeding, turning a labelled ground truth into the cached frozen features of
the library's images (``labelled_features``), the label filters and splits, the tensors a head
trains on, the head's configuration for a library (``make_head_config``, ``resolve_boxes``),
and the leave-one-out / distractor mAP that ``train.fit`` and ``train.fit_cv`` validate with. No training loop here (``train``), no head (``head``). Split out of ``train`` so
that each module stays readable; ``train`` re-exports these names.
"""

from __future__ import annotations

import os
import random
from typing import Sequence

import numpy as np

from ..errors import ExplorerError
from .features import FeatureSet, box_feature_id, box_support, load_features

MIN_IMAGES_PER_CLASS = 2
MIN_CLASSES = 2


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def labelled_features(library, gt, use_boxes: bool, progress=None, cancel=None) -> tuple[FeatureSet, list[str], list[str]]:
    """Features of the labelled ground-truth images found in the library: ``(features, labels, notes)``.

    ``gt`` is a spec string or a ``GroundTruth``. Raises ``ExplorerError`` when ground-truth
    images are not in the library, or the ground truth has no labels.
    """
    from ..catalog import Catalog, path_key
    from ..evaluation import load_ground_truth

    if isinstance(gt, (str, os.PathLike)):
        gt = load_ground_truth(gt)
    if gt.kind != "labels":
        raise ExplorerError(f"learned fusion trains on labels; the ground truth '{gt.spec or gt.name}' gives {gt.kind} instead "
                            "(use folders:DIR, a csv with image,label, or coco:FILE)")
    items = [it for it in gt.items if it.label is not None]
    if not items:
        raise ExplorerError(f"the ground truth '{gt.spec or gt.name}' has no labelled images")
    notes: list[str] = []
    by_key = Catalog(library.store).image_statuses(it.path for it in items)
    missing = [it.path for it in items if path_key(it.path) not in by_key]
    if missing:
        raise ExplorerError(f"{len(missing)} of {len(items)} ground-truth images are not in the library at {library.dir} "
                            f"(e.g. {missing[0]}): index them first with `explorer index FOLDER --library {library.dir}`")
    id_label: dict[int, str] = {}
    bad = 0
    for it in items:
        iid, status = by_key[path_key(it.path)]
        if status != "ok":
            bad += 1
            continue
        id_label[iid] = it.label
    if bad:
        notes.append(f"{bad} ground-truth images failed to index and are left out")
    fs, cache = load_features(library, sorted(id_label), use_boxes=use_boxes, progress=progress, cancel=cancel)
    if cache is not None:
        notes.append(cache.line())
    lacking = len(id_label) - len(fs)
    if lacking:
        notes.append(f"{lacking} ground-truth images lack an image or caption vector for the current models and are left out")
    labels = [id_label[int(i)] for i in fs.ids.tolist()]
    return fs, labels, notes


def usable_labels(labels: Sequence[str], min_count: int = MIN_IMAGES_PER_CLASS) -> list[str]:
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return sorted(lab for lab, c in counts.items() if c >= min_count)


def split_labels(labels: Sequence[str], fraction: float, seed: int, what: str = "validation") -> tuple[list[str], list[str]]:
    """Split the usable labels into ``(kept, held_out)`` with ``held_out`` about ``fraction`` of them.

    Both sides need at least ``MIN_CLASSES`` labels with ``MIN_IMAGES_PER_CLASS`` images each.
    """
    usable = usable_labels(labels)
    if len(usable) < MIN_CLASSES:
        raise ExplorerError(f"too few labels to train on: need at least {MIN_CLASSES} labels with {MIN_IMAGES_PER_CLASS}+ images each, "
                            f"found {len(usable)} ({', '.join(usable) or 'none'})")
    if fraction <= 0:
        return usable, []
    n_out = max(MIN_CLASSES, int(round(fraction * len(usable))))
    if len(usable) - n_out < MIN_CLASSES:
        raise ExplorerError(f"too few labels for a {what} split by label: {len(usable)} labels with {MIN_IMAGES_PER_CLASS}+ images, "
                            f"need {MIN_CLASSES} for training plus {n_out} unseen {what} labels ({fraction:.0%}); "
                            f"add labelled folders or set the {what} fraction to 0")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(usable))
    held = sorted(usable[i] for i in perm[:n_out])
    kept = sorted(usable[i] for i in perm[n_out:])
    return kept, held


def _tensors(fs: FeatureSet, labels: Sequence[str] | None, label_index: dict[str, int] | None, box_vocab: dict[str, int] | None):
    import torch

    t = {
        "image": torch.from_numpy(fs.image),
        "caption": torch.from_numpy(fs.caption),
        "weight": torch.from_numpy(fs.weight),
        "boxes": torch.from_numpy(fs.boxes),
        "box_mask": torch.from_numpy(fs.box_mask),
        "geom": torch.from_numpy(fs.geom),
    }
    if labels is not None and label_index is not None:
        t["label"] = torch.tensor([label_index[lab] for lab in labels], dtype=torch.long)
    if box_vocab is not None:
        b = fs.boxes.shape[1]
        bl = np.full((len(fs), b), -1, np.int64)
        for i, labs in enumerate(fs.box_labels):
            for j, lab in enumerate(labs[:b]):
                bl[i, j] = box_vocab.get(lab, -1)
        t["box_label"] = torch.from_numpy(bl)
    return t


def residuals(head, fs: FeatureSet, batch: int = 1024, caption_weight=None) -> np.ndarray:
    """The head's residual embeddings ``r`` ``(N, out_dim)`` (eval mode, no gradients).
    ``caption_weight`` replaces the stored weights (a query's own weight)."""
    import torch

    was_training = head.training
    head.eval()
    out = np.zeros((len(fs), head.cfg.out_dim), np.float32)
    t = _tensors(fs, None, None, None)
    if caption_weight is not None:
        t["weight"] = torch.from_numpy(np.asarray(caption_weight, np.float32).reshape(-1))
    with torch.inference_mode():
        for s in range(0, len(fs), batch):
            sl = slice(s, s + batch)
            out[sl] = head(t["image"][sl], t["caption"][sl], t["weight"][sl], t["boxes"][sl], t["box_mask"][sl], t["geom"][sl]).numpy()
    head.train(was_training)
    return out


def embed_pair(head, fs: FeatureSet, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(query vectors, gallery vectors)`` of a feature set: ``Q[i] . G[j]`` is the learned
    score of image ``i`` as a query against image ``j`` (each image a query with its own caption weight)."""
    bq, bg = head.base_pair(fs.image, fs.caption, fs.weight)
    return head.compose(bq, bg, residuals(head, fs, batch))


def embed_features(head, fs: FeatureSet, batch: int = 1024) -> np.ndarray:
    """Gallery vectors ``(N, head.vector_dim)`` of a feature set."""
    return embed_pair(head, fs, batch)[1]


def loo_ap(q: np.ndarray, g: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Per-query AP, each row of ``q`` against the rows of ``g`` (same images), itself left out."""
    from ..evaluation import LabelRelevance, evaluate_embeddings

    return evaluate_embeddings(q, g, LabelRelevance.leave_one_out(list(labels)), mode="val", ks=(1,)).ap


def loo_map(vecs: np.ndarray, labels: Sequence[str]) -> float:
    return float(np.nanmean(loo_ap(vecs, vecs, labels)))


def distractor_ap(val_q: np.ndarray, val_g: np.ndarray, val_labels: list[str], distractors: np.ndarray) -> np.ndarray:
    """Per-query AP of each validation image as a query against the other validation images plus ``distractors``."""
    from ..evaluation import LabelRelevance, evaluate_embeddings

    nv, nd = len(val_g), len(distractors)
    gallery = np.concatenate([val_g, distractors]) if nd else val_g
    rel = LabelRelevance(val_labels, list(val_labels) + [None] * nd, np.arange(nv), np.arange(nv + nd))
    return evaluate_embeddings(val_q, gallery, rel, mode="val", ks=(1,)).ap


def distractor_map(val_vecs: np.ndarray, val_labels: list[str], distractors: np.ndarray, val_q: np.ndarray | None = None) -> float:
    """mAP of each validation image as a query against the other validation images plus ``distractors``."""
    q = val_vecs if val_q is None else val_q
    return float(np.nanmean(distractor_ap(q, val_vecs, list(val_labels), distractors)))


# ---------------------------------------------------------------------------------------
# fitting

#: a trained epoch replaces the start point (α-fusion) only if its validation gain has a
#: bootstrap 95% CI above zero with the validation *labels* resampled (``label_comparison``)


def make_head_config(library, use_boxes: bool, use_caption: bool = True, arch: str = "attention", **kw):
    from .head import HeadConfig

    im, tx = library.image_model, library.text_model
    kw.setdefault("alpha", float(library.fused_index_alpha))
    return HeadConfig(
        image_model_id=im.model_id, image_dim=int(library.image_dim), text_model_id=tx.model_id, text_dim=int(tx.dim),
        box_feature_id=box_feature_id(im.model_id) if use_boxes else None, use_caption=use_caption, arch=arch, **kw)


def resolve_boxes(library, use_boxes) -> tuple[bool, str | None]:
    """``use_boxes`` is True, False or ``"auto"``; returns ``(on, note)``."""
    if use_boxes is False:
        return False, None
    ok, why = box_support(library)
    if ok:
        return True, None
    if use_boxes == "auto":
        return False, why
    raise ExplorerError(why)
