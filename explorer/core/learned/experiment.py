"""K-fold proof of learned fusion (open-set over labels, or closed-set over images), with an ablation.

    python -m explorer.core.learned.experiment --library DIR --gt folders:DIR [--folds 5] [--closed-set]
                                               [--ablation] [--json out.json]

**Open set** (default): the usable labels are shuffled (seeded) and dealt into ``folds``
groups. Fold *f* tests on the images of group *f*; the other labels go to ``train.fit_cv``,
exactly as ``explorer train-fusion`` does with all labels: inner folds over them
(``round(1 / val_split)``) decide whether training beats the α-fused start across labels and
for how many epochs, and the head is then trained on all of them. So test labels are never
seen in training or in model selection.

**Closed set** (``closed_set=True``): the images of every label are dealt into ``folds``
groups (stratified); fold *f* tests on group *f*, and ``fit_cv`` runs on the rest with inner
folds over images (stratified). Same labels, new images: a user who labelled part of a
catalogue and queries new photos of the same products.

In both, each test image is a query against **every** image of the set (leave-one-out; same
label = relevant), so every image is a query exactly once over the folds and the image-only
and α-fused figures pooled over the folds equal a plain evaluation of the whole set. Per
fold and pooled the report gives mAP of ``image`` (stored image vectors), ``alpha-fused``
(the exact fused mode of ``explorer.core.evaluate`` at the head's α, caption weights
included) and ``learned`` (the head as saved: the start, α-fusion, unless validation
justified a trained epoch), with paired bootstrap 95% CIs (``evaluation.paired_comparison``).

The ablation switches one thing off per row and reports the head as selected and the best
*trained* epoch (selection bypassed, so that every switch has an effect).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ExplorerError
from .head import LossConfig, fused_pair
from .train import (DEFAULT_EPOCHS, DEFAULT_PATIENCE, DEFAULT_VAL_SPLIT, MIN_IMAGES_PER_CLASS, embed_pair, fit_cv, fold_rows, inner_folds_for,
                    labelled_features, make_head_config, resolve_boxes, usable_labels)

#: (name, head overrides, loss overrides); "full" first.
VARIANTS: list[tuple[str, dict, dict]] = [
    ("full", {}, {}),
    ("no fused contrastive", {}, {"lambda_fused": 0.0}),
    ("no ArcFace", {}, {"arcface": False}),
    ("no InfoNCE", {}, {"lambda_nce": 0.0}),
    ("no box CE", {}, {"lambda_box": 0.0}),
    ("no box tokens", {"use_boxes": False}, {"lambda_box": 0.0}),
    ("no caption token", {"use_caption": False}, {}),
    ("no token dropout", {"token_dropout": 0.0}, {}),
    ("start image-only", {"base": "image"}, {}),
    ("no start (residual only)", {"base": "none"}, {}),
]


@dataclass
class FoldResult:
    fold: int
    test_labels: list[str]
    train_labels: list[str]
    val_labels: list[str]
    n_train: int
    n_val: int
    n_test: int
    #: mode or variant key -> per-query AP of this fold's test images
    ap: dict[str, np.ndarray]
    kept_epoch: dict[str, int] = field(default_factory=dict)
    trained_epoch: dict[str, int] = field(default_factory=dict)
    val_map: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: variant -> the inner folds of its selection (labels and sizes)
    inner: dict[str, list] = field(default_factory=dict)


@dataclass
class KFoldReport:
    folds: list[FoldResult]
    closed_set: bool
    variants: list[str]
    n_boot: int
    n_images: int
    n_labels: int
    notes: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        return "closed-set (same labels, new images)" if self.closed_set else "open-set (test labels never seen in training or selection)"

    def pooled(self, name: str) -> np.ndarray:
        return np.concatenate([f.ap[name] for f in self.folds])

    def map(self, name: str, fold: FoldResult | None = None) -> float:
        a = self.pooled(name) if fold is None else fold.ap[name]
        return float(np.nanmean(a))

    def compare(self, a: str, b: str, fold: FoldResult | None = None):
        """Paired comparison of ``b`` against ``a`` (b - a), pooled or within one fold."""
        from ..evaluation import paired_comparison

        x = self.pooled(a) if fold is None else fold.ap[a]
        y = self.pooled(b) if fold is None else fold.ap[b]
        return paired_comparison(x, y, n_boot=self.n_boot, seed=0, name_a=a, name_b=b)

    @staticmethod
    def _delta(c) -> str:
        return f"{c.mean_diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"

    def table(self) -> list[str]:
        """The k-fold result table (markdown): one row per fold and the pooled row."""
        out = [f"{len(self.folds)}-fold {self.protocol}: {self.n_images} images, {self.n_labels} labels; "
               "each test image is a query against all images (leave-one-out)", "",
               "| fold | test labels | queries | image | α-fused | learned (kept epoch) | learned − α-fused [95% CI] | learned − image [95% CI] |",
               "|---|---|---|---|---|---|---|---|"]
        for f in self.folds:
            labs = ", ".join(f.test_labels) if len(f.test_labels) <= 3 else f"{len(f.test_labels)} labels"
            out.append(f"| {f.fold} | {labs} | {f.n_test} | {self.map('image', f):.4f} | {self.map('alpha-fused', f):.4f} | "
                       f"{self.map('learned', f):.4f} ({f.kept_epoch.get('learned', 0)}) | "
                       f"{self._delta(self.compare('alpha-fused', 'learned', f))} | {self._delta(self.compare('image', 'learned', f))} |")
        n = sum(f.n_test for f in self.folds)
        out.append(f"| pooled | all | {n} | {self.map('image'):.4f} | {self.map('alpha-fused'):.4f} | {self.map('learned'):.4f} | "
                   f"{self._delta(self.compare('alpha-fused', 'learned'))} | {self._delta(self.compare('image', 'learned'))} |")
        c = self.compare("image", "alpha-fused")
        out.append("")
        out.append(f"α-fused − image pooled: {self._delta(c)}")
        return out

    def ablation_table(self) -> list[str]:
        if len(self.variants) <= 1:
            return []
        out = ["| variant | learned as selected | − α-fused [95% CI] | best trained epoch | − α-fused [95% CI] | − full trained [95% CI] |",
               "|---|---|---|---|---|---|"]
        for v in self.variants:
            sel, tr = f"{v} (selected)", f"{v} (trained)"
            full_tr = "—" if v == "full" else self._delta(self.compare("full (trained)", tr))
            out.append(f"| {v} | {self.map(sel):.4f} | {self._delta(self.compare('alpha-fused', sel))} | {self.map(tr):.4f} | "
                       f"{self._delta(self.compare('alpha-fused', tr))} | {full_tr} |")
        return out

    def markdown(self) -> str:
        out = self.table()
        ab = self.ablation_table()
        if ab:
            out += ["", "Ablation (same folds and seeds; 'selected' = the head as saved, 'trained' = the best trained "
                    "epoch on validation, selection bypassed):", ""] + ab
        if self.notes:
            out.append("")
            out.extend(f"- {n}" for n in self.notes)
        return "\n".join(out)

    def to_dict(self) -> dict:
        names = list(self.folds[0].ap)
        cmp = {}
        for name in names:
            for base in ("image", "alpha-fused"):
                if name != base:
                    cmp[f"{base}_vs_{name}"] = self.compare(base, name).to_dict()
        return {
            "protocol": "closed-set" if self.closed_set else "open-set", "n_images": self.n_images, "n_labels": self.n_labels,
            "maps": {n: self.map(n) for n in names}, "comparisons": cmp,
            "folds": [{"fold": f.fold, "test_labels": f.test_labels, "train_labels": f.train_labels, "val_labels": f.val_labels,
                       "n_train": f.n_train, "n_val": f.n_val, "n_test": f.n_test, "maps": {n: float(np.nanmean(a)) for n, a in f.ap.items()},
                       "learned_vs_alpha": self.compare("alpha-fused", "learned", f).to_dict(),
                       "kept_epoch": f.kept_epoch, "trained_epoch": f.trained_epoch, "val_map": f.val_map, "seconds": f.seconds,
                       "inner": f.inner}
                      for f in self.folds],
            "notes": self.notes,
        }


def _ap(q: np.ndarray, g: np.ndarray, q_rows: np.ndarray, labels: list[str]) -> np.ndarray:
    """Per-query AP of ``q[q_rows]`` against all of ``g`` (same images as ``q``), itself left out."""
    from ..evaluation import LabelRelevance, evaluate_embeddings

    rel = LabelRelevance([labels[i] for i in q_rows.tolist()], labels, q_rows, np.arange(len(labels)))
    return evaluate_embeddings(q[q_rows], g, rel, ks=(1,)).ap


def run_kfold(
    library,
    gt,
    folds: int = 5,
    closed_set: bool = False,
    val_split: float = DEFAULT_VAL_SPLIT,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    patience: int = DEFAULT_PATIENCE,
    ablation: bool = False,
    variants: list[str] | None = None,
    n_boot: int = 10000,
    log: Callable[[str], None] | None = None,
    use_boxes="auto",
    head_kw: dict | None = None,
    loss_kw: dict | None = None,
    features=None,
    **fit_kw,
) -> KFoldReport:
    """Run the k-fold protocol (module docstring) and return its report.

    ``head_kw`` / ``loss_kw`` override the head and loss configuration of every run (e.g. the
    CLI's switches); ``features``: a ready ``(FeatureSet, labels, notes)`` to skip loading.
    """
    say = log or (lambda s: None)
    if folds < 2:
        raise ExplorerError(f"k-fold needs at least 2 folds, got {folds}")
    boxes_on, note = resolve_boxes(library, use_boxes)
    fs, labels, notes = features if features is not None else labelled_features(library, gt, boxes_on)
    notes = list(notes)
    if note:
        notes.insert(0, note)
    chosen = [v for v in VARIANTS if v[0] == "full" or (ablation and (variants is None or v[0] in variants))]
    if not boxes_on:
        chosen = [v for v in chosen if v[0] not in ("no box CE", "no box tokens")]
    base_head = {"use_boxes": boxes_on, "use_caption": True, "arch": "attention"}
    base_head.update(head_kw or {})
    probe = make_head_config(library, **{k: base_head[k] for k in ("use_boxes", "use_caption", "arch")},
                             **{k: v for k, v in base_head.items() if k not in ("use_boxes", "use_caption", "arch")})
    usable = usable_labels(labels)
    keep = np.flatnonzero(np.isin(np.asarray(labels, object), usable))
    if len(keep) < len(labels):
        notes.append(f"{len(labels) - len(keep)} images of labels with fewer than {MIN_IMAGES_PER_CLASS} images are left out")
        fs = fs.subset(keep)
        labels = [labels[i] for i in keep.tolist()]
    # image-only and the exact α-fused pair, once for the whole set (the gallery of every fold)
    fq, fg = fused_pair(fs.image, fs.caption, fs.weight, probe.alpha)
    tests = fold_rows(labels, folds, seed, closed_set)
    lab_arr = np.asarray(labels, object)
    results: list[FoldResult] = []
    for k, te in enumerate(tests):
        side = np.setdiff1d(np.arange(len(labels)), te)
        if not closed_set:  # open set: no image of a test label anywhere near training or selection
            side = side[~np.isin(lab_arr[side], lab_arr[te])]
        te_labs = sorted(set(lab_arr[te].tolist()))
        side_labs = sorted(set(lab_arr[side].tolist()))
        ap = {"image": _ap(fs.image, fs.image, te, labels), "alpha-fused": _ap(fq, fg, te, labels)}
        res = FoldResult(k + 1, te_labs, side_labs, side_labs, len(side), 0, len(te), ap)
        say(f"fold {k + 1}/{folds}: train+select on {len(side)} images / {len(side_labs)} labels, test {len(te)} images; "
            f"image {np.nanmean(ap['image']):.4f}, α-fused {np.nanmean(ap['alpha-fused']):.4f}")
        side_fs = fs.subset(side)
        side_l = [labels[i] for i in side.tolist()]
        for name, head_over, loss_over in chosen:
            t0 = time.perf_counter()
            hk = dict(base_head)
            hk.update(head_over)
            cfg = make_head_config(library, hk.pop("use_boxes"), hk.pop("use_caption"), hk.pop("arch"), **hk)
            lk = dict(loss_kw or {})
            lk.update(loss_over)
            r = fit_cv(side_fs, side_l, cfg, LossConfig(**lk), inner_folds_for(val_split), epochs=epochs, patience=patience,
                       seed=seed + k, closed_set=closed_set, refit_always=ablation, **fit_kw)
            res.n_val = r.n_val
            res.inner[name] = r.inner
            key = "learned" if name == "full" else f"{name} (selected)"
            q, g = embed_pair(r.head, fs)
            ap[key] = _ap(q, g, te, labels)
            if name == "full":
                ap["full (selected)"] = ap[key]
            res.kept_epoch[name if name != "full" else "learned"] = r.best_epoch
            res.trained_epoch[name] = r.trained_epoch
            res.val_map[name] = {"start": r.val_map_untrained, "kept": r.best_val_map, "trained": r.trained_val_map,
                                 "image": r.val_map_image_only, "selection": r.selection}
            if ablation:
                tq, tg = embed_pair(r.trained_head(), fs)
                ap[f"{name} (trained)"] = _ap(tq, tg, te, labels)
            res.seconds[name] = time.perf_counter() - t0
            c = r.selection or {}
            ci = f" CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] {c['labels_better']}/{c['n_labels']} labels better" if c else ""
            say(f"  {name:24s} pooled val start {r.val_map_untrained or float('nan'):.4f} trained {r.trained_val_map or float('nan'):.4f} "
                f"(epoch {r.trained_epoch}{ci}) kept {r.best_epoch}; test {np.nanmean(ap[key]):.4f} ({res.seconds[name]:.1f} s)")
        results.append(res)
    return KFoldReport(results, closed_set, [v[0] for v in chosen], n_boot, len(labels), len(usable), notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m explorer.core.learned.experiment", description=__doc__.splitlines()[0])
    ap.add_argument("--library", required=True)
    ap.add_argument("--gt", required=True, help="ground truth spec, e.g. folders:DIR")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--closed-set", action="store_true")
    ap.add_argument("--val-split", type=float, default=DEFAULT_VAL_SPLIT,
                    help="fraction of labels each inner fold of the selection holds out (default 1/3: 3 inner folds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--patience", type=int, default=DEFAULT_PATIENCE)
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--variants", help="comma-separated ablation rows (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    from ..config import Settings
    from ..library import Library

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    try:
        lib = Library(args.library, Settings.load({"library": args.library}))
        t0 = time.perf_counter()
        rep = run_kfold(lib, args.gt, args.folds, args.closed_set, args.val_split, args.seed, args.epochs, args.patience,
                        ablation=args.ablation, variants=args.variants.split(",") if args.variants else None, log=log,
                        threads=args.threads)
        print(rep.markdown())
        log(f"experiment took {time.perf_counter() - t0:.0f} s")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rep.to_dict(), f, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
