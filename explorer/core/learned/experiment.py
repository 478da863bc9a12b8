"""Open-set proof of learned fusion, with an ablation of every loss term.

    python -m explorer.core.learned.experiment --library DIR --gt folders:DIR [--splits 3] [--json out.json]
    python -m explorer.core.learned.experiment --library DIR --make-fashion-mnist GALLERY --per-class 200

The labels of the ground truth are split into *test* labels (``test_fraction`` of them) and
train-side labels; the train side is split again by label into train and validation (early
stopping). So every test image belongs to a class the head never saw. On the test images
(leave-one-out: each is a query against all the others) the experiment reports mAP of

* ``image``: the stored image vectors (image-only mode),
* ``alpha-fused``: ``fusion.fuse_query`` / ``fusion.fuse_gallery`` at ``DEFAULT_ALPHA``,
* ``learned``: the trained head,

with paired bootstrap 95% CIs and sign tests (``evaluation.paired_comparison``), and an
ablation table where each loss term or input is switched off in turn. With ``splits`` > 1
the label split is redrawn with seeds ``seed .. seed + splits - 1`` and per-query APs of all
splits are pooled for the comparisons (each query is paired with itself within its split).
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

from .. import fusion
from ..errors import ExplorerError
from .head import LossConfig
from .train import (DEFAULT_EPOCHS, DEFAULT_PATIENCE, embed_features, fit, labelled_features, make_head_config,
                    resolve_boxes, split_labels)

#: (name, head overrides, loss overrides); "full" first.
VARIANTS: list[tuple[str, dict, dict]] = [
    ("full", {}, {}),
    ("no ArcFace", {}, {"arcface": False}),
    ("no InfoNCE", {}, {"lambda_nce": 0.0}),
    ("no box CE", {}, {"lambda_box": 0.0}),
    ("no box tokens", {"use_boxes": False}, {"lambda_box": 0.0}),
    ("no caption token", {"use_caption": False}, {}),
    ("MLP head", {"arch": "mlp"}, {}),
    ("no PCA skip", {"skip": False}, {}),
]


@dataclass
class SplitResult:
    seed: int
    train_labels: list[str]
    val_labels: list[str]
    test_labels: list[str]
    n_train: int
    n_val: int
    n_test: int
    ap: dict[str, np.ndarray]  # mode or variant name -> per-query AP on the test images
    val_map: dict[str, float | None]
    best_epoch: dict[str, int]
    seconds: dict[str, float]


@dataclass
class ExperimentReport:
    splits: list[SplitResult]
    variants: list[str]
    n_boot: int
    notes: list[str] = field(default_factory=list)

    def pooled(self, name: str) -> np.ndarray:
        return np.concatenate([s.ap[name] for s in self.splits])

    def map(self, name: str) -> float:
        return float(np.nanmean(self.pooled(name)))

    def compare(self, a: str, b: str):
        from ..evaluation import paired_comparison

        return paired_comparison(self.pooled(a), self.pooled(b), n_boot=self.n_boot, seed=0, name_a=a, name_b=b)

    @staticmethod
    def _delta(c) -> str:
        return f"{c.mean_diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"

    def markdown(self) -> str:
        out = []
        n_q = sum(s.n_test for s in self.splits)
        out.append(f"Open-set test: {len(self.splits)} label split(s), {n_q} test queries in all "
                   f"(leave-one-out among the test images; test labels never seen in training).")
        out.append("")
        for s in self.splits:
            out.append(f"- split seed {s.seed}: train {s.n_train} images / {len(s.train_labels)} labels ({', '.join(s.train_labels)}); "
                       f"val {s.n_val} / {len(s.val_labels)} ({', '.join(s.val_labels)}); "
                       f"test {s.n_test} / {len(s.test_labels)} ({', '.join(s.test_labels)})")
        out.append("")
        out.append("| mode | test mAP | Δ vs image-only [95% CI] | sign test p (W/L) | Δ vs α-fused [95% CI] | sign test p (W/L) |")
        out.append("|---|---|---|---|---|---|")
        for name in ("image", "alpha-fused", "learned", "full (trained)"):
            if name not in self.splits[0].ap:
                continue
            cells = [name, f"{self.map(name):.4f}"]
            for base in ("image", "alpha-fused"):
                if name == base or (name, base) == ("image", "alpha-fused"):
                    cells += ["—", "—"]
                else:
                    c = self.compare(base, name)
                    cells += [self._delta(c), f"{c.p_value:.2g} ({c.wins}/{c.losses})"]
            out.append("| " + " | ".join(cells) + " |")
        if len(self.variants) > 1:
            out.append("")
            out.append("Ablation (trained epochs only: early stopping picks the best epoch >= 1 on validation; "
                       "each row switches one thing off; same splits, seeds and epochs):")
            out.append("")
            out.append("| variant | val mAP | best epoch | test mAP | Δ vs image-only [95% CI] | Δ vs full [95% CI] | p vs full |")
            out.append("|---|---|---|---|---|---|---|")
            for v in self.variants:
                key = "full (trained)" if v == "full" else v
                vals = [s.val_map.get(key) for s in self.splits]
                vm = "/".join("n/a" if x is None else f"{x:.3f}" for x in vals)
                be = "/".join(str(s.best_epoch.get(key, "")) for s in self.splits)
                ci = self.compare("image", key)
                if key == "full (trained)":
                    full, p = "—", "—"
                else:
                    cf = self.compare("full (trained)", key)
                    full, p = self._delta(cf), f"{cf.p_value:.2g}"
                out.append(f"| {v} | {vm} | {be} | {self.map(key):.4f} | {self._delta(ci)} | {full} | {p} |")
        if self.notes:
            out.append("")
            out.extend(f"- {n}" for n in self.notes)
        return "\n".join(out)

    def to_dict(self) -> dict:
        names = ["image", "alpha-fused", "learned", "full (trained)"] + [v for v in self.variants if v != "full"]
        return {
            "maps": {n: self.map(n) for n in names},
            "comparisons": {f"{a}_vs_{b}": self.compare(a, b).to_dict() for a, b in
                            [("image", "learned"), ("alpha-fused", "learned"), ("image", "alpha-fused")]
                            + [("full (trained)", v) for v in names[4:]]},
            "splits": [{"seed": s.seed, "train_labels": s.train_labels, "val_labels": s.val_labels, "test_labels": s.test_labels,
                        "n_train": s.n_train, "n_val": s.n_val, "n_test": s.n_test, "val_map": s.val_map,
                        "best_epoch": s.best_epoch, "seconds": s.seconds} for s in self.splits],
            "notes": self.notes,
        }


def _loo_ap(q: np.ndarray, g: np.ndarray, labels: list[str]) -> np.ndarray:
    from ..evaluation import LabelRelevance, evaluate_embeddings

    return evaluate_embeddings(q, g, LabelRelevance.leave_one_out(labels), ks=(1,)).ap


def run_experiment(
    library,
    gt,
    test_fraction: float = 0.4,
    val_split: float = 0.2,
    seed: int = 0,
    splits: int = 1,
    epochs: int = DEFAULT_EPOCHS,
    patience: int = DEFAULT_PATIENCE,
    ablation: bool = True,
    variants: list[str] | None = None,
    n_boot: int = 10000,
    log: Callable[[str], None] | None = None,
    **fit_kw,
) -> ExperimentReport:
    say = log or (lambda s: None)
    boxes_on, note = resolve_boxes(library, "auto")
    fs, labels, notes = labelled_features(library, gt, boxes_on)
    if note:
        notes.insert(0, note)
    chosen = [v for v in VARIANTS if (ablation or v[0] == "full") and (variants is None or v[0] in variants or v[0] == "full")]
    if not boxes_on:
        chosen = [v for v in chosen if v[0] not in ("no box CE", "no box tokens")]
    lab_arr = np.asarray(labels, object)
    shared = library.shared_space
    results = []
    for k in range(splits):
        sd = seed + k
        side, test_labs = split_labels(labels, test_fraction, sd, what="test")
        side_rows = np.flatnonzero(np.isin(lab_arr, side))
        tr_labs, va_labs = split_labels([labels[i] for i in side_rows], val_split, sd + 1000)
        tr = np.flatnonzero(np.isin(lab_arr, tr_labs))
        va = np.flatnonzero(np.isin(lab_arr, va_labs))
        te = np.flatnonzero(np.isin(lab_arr, test_labs))
        test = fs.subset(te)
        te_l = [labels[i] for i in te]
        ap = {"image": _loo_ap(test.image, test.image, te_l)}
        g = fusion.fuse_gallery(test.image, test.caption, fusion.DEFAULT_ALPHA, test.weight, shared)
        q = np.stack([fusion.fuse_query(test.image[i], test.caption[i], fusion.DEFAULT_ALPHA, shared) for i in range(len(test))])
        ap["alpha-fused"] = _loo_ap(q, g, te_l)
        res = SplitResult(sd, tr_labs, va_labs, test_labs, len(tr), len(va), len(te), ap, {}, {}, {})
        say(f"split {sd}: train {len(tr)} / val {len(va)} / test {len(te)} images; "
            f"image mAP {np.nanmean(ap['image']):.4f}, alpha-fused {np.nanmean(ap['alpha-fused']):.4f}")
        runs = [("learned", {}, {}, True)] + [("full (trained)" if n == "full" else n, h, lo, False) for n, h, lo in chosen]
        for key, head_over, loss_over, keep_initial in runs:
            name = key
            t0 = time.perf_counter()
            hk = {"use_boxes": boxes_on, "use_caption": True, "arch": "attention"}
            hk.update(head_over)
            cfg = make_head_config(library, hk.pop("use_boxes"), hk.pop("use_caption"), hk.pop("arch"), **hk)
            loss = LossConfig(**loss_over)
            r = fit(fs.subset(tr), [labels[i] for i in tr], fs.subset(va), [labels[i] for i in va], cfg, loss,
                    epochs=epochs, patience=patience, seed=sd, keep_initial=keep_initial, **fit_kw)
            ap[key] = _loo_ap(*(2 * [embed_features(r.head, test)]), te_l)
            res.val_map[key], res.best_epoch[key] = r.best_val_map, r.best_epoch
            res.seconds[key] = time.perf_counter() - t0
            say(f"  {name:18s} val mAP {r.best_val_map or float('nan'):.4f} (epoch {r.best_epoch}/{len(r.history)})  "
                f"test mAP {np.nanmean(ap[key]):.4f}  ({res.seconds[key]:.1f} s)")
        results.append(res)
    return ExperimentReport(results, [v[0] for v in chosen], n_boot, notes)


def _index_fashion_mnist(library, gallery_dir: str, per_class: int, log) -> str:
    from ..pipeline import Indexer
    from .fmnist import write_fashion_mnist

    gal = write_fashion_mnist(gallery_dir, per_class)
    log(f"wrote Fashion-MNIST gallery {gal} ({per_class} per class); indexing...")
    summary = Indexer(library).run([gal])
    log(f"indexed {summary.indexed}, unchanged {summary.unchanged}, failed {len(summary.failures)} in {summary.elapsed:.0f} s")
    return f"folders:{gal}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m explorer.core.learned.experiment", description=__doc__.splitlines()[0])
    ap.add_argument("--library", required=True)
    ap.add_argument("--gt", help="ground truth spec, e.g. folders:DIR")
    ap.add_argument("--make-fashion-mnist", metavar="GALLERY", help="write Fashion-MNIST PNGs to GALLERY, index them, use as --gt")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--test-fraction", type=float, default=0.4)
    ap.add_argument("--val-split", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--patience", type=int, default=DEFAULT_PATIENCE)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    from ..config import Settings
    from ..library import Library

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    try:
        lib = Library(args.library, Settings.load({"library": args.library}))
        gt = args.gt
        if args.make_fashion_mnist:
            gt = _index_fashion_mnist(lib, args.make_fashion_mnist, args.per_class, log)
        if not gt:
            raise ExplorerError("give --gt SPEC (or --make-fashion-mnist GALLERY)")
        t0 = time.perf_counter()
        rep = run_experiment(lib, gt, args.test_fraction, args.val_split, args.seed, args.splits, args.epochs, args.patience,
                             ablation=not args.no_ablation, log=log)
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
