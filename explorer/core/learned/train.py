"""Training the learned fusion head on cached frozen features.

``train_fusion`` matches ground-truth images to the library by resolved absolute path, makes
sure the box features are cached (the only step that runs a backbone, and only for images
that lack them), and selects by **inner folds over the labels** (``fit_cv``): heads trained on
the other labels validate on labels they never saw (open set), in lockstep, so every label is
validated once; early stopping and the number of epochs use the pooled validation mAP
(validation queries against the validation and training images, by
``explorer.core.evaluation.evaluate_embeddings``). Fixed seeds. The head starts as the
library's α-fused mode (``head`` module docstring); training replaces that start only when
the pooled validation gain has a bootstrap CI above zero **with the labels resampled**
(``label_comparison``: a gain that holds across labels, not one carried by two of them), and
then the saved head is trained on all labels for the selected number of epochs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import Cancelled, ExplorerError
from .features import MAX_BOXES, FeatureSet
from .data import (  # noqa: F401  (re-exported: the training data and the measures live in .data)
    MIN_CLASSES, MIN_IMAGES_PER_CLASS, _tensors, distractor_ap, distractor_map, embed_features, embed_pair,
    labelled_features, loo_ap, loo_map, make_head_config, residuals, resolve_boxes, seed_everything, split_labels,
    usable_labels,
)
from .selection import SELECT_BOOT, _justified, fold_rows, inner_folds_for, label_comparison  # noqa: F401  (re-exported)

DEFAULT_EPOCHS = 30
DEFAULT_PATIENCE = 6
DEFAULT_BATCH = 128
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.05
#: inner folds of the selection (``fit_cv``): each holds out a third of the labels, and every
#: label is validated once; ``train_fusion``'s ``val_split`` is the held-out fraction (1/3: 3 folds)
DEFAULT_INNER_FOLDS = 3
DEFAULT_VAL_SPLIT = 1.0 / DEFAULT_INNER_FOLDS


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
    #: the best trained epoch against the start on validation (``label_comparison`` as a dict)
    selection: dict | None = None
    #: the inner folds of the selection: each one's training and (unseen) validation labels and sizes
    inner: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out_path": self.out_path, "best_epoch": self.best_epoch, "best_val_map": self.best_val_map,
            "val_map_image_only": self.val_map_image_only, "val_map_untrained": self.val_map_untrained,
            "n_train_images": self.n_train_images, "n_val_images": self.n_val_images,
            "train_labels": self.train_labels, "val_labels": self.val_labels, "head_config": self.head_config,
            "loss_config": self.loss_config, "stopped_early": self.stopped_early, "seconds": round(self.seconds, 2),
            "notes": self.notes, "selection": self.selection, "inner": self.inner, "epochs": [e.to_dict() for e in self.epochs],
        }

    def lines(self) -> list[str]:
        out = [f"{len(self.train_labels)} labels, {self.n_train_images} images"]
        if self.inner:
            out.append(f"selection: {len(self.inner)} inner folds over the labels; each label validated once on a head that "
                       f"never saw it ({self.n_val_images} validation queries pooled)")
        for e in self.epochs:
            v = "n/a" if e.val_map is None else f"{e.val_map:.4f}" + (" (pooled)" if self.inner else "")
            out.append(f"epoch {e.epoch:3d}  loss {e.loss:.4f}  val mAP {v}  ({e.seconds:.1f} s)")
        if self.best_val_map is not None:
            out.append(f"kept epoch {self.best_epoch} (0 = the start: exactly the α-fused mode): val mAP {self.best_val_map:.4f} "
                       f"(image-only {self.val_map_image_only:.4f}, α-fused {self.val_map_untrained:.4f})")
        if self.selection:
            c = self.selection
            out.append(f"best trained epoch vs α-fused on validation: {c['mean_diff']:+.4f} mAP, 95% CI "
                       f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] over {c['n_pairs']} queries, labels resampled "
                       f"({c['labels_better']} of {c['n_labels']} labels better, {c['labels_worse']} worse)")
        if self.inner and self.best_epoch:
            out.append(f"the saved head was trained on all {len(self.train_labels)} labels for {self.best_epoch} epochs")
        out.extend(self.notes)
        if self.out_path:
            out.append(f"saved {self.out_path}")
        return out


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
    #: paired comparison (val APs) of the best trained epoch against the start, as a dict (``label_comparison``)
    selection: dict | None = None
    #: ``fit_cv``: each inner fold's labels and sizes; validation queries pooled over the inner folds
    inner: list[dict] = field(default_factory=list)
    n_val: int = 0
    val_map_image_only: float | None = None

    def trained_head(self):
        """A copy of the head with the best trained epoch's weights (for the ablation)."""
        import copy

        h = copy.deepcopy(self.head)
        if self.trained_state is not None:
            h.load_state_dict(self.trained_state)
        h.eval()
        return h


class _Run:
    """One head in training: its optimiser, schedule and data, one epoch at a time, and its validation APs."""

    def __init__(self, train: FeatureSet, train_labels, val: FeatureSet | None, val_labels, head_cfg, loss_cfg, epochs: int,
                 batch_size: int, lr: float, weight_decay: float, seed: int, val_distractors: bool, closed_set: bool):
        import torch

        from .head import FusionHead, FusionLoss

        seed_everything(seed)
        self.train, self.train_labels = train, list(train_labels)
        self.val, self.val_labels = val, None if val_labels is None else list(val_labels)
        self.val_distractors, self.closed_set, self.batch_size = val_distractors, closed_set, batch_size
        label_names = sorted(set(self.train_labels))
        label_index = {lab: i for i, lab in enumerate(label_names)}
        box_names = sorted({lab for labs in train.box_labels for lab in labs}) if head_cfg.use_boxes else []
        box_vocab = {lab: i for i, lab in enumerate(box_names)}
        self.head = head = FusionHead(head_cfg)
        self.crit = crit = FusionLoss(head, len(label_names), len(box_names), loss_cfg)
        data = _tensors(train, self.train_labels, label_index, box_vocab)
        if loss_cfg.lambda_fused > 0 and head_cfg.base != "none":
            bq, bg = head.base_pair(train.image, train.caption, train.weight)
            data["base_q"], data["base_g"] = torch.from_numpy(np.ascontiguousarray(bq)), torch.from_numpy(np.ascontiguousarray(bg))
        self.data = data
        self.n = n = len(train)
        steps_per_epoch = max(1, math.ceil(n / batch_size))
        gate = [head.gate, head.block_scale]
        rest = [p for p in crit.parameters() if p.requires_grad and p is not head.gate and p is not head.block_scale]
        # the gate and block scales are a few scalars that have to travel from 0 to a useful mix within a few dozen steps
        self.opt = opt = torch.optim.AdamW([{"params": rest}, {"params": gate, "lr": lr * SCALAR_LR_FACTOR}], lr=lr,
                                           weight_decay=weight_decay, foreach=True)
        total_steps = epochs * steps_per_epoch
        warm = min(steps_per_epoch, max(1, total_steps // 20))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, total_steps)))))
        self.gen = torch.Generator().manual_seed(seed)

    def state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def train_epoch(self, epoch: int, cancel: threading.Event | None) -> tuple[float, dict[str, float], int]:
        """One pass over the training images: ``(summed loss, summed loss parts, images)`` (sums weighted by batch size)."""
        import torch

        self.crit.train()
        n, bs = self.n, self.batch_size
        perm = torch.randperm(n, generator=self.gen)
        tot, parts_sum, count = 0.0, {}, 0
        for s in range(0, n, bs):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"training cancelled in epoch {epoch}; nothing was saved")
            idx = perm[s : s + bs]
            if idx.numel() < 2 and n >= 2:
                continue  # a batch of one has nothing to contrast
            batch = {k: v[idx] for k, v in self.data.items()}
            loss, parts = self.crit(batch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.crit.parameters(), 5.0)
            self.opt.step()
            self.sched.step()
            m = idx.numel()
            tot += float(loss.detach()) * m
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * m
            count += m
        return tot, parts_sum, count

    def validate(self, image_only: bool = False) -> np.ndarray | None:
        """Per-query AP of the validation images (None without validation); ``image_only``: of the
        stored image vectors instead of the head's vectors, on the same validation task."""
        val, head = self.val, self.head
        if val is None or not len(val):
            return None
        if image_only:
            vq = vg = val.image
            train_g = lambda: self.train.image  # noqa: E731
        else:
            vq, vg = embed_pair(head, val)
            train_g = lambda: embed_features(head, self.train)  # noqa: E731
        val_l = self.val_labels
        if self.closed_set:
            from ..evaluation import LabelRelevance, evaluate_embeddings

            nv, nt = len(val), len(self.train)
            rel = LabelRelevance(val_l, val_l + self.train_labels, np.arange(nv), np.arange(nv + nt))
            return evaluate_embeddings(vq, np.concatenate([vg, train_g()]), rel, mode="val", ks=(1,)).ap
        if not self.val_distractors:
            return loo_ap(vq, vg, val_l)
        # unseen-label queries against their own images plus the training images as distractors:
        # a head that folds new classes onto the training classes loses here
        return distractor_ap(vq, vg, val_l, train_g())


def _with_threads(threads: int | None, fn):
    import torch

    if not threads:
        return fn()
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


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
    """Train one head on in-memory features; with ``val`` given, select on that one validation set.

    (``train_fusion`` and the k-fold experiment select with ``fit_cv``, over inner folds; this
    single-split fit serves the benchmark and direct use.) The untrained head (epoch 0: gate 0,
    so exactly the base mode, α-fusion by default) is the start point. ``keep_initial`` (on
    unless the base is ``none``): a trained epoch replaces it only if its validation mAP is
    higher and, with ``require_ci``, the label-resampled bootstrap 95% CI of the gain over the
    start is above zero (``label_comparison``); so the returned head is never worse than
    α-fusion on the validation labels. ``val_distractors``: validation queries are ranked
    against the validation images plus the training images (unlabelled distractors; with
    ``closed_set``, validation images share the training labels, so training images of the same
    label count as relevant). ``threads``: torch intra-op threads while fitting (restored
    after); None leaves the setting alone.
    """
    if epochs < 1:
        raise ExplorerError(f"epochs must be at least 1, got {epochs}")

    def go() -> FitResult:
        run = _Run(train, train_labels, val, val_labels, head_cfg, loss_cfg, epochs, batch_size, lr, weight_decay, seed,
                   val_distractors, closed_set)
        emit = progress or (lambda p: None)
        ap0 = run.validate()
        untrained = None if ap0 is None else float(np.nanmean(ap0))
        start_state = run.state()
        history: list[EpochStats] = []
        tr_state, tr_epoch, tr_map, tr_ap = None, 0, None, None
        since_best = 0
        stopped_early = False
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            tot, parts_sum, count = run.train_epoch(epoch, cancel)
            ap = run.validate()
            vmap = None if ap is None else float(np.nanmean(ap))
            st = EpochStats(epoch, tot / max(count, 1), {k: v / max(count, 1) for k, v in parts_sum.items()}, vmap, time.perf_counter() - t0)
            history.append(st)
            emit(TrainProgress("training", epoch, epochs, epoch, epochs, st.loss, vmap, f"epoch {epoch}/{epochs}"))
            if vmap is None:
                continue
            if tr_map is None or vmap > tr_map + 1e-6:
                tr_map, tr_epoch, tr_ap, since_best = vmap, epoch, ap, 0
                tr_state = run.state()
            else:
                since_best += 1
                if patience and since_best >= patience:
                    stopped_early = epoch < epochs
                    break
        head = run.head
        selection = None
        if ap0 is None:  # no validation: the last epoch
            last_state = run.state()
            best_epoch, best_map, tr_state, tr_epoch = len(history), None, last_state, len(history)
        else:
            best_epoch, best_map = tr_epoch, tr_map
            head.load_state_dict(tr_state)
            if keep_initial and head_cfg.base != "none":
                selection = label_comparison(ap0, tr_ap, run.val_labels, SELECT_BOOT, seed)
                if not _justified(tr_map, untrained, selection, require_ci):
                    best_epoch, best_map = 0, untrained
                    head.load_state_dict(start_state)
        head.eval()
        return FitResult(head, history, best_epoch, best_map, untrained, stopped_early, tr_epoch, tr_map, tr_state, selection)

    return _with_threads(threads, go)


def fit_cv(
    fs: FeatureSet,
    labels: Sequence[str],
    head_cfg,
    loss_cfg,
    inner_folds: int = DEFAULT_INNER_FOLDS,
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
    refit_always: bool = False,
) -> FitResult:
    """Train a head on ``fs`` and decide by **inner folds** whether training helps at all.

    Open set: the labels are dealt into ``inner_folds`` groups (``fold_rows``); inner fold *k*
    trains a head on the other groups' labels and validates on group *k*'s labels, which it
    never saw. The inner heads train in lockstep, and after every epoch their validation APs
    are pooled, so every label is validated exactly once and early stopping and the choice of
    the epoch count ``E`` look at all labels, not at two. Closed set: the same over images
    (stratified), every label in every fold.

    The start (gate 0: exactly the α-fused mode) is kept unless the pooled validation gain of
    epoch ``E`` over the start has a **label-resampled** bootstrap 95% CI above zero
    (``label_comparison``) — a gain that holds across labels, not one carried by the queries of
    one or two labels. Only then is a head trained on **all** of ``fs`` for ``E`` epochs (same
    schedule) and returned; otherwise the untrained start is. ``refit_always`` trains that
    head even when it is not kept (``FitResult.trained_head``, for the ablation).

    ``FitResult`` figures (``history[].val_map``, ``val_map_untrained``, ``trained_val_map``)
    are pooled inner-validation mAPs; ``inner`` lists each inner fold's labels and sizes.
    """
    if epochs < 1:
        raise ExplorerError(f"epochs must be at least 1, got {epochs}")
    labels = list(labels)
    usable = usable_labels(labels)
    if len(usable) < MIN_CLASSES:
        raise ExplorerError(f"too few labels to train on: need at least {MIN_CLASSES} labels with {MIN_IMAGES_PER_CLASS}+ images each, "
                            f"found {len(usable)} ({', '.join(usable) or 'none'})")
    k_in = int(inner_folds) if closed_set else min(int(inner_folds), len(usable))
    if k_in < 2 or (not closed_set and len(usable) - math.ceil(len(usable) / k_in) < MIN_CLASSES):
        raise ExplorerError(f"too few labels for a validation split by label: {len(usable)} labels with {MIN_IMAGES_PER_CLASS}+ images "
                            f"and {inner_folds} inner folds; each inner fold needs {MIN_CLASSES} training labels plus unseen "
                            "validation labels (add labelled folders, or train without validation)")
    lab_arr = np.asarray(labels, object)
    keep = np.flatnonzero(np.isin(lab_arr, usable))
    groups = fold_rows(labels, k_in, seed, closed_set)

    def go() -> FitResult:
        emit = progress or (lambda p: None)
        runs: list[_Run] = []
        inner: list[dict] = []
        val_labels: list[str] = []
        for k, va in enumerate(groups):
            tr = np.setdiff1d(keep, va)
            tr_l, va_l = [labels[i] for i in tr.tolist()], [labels[i] for i in va.tolist()]
            runs.append(_Run(fs.subset(tr), tr_l, fs.subset(va), va_l, head_cfg, loss_cfg, epochs, batch_size, lr, weight_decay,
                             seed + 7919 * (k + 1), val_distractors, closed_set))
            inner.append({"train_labels": sorted(set(tr_l)), "val_labels": sorted(set(va_l)), "n_train": len(tr), "n_val": len(va)})
            val_labels.extend(va_l)

        def pooled() -> np.ndarray:
            return np.concatenate([r.validate() for r in runs])

        ap0 = pooled()
        untrained = float(np.nanmean(ap0))
        image_only = float(np.nanmean(np.concatenate([r.validate(image_only=True) for r in runs])))
        history: list[EpochStats] = []
        tr_epoch, tr_map, tr_ap = 0, None, None
        since_best = 0
        stopped_early = False
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            tot, parts_sum, count = 0.0, {}, 0
            for r in runs:
                t, p, c = r.train_epoch(epoch, cancel)
                tot += t
                count += c
                for key, v in p.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + v
            ap = pooled()
            vmap = float(np.nanmean(ap))
            st = EpochStats(epoch, tot / max(count, 1), {key: v / max(count, 1) for key, v in parts_sum.items()}, vmap,
                            time.perf_counter() - t0)
            history.append(st)
            emit(TrainProgress("training", epoch, epochs, epoch, epochs, st.loss, vmap, f"epoch {epoch}/{epochs} ({k_in} inner folds)"))
            if tr_map is None or vmap > tr_map + 1e-6:
                tr_map, tr_epoch, tr_ap, since_best = vmap, epoch, ap, 0
            else:
                since_best += 1
                if patience and since_best >= patience:
                    stopped_early = epoch < epochs
                    break
        selection = label_comparison(ap0, tr_ap, val_labels, SELECT_BOOT, seed)
        selection["inner_folds"] = k_in
        keep_start = keep_initial and head_cfg.base != "none"
        justified = not keep_start or _justified(tr_map, untrained, selection, require_ci)
        tr_state = None
        final = None
        if justified or refit_always:
            emit(TrainProgress("training", 0, tr_epoch, 0, tr_epoch, None, None, f"training on all {len(keep)} images for {tr_epoch} epochs"))
            final = _Run(fs.subset(keep), [labels[i] for i in keep.tolist()], None, None, head_cfg, loss_cfg, epochs, batch_size, lr,
                         weight_decay, seed, val_distractors, closed_set)
            for epoch in range(1, tr_epoch + 1):
                final.train_epoch(epoch, cancel)
            tr_state = final.state()
        if justified:
            head, best_epoch, best_map = final.head, tr_epoch, tr_map
        else:
            from .head import FusionHead

            seed_everything(seed)
            head, best_epoch, best_map = FusionHead(head_cfg), 0, untrained
        head.eval()
        res = FitResult(head, history, best_epoch, best_map, untrained, stopped_early, tr_epoch, tr_map, tr_state, selection)
        res.inner = inner
        res.n_val = len(val_labels)
        res.val_map_image_only = image_only
        return res

    return _with_threads(threads, go)


def train_fusion(
    library,
    gt_spec,
    out_path: str | os.PathLike | None,
    epochs: int = DEFAULT_EPOCHS,
    val_split: float = DEFAULT_VAL_SPLIT,
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
    *labels* each inner fold holds out for validation: ``round(1 / val_split)`` inner folds
    (default 1/3: 3; 0.2: 5), every label validated once on heads that never saw it (``fit_cv``); the saved
    head is the α-fused start unless the pooled validation gain holds across labels, and is
    otherwise trained on all labels for the selected number of epochs. ``val_split=0``: no
    validation, train all epochs on all labels. ``out_path=None`` trains without saving.
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
    usable = usable_labels(labels)
    if len(usable) < MIN_CLASSES:
        raise ExplorerError(f"too few labels to train on: need at least {MIN_CLASSES} labels with {MIN_IMAGES_PER_CLASS}+ images each, "
                            f"found {len(usable)} ({', '.join(usable) or 'none'})")
    rows = np.flatnonzero(np.isin(np.asarray(labels, object), usable))
    dropped = len(labels) - len(rows)
    if dropped:
        notes.append(f"{dropped} images of labels with fewer than {MIN_IMAGES_PER_CLASS} images are left out")
    fs = fs.subset(rows)
    labels = [labels[i] for i in rows.tolist()]
    head_cfg = make_head_config(library, boxes_on, use_caption, arch, max_boxes=max_boxes)
    loss_cfg = LossConfig(arcface=arcface, lambda_nce=lambda_nce, lambda_box=lambda_box, lambda_fused=lambda_fused)
    lr = DEFAULT_LR if lr is None else lr
    if val_split > 0:
        res = fit_cv(fs, labels, head_cfg, loss_cfg, inner_folds_for(val_split), epochs, batch_size, lr, DEFAULT_WEIGHT_DECAY,
                     patience, seed, progress, cancel, threads=threads)
        val_labs = sorted({lab for f in res.inner for lab in f["val_labels"]})
        n_val, val_img = res.n_val, res.val_map_image_only
        if res.best_epoch == 0:
            notes.append("no trained epoch beat the start (the α-fused mode) on the inner-fold validation labels with a "
                         "label-resampled CI above zero, so the saved head is the start: it ranks exactly like the α-fused mode")
    else:
        res = fit(fs, labels, None, None, head_cfg, loss_cfg, epochs, batch_size, lr, DEFAULT_WEIGHT_DECAY, patience, seed, progress,
                  cancel, threads=threads)
        val_labs, n_val, val_img = [], 0, None
    saved = None
    report = TrainReport(
        out_path=None, epochs=res.history, best_epoch=res.best_epoch, best_val_map=res.best_val_map,
        val_map_image_only=val_img, val_map_untrained=res.val_map_untrained, n_train_images=len(fs),
        n_val_images=n_val, train_labels=usable, val_labels=val_labs, inner=res.inner,
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


__all__ = ["TrainProgress", "EpochStats", "TrainReport", "FitResult", "train_fusion", "fit", "fit_cv", "fold_rows", "label_comparison",
           "inner_folds_for", "labelled_features",
           "split_labels", "embed_features", "embed_pair", "residuals", "loo_ap", "loo_map", "make_head_config", "seed_everything"]
