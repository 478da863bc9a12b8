"""The statistics of the learned head's model selection, apart from any training.

Owns: the folds over labels (open set: groups of labels; closed set: each label's images dealt
round-robin), the **label-resampled** paired comparison (a gain must hold across labels, not be
carried by two of them), the rule that lets a trained epoch replace the untrained start
(= α-fusion), and how many inner folds a validation fraction means. ``train.fit`` /
``train.fit_cv`` and the k-fold experiment use these; ``train`` re-exports them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ExplorerError
from .data import MIN_IMAGES_PER_CLASS, usable_labels

#: bootstrap draws of the selection's label-resampled CI
SELECT_BOOT = 2000


def label_comparison(ap_a, ap_b, labels: Sequence[str], n_boot: int = SELECT_BOOT, seed: int = 0) -> dict:
    """Paired gain ``b - a`` over queries with a **label-resampled** bootstrap 95% CI.

    Queries of one label are not independent evidence that a gain carries over to other
    labels: the bootstrap draws *labels* with replacement (all queries of a drawn label come
    along) and recomputes the query-weighted mean gain. With one label there is no spread to
    estimate, and the CI is that label's gain. Pairs with a NaN AP are dropped.
    """
    a = np.asarray(ap_a, np.float64).reshape(-1)
    b = np.asarray(ap_b, np.float64).reshape(-1)
    lab = np.asarray(list(labels), object)
    if not (a.shape == b.shape == lab.shape):
        raise ValueError(f"AP and label arrays differ in length: {a.size}, {b.size}, {lab.size}")
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b, lab = a[ok], b[ok], lab[ok]
    d = b - a
    names, inv = np.unique(lab.astype(str), return_inverse=True)
    sums = np.bincount(inv, weights=d, minlength=len(names))
    counts = np.bincount(inv, minlength=len(names)).astype(np.float64)
    nan = float("nan")
    if not len(d):
        mean = lo = hi = nan
    else:
        mean = float(d.mean())
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=int(n_boot)).astype(np.float64)
        means = (draws @ sums) / (draws @ counts)
        lo, hi = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    per_label = sums / np.maximum(counts, 1)
    return {"unit": "label", "n_pairs": int(len(d)), "n_labels": int(len(names)), "mean_a": float(a.mean()) if len(a) else nan,
            "mean_b": float(b.mean()) if len(b) else nan, "mean_diff": mean, "ci95": [lo, hi],
            "labels_better": int(np.sum(per_label > 0)), "labels_worse": int(np.sum(per_label < 0)), "n_boot": int(n_boot), "seed": int(seed)}


def fold_rows(labels: Sequence[str], folds: int, seed: int, closed_set: bool) -> list[np.ndarray]:
    """Row indices of each of ``folds`` groups over the images of usable labels.

    Open set: the usable labels are shuffled (seeded) and dealt into ``folds`` groups of labels.
    Closed set: the images of every label are dealt round-robin into ``folds`` groups (stratified).
    """
    labels = list(labels)
    usable = usable_labels(labels)
    lab = np.asarray(labels, object)
    rng = np.random.default_rng(seed)
    if not closed_set:
        if len(usable) < folds:
            raise ExplorerError(f"{folds}-fold over labels needs at least {folds} labels with {MIN_IMAGES_PER_CLASS}+ images, found {len(usable)}")
        perm = [usable[i] for i in rng.permutation(len(usable))]
        return [np.flatnonzero(np.isin(lab, list(g))) for g in np.array_split(np.asarray(perm, object), folds)]
    out: list[list[int]] = [[] for _ in range(folds)]
    start = 0
    for name in usable:
        rows = np.flatnonzero(lab == name)
        rows = rows[rng.permutation(len(rows))]
        for j, r in enumerate(rows.tolist()):
            out[(start + j) % folds].append(r)
        start += len(rows)  # continue dealing where the last label stopped, so fold sizes stay even
    return [np.asarray(sorted(o), np.int64) for o in out]


def _justified(tr_map: float | None, untrained: float | None, comparison: dict, require_ci: bool) -> bool:
    """A trained epoch replaces the start only if it is better on validation and, with ``require_ci``,
    the label-resampled 95% CI of its gain is above zero over at least two validation labels."""
    if tr_map is None or untrained is None or not tr_map > untrained + 1e-9:
        return False
    if not require_ci:
        return True
    return comparison["n_labels"] >= 2 and comparison["ci95"][0] > 0


def inner_folds_for(val_split: float) -> int:
    """Inner folds that hold out about ``val_split`` of the labels each (1/3: 3, 0.2: 5); below 2 the
    caller's ``fit_cv`` refuses with a clear error."""
    return int(round(1.0 / val_split)) if val_split > 0 else 0
