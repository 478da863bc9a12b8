"""Training the learned fusion head on cached frozen features.

``train_fusion`` matches ground-truth images to the library by resolved absolute path, makes
sure the box features are cached (the only step that runs a backbone, and only for images
that lack them), splits the **labels** (not the images) into train and validation so that
validation measures retrieval of classes never seen in training (open set), and trains with
fixed seeds, early stopping on validation mAP (validation queries against the validation and
training images, by ``explorer.core.evaluation.evaluate_embeddings``). The head starts as the
library's α-fused mode (``head`` module docstring); the best trained epoch replaces that start
only when its validation gain has a paired bootstrap CI above zero, so the saved head is never
worse than α-fusion on the validation labels.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import Cancelled, ExplorerError
from .features import MAX_BOXES, FeatureSet, box_feature_id, box_support, load_features

DEFAULT_EPOCHS = 30
DEFAULT_PATIENCE = 6
DEFAULT_BATCH = 128
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.05
MIN_IMAGES_PER_CLASS = 2
MIN_CLASSES = 2


@dataclass
class TrainProgress:
    """What the trainer is doing. ``phase``: ``features``, ``training``, ``done``."""

    phase: str
    done: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    val_map: float | None = None
    message: str = ""


@dataclass
class EpochStats:
    epoch: int
    loss: float
    parts: dict[str, float]
    val_map: float | None
    seconds: float

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": round(self.loss, 6), "parts": {k: round(v, 6) for k, v in self.parts.items()},
                "val_map": None if self.val_map is None else round(self.val_map, 6), "seconds": round(self.seconds, 3)}


@dataclass
class TrainReport:
    out_path: str | None
    epochs: list[EpochStats]
    best_epoch: int
    best_val_map: float | None
    #: validation mAP of the stored image vectors (the image-only mode) and of the untrained head
    val_map_image_only: float | None
    val_map_untrained: float | None
    n_train_images: int
    n_val_images: int
    train_labels: list[str]
    val_labels: list[str]
    head_config: dict
    loss_config: dict
    stopped_early: bool
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: the best trained epoch against the start on validation (paired comparison as a dict)
    selection: dict | None = None

    def to_dict(self) -> dict:
        return {
            "out_path": self.out_path, "best_epoch": self.best_epoch, "best_val_map": self.best_val_map,
            "val_map_image_only": self.val_map_image_only, "val_map_untrained": self.val_map_untrained,
            "n_train_images": self.n_train_images, "n_val_images": self.n_val_images,
            "train_labels": self.train_labels, "val_labels": self.val_labels, "head_config": self.head_config,
            "loss_config": self.loss_config, "stopped_early": self.stopped_early, "seconds": round(self.seconds, 2),
            "notes": self.notes, "selection": self.selection, "epochs": [e.to_dict() for e in self.epochs],
        }

    def lines(self) -> list[str]:
        out = [f"trained on {self.n_train_images} images / {len(self.train_labels)} labels, "
               f"validated on {self.n_val_images} images / {len(self.val_labels)} unseen labels"]
        for e in self.epochs:
            v = "n/a" if e.val_map is None else f"{e.val_map:.4f}"
            out.append(f"epoch {e.epoch:3d}  loss {e.loss:.4f}  val mAP {v}  ({e.seconds:.1f} s)")
        if self.best_val_map is not None:
            out.append(f"kept epoch {self.best_epoch} (0 = the start: exactly the α-fused mode): val mAP {self.best_val_map:.4f} "
                       f"(image-only {self.val_map_image_only:.4f}, α-fused {self.val_map_untrained:.4f})")
        if self.selection:
            c = self.selection
            out.append(f"best trained epoch vs α-fused on validation: {c['mean_diff']:+.4f} mAP, 95% CI "
                       f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] over {c['n_pairs']} queries")
        out.extend(self.notes)
        if self.out_path:
            out.append(f"saved {self.out_path}")
        return out


# ---------------------------------------------------------------------------------------
# data


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

#: a trained epoch replaces the start point (α-fusion) only if its validation gain has a paired
#: bootstrap 95% CI above zero (queries resampled; ``evaluation.paired_comparison``)
SELECT_BOOT = 2000
#: learning-rate factor of the gate and block scales (a few scalars that must move from 0 within tens of steps)
SCALAR_LR_FACTOR = 30


@dataclass
class FitResult:
    head: object
    history: list[EpochStats]
    #: the epoch whose weights the head holds (0 = the untrained start: exactly the base mode)
    best_epoch: int
    best_val_map: float | None
    val_map_untrained: float | None
    stopped_early: bool
    #: the best *trained* epoch on validation (>= 1) and its weights, whether or not it was kept
    trained_epoch: int = 0
    trained_val_map: float | None = None
    trained_state: dict | None = None
    #: paired comparison (val APs) of the best trained epoch against the start, as a dict
    selection: dict | None = None

    def trained_head(self):
        """A copy of the head with the best trained epoch's weights (for the ablation)."""
        import copy

        h = copy.deepcopy(self.head)
        if self.trained_state is not None:
            h.load_state_dict(self.trained_state)
        h.eval()
        return h


def fit(
    train: FeatureSet,
    train_labels: Sequence[str],
    val: FeatureSet | None,
    val_labels: Sequence[str] | None,
    head_cfg,
    loss_cfg,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    patience: int = DEFAULT_PATIENCE,
    seed: int = 0,
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: threading.Event | None = None,
    val_distractors: bool = True,
    keep_initial: bool = True,
    threads: int | None = None,
    require_ci: bool = True,
    closed_set: bool = False,
) -> FitResult:
    """Train a head on in-memory features; with ``val`` given, select on validation mAP.

    The untrained head (epoch 0: gate 0, so exactly the base mode, α-fusion by default) is the
    start point. ``keep_initial`` (on unless the base is ``none``): a trained epoch replaces it
    only if its validation mAP is higher and, with ``require_ci``, the paired bootstrap 95% CI
    of the gain over the start is above zero; so the returned head is never worse than
    α-fusion on the validation labels. ``val_distractors``: validation queries are ranked
    against the validation images plus the training images (unlabelled distractors; with
    ``closed_set``, validation images share the training labels, so training images of the same
    label count as relevant). ``threads``: torch intra-op threads while fitting (restored
    after); None leaves the setting alone.
    """
    import torch

    if threads:
        old = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return fit(train, train_labels, val, val_labels, head_cfg, loss_cfg, epochs, batch_size, lr, weight_decay, patience,
                       seed, progress, cancel, val_distractors, keep_initial, None, require_ci, closed_set)
        finally:
            torch.set_num_threads(old)

    from ..evaluation import paired_comparison
    from .head import FusionHead, FusionLoss

    if epochs < 1:
        raise ExplorerError(f"epochs must be at least 1, got {epochs}")
    seed_everything(seed)
    label_names = sorted(set(train_labels))
    label_index = {lab: i for i, lab in enumerate(label_names)}
    box_names = sorted({lab for labs in train.box_labels for lab in labs}) if head_cfg.use_boxes else []
    box_vocab = {lab: i for i, lab in enumerate(box_names)}
    head = FusionHead(head_cfg)
    crit = FusionLoss(head, len(label_names), len(box_names), loss_cfg)
    data = _tensors(train, train_labels, label_index, box_vocab)
    if loss_cfg.lambda_fused > 0 and head_cfg.base != "none":
        bq, bg = head.base_pair(train.image, train.caption, train.weight)
        data["base_q"], data["base_g"] = torch.from_numpy(np.ascontiguousarray(bq)), torch.from_numpy(np.ascontiguousarray(bg))
    n = len(train)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    gate = [head.gate, head.block_scale]
    rest = [p for p in crit.parameters() if p.requires_grad and p is not head.gate and p is not head.block_scale]
    # the gate and block scales are a few scalars that have to travel from 0 to a useful mix within a few dozen steps
    opt = torch.optim.AdamW([{"params": rest}, {"params": gate, "lr": lr * SCALAR_LR_FACTOR}], lr=lr, weight_decay=weight_decay, foreach=True)
    total_steps = epochs * steps_per_epoch
    warm = min(steps_per_epoch, max(1, total_steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, total_steps)))))
    gen = torch.Generator().manual_seed(seed)
    emit = progress or (lambda p: None)
    val_l = None if val_labels is None else list(val_labels)

    def validate() -> np.ndarray | None:
        if val is None or not len(val):
            return None
        vq, vg = embed_pair(head, val)
        if closed_set:
            from ..evaluation import LabelRelevance, evaluate_embeddings

            nv, nt = len(val), len(train)
            rel = LabelRelevance(val_l, val_l + list(train_labels), np.arange(nv), np.arange(nv + nt))
            return evaluate_embeddings(vq, np.concatenate([vg, embed_features(head, train)]), rel, mode="val", ks=(1,)).ap
        if not val_distractors:
            return loo_ap(vq, vg, val_l)
        # unseen-label queries against their own images plus the training images as distractors:
        # a head that folds new classes onto the training classes loses here
        return distractor_ap(vq, vg, val_l, embed_features(head, train))

    ap0 = validate()
    untrained = None if ap0 is None else float(np.nanmean(ap0))
    start_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    history: list[EpochStats] = []
    tr_state, tr_epoch, tr_map, tr_ap = None, 0, None, None
    since_best = 0
    stopped_early = False
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        crit.train()
        perm = torch.randperm(n, generator=gen)
        tot, parts_sum, count = 0.0, {}, 0
        for s in range(0, n, batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"training cancelled in epoch {epoch}; nothing was saved")
            idx = perm[s : s + batch_size]
            if idx.numel() < 2 and n >= 2:
                continue  # a batch of one has nothing to contrast
            batch = {k: v[idx] for k, v in data.items()}
            loss, parts = crit(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(crit.parameters(), 5.0)
            opt.step()
            sched.step()
            m = idx.numel()
            tot += float(loss.detach()) * m
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * m
            count += m
        ap = validate()
        vmap = None if ap is None else float(np.nanmean(ap))
        st = EpochStats(epoch, tot / max(count, 1), {k: v / max(count, 1) for k, v in parts_sum.items()}, vmap, time.perf_counter() - t0)
        history.append(st)
        emit(TrainProgress("training", epoch, epochs, epoch, epochs, st.loss, vmap, f"epoch {epoch}/{epochs}"))
        if vmap is None:
            continue
        if tr_map is None or vmap > tr_map + 1e-6:
            tr_map, tr_epoch, tr_ap, since_best = vmap, epoch, ap, 0
            tr_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            since_best += 1
            if patience and since_best >= patience:
                stopped_early = epoch < epochs
                break
    last_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    selection = None
    if ap0 is None:  # no validation: the last epoch
        best_epoch, best_map, tr_state, tr_epoch = len(history), None, last_state, len(history)
        head.load_state_dict(last_state)
    else:
        best_epoch, best_map = tr_epoch, tr_map
        head.load_state_dict(tr_state)
        if keep_initial and head_cfg.base != "none":
            c = paired_comparison(ap0, tr_ap, n_boot=SELECT_BOOT, seed=seed, name_a="start", name_b=f"epoch {tr_epoch}")
            selection = c.to_dict()
            justified = tr_map > untrained + 1e-9 and (c.ci_low > 0 if require_ci else True)
            if not justified:
                best_epoch, best_map = 0, untrained
                head.load_state_dict(start_state)
    head.eval()
    return FitResult(head, history, best_epoch, best_map, untrained, stopped_early, tr_epoch, tr_map, tr_state, selection)


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


def train_fusion(
    library,
    gt_spec,
    out_path: str | os.PathLike | None,
    epochs: int = DEFAULT_EPOCHS,
    val_split: float = 0.2,
    seed: int = 0,
    arcface: bool = True,
    lambda_nce: float = 0.5,
    lambda_box: float = 0.2,
    lambda_fused: float = 1.0,
    use_boxes: bool | str = "auto",
    use_caption: bool = True,
    arch: str = "attention",
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    patience: int = DEFAULT_PATIENCE,
    max_boxes: int = MAX_BOXES,
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> TrainReport:
    """Train a fusion head on ``library`` with labels from ``gt_spec`` and save it to ``out_path``.

    ``use_boxes="auto"`` uses box features when the image encoder supports them (EfficientNet)
    and otherwise trains without them, saying so in ``notes``. ``val_split`` is the fraction of
    *labels* held out for validation (0: no validation, train all epochs). ``out_path=None``
    trains without saving.
    """
    from .head import LossConfig

    t_start = time.perf_counter()
    if not 0.0 <= val_split < 1.0:
        raise ExplorerError(f"val_split must be in [0, 1), got {val_split}")
    if not (arcface or lambda_nce > 0 or lambda_fused > 0):
        raise ExplorerError("nothing to train: switch on the fused contrastive term, ArcFace or the image-caption InfoNCE term")
    boxes_on, note = resolve_boxes(library, use_boxes)
    emit = progress or (lambda p: None)
    emit(TrainProgress("features", message="preparing cached features"))
    fs, labels, notes = labelled_features(
        library, gt_spec, boxes_on, progress=lambda d, t: emit(TrainProgress("features", d, t, message=f"box features {d}/{t}")), cancel=cancel)
    if note:
        notes.insert(0, note)
    train_labs, val_labs = split_labels(labels, val_split, seed)
    lab_arr = np.asarray(labels, object)
    tr_rows = np.flatnonzero(np.isin(lab_arr, train_labs))
    va_rows = np.flatnonzero(np.isin(lab_arr, val_labs))
    dropped = len(labels) - len(tr_rows) - len(va_rows)
    if dropped:
        notes.append(f"{dropped} images of labels with fewer than {MIN_IMAGES_PER_CLASS} images are left out")
    train, val = fs.subset(tr_rows), fs.subset(va_rows) if len(va_rows) else None
    tr_l = [labels[i] for i in tr_rows.tolist()]
    va_l = [labels[i] for i in va_rows.tolist()]
    head_cfg = make_head_config(library, boxes_on, use_caption, arch, max_boxes=max_boxes)
    loss_cfg = LossConfig(arcface=arcface, lambda_nce=lambda_nce, lambda_box=lambda_box, lambda_fused=lambda_fused)
    res = fit(train, tr_l, val, va_l, head_cfg, loss_cfg, epochs, batch_size, DEFAULT_LR if lr is None else lr,
              DEFAULT_WEIGHT_DECAY, patience, seed, progress, cancel, threads=threads)
    val_img = distractor_map(val.image, va_l, train.image) if val is not None else None
    if val is not None and res.best_epoch == 0:
        notes.append("no trained epoch beat the start (the α-fused mode) on the unseen validation labels with a CI above "
                     "zero, so the saved head is the start: it ranks exactly like the α-fused mode")
    saved = None
    report = TrainReport(
        out_path=None, epochs=res.history, best_epoch=res.best_epoch, best_val_map=res.best_val_map,
        val_map_image_only=val_img, val_map_untrained=res.val_map_untrained, n_train_images=len(train),
        n_val_images=0 if val is None else len(val), train_labels=train_labs, val_labels=val_labs,
        head_config=head_cfg.to_dict(), loss_config=loss_cfg.to_dict(), stopped_early=res.stopped_early,
        seconds=0.0, notes=notes, selection=res.selection)
    if out_path is not None:
        from .io import save_head

        info = {k: v for k, v in report.to_dict().items() if k not in ("epochs", "head_config", "out_path", "seconds")}
        info.update(gt=str(gt_spec if isinstance(gt_spec, (str, os.PathLike)) else getattr(gt_spec, "spec", "")), seed=seed,
                    epochs_run=len(res.history), val_split=val_split, library=str(library.dir))
        saved = str(save_head(res.head, out_path, info))
    report.out_path = saved
    report.seconds = time.perf_counter() - t_start
    emit(TrainProgress("done", len(res.history), epochs, len(res.history), epochs, res.history[-1].loss, res.best_val_map, "done"))
    return report


__all__ = ["TrainProgress", "EpochStats", "TrainReport", "FitResult", "train_fusion", "fit", "labelled_features",
           "split_labels", "embed_features", "embed_pair", "residuals", "loo_ap", "loo_map", "make_head_config", "seed_everything"]
